"""Supporting daemons (/etc/service/NAME/run) on a FakeSystem with a real EventLoop.

Child exits reach ``Daemons.exited`` through ``loop.reap()``; deadlines fire through
``loop.fire_due()`` as the fake clock moves (fakes.pump / fakes.advance), so every
restart, back-off and SIGKILL happens at the instant the real loop would make it.
"""

import errno
import os
import signal

import pytest

from fsm_init.core import log
from fsm_init.core import system as os_events
from fsm_init.compat.daemons import MAX_SETTLE, SETTLE, Daemons
from fsm_init.core.loop import EventLoop

from . import fakes
from .fakes import FakeSystem, exited, killed

SERVICE = "/etc/service"
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root"}
GRACE = 5.0


class Rig:
    """Daemons on a FakeSystem; has the ``loop`` and ``system`` fakes.pump/advance drive."""

    def __init__(self, **config) -> None:
        self.system = FakeSystem()
        self.config = {"workbackoff": 300, "workstable": 60, **config}
        self.loop = EventLoop(self.system, lambda signum: None, self._on_exit)
        self.daemons = Daemons(self.system, self.loop, GRACE, lambda: self.config)
        self.strangers: list[int] = []  # exits Daemons said were not its own

    def _on_exit(self, pid: int, status: int) -> None:
        if not self.daemons.exited(pid, status):
            self.strangers.append(pid)

    def add(self, name: str, *, run_mode: int | None = 0o755, finish: bool = False, down: bool = False) -> None:
        self.system.add_dir(f"{SERVICE}/{name}")
        if run_mode is not None:
            self.system.add_script(f"{SERVICE}/{name}/run", "exec sleep infinity\n", run_mode)
        if finish:
            self.system.add_script(f"{SERVICE}/{name}/finish")
        if down:
            self.system.add_file(f"{SERVICE}/{name}/down")

    def start(self) -> None:
        self.daemons.start_all(SERVICE, ENV)
        self.pump()

    def pump(self) -> None:
        fakes.pump(self)

    def advance(self, seconds: float) -> None:
        fakes.advance(self, seconds)

    def die(self, pid: int, status: int) -> None:
        self.system.die(pid, status)
        self.pump()

    def info(self, name: str) -> dict:
        return {s["name"]: s for s in self.daemons.status()}[name]

    def pid(self, name: str) -> int:
        pid = self.info(name)["pid"]
        assert pid is not None, self.info(name)
        return pid

    def finishing(self, name: str, status: int):
        """run of name ends with status; returns the spawn of the finish script it set off."""
        before = len(self.finishes(name))
        self.die(self.pid(name), status)
        assert len(self.finishes(name)) == before + 1, "no finish script was run"
        return self.finishes(name)[-1]

    def runs(self, name: str) -> list:
        return [s for s in self.system.spawns if s.argv[0] == f"{SERVICE}/{name}/run"]

    def finishes(self, name: str) -> list:
        return [s for s in self.system.spawns if s.argv[0] == f"{SERVICE}/{name}/finish"]

    def due(self, name: str, what: str = "restart") -> float | None:
        when = self.loop.due(f"daemon-{name}-{what}")
        return when - self.system.clock if when is not None else None

    def changed(self, directory: str, name: str, mask: int) -> None:
        """The kernel reports a change; the loop runs what watches it (as select would)."""
        self.system.notify(directory, name, mask)
        self.loop.poll(0)
        self.pump()

    def request(self, verb: str, name: str) -> tuple[bool, str]:
        reply = self.daemons.request(verb, name)
        self.pump()
        return reply

    def close(self) -> None:
        fakes.close_loop(self.loop)
        self.system.close_watches()


@pytest.fixture
def make():
    made = []

    def factory(services: str = "", start: bool = True, **config) -> Rig:
        """services: "cron sshd:finish idle:down" (a name, and after a colon what it has)."""
        rig = Rig(**config)
        made.append(rig)
        for spec in services.split():
            name, _, extra = spec.partition(":")
            rig.add(name, finish=extra == "finish", down=extra == "down")
        if start:
            rig.start()
        return rig

    yield factory
    for rig in made:
        rig.close()


@pytest.fixture
def lines(monkeypatch) -> list[str]:
    """Every log line, "warning: "/"error: " prefixed as on stderr."""
    recorded: list[str] = []
    monkeypatch.setattr(log, "info", lambda message: recorded.append(message))
    monkeypatch.setattr(log, "warn", lambda message: recorded.append("warning: " + message))
    monkeypatch.setattr(log, "error", lambda message: recorded.append("error: " + message))
    return recorded


