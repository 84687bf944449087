"""Issue 11, points 6-8, with fsm-init as PID 1 of a fresh namespace: a check's output and
file names shown escaped everywhere, a PID 1 that never blocks on its own output when
the log reader stalls, and a check's leftovers that cannot pile up in PID 1.

The stalled reader is a FIFO the test opens and does not read: fsm-init's stdout and
stderr are that pipe (opened read-write by the launcher, so it has a reader that
never reads), filled by the service.
"""

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from array import array
from pathlib import Path

import pytest

from tests.conftest import AS_NOBODY, FSM_INIT, needs_nobody, needs_pid_namespace, wait_for

pytestmark = needs_pid_namespace

RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # \n: the views' own line breaks
CHECKED = {"initdelay": 0, "workstart": "./run.sh", "workwatch": 1, "workintvl": 1}
HOLD = "while [ ! -e release ]; do sleep 0.05; done\n"
EVIL = r"printf '\033]0;pwned\007\033[2Kbad\nfsm-init[watch] warning: forged line\n'; exit 1" + "\n"


def no_raw_control(text: str, what: str) -> None:
    found = RAW_CONTROL.findall(text)
    assert not found, f"raw control characters {found!r} in {what}:\n{text!r}"


def status_view(sandbox, *args) -> subprocess.CompletedProcess:
    return subprocess.run([*FSM_INIT, "status", *args], env=sandbox.env(), capture_output=True, text=True,
                          timeout=15)


# -- point 6: escaped everywhere --------------------------------------------------------------


def test_a_checks_escapes_name_and_forged_line_are_escaped_in_the_log_srvctl_and_the_status_view(sandbox):
    d = sandbox.service("app", dict(CHECKED, workbackoff=1), run__sh=HOLD, PeriodicST_evil=EVIL)
    named = d / "PeriodicST-\x1b[31mred"  # a file name is text from the workuser too
    named.write_text("#!/bin/sh\necho fine\n")
    named.chmod(0o755)
    run = sandbox.start(SRVNAME="app")
    run.wait_log("check failed: PeriodicST-evil exited 1")
    # Each view when it shows what the test looks for (the instance restarts every few seconds).
    why = wait_for(lambda: (lambda r: "output:" in r.stdout and r.stdout)(run.srvctl("why")),
                   what="srvctl why naming the check's output")
    history = run.srvctl("history").stdout
    status = wait_for(lambda: (lambda r: "check:" in r.stdout and r.stdout)(run.srvctl("status")),
                      what="srvctl status with the checks")
    view = wait_for(lambda: (lambda r: "bad" in r.stdout and r.stdout)(status_view(sandbox, "--once")),
                    what="fsm-init status with the failed check")
    as_json = wait_for(lambda: (lambda j: j["checks"] and j)(json.loads(status_view(sandbox, "--json").stdout)),
                       what="fsm-init status --json with the checks")
    log, out = run.log, run.output
    for text, what in ((log, "fsm-init's log"), (out, "the passed-through check output"), (why, "srvctl why"),
                       (history, "srvctl history"), (status, "srvctl status"), (view, "fsm-init status")):
        no_raw_control(text, what)
    assert "(output: \\x1b]0;pwned\\x07\\x1b[2Kbad fsm-init[watch] warning: forged line)" in log
    assert "\\x1b]0;pwned\\x07\\x1b[2Kbad" in why and "\\x1b]0;pwned" in history
    assert "check:      PeriodicST-\\x1b[31mred: exit 0" in status
    assert "PeriodicST-\\x1b[31mred: ok" in view and "\\x1b[2Kbad" in view
    # The forged line is passed through as the check's, never as a line of fsm-init's own.
    assert "PeriodicST-evil: fsm-init[watch] warning: forged line" in out.splitlines()
    assert not any(line.startswith("fsm-init[watch] warning: forged") for line in (log + out).splitlines())
    # JSON carries the text as it was, JSON-escaped.
    assert as_json["checks"][0]["name"] == "PeriodicST-\x1b[31mred"


# -- point 7: PID 1 never blocks on its own output ------------------------------------------------

FILL = "yes 'filling the log pipe' | head -c 300000\n"  # blocks once the pipe is full
STALLED = ("sh", "-c", 'exec 3<>"$0"; exec "$@" >&3 2>&3 3>&-')


