"""Side-by-side PID 1 benchmark: fsm-init vs tini vs dumb-init.

Each init runs as PID 1 of a fresh PID namespace
(``unshare --pid --fork --mount-proc --kill-child INIT -- CMD``) and is measured
from outside, from /proc and with CLOCK_MONOTONIC.  Run as root from the repo root:

    .venv/bin/python tests/bench/bench.py

See tests/bench/README.md for what every figure means.  Not a pytest module.
"""

import argparse
import json
import os
import platform
import random
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
FSM_INIT = REPO / ".venv" / "bin" / "fsm-init"
TINI = "/usr/bin/tini"
DUMB_INIT = "/usr/bin/dumb-init"
# phusion baseimage-docker's my_init (Python, MIT; tests/bench/peers/my_init.LICENSE), the
# file at 2403c58 (tag noble-1.0.2), run by Debian's /usr/bin/python3 as in the image.
MY_INIT = [str(HERE / "peers" / "my_init"), "--skip-runit"]
SYS_PYTHON = "/usr/bin/python3"
# --kill-child: if this script dies, the namespace dies with it (one prctl; same for every init).
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
STATUS_CHECK_CFG = {"initdelay": 0, "workstart": "sleep 1000", "workwatch": 60, "workintvl": 1}
DEADLINE = 30.0

ND, SC, TINI_K, DUMB_K, MY_K = "fsm-nd", "fsm-sc", "tini", "dumb-init", "my_init"
# fsm-init (non-daemon) before its hand-over: the engine in charge (only the SIGTERM figure).
NDE = "fsm-nd-engine"
COLUMNS = [(ND, "fsm-init (non-daemon)"), (SC, "fsm-init (status-check)"), (MY_K, "my_init"), (TINI_K, "tini"),
           (DUMB_K, "dumb-init")]


# -- small utilities ---------------------------------------------------------------------

def now_ns() -> int:
    return time.monotonic_ns()


def wait_for(predicate, timeout=DEADLINE, what="condition", interval=0.002):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read(path, mode="rb"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def median(values):
    return statistics.median(values) if values else None


def children(pid: int) -> list[int]:
    raw = read(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in raw.split()] if raw else []


def proc_state(pid: int) -> str | None:
    raw = read(f"/proc/{pid}/stat")
    if not raw:
        return None
    return raw[raw.rfind(b")") + 2:].split()[0].decode()


def cmdline(pid: int) -> bytes:
    return read(f"/proc/{pid}/cmdline") or b""


def mem(pid: int) -> dict:
    """Rss, Pss and private (USS) of a process, KiB, from smaps_rollup."""
    fields = {}
    for line in (read(f"/proc/{pid}/smaps_rollup", "r") or "").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":"):
            fields[parts[0][:-1]] = int(parts[1])
    return {"rss": fields.get("Rss", 0), "pss": fields.get("Pss", 0),
            "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)}


def ctxt(pid: int) -> tuple[int, int]:
    vol = nonvol = 0
    for line in (read(f"/proc/{pid}/status", "r") or "").splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            vol = int(line.split()[1])
        elif line.startswith("nonvoluntary_ctxt_switches:"):
            nonvol = int(line.split()[1])
    return vol, nonvol


def cpu_ns(pid: int) -> int:
    """Time spent on a CPU (ns), from /proc/PID/schedstat."""
    raw = read(f"/proc/{pid}/schedstat")
    return int(raw.split()[0]) if raw else 0


def ns_zombies(ns: str) -> int:
    """Zombies in the PID namespace ns (the link text of /proc/PID/ns/pid)."""
    count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{name}/ns/pid") != ns:
                continue
        except OSError:
            continue
        if proc_state(int(name)) == "Z":
            count += 1
    return count


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


# -- the inits ------------------------------------------------------------------------------

class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="fsm-init-bench-"))
        self.work = self.root / "work"
        self.logs = self.root / "logs"
        self.work.mkdir()
        self.logs.mkdir()
        self.base_env = {k: v for k, v in os.environ.items()
                         if not k.startswith(("SRV", "FSM_INIT_", "PYTHON"))}
        # non-daemon: an empty srv root, so no configuration at all
        nd = self.root / "nd"
        (nd / "srv").mkdir(parents=True)
        self.nd_run = nd / "run"
        self.nd_env = dict(self.base_env, FSM_INIT_SRV_ROOT=str(nd / "srv"),
                           FSM_INIT_STATE_DIR=str(nd / "state"), FSM_INIT_RUN_DIR=str(self.nd_run),
                           FSM_INIT_SYSLOG_SOCKET=str(nd / "log"))
        # status-check: srv root with bench/workcfg.json, SRVNAME=bench
        sc = self.root / "sc"
        (sc / "srv" / "bench").mkdir(parents=True)
        (sc / "srv" / "bench" / "workcfg.json").write_text(json.dumps(STATUS_CHECK_CFG))
        self.sc_run = sc / "run"
        self.sc_env = dict(self.base_env, SRVNAME="bench", FSM_INIT_SRV_ROOT=str(sc / "srv"),
                           FSM_INIT_STATE_DIR=str(sc / "state"), FSM_INIT_RUN_DIR=str(self.sc_run),
                           FSM_INIT_SYSLOG_SOCKET=str(sc / "log"))
        self.helper = self.root / "helper"
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(self.helper), str(HERE / "helper.c")], check=True)
        self.inits = {
            ND: ([str(FSM_INIT), "--"], self.nd_env),
            SC: ([str(FSM_INIT), "--"], self.sc_env),
            TINI_K: ([TINI, "--"], self.base_env),
            DUMB_K: ([DUMB_INIT, "--"], self.base_env),
            MY_K: (MY_INIT + ["--"], self.base_env),
            # the engine in charge: no hand-over to the thin reaper during the measurement
            NDE: ([str(FSM_INIT), "--"], dict(self.nd_env, FSM_INIT_HANDOVER_AFTER="0")),
        }
        self.counter = 0
        self.running: list[Running] = []

    def tmp(self, name: str) -> str:
        self.counter += 1
        return str(self.work / f"{name}-{self.counter}")

    def launch(self, key: str, cmd: list[str], find_pid1: bool = True) -> "Running":
        prefix, env = self.inits[key]
        self.counter += 1
        log = open(self.logs / f"{key}-{self.counter}.log", "wb")
        run = Running(self, key, UNSHARE + prefix + cmd, env, log, find_pid1)
        self.running.append(run)
        return run

    def cleanup(self) -> None:
        for run in self.running:
            run.kill()
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)