# -- discovery ---------------------------------------------------------------------------------


def test_discovery_spawns_in_name_order_in_the_service_directory(make, lines):
    rig = make("cron app sshd .hidden idle:down", start=False)
    rig.add("broken", run_mode=0o644)
    rig.add("empty", run_mode=None)
    rig.system.add_file(f"{SERVICE}/README", "not a service")
    rig.start()

    assert [s.argv for s in rig.system.spawns] == [[f"{SERVICE}/{n}/run"] for n in ("app", "cron", "sshd")]
    assert [s.cwd for s in rig.system.spawns] == [f"{SERVICE}/{n}" for n in ("app", "cron", "sshd")]
    assert all(s.env == ENV for s in rig.system.spawns)
    assert rig.daemons.names == ["app", "cron", "idle", "sshd"]
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 2
    assert "broken" in warnings[0] and "empty" in warnings[1]
    assert not any("hidden" in line or "README" in line for line in lines)
    assert any("idle" in line and "down" in line for line in lines)
    assert rig.info("idle") | {"name": None} == {"name": None, "state": "down", "pid": None, "uptime": None,
                                                  "last_exit": None, "restarts": 0, "down_file": True,
                                                  "removed": False,
                                                  "out_of_memory": False, "ready": None}
    assert rig.info("app")["state"] == "running" and rig.info("app")["down_file"] is False


def test_a_missing_directory_is_no_error(make, lines):
    rig = make()
    assert rig.system.spawns == [] and rig.daemons.names == [] and lines == []
    assert rig.daemons.status() == []


# -- restarts and back-off ---------------------------------------------------------------------


def test_restart_backs_off_1_2_4_capped_by_workbackoff(make, lines):
    rig = make("cron", workbackoff=4)
    delays = []
    for _ in range(5):
        rig.die(rig.pid("cron"), exited(1))
        assert rig.info("cron")["state"] == "backoff"
        delays.append(rig.due("cron"))
        rig.advance(delays[-1] - 0.5)
        assert len(rig.runs("cron")) == len(delays), "restarted before its back-off was over"
        rig.advance(0.5)
        assert rig.info("cron")["state"] == "running"
    assert delays == [1, 2, 4, 4, 4]
    assert rig.info("cron")["restarts"] == 5 and rig.info("cron")["last_exit"] == 1
    assert "daemon cron (pid 100) exited with status 1; restart in 1s" in lines
    assert all(s.cwd == f"{SERVICE}/cron" for s in rig.runs("cron"))


def test_back_off_starts_over_after_a_stable_run(make):
    rig = make("cron", workstable=60)
    for expected in (1, 2, 4):
        rig.die(rig.pid("cron"), exited(1))
        assert rig.due("cron") == expected
        rig.advance(expected)
    rig.advance(59)
    rig.die(rig.pid("cron"), exited(1))
    assert rig.due("cron") == 8, "59 s is short of workstable"
    rig.advance(8 + 60)
    rig.die(rig.pid("cron"), exited(0))
    assert rig.due("cron") == 1


def test_finish_gets_runit_arguments_and_the_restart_waits_for_it(make, lines):
    rig = make("cron:finish")
    first = rig.pid("cron")
    finish = rig.finishing("cron", exited(3))
    assert finish.argv == [f"{SERVICE}/cron/finish", "3", "0"]
    assert finish.cwd == f"{SERVICE}/cron" and finish.env == ENV
    assert rig.info("cron")["state"] == "finishing" and rig.due("cron") is None
    assert f"daemon cron (pid {first}) exited with status 3; finish, then restart in 1s" in lines
    rig.advance(3)
    assert len(rig.runs("cron")) == 1, "run started while finish was still running"
    assert rig.due("cron", "finish-kill") == GRACE - 3
    rig.die(finish.pid, exited(0))
    assert rig.due("cron") == 1 and rig.due("cron", "finish-kill") is None
    rig.advance(1)
    assert len(rig.runs("cron")) == 2

    # Killed by a signal: -1 and the signal number.
    ok, message = rig.request("stop", "cron")
    assert ok and message == f"stopping cron (pid {rig.runs('cron')[1].pid})"
    finish = rig.finishes("cron")[1]
    assert finish.argv == [f"{SERVICE}/cron/finish", "-1", "15"]
    assert rig.due("cron", "stop-kill") is None, "the SIGKILL outlived the process it was for"
    rig.die(finish.pid, exited(0))
    rig.advance(400)
    assert len(rig.runs("cron")) == 2 and rig.info("cron")["state"] == "down"
    assert rig.info("cron")["last_exit"] == 128 + signal.SIGTERM