class Stalled:
    """A FIFO as fsm-init's stdout and stderr; the test reads it only when it says so."""

    def __init__(self, root: Path) -> None:
        self.path = root / "log.fifo"
        os.mkfifo(self.path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # holds the data until read
        self.data = bytearray()
        self._reading = None

    def launcher(self) -> tuple:
        return (*STALLED, str(self.path))

    def queued(self) -> int:
        count = array("i", [0])
        fcntl.ioctl(self.fd, termios.FIONREAD, count)
        return count[0]

    def wait_full(self) -> None:
        size = fcntl.fcntl(self.fd, 1032)  # F_GETPIPE_SZ
        wait_for(lambda: self.queued() >= size - 4096, what="the log pipe to fill")

    def read_on(self) -> None:
        """The reader comes back: read everything from now on."""
        def loop():
            while self._reading is not None:
                try:
                    chunk = os.read(self.fd, 1 << 16)
                except BlockingIOError:
                    time.sleep(0.01)
                    continue
                if not chunk:
                    time.sleep(0.01)
                    continue
                self.data.extend(chunk)
        self._reading = threading.Thread(target=loop, daemon=True)
        self._reading.start()

    def close(self) -> None:
        thread, self._reading = self._reading, None
        if thread:
            thread.join(5)
        os.close(self.fd)


@pytest.fixture
def stalled(sandbox):
    s = Stalled(sandbox.root)
    yield s
    s.close()


FLOODER = r"""
import socket, sys
path, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.settimeout(10)  # a wedged PID 1 would leave the sender blocked: a time-out fails the flood
s.connect(path)
for i in range(count):
    s.send((b"<14>Nov 22 10:48:22 flood[%d]: " % i).ljust(200, b"f"))
"""


def last_check(run) -> float | None:
    checks = run.status()["checks"]
    return checks[0]["at"] if checks else None


def live(run) -> float:
    began = time.monotonic()
    answer = run.srvctl("live", timeout=5)
    assert answer.returncode == 0 and "fsm-init answers" in answer.stdout, answer
    return time.monotonic() - began


@needs_nobody
def test_a_stalled_log_reader_leaves_srvctl_the_syslog_relay_and_checks_working(sandbox, stalled, public_dir):
    sock = public_dir / "log"
    sandbox.service("app", CHECKED, run__sh=FILL + HOLD, PeriodicST_ok="echo check ok\n")
    run = sandbox.start(SRVNAME="app", launcher=stalled.launcher(), FSM_INIT_SYSLOG_SOCKET=sock)
    stalled.wait_full()
    wait_for(lambda: sock.exists(), what="the syslog socket")
    assert live(run) < 3
    # An unprivileged user floods /dev/log while nobody reads the log.
    flood = subprocess.run([*AS_NOBODY, sys.executable, "-c", FLOODER, str(sock), "5000"],
                           capture_output=True, text=True, timeout=60)
    assert flood.returncode == 0, flood.stderr
    assert live(run) < 3
    status = run.status()
    assert status["log_dropped"] > 0, status
    checked = last_check(run)
    wait_for(lambda: last_check(run) not in (None, checked), what="another check cycle while stalled")
    # The reader comes back: what was buffered arrives, and one line counts what was lost.
    stalled.read_on()
    wait_for(lambda: re.search(rb"warning: \d+ log lines? dropped while the log reader stalled", stalled.data),
             what="the dropped-lines line")
    assert stalled.data.count(b"dropped while the log reader stalled\n") == 1  # once, for stderr
    assert "log:        " in run.srvctl("status").stdout


@pytest.mark.parametrize("phase", ["engine", "thin reaper"])
def test_sigterm_stops_fsm_init_within_the_grace_while_the_log_reader_stalls(sandbox, stalled, phase):
    if phase == "engine":
        sandbox.service("app", CHECKED, run__sh=FILL + HOLD, PeriodicST_ok="echo check ok\n")
        run = sandbox.start(SRVNAME="app", launcher=stalled.launcher(), FSM_INIT_STOP_GRACE=3)
    else:
        d = sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh"},
                            run__sh="while [ ! -e go ]; do sleep 0.05; done\n" + FILL + HOLD)
        run = sandbox.start(SRVNAME="app", launcher=stalled.launcher(), FSM_INIT_STOP_GRACE=3, FSM_INIT_HANDOVER_AFTER=0.2)
        run.wait_state("handover")
        (d / "go").touch()
    stalled.wait_full()
    if phase == "engine":
        for _ in range(2):  # check cycles (their output passed through) go on
            checked = last_check(run)
            wait_for(lambda: last_check(run) not in (None, checked), what="a check cycle while stalled")
    assert live(run) < 3
    began = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait(timeout=3 + 5) == 143
    assert time.monotonic() - began < 3 + 2


# -- point 8: a check's leftovers ------------------------------------------------------------------


