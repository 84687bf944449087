"""The stop budget's arithmetic (fsm_init/core/budget.py) on the fake clock, then the engine's
whole stop path within it on a FakeSystem (deadlines fired as the fake clock moves)."""

import json
import re
import signal

import pytest

from fsm_init.core import budget, log
from fsm_init.core.budget import KILL_WAIT, StopBudget
from fsm_init.compat.daemons import Daemons
from fsm_init.core.loop import EventLoop

from . import fakes
from .fakes import FakeSystem, Harness, make_settings

PRE_D, POST_D, SERVICE = "/etc/my_init.pre_shutdown.d", "/etc/my_init.post_shutdown.d", "/etc/service"


@pytest.fixture
def lines(monkeypatch) -> list[str]:
    """Every log line, "warning: "/"error: " prefixed as on stderr."""
    recorded: list[str] = []
    monkeypatch.setattr(log, "info", lambda message: recorded.append(message))
    monkeypatch.setattr(log, "warn", lambda message: recorded.append("warning: " + message))
    monkeypatch.setattr(log, "error", lambda message: recorded.append("error: " + message))
    return recorded


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


def budget_of(seconds, stop_grace=5.0, leftover_grace=2.0) -> tuple[StopBudget, Clock]:
    clock = Clock()
    return StopBudget(seconds, stop_grace, leftover_grace, clock.now), clock


# -- the variable ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, seconds", [("9", 9.0), ("28", 28.0), (" 0.5 ", 0.5), ("", None), (None, None)])
def test_a_budget_is_a_number_of_seconds_above_0(raw, seconds):
    assert budget.parse(raw) == (seconds, "")


@pytest.mark.parametrize("raw", ["9s", "0", "-3", "nan", "inf", "ten"])
def test_a_bad_budget_is_refused_naming_the_variable_and_the_value(raw):
    seconds, error = budget.parse(raw)
    assert seconds is None
    assert error == (f"environment FSM_INIT_STOP_BUDGET={raw!r} is not a number of seconds > 0: refused; "
                     "the stop path keeps its per-part graces")


# -- the arithmetic -------------------------------------------------------------------------------


def test_without_a_budget_every_part_keeps_its_own_grace():
    b, clock = budget_of(None)
    assert b.grace(5.0) == 5.0 and b.settle(1.0) == 1.0  # before the stop: a restart's stop
    b.entering("pre_shutdown")
    clock.t += 50
    b.entering("stopping")
    assert b.grace(5.0) == 5.0 and b.settle(1.0) == 1.0 and not b.active


def test_outside_the_stop_path_a_budget_changes_nothing():
    b, _ = budget_of(4.0)
    b.entering("restart")
    assert b.grace(5.0) == 5.0 and b.settle(1.0) == 1.0 and b.began is None


def test_the_service_and_the_leftovers_shares_are_kept_from_the_start():
    b, clock = budget_of(4.0)
    assert b.reserves == {"service": 1.0, "leftovers": 0.6}  # a quarter and 15 % of 4 s
    b.entering("pre_shutdown")
    # A shutdown script may take what the two shares leave: 4 - 1 - 0.6.
    assert b.grace(5.0, kill_wait=False) == pytest.approx(2.4)
    clock.t += 2.4  # it hung and was killed at its time-out
    b.entering("stopping")
    # The service still has its share, less the wait after its KILL.
    assert b.grace(5.0) == pytest.approx(1.0 - KILL_WAIT)
    clock.t += 1.0
    b.entering("stop_daemons")
    assert b.grace(5.0) == 0.0  # nothing left before the leftovers' share: TERM, then KILL at once
    b.entering("post_shutdown")
    assert b.grace(5.0, kill_wait=False) == 0.0
    b.entering("teardown")
    assert b.grace(2.0) == pytest.approx(0.6 - KILL_WAIT)
    assert b.settle(1.0) == pytest.approx(0.6)


def test_what_a_quick_part_leaves_goes_to_the_next_and_no_part_gets_more_than_its_own():
    b, clock = budget_of(9.0)  # shares: service 2.25 s, leftovers 1.35 s
    b.entering("pre_shutdown")
    clock.t += 0.1
    b.entering("stopping")
    assert b.grace(5.0) == 5.0  # 9 - 1.35 - 0.1 - 0.25 = 7.3 left: its own 5 s
    clock.t += 5.0 + 0.05
    b.entering("stop_daemons")
    assert b.grace(5.0) == pytest.approx(9 - 1.35 - 5.15 - KILL_WAIT)  # 2.25: cut
    clock.t += 2.5
    assert b.grace(5.0) == 0.0  # the next daemon: nothing left before the leftovers' share
    assert b.settle(1.0) == KILL_WAIT  # the wait after KILL: never under KILL_WAIT
    b.entering("teardown")
    assert b.grace(2.0) == pytest.approx(9 - 7.65 - KILL_WAIT)


