"""The syslog relay with real sockets: util-linux logger, Python senders, a flood of
100 000 datagrams, and a /dev/log someone else owns.

Each test runs the relay in a subprocess on fsm-init's own EventLoop, with a 20 ms
tick that records how late the loop runs it (does it keep answering?) and its RSS
(does it stay bounded?).  Every wait has a deadline.
"""

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import needs_pid_namespace

from tests.conftest import ROOT, wait_for

LOGGER = shutil.which("logger")
FLOOD = 100_000

DRIVER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from fsm_init.core.loop import EventLoop
from fsm_init.compat.syslog_relay import SyslogRelay
from fsm_init.core.system import System

path, out_path, stop_path, deadline = sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
system = System()
loop = EventLoop(system, lambda signum: None, lambda pid, status: None)
out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
relay = SyslogRelay(loop, path, out, summary_every=0.5, json_lines=False)
stats = {"started": relay.start(), "max_lag": 0.0, "rss_kb": []}
end = system.now() + deadline

def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

def tick():
    now = system.now()
    stats["max_lag"] = max(stats["max_lag"], now - tick.due)
    stats["rss_kb"].append(rss_kb())
    if os.path.exists(stop_path) or now > end:
        loop.stop()
        return
    tick.due = now + 0.02
    loop.call_at("tick", tick.due, tick)

tick.due = system.now()
loop.call_at("tick", tick.due, tick)
print("ready", flush=True)
loop.run()
stats.update(status=relay.status(), relayed=relay.relayed, dropped=relay.dropped, truncated=relay.truncated)
relay.close()
stats["socket_left"] = os.path.exists(path)
print(json.dumps(stats), flush=True)
"""

FLOODER = r"""
import socket, sys
path, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.settimeout(30)  # blocking: the kernel holds a sender back while the relay's queue is full
s.connect(path)
for i in range(count):
    s.send(b"<14>Nov 22 10:48:22 flood[%d]: message %d" % (i % 32768, i))
"""


class Driver:
    def __init__(self, tmp: Path, path: Path | None = None, deadline: float = 60.0):
        self.path = path or tmp / "log"
        self.out = tmp / "container.log"
        self.stop_file = tmp / "stop"
        self.err = open(tmp / "driver.err", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(ROOT), str(self.path), str(self.out), str(self.stop_file), str(deadline)],
            stdout=subprocess.PIPE, stderr=self.err, text=True)
        assert self.proc.stdout.readline().strip() == "ready", self.stderr()

    def lines(self) -> list[str]:
        try:
            return self.out.read_text().splitlines()
        except FileNotFoundError:
            return []

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def stop(self) -> dict:
        self.stop_file.touch()
        out, _ = self.proc.communicate(timeout=15)
        return json.loads(out.splitlines()[-1])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.err.close()


@pytest.fixture
def driver(tmp_path):
    drivers = []

    def make(**kwargs):
        d = Driver(tmp_path, **kwargs)
        drivers.append(d)
        return d

    yield make
    for d in drivers:
        d.kill()


def send(path: Path, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(data, str(path))


@pytest.mark.skipif(LOGGER is None, reason="util-linux logger not installed")
def test_logger_and_python_messages_reach_the_log(driver):
    d = driver()
    assert (d.path.stat().st_mode & 0o777) == 0o666
    subprocess.run([LOGGER, "--socket", str(d.path), "--tag", "myprog", "hello"], check=True, timeout=10)
    subprocess.run([LOGGER, "--socket", str(d.path), "--id=4242", "-p", "cron.err", "--tag", "cronny", "oops"],
                   check=True, timeout=10)
    subprocess.run([LOGGER, "--socket", str(d.path), "--rfc5424", "-p", "local3.debug", "--tag", "five", "new"],
                   check=True, timeout=10)
    send(d.path, b"<86>Nov 22 10:48:22 sshd[7]: Accepted password for root")
    send(d.path, b"\xff\xfe garbage without a header")
    expected = ["syslog[user.notice] myprog: hello", "syslog[cron.err] cronny[4242]: oops",
                "syslog[local3.debug] five: new", "syslog[authpriv.info] sshd[7]: Accepted password for root",
                "syslog[user.notice] \ufffd\ufffd garbage without a header"]
    wait_for(lambda: len(d.lines()) >= len(expected), what="five relayed lines")
    assert d.lines() == expected
    stats = d.stop()
    assert stats["started"] and stats["relayed"] == 5 and stats["dropped"] == 0
    assert not stats["socket_left"], "close() removes the socket it created"


def test_a_flood_stays_bounded_and_the_loop_keeps_answering(driver):
    d = driver()
    time.sleep(0.3)  # a baseline of RSS samples before the flood
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", FLOODER, str(d.path), str(FLOOD)], check=True, timeout=120)
    flood_seconds = time.monotonic() - began
    send(d.path, b"<14>Nov 22 10:48:22 probe[1]: after the flood")
    wait_for(lambda: any("after the flood" in line for line in d.lines()), timeout=10,
             what="a message sent after the flood")
    stats = d.stop()
    rss = stats["rss_kb"]
    baseline = rss[0]
    assert stats["relayed"] + stats["dropped"] == FLOOD + 1, stats["status"]
    assert stats["dropped"] > 0 and "messages dropped" in d.stderr()
    # Bounded: the relay's memory does not grow with the flood ...
    assert max(rss) - baseline < 4096, f"RSS grew from {baseline} kB to {max(rss)} kB"
    # ... and the loop kept serving its other work: the 20 ms tick was never late by much.
    assert stats["max_lag"] < 0.5, f"the loop stalled for {stats['max_lag']:.3f}s during a {flood_seconds:.1f}s flood"
    # The container log got at most the rate limit's worth, not 100 000 lines.
    assert len(d.lines()) <= 2000 + 2000 * (flood_seconds + 2)


FLOODER_8K = r"""
import socket, sys
path, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.settimeout(30)
s.connect(path)
for i in range(count):
    s.send((b"<14>Nov 22 10:48:22 big[%d]: " % i).ljust(8192, b"B"))