def test_a_checks_background_child_holding_its_output_is_stopped_and_no_fd_piles_up(sandbox):
    d = sandbox.service("app", CHECKED, run__sh=HOLD, PeriodicST_bg="sleep 1000 &\necho started a leftover\n")
    run = sandbox.start(SRVNAME="app")

    def cycles() -> int:
        return run.output.count("PeriodicST-bg: started a leftover")

    def fds() -> int:
        return len(os.listdir(f"/proc/{run.pid1}/fd"))

    def leftovers() -> list[int]:
        found = []
        for pid in run.namespace_pids():
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x001000\x00":
                    found.append(pid)
            except OSError:
                pass
        return found

    wait_for(lambda: cycles() >= 2, what="two check cycles")
    wait_for(lambda: not leftovers(), timeout=3, what="the first leftovers to go")
    before = fds()
    wait_for(lambda: cycles() >= 7, timeout=20, what="seven check cycles")
    wait_for(lambda: not leftovers(), timeout=3, what="no leftover of the passed checks")
    assert fds() <= before, f"PID 1's fds went {before} -> {fds()}"
    assert run.status()["checks"][0]["exit"] == 0
    assert d.exists()


# -- the property: arbitrary bytes in, nothing raw out, PID 1 answering ----------------------------

PROPERTY_CHECK = "cat ./payload\nexit \"$(cat ./status 2>/dev/null || echo 0)\"\n"


@pytest.fixture
def one_pid1(sandbox, public_dir):
    """One PID 1 for every example: a check printing ./payload, a syslog socket, a daemon."""
    sock = public_dir / "log"
    d = sandbox.service("app", dict(CHECKED, workbackoff=1), run__sh=HOLD, PeriodicST_prop=PROPERTY_CHECK)
    (d / "payload").write_bytes(b"")
    sandbox.etc("service/\x1b[7mdaemon\u2028/run", "echo daemon up\nexec sleep 1000\n")  # a hostile name
    run = sandbox.start(SRVNAME="app", FSM_INIT_SYSLOG_SOCKET=sock, FSM_INIT_STOP_GRACE=2)
    wait_for(lambda: sock.exists(), what="the syslog socket")
    return run, d, sock


def test_arbitrary_bytes_from_checks_syslog_and_the_config_never_reach_the_output_raw(one_pid1):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    run, d, sock = one_pid1

    payloads = st.binary(max_size=3000) | st.sampled_from([
        b"\x1b]0;pwned\x07\x1b[2K\nfsm-init[watch] warning: forged\n", b"\x00\xff\xfe\xc3(", b"\xc2\x9b2J",
        b"\xe2\x80\xa8", b"x" * 20000 + b"\r\x7f"])

    def checks_at():
        checks = run.status()["checks"]
        return checks[0]["at"] if checks else None

    @settings(max_examples=6, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(output=payloads, datagram=payloads, text=st.text(max_size=40), status=st.sampled_from([0, 1]))
    def example(output, datagram, text, status):
        log_at, out_at = len(run.err_path.read_bytes()), len(run.out_path.read_bytes())
        (d / "payload").write_bytes(output)
        (d / "status").write_text(str(status))
        # A config string: an invalid workstable is named in a warning when the config is read.
        (d / "workcfg.json").write_text(json.dumps(dict(CHECKED, workbackoff=1, workstable=text)))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(datagram[:8192] or b"-", str(sock))
        restart = run.srvctl("restart", timeout=10)
        assert restart.returncode in (0, 1), restart
        before = checks_at()
        wait_for(lambda: checks_at() not in (None, before), timeout=20, what="a check of the new payload")
        live_answer = run.srvctl("live", timeout=5)
        assert live_answer.returncode == 0, live_answer
        texts = {"srvctl why": run.srvctl("why").stdout, "srvctl status": run.srvctl("status").stdout,
                 "srvctl history": run.srvctl("history").stdout,
                 "fsm-init status": status_view(run.sandbox, "--once").stdout}
        new_log = run.err_path.read_bytes()[log_at:].decode("utf-8", "replace")
        new_out = run.out_path.read_bytes()[out_at:].decode("utf-8", "replace")
        # The service and the daemon print nothing raw of their own: every byte here is
        # fsm-init's own lines or what passed through PID 1 (the check's output, syslog).
        texts.update({"fsm-init's log": new_log, "the passed-through check output": new_out})
        for what, text_ in texts.items():
            no_raw_control(text_, what)

    example()
    assert run.proc.poll() is None and "daemon \\x1b[7mdaemon\\u2028 started" in run.log
    no_raw_control(run.log, "fsm-init's whole log")
    no_raw_control(run.output, "fsm-init's whole output")
    run.signal(signal.SIGTERM)
    run.wait(timeout=15)
