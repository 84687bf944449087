"""Readiness the service declares: workready ``notify`` (systemd) and ``fd:N`` (s6).

``workready`` says who decides that an instance is ready:

``checks`` (the default)
    today's rule: a passed check cycle in status-check mode, ``workintvl`` seconds of
    running otherwise;
``notify``
    systemd's protocol: fsm-init binds a datagram socket, ``notify.sock`` in its run
    directory (for a workuser service, which cannot enter that 0700 directory, an abstract
    ``@fsm-init-notify-<random>``), and passes its path as ``NOTIFY_SOCKET``.  ``READY=1`` makes the instance
    ready, ``STATUS=...`` is shown by ``srvctl status`` and ``srvctl why``, ``STOPPING=1``
    and ``RELOADING=1`` are reflected in the state, ``WATCHDOG=1`` is the keep-alive
    that ``workwatchdog`` seconds enforce (a missed one restarts the service);
``fd:N``
    s6's convention: the service writes a newline to its file descriptor N (a pipe whose
    other end fsm-init reads).  A runit-style ``/etc/service/NAME`` daemon opts in with a
    ``notification-fd`` file holding N.

In status-check mode with ``notify`` or ``fd:N`` an instance is ready when it said so
*and* its latest check cycle passed.

Only the service's own processes are heard: each datagram carries its sender's
credentials (SO_PASSCRED), and a sender outside the service's session (or process group,
or process tree) is refused.  The socket is bounded as the syslog relay is: one
preallocated buffer (a message is cut at MAX_MESSAGE bytes), at most PER_EVENT datagrams
per wake-up, a token bucket on the messages taken and another on the senders checked
(the /proc walk a datagram not from the leader costs), so that a stranger's flood spends
only the second and the leader's own READY=1 and WATCHDOG=1 still get through; refusals
and drops are said in one summary line per SUMMARY_EVERY seconds, never once per message.

``State`` is one instance's declared readiness (no I/O: the service object owns it and
the unit tests drive it); ``Notifier`` is the socket and the pipes in the event loop.
"""

import os
import re
from collections.abc import Callable

from fsm_init.core import log
from fsm_init.core.kill import Group

CHECKS, NOTIFY, FD = "checks", "notify", "fd"
SOCKET_NAME = "notify.sock"
MAX_MESSAGE = 4096  # systemd's own limit for a notification (PIPE_BUF)
MAX_STATUS = 200  # characters of STATUS= kept: one line of srvctl status
PER_EVENT = 16
RATE = 50.0  # messages per second taken, on average
BURST = 200
SUMMARY_EVERY = 10.0
MAX_FD = 1023  # fd:N: 3..MAX_FD (0, 1 and 2 are the service's standard streams)
_FD = r"fd:([0-9]{1,4})"  # compiled at its first use, not at import


