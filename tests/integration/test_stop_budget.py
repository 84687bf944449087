"""The stop budget (issue 16) with fsm-init as real PID 1 of a fresh PID namespace:
FSM_INIT_STOP_BUDGET bounds the whole stop path (pre-shutdown scripts, the service, the
/etc/service daemons, post-shutdown scripts, leftovers), the time line says where the
time went, and without a budget the per-part graces are summed and warned about once.

Files under /etc go into the sandbox's private overlay over /etc (``Sandbox.etc``).
"""

import json
import re
import signal
import time

import pytest

from tests.conftest import lines, needs_pid_namespace, wait_for, wait_lines

pytestmark = [pytest.mark.integration, needs_pid_namespace]

# A process that ignores SIGTERM: only the SIGKILL after the grace ends it.
STUBBORN = "trap '' TERM\necho $$ >> {pids}\nwhile :; do sleep 0.05; done\n"
WARNING = "a stop may take up to"


def stubborn_daemon(sandbox, name: str) -> None:
    sandbox.etc(f"service/{name}/run", STUBBORN.format(pids=sandbox.root / f"{name}.pids"))


def journal(sandbox) -> list[dict]:
    return [json.loads(line) for line in lines(sandbox.run_dir / "journal.jsonl")]


def test_a_4s_budget_ends_a_stop_that_would_need_20s_and_says_where_the_time_went(sandbox):
    out = sandbox.root
    # A pre-shutdown script that takes a while, a service and two daemons that ignore
    # TERM: at the default graces (5 s each) the stop would take 0.5 + 5 + 5 + 5 s and more.
    sandbox.etc("my_init.pre_shutdown.d/10-pre", f"sleep 0.5; echo pre >> {out}/order\n")
    sandbox.etc("my_init.post_shutdown.d/10-post", f"echo post >> {out}/order\n")
    stubborn_daemon(sandbox, "alpha")
    stubborn_daemon(sandbox, "beta")
    run = sandbox.start("--", "sh", "-c", STUBBORN.format(pids=out / "service.pids"), FSM_INIT_STOP_BUDGET="4")
    for name in ("alpha", "beta", "service"):
        wait_lines(out / f"{name}.pids", 1)
    run.wait_log(r"starting the service")
    began = time.monotonic()
    run.signal(signal.SIGTERM)
    status = run.wait(timeout=10)
    took = time.monotonic() - began
    assert took < 4 + 1, f"the stop took {took:.1f}s\n{run.log}"
    assert status == 128 + signal.SIGKILL, run.log  # the service's own status: it was KILLed
    assert lines(out / "order") == ["pre", "post"]  # both scripts ran within the budget
    assert WARNING not in run.log and "stop budget 4s (FSM_INIT_STOP_BUDGET)" in run.log
    line = re.search(r"stop took (\d+\.\d)s of the 4s budget: (.*)", run.log)
    assert line, run.log
    assert float(line.group(1)) <= 4.0, line.group(0)
    parts = line.group(2)
    # Each part named, in order; the service and both daemons KILLed within the budget,
    # the daemons in reverse name order.
    assert re.fullmatch(r"pre-shutdown \d\.\ds, service \d\.\ds \(KILL after \d\.\ds of 5s grace\), "
                        r"daemons \d\.\ds \(beta \d\.\ds: KILL after \d\.\ds of 5s grace; alpha \d\.\ds: KILL after "
                        r"\d\.\ds of 5s grace\), post-shutdown \d\.\ds, leftovers \d\.\ds", parts), parts
    # The journal's last entry, the transition to exited, carries the time line.
    last = journal(sandbox)[-1]
    assert last["to"] == "exited" and last["stop"]["line"] == line.group(0).strip()
    assert [p["part"] for p in last["stop"]["parts"]] == ["pre-shutdown", "service", "daemons", "post-shutdown",
                                                          "leftovers"]
    assert [i["name"] for i in last["stop"]["parts"][2]["items"]] == ["beta", "alpha"]
    assert last["stop"]["budget"] == 4 and last["stop"]["took"] <= 4.0
    history = run.srvctl("history", "-n", "1")  # from the file: fsm-init is gone
    assert history.returncode == 0 and history.stdout.splitlines() == [
        f"{history.stdout[:8]} teardown -> exited (done): no leftover process remains; {last['stop']['line']}"], \
        history.stdout


def test_the_thin_reaper_keeps_the_budget_too(sandbox):
    pids = sandbox.root / "service.pids"
    run = sandbox.start("--", "sh", "-c", STUBBORN.format(pids=pids), FSM_INIT_STOP_BUDGET="2",
                        FSM_INIT_HANDOVER_AFTER="0.1")
    wait_lines(pids, 1)
    run.wait_log(r"handing PID duties to the thin reaper")
    run.wait_state("handover")
    began = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait(timeout=10) == 128 + signal.SIGKILL
    took = time.monotonic() - began
    assert took < 2 + 1, f"the stop took {took:.1f}s\n{run.log}"
    assert re.search(r"stop took \d\.\ds of the 2s budget: service \d\.\ds \(KILL after \d\.\ds of 5s grace\), "
                     r"leftovers \d\.\ds", run.log), run.log
    last = journal(sandbox)[-1]
    assert last["to"] == "exited" and [p["part"] for p in last["stop"]["parts"]] == ["service", "leftovers"]


def test_the_default_graces_past_10s_are_said_once_at_start_up(sandbox):
    # One daemon: service 5 s + daemon 5 s + leftovers 2 s = 12 s, past docker stop's 10 s.
    sandbox.etc("service/cron/run", "exec sleep 1000\n")
    run = sandbox.start("--", "true")
    assert run.wait() == 0, run.log
    assert run.log.count(WARNING) == 1, run.log
    warning = next(line for line in run.log.splitlines() if WARNING in line)
    assert ("up to 12s at the per-part graces (service 5s, daemons 1 x 5s, leftovers 2s), more than the 10s "
            "docker stop waits by default before SIGKILL: set FSM_INIT_STOP_BUDGET") in warning, warning
    # Without a budget the stop still says where its time went.
    assert re.search(r"stop took \d+\.\ds: pre-shutdown \d\.\ds, service \d\.\ds, daemons \d\.\ds \(cron \d\.\ds\)",
                     run.log), run.log


@pytest.mark.parametrize("env", [{"FSM_INIT_STOP_BUDGET": "9"}, {"FSM_INIT_STOP_GRACE": "3"}],
                         ids=["budget-set", "graces-within-10s"])
def test_no_warning_with_a_budget_or_graces_within_10s(sandbox, env):
    sandbox.etc("service/cron/run", "exec sleep 1000\n")  # 12 s at the default graces; 8 s with a grace of 3
    run = sandbox.start("--", "true", **env)
    assert run.wait() == 0, run.log
    assert WARNING not in run.log


@pytest.mark.parametrize("value", ["9s", "0", "-1", "nan"])
def test_a_bad_budget_is_refused_with_one_error_and_the_graces_apply(sandbox, value):
    sandbox.etc("service/cron/run", "exec sleep 1000\n")
    run = sandbox.start("--", "true", FSM_INIT_STOP_BUDGET=value)
    assert run.wait() == 0, run.log
    error = f"environment FSM_INIT_STOP_BUDGET={value!r} is not a number of seconds > 0: refused"
    assert run.log.count(error) == 1, run.log
    assert run.log.count(WARNING) == 1  # no budget: the per-part graces, said once
    assert re.search(r"stop took \d+\.\ds: ", run.log), run.log
    wait_for(lambda: journal(sandbox), what="the journal")
