"""Text from children, file names and the network, and PID 1's own output (issue 11,
points 6, 7 and 9): one escaping function, used by every view; a bounded outlet that
never blocks; a syslog relay that budgets bytes.

The properties run the escaping and the formatting functions on arbitrary text and
bytes (control characters, NUL, invalid UTF-8, long lines): nothing shown may hold a
raw control character.
"""

import fcntl
import io
import json
import os
import re
import socket
import subprocess
import sys
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsm_init.client import srvctl, status_view
from fsm_init.core import log
from fsm_init.network import dial
from fsm_init.steps import output
from fsm_init.compat import syslog_relay as sr
from fsm_init.core.loop import EventLoop
from fsm_init.client.status_view import Frame
from fsm_init.core.system import System

from .fakes import FakeSystem

SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
# What must never be shown raw: C0 (tab included), DEL, C1, U+2028 and U+2029.
RAW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
HOSTILE = ["\x1b]0;pwned\x07", "\x1b[2K\r", "\nfsm-init[watch] forged line\n", "\x00", "\x9b31m", "\u2028",
           "\x7f", "\t"]
hostile_text = st.text() | st.sampled_from(HOSTILE) | st.lists(st.sampled_from(HOSTILE) | st.text(max_size=5)).map("".join)
hostile_bytes = st.binary(max_size=2000) | hostile_text.map(lambda t: t.encode("utf-8", "surrogatepass"))


def raw_controls(text: str, allow_newlines: bool = False) -> list[str]:
    found = RAW_CONTROL.findall(text)
    return [c for c in found if not (allow_newlines and c == "\n")]


# -- the one escaping function ----------------------------------------------------------------


@SETTINGS
@given(hostile_text)
def test_escape_leaves_no_control_character_and_keeps_the_rest(text):
    escaped = log.escape(text)
    assert raw_controls(escaped) == []
    if not RAW_CONTROL.search(text):
        assert escaped == text


@SETTINGS
@given(hostile_bytes)
def test_escape_bytes_takes_anything(raw):
    assert raw_controls(log.escape_bytes(raw)) == []


def test_escape_writes_the_characters_out():
    assert log.escape("a\x1b[2Kb\n\t\x9b\u2028\x7f") == "a\\x1b[2Kb\\n\\t\\x9b\\u2028\\x7f"


def test_the_syslog_relay_uses_the_same_escaping():
    assert sr.escape_bytes is log.escape_bytes


@SETTINGS
@given(hostile_text)
def test_a_log_line_is_one_line_without_control_characters(text):
    written = []
    original, log.write = log.write, lambda fd, data: written.append((fd, data)) or True
    try:
        log.warn(f"check failed (output: {text})")
    finally:
        log.write = original
    [(fd, data)] = written
    err = data.decode()
    assert fd == 2 and err.startswith("fsm-init[") and err.endswith("\n") and err.count("\n") == 1
    assert raw_controls(err[:-1]) == []


@SETTINGS
@given(hostile_bytes)
def test_a_syslog_line_has_no_control_characters(raw):
    assert raw_controls(sr.parse(raw).line()) == []


# -- the views: srvctl and fsm-init status ---------------------------------------------------


def hostile_status(name: str, text: str) -> dict:
    return {
        "state": "restart", "since": 1.0, "mode": "status-check", "period": 5, "target": f"/srv/{name}",
        "service_pid": 7, "uptime": 3.0, "run_count": 2, "restarts": 1, "failures": 1, "last_exit": 1,
        "checks": [{"name": f"PeriodicST-{name}", "exit": 1, "duration": 0.1, "at": 1e9, "output": text}],
        "healthy": False, "log_dropped": 3,
        "last_transition": {"time": 1e9, "from": "check", "to": "restart", "trigger": "checks_done",
                            "guards": {"checks_passed": False}, "cause": f"check failed (output: {text})"},
        "supporting": {"pppoe": f"running; dialling over eth0 (access concentrator {text})"},
        "daemons": [{"name": name, "state": "running", "pid": 9, "uptime": 1.0, "restarts": 0}],
        "readiness": {"workready": "notify", "ready": False, "status": text, "phase": None},  # STATUS= as sent
        "pid": 1,
    }


@SETTINGS
@given(hostile_text, hostile_text)
def test_srvctl_status_shows_no_control_character(name, text):
    assert raw_controls(srvctl.format_status(hostile_status(name, text)), allow_newlines=True) == []


@SETTINGS
@given(hostile_text, hostile_text)
def test_the_plain_status_view_shows_no_control_character(name, text):
    status = hostile_status(name, text)
    history = [dict(status["last_transition"], restarts=1)]
    frame = Frame(status, f"restart: {text}", history, True, None, "control.sock", 1e9)
    assert raw_controls(status_view.plain(frame), allow_newlines=True) == []