"""


def test_a_flood_of_8_kib_datagrams_is_bounded_in_bytes(driver):
    """Issue 11, point 9: the line budget alone let 2000 lines of 8 KiB a second through
    (16 MB of log a second); the byte budget holds the log to about 256 KiB a second."""
    from fsm_init.compat.syslog_relay import BYTE_BURST, BYTE_RATE

    d = driver()
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", FLOODER_8K, str(d.path), "20000"], check=True, timeout=120)
    send(d.path, b"<14>Nov 22 10:48:22 probe[1]: after the flood")
    wait_for(lambda: any("after the flood" in line for line in d.lines()), timeout=10,
             what="a message sent after the flood")
    stats = d.stop()
    seconds = time.monotonic() - began
    size = d.out.stat().st_size
    assert stats["relayed"] + stats["dropped"] == 20001, stats["status"]
    assert size <= BYTE_BURST + BYTE_RATE * (seconds + 1) + 8192, f"{size} bytes of log in {seconds:.1f}s"
    assert stats["dropped"] > 0 and "KiB a second" in d.stderr()


def test_a_socket_someone_else_owns_is_left_alone(driver, tmp_path):
    path = tmp_path / "log"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    other.bind(str(path))
    other.settimeout(5)
    try:
        inode = path.stat().st_ino
        d = driver(path=path)
        send(path, b"<14>p: for the owner")
        assert other.recv(100) == b"<14>p: for the owner"
        stats = d.stop()
        assert not stats["started"] and "owned by another process" in stats["status"]
        assert d.stderr().count("syslog relay off") == 1
        assert path.stat().st_ino == inode and d.lines() == []
    finally:
        other.close()


def test_a_stale_socket_is_replaced(driver, tmp_path):
    path = tmp_path / "log"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(path))
    stale.close()
    d = driver(path=path)
    send(path, b"<14>p: fresh")
    wait_for(lambda: d.lines() == ["syslog[user.info] p: fresh"], what="the relayed line")
    assert d.stop()["started"] and "replacing the stale socket" in d.stderr()


@needs_pid_namespace
def test_fsm_init_relays_a_services_syslog_and_shows_it_in_status(sandbox):
    sock = sandbox.root / "devlog"
    sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0,
                            "firewall": {"enable": "no"}},
                    run__sh=f"logger --socket {sock} -p daemon.warning -t cronish 'from a daemon'\nexec sleep 1000\n")
    run = sandbox.start(SRVNAME="app", FSM_INIT_SYSLOG_SOCKET=str(sock))
    run.wait_log(r"syslog\[daemon\.warning\] cronish(\[\d+\])?: from a daemon")
    assert run.status()["supporting"]["syslog"].startswith(f"listening on {sock}")
    assert srvctl_stop_leaves_no_socket(run, sock)


def srvctl_stop_leaves_no_socket(run, sock) -> bool:
    assert run.srvctl("stop").returncode == 0
    run.wait()
    return not sock.exists()


# An overlay over /dev inside the sandbox's private mount namespace: fsm-init creates its
# socket at the real default path /dev/log, and this machine's /dev never sees it.  A
# /dev/log the machine has (systemd-journald, rsyslog) is removed from the overlay only,
# as a container starts without one.
PRIVATE_DEV = ('mkdir -p "$0/.dev-up" "$0/.dev-work" && '
               'mount -t overlay overlay -o "lowerdir=/dev,upperdir=$0/.dev-up,workdir=$0/.dev-work" /dev && '
               'rm -f /dev/log && exec "$@"')


def identity(path: str) -> tuple | None:
    """What is at path (device, inode, type), or None: to see that the machine's is untouched."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)


