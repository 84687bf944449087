"""syslog_relay: the parser, and the relay on a real socket in a temporary directory
driven by hand (no loop running, no subprocess)."""

import os
import socket

import pytest

from fsm_init.compat import syslog_relay as sr
from fsm_init.core.loop import EventLoop
from tests.unit.fakes import FakeSystem

# -- parser ------------------------------------------------------------------------------


@pytest.mark.parametrize("data, line", [
    # glibc syslog(3) and util-linux logger on a local socket: no host
    (b"<13>Nov 22 10:48:22 myprog: hello", "syslog[user.notice] myprog: hello"),
    (b"<75>Nov  2 10:48:22 myprog[77]: hi there", "syslog[cron.err] myprog[77]: hi there"),
    (b"<30>Jan  1 00:00:00 CRON[5]: (root) CMD (true)", "syslog[daemon.info] CRON[5]: (root) CMD (true)"),
    # RFC 3164 with a host
    (b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed", "syslog[auth.crit] su: 'su root' failed"),
    (b"<13>Feb  5 17:32:18 10.0.0.99 myproc[10]: Use the BFG!", "syslog[user.notice] myproc[10]: Use the BFG!"),
    # RFC 5424 (logger --rfc5424), structured data and BOM skipped
    (b'<13>1 2026-11-22T10:48:22.399431+00:00 vm x 42 - [timeQuality tzKnown="1"] five',
     "syslog[user.notice] x[42]: five"),
    (b"<165>1 2003-10-11T22:14:15.003Z host.example evntslog - ID47 - \xef\xbb\xbfAn event",
     "syslog[local4.notice] evntslog: An event"),
    (b"<165>1 - - - - - -", "syslog[local4.notice] "),
    # no timestamp (busybox, some daemons)
    (b"<28>pppd[9]: LCP terminated", "syslog[daemon.warning] pppd[9]: LCP terminated"),
    # missing parts
    (b"<7>", "syslog[kern.debug] "),
    (b"", "syslog[user.notice] "),
    (b"just text", "syslog[user.notice] just text"),
    (b"<191>Nov 22 10:48:22 no tag here", "syslog[local7.debug] no tag here"),
    # out-of-range or broken PRI: kept in the text, default user.notice
    (b"<192>x", "syslog[user.notice] <192>x"),
    (b"<999>foo", "syslog[user.notice] <999>foo"),
    (b"<1x>foo", "syslog[user.notice] <1x>foo"),
    # garbage bytes, control characters, embedded newlines: still one line
    (b"<14>p: caf\xe9 \x00\x01\x1b[31m\ttab", "syslog[user.info] p: caf\ufffd \\x00\\x01\\x1b[31m\\ttab"),
    (b"<14>p: line1\nline2\n\x00", "syslog[user.info] p: line1\\nline2"),
    # C1 controls and the Unicode line/paragraph separators split lines for some readers
    (b"<14>p: a\xc2\x85b\xe2\x80\xa8c\xe2\x80\xa9d\x7f", "syslog[user.info] p: a\\x85b\\u2028c\\u2029d\\x7f"),
])
def test_parse(data, line):
    assert sr.parse(data).line() == line


def test_every_facility_and_severity_has_a_name():
    names = {(sr.parse(b"<%d>p: x" % pri).facility, sr.parse(b"<%d>p: x" % pri).severity) for pri in range(192)}
    assert len(names) == 192
    assert sr.parse(b"<0>p: x").facility == "kern" and sr.parse(b"<0>p: x").severity == "emerg"
    assert sr.parse(b"<86>p: x").facility == "authpriv" and sr.parse(b"<86>p: x").severity == "info"


def test_parse_never_fails_on_random_bytes():
    import random

    rng = random.Random(7)
    for _ in range(2000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(60)))
        line = sr.parse(b"<" + data if rng.random() < 0.5 else data).line()
        assert "\n" not in line and line.startswith("syslog[")


# -- the relay on a real socket ------------------------------------------------------------