def rich_text(renderable) -> str:
    from rich.console import Console

    console = Console(record=True, width=120, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_text, hostile_text)
def test_the_rich_status_view_shows_no_control_character(name, text):
    status = hostile_status(name, text)
    frame = Frame(status, f"restart: {text}", [dict(status["last_transition"])], True, None, "control.sock", 1e9)
    assert raw_controls(rich_text(status_view.render(frame)), allow_newlines=True) == []


def test_the_rich_view_shows_markup_in_names_as_plain_text():
    status = hostile_status("[reverse]x[/reverse]", "[link=http://evil.example]click[/link]")
    status["daemons"][0]["name"] = "[bold red]d[/]"
    frame = Frame(status, "restart: [blink]why[/blink]", [dict(status["last_transition"])], True, None, "c", 1e9)
    shown = rich_text(status_view.render(frame))
    for literal in ("PeriodicST-[reverse]x[/reverse]", "daemon [bold red]d[/]", "[blink]why[/blink]"):
        assert literal in shown, shown


def test_the_rich_view_escapes_a_check_output_and_the_dropped_count_is_shown():
    status = hostile_status("web", "\x1b]0;pwned\x07\x1b[2K")
    frame = Frame(status, "why", [], True, None, "c", 1e9)
    shown = rich_text(status_view.render(frame))
    assert "\\x1b]0;pwned\\x07" in shown and "\x1b" not in shown
    assert "3 line(s) dropped while the log reader stalled" in shown
    assert "3 line(s) dropped" in srvctl.format_status(status)


def test_srvctl_why_and_history_print_escaped(tmp_path, monkeypatch, capsys):
    entry = {"time": 1e9, "from": "check", "to": "restart", "trigger": "checks_done", "guards": {},
             "cause": "check failed (output: \x1b]0;t\x07\nfsm-init[watch] forged)", "restarts": 1}
    (tmp_path / "journal.jsonl").write_text(json.dumps(entry) + "\n")
    assert srvctl.history(str(tmp_path), 5, False) == 0
    out = capsys.readouterr().out
    assert raw_controls(out, allow_newlines=True) == [] and out.count("\n") == 1
    assert "\\x1b]0;t\\x07\\nfsm-init[watch] forged" in out
    monkeypatch.setattr("fsm_init.core.control.request", lambda *a, **k: {"ok": True, "message": "a\x1b[2Kb\nc"})
    assert srvctl.main(["why"]) == 0
    assert capsys.readouterr().out == "a\\x1b[2Kb\\nc\n"


def test_a_pppoe_access_concentrators_name_is_escaped(tmp_path):
    fake = FakeSystem()
    link = {"state": "dialling", "device": "eth0", "ac": "\x1b]0;isp\x07\x9b2J"}
    fake.files[dial.link_path("/run/fsm-init")] = json.dumps(link).encode()
    assert dial.describe(fake, "/run/fsm-init") == "dialling over eth0 (access concentrator \\x1b]0;isp\\x07\\x9b2J)"
    fake.commands["/usr/sbin/pppoe-discovery"] = lambda argv, stdin: (0, "Access-Concentrator: \x1b[2Kisp\x07\n", "")
    assert dial.probe(fake, "/usr/sbin/pppoe-discovery", "eth0") == "\\x1b[2Kisp\\x07"


# -- a check's output passed through ---------------------------------------------------------


def test_check_output_passes_through_escaped_with_the_checks_name_and_the_pipes_are_closed(capfd):
    system = System()
    loop = EventLoop(system, lambda s: None, lambda p, s: None)
    captured = output.CapturedOutput(loop, system, "PeriodicST-x")
    script = r"printf '\033]0;pwned\007ok\nfsm-init[watch] forged line\n'; printf 'err\033[2K' >&2; printf 'x%.0s' $(seq 5000)"
    pid = captured.spawn(["/bin/sh", "-c", script], {"PATH": os.environ["PATH"]})
    os.waitpid(pid, 0)
    fds = list(captured.readers)
    words = captured.finish()
    assert captured.readers == {}
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert lines[:2] == ["PeriodicST-x: \\x1b]0;pwned\\x07ok", "PeriodicST-x: fsm-init[watch] forged line"]
    assert all(line.startswith("PeriodicST-x: ") for line in lines)  # the 5000 x: cut into pieces, each named
    assert len(lines) == 4 and "".join(lines[2:]).count("x") == 5000 + 2
    assert err == "PeriodicST-x: err\\x1b[2K\n"
    assert "\x1b" not in words and "x" * 50 in words
    loop.selector.close()