def parse_setting(value) -> tuple[str, int | None] | None:
    """workready's value as (kind, fd number); None when it is not one (the caller names
    the key and the value)."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if text in (CHECKS, NOTIFY):
        return text, None
    match = re.fullmatch(_FD, text)
    if match and 3 <= int(match.group(1)) <= MAX_FD:
        return FD, int(match.group(1))
    return None


def parse_notification_fd(text: str) -> int | None:
    """The number in an /etc/service/NAME/notification-fd file (s6), None if it is not one."""
    text = text.strip()
    if re.fullmatch(r"[0-9]{1,4}", text) and 3 <= int(text) <= MAX_FD:
        return int(text)
    return None


def parse_message(data: bytes) -> dict[str, str]:
    """One notification: newline-separated KEY=VALUE assignments (sd_notify(3)).  Lines
    without "=" are ignored, as systemd does; the values are escaped when shown."""
    fields: dict[str, str] = {}
    for line in data.split(b"\n"):
        key, sep, value = line.partition(b"=")
        if sep and key and re.fullmatch(rb"[A-Z_][A-Z0-9_]{0,63}", key):
            fields[key.decode()] = value.decode("utf-8", "replace")
    return fields


class State:
    """One instance's declared readiness: what it said, and when.  No I/O."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.kind: str = CHECKS
        self.fd: int | None = None
        self.reset()

    def reset(self, setting: tuple[str, int | None] = (CHECKS, None)) -> None:
        """A new instance starts: nothing said yet."""
        self.kind, self.fd = setting
        self.notified_at: float | None = None  # READY=1 (or the newline on fd N)
        self.status_text = ""  # the latest STATUS=
        self.stopping = self.reloading = False
        self.last_watchdog: float | None = None
        self.messages = 0

    @property
    def declared(self) -> bool:
        """The service declares its readiness (notify or fd:N), not the checks or the time."""
        return self.kind != CHECKS

    @property
    def notified(self) -> bool:
        return self.notified_at is not None

    def apply(self, fields: dict[str, str]) -> list[str]:
        """A notification's fields taken in; what is worth a log line (the changes)."""
        said = []
        now = self.now()
        self.messages += 1
        if fields.get("READY") == "1":
            self.reloading = False
            if self.notified_at is None:
                self.notified_at = now
                said.append("READY=1: the service says it is ready")
        if "STATUS" in fields:
            self.status_text = fields["STATUS"][:MAX_STATUS]
        if fields.get("STOPPING") == "1" and not self.stopping:
            self.stopping = True
            said.append("STOPPING=1: the service says it is stopping")
        if fields.get("RELOADING") == "1" and not self.reloading:
            self.reloading = True
            said.append("RELOADING=1: the service says it is reloading")
        if fields.get("WATCHDOG") == "1":
            self.last_watchdog = now
        if fields.get("WATCHDOG") == "trigger":
            said.append("WATCHDOG=trigger: the service asks for the watchdog's restart")
        return said

    def line_written(self) -> bool:
        """fd:N: the service wrote its newline; True the first time."""
        if self.notified_at is not None:
            return False
        self.notified_at = self.now()
        return True

    def waiting_for(self) -> str:
        """What the instance has not said yet, for `srvctl health` and `srvctl why`."""
        if self.kind == NOTIFY:
            return "waiting for READY=1 on NOTIFY_SOCKET (workready notify)"
        return f"waiting for a newline on file descriptor {self.fd} (workready fd:{self.fd})"

    def phase(self) -> str:
        """'' or the state the service declares beyond ready: stopping, reloading."""
        return "stopping" if self.stopping else "reloading" if self.reloading else ""

    def as_dict(self) -> dict:
        """For the status snapshot."""
        return {"workready": self.kind if self.kind != FD else f"fd:{self.fd}", "notified": self.notified,
                "status": self.status_text or None, "phase": self.phase() or None}


def said(state: State) -> str:
    """What the instance last said, for `srvctl why`: "" when it said nothing."""
    if not state.declared:
        return ""
    parts = []
    if state.status_text:
        parts.append(f"the service says: {state.status_text}")
    if state.phase():
        parts.append(f"it said it is {state.phase()}")
    elif not state.notified:
        parts.append(state.waiting_for())
    return "; ".join(parts)


def snapshot(answer, state: State, notifier: "Notifier | None", now: float) -> dict:
    """The status snapshot's "readiness": answer is Service.readiness()'s."""
    shown = dict(state.as_dict(), ready=answer.ready, reason=answer.reason,
                 ready_for=None if answer.since is None else round(now - answer.since, 3))
    if notifier is not None and state.kind == NOTIFY:
        shown["socket"] = notifier.status()
    if notifier is not None and notifier.watchdog:
        shown["watchdog"] = notifier.watchdog
    return shown


class FdWatch:
    """fd:N: the pipe whose write end the service gets as its fd N; the first newline read
    from it calls on_ready.  The end of the pipe (every writer closed it) ends the watch."""

    def __init__(self, system, loop, number: int, on_ready: Callable[[], None]) -> None:
        self.system, self.loop, self.number, self.on_ready = system, loop, number, on_ready
        self.read_fd: int | None = None
        self.write_fd: int | None = None

    def open(self) -> list[tuple[int, int]]:
        """The pipe made: [(fd to pass, N)] for System.spawn's fds."""
        self.read_fd, self.write_fd = self.system.pipe_for_child(self.number)
        self.system.set_nonblocking(self.read_fd)
        return [(self.write_fd, self.number)]

    def spawned(self) -> None:
        """The child has its copy: fsm-init's write end closed (EOF means the service's are
        gone), the read end watched."""
        if self.write_fd is not None:
            self.system.close(self.write_fd)
            self.write_fd = None
        if self.read_fd is not None:
            self.loop.watch(self.read_fd, self._readable)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd is not None:
                if fd == self.read_fd:
                    self.loop.unwatch(fd)
                self.system.close(fd)
        self.read_fd = self.write_fd = None

    def _readable(self) -> None:
        if self.read_fd is None:
            return
        try:
            data = self.system.read(self.read_fd, 512)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if b"\n" in data:
            # s6: the first newline is the one that counts; nothing more is read.
            self.close()
            self.on_ready()
        elif not data:
            self.close()  # closed without a newline: never ready by this pipe