@needs_pid_namespace
@pytest.mark.skipif(LOGGER is None, reason="needs util-linux logger")
def test_the_default_dev_log_reaches_the_container_log(sandbox):
    host_dev_log = identity("/dev/log")  # this machine may have one; it stays as it is
    sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0},
                    run__sh="logger -p cron.notice -t cronish 'through /dev/log'\nexec sleep 1000\n")
    run = sandbox.start(SRVNAME="app", FSM_INIT_SYSLOG_SOCKET="",
                        launcher=("sh", "-c", PRIVATE_DEV, str(sandbox.root)))
    run.wait_log(r"syslog\[cron\.notice\] cronish(\[\d+\])?: through /dev/log")
    assert run.status()["supporting"]["syslog"].startswith("listening on /dev/log")
    assert (sandbox.root / ".dev-up" / "log").is_socket() and identity("/dev/log") == host_dev_log
    assert run.srvctl("stop").returncode == 0 and run.wait() == 0


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@needs_pid_namespace
def test_pid_1_under_a_flood_stays_flat_and_keeps_supervising(sandbox):
    """fsm-init as PID 1 relaying a flood of 100 000 messages: during it, srvctl answers
    and a killed service is restarted; afterwards PID 1's RSS has not grown."""
    sock = sandbox.root / "devlog"
    d = sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1},
                        run__sh="echo $$ >> pids\nexec sleep 1000\n")
    run = sandbox.start(SRVNAME="app", FSM_INIT_SYSLOG_SOCKET=str(sock))
    run.wait_state("watch")
    first = int(wait_for(lambda: (d / "pids").exists() and (d / "pids").read_text().split(), what="the service")[0])
    before = vm_rss_kb(run.pid1)
    flood = subprocess.Popen([sys.executable, "-c", FLOODER, str(sock), str(FLOOD)])
    try:
        wait_for(lambda: "syslog[user.info] flood" in run.output or "syslog[user.info] flood" in run.log,
                 what="the flood reaching the log")
        assert flood.poll() is None, "the flood ended before the checks below could overlap it"
        assert run.srvctl("status").returncode == 0
        os.kill(run.host_pid(first), signal.SIGKILL)
        wait_for(lambda: len((d / "pids").read_text().split()) == 2, timeout=30, what="the service restarted")
        assert flood.wait(120) == 0
    finally:
        flood.kill()
    send(sock, b"<14>Nov 22 10:48:22 probe[1]: after the flood")
    wait_for(lambda: "after the flood" in run.output + run.log, what="a message after the flood")
    assert vm_rss_kb(run.pid1) - before < 4096, f"PID 1's RSS grew from {before} kB to {vm_rss_kb(run.pid1)} kB"
    wait_for(lambda: "messages dropped" in run.log, what="the relay's summary of what it dropped")