def test_a_run_exiting_125_stays_down_until_started(make, lines):
    """A run that cannot work here (cron under --user) exits 125 once: no restart loop."""
    rig = make("cron")
    first = rig.pid("cron")
    rig.die(first, exited(125))
    rig.advance(600)
    assert len(rig.runs("cron")) == 1 and rig.info("cron")["state"] == "down"
    assert (f"daemon cron (pid {first}) exited with status 125; stay down (exit 125: it cannot run here; "
            "`srvctl start cron` tries again)") in lines
    ok, _ = rig.request("start", "cron")
    assert ok and len(rig.runs("cron")) == 2 and rig.info("cron")["state"] == "running"


def test_a_finish_exiting_125_keeps_the_daemon_down(make, lines):
    """s6's convention: finish exiting 125 is a permanent failure."""
    rig = make("cron:finish")
    finish = rig.finishing("cron", exited(1))
    rig.die(finish.pid, exited(125))
    rig.advance(600)
    assert len(rig.runs("cron")) == 1 and rig.info("cron")["state"] == "down"
    assert any("finish" in line and "it stays down (s6's permanent failure" in line for line in lines)
    # Without finish, a plain failure still restarts.
    other = make("app")
    other.die(other.pid("app"), exited(1))
    other.advance(1)
    assert len(other.runs("app")) == 2


def test_a_hung_finish_is_killed_after_the_grace_time(make, lines):
    rig = make("cron:finish")
    finish = rig.finishing("cron", exited(1))
    rig.system.stubborn(finish.pid)
    rig.advance(GRACE - 0.5)
    assert rig.system.signals_to(finish.pid) == []
    rig.advance(0.5)
    assert rig.system.signals_to(finish.pid) == [signal.SIGKILL]
    assert not rig.system.alive(finish.pid)
    assert any(line.startswith("warning: daemon cron: finish") for line in lines)
    assert rig.due("cron") == 1
    rig.advance(1)
    assert len(rig.runs("cron")) == 2 and rig.strangers == []


def test_a_spawn_failure_counts_as_a_failure_and_is_retried(make, lines):
    rig = make("cron", start=False)
    run = f"{SERVICE}/cron/run"
    rig.system.spawn_errors[run] = errno.EACCES
    rig.start()
    assert rig.info("cron")["state"] == "backoff" and rig.due("cron") == 1
    said = f"error: cannot start daemon cron ({run}): Permission denied; retry in 1s, backing off while it fails"
    assert [line for line in lines if line.startswith(said)] == lines
    rig.advance(1)
    assert rig.due("cron") == 2
    rig.advance(2)
    assert rig.due("cron") == 4 and len(lines) == 1  # said once while it fails the same way
    del rig.system.spawn_errors[run]
    rig.advance(4)
    assert rig.info("cron")["state"] == "running" and rig.info("cron")["restarts"] == 0
    assert lines[-1].startswith("daemon cron started (pid ") and lines[-1].endswith(" after 3 failed attempt(s)")


# -- srvctl requests ---------------------------------------------------------------------------


def test_stop_terms_the_group_kills_a_stubborn_one_and_stays_down(make, lines):
    rig = make("cron")
    pid = rig.pid("cron")
    helper = rig.system.add_process(pid)  # a child in the run's session
    rig.system.stubborn(pid)
    rig.system.stubborn(helper)
    assert rig.request("stop", "cron") == (True, f"stopping cron (pid {pid})")
    assert rig.system.signals_to(pid) == [signal.SIGTERM] and rig.system.signals_to(helper) == [signal.SIGTERM]
    assert rig.info("cron")["state"] == "stopping" and rig.due("cron", "stop-kill") == GRACE
    assert rig.request("stop", "cron") == (True, "cron is stopping; it stays down")
    assert rig.system.signals_to(pid) == [signal.SIGTERM], "a second stop sent another signal"
    rig.advance(GRACE)
    assert rig.system.signals_to(pid) == [signal.SIGTERM, signal.SIGKILL]
    assert rig.system.signals_to(helper) == [signal.SIGTERM, signal.SIGKILL]
    assert rig.info("cron")["state"] == "down" and rig.info("cron")["last_exit"] == 137
    rig.advance(400)
    assert len(rig.runs("cron")) == 1
    assert rig.request("stop", "cron") == (True, "cron is already down")


