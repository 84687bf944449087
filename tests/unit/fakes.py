"""Test doubles for unit tests: a recording fake of ``fsm_init.core.system.System``.

In the manner of supervisor's ``DummyOptions``: every OS call the engine makes lands
on ``FakeSystem``, which records it and can be told to fail.  Time is a number the
test moves; processes are entries in a table; files live in a dict.  Nothing here
forks, signals, sleeps or touches the real file system.

``Harness`` builds an ``Engine`` on a ``FakeSystem`` without calling ``run()`` (no
signal handlers, no control socket, no select loop) and drives it the way the
event loop would: child exits through ``loop.reap()`` / ``loop.on_exit``,
deadlines through ``loop.fire_due()``.  It also records every state entered, every
transition taken (as its row of ``table.TRANSITIONS``) and every guard outcome.
"""

import errno
import os
import posixpath
import signal
import stat
import zlib
from typing import NamedTuple

from fsm_init.core import table
from fsm_init.engine import Engine
from fsm_init.core.settings import Settings
from fsm_init.core.system import ProcInfo

# -- wait statuses, as os.waitpid reports them -------------------------------------------


def exited(code: int) -> int:
    """The wait status of exit(code)."""
    return (code & 0xFF) << 8


def killed(sig: int) -> int:
    """The wait status of death by signal sig."""
    return int(sig)


class ProcessReplaced(BaseException):
    """A successful execve: the process image is gone, no line after the call runs.

    A BaseException so that the engine's own error handler (which handles
    Exception) lets it through, as a real exec leaves nothing to handle.
    """


class Spawn(NamedTuple):
    pid: int
    argv: list
    env: dict
    executable: str | None
    tty_fd: int | None
    cwd: str | None = None
    fds: tuple = ()  # (fd, number) pairs passed beside stdin/stdout/stderr


class Exec(NamedTuple):
    argv: list
    env: dict
    executable: str | None


# Signals a fake process dies of unless told otherwise.
DEADLY = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGKILL})