def test_shares_never_exceed_the_parts_own_graces():
    b, _ = budget_of(60.0, stop_grace=2.0, leftover_grace=1.0)
    assert b.reserves == {"service": 2.0 + KILL_WAIT, "leftovers": 1.0 + KILL_WAIT}


def test_the_time_line_names_each_part_the_daemons_in_turn_and_each_kill(lines):
    b, clock = budget_of(4.0)
    b.entering("pre_shutdown")
    clock.t += 0.42
    b.entering("stopping")
    b.killed(b.grace(5.0), 5.0)  # 4 - 0.6 - 0.42 - 0.25 = 2.73
    clock.t += 2.78
    b.entering("stop_daemons")
    b.item("beta")
    b.killed(b.grace(5.0), 5.0)
    clock.t += 0.1
    b.item("alpha")
    clock.t += 0.2
    b.entering("post_shutdown")
    b.entering("teardown")
    clock.t += 0.1
    b.entering("exited")
    line = ("stop took 3.6s of the 4s budget: pre-shutdown 0.4s, service 2.8s (KILL after 2.7s of 5s grace), "
            "daemons 0.3s (beta 0.1s: KILL after 0.0s of 5s grace; alpha 0.2s), post-shutdown 0.0s, leftovers 0.1s")
    assert lines == [line]
    report = b.journal("exited")["stop"]
    assert report["line"] == line and report["budget"] == 4.0 and report["took"] == pytest.approx(3.6)
    assert [p["part"] for p in report["parts"]] == list(budget.ORDER)
    assert report["parts"][2]["items"] == [
        {"name": "beta", "took": pytest.approx(0.1), "notes": ["KILL after 0.0s of 5s grace"]},
        {"name": "alpha", "took": pytest.approx(0.2), "notes": []}]
    assert b.journal("teardown") == {} and not b.active
    b.entering("exited")  # said once
    assert len(lines) == 1


def test_a_kill_after_the_full_grace_and_a_stop_without_a_budget(lines):
    b, clock = budget_of(None)
    b.entering("stopping")  # the thin reaper's stop path: service, leftovers
    b.killed(b.grace(5.0), 5.0)
    clock.t += 5.05
    b.entering("teardown")
    b.entering("exited")
    assert lines == ["stop took 5.0s: service 5.0s (KILL after grace), leftovers 0.0s"]


def test_a_stop_past_its_budget_is_a_warning(lines):
    b, clock = budget_of(1.0)
    b.entering("teardown")
    clock.t += 1.5  # a process in uninterruptible sleep, say
    b.entering("exited")
    assert lines == ["warning: stop took 1.5s of the 1s budget: leftovers 1.5s"]


# -- the start-up's sum of the per-part graces ------------------------------------------------------


def test_graces_past_docker_stops_10s_are_said_once_naming_the_parts_and_the_sum(lines):
    settings = make_settings()
    budget.check_graces(settings, pre_scripts=1, daemons=2, finishes=1, post_scripts=0)
    assert lines == ["warning: a stop may take up to 27s at the per-part graces (pre-shutdown 1 script(s) x 5s, "
                     "service 5s, daemons 2 x 5s + 1 finish x 5s, leftovers 2s), more than the 10s docker stop "
                     "waits by default before SIGKILL: set FSM_INIT_STOP_BUDGET a little under the runtime's "
                     "deadline (9 for docker stop's 10 s) to share it out"]


@pytest.mark.parametrize("settings, counts", [
    (make_settings(), (0, 0, 0, 0)),  # 5 + 2
    (make_settings(stop_grace=2.0), (1, 1, 1, 0)),  # 2 + 2 + 4 + 2 = 10: not more
    (make_settings(kill_all_on_exit=False), (0, 1, 0, 0)),  # 5 + 5, no sweep
])
def test_graces_within_10s_are_not_warned_about(lines, settings, counts):
    budget.check_graces(settings, *counts)
    assert lines == []


