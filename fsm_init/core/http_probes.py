"""HTTP probes and metrics: ``FSM_INIT_HTTP=ADDR:PORT`` (off by default).

Served from the one event loop, never waiting: non-blocking sockets, at most
MAX_CONNECTIONS at once (the oldest is dropped for a new one, so a flood of idle
clients cannot lock the probes out), each connection closed CONNECTION_TIMEOUT after
it was accepted whatever it did (a client sending its request a byte a minute gets
nowhere), requests of MAX_REQUEST bytes at most, GET only, small fixed answers, and the
connection closed after each (HTTP/1.0 style).  Endpoints:

  /livez    200 while fsm-init answers (``srvctl live``), 503 once it gave up
  /readyz   200 while the service is ready (``srvctl health``), 503 otherwise
  /status   the JSON of ``srvctl status --json``
  /metrics  the OpenMetrics text of ``srvctl metrics``

The engine and the thin reaper both serve them (the listener crosses the exec like the
control socket).  Standard library only, and not even typing: the thin reaper imports it.
"""

import json
import socket

from fsm_init.core import log
from fsm_init.core.control import accept_pause

VARIABLE = "FSM_INIT_HTTP"
MAX_REQUEST = 8192  # the request line and headers; a GET has no body
CONNECTION_TIMEOUT = 5.0
MAX_CONNECTIONS = 32
ACCEPTS_PER_WAKE = 16
# After accept() fails (EMFILE), listening pauses, doubling up to the maximum (as control.py).
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
TEXT = "text/plain; charset=utf-8"
PATHS = ("/livez", "/readyz", "/status", "/metrics")


def parse_address(raw: str) -> tuple:
    """FSM_INIT_HTTP's ADDR:PORT as (host, port, family); ValueError saying what is wrong.
    ADDR is an IP address (no name: resolving one could block PID 1); IPv6 in brackets."""
    problem = (f"{VARIABLE}={raw!r} is not ADDR:PORT with ADDR an IP address (127.0.0.1, 0.0.0.0, [::1], [::]) "
               "and PORT a number from 1 to 65535")
    host, sep, port_text = raw.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(problem)
    import ipaddress  # only when FSM_INIT_HTTP is set

    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ValueError(problem) from None
    if (address.version == 6) != bracketed:
        raise ValueError(problem)
    return str(address), int(port_text), socket.AF_INET6 if bracketed else socket.AF_INET


