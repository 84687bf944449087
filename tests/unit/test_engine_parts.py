"""The parts the engine is wired from, each alone: the service launch (launch.Launch),
the transition record (history.History), the control verbs (verbs.Verbs), the
explanations (explain.Explain) and the on_enter dispatch (every state has its work).
The whole engine driven through the table is tests/unit/test_machine.py."""

import errno
import signal
import types

import pytest

from fsm_init.config import workcfg as config
from fsm_init.core import table
from fsm_init.steps import start
from fsm_init.core.control import NOT_SUPERVISED
from fsm_init.history import History
from fsm_init.core.journal import Journal
from fsm_init.core.kill import Group
from fsm_init.steps.launch import Launch, service_env
from fsm_init.core.loop import EventLoop
from fsm_init.core.oom import Watch
from fsm_init.core.readiness import Notifier
from fsm_init.core.repeats import Repeats
from fsm_init.steps.resolve_target import Target
from fsm_init.steps.service import Service
from fsm_init.verbs import Verbs
from tests.unit.fakes import FakeSystem, ProcessReplaced, close_engine, exited, killed, make_engine, make_settings

APP = Target("app", "/srv/app", first_start=True)


def config_with(**values) -> dict:
    return dict(config.defaults(), **values)


# -- launch.Launch: step start's work -------------------------------------------------------


def make_launch(system: FakeSystem, command=None, keeps_supervising=False, **settings):
    released = []
    service = Service(system.now)
    notifier = Notifier(system, EventLoop(system, print, print), "/run/fsm-init", service.declared, print)
    launch = Launch(system, make_settings(**settings), service, Repeats(), command, "/work",
                    lambda: keeps_supervising, lambda: released.append(True), notifier)
    return launch, released


def test_launch_spawns_the_service_in_a_session_of_its_own():
    system = FakeSystem()
    system.add_script("/srv/app/run.sh")
    launch, _ = make_launch(system)
    trigger, cause = launch.start(config_with(workstart="./run.sh", workwatch=0), start.Mode(start.DAEMON, None),
                                  "/srv/app", {"A": "1"})
    [spawn] = system.spawns
    assert (trigger, spawn.argv, spawn.env, spawn.tty_fd) == ("spawned", ["./run.sh"], {"A": "1"}, None)
    assert cause == f"service started (pid {spawn.pid}, run 0)"
    assert launch.service.instance is not None and launch.service.instance.pid == spawn.pid
    assert launch.service.instance.group.by_session


def test_launch_reports_a_spawn_failure_with_the_status_a_shell_gives():
    system = FakeSystem()
    system.add_script("/srv/app/run.sh")
    system.spawn_errors["./run.sh"] = errno.EACCES
    launch, _ = make_launch(system)
    trigger, cause = launch.start(config_with(workstart="./run.sh", workwatch=0), start.Mode(start.DAEMON, None),
                                  "/srv/app", {})
    assert trigger == "spawn_failed" and cause.startswith("cannot execute ./run.sh: ")
    assert launch.service.last_exit == 126 and launch.service.instance is None


def test_launch_refuses_an_unknown_workuser_with_status_126():
    system = FakeSystem()
    launch, _ = make_launch(system)
    trigger, cause = launch.start(config_with(workstart="sleep 1", workuser="no-such-user-fsm"),
                                  start.Mode(start.DAEMON, None), None, {})
    assert trigger == "spawn_failed" and "workuser 'no-such-user-fsm'" in cause
    assert launch.service.last_exit == 126 and system.spawns == []


def test_launch_execs_the_service_when_asked_and_releases_the_sockets_first():
    system = FakeSystem()
    system.add_script("/bin/true")
    system.add_dir("/work")
    launch, released = make_launch(system, command=["/bin/true"], exec_service=True)
    with pytest.raises(ProcessReplaced):
        launch.start(config_with(), start.Mode(start.NON_DAEMON, None), None, {})
    assert released == [True] and [e.argv for e in system.execs] == [["/bin/true"]]
    assert system.chdirs[-1] == "/work"  # a command line runs where fsm-init was started


def test_launch_does_not_exec_while_fsm_init_must_stay_pid_1():
    system = FakeSystem()
    launch, released = make_launch(system, command=["/bin/true"], keeps_supervising=True, exec_service=True)
    trigger, _ = launch.start(config_with(), start.Mode(start.NON_DAEMON, None), None, {})
    assert trigger == "spawned" and released == [] and system.execs == []


def test_service_env_gives_the_masked_config_to_a_named_service_only():
    cfg = config_with(workstart="x")
    assert "SRVCFG" in service_env({"A": "1"}, "", cfg, APP)
    assert service_env({"A": "1"}, "", cfg, Target(None, "/srv/imginit", True, default=True)) == {"A": "1"}


# -- history.History: what happened and why -------------------------------------------------


def test_history_keeps_each_queued_triggers_cause_until_it_is_processed():
    system = FakeSystem()
    history = History(system, Journal("/run/fsm-init", system), lambda: "watch")
    seen = []
    history.observer = lambda took, guards: seen.append((took, dict(guards), history.cause))
    history.queue("first")
    history.queue("second")
    history.new_event()
    history.guard_results["checks_passed"] = True
    history.take("checks_done", "restart")
    history.event_done()
    history.new_event()
    history.event_done()
    assert seen == [(("watch", "restart", "checks_done"), {"checks_passed": True}, "first"), (None, {}, "second")]
    assert not history.causes