def test_a_leftover_holding_the_pipes_does_not_keep_them_open():
    system = System()
    loop = EventLoop(system, lambda s: None, lambda p, s: None)
    captured = output.CapturedOutput(loop, system, "PeriodicST-bg")
    pid = captured.spawn(["/bin/sh", "-c", "sleep 30 & echo started"], {"PATH": os.environ["PATH"]})
    os.waitpid(pid, 0)
    before = len(os.listdir("/proc/self/fd"))
    captured.finish()  # returns at once, though the sleep still holds the pipes' write ends
    assert len(os.listdir("/proc/self/fd")) == before - 2
    os.killpg(pid, 9)
    loop.selector.close()


# -- the outlet: PID 1 never blocks on its own output -------------------------------------------


@pytest.fixture
def stalled_pipe():
    r, w = os.pipe()  # blocking, as a log driver's pipe is
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_the_outlet_never_blocks_drops_when_full_and_leaves_the_childrens_description_alone(stalled_pipe, capfd):
    r, w = stalled_pipe
    outlet = log.Outlet(w)
    assert outlet.how == "write" and outlet.fd != w
    # The description children share (the service writes to it) stays blocking.
    assert not fcntl.fcntl(w, fcntl.F_GETFL) & os.O_NONBLOCK
    line = b"x" * 99 + b"\n"
    written = sum(outlet.write(line) for _ in range(5000))  # 500 KB into a 64 KiB pipe: never blocks
    assert outlet.dropped == 5000 - written > 0
    assert len(outlet.buffer) <= log.PENDING_MAX
    # The reader comes back: what was buffered goes out, then one line says what was lost.
    data = b""
    while outlet.buffer:
        data += os.read(r, 1 << 20)
        outlet.flush()
    os.set_blocking(r, False)
    try:
        data += os.read(r, 1 << 20)
    except BlockingIOError:
        pass
    assert data.count(b"\n") == written and set(data) == set(line)
    assert capfd.readouterr().err.count(f"{outlet.dropped} log lines dropped while the log reader stalled") == 1
    assert outlet.dropped_now == 0
    os.close(outlet.fd)


def test_the_outlet_is_flushed_by_the_event_loop_when_the_reader_comes_back(stalled_pipe, request, capfd):
    r, w = stalled_pipe
    system = System()
    loop = EventLoop(system, lambda s: None, lambda p, s: None)
    outlet = log.Outlet(w)
    previous = log.use_outlets({1: outlet})
    request.addfinalizer(lambda: log.use_outlets(*previous))
    log.attach(loop)
    while log.write(1, b"y" * 1000 + b"\n"):
        pass
    assert outlet.fd in loop.selector.get_map() and log.dropped() == 1
    got = bytearray()

    def reader():
        try:
            got.extend(os.read(r, 1 << 20))
        except BlockingIOError:
            pass
        if not outlet.buffer:
            loop.stop()

    os.set_blocking(r, False)
    loop.watch(r, reader)
    loop.call_later("deadline", 10, loop.stop)
    loop.run()
    assert not outlet.buffer and outlet.fd not in loop.selector.get_map()
    assert "warning: 1 log line dropped while the log reader stalled\n" in capfd.readouterr().err
    loop.selector.close()
    os.close(outlet.fd)


def test_the_outlet_sends_without_blocking_on_a_socket():
    a, b = socket.socketpair()
    try:
        outlet = log.Outlet(a.fileno())
        assert outlet.how == "send" and a.getblocking()
        results = [outlet.write(b"z" * 200 + b"\n") for _ in range(20000)]
        assert not all(results) and outlet.dropped == results.count(False)
    finally:
        a.close()
        b.close()


def test_the_outlet_writes_a_regular_file_directly(tmp_path):
    with open(tmp_path / "log", "wb") as f:
        outlet = log.Outlet(f.fileno())
        assert outlet.how == "file" and outlet.fd == f.fileno()
        assert outlet.write(b"one\n")
    assert (tmp_path / "log").read_bytes() == b"one\n"


def test_without_go_nonblocking_log_writes_directly(capfd):
    assert log.outlet(1) is None and log.outlet(2) is None  # only PID 1 (cli.run, the thin reaper) installs outlets
    assert log.write(2, b"plain\n") and capfd.readouterr().err == "plain\n"


# Logs far more than a pipe holds, then prints how many lines the outlet dropped.
FLOOD_THE_LOG = "for i in range(20000): log.warn('line %d ' % i + 'x' * 80)\nprint(log.dropped(), flush=True)"


def with_a_stalled_stderr(code: str) -> subprocess.CompletedProcess:
    """Run code in a new interpreter whose stderr is a pipe nobody reads (argv[1]: the
    directory fsm_init is imported from)."""
    r, w = os.pipe()
    try:
        return subprocess.run([sys.executable, "-c", code, str(os.path.dirname(os.path.dirname(os.path.dirname(log.__file__))))],
                              stderr=w, stdout=subprocess.PIPE, timeout=30)
    finally:
        os.close(w)
        os.close(r)