class Running:
    """One init as PID 1 of its own PID namespace."""

    def __init__(self, bench: Bench, key: str, argv: list[str], env: dict, log, find_pid1: bool) -> None:
        self.bench, self.key, self.log = bench, key, log
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     cwd=bench.work)
        self.pid1 = self.ns = None
        if not find_pid1:  # a run that may be over before PID 1 could be looked at
            return
        unshare_exe = os.readlink(f"/proc/{self.proc.pid}/exe")
        self.pid1 = wait_for(lambda: self._pid1(unshare_exe), what=f"{key}: PID 1 to exec")
        self.ns = os.readlink(f"/proc/{self.pid1}/ns/pid")

    def _pid1(self, unshare_exe: str) -> int | None:
        kids = children(self.proc.pid)
        if not kids:
            return None
        try:
            return kids[0] if os.readlink(f"/proc/{kids[0]}/exe") != unshare_exe else None
        except OSError:
            return None

    def settle(self) -> None:
        """Wait for the steady state that the idle/zombie/SIGTERM figures are about."""
        if self.key == ND:
            wait_for(lambda: b"fsm_init.core.reaper" in cmdline(self.pid1) or self.proc.poll() is not None,
                     what="fsm-init's handover to the thin reaper")
        elif self.key == SC:
            wait_for(lambda: self.control_state() == "watch", what="fsm-init to reach state watch", interval=0.05)
        elif self.key == NDE:
            wait_for(lambda: self.control_state() == "foreground", what="fsm-init to reach state foreground",
                     interval=0.05)
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.key} exited early with {self.proc.returncode}; "
                               f"its log ends: {self.log_tail()!r}")

    def log_tail(self, lines: int = 4) -> str:
        self.log.flush()
        return " | ".join((read(self.log.name, "r") or "").splitlines()[-lines:])

    def control_state(self) -> str | None:
        path = os.path.join(self.bench.sc_run if self.key == SC else self.bench.nd_run, "control.sock")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2.0)
                sock.connect(path)
                sock.sendall(b'{"verb": "status"}\n')
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            return json.loads(data)["status"]["state"]
        except (OSError, ValueError, KeyError):
            return None

    def service(self) -> int:
        """Host pid of PID 1's (first) child."""
        return wait_for(lambda: (children(self.pid1) or [None])[0], what=f"{self.key}: a child of PID 1")

    def wait(self, timeout=DEADLINE) -> int:
        return exit_code(self.proc.wait(timeout))

    def kill(self) -> None:
        if self.proc.poll() is None and self.pid1 is None:
            self.proc.kill()  # --kill-child takes the namespace down with unshare
            self.proc.wait()
        elif self.proc.poll() is None:
            try:
                os.kill(self.pid1, signal.SIGKILL)  # from the parent namespace: kills the whole namespace
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- 1. start-up overhead ---------------------------------------------------------------------

def bench_startup(b: Bench, results: dict) -> None:
    n = b.args.startup_runs
    variants = {
        "bare": (UNSHARE + ["/bin/true"], b.base_env),
        "python": (UNSHARE + [str(VENV_PYTHON), "-c", "pass"], b.base_env),
        ND: (UNSHARE + [str(FSM_INIT), "--", "/bin/true"], b.nd_env),
        TINI_K: (UNSHARE + [TINI, "--", "/bin/true"], b.base_env),
        DUMB_K: (UNSHARE + [DUMB_INIT, "--", "/bin/true"], b.base_env),
        MY_K: (UNSHARE + MY_INIT + ["--", "/bin/true"], b.base_env),
        # the interpreter's floor: Debian's python3 without site, in isolated mode
        "python_is": (UNSHARE + [SYS_PYTHON, "-I", "-S", "-c", "pass"], b.base_env),
    }
    times = {k: [] for k in variants}
    keys = list(variants)
    for i in range(n + 2):  # two warm-up rounds, not counted
        random.shuffle(keys)  # interleaved, in random order: drift hits every variant alike
        for key in keys:
            argv, env = variants[key]
            t0 = time.perf_counter_ns()
            rc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=b.work).returncode
            dt = time.perf_counter_ns() - t0
            if rc != 0:
                raise RuntimeError(f"start-up run of {key} exited {rc}: {shlex.join(argv)}")
            if i >= 2:
                times[key].append(dt / 1e6)
    bare = median(times["bare"])
    results["startup_abs"] = {k: median(v) for k, v in times.items()}
    results["startup"] = {k: median(times[k]) - bare for k in (ND, TINI_K, DUMB_K, MY_K, "python", "python_is")}
    results["startup_spread"] = {k: (min(v), max(v)) for k, v in times.items()}


# -- 2. idle footprint and wake-ups -------------------------------------------------------------

def bench_idle(b: Bench, results: dict) -> None:
    window = b.args.idle_window
    for key, _ in COLUMNS:
        run = b.launch(key, ["sleep", "1000"])
        try:
            child = run.service()
            wait_for(lambda: cmdline(child).startswith(b"sleep"), what=f"{key}: sleep to start")
            if key == ND:
                # the engine's footprint before the handover, for comparison
                if b"fsm_init.core.reaper" not in cmdline(run.pid1):
                    results.setdefault("engine_mem", mem(run.pid1))
            run.settle()
            time.sleep(0.5)
            m = mem(run.pid1)
            v0, n0 = ctxt(run.pid1)
            time.sleep(window)
            v1, n1 = ctxt(run.pid1)
            if run.proc.poll() is not None:
                raise RuntimeError(f"{key} exited during the idle window")
            results.setdefault("idle", {})[key] = dict(m, vol=v1 - v0, nonvol=n1 - n0)
        except Exception as e:  # noqa: BLE001  (one failing init must not cost the others' figures)
            results.setdefault("errors", []).append(f"idle {key}: {e}")
        finally:
            run.kill()


# -- 3. reaping zombies handed over at once --------------------------------------------------------

def zombie_round(b: Bench, key: str, n: int) -> dict:
    ready, go, stamp = b.tmp("ready"), b.tmp("go"), b.tmp("stamp")
    os.mkfifo(go)
    run = b.launch(key, [str(b.helper), "zombies", str(n), ready, go, stamp])
    try:
        wait_for(lambda: os.path.exists(ready) or run.proc.poll() is not None, timeout=60,
                 what=f"{key}: {n} zombies to be made")
        run.settle()
        service = run.service()
        intermediate = wait_for(lambda: (children(service) or [None])[0], what="the intermediate")
        zombies = wait_for(lambda: len(children(intermediate)) == n and children(intermediate),
                           what=f"{key}: the {n} zombies")
        base = len(children(run.pid1))
        time.sleep(0.3)
        m0, c0 = mem(run.pid1), cpu_ns(run.pid1)
        # Reparenting appends the zombies to PID 1's children in fork order, and every
        # init here reaps with waitpid(-1), which takes the first zombie in that list:
        # the last-forked zombie is the last reaped.  Polling its /proc entry (an RCU
        # pid lookup) keeps the poller out of tasklist_lock, which reading a children
        # file holds and which every reap needs for writing.  The full checks after
        # the loop guard the assumption.
        last = f"/proc/{zombies[-1]}"
        mid_fd = os.pidfd_open(intermediate)
        fd = os.open(go, os.O_WRONLY)
        os.write(fd, b"x")
        os.close(fd)
        # The intermediate's pidfd turns readable once its exit (the re-parenting of all
        # the zombies, done under tasklist_lock: nobody can reap meanwhile) is over.
        ready_fds, _, _ = select.select([mid_fd], [], [], DEADLINE)
        t_mid = now_ns()
        os.close(mid_fd)
        if not ready_fds:
            raise TimeoutError(f"{key}: the intermediate did not exit")
        end = time.monotonic() + DEADLINE
        while os.path.exists(last):
            time.sleep(0.00002)  # ~0.1 ms resolution without hogging the second CPU
            if time.monotonic() > end:
                raise TimeoutError(f"{key}: zombies still there after {DEADLINE}s")
        t_end = now_ns()
        exact = True
        # Check "no zombie left in the namespace": PID 1's children and a full /proc scan.
        while len(children(run.pid1)) > base or ns_zombies(run.ns):
            exact = False
            t_end = now_ns()
            if time.monotonic() > end:
                raise TimeoutError(f"{key}: zombies still there after {DEADLINE}s")
        handed = int(read(stamp))
        c1 = cpu_ns(run.pid1)
        time.sleep(0.2)
        m1 = mem(run.pid1)
        if run.proc.poll() is not None:
            raise RuntimeError(f"{key} exited while reaping")
        return {"ms": (t_end - handed) / 1e6, "handover_ms": (t_mid - handed) / 1e6,
                "reap_ms": (t_end - t_mid) / 1e6, "cpu_ms": (c1 - c0) / 1e6,
                "rss_before": m0["rss"], "rss_after": m1["rss"], "drss": m1["rss"] - m0["rss"], "exact": exact}
    finally:
        run.kill()


