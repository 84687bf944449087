"""FSM_INIT_HTTP: the probes' server on loopback, driven by a real event loop on the fake
system: every endpoint, the refusals, and the clients that must not hold PID 1 up
(slow, silent, flooding, not reading)."""

import json
import socket
import time

import pytest

from fsm_init.core import control, http_probes, metrics
from fsm_init.core.http_probes import HttpServer, parse_address
from fsm_init.core.loop import EventLoop

from .fakes import FakeSystem, close_loop


class Supervisor:
    """What the engine and the thin reaper give the server."""

    def __init__(self) -> None:
        self.live, self.ready = (True, "fsm-init answers (watch)"), (False, "check failed: \x1b[31mred")

    def request_live(self):
        return self.live

    def health(self):
        return self.ready

    def snapshot(self):
        return {"state": "watch", "restarts": 2}

    def metrics_text(self):
        return metrics.Metrics().render("watch", None)


class Rig:
    def __init__(self) -> None:
        self.system = FakeSystem()
        self.loop = EventLoop(self.system, lambda signum: None, lambda pid, status: None)
        self.supervisor = Supervisor()
        # port 0 (any free one) is not a valid FSM_INIT_HTTP: the listener is made directly
        self.server = HttpServer(self.system.listen_tcp("127.0.0.1", 0, socket.AF_INET), self.loop, self.supervisor)
        self.port = self.server.sock.getsockname()[1]

    def connect(self) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.serve(2)
        return client

    def serve(self, rounds: int = 10) -> None:
        for _ in range(rounds):
            self.loop.poll(0.001)
            self.loop.fire_due()

    def get(self, request: bytes) -> tuple[int, dict, bytes]:
        client = self.connect()
        client.sendall(request)
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            self.serve(1)
            try:
                client.settimeout(0.001)
                chunk = client.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            data += chunk
        client.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        assert int(headers["Content-Length"]) == len(body) and headers["Connection"] == "close"
        return int(lines[0].split()[1]), headers, body

    def close(self) -> None:
        self.server.close()
        close_loop(self.loop)


@pytest.fixture
def rig():
    made = Rig()
    yield made
    made.close()


@pytest.mark.parametrize("raw, expected", [
    ("127.0.0.1:8080", ("127.0.0.1", 8080, socket.AF_INET)),
    ("0.0.0.0:1", ("0.0.0.0", 1, socket.AF_INET)),
    ("[::1]:65535", ("::1", 65535, socket.AF_INET6)),
    ("[::]:9100", ("::", 9100, socket.AF_INET6)),
])
def test_addresses_accepted(raw, expected):
    assert parse_address(raw) == expected


@pytest.mark.parametrize("raw", ["8080", ":8080", "localhost:8080", "127.0.0.1:0", "127.0.0.1:65536",
                                 "127.0.0.1:http", "::1:8080", "[127.0.0.1]:80", "127.0.0.1:-1", "1.2.3:80"])
def test_a_bad_value_is_one_error_naming_the_variable_and_the_value(raw, capfd):
    fake = FakeSystem()
    loop = EventLoop(fake, lambda signum: None, lambda pid, status: None)
    try:
        assert HttpServer.start(raw, loop, Supervisor()) is None
    finally:
        close_loop(loop)
    err = capfd.readouterr().err
    assert f"FSM_INIT_HTTP={raw!r} is not ADDR:PORT" in err and "no HTTP probes" in err
    assert err.count("\n") == 1
    assert not any(call[0] == "listen_tcp" for call in fake.calls)


def test_unset_serves_nothing():
    fake = FakeSystem()
    assert HttpServer.start("", None, Supervisor()) is None and fake.calls == []


def test_a_port_in_use_is_said_and_fsm_init_goes_on(capfd):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    raw = f"127.0.0.1:{taken.getsockname()[1]}"
    loop = EventLoop(FakeSystem(), lambda signum: None, lambda pid, status: None)
    try:
        assert HttpServer.start(raw, loop, Supervisor()) is None
    finally:
        close_loop(loop)
        taken.close()
    assert f"FSM_INIT_HTTP={raw!r}: cannot listen (Address already in use): no HTTP probes" in capfd.readouterr().err