class Relay:
    def __init__(self, tmp_path, **kwargs):
        self.system = FakeSystem()
        self.loop = EventLoop(self.system, lambda s: None, lambda p, s: None)
        self.path = str(tmp_path / "log")
        self.out_r, self.out_w = os.pipe2(os.O_NONBLOCK)
        self.relay = sr.SyslogRelay(self.loop, self.path, self.out_w, json_lines=False, **kwargs)

    def send(self, *messages):
        assert len(messages) < 10, "more would block: the kernel queues ~10 datagrams"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            for m in messages:
                s.sendto(m, self.path)

    def output(self) -> list[str]:
        try:
            return os.read(self.out_r, 1 << 20).decode().splitlines()
        except BlockingIOError:
            return []

    def close(self):
        self.relay.close()
        self.loop.close()
        for fd in (self.out_r, self.out_w):
            os.close(fd)


@pytest.fixture
def relay(tmp_path):
    r = Relay(tmp_path)
    yield r
    r.close()


def test_start_binds_0666_and_watches(relay):
    assert relay.relay.start()
    assert (os.stat(relay.path).st_mode & 0o777) == 0o666
    assert relay.relay.sock in relay.loop.selector.get_map()
    assert relay.relay.status() == f"listening on {relay.path}; 0 relayed"


def test_messages_become_lines(relay):
    relay.relay.start()
    relay.send(b"<75>Nov 22 10:48:22 myprog[77]: hi there", b"<13>Nov 22 10:48:22 other: two")
    relay.loop.poll(0)
    assert relay.output() == ["syslog[cron.err] myprog[77]: hi there", "syslog[user.notice] other: two"]
    assert relay.relay.status().endswith("; 2 relayed")


def test_a_long_message_is_cut_and_counted(relay, capfd):
    relay.relay.start()
    relay.send(b"<14>big: " + b"x" * 100_000)
    relay.loop.poll(0)
    [line] = relay.output()
    assert line.endswith(" [truncated]") and len(line) < sr.MAX_MESSAGE + 100
    assert relay.relay.truncated == 1 and "1 truncated" in relay.relay.status()
    relay.system.clock += sr.SUMMARY_EVERY
    relay.loop.fire_due()
    assert "1 messages cut at 8192 bytes" in capfd.readouterr().err


def test_one_event_reads_at_most_per_event(relay, monkeypatch):
    # The kernel queues few datagrams per socket (net.unix.max_dgram_qlen, often 10):
    # a smaller cap shows the same thing.
    monkeypatch.setattr(sr, "PER_EVENT", 4)
    relay.relay.start()
    relay.send(*[b"<14>p: %d" % i for i in range(7)])
    relay.loop.poll(0)
    assert len(relay.output()) == 4
    relay.loop.poll(0)
    assert len(relay.output()) == 3


def test_rate_limit_drops_and_summarises_only_when_non_zero(tmp_path, capfd):
    r = Relay(tmp_path, rate=10, burst=5, summary_every=10)
    try:
        r.relay.start()
        assert "syslog-summary" not in r.loop.pending()
        r.send(*[b"<14>p: %d" % i for i in range(9)])
        r.loop.poll(0)
        r.send(*[b"<14>p: %d" % i for i in range(6)])
        r.loop.poll(0)
        assert len(r.output()) == 5 and r.relay.dropped == 10
        assert "syslog-summary" in r.loop.pending()
        r.system.clock += 10  # refills 100 tokens, capped at the burst (5)
        r.loop.fire_due()
        err = capfd.readouterr().err
        assert "10 messages dropped" in err and err.count("warning: syslog relay:") == 1
        r.send(*[b"<14>p: %d" % i for i in range(3)])
        r.loop.poll(0)
        assert len(r.output()) == 3
        # no drop since the summary: no new summary scheduled
        assert "syslog-summary" not in r.loop.pending()
        assert r.relay.status() == f"listening on {r.path}; 8 relayed, 10 dropped"
    finally:
        r.close()


def test_stale_socket_is_replaced(relay, capfd):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(relay.path)
    stale.close()  # the file stays, nobody listens
    assert relay.relay.start()
    assert "replacing the stale socket" in capfd.readouterr().err