class HttpServer:
    def __init__(self, sock, loop, supervisor) -> None:
        """supervisor (the engine or the thin reaper) has request_live(), health(),
        snapshot() and metrics_text()."""
        self.sock, self.loop, self.supervisor = sock, loop, supervisor
        # socket -> [bytes read, bytes still to send or None, its fd], oldest first.  The loop
        # watches the fd, not the socket: a connection closed for a newer one may still be
        # listed as ready in the same wake-up, and a closed socket has no fd to look up.
        self.conns: dict = {}
        self.served = 0  # connections accepted, for unique deadline names
        self.names: dict = {}  # socket -> its deadline's name
        self.listening = False
        self.accept_failures = 0
        self._listen()

    @classmethod
    def start(cls, raw: str, loop, supervisor):
        """The server FSM_INIT_HTTP asks for, or None (unset, or one error said why)."""
        if not raw:
            return None
        try:
            host, port, family = parse_address(raw)
            sock = loop.system.listen_tcp(host, port, family)
        except ValueError as e:
            log.error(f"{e}: no HTTP probes")
            return None
        except OSError as e:
            log.error(f"{VARIABLE}={raw!r}: cannot listen ({e.strerror}): no HTTP probes")
            return None
        log.info(f"HTTP probes and metrics on {raw} ({', '.join(PATHS)})")
        return cls(sock, loop, supervisor)

    def _listen(self) -> None:
        if not self.listening:
            self.loop.watch(self.sock, self._accept)
            self.listening = True

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as e:
                self.accept_failures += 1
                pause = accept_pause(self.accept_failures, "HTTP probes", e)
                self.loop.unwatch(self.sock)
                self.listening = False
                self.loop.call_later("http-accept", pause, self._listen)
                return
            self.accept_failures = 0
            if len(self.conns) >= MAX_CONNECTIONS:
                self._close(next(iter(self.conns)))  # the oldest: a probe must get through
            self._serve(conn)

    def _serve(self, conn) -> None:
        conn.setblocking(False)
        self.served += 1
        name = self.names[conn] = f"http-{self.served}"
        self.conns[conn] = [b"", None, conn.fileno()]
        self.loop.watch(conn.fileno(), lambda: self._read(conn))
        self.loop.call_later(name, CONNECTION_TIMEOUT, lambda: self._close(conn))

    def _read(self, conn) -> None:
        if conn not in self.conns:
            return
        try:
            chunk = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(conn)  # gone before its request was complete: nothing to answer
            return
        entry = self.conns[conn]
        entry[0] += chunk
        data = entry[0]
        end = data.find(b"\r\n\r\n")
        if end < 0:
            end = data.find(b"\n\n")
        if end < 0:
            if len(data) > MAX_REQUEST:
                self._reply(conn, 431, TEXT, b"request too large\n")
            return
        if end > MAX_REQUEST:
            self._reply(conn, 431, TEXT, b"request too large\n")
            return
        try:
            status, kind, body = self.answer(data.split(b"\n", 1)[0])
        except Exception as e:  # noqa: BLE001  a bug must not leave the connection readable, spinning the loop
            log.error(f"HTTP request failed: {e!r}")
            status, kind, body = 500, TEXT, b"internal error\n"
        self._reply(conn, status, kind, body)

    def answer(self, line: bytes) -> tuple:
        """(status, content type, body) for a request line."""
        parts = line.rstrip(b"\r").split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, TEXT, b"bad request line\n"
        if parts[0] != b"GET":
            return 405, TEXT, b"GET only\n"
        path = parts[1].split(b"?", 1)[0].split(b"#", 1)[0]
        if path[:7].lower() == b"http://" or path[:8].lower() == b"https://":  # the absolute form
            path = b"/" + path.split(b"//", 1)[1].partition(b"/")[2]
        supervisor = self.supervisor
        if path == b"/livez":
            return plain(*supervisor.request_live())
        if path == b"/readyz":
            return plain(*supervisor.health())
        if path == b"/status":
            return 200, "application/json", json.dumps(supervisor.snapshot(), indent=2).encode() + b"\n"
        if path == b"/metrics":
            from fsm_init.core.metrics import CONTENT_TYPE

            return 200, CONTENT_TYPE, supervisor.metrics_text().encode()
        return 404, TEXT, ("not found; try " + " ".join(PATHS) + "\n").encode()

    def _reply(self, conn, status: int, kind: str, body: bytes) -> None:
        head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                f"Cache-Control: no-store\r\nConnection: close\r\n" + ("Allow: GET\r\n" if status == 405 else "")
                + "\r\n")
        self.loop.unwatch(self.conns[conn][2])
        self.conns[conn][1] = head.encode() + body
        self._send(conn)

    def _send(self, conn) -> None:
        """As much as the socket takes now; the rest when it is writable again, until the
        connection's time is up."""
        entry = self.conns.get(conn)
        if entry is None:
            return
        data = entry[1]
        try:
            data = data[conn.send(data):]
        except BlockingIOError:
            pass
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        entry[1] = data
        if self.loop.selector.get_map().get(entry[2]) is None:
            self.loop.watch_writable(entry[2], lambda: self._send(conn))

    def _close(self, conn) -> None:
        entry = self.conns.pop(conn, None)
        if entry is None:
            return
        self.loop.cancel(self.names.pop(conn))
        self.loop.unwatch(entry[2])
        conn.close()

    def close(self) -> None:
        """Stop serving (fsm-init exits)."""
        for conn in list(self.conns):
            self._close(conn)
        if self.listening:
            self.loop.unwatch(self.sock)
            self.listening = False
        self.loop.cancel("http-accept")
        self.sock.close()


def plain(ok: bool, message: str) -> tuple:
    """A probe's answer: 200 or 503, and the message (escaped: it may name a check's output,
    or a script whose name is not UTF-8: its surrogate escapes become "?", not a 500)."""
    return (200 if ok else 503), TEXT, (log.escape(str(message)) + "\n").encode("utf-8", "replace")
