"""Faults fsm-init lives through as PID 1 of a fresh PID namespace (issue 12, points 9
and 10): a full or read-only disk under the state, run and service directories, fork
failures under a pids limit and fd exhaustion under RLIMIT_NOFILE.

The disk is a small tmpfs mounted inside the test's own mount namespace (never the
machine's): the test reaches it through /proc/PID1/root and remounts it with nsenter.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, needs_pid_namespace, wait_for

pytestmark = needs_pid_namespace

CHECKED = {"initdelay": 0, "workstart": "DoNothing 600", "workwatch": 1, "workintvl": 1}
# Inside the namespace, before fsm-init: a 256 KiB tmpfs holding srv/ (a copy of the
# sandbox's), state/ and run/; "full" fills it before fsm-init starts.
DISK = r'''
set -e
fs=$1 src=$2 full=$3; shift 3
mkdir -p "$fs"
mount -t tmpfs -o size=256k,mode=0755 tmpfs "$fs"
mkdir "$fs/srv" "$fs/state" "$fs/run"
cp -a "$src/." "$fs/srv/"
if [ "$full" = full ]; then cat /dev/zero > "$fs/fill" 2>/dev/null || true; fi
exec "$@"
'''


def on_disk(sandbox, full=False):
    """(launcher, env, fs) for an fsm-init whose srv, state and run directories are on the tmpfs fs."""
    fs = sandbox.root / "fs"
    launcher = ("sh", "-c", DISK, "disk", str(fs), str(sandbox.srv), "full" if full else "empty")
    env = dict(FSM_INIT_SRV_ROOT=fs / "srv", FSM_INIT_STATE_DIR=fs / "state", FSM_INIT_RUN_DIR=fs / "run")
    return launcher, env, fs


def inside(run, path: Path) -> Path:
    """path as fsm-init sees it (its mount namespace)."""
    return Path(f"/proc/{run.pid1}/root{path}")


def ns_srvctl(run, fs: Path, *args) -> subprocess.CompletedProcess:
    """srvctl inside fsm-init's mount namespace, where the control socket is."""
    env = run.sandbox.env(FSM_INIT_RUN_DIR=fs / "run")
    return subprocess.run(["nsenter", "-t", str(run.pid1), "-m", "--", *_srvctl(), *args], env=env,
                          capture_output=True, text=True, timeout=15, cwd=ROOT)


def _srvctl():
    import sys

    return [sys.executable, "-m", "fsm_init.client.srvctl"]