def test_every_endpoint(rig):
    status, headers, body = rig.get(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (200, b"fsm-init answers (watch)\n")
    status, headers, body = rig.get(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 503 and body == b"check failed: \\x1b[31mred\n"  # a check's output, escaped
    rig.supervisor.ready = (True, "the latest check cycle of this instance passed")
    assert rig.get(b"GET /readyz?verbose=1 HTTP/1.0\r\n\r\n")[0] == 200
    rig.supervisor.live = (False, "fsm-init gave up: 3 failure restarts")
    assert rig.get(b"GET /livez HTTP/1.0\n\n")[0] == 503
    status, headers, body = rig.get(b"GET /status HTTP/1.1\r\n\r\n")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"state": "watch", "restarts": 2}
    status, headers, body = rig.get(b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == 200 and headers["Content-Type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert body.endswith(b"# EOF\n")
    assert rig.server.conns == {} and rig.loop.pending() == {}  # every connection closed, its deadline gone


@pytest.mark.parametrize("target", [b"http://127.0.0.1:9000/livez", b"HTTP://[::1]/livez?x=1", b"/livez#top"])
def test_absolute_form_and_fragments_are_the_path(rig, target):
    """RFC 9112 3.2.2: a server must accept the absolute form (a proxy's, some clients')."""
    assert rig.get(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200


@pytest.mark.parametrize("request_line, expected", [
    (b"POST /livez HTTP/1.1", 405), (b"HEAD /livez HTTP/1.1", 405), (b"GET /nothing HTTP/1.1", 404),
    (b"GET /livez", 400), (b"\x00\x01", 400), (b"GET  /livez HTTP/1.1", 400),
])
def test_refusals(rig, request_line, expected):
    status, headers, _ = rig.get(request_line + b"\r\n\r\n")
    assert status == expected
    assert (headers.get("Allow") == "GET") == (expected == 405)


def test_a_message_naming_a_file_that_is_not_utf8_is_answered(rig):
    rig.supervisor.ready = (False, "check failed: PeriodicST-\udcff exited with status 1")
    assert rig.get(b"GET /readyz HTTP/1.1\r\n\r\n") == (
        503, {"Content-Type": "text/plain; charset=utf-8", "Content-Length": "48", "Cache-Control": "no-store",
              "Connection": "close"}, b"check failed: PeriodicST-? exited with status 1\n")


def test_a_request_too_large_is_refused(rig):
    assert rig.get(b"GET /livez HTTP/1.1\r\nX: " + b"a" * 10_000)[0] == 431


def test_a_slow_client_is_closed_at_its_deadline_and_others_are_served(rig):
    slow = rig.connect()
    slow.sendall(b"GET /livez HTT")  # and never more
    assert len(rig.server.conns) == 1
    assert rig.get(b"GET /livez HTTP/1.1\r\n\r\n")[0] == 200  # meanwhile
    rig.system.clock += http_probes.CONNECTION_TIMEOUT
    rig.serve()
    assert rig.server.conns == {}
    slow.settimeout(5)
    assert slow.recv(100) == b""  # closed, nothing said
    slow.close()


def test_a_flood_of_silent_clients_drops_the_oldest_and_the_probe_gets_through(rig):
    idle = [rig.connect() for _ in range(http_probes.MAX_CONNECTIONS + 5)]
    assert len(rig.server.conns) == http_probes.MAX_CONNECTIONS
    assert rig.get(b"GET /livez HTTP/1.1\r\n\r\n")[0] == 200
    assert len(rig.server.conns) <= http_probes.MAX_CONNECTIONS
    for client in idle:
        client.close()


def test_a_client_that_does_not_read_gets_the_rest_later_never_blocking(rig):
    big = "x" * 12_000_000  # more than the socket buffers hold (up to 4 MiB each way)
    rig.supervisor.snapshot = lambda: {"big": big}
    client = socket.socket()
    client.connect(("127.0.0.1", rig.port))
    client.sendall(b"GET /status HTTP/1.1\r\n\r\n")
    started = time.monotonic()
    rig.serve()
    assert time.monotonic() - started < 2  # the loop never waited for the client
    assert rig.server.conns and rig.server.conns[next(iter(rig.server.conns))][1]  # the rest waits
    received = b""
    client.settimeout(0.05)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rig.loop.poll(0)
        try:
            chunk = client.recv(1 << 20)
        except TimeoutError:
            continue
        if not chunk:
            break
        received += chunk
    assert received.endswith(b'"\n}\n') and rig.server.conns == {}
    client.close()


def test_a_client_gone_before_its_request_ends_is_closed(rig):
    client = rig.connect()
    client.sendall(b"GET /li")
    client.close()
    rig.serve()
    assert rig.server.conns == {} and rig.loop.pending() == {}


def test_a_failing_supervisor_answers_500_and_closes(rig):
    rig.supervisor.snapshot = lambda: 1 / 0
    assert rig.get(b"GET /status HTTP/1.1\r\n\r\n")[0] == 500
    assert rig.server.conns == {}


def test_a_flood_of_slow_clients_closing_the_oldest_in_the_same_wake_up_is_safe(rig):
    """A connection dropped for a newer one may be readable in the same batch of the loop:
    the loop must not trip over its closed socket (the server watches descriptors)."""
    slow = [rig.connect() for _ in range(http_probes.MAX_CONNECTIONS)]
    for _ in range(5):
        # the listener is ready first, then the oldest connections: accepting the new ones
        # drops old ones the same batch still lists as readable
        new = [socket.create_connection(("127.0.0.1", rig.port), timeout=5) for _ in range(4)]
        for client in slow:
            try:
                client.send(b"G")
            except OSError:
                pass
        slow += new
        rig.serve(3)
    assert len(rig.server.conns) <= http_probes.MAX_CONNECTIONS
    assert rig.get(b"GET /livez HTTP/1.1\r\n\r\n")[0] == 200
    for client in slow:
        client.close()


def test_accept_failing_pauses_listening_instead_of_spinning(capfd):
    from .test_control import OutOfDescriptors

    listener = OutOfDescriptors()
    fake = FakeSystem()
    loop = EventLoop(fake, lambda signum: None, lambda pid, status: None)
    server = HttpServer(listener, loop, Supervisor())
    try:
        for _ in range(50):
            loop.poll(0)
        assert listener.accepts == 1 and not server.listening
        assert "HTTP probes: cannot accept (Too many open files); listening again in 1s" in capfd.readouterr().err
        fake.clock += control.ACCEPT_PAUSE
        loop.fire_due()
        loop.poll(0)
        assert listener.accepts == 2 and loop.due("http-accept") == fake.clock + 2 * control.ACCEPT_PAUSE
        assert "cannot accept" not in capfd.readouterr().err  # said once
    finally:
        server.close()
        close_loop(loop)
