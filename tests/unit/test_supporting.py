"""Supporting services (dropbear, pppd) stop through the kill library's one
TERM → grace → KILL (``kill.Stopper``), as the service and the daemons do."""

import signal

import pytest

from fsm_init.core.loop import EventLoop
from fsm_init.network.supporting import Spec, Supporting

from . import fakes
from .fakes import FakeSystem

GRACE = 5.0


class Rig:
    def __init__(self) -> None:
        self.system = FakeSystem()
        self.loop = EventLoop(self.system, lambda signum: None, self.exited)
        self.supporting = Supporting("ssh", self.system, self.loop, GRACE)

    def exited(self, pid: int, status: int) -> None:
        self.supporting.exited(pid, status)

    def advance(self, seconds: float) -> None:
        fakes.advance(self, seconds)


@pytest.fixture
def rig():
    r = Rig()
    yield r
    fakes.close_loop(r.loop)


def spec(port: int) -> Spec:
    return Spec(["dropbear", "-p", str(port)], {}, f"port {port}", f"port {port}")


def test_new_settings_stop_the_old_session_then_start_the_new_process(rig):
    rig.supporting.apply(spec(8022))
    old = rig.supporting.pid
    rig.supporting.apply(spec(8023))
    assert (old, signal.SIGTERM) in rig.system.kills
    fakes.pump(rig)
    assert rig.supporting.pid not in (None, old) and rig.supporting.spec.summary == "port 8023"
    rig.advance(0.1)  # the stopper's next look finds the old session empty, and stops looking
    assert rig.loop.pending() == {}


def test_a_leader_that_ignores_term_is_killed_at_the_grace_time(rig):
    rig.supporting.apply(spec(8022))
    old = rig.supporting.pid
    rig.system.stubborn(old)
    rig.supporting.apply(None)
    rig.advance(GRACE - 0.1)
    assert rig.system.alive(old)
    rig.advance(0.2)
    assert not rig.system.alive(old) and (old, signal.SIGKILL) in rig.system.kills
    assert rig.supporting.pid is None and rig.supporting.status() == "disabled"


def test_what_the_leader_left_in_its_session_is_killed_too(rig):
    """The shared stopper's rule: the whole session, not just the leader."""
    rig.supporting.apply(spec(8022))
    old = rig.supporting.pid
    child = rig.system.add_process(old)
    rig.system.stubborn(child)
    rig.supporting.apply(spec(8023))
    fakes.pump(rig)
    new = rig.supporting.pid
    assert new not in (None, old) and rig.system.alive(child)  # the restart did not wait for it
    rig.advance(GRACE + 0.1)
    assert not rig.system.alive(child) and (child, signal.SIGKILL) in rig.system.kills
    assert rig.system.alive(new) and (new, signal.SIGKILL) not in rig.system.kills
