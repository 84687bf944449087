"""fsm-init's own log lines: one line each on stderr, prefixed with the current state.

Written without the logging package: the thin reaper must stay within the
standard library's cheapest modules, and a PID 1 log needs no handlers.

Two guarantees, for PID 1 (the engine and the thin reaper):

* Text that comes from a child, a file name or the network is escaped: ``escape``
  turns C0 (tab included), DEL, C1 and U+2028/U+2029 into ``\\xNN``/``\\uNNNN``, so
  nothing shown can move the cursor, retitle a terminal or start a line of its own.
  Every log line's message goes through it; the syslog relay, the check output
  passed through and the client tools (srvctl, ``fsm-init status``) use the same one.
* PID 1 never blocks on its own output (``go_nonblocking``): see ``Outlet``.
"""

import os

_state = lambda: "boot"  # noqa: E731  (a callable: the engine's state is read at each line)
_quiet = False

# C0 (tab too: "never a raw control byte"), DEL, C1 and the Unicode line and paragraph
# separators: a service, a check or a local syslog sender must not split or forge lines,
# or reach the terminal of whoever reads the log, for a consumer that breaks lines on them.
_CONTROL = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
            for c in (*range(0x20), *range(0x7f, 0xa0), 0x2028, 0x2029)}
_CONTROL.update({0x0a: "\\n", 0x09: "\\t", 0x0d: "\\r"})


def escape(text: str) -> str:
    """text with every control character written out (``\\x1b``, ``\\n``): safe to show."""
    return text.translate(_CONTROL)


def escape_bytes(raw: bytes) -> str:
    """Bytes from a child or the network (maybe not UTF-8) as escaped text."""
    return raw.decode("utf-8", "replace").translate(_CONTROL)