def test_with_a_budget_the_start_up_says_it_instead_of_the_sum(lines):
    budget.check_graces(make_settings(stop_budget=9.0), 3, 3, 3, 3)
    assert lines == ["stop budget 9s (FSM_INIT_STOP_BUDGET): the stop path ends within it"]


# -- the engine's stop path within the budget -----------------------------------------------------------


def stubborn_container(**settings) -> Harness:
    """A non-daemon service, a pre-shutdown script, two /etc/service daemons and a
    post-shutdown script; the service and the daemons ignore SIGTERM."""
    system = FakeSystem()
    system.add_dir("/srv/app")
    system.add_script("/srv/app/run.sh")
    system.add_file("/srv/app/workcfg.json", json.dumps({"initdelay": 0, "workstart": "./run.sh"}))
    system.add_dir("/run/fsm-init")
    system.add_script(f"{PRE_D}/10-pre")
    system.add_script(f"{POST_D}/10-post")
    for name in ("alpha", "beta"):
        system.add_dir(f"{SERVICE}/{name}")
        system.add_script(f"{SERVICE}/{name}/run")
    h = Harness(system, make_settings(**settings), {"SRVNAME": "app", "PATH": "/usr/bin:/bin"})
    h.begin()
    for spawn in system.spawns:
        system.stubborn(spawn.pid)
    return h


def spawned(h: Harness, path: str) -> int:
    return next(s.pid for s in h.system.spawns if s.argv == [path])


def test_the_engine_ends_a_20s_stop_within_a_4s_budget(lines):
    h = stubborn_container(stop_budget=4.0)
    assert h.state == "foreground"
    assert "stop budget 4s (FSM_INIT_STOP_BUDGET): the stop path ends within it" in lines
    service = h.engine.service.instance.pid
    began = h.system.clock
    h.signal(signal.SIGTERM)
    pre = spawned(h, f"{PRE_D}/10-pre")
    assert h.state == "pre_shutdown" and h.deadline("script") == pytest.approx(began + 2.4)
    h.advance(0.5)
    h.exit(pre, 0)
    assert h.state == "stopping" and h.deadline("stop-kill") == pytest.approx(began + 4 - 0.6 - KILL_WAIT)
    h.advance(4 - 0.6 - KILL_WAIT - 0.5)
    assert h.system.signals_to(service) == [signal.SIGTERM, signal.SIGKILL]
    h.advance(0.01)
    h.exit(spawned(h, f"{POST_D}/10-post"), 0)
    assert h.state == "exited" and h.system.clock - began < 4.0
    for name in ("alpha", "beta"):
        assert h.system.signals_to(spawned(h, f"{SERVICE}/{name}/run")) == [signal.SIGTERM, signal.SIGKILL]
    said = [line for line in lines if line.startswith("stop took")]
    assert len(said) == 1 and re.fullmatch(r"stop took 3\.\ds of the 4s budget: pre-shutdown 0\.5s, service 2\.\ds "
                                           r"\(KILL after 2\.\ds of 5s grace\), daemons 0\.0s \(beta 0\.0s: KILL after "
                                           r"0\.0s of 5s grace; alpha 0\.0s: KILL after 0\.0s of 5s grace\), "
                                           r"post-shutdown 0\.0s, leftovers 0\.0s", said[0]), said
    journal = [json.loads(line) for line in h.system.files["/run/fsm-init/journal.jsonl"].splitlines()]
    assert journal[-1]["to"] == "exited" and journal[-1]["stop"]["line"] == said[0]
    h.close()


def test_without_a_budget_the_engine_keeps_todays_graces_and_warns_once_at_start_up(lines):
    h = stubborn_container()
    assert sum("a stop may take up to 27s" in line for line in lines) == 1
    began = h.system.clock
    h.signal(signal.SIGTERM)
    assert h.deadline("script") == pytest.approx(began + 5.0)
    h.exit(spawned(h, f"{PRE_D}/10-pre"), 0)
    assert h.deadline("stop-kill") == pytest.approx(began + 5.0)
    h.close()


def test_a_startup_script_interrupted_by_the_stop_gets_what_the_pre_shutdown_part_may_take():
    system = FakeSystem()
    system.add_script("/etc/my_init.d/10-slow")
    h = Harness(system, make_settings(stop_budget=4.0), {"PATH": "/usr/bin:/bin"}, ["sleep", "1000"])
    h.begin()
    script = spawned(h, "/etc/my_init.d/10-slow")
    system.stubborn(script)
    began = system.clock
    h.signal(signal.SIGTERM)
    assert h.state == "pre_shutdown"
    # 4 s less the service's share (1 s) and the leftovers' (0.6 s), less the wait after its KILL.
    assert h.deadline("stop-kill") == pytest.approx(began + 4 - 1.0 - 0.6 - KILL_WAIT)
    h.advance(4.0)
    assert h.state == "exited" and system.signals_to(script) == [signal.SIGTERM, signal.SIGKILL]
    h.close()


