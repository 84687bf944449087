"""The foreground script runner and the check runner alone, on a FakeSystem and a real
EventLoop: no engine, no state machine (as tests/unit/test_daemons.py tests the daemons)."""

import signal

import pytest

from fsm_init.config import workcfg as config
from fsm_init.steps.foreground import Foreground, carry_on
from fsm_init.core.loop import EventLoop
from fsm_init.core.repeats import Repeats
from fsm_init.steps.watch import Checks

from . import fakes
from .fakes import FakeSystem

SRV = "/srv/app"


class Rig:
    def __init__(self) -> None:
        self.system = FakeSystem()
        self.system.add_dir(SRV)
        self.loop = EventLoop(self.system, lambda signum: None, self._on_exit)
        repeats = Repeats()
        self.foreground = Foreground(self.system, self.loop, repeats)
        self.checks = Checks(self.system, self.loop, self.foreground, repeats)
        self.done: list = []

    def _on_exit(self, pid: int, status: int) -> None:
        if not self.foreground.exited(pid, status >> 8):
            self.checks.exited(pid)

    def pump(self) -> None:
        fakes.pump(self)

    def advance(self, seconds: float) -> None:
        fakes.advance(self, seconds)

    def die(self, pid: int, code: int) -> None:
        self.system.die(pid, code << 8)
        self.pump()

    def spawned(self) -> list[str]:
        return [s.argv[0] for s in self.system.spawns]


@pytest.fixture
def rig():
    made = Rig()
    yield made
    fakes.close_loop(made.loop)


def test_scripts_run_one_at_a_time_each_with_the_environment_as_it_is_then(rig):
    for name in ("EnvResume-b", "EnvResume-a"):
        rig.system.add_script(f"{SRV}/{name}")
    env = {"N": "1"}
    rig.foreground.run_in_turn([f"{SRV}/EnvResume-a", f"{SRV}/EnvResume-b"], 60, lambda: dict(env),
                               lambda path, status: rig.done.append((path, status)) or True,
                               lambda: rig.done.append("all"))
    assert rig.spawned() == [f"{SRV}/EnvResume-a"]
    env["N"] = "2"
    rig.die(rig.foreground.script.pid, 3)
    assert rig.done == [(f"{SRV}/EnvResume-a", 3)] and rig.system.spawns[-1].env["N"] == "2"
    rig.die(rig.foreground.script.pid, 0)
    assert rig.done[-2:] == [(f"{SRV}/EnvResume-b", 0), "all"] and rig.foreground.script is None


def test_a_timed_out_script_is_killed_with_its_session_and_the_next_one_runs(rig):
    for name in ("a", "b"):
        rig.system.add_script(f"{SRV}/{name}")
    rig.foreground.run_in_turn([f"{SRV}/a", f"{SRV}/b"], 5, dict, lambda path, status: rig.done.append(status) or True,
                               lambda: rig.done.append("all"))
    first = rig.foreground.script.pid
    rig.advance(5)
    assert rig.done == [None] and rig.system.signals_to(first) == [signal.SIGKILL]
    assert rig.spawned()[-1] == f"{SRV}/b"


def test_interrupt_starts_no_further_script(rig):
    for name in ("a", "b"):
        rig.system.add_script(f"{SRV}/{name}")
    rig.foreground.run_in_turn([f"{SRV}/a", f"{SRV}/b"], 5, dict, lambda path, status: carry_on(5, path, status),
                               lambda: rig.done.append("all"))
    script = rig.foreground.interrupt()
    rig.die(script.pid, 0)
    assert rig.spawned() == [f"{SRV}/a"] and rig.done == [] and rig.system.kills == []


def test_a_check_cycle_runs_rt_then_st_in_turn_then_mt_when_they_pass(rig):
    for name in ("PeriodicRT-r", "PeriodicST-a", "PeriodicST-b", "PeriodicMT-m"):
        rig.system.add_script(f"{SRV}/{name}")
    rig.checks.cycle_count = 1
    rig.checks.begin(SRV, config.defaults(), 30, {"X": "1"}, rig.done.append)
    assert rig.spawned() == [f"{SRV}/PeriodicRT-r", f"{SRV}/PeriodicST-a"]
    assert rig.system.spawns[-1].env == {"X": "1", "SMCNT": "1", "PERDC": "30"}
    rig.die(rig.foreground.script.pid, 0)
    rig.die(rig.foreground.script.pid, 0)
    assert rig.spawned()[-1] == f"{SRV}/PeriodicMT-m"
    (cycle,) = rig.done
    assert cycle.passed and [r.name for r in cycle.results] == ["PeriodicST-a", "PeriodicST-b"]


def test_a_failed_check_ends_the_cycle_and_an_rt_never_overlaps_itself(rig):
    for name in ("PeriodicRT-r", "PeriodicST-a", "PeriodicST-b", "PeriodicMT-m"):
        rig.system.add_script(f"{SRV}/{name}")
    rig.checks.begin(SRV, config.defaults(), 30, {}, rig.done.append)
    rig.die(rig.foreground.script.pid, 2)
    assert rig.done[0].failure.exit == 2 and f"{SRV}/PeriodicMT-m" not in rig.spawned()
    rig.checks.begin(SRV, config.defaults(), 30, {}, rig.done.append)
    assert rig.spawned().count(f"{SRV}/PeriodicRT-r") == 1  # the first one still runs


def test_cycles_keep_a_fixed_rate_from_the_instance_s_first(rig):
    due: list[str] = []
    rig.checks.schedule(30, due.append)
    rig.advance(30)
    assert due == ["check cycle 1 due"]
    rig.checks.cycle_count = 1
    rig.advance(40)  # a slow cycle: the tick at 60 is skipped, not shifted
    rig.checks.schedule(30, due.append)
    rig.advance(19)
    assert len(due) == 1
    rig.advance(1)
    assert due[-1] == "check cycle 2 due"