def bench_zombies(b: Bench, results: dict) -> None:
    out = results.setdefault("zombies", {})
    rounds = round_robin(b, results, "zombies", b.args.zombie_runs, lambda key: zombie_round(b, key, b.args.zombies))
    for key, rs in rounds.items():
        out[key] = {f: median([r[f] for r in rs]) for f in rs[0] if f != "exact"}
        out[key]["min_ms"] = min(r["ms"] for r in rs)
        out[key]["exact"] = all(r["exact"] for r in rs)
        out[key]["all_ms"] = [r["ms"] for r in rs]
        out[key]["all_drss"] = [r["drss"] for r in rs]
        out[key]["n"] = len(rs)


def round_robin(b: Bench, results: dict, what: str, n: int, measure, keys=None) -> dict:
    """n rounds of measure(key) per init, one init after the other in each round (in
    random order), so that load from elsewhere on the machine spreads over all of them.
    A failed round is reported and not counted; an init is dropped after 3 failures."""
    rounds: dict = {}
    failed: dict = {}
    for _ in range(n):
        todo = [k for k in keys or [k for k, _ in COLUMNS] if failed.get(k, 0) < 3]
        random.shuffle(todo)
        for key in todo:
            try:
                rounds.setdefault(key, []).append(measure(key))
            except Exception as e:  # noqa: BLE001  (one failing init must not cost the others' figures)
                failed[key] = failed.get(key, 0) + 1
                results.setdefault("errors", []).append(f"{what} {key}: {e}")
    return {k: v for k, v in rounds.items() if v}


# -- 4. SIGTERM latency ------------------------------------------------------------------------------

def term_round(b: Bench, key: str) -> dict:
    ready, stamp = b.tmp("ready"), b.tmp("stamp")
    run = b.launch(key, [str(b.helper), "term", ready, stamp])
    try:
        wait_for(lambda: os.path.exists(ready) or run.proc.poll() is not None, what=f"{key}: term helper")
        run.settle()
        child = run.service()
        time.sleep(0.2)
        fds = {os.pidfd_open(run.pid1): "pid1", os.pidfd_open(child): "child"}
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        gone = {}
        t0 = now_ns()
        os.kill(run.pid1, signal.SIGTERM)
        while len(gone) < 2:
            events = poller.poll(DEADLINE * 1000)
            t = now_ns()
            if not events:
                raise TimeoutError(f"{key}: still running {DEADLINE}s after SIGTERM")
            for fd, _ in events:
                gone[fds[fd]] = t
                poller.unregister(fd)
        for fd in fds:
            os.close(fd)
        code = run.wait()
        signalled = int(read(stamp) or 0)
        return {"signalled": (signalled - t0) / 1e6 if signalled else None,
                "child_gone": (gone["child"] - t0) / 1e6, "pid1_gone": (gone["pid1"] - t0) / 1e6,
                "pid1_after_child": (gone["pid1"] - gone["child"]) / 1e6, "exit": code}
    finally:
        run.kill()


def bench_term(b: Bench, results: dict) -> None:
    out = results.setdefault("term", {})
    keys = [k for k, _ in COLUMNS] + [NDE]
    for key, rs in round_robin(b, results, "SIGTERM", b.args.term_runs, lambda key: term_round(b, key),
                               keys).items():
        out[key] = {f: median([r[f] for r in rs if r[f] is not None] or [float("nan")])
                    for f in ("signalled", "child_gone", "pid1_gone", "pid1_after_child")}
        out[key]["max_signalled"] = max((r["signalled"] or 0) for r in rs)
        out[key]["exits"] = sorted({r["exit"] for r in rs})
        out[key]["n"] = len(rs)


# -- 5. exit codes -----------------------------------------------------------------------------------

def bench_exit_codes(b: Bench, results: dict) -> None:
    out = results.setdefault("exit", {})
    for key, _ in COLUMNS:
        codes = {}
        try:
            if key != SC:  # status-check mode restarts a service that exits: no exit code to read
                for case, cmd in (("exit3", ["sh", "-c", "exit 3"]), ("kill", ["sh", "-c", "kill -KILL $$"])):
                    run = b.launch(key, cmd, find_pid1=False)
                    try:
                        codes[case] = run.wait()
                    finally:
                        run.kill()
            run = b.launch(key, ["sleep", "1000"])
            try:
                child = run.service()
                wait_for(lambda: cmdline(child).startswith(b"sleep"), what=f"{key}: sleep to start")
                run.settle()
                os.kill(run.pid1, signal.SIGTERM)
                codes["term"] = run.wait()
            finally:
                run.kill()
        except Exception as e:  # noqa: BLE001
            results.setdefault("errors", []).append(f"exit codes {key}: {e}")
        out[key] = codes


# -- 6. supervising 1, 10 and 100 /etc/service daemons ------------------------------------------------

SCALE_INITS = [("fsm", "fsm-init"), ("runit", "runit (runsvdir)"), ("supervisord", "supervisord")]
RUNSVDIR, SV = "/usr/bin/runsvdir", "/usr/bin/sv"
SUPERVISORD, SUPERVISORCTL = REPO / ".venv" / "bin" / "supervisord", REPO / ".venv" / "bin" / "supervisorctl"
SRVCTL = REPO / ".venv" / "bin" / "srvctl"
SLEEP_BASE = 860000  # daemon i runs `sleep SLEEP_BASE+i`: every daemon's process is told apart by its argument


