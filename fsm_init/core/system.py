"""The one boundary between fsm-init and the operating system.

Every process, signal, prctl and file operation the engine performs goes through
a ``System`` object, so unit tests can hand the engine a recording fake (the habit
of supervisor's test suite) and integration tests run the real thing.  Standard
library only: the thin reaper uses it too.
"""

import errno
import os
import signal
import time
from collections import namedtuple

# Every signal a child must start with at its default disposition: all of them.  A
# disposition fsm-init set (SIGPIPE ignored by CPython, TTIN/TTOU by fsm-init, its
# handlers) or inherited (an ignored SIGHUP under nohup, whatever a launcher ignored)
# must not reach the service: exec keeps an ignored signal ignored.
RESET_IN_CHILD = tuple(sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}))

# collections.namedtuple, not typing.NamedTuple: the thin reaper does not import typing.
ProcInfo = namedtuple("ProcInfo", "pid ppid pgid sid state")


def exit_code(status: int) -> int:
    """The shell convention: N for exit(N), 128+S for death by signal S."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def signal_name(signum: int) -> str:
    """SIGTERM, or "signal 40" for a real-time signal, which has no name in signal.Signals."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(status: int) -> str:
    """A wait status in words, for the log: "exited with status 3", "was killed by SIGKILL (status 137)"."""
    if os.WIFSIGNALED(status):
        return f"was killed by {signal_name(os.WTERMSIG(status))} (status {exit_code(status)})"
    return f"exited with status {os.WEXITSTATUS(status)}"


def spawn_error_code(error: OSError) -> int:
    """126/127 as a shell reports a command it could not execute."""
    return 127 if error.errno == errno.ENOENT else 126


def _new_temporary(directory: str, name: str, mode: int) -> tuple[str, int]:
    """A fresh file beside name, for write_atomic.  The name is random and the open
    exclusive and not following links: a directory someone else may write to (a
    workuser's service directory) can hold no symlink or FIFO that turns root's write
    into one somewhere else, or blocks PID 1."""
    for _ in range(8):
        tmp = os.path.join(directory, f".{name}.{os.urandom(6).hex()}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", os.path.join(directory, name))


def write_atomic(path: str, data: bytes, mode: int = 0o644, durable: bool = True,
                 gid: int | None = None) -> None:
    """Temporary file, fsync, rename: a reader sees the old file or the new one, never half.
    The one implementation: ``System.write_atomic`` and the client tools (graph) use it.

    durable=False skips the fsyncs, for files in /run that need not outlive a crash.
    gid: the file's group, set before the rename (so it never appears with the wrong one).
    """
    directory = os.path.dirname(path) or "."
    tmp, fd = _new_temporary(directory, os.path.basename(path), mode)
    try:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise
    if not durable:
        return
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def listen_unix(path: str, backlog: int = 16):
    """A non-blocking, close-on-exec stream socket listening at path, mode 0600 (bound
    under umask 0177), in a directory made 0700; a stale socket file there is replaced."""
    import socket

    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    os.chmod(os.path.dirname(path), 0o700)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.listen(backlog)
    return sock


def bind_datagram(path: str, mode: int):
    """A non-blocking, close-on-exec datagram socket bound at path (under umask 0, so the
    file is exactly mode), then chmod mode; the socket is closed if either fails."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    old = os.umask(0)
    try:
        sock.bind(path)
        os.chmod(path, mode)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


def probe_datagram(path: str) -> None:
    """Connect a datagram socket to path, then close it: returns when something listens
    there; ConnectionRefusedError when nobody does (a stale socket file), EPROTOTYPE for
    a stream socket, other OSErrors as they come."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
        probe.connect(path)


def socket_file(path: str) -> tuple[int, int, bool] | None:
    """(device, inode, whether it is a socket) of path itself (a link not followed); None
    when there is no such file.  Other OSErrors are raised."""
    import stat

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, stat.S_ISSOCK(st.st_mode)


def listen_tcp(host: str, port: int, family: int, backlog: int = 64):
    """A non-blocking, close-on-exec TCP socket listening at host:port (FSM_INIT_HTTP)."""
    import socket

    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