class FakeSystem:
    """A recording stand-in for ``fsm_init.core.system.System`` (same method names)."""

    def __init__(self, pid: int = 1, clock: float = 1000.0) -> None:
        self.clock = clock
        self.wall_offset = 1_700_000_000.0
        self.pid = pid
        self.next_pid = 100
        # processes
        self.procs: dict[int, ProcInfo] = {pid: ProcInfo(pid, 0, pid, pid, "S")}
        self.deadly: dict[int, frozenset] = {}  # pid -> the signals it dies of
        self.pending_exits: list[tuple[int, int]] = []  # children that died and were not reaped
        self.spawns: list[Spawn] = []
        self.spawn_errors: dict[str, int] = {}  # program -> errno its spawn fails with
        self.kills: list[tuple[int, int]] = []
        self.execs: list[Exec] = []
        self.exec_error: OSError | None = None  # None: execve "succeeds" (raises ProcessReplaced)
        self.tty: int | None = None  # what terminal() returns
        self.terminal_grants: list[tuple[int, int]] = []
        self.subreaper_ok = True
        # short admin commands (System.run): program -> (status, stdout, stderr) or
        # callable(argv, input) returning that; a program not listed is not installed (127)
        self.commands: dict[str, object] = {}
        self.runs: list[tuple[list, bytes | None]] = []
        # namespace kind -> inode (a container's own, not the machine's initial ones)
        self.namespaces: dict[str, int] = {"net": 4026532200, "pid": 4026532201}
        self.subreaper_calls = 0
        # files
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, int] = {}
        self.owners: dict[str, int] = {}  # path -> owner uid (default 0, root)
        self.dir_modes: dict[str, int] = {}  # directory -> mode (default 0755)
        self.dirs: set[str] = {"/"}
        self.cwd = "/"
        self.chdirs: list[str] = []
        self.writes: list[tuple[str, bytes, int]] = []
        self.groups: dict[str, int] = {}  # path -> gid given by write_atomic / set_mode
        self.uid = 0  # euid()
        self.group_ids: dict[str, int] = {}  # group name -> gid (group_id)
        self.member_of: set[int] = set()  # gids a non-root uid may chgrp to
        self.unlistable: set[str] = set()  # directories can_list refuses (a non-root uid's view)
        # inotify: a real pipe stands for each instance (the loop's selector needs an fd);
        # notify() queues an event for a watched directory and makes the pipe readable
        self.watch_pipes: dict[int, int] = {}  # read end (the "inotify fd") -> write end
        self.watches: dict[int, tuple[int, str, int]] = {}  # wd -> (fd, path, mask)
        self.next_wd = 1
        self.notified: dict[int, list[tuple[int, int, str]]] = {}  # fd -> events not read yet
        # fault injection: (method, key) -> exception; key None matches any call
        self.faults: dict[tuple[str, str | None], BaseException] = {}
        self.calls: list[tuple] = []  # every call, in order: (method, *args)
        # the notify socket: real (the loop selects on it); the sender's pid is this one's
        self.notify_sender: int | None = None
        self.notify_paths: set[str] = set()
        self.child_ends: dict[int, int] = {}  # fd:N -> the service's copy of the pipe (pipe_for_child)

    # -- fault injection ------------------------------------------------------------------

    def fail(self, method: str, error: BaseException, key: str | None = None) -> None:
        """Make method raise error (for the path or program key, or for every call)."""
        self.faults[(method, key)] = error

    def _maybe_fail(self, method: str, key: str | None = None) -> None:
        error = self.faults.get((method, key)) or self.faults.get((method, None))
        if error is not None:
            raise error

    # -- clock -------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock

    def wall(self) -> float:
        return self.clock + self.wall_offset

    def getpid(self) -> int:
        return self.pid

    # -- processes ---------------------------------------------------------------------

    def spawn(self, argv, env, executable=None, tty_fd=None, stdout=None, stderr=None, cwd=None, fds=()) -> int:
        self.calls.append(("spawn", list(argv)))
        program = executable or argv[0]
        self._maybe_fail("spawn", program)
        if program in self.spawn_errors:
            code = self.spawn_errors[program]
            raise OSError(code, os.strerror(code), program)
        pid = self._new_pid()
        # A new session of its own, or (given a terminal) a new process group in ours.
        sid = pid if tty_fd is None else self.procs[self.pid].sid
        self.procs[pid] = ProcInfo(pid, self.pid, pid, sid, "S")
        self.spawns.append(Spawn(pid, list(argv), dict(env), executable, tty_fd, cwd, tuple(fds)))
        if tty_fd is not None:
            self.give_terminal(tty_fd, pid)
        return pid

    def terminal(self) -> int | None:
        self.calls.append(("terminal",))
        return self.tty

    def give_terminal(self, tty_fd: int, pgid: int) -> None:
        self.terminal_grants.append((tty_fd, pgid))

    def reap(self) -> list[tuple[int, int]]:
        self.calls.append(("reap",))
        reaped, self.pending_exits = self.pending_exits, []
        return reaped

    def yield_cpu(self) -> None:
        self.calls.append(("yield_cpu",))

    def kill(self, pid: int, sig: int) -> bool:
        self.calls.append(("kill", pid, sig))
        self._maybe_fail("kill")
        if pid < -1:
            targets = [p.pid for p in self.procs.values() if p.pgid == -pid]
        else:
            targets = [pid] if pid in self.procs else []
        if not targets:
            return False
        for target in targets:
            self.kills.append((target, int(sig)))
            if sig in self.deadly.get(target, DEADLY):
                self.die(target, killed(sig))
        return True

    def processes(self) -> list[ProcInfo]:
        self.calls.append(("processes",))
        return list(self.procs.values())

    def block_signals(self, signums) -> None:
        self.calls.append(("block_signals", sorted(signums)))

    def unblock_signals(self, signums) -> None:
        self.calls.append(("unblock_signals", sorted(signums)))

    def execve(self, argv, env, executable=None, blocked=()) -> None:
        self.calls.append(("execve", list(argv)))
        self.execs.append(Exec(list(argv), dict(env), executable))
        if self.exec_error is not None:
            raise self.exec_error
        raise ProcessReplaced(argv)

    def run(self, argv, input=None, timeout=10.0) -> tuple[int, str, str]:
        self.calls.append(("run", list(argv)))
        self.runs.append((list(argv), input))
        self._maybe_fail("run", argv[0])
        handler = self.commands.get(argv[0])
        if handler is None:
            return 127, "", f"[Errno 2] No such file or directory: {argv[0]!r}"
        return handler(list(argv), input) if callable(handler) else handler

    def interfaces(self) -> list[str]:
        return self.list_dir("/sys/class/net")

    def namespace(self, kind: str) -> int | None:
        return self.namespaces.get(kind)

    def set_subreaper(self) -> bool:
        self.subreaper_calls += 1
        return self.subreaper_ok

    # -- process table helpers for tests ---------------------------------------------------

    def _new_pid(self) -> int:
        pid = self.next_pid
        self.next_pid += 1
        return pid

    def add_process(self, ppid: int, sid: int | None = None, pgid: int | None = None,
                    deadly=DEADLY) -> int:
        """A process the engine did not spawn (a service's daemon child, an orphan)."""
        pid = self._new_pid()
        parent = self.procs.get(ppid)
        sid = sid if sid is not None else (parent.sid if parent else pid)
        pgid = pgid if pgid is not None else (parent.pgid if parent else pid)
        self.procs[pid] = ProcInfo(pid, ppid, pgid, sid, "S")
        self.deadly[pid] = frozenset(deadly)
        return pid

    def stubborn(self, pid: int) -> None:
        """pid ignores every signal but SIGKILL."""
        self.deadly[pid] = frozenset({signal.SIGKILL})

    def alive(self, pid: int) -> bool:
        return pid in self.procs

    def die(self, pid: int, status: int) -> None:
        """pid ends; its children are re-parented to us (PID 1 or subreaper); a child
        of ours is queued for ``reap``."""
        info = self.procs.pop(pid, None)
        if info is None:
            return
        for child in list(self.procs.values()):
            if child.ppid == pid:
                self.procs[child.pid] = child._replace(ppid=self.pid)
        if info.ppid == self.pid:
            self.pending_exits.append((pid, status))

    def signals_to(self, pid: int) -> list[int]:
        return [sig for target, sig in self.kills if target == pid]

    # -- files -------------------------------------------------------------------------

    def _abs(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.cwd, path))

    def add_dir(self, path: str) -> str:
        path = self._abs(path)
        while path not in self.dirs:
            self.dirs.add(path)
            path = posixpath.dirname(path)
        return path

    def add_file(self, path: str, data: bytes | str = b"", mode: int = 0o644) -> str:
        path = self._abs(path)
        self.add_dir(posixpath.dirname(path))
        self.files[path] = data.encode() if isinstance(data, str) else bytes(data)
        self.modes[path] = mode
        return path

    def add_script(self, path: str, body: str = "exit 0\n", mode: int = 0o755) -> str:
        return self.add_file(path, "#!/bin/sh\n" + body, mode)

    def read_bytes(self, path: str) -> bytes | None:
        path = self._abs(path)
        self.calls.append(("read_bytes", path))
        self._maybe_fail("read_bytes", path)
        return self.files.get(path)

    def append_line(self, path: str, line: bytes, max_bytes: int) -> None:
        path = self._abs(path)
        self.calls.append(("append_line", path))
        self._maybe_fail("append_line", path)
        if posixpath.dirname(path) not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        old = self.files.get(path, b"")
        if len(old) + len(line) > max_bytes:
            self.files[path + ".1"], old = old, b""
        self.files[path] = old + line

    def write_atomic(self, path: str, data: bytes, mode: int = 0o644, durable: bool = True,
                     gid: int | None = None) -> None:
        path = self._abs(path)
        self.calls.append(("write_atomic", path))
        self._maybe_fail("write_atomic", path)
        if posixpath.dirname(path) not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if gid is not None:
            self._check_group(path, gid)
        self.files[path] = bytes(data)
        self.modes[path] = mode
        self.owners[path] = self.uid
        if gid is not None:
            self.groups[path] = gid
        self.writes.append((path, bytes(data), mode))

    def rewrite_in_place(self, path: str, change, create: bool = True) -> bool:
        path = self._abs(path)
        self.calls.append(("rewrite_in_place", path))
        self._maybe_fail("rewrite_in_place", path)
        if path not in self.files:
            if not create:
                return False
            self.add_file(path)
        old = self.files[path].decode(errors="surrogateescape")
        new = change(old)
        if new == old:
            return False
        self.files[path] = new.encode(errors="surrogateescape")
        return True

    def stderr_to(self, path: str) -> bool:
        self.calls.append(("stderr_to", path))
        return path in self.files

    def euid(self) -> int:
        return self.uid

    def group_id(self, name: str) -> int | None:
        return self.group_ids.get(name)

    def set_mode(self, path: str, mode: int, gid: int | None = None) -> None:
        path = self._abs(path)
        self.calls.append(("set_mode", path, mode, gid))
        self._maybe_fail("set_mode", path)
        if path not in self.files and path not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if gid is not None:
            self._check_group(path, gid)
            self.groups[path] = gid
        self.modes[path] = mode

    def _check_group(self, path: str, gid: int) -> None:
        """As the kernel: only root may give a file a group it is not a member of."""
        if self.uid != 0 and gid not in self.member_of:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), path)

    def owner_mode(self, path: str) -> tuple[int, int] | None:
        path = self._abs(path)
        if path in self.files:
            return self.owners.get(path, 0), stat.S_IFREG | self.modes.get(path, 0o644)
        if path in self.dirs:
            return self.owners.get(path, 0), stat.S_IFDIR | self.dir_modes.get(path, 0o755)
        return None

    def file_identity(self, path: str) -> tuple[int, int, int] | None:
        path = self._abs(path)
        self.calls.append(("file_identity", path))
        data = self.files.get(path)
        # No clock of writes here: the content's checksum stands in for the time.
        return None if data is None else (0, len(data), zlib.crc32(data))

    def realpath(self, path: str) -> str:
        return self._abs(path)

    def make_private(self, path: str) -> None:
        path = self._abs(path)
        self.calls.append(("make_private", path))
        self._maybe_fail("make_private", path)
        if path not in self.files:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if self.uid != 0 and self.owners.get(path, 0) != self.uid:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), path)
        self.modes[path], self.owners[path] = 0o600, self.uid

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        self.calls.append(("makedirs", self._abs(path)))
        self._maybe_fail("makedirs", self._abs(path))
        self.add_dir(path)

    def writable_dir(self, path: str, mode: int = 0o755) -> str:
        """"" unless a fault is set for ("writable_dir", path): its message is the reason."""
        self.calls.append(("writable_dir", self._abs(path)))
        try:
            self._maybe_fail("writable_dir", self._abs(path))
        except OSError as e:
            return e.strerror
        self.add_dir(path)
        return ""

    def private_dir(self, path: str) -> str:
        self.calls.append(("private_dir", self._abs(path)))
        try:
            self._maybe_fail("private_dir", self._abs(path))
        except OSError as e:
            return e.strerror
        self.add_dir(path)
        return ""

    def set_name(self, name: str) -> bool:
        self.calls.append(("set_name", name))
        return True

    def is_dir(self, path: str) -> bool:
        self.calls.append(("is_dir", self._abs(path)))
        return self._abs(path) in self.dirs

    def can_list(self, path: str) -> bool:
        return self._abs(path) in self.dirs and self._abs(path) not in self.unlistable

    def is_executable(self, path: str) -> bool:
        path = self._abs(path)
        self.calls.append(("is_executable", path))
        self._maybe_fail("is_executable", path)
        return path in self.files and bool(self.modes.get(path, 0) & 0o111)

    def list_dir(self, path: str) -> list[str]:
        path = self._abs(path)
        if path not in self.dirs:
            return []
        names = {posixpath.basename(p) for p in list(self.files) + list(self.dirs)
                 if p != path and posixpath.dirname(p) == path}
        return sorted(names)

    def getcwd(self) -> str:
        return self.cwd

    def chdir(self, path: str) -> None:
        path = self._abs(path)
        self.calls.append(("chdir", path))
        if path not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        self.cwd = path
        self.chdirs.append(path)

    def remove(self, path: str) -> None:
        path = self._abs(path)
        self.calls.append(("remove", path))
        if path in self.notify_paths:  # the one real file the fake makes (notify_socket)
            self.notify_paths.discard(path)
            os.unlink(path)
        self.files.pop(path, None)
        self.modes.pop(path, None)


    def remove_tree(self, path: str) -> None:
        """rm -r path (a directory or a symbolic link to one, the fake does not tell them apart)."""
        path = self._abs(path)
        for name in [p for p in self.files if p.startswith(path + "/")]:
            self.remove(name)
        self.dirs = {d for d in self.dirs if d != path and not d.startswith(path + "/")}

    # -- inotify -----------------------------------------------------------------------------

    def watch_open(self) -> int:
        self.calls.append(("watch_open",))
        self._maybe_fail("watch_open")
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.watch_pipes[r] = w
        self.notified[r] = []
        return r

    def watch_add(self, fd: int, path: str, mask: int) -> int:
        path = self._abs(path)
        self.calls.append(("watch_add", path))
        self._maybe_fail("watch_add", path)
        if path not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        for wd, (other_fd, other, _) in self.watches.items():
            if other_fd == fd and other == path:  # as the kernel: one watch per inode
                self.watches[wd] = (fd, path, mask)
                return wd
        wd, self.next_wd = self.next_wd, self.next_wd + 1
        self.watches[wd] = (fd, path, mask)
        return wd

    def watch_remove(self, fd: int, wd: int) -> None:
        self.calls.append(("watch_remove", wd))
        self.watches.pop(wd, None)

    def watch_read(self, fd: int) -> list[tuple[int, int, str]]:
        try:
            os.read(fd, 4096)
        except BlockingIOError:
            pass
        events, self.notified[fd] = self.notified[fd], []
        return events

    def close(self, fd: int) -> None:
        self.calls.append(("close", fd))
        if fd in self.watch_pipes:
            os.close(self.watch_pipes.pop(fd))
            del self.notified[fd]
            self.watches = {wd: w for wd, w in self.watches.items() if w[0] != fd}
        os.close(fd)

    def listen_unix(self, path: str):
        """A real listener (srvctl-style clients connect to it), the call recorded."""
        from fsm_init.core.system import listen_unix

        self.calls.append(("listen_unix", path))
        self._maybe_fail("listen_unix", path)
        return listen_unix(path)

    # The syslog relay's socket is real (clients send to it, the loop selects on it), at a
    # real path the test chose; the calls are recorded, and fail on demand.
    def bind_datagram(self, path: str, mode: int):
        from fsm_init.core.system import bind_datagram

        self.calls.append(("bind_datagram", path, mode))
        self._maybe_fail("bind_datagram", path)
        return bind_datagram(path, mode)

    def probe_datagram(self, path: str) -> None:
        from fsm_init.core.system import probe_datagram

        self.calls.append(("probe_datagram", path))
        self._maybe_fail("probe_datagram", path)
        probe_datagram(path)

    def socket_file(self, path: str) -> tuple[int, int, bool] | None:
        from fsm_init.core.system import socket_file

        self._maybe_fail("socket_file", path)
        return socket_file(path)

    def remove_socket(self, path: str) -> None:
        self.calls.append(("remove_socket", path))
        self._maybe_fail("remove_socket", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def write(self, fd: int, data) -> int:
        self._maybe_fail("write")
        return os.write(fd, data)
    def listen_tcp(self, host: str, port: int, family: int):
        """A real listener on loopback (the tests connect to it), the call recorded."""
        from fsm_init.core.system import listen_tcp

        self.calls.append(("listen_tcp", host, port))
        self._maybe_fail("listen_tcp", host)
        return listen_tcp(host, port, family)

    # Pipes are real (the event loop selects on them); the calls are recorded, and fail on demand.
    def pipe(self) -> tuple[int, int]:
        self.calls.append(("pipe",))
        self._maybe_fail("pipe")
        return os.pipe2(os.O_CLOEXEC)

    def set_nonblocking(self, fd: int) -> None:
        os.set_blocking(fd, False)

    def pipe_for_child(self, number: int) -> tuple[int, int]:
        """A real pipe; the copy of the write end the child would hold is kept in
        child_ends[number] (the caller closes it) for a test to write the newline to."""
        self.calls.append(("pipe_for_child", number))
        self._maybe_fail("pipe_for_child")
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        self.child_ends[number] = os.dup(write_end)
        return read_end, write_end

    def notify_socket(self, path: str):
        """A real datagram socket at path (tests send to it); the sender's credentials are
        notify_sender's (see receive_credentials)."""
        import socket

        self.calls.append(("notify_socket", path))
        self._maybe_fail("notify_socket", path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        if path.startswith("@"):
            sock.bind("\0" + path[1:])
            return sock
        sock.bind(path)
        self.notify_paths.add(path)
        return sock

    def receive_credentials(self, sock, buffer: bytearray) -> tuple[int, int | None]:
        import socket

        size = sock.recv_into(buffer, len(buffer), socket.MSG_TRUNC)
        return size, self.notify_sender

    def process_of(self, pid: int):
        return self.procs.get(pid)

    def read(self, fd: int, size: int) -> bytes:
        self._maybe_fail("read")
        return os.read(fd, size)

    def close_watches(self) -> None:
        for fd in list(self.watch_pipes):
            self.close(fd)

    def notify(self, directory: str, name: str, mask: int) -> bool:
        """The kernel's side: an event on name in directory reaches every watch asking for it."""
        directory = self._abs(directory)
        hit = False
        for wd, (fd, path, wanted) in self.watches.items():
            if path == directory and wanted & mask:
                self.notified[fd].append((wd, mask, name))
                os.write(self.watch_pipes[fd], b"x")
                hit = True
        return hit


# -- settings and engine ---------------------------------------------------------------------


def make_settings(**overrides) -> Settings:
    """Settings with fixed values, not read from os.environ."""
    settings = Settings.__new__(Settings)
    values = dict(srv_root="/srv", state_dir="/var/lib/fsm-init", run_dir="/run/fsm-init",
                  run_dir_given=True, state_dir_given=True,
                  stop_grace=5.0, leftover_grace=2.0, stop_budget=None, stop_budget_error="", idle_wait=600.0,
                  handover_after=1.0,
                  exec_service=False, startup_timeout=300.0, init_dir="/etc/my_init.d",
                  pre_shutdown_dir="/etc/my_init.pre_shutdown.d", post_shutdown_dir="/etc/my_init.post_shutdown.d",
                  service_dir="/etc/service", skip_startup_files=False, skip_runit=False, kill_all_on_exit=True)
    values.update(overrides)
    for name, value in values.items():
        setattr(settings, name, value)
    return settings


def make_engine(system: FakeSystem | None = None, settings: Settings | None = None,
                environ: dict | None = None, command: list[str] | None = None) -> Engine:
    """An Engine on the fake, not running: no signal handlers, no control socket, no loop."""
    return Engine(system or FakeSystem(), settings or make_settings(), environ or {}, command)


def close_loop(loop) -> None:
    """Release the wake-up pipe and selector each EventLoop opens."""
    loop.close()


def close_engine(engine: Engine) -> None:
    if engine.control:
        engine.control.close()
    close_loop(engine.loop)
    if isinstance(engine.system, FakeSystem):
        engine.system.close_watches()


def pump(engine: Engine, limit: int = 1000) -> None:
    """What the loop does at one instant: reap exited children, fire due deadlines,
    until nothing more is due now."""
    for _ in range(limit):
        if engine.loop.stopped:
            return
        engine.loop.reap()
        now = engine.system.now()
        if engine.system.pending_exits:
            continue
        if not any(when <= now for when in engine.loop.pending().values()):
            return
        engine.loop.fire_due()
    raise AssertionError(f"deadlines keep firing at t={engine.system.now()}: {sorted(engine.loop.pending())}")


def advance(engine: Engine, seconds: float, limit: int = 10000) -> None:
    """Move the fake clock forward, firing every deadline on the way at its own time."""
    system = engine.system
    end = system.clock + seconds
    pump(engine)
    for _ in range(limit):
        if engine.loop.stopped:
            break
        due = [when for when in engine.loop.pending().values() if when <= end]
        if not due:
            break
        system.clock = max(system.clock, min(due))
        pump(engine)
    else:
        raise AssertionError(f"more than {limit} deadlines within {seconds}s")
    system.clock = max(system.clock, end)
    pump(engine)


def child_exit(engine: Engine, pid: int, status: int) -> None:
    """pid ends with the wait status status; the engine hears of it as from waitpid."""
    system = engine.system
    info = system.procs.pop(pid, None)
    if info is not None:
        for child in list(system.procs.values()):
            if child.ppid == pid:
                system.procs[child.pid] = child._replace(ppid=system.pid)
    engine.loop.on_exit(pid, status)
    pump(engine)


# -- a driven engine that records what it did -------------------------------------------------


def table_rows() -> list[tuple[int, str, str, str]]:
    """Every (row index, source, trigger, dest) of table.TRANSITIONS, list sources expanded."""
    rows = []
    for index, row in enumerate(table.TRANSITIONS):
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        rows.extend((index, source, row["trigger"], row["dest"]) for source in sources)
    return rows


ROWS = {(source, trigger, dest): index for index, source, trigger, dest in table_rows()}


class Harness:
    """An Engine on a FakeSystem, with the recordings tests assert on.

    ``states``  every state entered, in order (the initial "boot" included)
    ``taken``   every transition taken: (row index in table.TRANSITIONS, source, trigger, dest)
    ``guards``  every guard evaluated for a real trigger: (guard name, value)
    """

    def __init__(self, system: FakeSystem | None = None, settings: Settings | None = None,
                 environ: dict | None = None, command: list[str] | None = None) -> None:
        self.system = system or FakeSystem()
        self.engine = make_engine(self.system, settings, environ, command)
        self.states: list[str] = [self.engine.state]
        self.taken: list[tuple[int, str, str, str]] = []
        self.guards: list[tuple[str, bool]] = []
        self._instrument()

    def _instrument(self) -> None:
        """Check that the machine holds exactly the table's transitions, then follow what
        the engine itself records after each trigger (History.observer): the transition
        taken and the guards evaluated."""
        machine = self.engine.machine
        remaining = {}
        for index, source, trigger, dest in table_rows():
            queue = remaining.setdefault((trigger, source), list(machine.events[trigger].transitions[source]))
            transition = queue.pop(0)
            row = table.TRANSITIONS[index]
            assert transition.dest == dest, (index, transition.dest, dest)
            assert [c.func for c in transition.conditions] == row["conditions"] + row["unless"]
        assert all(not queue for queue in remaining.values()), "the machine has transitions the table lacks"
        self.engine.history.observer = self._observed

    def _observed(self, took, guards: dict) -> None:
        self.guards.extend(guards.items())
        if took:
            source, dest, trigger = took
            self.states.append(dest)
            self.taken.append((ROWS[(source, trigger, dest)], source, trigger, dest))

    # -- driving -------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.engine.state

    def begin(self) -> None:
        self.engine.fire("begin")
        pump(self.engine)

    def advance(self, seconds: float) -> None:
        advance(self.engine, seconds)

    def pump(self) -> None:
        pump(self.engine)

    def exit(self, pid: int, status: int) -> None:
        child_exit(self.engine, pid, status)

    def signal(self, signum: int) -> None:
        self.engine.loop.on_signal(signum)
        pump(self.engine)

    def request(self, verb: str, **fields) -> dict:
        reply = self.engine.verbs.handle({"verb": verb, **fields})
        pump(self.engine)
        return reply

    def deadline(self, name: str) -> float | None:
        return self.engine.loop.due(name)

    def close(self) -> None:
        close_engine(self.engine)