def test_stop_cancels_a_pending_restart(make):
    rig = make("cron")
    rig.die(rig.pid("cron"), exited(1))
    assert rig.due("cron") == 1
    assert rig.request("stop", "cron") == (True, "cron is already down")
    rig.advance(10)
    assert len(rig.runs("cron")) == 1 and rig.info("cron")["state"] == "down"


def test_start(make):
    rig = make("cron:down sshd")
    pid = rig.pid("sshd")
    assert rig.request("start", "sshd") == (True, f"sshd is already running (pid {pid})")
    assert len(rig.runs("sshd")) == 1

    ok, message = rig.request("start", "cron")
    assert ok and message == f"started cron (pid {rig.pid('cron')})"
    assert rig.runs("cron")[0].cwd == f"{SERVICE}/cron"

    # During a back-off: at once, and the failure count starts over.
    for _ in range(3):
        rig.die(rig.pid("cron"), exited(1))
        rig.advance(rig.due("cron"))
    rig.die(rig.pid("cron"), exited(1))
    assert rig.due("cron") == 8
    assert rig.request("start", "cron")[0]
    assert rig.info("cron")["state"] == "running" and rig.due("cron") is None
    rig.die(rig.pid("cron"), exited(1))
    assert rig.due("cron") == 1


def test_start_while_finishing_starts_right_after_the_finish(make):
    rig = make("cron:finish")
    rig.request("stop", "cron")
    [finish] = rig.finishes("cron")
    ok, message = rig.request("start", "cron")
    assert ok and "finish" in message
    assert len(rig.runs("cron")) == 1
    rig.die(finish.pid, exited(0))
    assert len(rig.runs("cron")) == 2 and rig.info("cron")["state"] == "running"


def test_start_while_finishing_after_a_failure_skips_the_back_off(make):
    rig = make("cron:finish")
    finish = rig.finishing("cron", exited(1))
    assert rig.request("start", "cron")[0]
    rig.die(finish.pid, exited(0))
    assert len(rig.runs("cron")) == 2 and rig.due("cron") is None


def test_restart_running_is_immediate_after_exit_and_finish_and_counts_no_failure(make):
    rig = make("cron:finish")
    old = rig.pid("cron")
    rig.system.stubborn(old)
    assert rig.request("restart", "cron") == (True, f"restarting cron (pid {old})")
    assert rig.system.signals_to(old) == [signal.SIGTERM]
    rig.advance(GRACE)
    assert rig.system.signals_to(old) == [signal.SIGTERM, signal.SIGKILL]
    [finish] = rig.finishes("cron")
    assert finish.argv[1:] == ["-1", "9"] and len(rig.runs("cron")) == 1
    rig.die(finish.pid, exited(0))
    assert len(rig.runs("cron")) == 2 and rig.due("cron") is None
    # No failure was counted: the next death backs off 1 s.
    rig.die(rig.finishing("cron", exited(1)).pid, exited(0))
    assert rig.due("cron") == 1


def test_restart_when_not_running_starts_now(make):
    rig = make("cron:down")
    ok, message = rig.request("restart", "cron")
    assert ok and message == f"started cron (pid {rig.pid('cron')})"


def test_unknown_service_and_unknown_verb(make):
    rig = make("cron sshd")
    assert rig.request("start", "x") == (False, f"no daemon 'x' in {SERVICE} (known: cron, sshd)")
    ok, message = rig.request("reload", "cron")
    assert not ok and "reload" in message


def test_start_fails_visibly_when_the_spawn_fails(make):
    rig = make("cron:down")
    rig.system.spawn_errors[f"{SERVICE}/cron/run"] = errno.ENOEXEC
    ok, message = rig.request("start", "cron")
    assert not ok and os.strerror(errno.ENOEXEC) in message
    assert rig.info("cron")["state"] == "backoff"


# -- teardown ----------------------------------------------------------------------------------