def test_history_records_an_early_entry_once():
    system = FakeSystem()
    system.add_dir("/run/fsm-init")
    history = History(system, Journal("/run/fsm-init", system), lambda: "foreground")
    history.queue("the service ran 1s")
    history.new_event()
    history.take("settled", "handover")
    history.entered(1, lambda: {"state": "handover"}, early=True)
    history.entered(1, lambda: {"state": "handover"})  # transitions' own call, after the state's work
    lines = system.files["/run/fsm-init/journal.jsonl"].splitlines()
    assert len(lines) == 1 and b'"cause": "the service ran 1s"' in lines[0]
    assert history.last_transition["to"] == "handover"


# -- verbs.Verbs: the answers to control requests --------------------------------------------


def fake_engine(state: str, may_restart: bool = True):
    engine = types.SimpleNamespace(state=state, service=Service(lambda: 0.0), fired=[], stopped=[])
    engine.may_restart_request = lambda: may_restart
    engine.fire = lambda trigger, cause="": engine.fired.append((trigger, cause))
    engine.stop = lambda cause, signum=None: engine.stopped.append(cause)
    return engine


def test_verbs_restart_and_stop():
    engine = fake_engine("watch")
    verbs = Verbs(engine)
    assert verbs.request_restart() == (True, "restarting (was watch)")
    assert engine.fired == [("restart_request", "srvctl restart")] and engine.service.restart_requested
    assert verbs.request_stop() == (True, "stopping")
    assert engine.stopped == ["srvctl stop"] and engine.service.stop_requested


def test_verbs_refuse_what_the_state_does_not_allow():
    assert Verbs(fake_engine("foreground", may_restart=False)).request_restart() == (False, NOT_SUPERVISED)
    assert Verbs(fake_engine("delay", may_restart=False)).request_restart() == (False, "cannot restart during delay")
    assert Verbs(fake_engine("teardown")).request_stop() == (False, "already teardown")
    assert Verbs(fake_engine("watch")).handle({"verb": "frobnicate"}) == {"ok": False,
                                                                         "message": "unknown verb 'frobnicate'"}


# -- the engine's wiring ---------------------------------------------------------------------


def test_every_state_but_boot_has_exactly_one_piece_of_work():
    engine = make_engine()
    try:
        work = {name: len(engine.machine.get_state(name).on_enter) for name, _ in table.STATES}
        assert work == {name: 0 if name == "boot" else 1 for name, _ in table.STATES}
    finally:
        close_engine(engine)


def test_explain_names_what_the_state_waits_for():
    engine = make_engine()
    try:
        engine.loop.call_later("state", 30, lambda: None)
        engine.state = "delay"  # as transitions sets it
        assert engine.explain.upcoming().startswith("the start goes on at ")
        assert engine.explain.health() == (False, "no service instance (delay)")
        assert engine.explain.snapshot()["state"] == "delay"
    finally:
        close_engine(engine)


def test_oom_watch_remembers_the_latest_kill_with_who_and_when():
    system = FakeSystem()
    system.add_file("/sys/fs/cgroup/memory.events", "oom_kill 1\n")
    system.add_file("/sys/fs/cgroup/memory.max", "max\n")
    watch = Watch(system, "/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory.max", seen=0)
    assert watch.killed_by("daemon hog (pid 7)", killed(signal.SIGTERM)) == "" and watch.last == ""
    assert "out-of-memory killer" in watch.killed_by("daemon hog (pid 7)", killed(signal.SIGKILL))
    assert watch.last.startswith("daemon hog (pid 7) at ")


# -- supervise.Supervise and script_steps.ScriptSteps, on an engine not driven -----------------


def test_supervise_hears_only_the_service_leaders_exit():
    engine = make_engine()
    try:
        engine.service.started(321, Group(321))
        assert not engine.supervise.exited(999, exited(0))  # a daemon's or a script's pid
        assert engine.supervise.exited(321, exited(3)) and engine.service.last_exit == 3
        assert not engine.supervise.exited(321, exited(3))  # once reaped, the pid may be reused
    finally:
        close_engine(engine)


def test_supervise_writes_the_run_count_only_into_a_target_directory():
    system = FakeSystem()
    system.add_dir("/srv/app")
    engine = make_engine(system)
    try:
        engine.supervise.write_count("RestartCount: 1\n")
        assert "service.run.count" not in "".join(system.files)
        engine.target = APP
        engine.supervise.write_count("RestartCount: 1\n")
        assert system.files["/srv/app/service.run.count"] == b"RestartCount: 1\n"
    finally:
        close_engine(engine)


def test_script_steps_know_whether_a_shutdown_script_waits():
    system = FakeSystem()
    engine = make_engine(system)
    try:
        assert not engine.scripts.shutdown_scripts()
        system.add_script("/etc/my_init.post_shutdown.d/flush")
        assert engine.scripts.shutdown_scripts()
    finally:
        close_engine(engine)
