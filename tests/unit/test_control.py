"""The control socket keeps PID 1 safe from its clients: a bad or hostile request line,
clients that connect and say nothing, and a process out of file descriptors."""

import errno
import json
import os
import socket
import time

import pytest

from fsm_init.core import control
from fsm_init.core.loop import EventLoop

from . import fakes
from .fakes import FakeSystem


class Rig:
    def __init__(self, listener=None) -> None:
        self.system = FakeSystem()
        self.loop = EventLoop(self.system, lambda signum: None, lambda pid, status: None)
        self.requests: list[dict] = []
        self.server_sock, self.client_side = None, None
        if listener is None:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            listener.bind("\0fsm-init-test-control-%d" % os.getpid())
            listener.listen(64)
        self.server = control.ControlServer(listener, "/nonexistent/control.sock", self.loop, self.handle)

    def handle(self, request: dict) -> dict:
        self.requests.append(request)
        return {"ok": True, "message": "fine"}

    def connect(self) -> socket.socket:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(self.server.sock.getsockname())
        client.settimeout(5)
        return client

    def serve(self, rounds: int = 20) -> None:
        """What the loop does when the sockets are readable, a few times over."""
        for _ in range(rounds):
            self.loop.poll(0)
            fakes.pump(self)

    def close(self) -> None:
        for conn in list(self.server.buffers):
            conn.close()
        self.server.sock.close()
        fakes.close_loop(self.loop)


@pytest.fixture
def rig():
    made = Rig()
    yield made
    made.close()


def reply(client: socket.socket) -> dict:
    return json.loads(client.makefile().readline())


def test_a_request_nested_past_the_parsers_limit_is_a_bad_request(rig):
    client = rig.connect()
    client.sendall(b"[" * 100_000 + b"\n")
    rig.serve()
    assert reply(client) == {"ok": False, "message": "bad request: expected one JSON object line"}
    assert rig.server.buffers == {} and rig.requests == []


def test_a_handler_that_fails_still_answers_and_closes(rig):
    rig.server.handler = lambda request: 1 / 0
    client = rig.connect()
    client.sendall(b'{"verb": "status"}\n')
    rig.serve()
    assert reply(client)["message"].startswith("internal error: ZeroDivisionError")
    assert rig.server.buffers == {}


def test_a_silent_client_is_answered_and_dropped_after_the_time_out(rig):
    client = rig.connect()
    rig.serve()
    assert len(rig.server.buffers) == 1
    fakes.advance(rig, control.REQUEST_TIMEOUT)
    assert reply(client) == {"ok": False, "message": "no request line within 5s"}
    assert rig.server.buffers == {}


def test_at_most_so_many_connections_at_once_and_the_rest_wait(rig):
    idle = [rig.connect() for _ in range(control.MAX_CONNECTIONS + 4)]
    rig.serve()
    assert len(rig.server.buffers) == control.MAX_CONNECTIONS and not rig.server.listening
    fakes.advance(rig, control.REQUEST_TIMEOUT)  # the first ones time out: the rest are accepted
    rig.serve()
    assert rig.server.listening and len(rig.server.buffers) == 4
    for client in idle:
        client.close()


def test_a_client_that_does_not_read_its_reply_never_blocks_pid_1(rig):
    # A reply bigger than the socket buffers (a status with long check output) to a client
    # that sent its request and then stalled: PID 1 sends what fits and goes on at once.
    big = "x" * (4 << 20)
    rig.server.handler = lambda request: {"ok": True, "message": big}
    stalled = rig.connect()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b'{"verb": "status"}\n')
    started = time.monotonic()
    rig.serve()
    assert time.monotonic() - started < 0.5
    assert rig.server.buffers == {} and len(rig.server.sending) == 1
    # another client is served meanwhile
    rig.server.handler = lambda request: {"ok": True, "message": "fine"}
    other = rig.connect()
    other.sendall(b'{"verb": "live"}\n')
    rig.serve()
    assert reply(other) == {"ok": True, "message": "fine"}
    # the stalled client reads: it gets the whole reply as the loop sends the rest
    stalled.setblocking(False)
    data = b""
    deadline = time.monotonic() + 20
    while not data.endswith(b"\n") and time.monotonic() < deadline:
        rig.serve(1)
        try:
            data += stalled.recv(1 << 20)
        except BlockingIOError:
            pass
    assert json.loads(data)["message"] == big and rig.server.sending == {}


def test_a_client_that_never_reads_its_reply_is_dropped_after_the_time_out(rig):
    rig.server.handler = lambda request: {"ok": True, "message": "x" * (4 << 20)}
    stalled = rig.connect()
    stalled.sendall(b'{"verb": "status"}\n')
    rig.serve()
    assert len(rig.server.sending) == 1
    fakes.advance(rig, control.REQUEST_TIMEOUT)
    assert rig.server.sending == {} and rig.server.listening
    stalled.close()


class OutOfDescriptors:
    """A listener whose accept fails as it does when PID 1 has no descriptor left."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.write(self.w, b"x")  # always readable, as a listener with a queued connection
        self.accepts = 0

    def fileno(self) -> int:
        return self.r

    def accept(self):
        self.accepts += 1
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def test_accept_failing_pauses_listening_instead_of_spinning(capfd):
    listener = OutOfDescriptors()
    rig = Rig(listener)
    try:
        rig.serve(rounds=50)
        assert listener.accepts == 1 and not rig.server.listening
        assert "cannot accept (Too many open files); listening again in 1s" in capfd.readouterr().err
        fakes.advance(rig, control.ACCEPT_PAUSE)
        rig.serve(rounds=1)
        assert listener.accepts == 2
    finally:
        listener.close()
        fakes.close_loop(rig.loop)