def test_stop_all_stops_one_at_a_time_in_reverse_name_order(make, lines):
    rig = make("a b:finish c d")
    rig.die(rig.pid("d"), exited(1))  # d waits out a back-off: it must not come back
    pids = {name: rig.pid(name) for name in "abc"}
    rig.system.stubborn(pids["c"])
    calls = []
    rig.daemons.stop_all(lambda: calls.append(rig.system.clock))
    rig.pump()
    terms = lambda: [pid for pid, sig in rig.system.kills if sig == signal.SIGTERM]  # noqa: E731
    assert terms() == [pids["c"]]
    assert rig.request("start", "a") == (False, "shutting down")
    assert rig.request("restart", "d") == (False, "shutting down")
    rig.advance(GRACE - 0.5)
    assert terms() == [pids["c"]] and rig.system.alive(pids["c"])
    rig.advance(0.5)
    assert rig.system.signals_to(pids["c"]) == [signal.SIGTERM, signal.SIGKILL]
    assert terms() == [pids["c"], pids["b"]]
    [finish] = rig.finishes("b")
    assert finish.argv[1:] == ["-1", "15"]
    rig.advance(1)
    assert terms() == [pids["c"], pids["b"]], "a was stopped before b's finish ended"
    rig.die(finish.pid, exited(0))
    assert terms() == [pids["c"], pids["b"], pids["a"]]
    assert calls == [rig.system.clock]
    rig.advance(600)
    assert calls == [rig.system.clock - 600] and len(rig.system.spawns) == 5
    assert [s["state"] for s in rig.daemons.status()] == ["down"] * 4


def test_stop_all_with_nothing_running_calls_then_at_once(make):
    rig = make("cron:down")
    calls = []
    rig.daemons.stop_all(lambda: calls.append(1))
    assert calls == [1]
    rig.advance(100)
    assert calls == [1]


def test_stop_all_waits_for_a_running_finish_script(make):
    rig = make("cron:finish")
    finish = rig.finishing("cron", exited(2))
    calls = []
    rig.daemons.stop_all(lambda: calls.append(1))
    assert calls == []
    rig.system.stubborn(finish.pid)
    rig.advance(GRACE)
    assert rig.system.signals_to(finish.pid) == [signal.SIGKILL]
    assert calls == [1] and len(rig.runs("cron")) == 1


# -- status ------------------------------------------------------------------------------------


def test_status_fields(make):
    rig = make("cron:finish")
    rig.advance(2.5)
    assert rig.info("cron") == {"name": "cron", "state": "running", "pid": 100, "uptime": 2.5,
                                "last_exit": None, "restarts": 0, "down_file": False, "removed": False,
                                "out_of_memory": False, "ready": None}
    finish = rig.finishing("cron", killed(signal.SIGSEGV)).pid
    assert rig.info("cron") | {"state": "finishing", "pid": None, "uptime": None,
                               "last_exit": 128 + signal.SIGSEGV} == rig.info("cron")
    rig.die(finish, exited(0))
    assert rig.info("cron")["state"] == "backoff"
    rig.advance(1)
    pid = rig.pid("cron")
    assert rig.info("cron")["restarts"] == 1 and rig.info("cron")["uptime"] == 0
    rig.system.stubborn(pid)
    rig.request("stop", "cron")
    assert rig.info("cron")["state"] == "stopping" and rig.info("cron")["pid"] == pid


# -- found in review: sessions, real-time signals ----------------------------------------------------


def test_a_child_left_in_runs_session_is_stopped_before_the_next_run(make):
    rig = make("cron")
    pid = rig.pid("cron")
    child = rig.system.add_process(pid)  # forked by run, in its session
    rig.system.stubborn(child)
    rig.die(pid, exited(1))
    assert rig.system.signals_to(child) == [signal.SIGTERM] and rig.info("cron")["state"] == "stopping"
    rig.advance(GRACE)
    assert rig.system.signals_to(child) == [signal.SIGTERM, signal.SIGKILL] and not rig.system.alive(child)
    assert len(rig.runs("cron")) == 1, "a new run started beside the old session"
    rig.advance(1)
    assert len(rig.runs("cron")) == 2


def test_restart_waits_for_the_whole_session(make):
    rig = make("cron")
    pid = rig.pid("cron")
    child = rig.system.add_process(pid)
    rig.system.stubborn(child)
    assert rig.request("restart", "cron") == (True, f"restarting cron (pid {pid})")
    assert not rig.system.alive(pid) and len(rig.runs("cron")) == 1
    assert rig.request("start", "cron") == (True, "cron is stopping: starting it again once that is done")
    rig.advance(GRACE)
    assert not rig.system.alive(child) and len(rig.runs("cron")) == 2


