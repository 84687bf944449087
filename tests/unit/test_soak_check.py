"""tests/soak.py's end-of-run accounting on made-up runs (no fsm-init started): a long
run whose journal rotated past its beginning is judged on what the journal still holds."""

import json
import shutil

import pytest

from tests import soak as soak_module


def entry(time, trigger, to, cause):
    return {"time": time, "trigger": trigger, "to": to, "cause": cause}


@pytest.fixture
def soak():
    run = soak_module.Soak(duration=60, seed=1, p99_limit=0.1, warmup=0)
    run.requests = [0.001] * 10
    run.samples = [{"t": float(t), "procs": 10, "zombies": 0, "rss_kib": 1000, "fds": 10} for t in range(60)]
    (run.sandbox.srv / "soak").mkdir(parents=True)
    run.sandbox.run_dir.mkdir(parents=True)
    yield run
    shutil.rmtree(run.root, ignore_errors=True)


def write_run(soak, journal_entries, recorded, counted):
    lines = "".join(json.dumps(e) + "\n" for e in journal_entries)
    (soak.sandbox.run_dir / "journal.jsonl").write_text(lines)
    (soak.root / "starts").write_text("".join(f"{pid} {t}\n" for pid, t in recorded))
    (soak.sandbox.srv / "soak" / "service.run.count").write_text(f"soak {counted}\n")


def spawned(time, pid, run):
    return entry(time, "spawned", "watch", f"service started (pid {pid}, run {run})")


STOP = {"exit": 143, "seconds": 1.0, "bound": 13}


def test_a_complete_journal_accounts_for_every_start(soak):
    write_run(soak, [entry(1, "begin", "resolve_target", "start"), spawned(2, 10, 1),
                     entry(5, "failed", "restart", "check failed"), spawned(6, 20, 2)],
              recorded=[(10, 2.0), (20, 6.0)], counted=2)
    assert soak.check(STOP, soak.journal())["problems"] == []


def test_a_start_missing_from_a_complete_journal_is_a_problem(soak):
    write_run(soak, [entry(1, "begin", "resolve_target", "start"), spawned(2, 10, 1)],
              recorded=[(10, 2.0), (20, 6.0)], counted=2)
    problems = soak.check(STOP, soak.journal())["problems"]
    assert any("not in the journal: [20]" in p for p in problems) and any("starts:" in p for p in problems)


def test_a_journal_rotated_past_its_beginning_is_judged_on_what_it_holds(soak):
    # Runs 1-40 rotated away; the journal holds runs 41 and 42, service.run.count says 42.
    write_run(soak, [entry(500, "failed", "restart", "check failed"), spawned(501, 410, 41),
                     entry(505, "failed", "restart", "check failed"), spawned(506, 420, 42)],
              recorded=[(100, 10.0), (410, 501.0), (420, 506.0)], counted=42)
    assert soak.check(STOP, soak.journal())["problems"] == []
