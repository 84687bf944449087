"""The control socket: srvctl's requests and the engine's answers.

One JSON line each way over a unix stream socket, $FSM_INIT_RUN_DIR/control.sock
(directory 0700, socket 0600: only root may steer PID 1).  Connections are
non-blocking and served by the event loop, so a client that connects and says
nothing cannot stall PID 1.  Standard library only: srvctl and the thin reaper use it.
"""

import json
import socket
from collections.abc import Callable

from fsm_init.core import log

MAX_REQUEST = 4096
# A client gets this long to send its request line, and at most this many are served
# at once: idle or piled-up connections must not exhaust PID 1's file descriptors.
REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 16
# After accept() fails (EMFILE: no descriptor left), listening pauses this long, doubling
# while it keeps failing up to ACCEPT_PAUSE_MAX: the listener stays readable, and
# retrying at once would spin PID 1.
ACCEPT_PAUSE = 1.0
ACCEPT_PAUSE_MAX = 8.0


def accept_pause(failures: int, what: str, error: OSError) -> float:
    """How long a listener rests after its failures-th accept failure in a row (out of
    descriptors), doubling up to ACCEPT_PAUSE_MAX; the first failure is said, once."""
    if failures == 1:
        log.warn(f"{what}: cannot accept ({error.strerror}); listening again in {ACCEPT_PAUSE:g}s, "
                 f"backing off up to {ACCEPT_PAUSE_MAX:g}s while it fails (said once)")
    return min(ACCEPT_PAUSE * 2 ** min(failures - 1, 16), ACCEPT_PAUSE_MAX)
# The answer to `srvctl restart` in non-daemon mode, from the engine or the thin reaper.
NOT_SUPERVISED = "the service runs in non-daemon mode: fsm-init does not restart it (set workwatch)"


class ControlServer:
    def __init__(self, sock: socket.socket, path: str, loop, handler: Callable[[dict], dict]) -> None:
        self.sock, self.path, self.loop, self.handler = sock, path, loop, handler
        self.buffers: dict[socket.socket, bytes] = {}  # requests being read
        self.sending: dict[socket.socket, bytes] = {}  # the rest of replies a slow client has not taken yet
        self.listening = False
        self.accept_failures = 0  # in a row: the back-off, and said once
        self._listen()

    def _listen(self) -> None:
        if not self.listening:
            self.loop.watch(self.sock, self._accept)
            self.listening = True

    def _pause(self) -> None:
        if self.listening:
            self.loop.unwatch(self.sock)
            self.listening = False

    @classmethod
    def listen(cls, path: str, loop, handler: Callable[[dict], dict]) -> "ControlServer | None":
        try:
            return cls(loop.system.listen_unix(path), path, loop, handler)
        except OSError as e:
            log.warn(f"no control socket at {path} ({e.strerror}): srvctl cannot reach this fsm-init")
            return None

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        except OSError as e:
            self.accept_failures += 1
            pause = accept_pause(self.accept_failures, "control socket", e)
            self._pause()
            self.loop.call_later("control-accept", pause, self._listen)
            return
        if self.accept_failures:
            log.info(f"control socket: accepting again after {self.accept_failures} failed attempt(s)")
            self.accept_failures = 0
        conn.setblocking(False)
        self.buffers[conn] = b""
        self.loop.watch(conn, lambda: self._read(conn))
        self.loop.call_later(self._deadline(conn), REQUEST_TIMEOUT, lambda: self._finish(
            conn, {"ok": False, "message": f"no request line within {REQUEST_TIMEOUT:g}s"}))
        if len(self.buffers) + len(self.sending) >= MAX_CONNECTIONS:
            self._pause()  # _finish or _drop listens again

    @staticmethod
    def _deadline(conn: socket.socket) -> str:
        return f"control-{id(conn)}"

    def _read(self, conn: socket.socket) -> None:
        try:
            chunk = conn.recv(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        data = self.buffers[conn] + chunk
        self.buffers[conn] = data
        if chunk and b"\n" not in data and len(data) < MAX_REQUEST:
            return
        try:
            reply = self._answer(data)
        except Exception as e:  # a bug must not leave the connection readable, spinning the loop
            log.error(f"control request failed: {e!r}")
            reply = {"ok": False, "message": f"internal error: {e!r}"}
        self._finish(conn, reply)

    def _answer(self, data: bytes) -> dict:
        try:
            request = json.loads(data.split(b"\n", 1)[0])
            if not isinstance(request, dict):
                raise ValueError
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the parser's limit
            return {"ok": False, "message": "bad request: expected one JSON object line"}
        return self.handler(request)

    def _finish(self, conn: socket.socket, reply: dict) -> None:
        if conn not in self.buffers:
            return
        self.loop.cancel(self._deadline(conn))
        self.loop.unwatch(conn)
        del self.buffers[conn]
        self.sending[conn] = json.dumps(reply).encode() + b"\n"
        self._send(conn)
        self._listen_if_room()

    def _send(self, conn: socket.socket) -> None:
        """As much of the reply as the socket takes now, never waiting: a client that does
        not read (a full socket buffer) gets the rest as it reads, and is dropped after
        REQUEST_TIMEOUT; PID 1 goes on meanwhile."""
        data = self.sending.get(conn)
        if data is None:
            return
        try:
            data = data[conn.send(data):]
        except BlockingIOError:
            pass
        except OSError:
            data = b""  # the client went away: nothing more to say
        if data:
            first = self.loop.selector.get_map().get(conn) is None
            self.sending[conn] = data
            if first:
                self.loop.watch_writable(conn, lambda: self._send(conn))
                self.loop.call_later(self._deadline(conn), REQUEST_TIMEOUT, lambda: self._drop(conn))
            return
        self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        if self.sending.pop(conn, None) is None:
            return
        self.loop.cancel(self._deadline(conn))
        self.loop.unwatch(conn)
        conn.close()
        self._listen_if_room()

    def _listen_if_room(self) -> None:
        if self.sock.fileno() >= 0 and len(self.buffers) + len(self.sending) < MAX_CONNECTIONS:
            self._listen()

    def close(self) -> None:
        self._pause()
        self.loop.cancel("control-accept")
        for conn in list(self.sending):
            self._drop(conn)
        self.sock.close()
        try:
            self.loop.system.remove(self.path)
        except OSError:
            pass


def request(path: str, verb: str, timeout: float = 10.0, **fields) -> dict:
    """Send one request and wait for its answer; raises OSError when no engine listens."""
    from fsm_init.core.wire import exchange

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        data = exchange(sock, path, json.dumps({"verb": verb, **fields}).encode() + b"\n", timeout)
    return json.loads(data)