def test_a_daemon_killed_by_a_real_time_signal_comes_back_and_teardown_ends(make, lines):
    rig = make("cron sshd")
    rig.die(rig.pid("cron"), killed(40))
    assert "daemon cron (pid 100) was killed by signal 40 (status 168); restart in 1s" in lines
    rig.advance(1)
    assert rig.info("cron")["state"] == "running"
    done = []
    rig.daemons.stop_all(lambda: done.append(True))
    rig.pump()
    assert done == [True]


def test_teardown_waits_for_each_session_in_turn(make):
    rig = make("alpha beta")
    alpha, beta = rig.pid("alpha"), rig.pid("beta")
    child = rig.system.add_process(beta)
    rig.system.stubborn(child)
    done = []
    rig.daemons.stop_all(lambda: done.append(True))
    rig.pump()
    assert rig.system.signals_to(alpha) == [], "alpha was stopped while beta's session still ran"
    rig.advance(GRACE)
    assert not rig.system.alive(child) and rig.system.signals_to(alpha) == [signal.SIGTERM]
    assert done == [True]


def test_a_run_that_even_sigkill_cannot_end_does_not_hold_up_teardown(make, lines):
    """Uninterruptible sleep (a hung NFS mount): the stop goes on without it."""
    rig = make("alpha beta")
    stuck = rig.pid("beta")
    rig.system.deadly[stuck] = frozenset()
    done = []
    rig.daemons.stop_all(lambda: done.append(True))
    rig.pump()
    rig.advance(GRACE)
    assert signal.SIGKILL in rig.system.signals_to(stuck) and done == []
    rig.advance(1)  # stop.KILL_SETTLE
    assert f"warning: daemon beta (pid {stuck}) is still there after SIGKILL; going on without it" in lines
    rig.pump()
    assert done == [True] and rig.info("beta")["last_exit"] == 137


# -- run time: services added and removed (inotify) ---------------------------------------------

CREATED_DIR = os_events.IN_CREATE | 0x40000000  # IN_ISDIR


def empty(make) -> Rig:
    """An empty service directory, watched."""
    rig = make("", start=False)
    rig.system.add_dir(SERVICE)
    rig.start()
    return rig


def test_the_directory_is_watched_and_an_idle_loop_has_no_deadline(make):
    rig = make("cron")
    (fd, path, mask), = rig.system.watches.values()
    assert path == SERVICE and mask & os_events.IN_CREATE and mask & os_events.IN_DELETE
    assert fd in {key.fileobj for key in rig.loop.selector.get_map().values()}
    assert rig.loop.pending() == {}  # nothing wakes fsm-init up while nothing changes


def test_a_service_added_at_run_time_starts_once_the_directory_settles(make, lines):
    rig = make("cron")
    rig.add("web")  # ln -s /opt/web /etc/service/web (a symbolic link: IN_CREATE, no IN_ISDIR)
    rig.changed(SERVICE, "web", os_events.IN_CREATE)
    assert rig.runs("web") == [], "started before the directory settled"
    rig.advance(SETTLE)
    assert len(rig.runs("web")) == 1 and rig.info("web")["state"] == "running"
    assert len(rig.runs("cron")) == 1, "an unchanged service was touched"
    assert rig.loop.pending() == {} and not any(line.startswith("warning") for line in lines)


def test_a_burst_of_changes_is_acted_on_within_half_a_second(make):
    rig = empty(make)
    rig.add("web")
    rig.changed(SERVICE, "web", CREATED_DIR)
    for _ in range(20):  # a large cp -r keeps the directory busy
        rig.advance(SETTLE / 2)
        rig.changed(SERVICE, "web", os_events.IN_MOVED_TO)
        if rig.runs("web"):
            break
    assert len(rig.runs("web")) == 1
    assert rig.system.clock - 1000.0 <= MAX_SETTLE + SETTLE