# Descriptors held back for fd exhaustion (EMFILE under a low RLIMIT_NOFILE): the /proc
# scan that tells whether a stopped session is gone needs two (the directory, one stat
# file), and PID 1 must still be able to stop what it started.
SPARE_FDS = 2
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


class System:
    """The real operating system."""

    def __init__(self) -> None:
        self._spare: list[int] = []
        self._hold_spare()

    def _hold_spare(self) -> None:
        while len(self._spare) < SPARE_FDS:
            try:
                self._spare.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return

    def _with_spare(self, work):
        """work(); when it finds no descriptor left, again with the spare ones let go."""
        try:
            return work()
        except OSError as e:
            if e.errno not in OUT_OF_FDS or not self._spare:
                raise
        for fd in self._spare:
            os.close(fd)
        self._spare = []
        try:
            return work()
        finally:
            self._hold_spare()

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def getpid(self) -> int:
        return os.getpid()

    def spawn(self, argv: list[str], env: dict[str, str], executable: str | None = None,
              tty_fd: int | None = None, stdout: int | None = None, stderr: int | None = None,
              cwd: str | None = None, stdin: int | None = None, fds=()) -> int:
        """Start argv in a new session (or, given a terminal, a new foreground process group),
        in the directory cwd when given (a relative program path is then taken from there),
        with every signal at its default disposition and none blocked.

        posix_spawn, not fork: a child must not inherit PID 1's Python state, and the
        kernel reports exec failures (ENOENT, EACCES) straight to the caller.
        fds: more (fd, number) pairs the child gets (workready fd:N's pipe).
        """
        program = executable or argv[0]
        dups = [(fd, target) for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)) if fd is not None]
        dups += list(fds)
        global _libc_spawn
        if _libc_spawn is None:
            _libc_spawn = _LibcSpawn.load()
        if isinstance(_libc_spawn, _LibcSpawn):  # False where libc cannot be called
            pid = _libc_spawn(program, argv, env, dups, tty_fd is None, cwd)
        else:
            pid = os_spawn(program, argv, env, dups, tty_fd is None, cwd)
        if tty_fd is not None:
            self.give_terminal(tty_fd, pid)
        return pid

    def terminal(self) -> int | None:
        """stdin when it is a terminal: the service should own it, as under tini."""
        return 0 if os.isatty(0) else None

    def give_terminal(self, tty_fd: int, pgid: int) -> None:
        try:
            os.tcsetpgrp(tty_fd, pgid)
        except OSError:
            return
        # The child may have touched the terminal before it was its own and been stopped.
        self.kill(-pgid, signal.SIGCONT)

    def reap(self):
        """Yield every exited child; one SIGCHLD may stand for many.  A generator, not a
        list: 10 000 orphans handed over at once must not grow PID 1's memory."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            yield pid, status

    def kill(self, pid: int, sig: int) -> bool:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def yield_cpu(self) -> None:
        """Let a process just signalled run first: woken on this CPU, it would otherwise
        wait for PID 1's bookkeeping after the signal (the journal, status.json, a /proc
        scan) to end: half a millisecond more before a stopped service's TERM handler ran
        (docs/benchmark.md)."""
        os.sched_yield()

    def processes(self) -> list[ProcInfo]:
        """Live (non-zombie) processes visible in /proc."""
        return self._with_spare(self._processes)

    def _processes(self) -> list[ProcInfo]:
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            # os.open/read/close: 3 system calls a process, where open() takes 9 (fstat,
            # ioctl, lseeks); a stop scans /proc several times, once per daemon.
            try:
                fd = os.open(f"/proc/{name}/stat", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                if e.errno in OUT_OF_FDS:
                    raise  # not "gone": the scan cannot be trusted
                continue
            try:
                raw = os.read(fd, 4096)  # one line of at most ~1 KB
            except OSError:
                continue  # gone meanwhile
            finally:
                os.close(fd)
            if not raw:
                continue
            # comm may hold spaces and parentheses: split after the last ')'.
            fields = raw[raw.rfind(b")") + 2:].split()
            if fields[0] in (b"Z", b"X"):
                continue
            found.append(ProcInfo(int(name), int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode()))
        return found

    def block_signals(self, signums) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signums)

    def unblock_signals(self, signums) -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)

    def execve(self, argv: list[str], env: dict[str, str], executable: str | None = None,
               blocked=()) -> None:
        """Replace fsm-init, keeping PID 1, with default signal dispositions and the
        signal mask ``blocked`` (signals blocked across an exec stay pending until the
        new program unblocks them: how the thin reaper loses no SIGTERM).

        On failure fsm-init's own handlers are put back: a PID 1 left with default
        dispositions would silently drop SIGTERM.
        """
        from fsm_init.core import log

        log.drain()  # what a stalled log reader has not taken yet would be lost in the exec
        mask = signal.pthread_sigmask(signal.SIG_SETMASK, list(RESET_IN_CHILD))
        saved = {sig: signal.signal(sig, signal.SIG_DFL) for sig in RESET_IN_CHILD}
        internal = _reset_glibc_internal_signals()
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        try:
            os.execve(executable or argv[0], argv, env)
        except OSError:
            for sig, handler in saved.items():
                if handler is not None:  # None: a handler not set from Python (left at the default)
                    signal.signal(sig, handler)
            _rt_sigaction(internal, ignore=True)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise

    def run(self, argv: list[str], input: bytes | None = None, timeout: float = 10.0) -> tuple[int, str, str]:
        """Run a short administrative command (iptables-restore, chpasswd, dropbearkey) to completion.

        It blocks the event loop for the milliseconds these take; a signal arriving
        meanwhile waits in the wake-up pipe.  Secrets go through ``input``, never argv.
        Spawned like every other child (a session of its own, a clean signal state), with
        fsm-init's environment.  Returns (status, stdout, stderr); 127 when the program
        does not exist, 124 when it ran out of time (it is killed).
        """
        import selectors

        pipes: list[tuple[int, int]] = []
        try:
            for _ in range(3 if input is not None else 2):
                pipes.append(os.pipe2(os.O_CLOEXEC))
            out, err = pipes[0], pipes[1]
            pid = self.spawn(argv, dict(os.environ), stdout=out[1], stderr=err[1],
                             stdin=pipes[2][0] if input is not None else None)
        except OSError as e:
            for r, w in pipes:
                os.close(r)
                os.close(w)
            if e.errno == errno.ENOENT:
                return 127, "", str(e)
            # EAGAIN under a pids limit, EMFILE for the pipes: the step fails, not PID 1.
            return 126, "", f"cannot run {argv[0]}: {e.strerror}"
        # The child's ends: out's and err's write ends, stdin's read end.
        for fd in (out[1], err[1], *(pipes[2][:1] if input is not None else ())):
            os.close(fd)
        chunks: dict[int, list[bytes]] = {out[0]: [], err[0]: []}
        pending = memoryview(input or b"")
        end = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            for fd in chunks:
                selector.register(fd, selectors.EVENT_READ)
            if input is not None:
                os.set_blocking(pipes[2][1], False)
                selector.register(pipes[2][1], selectors.EVENT_WRITE)
            timed_out = False
            while selector.get_map():
                left = end - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                for key, _ in selector.select(left):
                    fd = key.fd
                    if fd in chunks:
                        data = os.read(fd, 65536)
                        if data:
                            chunks[fd].append(data)
                            continue
                    elif pending:
                        try:
                            pending = pending[os.write(fd, pending):]
                        except BrokenPipeError:
                            pending = pending[:0]
                        except BlockingIOError:
                            continue
                        if pending:
                            continue
                    selector.unregister(fd)
                    os.close(fd)
            for key in list(selector.get_map().values()):
                os.close(key.fd)
        if timed_out:
            self.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if timed_out:
            return 124, "", f"{argv[0]} timed out after {timeout:g}s"
        return (os.waitstatus_to_exitcode(status), b"".join(chunks[out[0]]).decode(errors="replace"),
                b"".join(chunks[err[0]]).decode(errors="replace"))

    def interfaces(self) -> list[str]:
        """The network interfaces of fsm-init's network namespace (netifaces: getifaddrs)."""
        import netifaces

        return netifaces.interfaces()

    def namespace(self, kind: str) -> int | None:
        """The inode number of this process's namespace of that kind ("net", "pid")."""
        try:
            return os.stat(f"/proc/self/ns/{kind}").st_ino
        except OSError:
            return None

    def set_subreaper(self) -> bool:
        try:
            import prctl

            prctl.set_child_subreaper(1)
        except (ImportError, OSError):
            return False
        return True

    def set_name(self, name: str) -> bool:
        """The process name ps, top and pidof show (/proc/self/comm, what prctl
        PR_SET_NAME sets; at most 15 bytes), without importing prctl or ctypes."""
        try:
            with open("/proc/self/comm", "wb", buffering=0) as f:
                f.write(name.encode()[:15])
        except OSError:
            return False
        return True

    def read_bytes(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def write_atomic(self, path: str, data: bytes, mode: int = 0o644, durable: bool = True,
                     gid: int | None = None) -> None:
        write_atomic(path, data, mode, durable, gid)

    def rewrite_in_place(self, path: str, change, create: bool = True) -> bool:
        """Apply change(text) -> text to path by rewriting the file itself, not renaming a
        new one over it (under Docker /etc/resolv.conf is a bind mount: a rename fails).
        True if the text changed; False too when path is missing and create is False."""
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            if create:
                raise
            return False
        with os.fdopen(fd, "r+b") as f:
            old = f.read().decode(errors="surrogateescape")
            new = change(old)
            if new == old:
                return False
            f.seek(0)
            f.write(new.encode(errors="surrogateescape"))
            f.truncate()
        return True

    def stderr_to(self, path: str) -> bool:
        """Make path (opened for appending) this process's stderr; False if it cannot be opened."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError:
            return False
        os.dup2(fd, 2)
        os.close(fd)
        return True

    def append_line(self, path: str, line: bytes, max_bytes: int) -> None:
        """Append one line (one write, O_APPEND); past max_bytes the file moves to path.1 first."""
        try:
            if os.stat(path).st_size + len(line) > max_bytes:
                os.replace(path, path + ".1")
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            written = 0
            try:
                written = os.write(fd, line)
            finally:
                if written != len(line):
                    # A full disk took part of the line, or none: cut it off again, or
                    # the next line would be glued to the half one.
                    try:
                        os.ftruncate(fd, size)
                    except OSError:
                        pass
            if written != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        finally:
            os.close(fd)

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        os.makedirs(path, mode=mode, exist_ok=True)

    def owner_mode(self, path: str) -> tuple[int, int] | None:
        """(owner uid, st_mode) of path itself (lstat: a link is not followed), or None."""
        try:
            found = os.lstat(path)
        except OSError:
            return None
        return found.st_uid, found.st_mode

    def file_identity(self, path: str) -> tuple[int, int, int] | None:
        """(inode, size, modification time in ns) of what path names (a link followed), or None."""
        try:
            found = os.stat(path)
        except OSError:
            return None
        return found.st_ino, found.st_size, found.st_mtime_ns

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def make_private(self, path: str) -> None:
        """Mode 0600, owned by this process's uid, without following a link (ELOOP then)."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o600)
            os.fchown(fd, os.geteuid(), -1)
        finally:
            os.close(fd)
    def writable_dir(self, path: str, mode: int = 0o755) -> str:
        """Make path (and its parents) a directory this process can create files in:
        "" when done, otherwise why not."""
        try:
            os.makedirs(path, mode=mode, exist_ok=True)
        except OSError as e:
            return e.strerror or str(e)
        if not os.access(path, os.W_OK | os.X_OK):
            return f"not writable by uid {os.geteuid()}" + (" (read-only)" if _read_only(path) else "")
        return ""

    def private_dir(self, path: str) -> str:
        """Make path a directory of this uid's alone (mode 0700) in a directory others may
        write to (/tmp): "" when it is one, otherwise why it is refused.  An existing path is
        checked, never followed or changed: a symbolic link, a directory another uid owns
        or one group or others may use could be someone else's trap."""
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            return e.strerror or str(e)
        from fsm_init.core.private_dirs import private_problem

        return private_problem(path, os.geteuid())

    def euid(self) -> int:
        return os.geteuid()

    def group_id(self, name: str) -> int | None:
        """The gid of group name, or None when there is no such group."""
        import grp

        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            return None

    def set_mode(self, path: str, mode: int, gid: int | None = None) -> None:
        """chmod, and chgrp when gid is given (the owner is left alone)."""
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, mode)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def can_list(self, path: str) -> bool:
        """Whether this process may list path (read and search it)."""
        return os.access(path, os.R_OK | os.X_OK)

    def is_executable(self, path: str) -> bool:
        return os.path.isfile(path) and os.access(path, os.X_OK)

    def list_dir(self, path: str) -> list[str]:
        try:
            return sorted(self._with_spare(lambda: os.listdir(path)))
        except OSError:
            return []

    def chdir(self, path: str) -> None:
        os.chdir(path)

    def getcwd(self) -> str:
        return os.getcwd()

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


    # -- inotify (Linux), for the /etc/service directory: no polling -----------------------

    def watch_open(self) -> int:
        """A new inotify instance (non-blocking, close-on-exec) as a file descriptor for the loop.

        ctypes on libc's inotify_init1, imported here: the standard library has no inotify,
        and only an engine with a service directory to watch pays for the import.
        """
        return _inotify_call("inotify_init1", IN_NONBLOCK | os.O_CLOEXEC)

    def watch_add(self, fd: int, path: str, mask: int) -> int:
        """Watch path (a symbolic link is followed) for the events of mask; the watch descriptor."""
        return _inotify_call("inotify_add_watch", fd, os.fsencode(path), mask)

    def watch_remove(self, fd: int, wd: int) -> None:
        try:
            _inotify_call("inotify_rm_watch", fd, wd)
        except OSError:  # EINVAL: the kernel dropped it already (the directory is gone)
            pass

    def watch_read(self, fd: int) -> list[tuple[int, int, str]]:
        """Every event queued on the inotify fd, as (watch descriptor, mask, name); never blocks."""
        import struct

        events: list[tuple[int, int, str]] = []
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return events
            if not data:
                return events
            offset = 0
            while offset + 16 <= len(data):
                wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + length].split(b"\0", 1)[0]
                events.append((wd, mask, os.fsdecode(name)))
                offset += 16 + length

    def close(self, fd: int) -> None:
        try:
            os.close(fd)
        except OSError:
            pass

    def listen_unix(self, path: str):
        """The control socket's listener (see listen_unix)."""
        return listen_unix(path)

    # -- /dev/log, for the syslog relay ----------------------------------------------------

    def bind_datagram(self, path: str, mode: int):
        """The relay's socket at path (see bind_datagram)."""
        return bind_datagram(path, mode)

    def probe_datagram(self, path: str) -> None:
        """Does something listen at path? (see probe_datagram)."""
        probe_datagram(path)

    def socket_file(self, path: str) -> tuple[int, int, bool] | None:
        return socket_file(path)

    def remove_socket(self, path: str) -> None:
        """Remove the socket file at path (gone already: nothing to do)."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def write(self, fd: int, data) -> int:
        """os.write: the bytes written (BlockingIOError when a non-blocking fd is full)."""
        return os.write(fd, data)
    def listen_tcp(self, host: str, port: int, family: int):
        """The HTTP probes' listener (see listen_tcp)."""
        return listen_tcp(host, port, family)

    # -- pipes, for a check's output -------------------------------------------------------

    def pipe(self) -> tuple[int, int]:
        """A close-on-exec pipe: (read end, write end)."""
        return os.pipe2(os.O_CLOEXEC)

    def set_nonblocking(self, fd: int) -> None:
        os.set_blocking(fd, False)

    def pipe_for_child(self, number: int) -> tuple[int, int]:
        """A close-on-exec pipe whose write end a child gets as its fd number: that end is
        never number itself (dup2 onto the same fd would leave it close-on-exec)."""
        import fcntl

        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        if write_end <= number:
            moved = fcntl.fcntl(write_end, fcntl.F_DUPFD_CLOEXEC, number + 1)
            os.close(write_end)
            write_end = moved
        return read_end, write_end

    # -- the notify socket (workready notify) ----------------------------------------------

    def notify_socket(self, path: str):
        """A non-blocking datagram socket bound at path (a stale one replaced), mode 0666 (a
        workuser service sends too: the credentials decide), passing its senders' credentials.
        "@name": bound in the abstract namespace instead."""
        import socket

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            if path.startswith("@"):  # sd_notify's abstract address: no file, no permissions
                sock.bind("\0" + path[1:])
                return sock
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            old = os.umask(0o111)
            try:
                sock.bind(path)
            finally:
                os.umask(old)
        except OSError:
            sock.close()
            raise
        return sock

    def receive_credentials(self, sock, buffer: bytearray) -> tuple[int, int | None]:
        """One datagram into buffer: (its size, the sender's pid or None when the kernel sent
        no credentials).  BlockingIOError when none waits."""
        import socket
        import struct

        ucred = struct.Struct("iII")  # struct ucred: pid, uid, gid
        size, ancillary, _flags, _address = sock.recvmsg_into([buffer], socket.CMSG_SPACE(ucred.size),
                                                              socket.MSG_TRUNC)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= ucred.size:
                return size, ucred.unpack_from(data)[0]
        return size, None

    def process_of(self, pid: int) -> ProcInfo | None:
        """pid's ids from /proc (a zombie too: a sender may have exited already); None: gone."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            return None
        fields = raw[raw.rfind(b")") + 2:].split()
        return ProcInfo(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode())

    def read(self, fd: int, size: int) -> bytes:
        """Up to size bytes from fd (b"": end of file); BlockingIOError when a
        non-blocking fd has nothing now."""
        return os.read(fd, size)


# rt_sigaction's system call number: glibc's sigaction refuses its internal signals.
_RT_SIGACTION = {"x86_64": 13, "aarch64": 134, "riscv64": 134}


def _reset_glibc_internal_signals() -> list[int]:
    """Signals 32 and 33 back to the default before an exec in fsm-init's place, when
    fsm-init inherited them ignored (started by a glibc program's posix_spawn): exec keeps
    an ignored disposition, and Python cannot name these two.  The ones reset."""
    try:
        with open("/proc/self/status") as f:
            ignored = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
    except (OSError, StopIteration, ValueError):
        return []
    internal = [sig for sig in (32, 33) if ignored & (1 << (sig - 1))]
    return internal if internal and _rt_sigaction(internal, ignore=False) else []


def _rt_sigaction(signums: list[int], ignore: bool) -> bool:
    """rt_sigaction(2) by system call: SIG_DFL (0) or SIG_IGN (1), no flags, an empty mask."""
    number = _RT_SIGACTION.get(os.uname().machine)
    if not signums or number is None:
        return False
    libc = _load_libc()
    if libc is None:
        return False
    import ctypes

    action = (ctypes.c_ulong * 4)(1 if ignore else 0, 0, 0, 0)  # handler, flags, restorer, mask
    return all(libc.syscall(number, sig, action, None, 8) == 0 for sig in signums)


# <linux/inotify.h>
IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x4, 0x8, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR, IN_NONBLOCK = 0x4000, 0x8000, 0x01000000, 0o4000
_libc = None


def _load_libc():
    """The C library through ctypes, loaded once (the spawner, inotify and rt_sigaction
    share it; the thin reaper never loads it), or None where ctypes cannot load it."""
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL(None, use_errno=True)
        except (ImportError, OSError):
            return None
    return _libc


def _inotify_call(name: str, *args) -> int:
    libc = _load_libc()
    if libc is None:
        raise OSError(errno.ENOSYS, "the C library cannot be called (no ctypes)")
    function = getattr(libc, name, None)
    if function is None:
        raise OSError(errno.ENOSYS, f"no {name} in the C library")
    result = function(*args)
    if result < 0:
        import ctypes

        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result
def os_spawn(program: str, argv: list[str], env: dict[str, str], dups, setsid: bool, cwd: str | None) -> int:
    """os.posix_spawn: the fall-back where libc cannot be called directly.  It cannot reset
    glibc's two internal signals (32 and 33; its posix_spawn leaves them ignored)."""
    spawn = os.posix_spawn if "/" in program else os.posix_spawnp
    kwargs: dict = {"setsigmask": (), "setsigdef": RESET_IN_CHILD}
    if dups:
        kwargs["file_actions"] = [(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in dups]
    kwargs["setsid" if setsid else "setpgroup"] = True if setsid else 0
    if cwd is None:
        return spawn(program, argv, env, **kwargs)
    # os.posix_spawn offers no chdir file action, so fsm-init steps into cwd around the
    # call and back: the child inherits cwd, and PID 1 is single-threaded, so no other code
    # ever runs in the detour.  O_PATH: fsm-init may stand in a directory it may enter but
    # not read (non-root).
    here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(cwd)
        return spawn(program, argv, env, **kwargs)
    finally:
        os.fchdir(here)
        os.close(here)


class _LibcSpawn:
    """posix_spawn called in libc itself, through ctypes.

    os.posix_spawn builds its set of signals to reset with sigaddset, which refuses
    glibc's internal signals 32 and 33, and glibc's posix_spawn then sets those two to
    SIG_IGN in the child: every child would start with them ignored (exec keeps an
    ignored disposition), and programs on musl or Go see them as ordinary real-time
    signals.  Here the set is written bit by bit: all of signals 1-64 go back to the
    default, whatever fsm-init itself inherited.  posix_spawn_file_actions_addchdir_np
    (glibc 2.29, musl 1.1.24) also spares the chdir detour.
    """

    SETPGROUP, SETSIGDEF, SETSIGMASK, SETSID = 0x02, 0x04, 0x08, 0x80
    OPAQUE = 1024  # bytes for posix_spawnattr_t / posix_spawn_file_actions_t (glibc: 336 / 80)

    def __init__(self, ctypes, libc) -> None:
        self.ctypes, self.libc = ctypes, libc
        p, cp = ctypes.c_void_p, ctypes.c_char_p
        for name, args in (("posix_spawnattr_init", [p]), ("posix_spawnattr_setflags", [p, ctypes.c_short]),
                           ("posix_spawnattr_setsigdefault", [p, p]), ("posix_spawnattr_setsigmask", [p, p]),
                           ("posix_spawnattr_setpgroup", [p, ctypes.c_int]),
                           ("posix_spawn_file_actions_init", [p]), ("posix_spawn_file_actions_destroy", [p]),
                           ("posix_spawn_file_actions_adddup2", [p, ctypes.c_int, ctypes.c_int]),
                           ("posix_spawn_file_actions_addchdir_np", [p, cp]),
                           ("posix_spawn", [p, cp, p, p, p, p]), ("posix_spawnp", [p, cp, p, p, p, p])):
            function = getattr(libc, name)
            function.argtypes, function.restype = args, ctypes.c_int
        # sigset_t is 1024 bits on Linux (glibc and musl); bits 0-63 are signals 1-64.
        every_signal = (ctypes.c_ubyte * 128)(*([0xFF] * 8))
        no_signal = (ctypes.c_ubyte * 128)()
        # The two sets of attributes (a new session; a new foreground process group), made
        # once: posix_spawn only reads them.
        self.attrs = {}
        for setsid in (True, False):
            attr = ctypes.create_string_buffer(self.OPAQUE)
            _check(libc.posix_spawnattr_init(attr))
            _check(libc.posix_spawnattr_setflags(
                attr, self.SETSIGDEF | self.SETSIGMASK | (self.SETSID if setsid else self.SETPGROUP)))
            _check(libc.posix_spawnattr_setsigdefault(attr, every_signal))
            _check(libc.posix_spawnattr_setsigmask(attr, no_signal))
            if not setsid:
                _check(libc.posix_spawnattr_setpgroup(attr, 0))
            self.attrs[setsid] = attr

    @classmethod
    def load(cls):
        """The spawner, or False where libc cannot be called (no ctypes, a libc without
        the functions): os.posix_spawn is used then."""
        libc = _load_libc()
        if libc is None:
            return False
        try:
            import ctypes

            return cls(ctypes, libc)
        except AttributeError:  # a libc without the functions
            return False

    def __call__(self, program: str, argv: list[str], env: dict[str, str], dups, setsid: bool,
                 cwd: str | None) -> int:
        ctypes, libc = self.ctypes, self.libc
        args = [_c_string(a, "an argument") for a in argv]
        if not args or not args[0]:
            raise ValueError("argv first element cannot be empty")
        environ = []
        for name, value in env.items():
            entry = _c_string(f"{name}={value}", "an environment variable")
            if not name or "=" in name:
                raise ValueError(f"illegal environment variable name {name!r}")
            environ.append(entry)
        c_argv = (ctypes.c_char_p * (len(args) + 1))(*args, None)
        c_env = (ctypes.c_char_p * (len(environ) + 1))(*environ, None)
        pid = ctypes.c_int()
        spawn = libc.posix_spawn if "/" in program else libc.posix_spawnp
        actions = None
        if dups or cwd is not None:
            actions = ctypes.create_string_buffer(self.OPAQUE)
            _check(libc.posix_spawn_file_actions_init(actions))
        try:
            for fd, target in dups:
                _check(libc.posix_spawn_file_actions_adddup2(actions, fd, target))
            if cwd is not None:
                _check(libc.posix_spawn_file_actions_addchdir_np(actions, os.fsencode(cwd)))
            error = spawn(ctypes.byref(pid), os.fsencode(program), actions, self.attrs[setsid], c_argv, c_env)
        finally:
            if actions is not None:
                libc.posix_spawn_file_actions_destroy(actions)
        if error:
            raise OSError(error, os.strerror(error), program)
        return pid.value


_libc_spawn: "_LibcSpawn | bool | None" = None  # loaded at the first spawn: the thin reaper never spawns


def _c_string(text: str, what: str) -> bytes:
    data = os.fsencode(text)
    if b"\0" in data:
        raise ValueError(f"{what} contains a NUL byte: {text!r}")
    return data


def _check(error: int) -> None:
    if error:
        raise OSError(error, os.strerror(error))
def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class Unavailable(Exception):
    """A step that is enabled but cannot do its work here; the message says why."""


# Where programs are looked for besides $PATH (a container's PATH may lack the sbin dirs).
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def find_program(system, name: str) -> str | None:
    """name in $PATH, then in SEARCH_PATH: the first executable found (system.is_executable)."""
    seen = set()
    for directory in os.environ.get("PATH", "").split(os.pathsep) + SEARCH_PATH.split(":"):
        if directory and directory not in seen:
            seen.add(directory)
            if system.is_executable(os.path.join(directory, name)):
                return os.path.join(directory, name)
    return None


# The inode numbers the kernel gives its initial namespaces (include/linux/proc_ns.h);
# the initial mount and network namespaces have one only on recent kernels (6.x).
INIT_NAMESPACE_INO = {"pid": 0xEFFFFFFC, "mnt": 0xEFFFFFF8, "net": 0xEFFFFFF9}


def refuse_host_namespace(system, kind: str, message: str) -> None:
    """Unavailable(message) when this is the host's namespace of that kind ("mnt",
    "net"): fsm-init was started on the host, or the container shares the host's.
    Only fsm-init as the init of the whole machine (PID 1 of the initial PID namespace)
    may touch it.  The initial PID namespace has had its fixed inode number since Linux
    3.8: a process in it other than PID 1 runs on the host, whatever the kernel."""
    in_initial_pid_ns = system.namespace("pid") == INIT_NAMESPACE_INO["pid"]
    if in_initial_pid_ns and system.getpid() == 1:
        return
    if system.namespace(kind) == INIT_NAMESPACE_INO[kind] or in_initial_pid_ns:
        raise Unavailable(message)


def which(name: str, path: str | None = None) -> str | None:
    """An executable named name on PATH (shutil.which costs imports PID 1 does not need)."""
    for directory in (path if path is not None else os.environ.get("PATH", os.defpath)).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