def clock(wall) -> str:
    """A wall-clock time as people read it in a log, srvctl or the status view: 14:03:07
    (local time); "?" for a value that is not one (a damaged journal line)."""
    import time

    try:
        return time.strftime("%H:%M:%S", time.localtime(float(wall)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def set_state(state) -> None:
    """A state name, or a callable returning the current one."""
    global _state
    _state = state if callable(state) else (lambda: state)


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


_json = os.environ.get("FSM_INIT_LOG_FORMAT", "").lower() == "json"


def set_json(on: bool) -> bool:
    """JSON log lines (FSM_INIT_LOG_FORMAT=json) on or off; returns the previous setting."""
    global _json
    previous, _json = _json, on
    return previous


def _emit(level: str, message: str) -> None:
    if _json:
        import json
        import time

        # json.dumps escapes every control character (and, ensure_ascii, C1 and U+2028).
        line = json.dumps({"time": round(time.time(), 3), "program": "fsm-init", "state": _state(),
                           "level": level.rstrip(": ") or "info", "message": message}) + "\n"
    else:
        line = f"fsm-init[{escape(str(_state()))}] {level}{escape(message)}\n"
    # One write per line so that lines from fsm-init and its children never interleave mid-line.
    write(2, line.encode("utf-8", "replace"))


def info(message: str) -> None:
    if not _quiet:
        _emit("", message)


def warn(message: str) -> None:
    _emit("warning: ", message)


def error(message: str) -> None:
    _emit("error: ", message)


def exception(error_: BaseException) -> None:
    """A traceback as log lines (through the outlet: never a blocking write to stderr)."""
    import traceback  # only on this path: it costs PID 1's start-up 3 ms

    for chunk in traceback.format_exception(error_):
        for line in chunk.rstrip("\n").splitlines():
            _emit("error: ", line)


def is_quiet() -> bool:
    return _quiet


# -- PID 1 never blocks on its own output ---------------------------------------------------------

PIPE_BUF = 4096  # a write this small to a pipe is atomic: it never interleaves with a child's
PENDING_MAX = 256 * 1024  # bytes held per stream while its reader stalls; more lines are dropped


def _nonblocking_writer(fd: int) -> tuple[int, str]:
    """A way to write to fd without ever blocking, and without changing fd for the children.

    O_NONBLOCK belongs to the open file description, which fsm-init shares with every
    child that inherited fd 1 or 2 (the service writes its output there): setting it on
    fd itself would hand the service EAGAIN on a full pipe, which few programs handle.
    So fsm-init gets a description of its own:

    * a pipe or FIFO, a terminal, a character device: opened again through
      /proc/self/fd/N (a new open file description of the same pipe or device), made
      O_NONBLOCK; "write";
    * a socket (journald's stream, a log driver's): a dup written with send(MSG_DONTWAIT),
      a per-call non-blocking flag; "send";
    * a regular file or a block device: fd itself, blocking (a file has no reader to
      stall on, and a reopened description would have its own offset); "file";
    * anything else, or when the reopen fails (/proc not mounted): fd itself, written
      only after poll() with a zero time-out says it is writable, at most PIPE_BUF
      bytes at a time; "poll" (a child filling the pipe between the poll and the write
      could still block PID 1 there, the one case left).
    """
    import stat

    try:
        st = os.fstat(fd)
    except OSError:
        return fd, "file"
    mode = st.st_mode
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return fd, "file"
    if stat.S_ISSOCK(mode):
        return os.dup(fd), "send"  # os.dup: not inherited by children
    try:
        new = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
                      | os.O_APPEND)
    except OSError:
        return fd, "poll"
    again = os.fstat(new)
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
        os.close(new)
        return fd, "poll"
    return new, "write"


class Outlet:
    """fsm-init's writes to one of its standard streams: never blocking, bounded.

    Whole lines go into a buffer of at most PENDING_MAX bytes; the buffer is written
    at once when the stream takes it, otherwise from the event loop when the stream
    is writable again.  A line that does not fit is dropped and counted; when the
    stream drains, one log line says how many were lost.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.fd, self.how = _nonblocking_writer(target)
        self.buffer = bytearray()
        self.dropped = 0  # lines, in all
        self.dropped_now = 0  # lines since the stream last drained
        self.watching = False
        self._sock = None
        if self.how == "send":
            import socket

            self._sock = socket.socket(fileno=self.fd)

    def write(self, data: bytes) -> bool:
        """data (complete lines) written or queued: True; dropped: False."""
        if self.how == "file":
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError:
                return False
            return True
        # An empty buffer takes any one line (a long one is not dropped on a stream that
        # keeps up); otherwise the buffer stays within PENDING_MAX.
        if self.buffer and len(self.buffer) + len(data) > PENDING_MAX:
            lines = max(1, data.count(b"\n"))
            self.dropped += lines
            self.dropped_now += lines
            self._watch()
            return False
        self.buffer += data
        self.flush()
        return True

    def flush(self) -> None:
        """Write what the stream takes now; watch for writability when something is left."""
        while self.buffer:
            # Whole lines, at most PIPE_BUF bytes (atomic: no child's write lands inside
            # them), or one longer line on its own.
            end = self.buffer.rfind(b"\n", 0, PIPE_BUF) + 1 or (self.buffer.find(b"\n") + 1 or len(self.buffer))
            chunk = bytes(self.buffer[:end])
            try:
                written = self._write(chunk)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError:
                # The reader is gone (EPIPE) or the stream is broken: nothing will take it.
                written = len(chunk)
            if not written:
                self._watch()
                return
            del self.buffer[:written]
        self._unwatch()
        if self.dropped_now:
            count, self.dropped_now = self.dropped_now, 0
            warn(f"{count} log line{'s' if count != 1 else ''} dropped while the log reader stalled"
                 + (" (stdout)" if self.target == 1 else ""))

    def _write(self, chunk: bytes) -> int:
        if self.how == "send":
            import socket

            assert self._sock is not None  # made in __init__ with how "send"
            return self._sock.send(chunk, socket.MSG_DONTWAIT)
        if self.how == "poll":
            import select

            poller = select.poll()
            poller.register(self.fd, select.POLLOUT)
            if not poller.poll(0):
                return 0
            chunk = chunk[:PIPE_BUF]
        return os.write(self.fd, chunk)

    def _watch(self) -> None:
        if not self.watching and _loop is not None and self.buffer:
            _loop.watch_writable(self.fd, self.flush)
            self.watching = True

    def _unwatch(self) -> None:
        if self.watching and _loop is not None:
            _loop.unwatch(self.fd)
        self.watching = False

    def drain(self, timeout: float) -> None:
        """Before an exec or exit: wait at most timeout for the reader to take the buffer."""
        import select
        import time

        end = time.monotonic() + timeout
        while self.buffer:
            self.flush()
            left = end - time.monotonic()
            if not self.buffer or left <= 0:
                return
            poller = select.poll()
            poller.register(self.fd, select.POLLOUT)
            poller.poll(left * 1000)


_outlets: dict[int, Outlet] = {}
_loop = None


def go_nonblocking() -> None:
    """From now on this process's own writes to stdout and stderr never block (PID 1)."""
    for fd in (1, 2):
        if fd not in _outlets:
            _outlets[fd] = Outlet(fd)


def outlet(fd: int) -> "Outlet | None":
    """The outlet fd (1 or 2) is written through, or None: written directly."""
    return _outlets.get(fd)


def use_outlets(outlets: dict, loop=None) -> tuple[dict, object]:
    """Write through these outlets (fd -> Outlet), flushed by this loop, instead: a test's
    stalled pipe as stdout.  Returns the previous outlets and loop, to put back."""
    global _outlets, _loop
    previous = (_outlets, _loop)
    _outlets, _loop = outlets, loop
    return previous


def attach(loop) -> None:
    """The event loop that writes what a stalled stream left buffered, when it can."""
    global _loop
    _loop = loop
    for outlet in _outlets.values():
        outlet.watching = False
        outlet.flush()


def write(fd: int, data: bytes) -> bool:
    """Complete lines to fd (1 or 2): through the outlet when there is one; True unless dropped."""
    outlet = _outlets.get(fd)
    if outlet is not None:
        return outlet.write(data)
    try:
        os.write(fd, data)
    except OSError:
        return False
    return True


def dropped() -> int:
    """Lines of fsm-init's own output dropped because a stream's reader stalled."""
    return sum(outlet.dropped for outlet in _outlets.values())


def drain(timeout: float = 0.5) -> None:
    """Before exec or exit: give stalled streams at most timeout (in all) to take what is buffered."""
    import time

    end = time.monotonic() + timeout
    for outlet in _outlets.values():
        outlet.drain(max(0.0, end - time.monotonic()))