def ns_pids(ns: str) -> list[int]:
    """Every process in the PID namespace ns (the link text of /proc/PID/ns/pid)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == ns:
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def daemon_pids(pids: list[int]) -> dict[int, int]:
    """daemon index -> host pid of its running `sleep`."""
    out = {}
    for pid in pids:
        argv = cmdline(pid).split(b"\0")
        if len(argv) >= 2 and argv[0].endswith(b"sleep") and argv[1].isdigit() and int(argv[1]) >= SLEEP_BASE:
            out[int(argv[1]) - SLEEP_BASE] = pid
    return out


class ScaleSetup:
    """n daemons, each `run` = `exec sleep SLEEP_BASE+i`, laid out for one of the supervisors."""

    def __init__(self, b: Bench, kind: str, n: int) -> None:
        self.b, self.kind, self.n = b, kind, n
        b.counter += 1
        self.dir = b.root / f"scale-{kind}-{n}-{b.counter}"
        self.sv = self.dir / "service"
        self.sv.mkdir(parents=True)
        for i in range(n):
            d = self.sv / f"d{i:03d}"
            d.mkdir()
            run = d / "run"
            run.write_text(f"#!/bin/sh\nexec sleep {SLEEP_BASE + i}\n")
            run.chmod(0o755)
        self.env = dict(b.base_env)
        if kind == "fsm":
            # no command and no $SRVNAME: fsm-init only supervises the daemons (state idle,
            # FSM_INIT_IDLE_WAIT 600 s), as my_init without a command runs runit only
            self.argv = [str(FSM_INIT)]
            self.env.update(FSM_INIT_SERVICE_DIRECTORY=str(self.sv), FSM_INIT_SRV_ROOT=str(self.dir / "srv"),
                            FSM_INIT_STATE_DIR=str(self.dir / "state"), FSM_INIT_RUN_DIR=str(self.dir / "run"),
                            FSM_INIT_SYSLOG_SOCKET=str(self.dir / "log"))
        elif kind == "runit":
            self.argv = [RUNSVDIR, "-P", str(self.sv)]
        else:
            conf = self.dir / "supervisord.conf"
            sock = self.dir / "supervisor.sock"
            programs = "".join(
                f"\n[program:d{i:03d}]\ncommand={self.sv / f'd{i:03d}' / 'run'}\nautorestart=true\nstartsecs=0\n"
                f"stopsignal=TERM\nstdout_logfile=NONE\nstderr_logfile=NONE\n" for i in range(n))
            conf.write_text(
                f"[supervisord]\nnodaemon=true\nlogfile={self.dir / 'supervisord.log'}\n"
                f"pidfile={self.dir / 'supervisord.pid'}\nchildlogdir={self.dir}\nuser=root\n"
                f"[unix_http_server]\nfile={sock}\n"
                "[rpcinterface:supervisor]\n"
                "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
                f"[supervisorctl]\nserverurl=unix://{sock}\n" + programs)
            self.conf = conf
            self.argv = [str(SUPERVISORD), "-n", "-c", str(conf)]

    def restart_argv(self, i: int) -> list[str]:
        name = f"d{i:03d}"
        if self.kind == "fsm":
            return [str(SRVCTL), "restart", name]
        if self.kind == "runit":
            return [SV, "restart", str(self.sv / name)]
        return [str(SUPERVISORCTL), "-c", str(self.conf), "restart", name]


def scale_round(b: Bench, kind: str, n: int, full: bool) -> dict:
    setup = ScaleSetup(b, kind, n)
    b.counter += 1
    log = open(b.logs / f"scale-{kind}-{n}-{b.counter}.log", "wb")
    t0 = now_ns()
    proc = subprocess.Popen(UNSHARE + setup.argv, env=setup.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            cwd=setup.dir)
    out: dict = {}
    pid1 = None
    try:
        unshare_exe = os.readlink(f"/proc/{proc.pid}/exe")

        def find_pid1():
            kids = children(proc.pid)
            try:
                return kids[0] if kids and os.readlink(f"/proc/{kids[0]}/exe") != unshare_exe else None
            except OSError:
                return None
        pid1 = wait_for(find_pid1, what=f"scale {kind}: PID 1")
        ns = os.readlink(f"/proc/{pid1}/ns/pid")
        wait_for(lambda: len(daemon_pids(ns_pids(ns))) == n or proc.poll() is not None, timeout=60,
                 what=f"scale {kind}: {n} daemons running", interval=0.005)
        out["start_ms"] = (now_ns() - t0) / 1e6
        if proc.poll() is not None:
            raise RuntimeError(f"scale {kind} exited with {proc.returncode}")
        time.sleep(1.0)  # let every supervisor finish its start-up bookkeeping
        pids = ns_pids(ns)
        running = daemon_pids(pids)
        supervision = [p for p in pids if p not in running.values()]
        if full:
            out["rss_pid1"] = mem(pid1)["rss"]
            out["pss_tree"] = sum(mem(p)["pss"] for p in pids)
            out["pss_supervision"] = sum(mem(p)["pss"] for p in supervision)
            out["n_supervision"] = len(supervision)
            before = {p: ctxt(p)[0] for p in supervision}
            time.sleep(b.args.idle_window)
            after = {p: ctxt(p)[0] for p in supervision}
            out["wake_pid1"] = after.get(pid1, 0) - before.get(pid1, 0)
            out["wake_tree"] = sum(after[p] - before[p] for p in before if p in after)
        # restart one daemon with the supervisor's own control command, until it has
        # returned and a new process of that daemon runs
        target = n // 2
        old = running[target]
        cmd_env = setup.env
        t1 = now_ns()
        done = subprocess.run(setup.restart_argv(target), env=cmd_env, capture_output=True, text=True, timeout=60)
        t_cmd = now_ns()
        if done.returncode != 0:
            raise RuntimeError(f"scale {kind}: {shlex.join(setup.restart_argv(target))} exited {done.returncode}: "
                               f"{(done.stdout + done.stderr).strip()[-300:]}")
        wait_for(lambda: daemon_pids(ns_pids(ns)).get(target, old) != old, what=f"scale {kind}: d{target} back",
                 interval=0.001)
        out["restart_ms"] = (max(now_ns(), t_cmd) - t1) / 1e6
        # stop: SIGTERM to PID 1, until every process of the namespace is gone
        fds = []
        for p in ns_pids(ns):
            try:
                fds.append(os.pidfd_open(p))
            except OSError:
                pass
        t2 = now_ns()
        os.kill(pid1, signal.SIGTERM)
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        left = set(fds)
        end = time.monotonic() + 120
        while left:
            events = poller.poll(1000)
            for fd, _ in events:
                left.discard(fd)
                poller.unregister(fd)
            if time.monotonic() > end:
                raise TimeoutError(f"scale {kind}: {len(left)} processes still there 120 s after SIGTERM")
        out["stop_ms"] = (now_ns() - t2) / 1e6
        for fd in fds:
            os.close(fd)
        proc.wait(30)
        return out
    finally:
        if proc.poll() is None:
            try:
                os.kill(pid1, signal.SIGKILL) if pid1 else proc.kill()
            except ProcessLookupError:
                pass
            proc.wait(30)
        log.close()


def bench_scale(b: Bench, results: dict) -> None:
    out = results.setdefault("scale", {})
    kinds = [k for k, _ in SCALE_INITS]
    if not SUPERVISORD.exists():
        results.setdefault("errors", []).append("scale: supervisord not in the venv (./scripts/setup installs it)")
        kinds.remove("supervisord")
    if not os.path.exists(RUNSVDIR):
        results.setdefault("errors", []).append("scale: runsvdir not found (Debian's runit; ./scripts/setup)")
        kinds.remove("runit")
    sizes = [int(x) for x in b.args.scale_sizes.split(",")]
    for rep in range(b.args.scale_runs):
        for n in sizes:
            order = list(kinds)
            random.shuffle(order)
            for kind in order:
                try:
                    r = scale_round(b, kind, n, full=rep == 0)
                except Exception as e:  # noqa: BLE001
                    results.setdefault("errors", []).append(f"scale {kind} n={n}: {e}")
                    continue
                cell = out.setdefault(kind, {}).setdefault(str(n), {})
                for f, v in r.items():
                    cell.setdefault(f, []).append(v)
    for kind in out:
        for n in out[kind]:
            out[kind][n] = {f: (median(v) if f.endswith("_ms") else v[0]) for f, v in out[kind][n].items()}


# -- 7. status-check mode at speed: workwatch 1, ten PeriodicST scripts ---------------------------------

def bench_checks(b: Bench, results: dict) -> None:
    b.counter += 1
    base = b.root / f"checks-{b.counter}"
    srv = base / "srv" / "bench"
    srv.mkdir(parents=True)
    (srv / "workcfg.json").write_text(json.dumps({"initdelay": 0, "workstart": "sleep 100000", "workwatch": 1,
                                                  "workintvl": 1}))
    for i in range(10):
        script = srv / f"PeriodicST-{i:02d}"
        script.write_text("#!/bin/sh\nexit 0\n")
        script.chmod(0o755)
    run_dir = base / "run"
    env = dict(b.base_env, SRVNAME="bench", FSM_INIT_SRV_ROOT=str(base / "srv"), FSM_INIT_STATE_DIR=str(base / "state"),
               FSM_INIT_RUN_DIR=str(run_dir), FSM_INIT_SYSLOG_SOCKET=str(base / "log"))
    b.inits["checks"] = ([str(FSM_INIT)], env)
    run = b.launch("checks", [])
    try:
        journal = run_dir / "journal.jsonl"
        wait_for(lambda: b"\"to\": \"check\"" in (read(journal) or b""), what="the first check cycle", timeout=60)
        time.sleep(2.0)  # past the first cycles' start-up
        cpu0, m0, t0, wall0 = cpu_ns(run.pid1), mem(run.pid1), time.monotonic(), time.time()
        time.sleep(b.args.checks_duration)
        cpu1, m1, wall1 = cpu_ns(run.pid1), mem(run.pid1), time.time()
        elapsed = time.monotonic() - t0
        if run.proc.poll() is not None:
            raise RuntimeError(f"fsm-init exited during the checks: {run.log_tail()}")
        entries = []
        for name in ("journal.jsonl.1", "journal.jsonl"):
            for line in (read(run_dir / name) or b"").splitlines():
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    pass
        starts = [e["time"] for e in entries if e.get("to") == "check"]
        passed = sum(1 for e in entries if e.get("from") == "check" and e.get("to") == "watch"
                     and wall0 <= e["time"] <= wall1)
        # The fixed-rate schedule: cycle k starts at anchor + k * workwatch (1 s).  The anchor
        # is the median offset of the window's cycles (the schedule fsm-init keeps); drift: the
        # last tenth of the cycles against the first tenth.  A cycle's start is its journal
        # entry, written once the first PeriodicST script has been spawned.
        window = [t for t in starts if wall0 <= t <= wall1] or starts  # the steady state, as the CPU time
        first = window[0]
        offsets = [(t - first) - round(t - first) for t in window]
        anchor = median(offsets)
        dev = [o - anchor for o in offsets]
        tenth = max(1, len(dev) // 10)
        skipped = sum(1 for a, c in zip(window, window[1:], strict=False) if c - a > 1.5)
        cycles = len(window)
        results["checks"] = {
            "duration": elapsed, "cycles": cycles, "passed": passed, "skipped": skipped,
            "cpu_ms_per_cycle": (cpu1 - cpu0) / 1e6 / cycles,
            "dev_median_ms": median([abs(d) * 1e3 for d in dev]), "dev_max_ms": max(abs(d) * 1e3 for d in dev),
            "drift_ms": (median(dev[-tenth:]) - median(dev[:tenth])) * 1e3,
            "rss_before": m0["rss"], "rss_after": m1["rss"],
        }
    except Exception as e:  # noqa: BLE001
        results.setdefault("errors", []).append(f"checks: {e}")
    finally:
        run.kill()


# -- 8. probes: srvctl health / live / status as whole processes ----------------------------------------

def bench_probes(b: Bench, results: dict) -> None:
    run = b.launch(SC, ["sleep", "1000"])
    env = dict(b.base_env, FSM_INIT_RUN_DIR=str(b.sc_run))
    out: dict = {}
    try:
        run.settle()
        verbs = ["health", "live", "status"]
        times: dict[str, list[float]] = {v: [] for v in verbs}
        for i in range(b.args.probe_runs + 2):
            random.shuffle(verbs)
            for verb in verbs:
                t0 = time.perf_counter_ns()
                done = subprocess.run([str(SRVCTL), verb], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
                dt = (time.perf_counter_ns() - t0) / 1e6
                if done.returncode != 0:
                    raise RuntimeError(f"srvctl {verb} exited {done.returncode}")
                if i >= 2:
                    times[verb].append(dt)
        out["single"] = {v: median(t) for v, t in times.items()}
        bursts = []
        for _ in range(b.args.burst_runs):
            t0 = time.perf_counter_ns()
            procs = [subprocess.Popen([str(SRVCTL), "health"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL) for _ in range(20)]
            codes = [p.wait(30) for p in procs]
            bursts.append({"all_ms": (time.perf_counter_ns() - t0) / 1e6, "ok": sum(c == 0 for c in codes)})
            time.sleep(0.5)
        out["burst"] = bursts
        out["burst_max_ms"] = max(x["all_ms"] for x in bursts)
        out["burst_median_ms"] = median([x["all_ms"] for x in bursts])
        out["burst_ok"] = min(x["ok"] for x in bursts)
    except Exception as e:  # noqa: BLE001
        results.setdefault("errors", []).append(f"probes: {e}")
    finally:
        run.kill()
    results["probes"] = out


# -- 10. where fsm-init's start-up goes --------------------------------------------------------------------

def bench_profile(b: Bench, results: dict) -> None:
    """startup_phases.py as PID 1 (the venv's interpreter with site, as the fsm-init script):
    the minimum and median of each phase over --startup-runs runs."""
    phases: dict[str, list[float]] = {}
    for i in range(b.args.startup_runs + 2):
        done = subprocess.run(UNSHARE + [str(VENV_PYTHON), str(HERE / "startup_phases.py")], env=b.nd_env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, cwd=b.work, timeout=60)
        line = next((x for x in done.stderr.splitlines() if "=" in x and "|" in x), None)
        if done.returncode != 0 or line is None:
            results.setdefault("errors", []).append(f"profile: exited {done.returncode}: {done.stderr[-300:]}")
            return
        if i >= 2:
            for part in line.split("|"):
                name, value = part.rsplit("=", 1)
                phases.setdefault(name, []).append(float(value))
    results["profile"] = {name: {"min": min(v), "median": median(v)} for name, v in phases.items()}
    memory = {}
    for kind, flags in (("reaper", ["-I", "-S"]), ("engine", [])):
        done = subprocess.run([str(VENV_PYTHON), *flags, str(HERE / "memory_phases.py"), kind], env=b.base_env,
                              capture_output=True, text=True, timeout=60)
        line = next((x for x in done.stderr.splitlines() if "=" in x and "|" in x), None)
        if done.returncode != 0 or line is None:
            results.setdefault("errors", []).append(f"profile ({kind}): {done.stderr[-300:]}")
            continue
        memory[kind] = [(name, int(kib)) for name, kib in (part.rsplit("=", 1) for part in line.split("|"))]
    results["memory_profile"] = memory


# -- report ------------------------------------------------------------------------------------------

def fmt(value, spec=".1f", unit=""):
    if value is None or value != value:
        return "—"
    return f"{value:{spec}}{unit}"


def mib(kib):
    return None if kib is None else kib / 1024


DOCKER_RUNS = [
    ("image", "`docker run --rm IMAGE true` (fsm-init as PID 1)", []),
    ("entrypoint", "`docker run --rm --entrypoint true IMAGE` (no init)", ["--entrypoint", "true"]),
    ("init", "`docker run --rm --init --entrypoint true IMAGE` (Docker's tini)", ["--init", "--entrypoint", "true"]),
]


def bench_docker(b: Bench, results: dict) -> None:
    """Whole `docker run` wall times, the image built from this checkout (tests/integration/
    dockerhost.py starts dockerd when none answers and stops it again)."""
    sys.path.insert(0, str(REPO))
    from tests.integration import dockerhost

    engine = dockerhost.Engine()
    try:
        engine.up()
        image, _ = dockerhost.build_image()
        times: dict[str, list[float]] = {key: [] for key, _, _ in DOCKER_RUNS}
        for round_ in range(b.args.docker_runs + 1):  # round 0 warms up
            order = list(DOCKER_RUNS)
            random.shuffle(order)
            for key, _, args in order:
                argv = [dockerhost.DOCKER, "run", "--rm", *args, image]
                if key == "image":
                    argv.append("true")
                started = now_ns()
                done = subprocess.run(argv, capture_output=True, text=True, env=dockerhost.ENV, timeout=120)
                took = (now_ns() - started) / 1e6
                if done.returncode != 0:
                    raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
                if round_:
                    times[key].append(took)
        results["docker"] = {key: {"median": median(v), "min": min(v), "max": max(v), "n": len(v)}
                             for key, v in times.items()}
        results["docker_version"] = dockerhost.out("version", "--format", "{{.Server.Version}}")
    except BaseException as e:  # pytest's skip/fail outcomes are BaseExceptions
        if isinstance(e, KeyboardInterrupt):
            raise
        results.setdefault("errors", []).append(f"docker: {e}")
    finally:
        engine.down()


def report(b: Bench, results: dict, elapsed: float) -> str:
    a = b.args
    idle = results.get("idle", {})
    zomb = results.get("zombies", {})
    term = results.get("term", {})
    ex = results.get("exit", {})
    st = results.get("startup", {})
    sa = results.get("startup_abs")

    def row(figure, cells, target=""):
        return f"| {figure} | " + " | ".join(cells.get(k, "—") for k, _ in COLUMNS) + f" | {target} |"

    def per(d, f):
        return {k: f(d[k]) for k in d}

    lines = [
        "| figure | " + " | ".join(label for _, label in COLUMNS) + " | fsm-init target |",
        "|---|" + "---|" * len(COLUMNS) + "---|",
        row(f"start-up overhead over bare `/bin/true` (median of {a.startup_runs})",
            {k: fmt(st.get(k), "+.1f", " ms") for k in (ND, TINI_K, DUMB_K, MY_K)}, "≤ my_init's"),
        row("`INIT -- /bin/true` against `python3 -I -S -c pass`, whole process",
            {k: fmt(ratio(sa, k), ".1f", "×") for k in (ND, MY_K)} if sa else {}, "≤ 3×"),
        row("idle RSS of PID 1, supervising `sleep 1000`", per(idle, lambda d: fmt(mib(d["rss"]), ".2f", " MiB")),
            "≤ 10 MB (nd) / ≤ 14 MB (sc)"),
        row("idle PSS of PID 1", per(idle, lambda d: fmt(mib(d["pss"]), ".2f", " MiB"))),
        row("idle USS (private) of PID 1", per(idle, lambda d: fmt(mib(d["uss"]), ".2f", " MiB"))),
        row(f"voluntary context switches of PID 1 in {a.idle_window:g} s idle",
            per(idle, lambda d: str(d["vol"]) + (f" (+{d['nonvol']} invol.)" if d["nonvol"] else "")), "0"),
        row(f"reaping {a.zombies} zombies handed over at once (median of {a.zombie_runs})",
            per(zomb, lambda d: fmt(d["ms"], ".1f", " ms") + f" (min {d['min_ms']:.1f})"), "≤ 60 ms"),
        row("  of which: hand-over (the intermediate's exit) / reaping after it",
            per(zomb, lambda d: f"{d['handover_ms']:.1f} / {d['reap_ms']:.1f} ms")),
        row("  PID 1 CPU time while reaping", per(zomb, lambda d: fmt(d["cpu_ms"], ".1f", " ms"))),
        row("  PID 1 RSS before → after reaping",
            per(zomb, lambda d: f"{mib(d['rss_before']):.2f} → {mib(d['rss_after']):.2f} MiB "
                                f"({d['drss']:+d} KiB)"), "no growth"),
        row(f"SIGTERM to PID 1 → child's TERM handler runs (median of {a.term_runs})",
            per(term, lambda d: fmt(d["signalled"], ".2f", " ms") + f" (max {d['max_signalled']:.2f})"), "< 1 ms"),
        row("SIGTERM to PID 1 → child gone", per(term, lambda d: fmt(d["child_gone"], ".2f", " ms"))),
        row("SIGTERM to PID 1 → PID 1 gone", per(term, lambda d: fmt(d["pid1_gone"], ".2f", " ms"))),
        row("  PID 1 gone after the child's exit", per(term, lambda d: fmt(d["pid1_after_child"], ".2f", " ms")),
            "≤ 5 ms"),
        row("SIGTERM → child's handler, the engine in charge (non-daemon before the hand-over)",
            {ND: fmt(term[NDE]["signalled"], ".2f", " ms") + f" (max {term[NDE]['max_signalled']:.2f})"}
            if NDE in term else {}, "< 1 ms"),
        row("  PID 1 gone after the child's exit, the engine in charge",
            {ND: fmt(term[NDE]["pid1_after_child"], ".2f", " ms")} if NDE in term else {}, "≤ 5 ms"),
        row("exit code: child `exit 3`", per(ex, lambda d: str(d.get("exit3", "n/a (restarts it)"))), "3"),
        row("exit code: child killed by SIGKILL", per(ex, lambda d: str(d.get("kill", "n/a (restarts it)"))),
            "137"),
        row("exit code: SIGTERM to PID 1, child with default TERM", per(ex, lambda d: str(d.get("term", "—"))),
            "143"),
    ]
    lines += supervision_tables(b, results)
    notes = [
        "",
        f"N: start-up {a.startup_runs} runs per init (interleaved, 2 warm-up rounds dropped); "
        f"idle window {a.idle_window:g} s, one instance each; zombies {a.zombie_runs} fresh instances each; "
        f"SIGTERM {a.term_runs} fresh instances each. Times are medians, CLOCK_MONOTONIC. "
        "1 MiB = 1024 KiB (smaps_rollup).",
    ]
    dk = results.get("docker")
    if dk:
        notes.append("")
        notes.append(f"| `docker run` wall time, Docker {results.get('docker_version')} "
                     f"(median of {b.args.docker_runs}, min–max) | |")
        notes.append("|---|---|")
        for key, label, _ in DOCKER_RUNS:
            d = dk[key]
            notes.append(f"| {label} | {d['median']:.0f} ms ({d['min']:.0f}–{d['max']:.0f}) |")
        notes.append("")
    if sa:
        sp = results["startup_spread"]
        notes.append("start-up absolute medians (min–max): " + ", ".join(
            f"{k} {v:.1f} ms ({sp[k][0]:.1f}–{sp[k][1]:.1f})" for k, v in sa.items())
            + f"; the venv interpreter alone (`python -c pass`) is {st['python']:+.1f} ms over bare, "
            f"`python3 -I -S -c pass` {st['python_is']:+.1f} ms.")
    em = results.get("engine_mem")
    if em:
        notes.append(f"fsm-init engine before the handover (non-daemon, first second): RSS {mib(em['rss']):.2f} MiB, "
                     f"PSS {mib(em['pss']):.2f} MiB, USS {mib(em['uss']):.2f} MiB.")
    if zomb:
        notes.append("zombie rounds (ms / ΔRSS KiB): " + "; ".join(
            f"{k} {[round(x, 1) for x in d['all_ms']]} / {d['all_drss']}" for k, d in zomb.items()))
        late = [k for k, d in zomb.items() if not d["exact"]]
        if late:
            notes.append("zombies: the last-forked zombie was not the last reaped for " + ", ".join(late)
                         + " (end time taken from the slower full /proc scans instead)")
    if term:
        notes.append("exit codes seen after the SIGTERM-latency runs (child dies of TERM): " + ", ".join(
            f"{k} {d['exits']}" for k, d in term.items()))
    notes.append("fsm-init (non-daemon) is measured after its handover to the thin reaper (idle, zombies, "
                 "SIGTERM); fsm-init (status-check) in state watch (workwatch 60: no cycle in the window).")
    notes.append(f"host: {platform.node()} kernel {platform.release()}, {os.cpu_count()} CPUs; "
                 f"{_version([TINI, '--version'])}; {_version([DUMB_INIT, '--version'])}; "
                 f"python {platform.python_version()}; whole run {elapsed:.0f} s.")
    notes.append(f"code: {code_version()}.")
    short = [f"{what} {k} (n={d['n']})" for what, figs in (("zombies", zomb), ("SIGTERM", term))
             for k, d in figs.items() if d.get("n", 0) < (a.zombie_runs if what == "zombies" else a.term_runs)]
    if short:
        notes.append("fewer rounds than asked for (failed rounds are listed below): " + ", ".join(short))
    notes.append(f"machine load before: {results.get('load_before')}; after: {results.get('load_after')}.")
    notes.extend(verdicts(results))
    for err in results.get("errors", []):
        notes.append(f"ERROR: {err}")
    notes.append("")
    notes.append("reproduce (as root, from the repo root):")
    notes.append("")
    notes.append("    cd " + shlex.quote(str(REPO)) + " && " + shlex.join([".venv/bin/python", "tests/bench/bench.py",
                                                                            *sys.argv[1:]]))
    return "\n".join(lines + notes)


def ratio(sa: dict, key: str):
    """Whole-process start-up of key against the bare interpreter (`python3 -I -S -c pass`)."""
    return sa[key] / sa["python_is"] if key in sa and sa.get("python_is") else None


def supervision_tables(b: Bench, results: dict) -> list[str]:
    a = b.args
    lines: list[str] = []
    sc = results.get("scale")
    if sc:
        sizes = a.scale_sizes.split(",")
        kinds = [(k, label) for k, label in SCALE_INITS if k in sc]
        lines += ["", f"Supervising N runit-style daemons (`run` = `exec sleep …`), each supervisor as PID 1; "
                  f"times are medians of {a.scale_runs} fresh instances, the rest from the first:", "",
                  "| figure | N | " + " | ".join(label for _, label in kinds) + " | fsm-init target |",
                  "|---|---|" + "---|" * len(kinds) + "---|"]
        figures = [
            ("time until all are running", "start_ms", lambda v: f"{v:.0f} ms", "< supervisord, ≤ 2× runit"),
            ("PID 1 RSS", "rss_pid1", lambda v: f"{mib(v):.2f} MiB", "< supervisord, +< 50 KiB a daemon"),
            ("supervision tree PSS (without the daemons)", "pss_supervision", lambda v: f"{mib(v):.2f} MiB",
             "< supervisord"),
            ("whole tree PSS (with the daemons)", "pss_tree", lambda v: f"{mib(v):.2f} MiB", ""),
            (f"wake-ups of PID 1 / whole supervision tree in {a.idle_window:g} s idle", None, None,
             "0 at 100, < supervisord"),
            ("restart one daemon with the control command", "restart_ms", lambda v: f"{v:.0f} ms", "< supervisord"),
            ("SIGTERM to PID 1 → every process gone", "stop_ms", lambda v: f"{v:.0f} ms", "< supervisord, ≤ 2× runit"),
        ]
        for label, field, show, target in figures:
            for n in sizes:
                cells = []
                for k, _ in kinds:
                    d = sc[k].get(n)
                    if not d:
                        cells.append("—")
                    elif field is None:
                        cells.append(f"{d['wake_pid1']} / {d['wake_tree']}" if "wake_pid1" in d else "—")
                    else:
                        cells.append(show(d[field]) if field in d else "—")
                lines.append(f"| {label} | {n} | " + " | ".join(cells) + f" | {target if n == sizes[-1] else ''} |")
        lines += ["", "restart commands: `srvctl restart NAME` (fsm-init), `sv restart DIR/NAME` (runit), "
                  "`supervisorctl restart NAME` (supervisord); measured until the command returned and the "
                  "daemon's new process runs. runsvdir exits at once on SIGTERM (runit's stage 3 would "
                  "`sv stop` first); the kernel then kills the namespace."]
    ck = results.get("checks")
    if ck:
        lines += ["", f"Status-check mode at speed: `workwatch` 1, ten `PeriodicST-*` scripts (`exit 0`), "
                  f"{ck['duration']:.0f} s:", "",
                  "| figure | fsm-init | target |", "|---|---|---|",
                  f"| check cycles started / passed in the window / gaps of more than 1.5 s | {ck['cycles']} / {ck['passed']} / "
                  f"{ck['skipped']} | |",
                  f"| PID 1 CPU time per cycle (ten scripts spawned and reaped) | {ck['cpu_ms_per_cycle']:.2f} ms | |",
                  f"| cycle start against the fixed-rate schedule: median / max deviation | "
                  f"{ck['dev_median_ms']:.1f} / {ck['dev_max_ms']:.1f} ms | ≤ 10 ms |",
                  f"| drift, the last tenth of the cycles against the first tenth | {ck['drift_ms']:+.1f} ms | none |",
                  f"| PID 1 RSS at the start → end of the window | {mib(ck['rss_before']):.2f} → "
                  f"{mib(ck['rss_after']):.2f} MiB | no growth |"]
    pr = results.get("probes")
    if pr and "single" in pr:
        one = pr["single"]
        lines += ["", f"Probes against fsm-init in status-check mode, whole `srvctl` processes (median of "
                  f"{a.probe_runs}; bursts: 20 `srvctl health` started at once, {a.burst_runs} times):", "",
                  "| figure | time | target |", "|---|---|---|",
                  f"| `srvctl health` | {one['health']:.1f} ms | < 40 ms and < ½ status |",
                  f"| `srvctl live` | {one['live']:.1f} ms | < 40 ms and < ½ status |",
                  f"| `srvctl status` | {one['status']:.1f} ms | |",
                  f"| 20 `srvctl health` at once, until all answered: median / max | {pr['burst_median_ms']:.0f} / "
                  f"{pr['burst_max_ms']:.0f} ms ({pr['burst_ok']}/20 ok in the worst) | ≤ 1 s |"]
    prof = results.get("profile")
    if prof:
        sa = results.get("startup_abs", {})
        lines += ["", f"Where `fsm-init -- /bin/true`'s time goes (`tests/bench/startup_phases.py` as PID 1, "
                  f"{a.startup_runs} runs; the interpreter's own start-up is not in it):", "",
                  "| phase | min | median |", "|---|---|---|"]
        for name, d in prof.items():
            lines.append(f"| {name} | {d['min']:.1f} ms | {d['median']:.1f} ms |")
        lines.append(f"| sum | {sum(d['min'] for d in prof.values()):.1f} ms | "
                     f"{sum(d['median'] for d in prof.values()):.1f} ms |")
        if sa:
            lines.append(f"| for comparison: `python3 -I -S -c pass`, whole process (start-up figure) | | "
                         f"{sa.get('python_is', float('nan')):.1f} ms |")
    mem_profile = results.get("memory_profile")
    if mem_profile:
        lines += ["", "What PID 1's RSS is made of (`tests/bench/memory_phases.py`: VmRSS after each step of "
                  "imports, one process each):", "", "| thin reaper (python -I -S) | KiB | engine | KiB |",
                  "|---|---|---|---|"]
        reaper_steps, engine_steps = mem_profile.get("reaper", []), mem_profile.get("engine", [])
        for i in range(max(len(reaper_steps), len(engine_steps))):
            left = reaper_steps[i] if i < len(reaper_steps) else ("", "")
            right = engine_steps[i] if i < len(engine_steps) else ("", "")
            lines.append(f"| {left[0]} | {('+' if i else '') + str(left[1]) if left[0] else ''} | {right[0]} | "
                         f"{('+' if i else '') + str(right[1]) if right[0] else ''} |")
        for kind, steps in (("thin reaper", reaper_steps), ("engine", engine_steps)):
            if steps:
                lines.append(f"| {kind}: total | {sum(k for _, k in steps)} KiB | | |")
    return lines


def verdicts(results: dict) -> list[str]:
    """fsm-init against the issue's targets (MB read as 10^6 bytes, the stricter reading)."""
    out = []

    def check(name, ok, detail):
        out.append(f"target {name}: {'met' if ok else 'MISSED'} ({detail})")

    st, idle = results.get("startup", {}), results.get("idle", {})
    zomb, term = results.get("zombies", {}), results.get("term", {})
    sa = results.get("startup_abs", {})
    if ND in st and MY_K in st:
        check("start-up overhead ≤ my_init's", st[ND] <= st[MY_K],
              f"{st[ND]:+.1f} ms against {st[MY_K]:+.1f} ms, {st[ND] - st[MY_K]:+.1f} ms")
    if ratio(sa, ND):
        check("`fsm-init -- /bin/true` ≤ 3× `python3 -I -S -c pass`", ratio(sa, ND) <= 3,
              f"{ratio(sa, ND):.2f}×: {sa[ND]:.1f} ms against {sa['python_is']:.1f} ms; 3× is "
              f"{3 * sa['python_is']:.1f} ms")
    if idle:
        wake = {k: idle[k]["vol"] for k in (ND, SC) if k in idle}
        check("0 idle wake-ups", all(v == 0 for v in wake.values()), ", ".join(f"{k} {v}" for k, v in wake.items()))
        for key, limit in ((ND, 10), (SC, 14)):
            if key in idle:
                mb = idle[key]["rss"] * 1024 / 1e6
                check(f"idle RSS ≤ {limit} MB ({key})", mb <= limit, f"{mb:.1f} MB")
    for key in (ND, SC):
        if key in zomb:
            d = zomb[key]
            check(f"{results.get('n_zombies')} zombies reaped in ≤ 60 ms ({key})", d["ms"] <= 60,
                  f"median {d['ms']:.1f} ms, min {d['min_ms']:.1f}")
            check(f"no RSS growth reaping zombies ({key})", d["drss"] <= 4, f"{d['drss']:+d} KiB")
    for key in (NDE, SC, ND):
        if key in term:
            check(f"SIGTERM → child signalled < 1 ms ({key})", term[key]["signalled"] < 1,
                  f"median {term[key]['signalled']:.2f} ms, max {term[key]['max_signalled']:.2f}")
            check(f"PID 1 gone ≤ 5 ms after the child's exit ({key})", term[key]["pid1_after_child"] <= 5,
                  f"median {term[key]['pid1_after_child']:.2f} ms")
    dk = results.get("docker")
    if dk and ND in st:
        extra = dk["image"]["median"] - dk["entrypoint"]["median"]
        check("docker: fsm-init's extra time ≤ 2× its start-up overhead", extra <= 2 * st[ND],
              f"+{extra:.0f} ms against 2 × {st[ND]:.1f} ms = {2 * st[ND]:.0f} ms")
    out.extend(scale_verdicts(results))
    ck = results.get("checks")
    if ck:
        check("check cycles within 10 ms of the fixed-rate schedule", ck["dev_max_ms"] <= 10,
              f"max {ck['dev_max_ms']:.1f} ms, median {ck['dev_median_ms']:.1f} ms, drift {ck['drift_ms']:+.1f} ms "
              f"over {ck['cycles']} cycles")
    pr = results.get("probes", {})
    if "single" in pr:
        one = pr["single"]
        for verb in ("health", "live"):
            check(f"`srvctl {verb}` < 40 ms and < ½ `srvctl status`", one[verb] < 40 and one[verb] < one["status"] / 2,
                  f"{one[verb]:.1f} ms against {one['status']:.1f} ms")
        check("20 probes at once all answered within 1 s", pr["burst_max_ms"] <= 1000 and pr["burst_ok"] == 20,
              f"max {pr['burst_max_ms']:.0f} ms, {pr['burst_ok']}/20 ok")
    return out


def scale_verdicts(results: dict) -> list[str]:
    sc = results.get("scale", {})
    fsm = sc.get("fsm")
    if not fsm:
        return []
    out = []
    sizes = sorted(fsm, key=int)
    top = sizes[-1]

    def check(name, ok, detail):
        out.append(f"target {name}: {'met' if ok else 'MISSED'} ({detail})")

    sup = sc.get("supervisord", {})
    for field, what in (("start_ms", "start"), ("rss_pid1", "PID 1 RSS"), ("pss_supervision", "supervision PSS"),
                        ("restart_ms", "restart"), ("stop_ms", "stop")):
        pairs = [(n, fsm[n][field], sup[n][field]) for n in sizes if n in sup and field in fsm[n] and field in sup[n]]
        if pairs:
            check(f"scale: {what} better than supervisord", all(f < s for _, f, s in pairs),
                  ", ".join(f"N={n}: {f:.1f} vs {s:.1f}" for n, f, s in pairs))
    wake = [(n, fsm[n]["wake_tree"], sup[n]["wake_tree"]) for n in sizes
            if n in sup and "wake_tree" in fsm[n] and "wake_tree" in sup[n]]
    if wake:
        check("scale: idle wake-ups fewer than supervisord's", all(f < s or f == 0 for _, f, s in wake),
              ", ".join(f"N={n}: {f} vs {s}" for n, f, s in wake))
    run = sc.get("runit", {})
    for field, what in (("start_ms", "start"), ("stop_ms", "stop")):
        pairs = [(n, fsm[n][field], run[n][field]) for n in sizes if n in run and field in fsm[n] and field in run[n]]
        if pairs:
            check(f"scale: {what} within 2× runit's", all(f <= 2 * r for _, f, r in pairs),
                  ", ".join(f"N={n}: {f:.0f} vs {r:.0f} ms ({f / r:.1f}×)" for n, f, r in pairs))
    if "wake_tree" in fsm[top]:
        check(f"scale: zero idle wake-ups at {top} daemons", fsm[top]["wake_tree"] == 0,
              f"PID 1 {fsm[top]['wake_pid1']}, tree {fsm[top]['wake_tree']}")
    if "rss_pid1" in fsm[top] and "rss_pid1" in fsm[sizes[0]] and int(top) > int(sizes[0]):
        per = (fsm[top]["rss_pid1"] - fsm[sizes[0]]["rss_pid1"]) / (int(top) - int(sizes[0]))
        check("scale: PID 1 RSS grows < 50 KiB a daemon", per < 50, f"{per:.1f} KiB a daemon")
    return out


def code_version() -> str:
    def git(*args):
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "fsm_init")
    return f"fsm-init at {head}" + (" with uncommitted changes in fsm_init/" if dirty else "")


