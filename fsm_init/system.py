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

# Dispositions fsm-init changes for itself; a child must start with the defaults.
# SIGPIPE is ignored by CPython at start-up, TTIN/TTOU by fsm-init so that it can
# hand the terminal to a child without being stopped.
RESET_IN_CHILD = (
    signal.SIGPIPE, signal.SIGTTIN, signal.SIGTTOU, signal.SIGXFSZ,
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
    signal.SIGQUIT, signal.SIGWINCH, signal.SIGCONT, signal.SIGCHLD,
)


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
              cwd: str | None = None) -> int:
        """Start argv in a new session (or, given a terminal, a new foreground process group),
        in the directory cwd when given (a relative program path is then taken from there).

        posix_spawn, not fork: a child must not inherit PID 1's Python state, and the
        kernel reports exec failures (ENOENT, EACCES) straight to the caller.
        """
        program = executable or argv[0]
        spawn = os.posix_spawn if "/" in program else os.posix_spawnp
        kwargs: dict = {"setsigmask": (), "setsigdef": RESET_IN_CHILD}
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in ((stdout, 1), (stderr, 2)) if fd is not None]
        if actions:
            kwargs["file_actions"] = actions
        if tty_fd is None:
            kwargs["setsid"] = True
        else:
            kwargs["setpgroup"] = 0
        if cwd is None:
            pid = spawn(program, argv, env, **kwargs)
        else:
            # os.posix_spawn offers no chdir file action (glibc's addchdir_np is not exposed),
            # so fsm-init steps into cwd around the call and back: the child inherits cwd,
            # and PID 1 is single-threaded, so no other code ever runs in the detour.
            # O_PATH: fsm-init may stand in a directory it may enter but not read (non-root).
            here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.chdir(cwd)
                pid = spawn(program, argv, env, **kwargs)
            finally:
                os.fchdir(here)
                os.close(here)
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

    def processes(self) -> list[ProcInfo]:
        """Live (non-zombie) processes visible in /proc."""
        return self._with_spare(self._processes)

    def _processes(self) -> list[ProcInfo]:
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    raw = f.read()
            except OSError as e:
                if e.errno in OUT_OF_FDS:
                    raise  # not "gone": the scan cannot be trusted
                continue
            # comm may hold spaces and parentheses: split after the last ')'.
            fields = raw[raw.rfind(b")") + 2:].split()
            if fields[0] in (b"Z", b"X"):
                continue
            found.append(ProcInfo(int(name), int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode()))
        return found

    def execve(self, argv: list[str], env: dict[str, str], executable: str | None = None,
               blocked=()) -> None:
        """Replace fsm-init, keeping PID 1, with default signal dispositions and the
        signal mask ``blocked`` (signals blocked across an exec stay pending until the
        new program unblocks them: how the thin reaper loses no SIGTERM).

        On failure fsm-init's own handlers are put back: a PID 1 left with default
        dispositions would silently drop SIGTERM.
        """
        mask = signal.pthread_sigmask(signal.SIG_SETMASK, list(RESET_IN_CHILD))
        saved = {sig: signal.signal(sig, signal.SIG_DFL) for sig in RESET_IN_CHILD}
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        try:
            os.execve(executable or argv[0], argv, env)
        except OSError:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise

    def run(self, argv: list[str], input: bytes | None = None, timeout: float = 10.0) -> tuple[int, str, str]:
        """Run a short administrative command (iptables-restore, chpasswd, dropbearkey) to completion.

        It blocks the event loop for the milliseconds these take; a signal arriving
        meanwhile waits in the wake-up pipe.  Secrets go through ``input``, never argv.
        Returns (status, stdout, stderr); 127 when the program does not exist.
        """
        import subprocess

        try:
            done = subprocess.run(argv, input=input, capture_output=True, timeout=timeout,
                                  restore_signals=True, start_new_session=True)
        except FileNotFoundError as e:
            return 127, "", str(e)
        except subprocess.TimeoutExpired:
            return 124, "", f"{argv[0]} timed out after {timeout:g}s"
        except OSError as e:  # EAGAIN under a pids limit, EMFILE for the pipes: the step fails, not PID 1
            return 126, "", f"cannot run {argv[0]}: {e.strerror}"
        return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")

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
        """Temporary file, fsync, rename: a reader sees the old file or the new one, never half.

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

    def writable_dir(self, path: str, mode: int = 0o755) -> str:
        """Make path (and its parents) a directory this process can create files in:
        "" when done, otherwise why not."""
        try:
            os.makedirs(path, mode=mode, exist_ok=True)
        except OSError as e:
            return e.strerror
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
            return e.strerror
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


def private_problem(path: str, uid: int) -> str:
    """"" when path is a real directory that uid owns and only uid may use; otherwise why not."""
    import stat

    try:
        st = os.lstat(path)
    except OSError as e:
        return e.strerror
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not {uid}"
    if st.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(st.st_mode):04o}, not 0700"
    return ""


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class Unavailable(Exception):
    """A step that is enabled but cannot do its work here; the message says why."""


def which(name: str, path: str | None = None) -> str | None:
    """An executable named name on PATH (shutil.which costs imports PID 1 does not need)."""
    for directory in (path if path is not None else os.environ.get("PATH", os.defpath)).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