def test_a_process_with_a_stalled_stderr_keeps_going():
    """The outlet in a real process whose stderr is a pipe nobody reads."""
    done = with_a_stalled_stderr("import sys; sys.path.insert(0, sys.argv[1]); from fsm_init.core import log; "
                                 "log.go_nonblocking()\n" + FLOOD_THE_LOG)
    assert done.returncode == 0 and int(done.stdout) > 0


# -- the syslog relay's byte budget --------------------------------------------------------------


def test_the_relay_budgets_bytes_with_8_kib_datagrams(tmp_path, capfd):
    system = FakeSystem()
    loop = EventLoop(system, lambda s: None, lambda p, s: None)
    out_r, out_w = os.pipe2(os.O_NONBLOCK)
    path = str(tmp_path / "log")
    relay = sr.SyslogRelay(loop, path, out_w, json_lines=False, summary_every=10,
                           byte_rate=16 * 1024, byte_burst=30 * 1024)
    try:
        relay.start()
        message = b"<14>big: " + b"m" * (8192 - 9)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            for _ in range(3):
                for _ in range(3):
                    s.sendto(message, path)
                loop.poll(0)
        written = os.read(out_r, 1 << 20)
        # 9 datagrams of 8 KiB, well within the line budget: the 30 KiB burst lets 3 through.
        assert written.count(b"\n") == 3 and len(written) < 30 * 1024
        assert relay.dropped == 6 and relay.relayed == 3
        system.clock += 1.0  # 16 KiB more: one more (a datagram takes its 8 KiB), twice over
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for _ in range(3):
                s.sendto(message, path)
        loop.poll(0)
        assert os.read(out_r, 1 << 20).count(b"\n") == 2 and relay.dropped == 7
        system.clock += 10
        loop.fire_due()
        err = capfd.readouterr().err
        assert "7 messages dropped (more than 16 KiB a second)" in err and err.count("warning: syslog relay:") == 1
    finally:
        relay.close()
        loop.close()
        for fd in (out_r, out_w):
            os.close(fd)


def test_check_output_is_json_lines_with_the_json_log_format(capfd, request):
    request.addfinalizer(partial(log.set_json, log.set_json(True)))
    system = System()
    loop = EventLoop(system, lambda s: None, lambda p, s: None)
    captured = output.CapturedOutput(loop, system, "PeriodicST-j")
    pid = captured.spawn(["/bin/sh", "-c", r"printf 'a\033[2K\nb'"], {"PATH": os.environ["PATH"]})
    os.waitpid(pid, 0)
    captured.finish()
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert [(line["program"], line["source"], line["stream"], line["message"]) for line in lines] == [
        ("PeriodicST-j", "check", "stdout", "a\x1b[2K"), ("PeriodicST-j", "check", "stdout", "b")]
    loop.selector.close()


@SETTINGS
@given(st.lists(hostile_bytes, max_size=4))
def test_check_output_passed_through_is_one_escaped_named_line_each(chunks):
    written = []
    original, log.write = log.write, lambda fd, data: written.append((fd, data)) or True
    try:
        captured = output.CapturedOutput(None, None, "PeriodicST-\x1b[7mp")
        captured.readers, captured.partial = {99: 2}, {99: b""}
        for chunk in chunks:
            lines = (captured.partial[99] + chunk).split(b"\n")
            captured.partial[99] = lines.pop()
            captured.pass_lines(99, lines)
        captured.pass_lines(99, [captured.partial[99]])
    finally:
        log.write = original
    for fd, data in written:
        text = data.decode()
        assert fd == 2 and text.endswith("\n")
        for line in text[:-1].split("\n"):
            assert line.startswith("PeriodicST-\\x1b[7mp: ") and raw_controls(line) == []


def test_the_poll_fallback_never_blocks_either():
    """Where /proc/self/fd cannot be opened again, writes wait for poll() to say there is room."""
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); from fsm_init.core import log\n"
            "real_open = os.open\n"
            "def no_proc(path, *a, **k):\n"
            "    if str(path).startswith('/proc/self/fd/'): raise PermissionError(13, 'no /proc')\n"
            "    return real_open(path, *a, **k)\n"
            "os.open = no_proc\n"
            "log.go_nonblocking(); os.open = real_open\n"
            "assert log.outlet(2).how == 'poll', log.outlet(2).how\n") + FLOOD_THE_LOG
    done = with_a_stalled_stderr(code)
    assert done.returncode == 0 and int(done.stdout) > 0