def test_a_copied_directory_whose_run_comes_later_is_watched_until_run_is_there(make, lines):
    rig = empty(make)
    rig.system.add_dir(f"{SERVICE}/web")  # cp -r: the directory first, its files after
    rig.changed(SERVICE, "web", CREATED_DIR)
    rig.advance(SETTLE)
    assert rig.runs("web") == [] and rig.daemons.names == []
    assert [line for line in lines if line.startswith("warning")] == [
        f"warning: daemon web: {SERVICE}/web/run is missing or not executable; started once it is"]
    assert f"{SERVICE}/web" in [path for _, path, _ in rig.system.watches.values()]
    rig.system.add_script(f"{SERVICE}/web/finish")  # another file first: no start, no second warning
    rig.changed(f"{SERVICE}/web", "finish", os_events.IN_CLOSE_WRITE)
    rig.advance(SETTLE)
    assert rig.runs("web") == [] and len([line for line in lines if line.startswith("warning")]) == 1
    rig.system.add_script(f"{SERVICE}/web/run", "exec sleep infinity\n")
    rig.changed(f"{SERVICE}/web", "run", os_events.IN_CLOSE_WRITE)
    rig.advance(SETTLE)
    assert len(rig.runs("web")) == 1
    assert [path for _, path, _ in rig.system.watches.values()] == [SERVICE], "the new directory's watch stays"
    assert rig.loop.pending() == {}


def test_a_removed_service_is_stopped_with_term_grace_kill_and_forgotten(make, lines):
    rig = make("cron web")
    pid = rig.pid("web")
    rig.system.stubborn(pid)
    rig.system.remove_tree(f"{SERVICE}/web")
    rig.changed(SERVICE, "web", os_events.IN_DELETE)
    rig.advance(SETTLE)
    assert rig.system.signals_to(pid) == [signal.SIGTERM]
    assert rig.info("web")["state"] == "stopping" and rig.info("web")["removed"] is True
    rig.advance(GRACE)
    assert rig.system.signals_to(pid) == [signal.SIGTERM, signal.SIGKILL] and not rig.system.alive(pid)
    rig.advance(60)
    assert rig.daemons.names == ["cron"] and len(rig.runs("web")) == 1, "a removed service came back"
    assert f"daemon web stopped and forgotten: its directory was removed" in "\n".join(lines)
    assert rig.system.signals_to(rig.pid("cron")) == []


def test_a_removed_service_waiting_for_its_restart_is_forgotten_at_once(make):
    rig = make("web")
    rig.die(rig.pid("web"), exited(1))
    assert rig.info("web")["state"] == "backoff"
    rig.system.remove_tree(f"{SERVICE}/web")
    rig.changed(SERVICE, "web", os_events.IN_DELETE)
    rig.advance(SETTLE)
    assert rig.daemons.names == [] and rig.loop.pending() == {}
    rig.advance(600)
    assert len(rig.runs("web")) == 1


def test_a_service_back_before_its_stop_ended_runs_again_after_it(make):
    rig = make("web")
    pid = rig.pid("web")
    rig.system.stubborn(pid)
    rig.system.remove_tree(f"{SERVICE}/web")
    rig.changed(SERVICE, "web", os_events.IN_DELETE)
    rig.advance(SETTLE)
    rig.add("web")
    rig.changed(SERVICE, "web", CREATED_DIR)
    rig.advance(SETTLE)
    assert len(rig.runs("web")) == 1, "a second run beside the old one"
    rig.advance(GRACE + 1)
    assert len(rig.runs("web")) == 2 and rig.info("web")["removed"] is False


def test_a_new_service_with_a_down_file_is_known_but_not_started(make):
    rig = empty(make)
    rig.add("web", down=True)
    rig.changed(SERVICE, "web", CREATED_DIR)
    rig.advance(SETTLE)
    assert rig.daemons.names == ["web"] and rig.runs("web") == []


def test_rescan_does_the_scan_now_and_says_what_changed(make):
    rig = make("cron web")
    rig.system.stubborn(rig.pid("web"))
    rig.add("new")
    rig.system.remove_tree(f"{SERVICE}/web")  # no event: as if the watch had missed it
    ok, message = rig.daemons.rescan()
    assert ok and message == f"rescanned {SERVICE} (watched): started new; stopping web"
    assert len(rig.runs("new")) == 1
    rig.pump()
    assert rig.daemons.rescan() == (True, f"rescanned {SERVICE} (watched): stopping web")
    rig.advance(GRACE)
    assert rig.daemons.rescan() == (True, f"rescanned {SERVICE} (watched): no change")