class DaemonRig:
    """Daemons on a FakeSystem with a real EventLoop and a stop budget (as test_daemons.Rig)."""

    def __init__(self, seconds: float) -> None:
        self.system = FakeSystem()
        self.budget = StopBudget(seconds, 5.0, 2.0, self.system.now)
        self.loop = EventLoop(self.system, lambda signum: None, lambda pid, status: self.daemons.exited(pid, status))
        self.daemons = Daemons(self.system, self.loop, 5.0, lambda: {"workbackoff": 300, "workstable": 60},
                               self.budget)


def test_each_daemon_and_its_finish_script_get_no_more_than_what_is_left(lines):
    rig = DaemonRig(9.0)  # shares: service 2.25 s, leftovers 1.35 s
    for name in ("alpha", "beta"):
        rig.system.add_dir(f"{SERVICE}/{name}")
        rig.system.add_script(f"{SERVICE}/{name}/run")
    rig.system.add_script(f"{SERVICE}/beta/finish")
    rig.daemons.start_all(SERVICE, {})
    fakes.pump(rig)
    for spawn in rig.system.spawns:
        rig.system.stubborn(spawn.pid)
    began = rig.system.clock
    rig.budget.entering("pre_shutdown")
    rig.system.clock += 3.0
    rig.budget.entering("stop_daemons")
    done = []
    rig.daemons.stop_all(lambda: done.append(rig.system.clock))
    # beta first (reverse order): 9 - 1.35 - 3 = 4.65 s left, less the wait after its KILL.
    assert rig.loop.due("daemon-beta-stop-kill") == pytest.approx(began + 9 - 1.35 - KILL_WAIT)
    fakes.advance(rig, 4.4)
    finish = rig.system.spawns[-1]
    assert finish.argv[0] == f"{SERVICE}/beta/finish"
    # Its finish script: nothing left but the wait after a KILL: killed at once.
    assert rig.system.signals_to(finish.pid) == [signal.SIGKILL]
    fakes.advance(rig, 1.0)
    assert done and done[0] - began < 9 - 1.35 + 1.0
    assert not rig.system.alive(finish.pid)
    rig.budget.entering("teardown")
    rig.budget.entering("exited")
    assert re.search(r"daemons \d\.\ds \(beta \d\.\ds: KILL after 4\.4s of 5s grace, time limit: KILL after 0\.0s of 5s "
                     r"grace; "
                     r"alpha \d\.\ds: KILL after 0\.0s of 5s grace\)", lines[-1]), lines[-1]
    fakes.close_loop(rig.loop)
    rig.system.close_watches()


def test_a_daemon_stop_begun_before_the_stop_path_is_cut_to_what_the_budget_leaves(lines):
    rig = DaemonRig(4.0)  # shares: service 1 s, leftovers 0.6 s
    rig.system.add_dir(f"{SERVICE}/alpha")
    rig.system.add_script(f"{SERVICE}/alpha/run")
    rig.daemons.start_all(SERVICE, {})
    fakes.pump(rig)
    run = rig.system.spawns[-1].pid
    rig.system.stubborn(run)
    began = rig.system.clock
    # `srvctl stop alpha` (or a restart of it) a moment before the stop: its own 5 s grace.
    assert rig.daemons.request("stop", "alpha")[0]
    assert rig.loop.due("daemon-alpha-stop-kill") == pytest.approx(began + 5.0)
    rig.budget.entering("pre_shutdown")
    rig.budget.entering("stop_daemons")
    done = []
    rig.daemons.stop_all(lambda: done.append(rig.system.clock))
    # Its KILL no later than the budget allows the daemons' part: 4 - 0.6 - the wait after KILL.
    assert rig.loop.due("daemon-alpha-stop-kill") == pytest.approx(began + 4 - 0.6 - KILL_WAIT)
    fakes.advance(rig, 4.0)
    assert done and done[0] - began <= 4 - 0.6
    assert rig.system.signals_to(run) == [signal.SIGTERM, signal.SIGKILL]
    rig.budget.entering("teardown")
    rig.budget.entering("exited")
    assert re.search(r"alpha \d\.\ds: KILL after 3\.1s of 5s grace", lines[-1]), lines[-1]
    fakes.close_loop(rig.loop)
    rig.system.close_watches()