def machine_load() -> str:
    """Load from elsewhere on the machine: absolute times are only comparable side by side."""
    load = (read("/proc/loadavg", "r") or "?").split()[0]
    pressure = read("/proc/pressure/cpu", "r") or ""
    some = next((w.split("=")[1] for w in pressure.split() if w.startswith("avg10=")), "?")
    return f"load average {load}, CPU pressure (some, avg10) {some}%"


def _version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return f"{argv[0]} (version unknown)"


STEPS = {"startup": "startup", "idle": "idle", "zombies": "zombies", "term": "term", "exit": "exit_codes",
         "scale": "scale", "checks": "checks", "probes": "probes", "docker": "docker", "profile": "profile"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--startup-runs", type=int, default=30)
    parser.add_argument("--idle-window", type=float, default=5.0)
    parser.add_argument("--zombies", type=int, default=10000)
    parser.add_argument("--zombie-runs", type=int, default=5)
    parser.add_argument("--term-runs", type=int, default=10)
    parser.add_argument("--docker-runs", type=int, default=10)
    parser.add_argument("--scale-sizes", default="1,10,100", help="numbers of /etc/service daemons")
    parser.add_argument("--scale-runs", type=int, default=3, help="fresh instances per supervisor and size")
    parser.add_argument("--checks-duration", type=float, default=30.0,
                        help="seconds of status-check mode at workwatch 1 (the issue's figure: 600)")
    parser.add_argument("--probe-runs", type=int, default=20)
    parser.add_argument("--burst-runs", type=int, default=5)
    parser.add_argument("--only", default=",".join(STEPS),
                        help="comma-separated subset of " + ",".join(STEPS))
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs of every init run)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.py: run as root (unshare --pid needs CAP_SYS_ADMIN)")
    for tool in ("unshare", "gcc", TINI, DUMB_INIT, str(FSM_INIT), SYS_PYTHON):
        if not shutil.which(tool):
            sys.exit(f"bench.py: {tool} not found")
    for path in ("/etc/container_environment", "/etc/my_init.d", "/etc/rc.local"):
        if os.path.exists(path):  # my_init would write or run it: it shares this machine's /etc
            sys.exit(f"bench.py: {path} exists: my_init (a column) would use it on this machine's /etc")
    started = time.monotonic()
    b = Bench(args)
    results: dict = {"load_before": machine_load(), "n_zombies": args.zombies}
    steps = {name: globals()["bench_" + fn] for name, fn in STEPS.items()}
    try:
        for name in args.only.split(","):
            t = time.monotonic()
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            steps[name](b, results)
            print(f"[bench] {name} done in {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
    finally:
        b.cleanup()
    results["load_after"] = machine_load()
    if args.keep:
        print(f"[bench] logs kept in {b.logs}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print(report(b, results, time.monotonic() - started))
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
