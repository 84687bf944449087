#!/usr/bin/env python3
"""A chaos soak: fsm-init as PID 1 of a fresh PID namespace under random faults.

    sudo .venv/bin/python tests/soak.py --duration 600 [--seed N] [--json FILE]

fsm-init runs in status-check mode with a 1 s period.  Inside: a service that crashes
at random and leaves children behind (some in a session of their own); a check that
fails, hangs past worktimeout or leaves children behind; RT and MT scripts that run
long; three /etc/service daemons that die at random (one ignoring SIGTERM, one with a
finish script); syslog bursts; bursts of orphaned zombies.  From outside, at random:
``srvctl restart``, ``srvctl restart NAME``, ``status``, ``why``, ``health``, ``live``
(whole srvctl processes), a stream of requests over the control socket timed
in-process, and floods of HUP, USR1, WINCH and CONT to PID 1.

Sampled every second and checked at the end (exit status 1 when a check fails):
no zombie of PID 1 older than 2 s; the process count bounded (the last part of the
run no higher than the first); PID 1's RSS after the warm-up grows by at most 1 MiB
and its fd count stays flat; every request answered (count, p50, p99, max; p99 under
--p99-limit); every start the service recorded is in the journal (by pid) and counted
in service.run.count, and every restart in the journal has a cause; SIGTERM at the
end stops fsm-init within the grace bounds with exit status 143.

The seed (printed) fixes the outside actions and, through $SOAK_SEED, the scripts'
draws (each also depends on its pid, so two runs differ in detail).  Needs root and
``unshare`` (the test harness of tests/conftest.py).
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fsm_init.core import control  # noqa: E402
from tests.conftest import SRVCTL, Sandbox, wait_for  # noqa: E402
from tests.procfs import namespace_processes  # noqa: E402

GRACE, LEFTOVER_GRACE = 2, 1
# The stop path's worst case: the service (grace + 1 s for the kill to settle), the
# stubborn daemon (the same), a finish script (grace), the leftover sweep (its grace + 1 s).
STOP_BOUND = (GRACE + 1) * 2 + GRACE + (LEFTOVER_GRACE + 1) + 3
FLOOD_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGWINCH, signal.SIGCONT)
DAEMONS = ("flaky", "stubborn", "finisher")

# rnd N: a number in [0, N), from $SOAK_SEED, the caller's pid and a counter.
RND = r"""#!/bin/sh
n=$(( $(cat "$SOAK_DIR/.rnd" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$SOAK_DIR/.rnd.$$" && mv "$SOAK_DIR/.rnd.$$" "$SOAK_DIR/.rnd" 2>/dev/null
awk -v s="$SOAK_SEED" -v p="$PPID" -v n="$n" -v m="$1" 'BEGIN { srand((s % 65536) * 7919 + (p % 65536) * 131 + n % 100000); print int(rand() * m) }'
"""

SERVICE = r"""#!/bin/sh
# Records its start, leaves children behind, crashes at random (unless calm); the
# flooded signals are handled (a shell's default for HUP and USR1 is to die).
trap ':' HUP USR1 USR2
echo "$$ $(date +%s.%N)" >> "$SOAK_DIR/starts"
echo $$ > "$SOAK_DIR/service.pid"
r=$(./rnd 100)
[ "$r" -lt 30 ] && sleep 7 &
[ "$r" -lt 15 ] && setsid sleep 4 &
life=$(( $(./rnd 12) + 3 ))
i=0
while :; do
    sleep 0.5
    [ -e "$SOAK_DIR/calm" ] && continue
    i=$((i + 1))
    [ "$i" -ge $((life * 2)) ] && exit $(( $(./rnd 3) + 1 ))
done
"""

CHECK = r"""#!/bin/sh
# Fails when the service died; otherwise fails, hangs or leaves children at random.
kill -0 "$(cat "$SOAK_DIR/service.pid")" 2>/dev/null || { echo "service gone"; exit 1; }
[ -e "$SOAK_DIR/calm" ] && exit 0
r=$(./rnd 1000)
if [ "$r" -lt 20 ]; then echo "random failure"; exit 1; fi
if [ "$r" -lt 35 ]; then sleep 5; fi                # past worktimeout (2 s)
if [ "$r" -lt 120 ]; then sleep 3 & fi              # a child left behind
if [ "$r" -lt 170 ]; then setsid sleep 3 & fi       # in a session of its own
exit 0
"""

LONG = r"""#!/bin/sh
# An RT or MT script that runs long (never overlapping itself: fsm-init's rule).
sleep "$(./rnd 4)"
"""

ZOMBIES = r"""#!/bin/sh
# Bursts of orphans: each child's parent exits at once, so PID 1 reaps the children.
r=$(./rnd 100)
if [ "$r" -lt 40 ]; then
    i=0
    while [ $i -lt $(( $(./rnd 40) + 10 )) ]; do (sleep 0.$(./rnd 9) &) ; i=$((i + 1)); done
fi
"""

DAEMON_RUN = r"""#!/bin/sh
# /etc/service/NAME/run: dies at random, bursts to syslog; "stubborn" ignores SIGTERM.
[ "$1" = stubborn ] && trap '' TERM
cd "$SOAK_DIR/srv/soak"
life=$(( $(./rnd 20) + 2 ))
i=0
while [ $i -lt "$life" ]; do
    sleep 1
    i=$((i + 1))
    if [ "$(./rnd 10)" -lt 2 ]; then
        j=0
        while [ $j -lt $(( $(./rnd 80) + 20 )) ]; do
            logger -u "$SOAK_DIR/log.sock" -t "soak-$1" "burst line $j" 2>>"$SOAK_DIR/logger.err"
            j=$((j + 1))
        done
    fi
done
exit $(( $(./rnd 3) + 1 ))
"""

FINISH = "#!/bin/sh\necho \"$1 $2\" >> \"$SOAK_DIR/finished\"\n"


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))]


def ms(value):
    return None if value is None else round(value * 1000, 1)


class Soak:
    def __init__(self, duration: float, seed: int, p99_limit: float, warmup: float) -> None:
        self.duration, self.seed, self.p99_limit = duration, seed, p99_limit
        self.warmup = warmup
        self.random = random.Random(seed)
        self.root = Path(tempfile.mkdtemp(prefix="fsm-init-soak-"))
        self.sandbox = Sandbox(self.root)
        self.samples: list[dict] = []
        self.zombies: dict[tuple, float] = {}  # (pid, starttime) -> first seen
        self.old_zombies: list[dict] = []
        self.requests: list[float] = []  # in-process round trips, seconds
        self.unanswered: list[str] = []
        self.whole: list[float] = []  # whole srvctl processes, seconds
        self.whole_failed: list[str] = []
        self.actions: dict[str, int] = {}
        self.signals_sent = 0
        self.problems: list[str] = []

    # -- set-up ------------------------------------------------------------------------

    def build(self) -> None:
        soak = self.sandbox.service("soak", {
            "initdelay": 0, "workstart": "./run.sh", "workwatch": 1, "workintvl": 1, "worktimeout": 2,
            "workbackoff": 4, "workstable": 10})
        for name, body in (("rnd", RND), ("run.sh", SERVICE), ("PeriodicST-alive", CHECK),
                           ("PeriodicRT-long", LONG), ("PeriodicMT-long", LONG), ("PeriodicMT-zombies", ZOMBIES)):
            (soak / name).write_text(body)
            (soak / name).chmod(0o755)
        services = self.root / "service"
        for name in DAEMONS:
            directory = services / name
            directory.mkdir(parents=True)
            (directory / "run").write_text(DAEMON_RUN.replace('"$1"', name).replace("$1", name))
            (directory / "run").chmod(0o755)
        (services / "finisher" / "finish").write_text(FINISH)
        (services / "finisher" / "finish").chmod(0o755)

    def start(self):
        env = dict(SRVNAME="soak", SOAK_SEED=self.seed, SOAK_DIR=self.root,
                   FSM_INIT_SERVICE_DIRECTORY=self.root / "service", FSM_INIT_SYSLOG_SOCKET=self.root / "log.sock",
                   FSM_INIT_STOP_GRACE=GRACE, FSM_INIT_LEFTOVER_GRACE=LEFTOVER_GRACE)
        self.run = self.sandbox.start(**env)
        self.socket = str(self.sandbox.run_dir / "control.sock")
        wait_for(lambda: os.path.exists(self.socket), what="the control socket")

    # -- outside actions ----------------------------------------------------------------

    def request(self, verb: str) -> None:
        began = time.monotonic()
        try:
            reply = control.request(self.socket, verb, timeout=10)
            if "ok" not in reply:
                raise ValueError(reply)
        except (OSError, ValueError) as e:
            self.unanswered.append(f"{verb}: {e!r}")
            return
        self.requests.append(time.monotonic() - began)

    def srvctl(self, *args: str) -> None:
        began = time.monotonic()
        try:
            result = subprocess.run([*SRVCTL, *args], env=self.sandbox.env(), capture_output=True, text=True,
                                    timeout=20)
        except subprocess.TimeoutExpired:
            self.whole_failed.append(f"{' '.join(args)}: timed out")
            return
        self.whole.append(time.monotonic() - began)
        # 0 done, 1 refused or not healthy; 2 and 3 mean no answer.
        if result.returncode not in (0, 1):
            self.whole_failed.append(f"{' '.join(args)}: exit {result.returncode}: {result.stderr.strip()}")

    def flood(self) -> None:
        sig = self.random.choice(FLOOD_SIGNALS)
        count = self.random.randint(20, 300)
        for _ in range(count):
            try:
                os.kill(self.run.pid1, sig)
            except ProcessLookupError:
                return
        self.signals_sent += count

    def act(self) -> None:
        roll = self.random.random()
        if roll < 0.04:
            name, call = "srvctl restart", lambda: self.srvctl("restart")
        elif roll < 0.12:
            daemon = self.random.choice(DAEMONS)
            name, call = "srvctl restart NAME", lambda: self.srvctl("restart", daemon)
        elif roll < 0.45:
            verb = self.random.choice(("status", "why", "health", "live"))
            name, call = f"srvctl {verb}", lambda: self.srvctl(verb)
        else:
            name, call = "signal flood", self.flood
        self.actions[name] = self.actions.get(name, 0) + 1
        call()

    # -- sampling -------------------------------------------------------------------------

    def sample(self, elapsed: float) -> None:
        pid1 = self.run.pid1
        live = zombies = 0
        now = time.monotonic()
        seen = set()
        for pid, fields in namespace_processes(pid1).items():
            if fields[0] == b"Z":
                zombies += 1
                if int(fields[1]) == pid1:  # PID 1's to reap
                    key = (pid, fields[19])
                    seen.add(key)
                    first = self.zombies.setdefault(key, now)
                    if now - first > 2.0:
                        self.old_zombies.append({"pid": pid, "age": round(now - first, 1), "at": round(elapsed)})
            else:
                live += 1
        self.zombies = {k: v for k, v in self.zombies.items() if k in seen}
        try:
            status = Path(f"/proc/{pid1}/status").read_text()
            rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            fds = len(os.listdir(f"/proc/{pid1}/fd"))
        except (OSError, StopIteration):
            return
        self.samples.append({"t": round(elapsed, 1), "procs": live, "zombies": zombies, "rss_kib": rss, "fds": fds})

    # -- the run ----------------------------------------------------------------------------

    def loop(self) -> None:
        began = time.monotonic()
        next_sample = next_act = next_request = began
        while (now := time.monotonic()) - began < self.duration:
            if now >= next_sample:
                self.sample(now - began)
                next_sample += 1.0
            if now >= next_request:
                self.request(self.random.choice(("status", "why", "health", "live")))
                next_request = time.monotonic() + self.random.uniform(0.05, 0.3)
            if now >= next_act:
                self.act()
                next_act = time.monotonic() + self.random.uniform(0.2, 1.5)
            time.sleep(max(0.0, min(next_sample, next_act, next_request) - time.monotonic()))

    def stop(self) -> dict:
        # Calm first (no crash, no failing check), so the exit status is the service's
        # answer to the SIGTERM and not a crash's that happened a moment before.
        (self.root / "calm").touch()

        def running():
            try:
                status = control.request(self.socket, "status", timeout=10)["status"]
            except (OSError, ValueError, KeyError):
                return False
            return status["state"] == "watch" and status["service_pid"] and status["healthy"]
        wait_for(running, 60, "a healthy service before the stop")
        began = time.monotonic()
        os.kill(self.run.pid1, signal.SIGTERM)
        try:
            status = self.run.proc.wait(STOP_BOUND + 10)
        except subprocess.TimeoutExpired:
            self.run.kill()
            status = None
        return {"exit": status, "seconds": round(time.monotonic() - began, 2), "bound": STOP_BOUND}

    def journal(self) -> dict:
        from fsm_init.core import journal

        entries = journal.read(str(self.sandbox.run_dir), 0)
        spawned = [e for e in entries if e.get("trigger") == "spawned"]
        journal_pids = set()
        for e in spawned:
            cause = e.get("cause", "")
            if "pid " in cause:
                journal_pids.add(int(cause.split("pid ", 1)[1].split(",")[0].split(")")[0]))
        recorded = [(int(line.split()[0]), float(line.split()[1]))
                    for line in (self.root / "starts").read_text().splitlines() if len(line.split()) == 2]
        count_text = (self.sandbox.srv / "soak" / "service.run.count").read_text()
        counted = int(count_text.split()[1])
        restarts = [e for e in entries if e.get("to") == "restart"]
        # Rotated twice (a long run), the journal's beginning is gone: match what remains.
        complete = bool(entries) and entries[0].get("trigger") == "begin"
        first = min((e["time"] for e in entries), default=0)
        return {
            "entries": len(entries), "starts_in_journal": len(spawned), "starts_recorded": len(recorded),
            "service.run.count": counted, "restarts": len(restarts),
            "restarts_without_cause": [e for e in restarts if not e.get("cause")],
            "recorded_not_in_journal": [p for p, t in recorded if p not in journal_pids and (complete or t > first)],
            "starts_recorded_in_journal_span": len([t for _, t in recorded if complete or t > first]),
            "journal_complete": complete,
        }

    def check(self, stop: dict, journal: dict) -> dict:
        samples = self.samples
        after = [s for s in samples if s["t"] >= self.warmup] or samples
        window = max(10.0, min(60.0, self.duration / 4))
        first = [s for s in samples if s["t"] < window]
        last = [s for s in samples if s["t"] >= samples[-1]["t"] - window]
        procs_first, procs_last = max(s["procs"] for s in first), max(s["procs"] for s in last)
        rss_growth = max(s["rss_kib"] for s in after) - after[0]["rss_kib"]
        fds_base, fds_last = min(s["fds"] for s in after[: max(1, len(after) // 3)]), min(s["fds"] for s in last)
        p99 = percentile(self.requests, 99)
        figures = {
            "seed": self.seed, "duration_s": self.duration, "samples": len(samples),
            "zombies_older_than_2s": self.old_zombies[:10], "zombies_max_seen": max(s["zombies"] for s in samples),
            "processes": {"max_first": procs_first, "max_last": procs_last, "max": max(s["procs"] for s in samples)},
            "rss_kib": {"after_warmup": after[0]["rss_kib"], "max_after_warmup": max(s["rss_kib"] for s in after),
                        "growth": rss_growth, "end": samples[-1]["rss_kib"]},
            "fds": {"base": fds_base, "last_min": fds_last, "max": max(s["fds"] for s in samples)},
            "requests": {"count": len(self.requests), "unanswered": len(self.unanswered),
                         "p50_ms": ms(percentile(self.requests, 50)), "p99_ms": ms(p99),
                         "max_ms": ms(max(self.requests, default=None))},
            "srvctl_processes": {"count": len(self.whole), "failed": len(self.whole_failed),
                                 "p50_ms": ms(percentile(self.whole, 50)), "p99_ms": ms(percentile(self.whole, 99)),
                                 "max_ms": ms(max(self.whole, default=None))},
            "actions": self.actions, "signals_sent": self.signals_sent,
            "journal": {k: v for k, v in journal.items() if k not in ("restarts_without_cause",)},
            "stop": stop,
        }
        fail = self.problems
        if self.old_zombies:
            fail.append(f"{len(self.old_zombies)} sample(s) saw a zombie of PID 1 older than 2 s")
        # A leak grows without bound; the chaos itself makes the count vary.
        if procs_last > procs_first + 25:
            fail.append(f"process count grew: max {procs_first} in the first {window:g}s, {procs_last} in the last")
        if rss_growth > 1024:
            fail.append(f"PID 1's RSS grew by {rss_growth} KiB after the warm-up")
        if fds_last > fds_base + 2:
            fail.append(f"PID 1's fd count grew: {fds_base} -> {fds_last}")
        if self.unanswered or self.whole_failed:
            fail.append(f"unanswered requests: {(self.unanswered + self.whole_failed)[:5]}")
        if p99 is None or p99 > self.p99_limit:
            fail.append(f"request p99 {ms(p99)} ms over {self.p99_limit * 1000:g} ms")
        if journal["recorded_not_in_journal"]:
            fail.append(f"starts recorded by the service but not in the journal: {journal['recorded_not_in_journal']}")
        # A journal rotated past its beginning (a long run) holds the last starts only.
        in_journal, counted = journal["starts_in_journal"], journal["service.run.count"]
        if not (journal["starts_recorded"] <= in_journal == counted if journal["journal_complete"] else
                journal["starts_recorded_in_journal_span"] <= in_journal <= counted):
            fail.append(f"starts: {journal['starts_recorded']} recorded, {journal['starts_in_journal']} in the journal, "
                        f"{journal['service.run.count']} in service.run.count")
        if journal["restarts_without_cause"]:
            fail.append(f"restarts without a cause: {journal['restarts_without_cause'][:3]}")
        if stop["exit"] != 143 or stop["seconds"] > STOP_BOUND:
            fail.append(f"stop: exit {stop['exit']} after {stop['seconds']}s (bound {STOP_BOUND}s)")
        figures["problems"] = fail
        return figures

    def main(self) -> dict:
        self.build()
        self.start()
        try:
            self.loop()
            stop = self.stop()
        finally:
            self.run.kill()
        return self.check(stop, self.journal())


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of chaos (default 600)")
    parser.add_argument("--seed", type=int, default=None, help="the random seed (default: a new one, printed)")
    parser.add_argument("--p99-limit", type=float, default=0.1, help="seconds (default 0.1)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before the RSS baseline "
                                                                   "(default: 60, or a third of a shorter run)")
    parser.add_argument("--json", help="write the figures to this file too")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, journal)")
    return parser.parse_args(argv)


def run(argv=None) -> int:
    args = parse(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    warmup = args.warmup if args.warmup is not None else min(60.0, args.duration / 3)
    print(f"soak: seed {seed}, {args.duration:g}s (reproduce: tests/soak.py --duration {args.duration:g} "
          f"--seed {seed})", flush=True)
    soak = Soak(args.duration, seed, args.p99_limit, warmup)
    try:
        figures = soak.main()
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(soak.root, ignore_errors=True)
        else:
            print(f"soak: kept {soak.root}", flush=True)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    for problem in figures["problems"]:
        print(f"soak: FAILED: {problem}", file=sys.stderr)
    return 1 if figures["problems"] else 0


if __name__ == "__main__":
    sys.exit(run())