def test_a_finish_script_begun_before_the_stop_path_is_cut_to_what_the_budget_leaves(lines):
    rig = DaemonRig(4.0)
    rig.system.add_dir(f"{SERVICE}/alpha")
    rig.system.add_script(f"{SERVICE}/alpha/run")
    rig.system.add_script(f"{SERVICE}/alpha/finish")
    rig.daemons.start_all(SERVICE, {})
    fakes.pump(rig)
    run = rig.system.spawns[-1].pid
    began = rig.system.clock
    fakes.child_exit(rig, run, 1 << 8)  # run exits 1: its finish runs, with 5 s to finish
    fakes.pump(rig)
    finish = rig.system.spawns[-1]
    assert finish.argv[0] == f"{SERVICE}/alpha/finish"
    rig.system.stubborn(finish.pid)
    assert rig.loop.due("daemon-alpha-finish-kill") == pytest.approx(began + 5.0)
    rig.budget.entering("pre_shutdown")
    rig.budget.entering("stop_daemons")
    done = []
    rig.daemons.stop_all(lambda: done.append(rig.system.clock))
    assert rig.loop.due("daemon-alpha-finish-kill") == pytest.approx(began + 4 - 0.6 - KILL_WAIT)
    fakes.advance(rig, 4.0)
    assert done and done[0] - began <= 4 - 0.6
    assert rig.system.signals_to(finish.pid) == [signal.SIGKILL]
    fakes.close_loop(rig.loop)
    rig.system.close_watches()


def test_a_budget_under_a_second_still_gives_the_service_and_the_leftovers_some_grace():
    b, clock = budget_of(0.5)  # shares: service 0.125 s, leftovers 0.075 s: less than the wait after a KILL
    b.entering("pre_shutdown")
    assert b.grace(5.0, kill_wait=False) == pytest.approx(0.3)
    clock.t += 0.3  # a shutdown script took all it was allowed
    b.entering("stopping")
    # TERM gets half the service's share, the wait after its KILL the other half.
    assert b.grace(5.0) == pytest.approx(0.125 / 2)
    clock.t += 0.125
    b.entering("stop_daemons")
    assert b.grace(5.0) == 0.0
    b.entering("teardown")
    assert b.grace(2.0) == pytest.approx(0.075 / 2)


def test_an_internal_error_while_stopping_the_service_still_ends_the_stop_within_the_budget(lines, monkeypatch):
    h = stubborn_container(stop_budget=4.0)
    service = h.engine.service.instance.pid
    monkeypatch.setattr(log, "exception", lambda error: None)

    def fails_in_stopping(*_args, **_kwargs):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(h.engine.supervise, "stop_service", fails_in_stopping)
    began = h.system.clock
    h.signal(signal.SIGTERM)
    h.exit(spawned(h, f"{PRE_D}/10-pre"), 0)
    h.advance(4.0)
    # "stopping" is left by group_gone, not done: the stop path goes on (the leftovers'
    # sweep ends the service) instead of waiting there for the runtime's SIGKILL.
    assert h.state == "exited", h.engine.history.cause
    assert h.system.clock - began <= 4.0 and not h.system.alive(service)
    assert "error: internal error in state stopping: RuntimeError('injected fault')" in lines
    assert h.engine.exit_status == 128 + signal.SIGKILL  # the service, KILLed by the sweep: never 0
    h.close()


def test_a_shutdown_scripts_kill_is_noted_with_its_own_time_out_whatever_else_asked_the_budget(lines):
    h = stubborn_container(stop_budget=4.0)
    began = h.system.clock
    h.signal(signal.SIGTERM)
    assert h.deadline("script") == pytest.approx(began + 2.4)
    h.advance(1.0)
    # A daemon's run exits meanwhile: the stop of what it left in its session asks the budget too.
    h.exit(spawned(h, f"{SERVICE}/alpha/run"), 0)
    h.advance(1.4)  # the script's time-out: killed
    assert h.state == "stopping"
    assert "error: /etc/my_init.pre_shutdown.d/10-pre timed out after 2.4s and was killed; carrying on" in lines
    h.advance(4.0)
    said = [line for line in lines if line.startswith("stop took")]
    assert len(said) == 1 and "pre-shutdown 2.4s (10-pre killed after 2.4s)" in said[0], said
    h.close()