def test_someone_elses_socket_is_left_alone(relay, capfd):
    other = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    other.bind(relay.path)
    try:
        inode = os.stat(relay.path).st_ino
        assert not relay.relay.start()
        err = capfd.readouterr().err
        assert err.count("syslog relay off") == 1 and "owned by another process" in err
        assert relay.relay.status().startswith("off: ") and "left alone" in relay.relay.status()
        relay.relay.close()
        assert os.stat(relay.path).st_ino == inode  # close removes only its own socket
    finally:
        other.close()


def test_a_stream_socket_owner_is_left_alone(relay):
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(relay.path)
    other.listen(1)
    try:
        assert not relay.relay.start()
        assert "another process" in relay.relay.status()
    finally:
        other.close()


def test_a_regular_file_is_left_alone(relay):
    with open(relay.path, "w") as f:
        f.write("mine")
    assert not relay.relay.start()
    assert "not a socket" in relay.relay.status()
    assert open(relay.path).read() == "mine"


def test_a_stale_socket_that_cannot_be_removed_is_left_alone(relay):
    """The relay's file operations go through System: the fake makes the removal fail."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(relay.path)
    stale.close()
    relay.system.fail("remove_socket", PermissionError(13, "Permission denied"), relay.path)
    assert not relay.relay.start()
    assert relay.relay.status() == f"off: {relay.path} is a stale socket that cannot be removed (Permission denied): " \
                                   "left alone"
    assert ("remove_socket", relay.path) in relay.system.calls and os.path.exists(relay.path)


def test_a_full_output_drops_lines_and_counts_them(tmp_path):
    r = Relay(tmp_path)
    try:
        r.relay.start()
        r.system.fail("write", BlockingIOError(11, "Resource temporarily unavailable"))
        r.send(b"<14>p: one", b"<14>p: two")
        r.loop.poll(0)
        assert r.output() == [] and r.relay.dropped == 2 and r.relay.relayed == 0
    finally:
        r.close()


def test_cannot_create_is_one_line_not_a_crash(tmp_path, capfd):
    r = Relay(tmp_path)
    r.relay.path = str(tmp_path / "missing-dir" / "log")
    try:
        assert not r.relay.start()
        assert r.relay.status().startswith("off: cannot create")
        assert capfd.readouterr().err.count("syslog relay off") == 1
    finally:
        r.close()


def test_close_unwatches_and_removes_only_its_own_file(relay):
    relay.relay.start()
    fd = relay.relay.sock.fileno()
    relay.relay.close()
    assert fd not in relay.loop.selector.get_map() and not os.path.exists(relay.path)
    assert relay.relay.status() == "off: closed"
    relay.relay.close()  # twice is harmless


def test_close_leaves_a_replacement_alone(relay):
    relay.relay.start()
    os.unlink(relay.path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    other.bind(relay.path)
    try:
        relay.relay.close()
        assert os.path.exists(relay.path)
    finally:
        other.close()


def test_json_lines(tmp_path):
    import json

    r = Relay(tmp_path)
    r.relay.json_lines = True
    try:
        r.relay.start()
        r.send(b"<75>Nov 22 10:48:22 myprog[77]: hi")
        r.loop.poll(0)
        [line] = r.output()
        record = json.loads(line)
        assert (record["program"], record["pid"], record["facility"], record["severity"], record["message"]) == \
            ("myprog", "77", "cron", "err", "hi")
    finally:
        r.close()


def test_output_full_drops_instead_of_queueing(tmp_path):
    r = Relay(tmp_path, rate=1e9, burst=10**9)
    try:
        r.relay.start()
        # fill the non-blocking pipe
        try:
            while True:
                os.write(r.out_w, b"x" * 65536)
        except BlockingIOError:
            pass
        r.send(*[b"<14>p: %d" % i for i in range(5)])
        r.loop.poll(0)
        assert r.relay.dropped == 5 and r.relay.relayed == 0
    finally:
        r.close()