def ns_status(run, fs: Path) -> dict:
    result = ns_srvctl(run, fs, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def fill(path: Path) -> None:
    """Write path until the file system is full."""
    with open(path, "ab") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def checks_run(run, fs: Path, n: int) -> None:
    """Wait until n more check cycles have passed (status-check, workwatch 1)."""
    def seen():
        return {c["at"] for c in ns_status(run, fs)["checks"]}
    before = len(seen())
    stamps: set = set()

    def more():
        stamps.update(seen())
        return len(stamps) >= before + n
    wait_for(more, 20, f"{n} more check cycles\n--- log:\n{run.log}")


FILES = ("journal.jsonl", "status.json", "service.run.count")


def _problem_lines(log: str, name: str, reason: str) -> int:
    return len(re.findall(rf"cannot write \S*/{re.escape(name)}: {reason}", log))


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_a_full_or_read_only_disk_is_said_once_per_file_and_recovery_once(sandbox, how):
    sandbox.service("app", CHECKED, PeriodicST_ok="exit 0\n")
    launcher, env, fs = on_disk(sandbox)
    run = sandbox.start(SRVNAME="app", launcher=launcher, **env)
    wait_for(lambda: inside(run, fs / "run/journal.jsonl").exists(), what="the journal")
    checks_run(run, fs, 2)
    if how == "full":
        fill(inside(run, fs / "fill"))
        reason = "No space left on device"
    else:
        subprocess.run(["nsenter", "-t", str(run.pid1), "-m", "mount", "-o", "remount,ro", str(fs)], check=True)
        reason = "Read-only file system"
    # status.json and service.run.count fail at their next write; the journal once its
    # last page is full.
    for name in FILES:
        run.wait_log(rf"cannot write \S*/{re.escape(name)}: {reason}", timeout=30)
    checks_run(run, fs, 3)  # supervision goes on, srvctl answers from memory
    status = ns_status(run, fs)
    assert sorted(os.path.basename(p) for p in status["write_problems"]) == sorted(FILES)
    text = ns_srvctl(run, fs, "status").stdout
    assert text.count("cannot write:") == 3 and reason in text
    assert ns_srvctl(run, fs, "health").returncode == 0
    assert ns_srvctl(run, fs, "why").returncode == 0
    for name in FILES:
        assert _problem_lines(run.log, name, reason) == 1, run.log
    if how == "full":
        os.unlink(inside(run, fs / "fill"))
    else:
        subprocess.run(["nsenter", "-t", str(run.pid1), "-m", "mount", "-o", "remount,rw", str(fs)], check=True)
    for name in FILES:
        run.wait_log(rf"\S*/{re.escape(name)} written again after \d+ failed write", timeout=20)
    checks_run(run, fs, 2)
    assert ns_status(run, fs)["write_problems"] == {}
    log = run.log
    for name in FILES:
        assert _problem_lines(log, name, reason) == 1, log
        assert len(re.findall(rf"/{re.escape(name)} written again", log)) == 1, log
    journal = inside(run, fs / "run/journal.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in journal)  # no half line left by the full disk
    run.signal(15)
    assert run.wait() == 143  # DoNothing (sleep) dies of the TERM


def test_srvcfg_on_a_full_disk_serves_from_memory_and_is_written_when_space_returns(sandbox):
    sandbox.service("app", None, PeriodicST_ok="exit 0\n")
    launcher, env, fs = on_disk(sandbox, full=True)
    srvcfg = json.dumps(CHECKED)
    run = sandbox.start(SRVNAME="app", SRVCFG=srvcfg, launcher=launcher, **env)
    run.wait_log(r"cannot write \S*/app/workcfg.json: No space left on device")
    wait_for(lambda: ns_status(run, fs)["mode"] == "status-check" and ns_status(run, fs)["checks"],
             what="the service supervised with $SRVCFG from memory")
    os.unlink(inside(run, fs / "fill"))
    assert ns_srvctl(run, fs, "restart").returncode == 0
    run.wait_log(r"\S*/app/workcfg.json written again after 1 failed write")
    assert inside(run, fs / "srv/app/workcfg.json").read_text() == srvcfg
    assert len(re.findall(r"cannot write \S*/workcfg.json", run.log)) == 1
    run.signal(15)
    assert run.wait() == 143  # DoNothing (sleep) dies of the TERM


# -- 12.10: fork failures under a pids limit, fd exhaustion -----------------------------------


def _pids_hierarchy() -> Path | None:
    """Where a pids cgroup can be made: a cgroup v1 pids hierarchy, or cgroup2 with the
    pids controller enabled for children of its root."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        _, where, kind, options = line.split()[:4]
        if kind == "cgroup" and "pids" in options.split(","):
            return Path(where)
        if kind == "cgroup2":
            try:
                if "pids" in (Path(where) / "cgroup.subtree_control").read_text().split():
                    return Path(where)
            except OSError:
                pass
    return None


@pytest.fixture
def pids_cgroup():
    """A pids cgroup of the test's own (removed afterwards, its processes moved out)."""
    hierarchy = _pids_hierarchy()
    if hierarchy is None or os.geteuid() != 0:
        pytest.skip("needs root and a pids cgroup controller (cgroup v1 pids, or cgroup2 with pids enabled)")
    group = hierarchy / f"fsmt-{os.getpid()}-{len(list(hierarchy.glob('fsmt-*')))}"
    group.mkdir()
    yield group
    (group / "pids.max").write_text("max")
    for pid in (group / "cgroup.procs").read_text().split():
        try:
            (hierarchy / "cgroup.procs").write_text(pid)
        except OSError:
            pass
    wait_for(lambda: _try_rmdir(group), 10, f"{group} removed")


def _try_rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _cpu_seconds(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    fields = raw[raw.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


RESOURCE_CFG = {"initdelay": 0, "workstart": "DoNothing 600", "workwatch": 1, "workintvl": 1, "workbackoff": 4}


def test_fork_failures_under_a_pids_limit_are_said_once_backed_off_and_recovered(sandbox, pids_cgroup):
    sandbox.service("app", RESOURCE_CFG, PeriodicST_ok="exit 0\n")
    sandbox.etc("service/brief/run", "exec sleep 1\n")  # a daemon that dies every second
    run = sandbox.start(SRVNAME="app", FSM_INIT_SERVICE_DIRECTORY=sandbox.root / ".etc-up/service")
    wait_for(lambda: run.srvctl("health").returncode == 0, what="a healthy service")
    for pid in run.namespace_pids():  # every process of the namespace, fsm-init first
        (pids_cgroup / "cgroup.procs").write_text(str(pid))
    (pids_cgroup / "pids.max").write_text("1")  # no fork succeeds in there any more
    run.wait_log(r"cannot start PeriodicST-ok: Resource temporarily unavailable; no verdict on the service")
    run.wait_log(r"cannot start daemon brief \(\S+\): Resource temporarily unavailable")
    assert run.srvctl("restart").returncode == 0  # srvctl still answers; the new start cannot fork
    run.wait_log(r"cannot execute DoNothing: Resource temporarily unavailable")
    cpu = _cpu_seconds(run.pid1)
    wait_for(lambda: run.status()["state"] == "restart_interval" and run.status()["failures"] >= 3, 30,
             "three failed starts, backing off")
    assert _cpu_seconds(run.pid1) - cpu < 2.0  # retried with the back-off, not a spin
    log = run.log
    assert log.count("cannot start PeriodicST-ok: Resource temporarily unavailable") == 1, log
    assert log.count("cannot start daemon brief") == 1, log
    assert len(re.findall(r"cannot execute DoNothing: Resource temporarily unavailable", log)) == 1, log
    assert run.srvctl("live").returncode == 0
    (pids_cgroup / "pids.max").write_text("max")  # resources return
    run.wait_log(r"the service started \(pid \d+\) after \d+ failed attempt", timeout=20)
    run.wait_log(r"daemon brief started \(pid \d+\) after \d+ failed attempt", timeout=20)
    wait_for(lambda: run.srvctl("health").returncode == 0, 20, f"healthy again\n--- log:\n{run.log}")
    run.signal(15)
    assert run.wait() == 143


def _nofile(pid: int) -> tuple[str, str]:
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return soft, hard


def _lowest_free_fd(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(n for n in range(len(used) + 1) if n not in used)


def test_fd_exhaustion_is_said_once_backed_off_and_recovered(sandbox):
    import threading
    import time

    from fsm_init.core import control

    sandbox.service("app", RESOURCE_CFG, PeriodicST_ok="exit 0\n")
    # A daemon that dies every second.  Its starts need no descriptor in PID 1 (libc's
    # posix_spawn changes to its directory in the child): it is no failed start, and its
    # exits back off as ever (its sh inherits the lowered limit and fails: exit 2).
    sandbox.etc("service/brief/run", "exec sleep 1\n")
    run = sandbox.start(SRVNAME="app", FSM_INIT_SERVICE_DIRECTORY=sandbox.root / ".etc-up/service")
    wait_for(lambda: run.srvctl("health").returncode == 0, what="a healthy service")

    soft, hard = _nofile(run.pid1)

    def exhaust() -> bool:  # the soft limit only: raising it again needs no privilege
        limit = _lowest_free_fd(run.pid1)
        subprocess.run(["prlimit", f"--pid={run.pid1}", f"--nofile={limit}:{hard}"], check=True)
        return _lowest_free_fd(run.pid1) >= limit
    wait_for(exhaust, what="PID 1 without a free descriptor")
    run.wait_log(r"cannot start PeriodicST-ok: Too many open files; no verdict on the service")
    answers = []
    client = threading.Thread(target=lambda: answers.append(
        control.request(str(sandbox.run_dir / "control.sock"), "status", timeout=60)))
    client.start()  # connected, queued: accept() fails
    run.wait_log(r"control socket: cannot accept \(Too many open files\)")
    cpu, began = _cpu_seconds(run.pid1), time.monotonic()
    # Nothing is said while it lasts, so the only event to wait for is time: three rounds
    # of the back-offs (accept 1+2+4 s, the check 1+2+4 s).
    wait_for(lambda: time.monotonic() - began > 7.5, 10, "the back-offs to run")
    log = run.log
    assert log.count("cannot accept (Too many open files)") == 1, log
    assert log.count("cannot start PeriodicST-ok: Too many open files") == 1, log
    assert "cannot start daemon brief" not in log, log
    subprocess.run(["prlimit", f"--pid={run.pid1}", f"--nofile={soft}:{hard}"], check=True)
    client.join(30)
    assert answers and answers[0]["ok"] is True, (answers, run.log)
    run.wait_log(r"control socket: accepting again after \d+ failed attempt")
    run.wait_log(r"PeriodicST-ok started after \d+ failed attempt")
    recovered = len(run.log)
    wait_for(lambda: re.search(r"daemon brief \(pid \d+\) exited with status 0", run.log[recovered:]), 20,
             f"brief running its second again\n--- log:\n{run.log}")
    assert run.status()["state"] in ("watch", "check")
    assert _cpu_seconds(run.pid1) - cpu < 2.0
    run.signal(15)
    assert run.wait() == 143


# -- 12.11: the wall clock jumps an hour forward, then back -----------------------------------

FAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)
# libfaketime fakes the wall clock only (FAKETIME_DONT_FAKE_MONOTONIC), for fsm-init and its
# children, from a file the test rewrites: the machine's clock is never touched.
WALL_JUMP = {"initdelay": 0, "workstart": "./run.sh", "workwatch": 2, "workintvl": 1}


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def test_wall_clock_jumps_shift_no_timer_and_journal_times_follow(sandbox):
    import time

    if FAKETIME is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("libfaketime is missing (scripts/setup installs it)")
        pytest.skip("needs libfaketime (Debian package libfaketime; scripts/setup installs it)")
    offset = sandbox.root / "faketime"
    offset.write_text("+0\n")
    d = sandbox.service("app", WALL_JUMP,
                        # TERM ignored: the stop must wait exactly the grace time, then KILL
                        run__sh="trap '' TERM\ncut -d' ' -f1 /proc/uptime >> starts\nexec sleep 600\n",
                        # /proc/uptime: CLOCK_BOOTTIME, which libfaketime leaves alone
                        PeriodicST_tick="cut -d' ' -f1 /proc/uptime >> ticks\n[ ! -e fail-once ] || "
                                        "{ rm fail-once; exit 1; }\n")
    run = sandbox.start(SRVNAME="app", LD_PRELOAD=FAKETIME, FAKETIME_TIMESTAMP_FILE=offset, FAKETIME_NO_CACHE=1,
                        FAKETIME_DONT_FAKE_MONOTONIC=1, FSM_INIT_STOP_GRACE=3)

    def ticks() -> list[float]:
        try:
            return [float(t) for t in (d / "ticks").read_text().split()]
        except FileNotFoundError:
            return []
    wait_for(lambda: len(ticks()) >= 2, what="two check cycles")
    began = time.time()
    offset.write_text("+3600\n")  # an hour forward
    wait_for(lambda: len(ticks()) >= 4, what="two more check cycles")
    (d / "fail-once").touch()  # a failure: stop (grace 3 s, then KILL), workintvl 1 s, start again
    wait_for(lambda: len((d / "starts").read_text().split()) >= 2, 30, f"a restart\n--- log:\n{run.log}")
    offset.write_text("-3600\n")  # and back, two hours
    n = len(ticks())
    wait_for(lambda: len(ticks()) >= n + 3, 20, "three more check cycles")
    # Fixed-rate cycles every 2 s throughout: no hour-long gap, no burst of catch-up checks
    # (the restart's gap aside).
    gaps = sorted(b - a for a, b in zip(ticks(), ticks()[1:]))
    assert all(1.0 < g < 3.5 for g in gaps[:-1]) and gaps[-1] < 12, gaps
    starts = [float(t) for t in (d / "starts").read_text().split()]
    assert starts[1] - starts[0] < 15  # grace, workintvl: seconds, not an hour
    journal = [json.loads(line) for line in (sandbox.run_dir / "journal.jsonl").read_text().splitlines()]
    stamps = [e["time"] - began for e in journal]
    assert any(3500 < s < 3700 for s in stamps), stamps  # journal times are wall time: they jumped
    assert any(-3700 < s < -3500 for s in stamps), stamps
    why = run.srvctl("why").stdout
    assert why, run.log
    stopping = _uptime()
    run.signal(15)
    assert run.wait(20) == 137  # the service ignored TERM: KILL after the 3 s grace
    assert 2.5 < _uptime() - stopping < 10, "the grace timer ran on the monotonic clock"