def test_without_inotify_a_warning_once_and_rescan_still_works(make, lines):
    rig = make("cron", start=False)
    rig.system.fail("watch_open", OSError(errno.EMFILE, os.strerror(errno.EMFILE)))
    rig.start()
    assert [line for line in lines if line.startswith("warning")] == [
        f"warning: cannot watch {SERVICE} (Too many open files): a service added or removed later needs "
        "`srvctl rescan`"]
    assert rig.runs("cron") and not rig.daemons.watching
    rig.add("web")
    ok, message = rig.daemons.rescan()
    assert ok and "not watched: Too many open files" in message and len(rig.runs("web")) == 1


def test_the_watch_ends_with_the_teardown(make):
    rig = make("cron")
    done = []
    rig.daemons.stop_all(lambda: done.append(True))
    assert rig.system.watches == {} and not rig.daemons.watching
    rig.add("web")
    assert rig.daemons.rescan() == (False, "shutting down")
    rig.die(rig.pid("cron"), killed(signal.SIGTERM))
    rig.advance(1)
    assert done == [True] and rig.runs("web") == []


def test_the_directory_itself_removed_ends_the_watch_with_one_warning(make, lines):
    rig = make("cron")
    rig.system.remove_tree(SERVICE)
    rig.changed(SERVICE, "", os_events.IN_DELETE_SELF)
    assert not rig.daemons.watching and rig.system.watch_pipes == {}
    assert len([line for line in lines if line.startswith("warning")]) == 1
    assert rig.loop.pending() == {}


def test_rescan_watches_a_directory_made_after_the_start(make):
    rig = make("", start=False)
    rig.start()  # no /etc/service: nothing to watch
    assert not rig.daemons.watching
    rig.add("web")
    ok, message = rig.daemons.rescan()
    assert ok and message == f"rescanned {SERVICE} (watched): started web" and rig.daemons.watching
    rig.add("late")
    rig.changed(SERVICE, "late", CREATED_DIR)
    rig.advance(SETTLE)
    assert len(rig.runs("late")) == 1


def test_status_says_a_removed_daemon_is_being_stopped(make):
    from fsm_init.client.srvctl import describe_daemon

    rig = make("web")
    rig.system.stubborn(rig.pid("web"))
    rig.system.remove_tree(f"{SERVICE}/web")
    rig.changed(SERVICE, "web", os_events.IN_DELETE)
    rig.advance(SETTLE)
    assert describe_daemon(rig.info("web")) == "stopping (its directory was removed)"


def test_a_scan_after_the_directory_vanished_stops_nothing(make):
    rig = make("cron")
    rig.changed(SERVICE, "x", os_events.IN_CREATE)  # a change, then the whole directory goes
    rig.system.remove_tree(SERVICE)
    rig.advance(SETTLE)
    assert rig.info("cron")["state"] == "running" and rig.system.signals_to(rig.pid("cron")) == []


# -- notification-fd (s6's readiness convention) -----------------------------------------------------


def test_notification_fd_makes_the_daemon_ready_on_its_newline(make):
    rig = make("cron", start=False)
    rig.system.add_dir(f"{SERVICE}/web")
    rig.system.add_file(f"{SERVICE}/web/notification-fd", "3\n")
    rig.add("web")
    rig.start()
    spawn = rig.runs("web")[-1]
    assert [number for _, number in spawn.fds] == [3] and rig.runs("cron")[-1].fds == ()
    assert rig.info("web")["ready"] is False and rig.info("cron")["ready"] is None
    service_end = rig.system.child_ends.pop(3)
    try:
        os.write(service_end, b"up")
        rig.loop.poll(0)
        assert rig.info("web")["ready"] is False
        os.write(service_end, b"\n")
        rig.loop.poll(1)
        assert rig.info("web")["ready"] is True
    finally:
        os.close(service_end)
    rig.die(rig.pid("web"), exited(1))
    rig.advance(10)  # started again: not ready until it says so again
    assert rig.info("web")["state"] == "running" and rig.info("web")["ready"] is False
    os.close(rig.system.child_ends.pop(3))


def test_a_bad_notification_fd_is_said_once_and_ignored(make, capfd):
    rig = make(start=False)
    rig.system.add_dir(f"{SERVICE}/web")
    rig.system.add_file(f"{SERVICE}/web/notification-fd", "two\n")
    rig.add("web")
    rig.start()
    assert rig.runs("web")[-1].fds == () and rig.info("web")["ready"] is None
    err = capfd.readouterr().err
    assert "daemon web: /etc/service/web/notification-fd = 'two': not a file descriptor number" in err