class Notifier:
    """The service's readiness channels in the event loop: the notify socket, the fd:N pipe,
    the watchdog deadline.  on_failure(cause): the watchdog missed (the engine restarts)."""

    WATCHDOG = "watchdog"  # the loop's deadline

    def __init__(self, system, loop, run_dir: str, state: State,
                 on_failure: Callable[[str], None], on_change: Callable[[], None] = lambda: None) -> None:
        self.system, self.loop, self.state = system, loop, state
        self.file = os.path.join(run_dir, SOCKET_NAME)
        self.path = self.file  # what the service is given: the file, or "@name" (abstract)
        self.on_failure, self.on_change = on_failure, on_change
        self.sock = None
        self.off = ""  # why there is no socket, when binding it failed
        self.group: Group | None = None
        self.pipe: FdWatch | None = None
        self.watchdog: float | None = None
        self.refused = self.dropped = self.taken = 0
        self._refused = self._dropped = 0  # since the last summary
        self.tokens = float(BURST)  # the service's messages taken
        self.check_tokens = float(BURST)  # senders other than the leader checked in /proc
        self.refilled = system.now()
        self._buffer = bytearray(MAX_MESSAGE)

    # -- an instance ----------------------------------------------------------------------

    def prepare(self, config: dict) -> tuple[dict[str, str], list[tuple[int, int]]]:
        """Before the service's spawn: (environment to add, [(fd, N)] to pass)."""
        self.end()
        setting = parse_setting(config.get("workready", CHECKS)) or (CHECKS, None)
        self.state.reset(setting)
        self.watchdog = config.get("workwatchdog") if self.state.kind == NOTIFY else None
        if self.state.kind != NOTIFY:
            self._close_socket()  # workready changed: the socket goes (the thin reaper may take over)
        if self.state.kind == FD and setting[1] is not None:
            self.pipe = FdWatch(self.system, self.loop, setting[1], self._line_written)
            try:
                return {}, self.pipe.open()
            except OSError as e:
                log.error(f"workready fd:{setting[1]}: cannot make the pipe ({e.strerror}); "
                          "the service will never be ready")
                self.pipe = None
                return {}, []
        # The run directory is fsm-init's alone (0700): a workuser service could not reach a
        # socket file in it, so it gets one in the abstract namespace (sd_notify's "@name";
        # no file permissions there: the credentials decide, as for the file's 0666).
        if self.state.kind != NOTIFY or not self._listen(abstract=bool(config.get("workuser"))):
            return {}, []
        env = {"NOTIFY_SOCKET": self.path}
        if self.watchdog:
            env["WATCHDOG_USEC"] = str(int(self.watchdog * 1_000_000))
        return env, []

    def started(self, pid: int, group: Group) -> None:
        """The service runs: its session is the one heard; the watchdog starts."""
        self.group = group
        if self.pipe:
            self.pipe.spawned()
        if self.watchdog:
            self.loop.call_later(self.WATCHDOG, self.watchdog, self._missed)

    def end(self) -> None:
        """The instance is gone (or did not start): nothing more is heard from it."""
        self.group = None
        self.loop.cancel(self.WATCHDOG)
        if self.pipe:
            self.pipe.close()
            self.pipe = None

    # -- the socket ---------------------------------------------------------------------------

    def _listen(self, abstract: bool = False) -> bool:
        if self.sock is not None and self.path.startswith("@") == abstract:
            return True
        self._close_socket()
        if abstract:
            import secrets  # only here: it costs start-up time every other service would pay

            self.path = f"@fsm-init-notify-{secrets.token_hex(8)}"
        else:
            self.path = self.file
        try:
            self.sock = self.system.notify_socket(self.path)
        except OSError as e:
            if self.off != e.strerror:
                log.error(f"workready notify: cannot create {self.path} ({e.strerror}); "
                          "the service will never be ready")
            self.off = e.strerror or str(e)
            return False
        self.off = ""
        self.loop.watch(self.sock, self._readable)
        return True

    def close(self) -> None:
        """fsm-init ends (or is replaced): the socket goes, with its file."""
        self.end()
        self._close_socket()

    def _close_socket(self) -> None:
        if self.sock is None:
            return
        self.loop.unwatch(self.sock)
        self.loop.cancel("notify-summary")
        self._summary()
        self.sock.close()
        self.sock = None
        if not self.path.startswith("@"):
            try:
                self.system.remove(self.path)
            except OSError:
                pass

    @property
    def needs_engine(self) -> bool:
        """The thin reaper hears no notification: a declared readiness keeps the engine."""
        return self.sock is not None or self.pipe is not None

    def _readable(self) -> None:
        if self.sock is None:
            return
        now = self.system.now()
        self.tokens = min(float(BURST), self.tokens + (now - self.refilled) * RATE)
        self.check_tokens = min(float(BURST), self.check_tokens + (now - self.refilled) * RATE)
        self.refilled = now
        changed = False
        for _ in range(PER_EVENT):
            try:
                size, pid = self.system.receive_credentials(self.sock, self._buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            leader = self.group is not None and pid == self.group.leader  # no /proc read needed
            if not leader:
                if self.check_tokens < 1:
                    self._count("dropped")
                    continue
                self.check_tokens -= 1
                if not self._from_service(pid):
                    self._count("refused")
                    continue
            if self.tokens < 1:
                self._count("dropped")
                continue
            self.tokens -= 1
            self.taken += 1
            fields = parse_message(bytes(self._buffer[:min(size, MAX_MESSAGE)]))
            for said in self.state.apply(fields):
                log.info(log.escape(said))
            if fields.get("WATCHDOG") == "1" and self.watchdog:
                self.loop.call_later(self.WATCHDOG, self.watchdog, self._missed)
            if fields.get("WATCHDOG") == "trigger" and self.group is not None:
                self._fail("the service sent WATCHDOG=trigger")
                return
            changed = True
        if changed:
            self.on_change()

    def _from_service(self, pid: int | None) -> bool:
        """The sender is in the running instance's session (or process group), or below its
        leader in the process tree."""
        group = self.group
        if group is None or not pid or pid <= 0:
            return False
        seen = 0
        current: int | None = pid
        while current and seen < 64:
            info = self.system.process_of(current)
            if info is None:
                return False
            if current == group.leader or (info.sid if group.by_session else info.pgid) == group.leader:
                return True
            current, seen = info.ppid, seen + 1
        return False

    def _line_written(self) -> None:
        if self.state.line_written():
            log.info(f"workready fd:{self.state.fd}: the service says it is ready")
            self.on_change()

    # -- the watchdog ------------------------------------------------------------------------

    def _missed(self) -> None:
        if self.group is None:
            return
        last = self.state.last_watchdog
        self._fail(f"watchdog: no WATCHDOG=1 from the service within workwatchdog {self.watchdog:g}s"
                   + ("" if last is not None else " (none since its start)"))

    def _fail(self, cause: str) -> None:
        self.loop.cancel(self.WATCHDOG)
        self.on_failure(cause)

    # -- bounds ----------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        if what == "refused":
            self.refused += 1
            self._refused += 1
        else:
            self.dropped += 1
            self._dropped += 1
        if self.loop.due("notify-summary") is None:
            self.loop.call_later("notify-summary", SUMMARY_EVERY, self._summary)

    def _summary(self) -> None:
        parts = []
        if self._refused:
            parts.append(f"{self._refused} refused (not sent by the service's processes)")
        if self._dropped:
            parts.append(f"{self._dropped} dropped (more than {RATE:g} a second)")
        self._refused = self._dropped = 0
        if parts:
            log.warn(f"notify socket {self.path}: {', '.join(parts)} in the last {SUMMARY_EVERY:g}s")

    def status(self) -> dict:
        return {"socket": self.path if self.sock is not None else None, "taken": self.taken,
                "refused": self.refused, "dropped": self.dropped}
