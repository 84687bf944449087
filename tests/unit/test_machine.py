"""The engine driven through table.TRANSITIONS with a FakeSystem.

Every test builds an Engine on the fake (never ``run()``: no signal handlers, no
control socket) and plays the event loop by hand: child exits, deadlines, signals and
srvctl requests.  Each transition taken and each guard outcome lands in the module's
TAKEN / GUARD_OUTCOMES sets; ``test_every_transition_and_guard_outcome_was_exercised``
(last in this file) fails if a row of the table was never taken.
"""

import errno
import json
import os
import re
import sys
import signal

import pytest

from fsm_init import engine as engine_module
from fsm_init.config import workcfg as config
from fsm_init.core import reaper, table
from fsm_init.network import firewall, pppoe, ssh

from .fakes import (Exec, FakeSystem, Harness, ProcessReplaced, close_loop, exited, killed, make_settings,
                    table_rows)

TAKEN: set = set()
GUARD_OUTCOMES: set = set()

SRV = "/srv/app"
MARKER = "/var/lib/fsm-init/target"
COUNT = f"{SRV}/service.run.count"
RUN = ["./run.sh"]
STOP_ROW = next(i for i, row in enumerate(table.TRANSITIONS) if row["trigger"] == "stop")
STOP_PATH = list(table.STOP_PATH)
REAL_HAND_OVER = reaper.hand_over


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_real_exec(monkeypatch):
    """A unit test must never replace the test process."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"real os.execve{args[:2]} in a unit test")
    monkeypatch.setattr(os, "execve", refuse)


@pytest.fixture(autouse=True)
def handovers(monkeypatch):
    """reaper.hand_over execs the thin reaper with os.execve: stand in for a failed exec."""
    calls = []
    monkeypatch.setattr(reaper, "hand_over", lambda system, loop, state: calls.append(state["pid"]))
    return calls


@pytest.fixture(autouse=True)
def listens(monkeypatch):
    """The control socket is not behind System: keep it off the real file system."""
    calls = []

    def listen(path, loop, handler):
        calls.append(path)
        return None
    monkeypatch.setattr(engine_module.ControlServer, "listen", staticmethod(listen))
    return calls


@pytest.fixture
def make():
    """make(workcfg, scripts=..., ...) -> Harness for service "app" under /srv."""
    made = []

    def factory(workcfg=None, *, scripts=("run.sh",), name="app", marker=None, environ=None,
                command=None, system=None, **settings):
        fake = system or FakeSystem()
        if name:
            fake.add_dir(f"/srv/{name}")
            if workcfg is not None:
                raw = workcfg if isinstance(workcfg, (str, bytes)) else json.dumps(workcfg)
                fake.add_file(f"/srv/{name}/workcfg.json", raw)
            for script in scripts:
                fake.add_script(f"/srv/{name}/{script}")
        if marker:
            fake.add_file(MARKER, marker + "\n")
        env = {"SRVNAME": name or "nothing-here", "PATH": "/usr/bin:/bin"}
        env.update(environ or {})
        harness = Harness(fake, make_settings(**settings), env, command)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        TAKEN.update(harness.taken)
        GUARD_OUTCOMES.update(harness.guards)
        harness.close()


def cfg(**values) -> dict:
    """A workcfg.json without the default 3 s initdelay unless asked for."""
    return {"initdelay": 0, "workstart": "./run.sh", **values}


def service_pid(h: Harness) -> int:
    assert h.engine.service.instance is not None, f"no service instance in state {h.state}"
    return h.engine.service.instance.pid


def spawned(h: Harness) -> list[list[str]]:
    return [s.argv for s in h.system.spawns]


def taken_rows(h: Harness) -> set:
    return {(source, trigger, dest) for _, source, trigger, dest in h.taken}


def in_check(make, *, st=("PeriodicST-a",), extra=(), **values) -> Harness:
    """A status-check service (workwatch 30, workintvl 5) that has just entered its first check."""
    h = make(cfg(workwatch=30, workintvl=5, **values), scripts=("run.sh", *st, *extra))
    h.begin()
    assert h.state == "restart_interval"
    h.advance(5)
    assert h.state == "check", h.states
    return h


def pass_check(h: Harness, name: str = "PeriodicST-a", took: float = 1.0) -> None:
    """The running check script takes took seconds and exits 0."""
    h.advance(took)
    h.exit(script_pid(h, name), exited(0))


def script_pid(h: Harness, name: str) -> int:
    pids = [s.pid for s in h.system.spawns if s.argv == [f"{SRV}/{name}"]]
    assert pids, f"{name} was never spawned: {spawned(h)}"
    return pids[-1]


# -- the boot path --------------------------------------------------------------------------------


def test_boot_path_runs_every_step_in_order(make):
    h = make(cfg())
    h.begin()
    assert h.states == ["boot", "startup_scripts", "resolve_target", "custom_init", "env_resume", "daemons",
                        "load_config", "firewall", "ssh", "pppoe", "start", "foreground"]
    assert h.system.chdirs == [SRV]
    assert h.system.files[MARKER] == b"app\n"
    assert spawned(h) == [RUN]
    assert h.system.files[COUNT] == b"RestartCount: 1\nNone-Daemoned\n"
    assert h.engine.target.first_start is True


def test_service_gets_the_effective_config_and_the_environment(make):
    h = make(cfg(custom={"x": 1}), environ={"TZ": "UTC"})
    h.begin()
    env = h.system.spawns[0].env
    assert env["TZ"] == "UTC" and env["SRVNAME"] == "app"
    srvcfg = json.loads(env["SRVCFG"])
    assert srvcfg == h.engine.config
    assert srvcfg["custom"] == {"x": 1} and srvcfg["workintvl"] == 5
    assert " " not in env["SRVCFG"]  # compact


def _imginit_by_default(environ: dict) -> Harness:
    fake = FakeSystem()
    fake.add_dir("/srv/imginit")
    fake.add_file("/srv/imginit/workcfg.json", json.dumps(cfg(workwatch=30)))
    fake.add_script("/srv/imginit/run.sh")
    return Harness(fake, make_settings(), environ)


def test_imginit_serving_by_default_puts_no_srvcfg_in_the_environment():
    h = _imginit_by_default({"PATH": "/usr/bin:/bin"})
    try:
        h.begin()
        assert h.engine.target.default and h.system.spawns[0].argv == ["./run.sh"]
        assert "SRVCFG" not in h.system.spawns[0].env
    finally:
        h.close()


def test_a_given_srvcfg_reaches_the_service_of_imginit_by_default():
    h = _imginit_by_default({"PATH": "/usr/bin:/bin", "SRVCFG": json.dumps(cfg(workwatch=30, tag="given"))})
    try:
        h.begin()
        assert json.loads(h.system.spawns[0].env["SRVCFG"])["tag"] == "given"
    finally:
        h.close()


def test_the_services_srvcfg_has_the_passwords_masked(make):
    h = make(cfg(workwatch=30, sshsrv={"rootpwd": "R00t-Secret"}, inetdail={"dialpswd": "Dial-Secret"}),
             scripts=("run.sh", "PeriodicST-a"))
    h.begin()
    h.advance(5)
    for spawn in h.system.spawns:
        if "SRVCFG" in spawn.env:
            assert "Secret" not in spawn.env["SRVCFG"], spawn.argv
            assert json.loads(spawn.env["SRVCFG"])["sshsrv"]["rootpwd"] == config.MASK
    assert any(s.argv == [f"{SRV}/PeriodicST-a"] for s in h.system.spawns)


def test_custom_init_replaces_fsm_init(make):
    h = make(cfg(), scripts=("run.sh", "init.sh"), environ={"A": "1"})
    with pytest.raises(ProcessReplaced):
        h.begin()
    assert h.system.execs == [Exec([f"{SRV}/init.sh"], h.engine.environ, None)]
    assert h.system.spawns == []


def test_a_command_line_runs_where_fsm_init_was_started_and_workstart_in_the_target(make):
    fake = FakeSystem()
    fake.add_dir("/app")
    fake.chdir("/app")  # the image's WORKDIR
    h = make(cfg(), command=["./manage.py", "serve"], system=fake)
    h.begin()
    assert h.system.spawns[-1].argv == ["./manage.py", "serve"] and h.system.spawns[-1].cwd == "/app"
    h2 = make(cfg())
    h2.begin()
    assert h2.system.spawns[-1].argv == RUN and h2.system.spawns[-1].cwd is None and h2.system.cwd == SRV


def test_srvcfg_passwords_reach_init_sh_but_no_other_child(make):
    given = '{"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "sshsrv": {"rootpwd": "R00t-Secret"}}'
    h = make(cfg(), scripts=("run.sh", "EnvResume-a", "init.sh"), environ={"SRVCFG": given})
    with pytest.raises(ProcessReplaced):
        h.begin()
    assert h.system.execs[0].env["SRVCFG"] == given
    h2 = make(None, scripts=("run.sh", "EnvResume-a"), environ={"SRVCFG": given})
    h2.system.add_script("/etc/service/cron/run")
    h2.system.add_dir("/etc/container_environment")
    h2.begin()
    h2.exit(script_pid(h2, "EnvResume-a"), exited(0))
    assert h2.state == "watch" and len(h2.system.spawns) == 3
    for spawn in h2.system.spawns:
        assert "Secret" not in spawn.env["SRVCFG"], spawn.argv
    assert b"Secret" not in h2.system.files["/etc/container_environment/SRVCFG"]
    assert h2.system.files[f"{SRV}/workcfg.json"] == given.encode(), "load_config still gets it whole"


def test_custom_init_that_cannot_exec_lets_fsm_init_carry_on(make, listens):
    h = make(cfg(), scripts=("run.sh", "init.sh"))
    h.system.exec_error = OSError(errno.ENOEXEC, "Exec format error")
    h.begin()
    assert [e.argv for e in h.system.execs] == [[f"{SRV}/init.sh"]]
    assert h.state == "foreground"
    assert listens == [h.engine.settings.control_socket]  # the control socket is opened again


def test_non_executable_init_sh_is_ignored(make):
    h = make(cfg())
    h.system.add_file(f"{SRV}/init.sh", "#!/bin/sh\n", 0o644)
    h.begin()
    assert h.system.execs == [] and h.state == "foreground"


def test_env_resume_scripts_run_one_at_a_time_in_name_order(make):
    h = make(cfg(), scripts=("run.sh", "EnvResume-2b", "EnvResume-1a", "NotEnvResume-x"))
    h.system.add_file(f"{SRV}/EnvResume-3c", "#!/bin/sh\n", 0o644)  # not executable
    h.begin()
    assert h.state == "env_resume"
    assert spawned(h) == [[f"{SRV}/EnvResume-1a"]]
    h.exit(script_pid(h, "EnvResume-1a"), exited(1))  # a failure is logged, not fatal
    assert h.state == "env_resume"
    assert spawned(h)[-1] == [f"{SRV}/EnvResume-2b"]
    h.exit(script_pid(h, "EnvResume-2b"), exited(0))
    assert h.state == "foreground"
    assert spawned(h) == [[f"{SRV}/EnvResume-1a"], [f"{SRV}/EnvResume-2b"], RUN]


def test_env_resume_time_out_kills_the_script_with_its_session(make):
    h = make(cfg(), scripts=("run.sh", "EnvResume-1"))
    h.begin()
    pid = script_pid(h, "EnvResume-1")
    grandchild = h.system.add_process(ppid=pid)
    h.advance(59.9)
    assert h.state == "env_resume" and h.system.kills == []
    h.advance(0.1)
    assert signal.SIGKILL in h.system.signals_to(pid)
    assert signal.SIGKILL in h.system.signals_to(grandchild)
    assert h.state == "foreground"


def test_env_resume_script_that_cannot_execute_is_skipped(make):
    h = make(cfg(), scripts=("run.sh", "EnvResume-1"))
    h.system.spawn_errors[f"{SRV}/EnvResume-1"] = errno.EACCES
    h.begin()
    assert h.state == "foreground"


# -- delay ----------------------------------------------------------------------------------------


def test_delay_on_the_first_start(make):
    h = make(cfg(initdelay=5))
    h.begin()
    assert h.state == "delay"
    assert h.deadline("state") == h.system.clock + 5
    h.advance(4.9)
    assert h.state == "delay" and h.system.spawns == []
    h.advance(0.1)
    assert h.state == "foreground"
    assert ("delay", "done", "firewall") in taken_rows(h)


def test_no_delay_when_the_container_restarts(make):
    h = make(cfg(initdelay=5), marker="app", environ={"SRVNAME": "other"})
    h.begin()
    assert h.engine.target.first_start is False and h.engine.target.name == "app"
    assert "delay" not in h.states and h.state == "foreground"


@pytest.mark.parametrize("workcfg, name", [(cfg(initdelay=0), "app"), (None, None)],
                         ids=["initdelay-0", "no-config"])
def test_no_delay_without_initdelay_or_config(make, workcfg, name):
    h = make(workcfg, name=name, command=["/bin/app"])
    h.begin()
    assert "delay" not in h.states and h.state == "foreground"
    assert ("delay_due", False) in h.guards


def test_restart_request_cuts_the_delay_short(make):
    h = make(cfg(initdelay=600))
    h.begin()
    assert h.state == "delay"
    reply = h.request("restart")
    assert reply["ok"] is True
    assert h.state == "foreground" and h.engine.service.restart_requested is False
    assert ("delay", "restart_request", "firewall") in taken_rows(h)


def test_delay_is_not_repeated_when_the_service_restarts(make):
    h = make(cfg(initdelay=5, workwatch=0))
    h.begin()
    h.advance(5)
    assert h.state == "watch"
    h.exit(service_pid(h), exited(1))
    h.advance(5)  # workintvl
    assert h.state == "watch"
    assert h.states.count("delay") == 1 and h.states.count("load_config") == 2


# -- network steps --------------------------------------------------------------------------------


def test_network_steps_without_a_config_are_skipped(make):
    h = make(None, name=None, command=["/bin/app"])
    h.begin()
    assert h.engine.target.directory is None and h.engine.has_config is False
    assert ["firewall", "ssh", "pppoe"] == [s for s in h.states if s in ("firewall", "ssh", "pppoe")]
    assert h.engine.side_services() == {}
    assert h.system.chdirs == []


def test_enabled_network_steps_report_unavailable(make):
    h = make(cfg(sshsrv={"enable": "yes"}, inetdail={"enable": "YES"}))
    h.begin()
    supporting = h.engine.explain.snapshot()["supporting"]
    assert set(supporting) == {"firewall", "ssh", "pppoe"}
    assert all(text.startswith("unavailable: ") for text in supporting.values())
    assert h.state == "foreground"


def test_disabled_network_steps_are_left_alone(make):
    h = make(cfg(firewall={"enable": "no"}))
    h.begin()
    assert h.engine.side_services() == {}
    assert h.state == "foreground"


# -- idle -----------------------------------------------------------------------------------------


def test_idle_without_workstart_reads_the_config_again(make):
    h = make({"initdelay": 0})
    h.begin()
    assert h.state == "idle" and h.system.spawns == []
    assert h.system.files[COUNT] == b"RestartCount: 1\nInternal-Delay( 600 )\n"
    h.advance(600)
    assert h.state == "idle" and h.engine.service.run_count == 2
    assert h.states[-6:] == ["idle", "load_config", "firewall", "ssh", "pppoe", "idle"]
    h.system.add_file(f"{SRV}/workcfg.json", json.dumps(cfg()))
    h.advance(600)
    assert h.state == "foreground" and spawned(h) == [RUN]


def test_restart_request_cuts_idle_short(make):
    h = make({"initdelay": 0})
    h.begin()
    h.system.add_file(f"{SRV}/workcfg.json", json.dumps(cfg()))
    reply = h.request("restart")
    assert reply["ok"] is True
    assert h.state == "foreground"
    assert ("idle", "restart_request", "load_config") in taken_rows(h)


# -- start: the three modes -----------------------------------------------------------------------


def test_non_daemon_service_owns_the_terminal(make):
    fake = FakeSystem()
    fake.tty = 0
    h = make(cfg(), system=fake)
    h.begin()
    pid = service_pid(h)
    assert h.state == "foreground"
    assert h.system.spawns[0].tty_fd == 0
    assert h.system.terminal_grants == [(0, pid)]
    assert h.engine.service.instance.group.by_session is False
    assert h.engine.mode.kind == "non-daemon"


def test_daemon_mode_watches_without_check_cycles(make):
    fake = FakeSystem()
    fake.tty = 0
    h = make(cfg(workwatch=0), system=fake)
    h.begin()
    assert h.state == "watch"
    assert "cycle" not in h.engine.loop.pending()
    assert h.system.spawns[0].tty_fd is None and h.engine.service.instance.group.by_session is True
    assert h.system.files[COUNT] == b"RestartCount: 1\nWith-Daemoned( Delay: 5 )\n"
    h.advance(3600)
    assert h.state == "watch" and len(h.system.spawns) == 1


def test_status_check_mode_waits_workintvl_before_the_first_check(make):
    h = make(cfg(workwatch=30, workintvl=7), scripts=("run.sh", "PeriodicST-a"))
    h.begin()
    assert h.state == "restart_interval"
    assert h.deadline("state") == h.system.clock + 7
    h.advance(6.9)
    assert h.state == "restart_interval"
    h.advance(0.1)
    assert h.states[-3:] == ["restart_interval", "watch", "check"]  # the first cycle at once
    anchor = h.system.clock
    pass_check(h)
    assert h.state == "watch"
    assert h.deadline("cycle") == anchor + 30
    assert h.system.files[COUNT] == b"RestartCount: 1\nStatus-Monitored( Delay: 7, Periodic: 30, MCount: 1 )\n"


def test_command_line_replaces_workstart(make):
    h = make(cfg(workstart="./other"), command=["/opt/app", "--flag", "two words"])
    h.begin()
    assert spawned(h) == [["/opt/app", "--flag", "two words"]]


def test_workstart_array_is_the_exact_argv(make):
    h = make(cfg(workstart=["./run.sh", "a b", "$HOME"]))
    h.begin()
    assert spawned(h) == [["./run.sh", "a b", "$HOME"]]


def test_workstart_that_is_not_executable_runs_do_nothing(make):
    h = make(cfg(workstart="./missing --x"))
    h.begin()
    spawn = h.system.spawns[0]
    assert spawn.argv == ["DoNothing", "600"]
    assert spawn.executable and spawn.executable.endswith("sleep")
    assert h.state == "foreground"


# -- spawn failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("code, status", [(errno.ENOENT, 127), (errno.EACCES, 126)])
def test_non_daemon_spawn_failure_is_the_exit_status(make, code, status):
    h = make(None, name=None, command=["/no/such/program"])
    h.system.spawn_errors["/no/such/program"] = code
    h.begin()
    assert h.states[-7:] == ["start", *STOP_PATH]
    assert h.engine.exit_status == status and h.engine.loop.stopped


@pytest.mark.parametrize("first_line, hint", [
    ("#!/bin/sh\r\n", "its #! line ends in a carriage return (Windows line endings)"),
    ("#!/usr/bin/python9 -u\n", "its #! interpreter '/usr/bin/python9' is not there")])
def test_a_workstart_whose_interpreter_is_missing_says_so(make, capfd, first_line, hint):
    h = make(cfg(), scripts=())
    h.system.add_file(f"{SRV}/run.sh", first_line + "echo hi\n", 0o755)
    h.system.spawn_errors["./run.sh"] = errno.ENOENT
    h.begin()
    assert h.engine.exit_status == 127
    assert f"cannot execute ./run.sh: No such file or directory; {hint} (status 127)" in capfd.readouterr().err


def test_supervised_spawn_failure_retries_after_workintvl(make):
    h = make(cfg(workwatch=0, workintvl=4))
    h.system.spawn_errors["./run.sh"] = errno.ENOENT
    h.begin()
    assert h.state == "restart_interval" and h.engine.service.instance is None
    assert h.engine.service.last_exit == 127
    h.advance(4)
    assert h.state == "restart_interval" and h.engine.service.run_count == 2
    del h.system.spawn_errors["./run.sh"]
    h.advance(7.9)
    assert h.state == "restart_interval", "the second failure in a row waits twice as long"
    h.advance(0.1)
    assert h.state == "watch" and spawned(h) == [RUN]
    assert ("restart_interval", "done", "load_config") in taken_rows(h)


# -- foreground (non-daemon) ----------------------------------------------------------------------


@pytest.mark.parametrize("status, code", [(exited(0), 0), (exited(3), 3), (killed(signal.SIGSEGV), 139)])
def test_foreground_service_exit_is_fsm_init_exit(make, status, code):
    h = make(cfg())
    h.begin()
    h.exit(service_pid(h), status)
    assert h.states[-7:] == ["foreground", *STOP_PATH]
    assert h.engine.exit_status == code and h.engine.loop.stopped


def test_teardown_terminates_then_kills_leftovers(make):
    h = make(cfg(), leftover_grace=2.0)
    h.begin()
    pid = service_pid(h)
    polite = h.system.add_process(ppid=pid, sid=999, pgid=999)  # daemonised: a session of its own
    stubborn = h.system.add_process(ppid=pid, sid=998, pgid=998)
    h.system.stubborn(stubborn)
    h.exit(pid, exited(0))
    assert h.state == "teardown"
    assert h.system.signals_to(polite) == [signal.SIGTERM] and not h.system.alive(polite)
    assert h.system.signals_to(stubborn) == [signal.SIGTERM]
    h.advance(1.9)
    assert h.state == "teardown"
    h.advance(0.1)
    assert h.system.signals_to(stubborn) == [signal.SIGTERM, signal.SIGKILL]
    assert h.state == "exited" and h.engine.exit_status == 0


def test_leftovers_of_a_subreaper_are_only_its_descendants(make):
    fake = FakeSystem(pid=4242)
    stranger = fake.add_process(ppid=1, sid=1)
    h = make(cfg(), system=fake)
    h.begin()
    pid = service_pid(h)
    orphan = h.system.add_process(ppid=pid, sid=777)
    h.exit(pid, exited(0))
    assert h.state == "exited"
    assert h.system.signals_to(orphan) == [signal.SIGTERM]
    assert h.system.signals_to(stranger) == []


def test_settled_service_is_handed_over_to_the_thin_reaper(make, handovers):
    h = make(cfg(), handover_after=1.0)
    h.begin()
    assert h.deadline("state") == h.system.clock + 1.0
    h.advance(1.0)
    assert h.state == "handover" and handovers == [service_pid(h)]
    h.exit(service_pid(h), exited(5))
    assert h.states[-3:] == ["handover", "teardown", "exited"]
    assert h.engine.exit_status == 5


def test_no_handover_when_disabled(make, handovers):
    h = make(cfg(), handover_after=0.0)
    h.begin()
    h.advance(3600)
    assert h.state == "foreground" and handovers == []


@pytest.mark.parametrize("settle", [False, True], ids=["foreground", "handover"])
def test_restart_is_refused_in_non_daemon_mode(make, settle):
    h = make(cfg())
    h.begin()
    if settle:
        h.advance(1.0)
    before = h.state
    reply = h.request("restart")
    assert reply["ok"] is False and "non-daemon" in reply["message"]
    assert h.state == before and h.system.kills == []


@pytest.mark.parametrize("tty", [None, 0], ids=["session", "terminal-group"])
def test_hup_is_forwarded_to_the_service_group(make, tty):
    fake = FakeSystem()
    fake.tty = tty
    h = make(cfg(), system=fake)
    h.begin()
    pid = service_pid(h)
    member = h.system.add_process(ppid=pid)  # same session and process group
    outsider = h.system.add_process(ppid=1, sid=1, pgid=1)
    h.signal(signal.SIGHUP)
    assert h.system.signals_to(pid) == [signal.SIGHUP]
    assert h.system.signals_to(member) == [signal.SIGHUP]
    assert h.system.signals_to(outsider) == []
    assert h.state == "foreground"


def test_signals_with_no_service_are_dropped(make):
    h = make({"initdelay": 0})
    h.begin()
    h.signal(signal.SIGUSR1)
    assert h.state == "idle" and h.system.kills == []


# -- daemon mode ----------------------------------------------------------------------------------


def test_daemon_exit_restarts_after_workintvl(make):
    h = make(cfg(workwatch=0, workintvl=5))
    h.begin()
    first = service_pid(h)
    h.exit(first, exited(1))
    assert h.states[-3:] == ["watch", "restart", "restart_interval"]
    assert h.engine.service.instance is None and h.engine.service.last_exit == 1
    h.advance(4.9)
    assert len(h.system.spawns) == 1
    h.advance(0.1)
    assert h.state == "watch" and len(h.system.spawns) == 2 and service_pid(h) != first
    status = h.engine.explain.snapshot()
    assert status["run_count"] == 2 and status["restarts"] == 1 and status["last_exit"] == 1
    assert ("restart", "group_gone", "restart_interval") in taken_rows(h)


def test_daemon_exit_stops_the_rest_of_its_session(make):
    h = make(cfg(workwatch=0), stop_grace=5.0)
    h.begin()
    pid = service_pid(h)
    worker = h.system.add_process(ppid=pid)
    h.system.stubborn(worker)
    h.exit(pid, exited(0))
    assert h.state == "restart"
    assert h.system.signals_to(worker) == [signal.SIGTERM]
    h.advance(5)
    assert h.system.signals_to(worker) == [signal.SIGTERM, signal.SIGKILL]
    assert h.state == "restart_interval"


def test_operator_restart_rereads_the_config_at_once(make):
    h = make(cfg(workwatch=0), scripts=("run.sh", "run2.sh"))
    h.begin()
    first = service_pid(h)
    h.system.add_file(f"{SRV}/workcfg.json", json.dumps(cfg(workwatch=0, workstart="./run2.sh")))
    reply = h.request("restart")
    assert reply["ok"] is True
    assert h.system.signals_to(first) == [signal.SIGTERM]
    assert h.state == "watch"
    assert spawned(h) == [RUN, ["./run2.sh"]]
    assert "restart_interval" not in h.states
    assert ("restart", "group_gone", "load_config") in taken_rows(h)
    assert h.engine.service.restart_requested is False


def test_restart_kills_a_service_that_ignores_sigterm(make):
    h = make(cfg(workwatch=0), stop_grace=5.0)
    h.begin()
    pid = service_pid(h)
    h.system.stubborn(pid)
    h.request("restart")
    assert h.state == "restart"
    h.advance(4.9)
    assert h.system.signals_to(pid) == [signal.SIGTERM]
    h.advance(0.1)
    assert h.system.signals_to(pid) == [signal.SIGTERM, signal.SIGKILL]
    assert h.state == "watch" and len(h.system.spawns) == 2


def test_hup_is_forwarded_to_a_daemon_session(make):
    h = make(cfg(workwatch=0))
    h.begin()
    pid = service_pid(h)
    member = h.system.add_process(ppid=pid)
    h.signal(signal.SIGHUP)
    assert h.system.signals_to(pid) == [signal.SIGHUP] == h.system.signals_to(member)
    assert h.state == "watch"


# -- status-check mode ----------------------------------------------------------------------------


def test_passing_checks_return_to_watch(make):
    h = in_check(make, st=("PeriodicST-a", "PeriodicST-b"), extra=("PeriodicRT-r", "PeriodicMT-m"))
    anchor = h.system.clock
    assert spawned(h)[1:] == [[f"{SRV}/PeriodicRT-r"], [f"{SRV}/PeriodicST-a"]]
    env = h.system.spawns[-1].env
    assert env["SMCNT"] == "1" and env["PERDC"] == "30" and json.loads(env["SRVCFG"])["workwatch"] == 30
    h.advance(1)
    h.exit(script_pid(h, "PeriodicST-a"), exited(0))
    assert h.state == "check" and spawned(h)[-1] == [f"{SRV}/PeriodicST-b"]
    h.advance(1)
    h.exit(script_pid(h, "PeriodicST-b"), exited(0))
    assert h.state == "watch"
    assert spawned(h)[-1] == [f"{SRV}/PeriodicMT-m"]
    assert h.deadline("cycle") == anchor + 30
    checks = h.engine.explain.snapshot()["checks"]
    assert [(c["name"], c["exit"]) for c in checks] == [("PeriodicST-a", 0), ("PeriodicST-b", 0)]
    h.advance(30 - 2)
    assert h.state == "check" and h.engine.checks.cycle_count == 2


def test_failed_check_restarts_the_service(make):
    h = in_check(make, st=("PeriodicST-a", "PeriodicST-b"), extra=("PeriodicMT-m",))
    pid = service_pid(h)
    h.exit(script_pid(h, "PeriodicST-a"), exited(2))
    assert h.states[-3:] == ["check", "restart", "restart_interval"]
    assert h.system.signals_to(pid) == [signal.SIGTERM]
    assert f"{SRV}/PeriodicST-b" not in sum(spawned(h), [])
    assert f"{SRV}/PeriodicMT-m" not in sum(spawned(h), [])
    assert h.engine.service.last_checks[-1].exit == 2
    assert ("check", "checks_done", "restart") in taken_rows(h)
    h.advance(5)  # workintvl, then a fresh start and another workintvl
    assert h.state == "restart_interval" and h.engine.service.instance is not None and h.engine.service.run_count == 2


@pytest.mark.parametrize("worktimeout, timeout", [(10, 10), (None, 30)], ids=["worktimeout", "period"])
def test_timed_out_check_is_killed_with_its_session(make, worktimeout, timeout):
    values = {"worktimeout": worktimeout} if worktimeout else {}
    h = in_check(make, **values)
    script = script_pid(h, "PeriodicST-a")
    grandchild = h.system.add_process(ppid=script)
    assert h.deadline("script") == h.system.clock + timeout
    h.advance(timeout - 0.1)
    assert h.state == "check"
    h.advance(0.1)
    assert h.system.signals_to(script) == [signal.SIGKILL]
    assert h.system.signals_to(grandchild) == [signal.SIGKILL]
    assert h.engine.service.last_checks[-1].exit is None
    assert "restart" in h.states[-3:]


def test_restart_request_during_a_check_abandons_the_script(make):
    h = in_check(make)
    script = script_pid(h, "PeriodicST-a")
    reply = h.request("restart")
    assert reply["ok"] is True
    assert h.system.signals_to(script) == [signal.SIGKILL]
    assert "script" not in h.engine.loop.pending()
    assert ("check", "restart_request", "restart") in taken_rows(h)
    assert h.state == "restart_interval" and h.engine.service.instance is not None  # started again at once
    assert h.states.count("start") == 2


def test_restart_request_while_waiting_for_the_first_check(make):
    h = make(cfg(workwatch=30, workintvl=5))
    h.begin()
    first = service_pid(h)
    assert h.request("restart")["ok"] is True
    assert ("restart_interval", "restart_request", "restart") in taken_rows(h)
    assert h.system.signals_to(first) == [signal.SIGTERM]
    assert h.state == "restart_interval" and service_pid(h) != first


def test_restart_request_while_waiting_to_restart(make):
    h = in_check(make)
    h.exit(script_pid(h, "PeriodicST-a"), exited(1))
    assert h.state == "restart_interval" and h.engine.service.instance is None
    assert h.request("restart")["ok"] is True
    assert ("restart_interval", "restart_request", "load_config") in taken_rows(h)
    assert h.state == "restart_interval" and h.engine.service.instance is not None


def test_restart_request_in_watch(make):
    h = in_check(make)
    pass_check(h)
    assert h.state == "watch"
    assert h.request("restart")["ok"] is True
    assert ("watch", "restart_request", "restart") in taken_rows(h)
    assert h.state == "restart_interval" and h.states.count("start") == 2


def test_service_exit_in_status_check_mode_is_left_to_the_checks(make):
    h = in_check(make)
    pass_check(h)
    h.exit(service_pid(h), exited(1))
    assert h.state == "watch"
    assert ("daemon_mode", False) in h.guards


def test_background_script_is_not_started_twice(make):
    h = in_check(make, extra=("PeriodicRT-r",))
    assert spawned(h).count([f"{SRV}/PeriodicRT-r"]) == 1
    pass_check(h)
    h.advance(29)
    assert h.state == "check" and h.engine.checks.cycle_count == 2
    assert spawned(h).count([f"{SRV}/PeriodicRT-r"]) == 1  # still running: not started again
    pass_check(h)
    h.exit(script_pid(h, "PeriodicRT-r"), exited(0))
    h.advance(29)
    assert h.engine.checks.cycle_count == 3
    assert spawned(h).count([f"{SRV}/PeriodicRT-r"]) == 2


def test_cycles_run_at_a_fixed_rate(make):
    h = in_check(make, worktimeout=100)
    anchor = h.system.clock
    h.advance(45)  # slower than the 30 s period
    h.exit(script_pid(h, "PeriodicST-a"), exited(0))
    assert h.state == "watch"
    assert h.deadline("cycle") == anchor + 60


# -- the stop path --------------------------------------------------------------------------------


def _boom(*args, **kwargs):
    raise RuntimeError("injected fault")


def reach_boot(make, mp):
    h = make(cfg())
    h.signal(signal.SIGTERM)
    return h


def reach_fault(state, make, mp):
    """An internal error while in state: the engine stops in order rather than dying."""
    values = {"sshsrv": {"enable": "yes"}, "inetdail": {"enable": "yes"}}
    h = make(cfg(**values), scripts=("run.sh", "init.sh") if state == "custom_init" else ("run.sh",))
    fault = RuntimeError(f"injected fault in {state}")
    if state == "resolve_target":
        h.system.fail("read_bytes", fault, MARKER)
    elif state == "custom_init":
        h.system.fail("is_executable", fault, f"{SRV}/init.sh")
    elif state == "load_config":
        h.system.fail("read_bytes", fault, f"{SRV}/workcfg.json")
    elif state == "start":
        h.system.fail("spawn", fault, "./run.sh")
    else:
        target, attr = {"firewall": (firewall.Firewall, "apply"), "ssh": (ssh, "spec"), "pppoe": (pppoe, "spec"),
                        "daemons": (engine_module.Daemons, "start_all")}[state]
        mp.setattr(target, attr, _boom)
    h.begin()
    return h


def reach_startup_scripts(make, mp):
    h = make(cfg())
    h.system.add_script("/etc/my_init.d/10-slow")
    h.begin()
    assert h.state == "startup_scripts"
    h.signal(signal.SIGTERM)
    return h


def reach_env_resume(make, mp):
    h = make(cfg(), scripts=("run.sh", "EnvResume-1"))
    h.begin()
    assert h.state == "env_resume"
    h.signal(signal.SIGTERM)
    return h


def reach_wait(workcfg, state, how=signal.SIGTERM, **kwargs):
    def reach(make, mp):
        h = make(workcfg, **kwargs)
        h.begin()
        if state == "handover":
            h.advance(1.0)
        if state == "check":
            h.advance(5)
        assert h.state == state, h.states
        if how == "srvctl":
            assert h.request("stop")["ok"] is True
        else:
            h.signal(how)
        return h
    return reach


def reach_gave_up(make, action, how):
    """Daemon mode, a service that exits at once, workretry.max 2: the third failure gives up."""
    h = make(cfg(workwatch=0, workintvl=1, workretry={"max": 2, "window": 600, "action": action}))
    h.begin()
    for _ in range(3):
        assert h.state == "watch", h.states
        h.exit(service_pid(h), exited(4))
        if h.state == "restart_interval":
            h.advance(60)
    assert "gave_up" in h.states, h.states
    if how == "srvctl" and h.state == "gave_up":
        assert h.request("stop")["ok"] is True
    return h


def reach_restart(make, mp):
    h = make(cfg(workwatch=0))
    h.begin()
    h.system.stubborn(service_pid(h))
    h.request("restart")
    assert h.state == "restart"
    h.signal(signal.SIGINT)
    return h


STOPS = {
    "boot": reach_boot,
    "startup_scripts": reach_startup_scripts,
    "resolve_target": lambda make, mp: reach_fault("resolve_target", make, mp),
    "custom_init": lambda make, mp: reach_fault("custom_init", make, mp),
    "env_resume": reach_env_resume,
    "daemons": lambda make, mp: reach_fault("daemons", make, mp),
    "load_config": lambda make, mp: reach_fault("load_config", make, mp),
    "delay": reach_wait(cfg(initdelay=5), "delay"),
    "firewall": lambda make, mp: reach_fault("firewall", make, mp),
    "ssh": lambda make, mp: reach_fault("ssh", make, mp),
    "pppoe": lambda make, mp: reach_fault("pppoe", make, mp),
    "idle": reach_wait({"initdelay": 0}, "idle", signal.SIGINT),
    "start": lambda make, mp: reach_fault("start", make, mp),
    "foreground": reach_wait(cfg(), "foreground"),
    "handover": reach_wait(cfg(), "handover", "srvctl"),
    "restart_interval": reach_wait(cfg(workwatch=30), "restart_interval", "srvctl"),
    "watch": reach_wait(cfg(workwatch=0), "watch"),
    "check": reach_wait(cfg(workwatch=30), "check", scripts=("run.sh", "PeriodicST-a")),
    "restart": reach_restart,
    "gave_up": lambda make, mp: reach_gave_up(make, "stay", "srvctl"),
}


# The exit status of each: 0 before any service and on srvctl stop, else the service's 128+S.
STOP_STATUS = dict.fromkeys(STOPS, 0)
STOP_STATUS.update(foreground=143, watch=143, check=143, restart=137)
# Stopped by SIGTERM before any service ran: 128 + 15, as a process TERM ended (tini's 143).
STOP_STATUS.update(dict.fromkeys(("boot", "startup_scripts", "env_resume", "delay"), 143), idle=130)  # idle: SIGINT
# The states reached by an injected fault: an internal error exits 70, never 0.
STOP_STATUS.update(dict.fromkeys(("resolve_target", "custom_init", "daemons", "load_config", "firewall", "ssh",
                                  "pppoe", "start"), 70))


def test_every_stoppable_state_is_listed_here():
    assert sorted(STOPS) == sorted(table.STOPPABLE)


@pytest.mark.parametrize("state", table.STOPPABLE)
def test_stop_from_every_state(make, monkeypatch, state):
    h = STOPS[state](make, monkeypatch)
    assert (STOP_ROW, state, "stop", "pre_shutdown") in h.taken
    h.advance(60)
    assert h.states[-6:] == STOP_PATH, h.states
    assert h.engine.loop.stopped
    assert h.engine.exit_status == STOP_STATUS[state]
    assert not [p for p in h.system.procs if p != h.system.pid], "processes left behind"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_is_sent_to_the_service_and_becomes_128_plus_s(make, sig):
    h = make(cfg())
    h.begin()
    pid = service_pid(h)
    h.signal(sig)
    assert h.system.signals_to(pid) == [sig]
    assert h.states[-6:] == STOP_PATH
    assert h.engine.exit_status == 128 + sig


def test_stop_kills_a_service_that_outlives_the_grace_time(make):
    h = make(cfg(workwatch=0), stop_grace=3.0)
    h.begin()
    pid = service_pid(h)
    h.system.stubborn(pid)
    h.signal(signal.SIGTERM)
    assert h.state == "stopping"
    h.advance(2.9)
    assert h.state == "stopping"
    h.advance(0.1)
    assert h.system.signals_to(pid) == [signal.SIGTERM, signal.SIGKILL]
    assert h.state == "exited" and h.engine.exit_status == 137


def test_stop_waits_for_the_whole_session(make):
    h = make(cfg(workwatch=0))
    h.begin()
    pid = service_pid(h)
    worker = h.system.add_process(ppid=pid)
    h.system.stubborn(worker)
    h.signal(signal.SIGTERM)
    assert not h.system.alive(pid) and h.state == "stopping"
    h.advance(5)
    assert h.system.signals_to(worker) == [signal.SIGTERM, signal.SIGKILL]
    assert h.state == "exited" and h.engine.exit_status == 143


def test_srvctl_stop_exits_0_whatever_the_service_status(make):
    h = make(cfg())
    h.begin()
    reply = h.request("stop")
    assert reply == {"ok": True, "message": "stopping"}
    assert h.engine.service.last_exit == 143
    assert h.state == "exited" and h.engine.exit_status == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_before_any_service_ran_exits_128_plus_it(make, sig):
    """`docker stop` right after `docker run` (a start-up script still running): the
    command never ran, and the container must not look like it succeeded."""
    h = make({"initdelay": 0})
    h.begin()
    h.signal(sig)
    assert h.state == "exited" and h.engine.exit_status == 128 + sig


def test_srvctl_stop_before_any_service_ran_exits_0(make):
    h = make({"initdelay": 0})
    h.begin()
    assert h.request("stop")["ok"] is True
    assert h.state == "exited" and h.engine.exit_status == 0


def test_stop_during_a_stop_is_refused_or_ignored(make):
    h = make(cfg(workwatch=0))
    h.begin()
    h.system.stubborn(service_pid(h))
    h.signal(signal.SIGTERM)
    assert h.state == "stopping"
    assert h.request("stop") == {"ok": False, "message": "already stopping"}
    assert h.request("restart")["ok"] is False
    h.signal(signal.SIGINT)
    assert h.state == "stopping" and h.engine.stop_signal == signal.SIGTERM
    assert h.system.signals_to(service_pid(h)) == [signal.SIGTERM]


def test_status_snapshot(make):
    h = make(cfg(workwatch=0))
    h.begin()
    h.advance(12.5)
    status = h.engine.explain.snapshot()
    assert status["state"] == "watch" and status["mode"] == "daemon" and status["target"] == SRV
    assert status["service_pid"] == service_pid(h) and status["uptime"] == 12.5
    assert status["since"] == 12.5 and status["pid"] == 1
    assert h.request("status") == {"ok": True, "status": h.engine.explain.snapshot()}
    assert h.request("dance")["ok"] is False


# -- defects found while writing these tests (kept failing on purpose) ----------------------------


def test_stop_during_env_resume_starts_no_further_script(make):
    h = make(cfg(), scripts=("run.sh", "EnvResume-1", "EnvResume-2"))
    h.begin()
    assert spawned(h) == [[f"{SRV}/EnvResume-1"]]
    h.signal(signal.SIGTERM)
    h.advance(120)
    assert h.state == "exited"
    assert spawned(h) == [[f"{SRV}/EnvResume-1"]], "a script was started after the stop"


def test_stop_during_a_check_starts_no_further_script(make):
    h = in_check(make, st=("PeriodicST-a", "PeriodicST-b"), extra=("PeriodicMT-m",))
    h.system.stubborn(service_pid(h))  # takes its grace time to stop
    before = spawned(h)
    h.signal(signal.SIGTERM)
    assert h.state == "stopping"
    h.advance(1)
    h.exit(script_pid(h, "PeriodicST-a"), exited(0))  # the check finishes meanwhile
    assert spawned(h) == before, "a check script was started during the stop"


def test_an_internal_error_stops_fsm_init_in_order(make, capfd):
    """Engine._on_error (on_exception): log the error, then take the stop path."""
    h = make(cfg())
    h.system.fail("read_bytes", RuntimeError("disk on fire"), f"{SRV}/workcfg.json")
    h.begin()  # must not raise
    h.advance(10)
    assert h.states[-7:] == ["load_config", *STOP_PATH]
    err = capfd.readouterr().err
    # an internal error never looks like success: EX_SOFTWARE, and the log says why
    assert "internal error" in err and h.engine.exit_status == 70
    assert "exiting with status 70: an internal error (RuntimeError('disk on fire') in state load_config)" in err


def test_an_internal_error_after_srvctl_stop_still_exits_non_zero(make, capfd):
    h = make(cfg())
    h.system.fail("spawn", ValueError("embedded null byte"), "./run.sh")
    h.begin()
    h.advance(10)
    assert h.states[-1] == "exited" and h.engine.exit_status == 70


def test_failed_exec_of_the_service_does_not_leave_it_running_under_a_stopped_loop(make):
    h = make(cfg(), exec_service=True)
    h.system.exec_error = OSError(errno.ENOENT, "No such file or directory")
    h.begin()
    assert [e.argv for e in h.system.execs] == [RUN]
    if h.engine.loop.stopped:
        assert h.engine.exit_status == 127
        assert h.system.spawns == [], "service spawned after the loop was told to stop"
    else:
        assert h.state == "foreground"


def test_exec_service_replaces_fsm_init_in_non_daemon_mode_only(make):
    h = make(cfg(), exec_service=True)
    with pytest.raises(ProcessReplaced):
        h.begin()
    assert h.system.execs[0].argv == RUN and "SRVCFG" in h.system.execs[0].env
    h2 = make(cfg(workwatch=0), exec_service=True)
    h2.begin()
    assert h2.system.execs == [] and h2.state == "watch"


def test_exec_service_is_ignored_while_daemons_need_the_engine(make, capfd):
    h = make(cfg(), exec_service=True)
    h.system.add_script("/etc/service/cron/run")
    h.begin()
    assert h.system.execs == [] and h.state == "foreground" and spawned(h)[-1] == RUN
    assert "FSM_INIT_EXEC_SERVICE ignored" in capfd.readouterr().err


def test_handover_goes_through_the_system_boundary(make, monkeypatch):
    """system.py: every process operation the engine performs goes through System."""
    attempts = []

    def fake_execve(path, argv, env):
        attempts.append(argv)
        raise OSError(errno.ENOEXEC, "refused by the test")
    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.setattr(reaper, "hand_over", REAL_HAND_OVER)
    h = make(cfg())
    h.begin()
    with pytest.raises(ProcessReplaced):
        h.advance(1.0)
    assert h.state == "handover"
    assert h.system.execs[-1].argv[:3] == [os.path.join(os.path.dirname(sys.executable), "fsm-init"), "-I", "-S"]
    assert h.system.execs[-1].executable == sys.executable
    assert attempts == [] and h.system.execs, \
        f"hand-over called os.execve directly ({len(attempts)} time(s)), not System.execve"


def test_a_signal_caught_just_before_the_handover_is_sent_again_for_the_reaper(make, monkeypatch):
    """A SIGHUP caught between the hand-over's decision and the exec waits as a number in
    the wake-up pipe, which the exec would close unread: it is blocked and sent again to
    PID 1 itself before the exec, so it is pending when the thin reaper unblocks it."""
    monkeypatch.setattr(reaper, "hand_over", REAL_HAND_OVER)
    h = make(cfg())
    h.begin()
    os.write(h.engine.loop.wakeup_fd, bytes([signal.SIGHUP, signal.SIGCHLD, signal.SIGHUP]))
    with pytest.raises(ProcessReplaced):
        h.advance(1.0)
    calls = [c for c in h.system.calls if c[0] in ("block_signals", "kill", "execve")]
    assert calls[0][0] == "block_signals" and signal.SIGHUP in calls[0][1]
    assert calls[-1][0] == "execve"
    assert (h.system.pid, signal.SIGHUP) in h.system.kills and \
        [k for k in h.system.kills if k == (h.system.pid, signal.SIGHUP)] == [(h.system.pid, signal.SIGHUP)]


def test_a_failed_handover_unblocks_the_signals_it_held(make, monkeypatch):
    monkeypatch.setattr(reaper, "hand_over", REAL_HAND_OVER)
    h = make(cfg())
    h.system.exec_error = OSError(errno.ENOEXEC, "refused by the test")
    h.begin()
    h.advance(1.0)
    held = [c for c in h.system.calls if c[0] in ("block_signals", "unblock_signals")]
    assert [c[0] for c in held] == ["block_signals", "unblock_signals"] and held[0][1] == held[1][1]


# -- crash-loop policy ---------------------------------------------------------------------------


def test_failure_restarts_back_off_exponentially_up_to_the_cap(make):
    h = make(cfg(workwatch=0, workintvl=2, workbackoff=5))
    h.begin()
    waits = []
    for _ in range(4):
        h.exit(service_pid(h), exited(1))
        assert h.state == "restart_interval"
        waits.append(h.engine.loop.due("state") - h.system.now())
        h.advance(waits[-1])
        assert h.state == "watch"
    assert waits == [2, 4, 5, 5]


def test_back_off_starts_over_after_a_stable_instance(make):
    h = make(cfg(workwatch=0, workintvl=2, workstable=30))
    h.begin()
    for wait in (2, 4):
        h.exit(service_pid(h), exited(1))
        h.advance(wait)
    assert h.engine.service.failures == 2
    h.advance(30)  # the third instance stays up for workstable
    h.exit(service_pid(h), exited(1))
    assert h.engine.service.failures == 1
    assert h.engine.loop.due("state") - h.system.now() == 2


def test_give_up_and_exit_with_the_last_status(make):
    h = reach_gave_up(make, "exit", None)
    assert h.states[-7:] == ["gave_up", *STOP_PATH]
    assert h.engine.exit_status == 4
    assert ("restart", "group_gone", "gave_up") in taken_rows(h)


def test_a_service_whose_checks_never_pass_keeps_backing_off(make):
    """workintvl + the check time-out outlast workstable: time since the start alone
    would reset the back-off at every restart of a service that never worked."""
    h = make(cfg(workwatch=3, workintvl=1, workstable=3), scripts=("run.sh", "PeriodicST-a"))
    h.begin()
    for _ in range(60):
        h.advance(1)
    assert h.engine.service.failures >= 4, h.engine.service.failures


def test_giving_up_never_exits_0_even_when_the_last_status_was(make, capfd):
    """Status-check mode: the start script daemonises and exits 0, the checks fail."""
    h = make(cfg(workwatch=5, workintvl=1, workretry={"max": 1, "window": 600, "action": "exit"}),
             scripts=("run.sh", "PeriodicST-a"))
    h.begin()
    for _ in range(2):
        h.exit(service_pid(h), exited(0))
        h.advance(1)
        assert h.state == "check", h.states
        h.exit(script_pid(h, "PeriodicST-a"), exited(1))
        h.advance(5)
    assert "gave_up" in h.states and h.state == "exited", h.states
    assert h.engine.service.last_exit == 0 and h.engine.exit_status == 1
    assert "exiting with status 1 (the last instance's own status was 0)" in capfd.readouterr().err


def test_give_up_and_stay_up_for_debugging_until_srvctl_restart(make):
    h = reach_gave_up(make, "stay", None)
    assert h.state == "gave_up"
    assert h.request("live")["ok"] is False
    assert h.request("health")["ok"] is False
    assert "srvctl restart" in h.request("why")["message"]
    assert h.request("restart")["ok"] is True
    assert h.state == "watch" and h.engine.service.failures == 0


def test_a_spawn_failure_loop_gives_up_too(make):
    h = make(cfg(workwatch=0, workintvl=1, workretry={"max": 1, "window": 600, "action": "exit"}))
    h.system.spawn_errors["./run.sh"] = errno.ENOENT
    h.begin()
    assert h.state == "restart_interval"
    h.advance(1)
    assert h.states[-7:] == ["gave_up", *STOP_PATH] and h.engine.exit_status == 127
    assert ("start", "spawn_failed", "gave_up") in taken_rows(h)


def test_failures_outside_the_window_do_not_count(make):
    h = make(cfg(workwatch=0, workintvl=1, workbackoff=1, workretry={"max": 2, "window": 10, "action": "exit"}))
    h.begin()
    for _ in range(5):
        h.exit(service_pid(h), exited(1))
        h.advance(1)
        assert h.state == "watch"
        h.advance(10)
    assert "gave_up" not in h.states


def test_why_after_a_failure_restart_says_when_it_started_again_and_why(make):
    h = in_check(make)
    h.exit(script_pid(h, "PeriodicST-a"), exited(1))
    h.advance(5)
    assert h.state == "restart_interval" and h.engine.service.instance is not None, h.states
    text = h.engine.explain.why()
    assert re.match(r"restart_interval: started again at \d\d:\d\d:\d\d after check failed: PeriodicST-a "
                    r"exited 1", text), text


def test_srvctl_restart_names_the_state_it_came_from(make):
    h = make(cfg(workwatch=0))
    h.begin()
    assert h.request("restart") == {"ok": True, "message": "restarting (was watch)"}


# -- my_init: start-up scripts, shutdown scripts, /etc/service daemons, options -------------------

INIT_D = "/etc/my_init.d"
PRE_D, POST_D = "/etc/my_init.pre_shutdown.d", "/etc/my_init.post_shutdown.d"


def spawned_path(h: Harness, path: str) -> int:
    pids = [s.pid for s in h.system.spawns if s.argv == [path]]
    assert pids, f"{path} was never spawned: {spawned(h)}"
    return pids[-1]


def test_startup_scripts_run_in_name_order_then_rc_local_before_the_targets_steps(make):
    h = make(cfg())
    for name in ("20-b", "10-a"):
        h.system.add_script(f"{INIT_D}/{name}")
    h.system.add_file(f"{INIT_D}/15-not-executable", "#!/bin/sh\n", 0o644)
    h.system.add_script("/etc/rc.local")
    h.begin()
    assert h.states == ["boot", "startup_scripts"] and spawned(h) == [[f"{INIT_D}/10-a"]]
    h.exit(spawned_path(h, f"{INIT_D}/10-a"), exited(0))
    assert spawned(h)[-1] == [f"{INIT_D}/20-b"] and h.state == "startup_scripts"
    h.exit(spawned_path(h, f"{INIT_D}/20-b"), exited(0))
    assert spawned(h)[-1] == ["/etc/rc.local"]
    h.exit(spawned_path(h, "/etc/rc.local"), exited(0))
    assert h.state == "foreground" and spawned(h)[-1] == RUN
    assert "resolve_target" in h.states[h.states.index("startup_scripts"):]


def test_what_a_startup_script_writes_to_the_container_environment_reaches_the_next_and_the_service(make):
    h = make(cfg(), environ={"KEEP": "mine"})
    h.system.add_file("/etc/container_environment/FIRST", "1\n")
    h.system.add_script(f"{INIT_D}/10-a")
    h.system.add_script(f"{INIT_D}/20-b")
    h.begin()
    assert h.system.spawns[0].env["FIRST"] == "1"
    h.system.add_file("/etc/container_environment/ADDED", "by 10-a\n")  # what 10-a wrote
    h.exit(spawned_path(h, f"{INIT_D}/10-a"), exited(0))
    assert h.system.spawns[-1].env["ADDED"] == "by 10-a"
    h.system.remove("/etc/container_environment/FIRST")  # 20-b deletes a variable
    h.exit(spawned_path(h, f"{INIT_D}/20-b"), exited(0))
    env = h.system.spawns[-1].env
    assert h.state == "foreground" and env["ADDED"] == "by 10-a" and "FIRST" not in env and env["KEEP"] == "mine"
    assert b"export ADDED='by 10-a'" in h.system.files["/etc/container_environment.sh"]


@pytest.mark.parametrize("status, said", [(exited(3), "exited with status 3"), (killed(signal.SIGSEGV), "exited with status 139")])
def test_a_failing_startup_script_stops_the_start_up_with_exit_1(make, capfd, status, said):
    h = make(cfg())
    h.system.add_dir("/run/fsm-init")
    h.system.add_script(f"{INIT_D}/10-a")
    h.system.add_script(f"{INIT_D}/20-never")
    h.begin()
    h.exit(spawned_path(h, f"{INIT_D}/10-a"), status)
    assert h.states[-3:] == ["startup_scripts", "teardown", "exited"]
    assert h.engine.exit_status == 1 and spawned(h) == [[f"{INIT_D}/10-a"]]
    assert f"start-up script {INIT_D}/10-a {said}: the start-up stops (exit 1)" in capfd.readouterr().err
    journal = [json.loads(line) for line in h.system.files["/run/fsm-init/journal.jsonl"].splitlines()]
    failed = next(e for e in journal if e["trigger"] == "script_failed")
    assert failed["cause"] == f"start-up script {INIT_D}/10-a {said}" and failed["to"] == "teardown"


def test_a_startup_script_past_its_time_out_is_killed_and_stops_the_start_up(make, capfd):
    h = make(cfg(), startup_timeout=30.0)
    h.system.add_script(f"{INIT_D}/10-hangs")
    h.begin()
    pid = spawned_path(h, f"{INIT_D}/10-hangs")
    h.advance(29.9)
    assert h.state == "startup_scripts"
    h.advance(0.1)
    assert signal.SIGKILL in h.system.signals_to(pid)
    assert h.state == "exited" and h.engine.exit_status == 1
    assert "timed out after 30s and was killed" in capfd.readouterr().err


def test_a_startup_script_that_cannot_execute_stops_the_start_up(make):
    h = make(cfg())
    h.system.add_script(f"{INIT_D}/10-a")
    h.system.spawn_errors[f"{INIT_D}/10-a"] = errno.ENOEXEC
    h.begin()
    assert h.state == "exited" and h.engine.exit_status == 1 and spawned(h) == []


def test_skip_startup_files_runs_no_startup_or_shutdown_script(make):
    h = make(cfg(), skip_startup_files=True)
    for path in (f"{INIT_D}/10-a", "/etc/rc.local", f"{PRE_D}/a", f"{POST_D}/a"):
        h.system.add_script(path)
    h.begin()
    h.advance(1)
    assert h.state == "handover", "no script or daemon to run: the thin reaper takes over"
    h.signal(signal.SIGTERM)
    assert spawned(h) == [RUN] and h.state == "exited"


def test_the_init_directory_setting_moves_the_startup_scripts(make):
    h = make(cfg(), init_dir="/opt/init.d")
    h.system.add_script(f"{INIT_D}/10-not-here")
    h.system.add_script("/opt/init.d/10-here")
    h.begin()
    assert spawned(h) == [["/opt/init.d/10-here"]]


def test_pre_shutdown_runs_while_the_service_runs_and_post_shutdown_after_it_is_gone(make):
    h = make(cfg(workwatch=0))
    h.system.add_script(f"{PRE_D}/b")
    h.system.add_script(f"{PRE_D}/a")
    h.system.add_script(f"{POST_D}/z")
    h.begin()
    pid = service_pid(h)
    h.signal(signal.SIGTERM)
    assert h.state == "pre_shutdown" and spawned(h)[-1] == [f"{PRE_D}/a"] and h.system.signals_to(pid) == []
    h.exit(spawned_path(h, f"{PRE_D}/a"), exited(1))  # a failure is reported, the stop goes on
    assert spawned(h)[-1] == [f"{PRE_D}/b"]
    h.exit(spawned_path(h, f"{PRE_D}/b"), exited(0))
    assert h.system.signals_to(pid) == [signal.SIGTERM]
    assert h.state == "post_shutdown" and spawned(h)[-1] == [f"{POST_D}/z"] and not h.system.alive(pid)
    h.exit(spawned_path(h, f"{POST_D}/z"), exited(0))
    assert h.states[-6:] == STOP_PATH and h.engine.exit_status == 143


def test_a_shutdown_script_gets_the_stop_grace_time(make):
    h = make(cfg(), stop_grace=3.0)
    h.system.add_script(f"{PRE_D}/hangs")
    h.begin()
    h.signal(signal.SIGTERM)
    pid = spawned_path(h, f"{PRE_D}/hangs")
    h.advance(2.9)
    assert h.state == "pre_shutdown"
    h.advance(0.1)
    assert signal.SIGKILL in h.system.signals_to(pid) and h.state == "exited"


def test_a_stop_during_a_startup_script_runs_no_further_one_and_no_service(make):
    h = make(cfg())
    h.system.add_script(f"{INIT_D}/10-a")
    h.system.add_script(f"{INIT_D}/20-b")
    h.begin()
    pid = spawned_path(h, f"{INIT_D}/10-a")
    h.signal(signal.SIGTERM)
    assert h.state == "teardown" or h.state == "exited"
    h.advance(5)
    assert spawned(h) == [[f"{INIT_D}/10-a"]] and not h.system.alive(pid) and h.state == "exited"


@pytest.mark.parametrize("what", ["daemon", "watched", "pre_shutdown", "post_shutdown"])
def test_the_thin_reaper_does_not_take_over_while_the_engine_has_more_to_do(make, handovers, what):
    h = make(cfg())
    if what == "watched":  # an empty /etc/service may gain a service at run time
        h.system.add_dir("/etc/service")
    else:
        h.system.add_script({"daemon": "/etc/service/cron/run", "pre_shutdown": f"{PRE_D}/a",
                             "post_shutdown": f"{POST_D}/a"}[what])
    h.begin()
    h.advance(5)
    assert h.state == "foreground" and handovers == []
    assert h.engine.history.guard_results == {"keeps_supervising": True}


def test_srvctl_rescan_starts_a_service_added_to_the_directory(make):
    h = make(cfg(workwatch=0))
    h.system.add_dir("/etc/service")
    h.begin()
    h.system.add_script("/etc/service/cron/run")
    reply = h.request("rescan")
    assert reply == {"ok": True, "message": "rescanned /etc/service (watched): started cron"}
    assert ["/etc/service/cron/run"] in spawned(h)
    assert [d["name"] for d in h.engine.explain.snapshot()["daemons"]] == ["cron"]


def test_srvctl_rescan_with_skip_runit_is_refused(make):
    h = make(cfg(workwatch=0), skip_runit=True)
    h.system.add_script("/etc/service/cron/run")
    h.begin()
    reply = h.request("rescan")
    assert reply["ok"] is False and "--skip-runit" in reply["message"]
    assert ["/etc/service/cron/run"] not in spawned(h)


def test_daemons_start_before_the_service_and_stop_after_it(make):
    h = make(cfg(workwatch=0))
    h.system.add_script("/etc/service/cron/run")
    h.system.add_script("/etc/service/memcached/run")
    h.begin()
    assert spawned(h) == [["/etc/service/cron/run"], ["/etc/service/memcached/run"], RUN]
    assert [s.cwd for s in h.system.spawns[:2]] == ["/etc/service/cron", "/etc/service/memcached"]
    cron, memcached = h.system.spawns[0].pid, h.system.spawns[1].pid
    service = service_pid(h)
    h.system.stubborn(service)
    h.signal(signal.SIGTERM)
    assert h.state == "stopping" and h.system.signals_to(cron) == []
    h.advance(5)
    assert h.state == "exited"
    order = [pid for pid, sig in h.system.kills if sig == signal.SIGTERM and pid in (service, cron, memcached)]
    assert order == [service, memcached, cron]


def test_a_daemons_exit_is_not_the_services(make):
    h = make(cfg())
    h.system.add_script("/etc/service/cron/run")
    h.begin()
    cron = spawned_path(h, "/etc/service/cron/run")
    h.exit(cron, exited(1))
    assert h.state == "foreground" and h.engine.service.last_exit is None
    h.advance(1)
    assert spawned(h)[-1] == ["/etc/service/cron/run"]


def test_skip_runit_starts_no_daemon(make):
    h = make(cfg(), skip_runit=True)
    h.system.add_script("/etc/service/cron/run")
    h.begin()
    assert spawned(h) == [RUN] and h.engine.explain.snapshot()["daemons"] == []


def test_srvctl_verbs_with_a_name_act_on_one_daemon(make):
    h = make(cfg(workwatch=0))
    h.system.add_script("/etc/service/cron/run")
    h.begin()
    cron = spawned_path(h, "/etc/service/cron/run")
    assert h.request("stop", name="cron")["ok"] is True
    assert not h.system.alive(cron) and h.state == "watch" and h.engine.service.instance is not None
    assert h.engine.explain.snapshot()["daemons"][0]["state"] == "down"
    assert h.request("start", name="cron")["ok"] is True
    assert h.engine.explain.snapshot()["daemons"][0]["state"] == "running"
    assert h.request("restart", name="nope") == {
        "ok": False, "message": "no daemon 'nope' in /etc/service (known: cron)"}
    assert h.request("status", name="cron") == {"ok": False, "message": "status does not take a service name"}


def test_a_stop_during_a_startup_script_terms_its_session(make):
    h = make(cfg())
    h.system.add_script(f"{INIT_D}/10-a")
    h.begin()
    pid = spawned_path(h, f"{INIT_D}/10-a")
    h.system.stubborn(pid)
    h.signal(signal.SIGTERM)
    assert h.system.signals_to(pid)[0] == signal.SIGTERM
    h.advance(5)
    assert h.state == "exited" and not h.system.alive(pid)


def test_a_reused_pid_of_the_services_leader_is_not_the_service(make):
    """Status-check mode: the start script exits (the instance lives on), and a daemon
    started later gets the same pid number; its exit is the daemon's."""
    h = make(cfg(workwatch=30), scripts=("run.sh", "PeriodicST-a"))
    h.system.add_script("/etc/service/cron/run")
    h.begin()
    leader = service_pid(h)
    h.exit(leader, exited(0))
    assert h.engine.service.last_exit == 0 and h.engine.service.instance is not None
    h.system.next_pid = leader  # the kernel hands the number out again
    assert h.request("restart", name="cron")["ok"] is True
    assert h.engine.daemons.status()[0]["pid"] == leader
    h.exit(leader, exited(7))
    assert h.engine.service.last_exit == 0 and h.engine.daemons.status()[0]["last_exit"] == 7


def test_the_thin_reaper_refuses_a_daemon_request():
    state = {"pid": 100, "by_session": True, "started": 0.0, "target": None, "run_count": 1, "control_fd": None,
             "quiet": False, "supporting": {}, "proof": 5, "last_transition": {}}
    fake = FakeSystem()
    thin = reaper.Reaper(fake, make_settings(), state)
    try:
        reply = thin.handle_request({"verb": "stop", "name": "cron"})
        assert reply["ok"] is False and "no /etc/service daemon" in reply["message"]
        assert fake.kills == [] and thin.state == "handover"
    finally:
        close_loop(thin.loop)


def test_no_kill_all_on_exit_leaves_leftovers_alone(make, capfd):
    h = make(cfg(), kill_all_on_exit=False)
    h.begin()
    pid = service_pid(h)
    stray = h.system.add_process(ppid=pid, sid=999, pgid=999)
    h.exit(pid, exited(0))
    assert h.state == "exited" and h.system.alive(stray) and h.system.signals_to(stray) == []
    assert "--no-kill-all-on-exit" in capfd.readouterr().err


# -- coverage of the table: keep last in this file ------------------------------------------------


def test_every_transition_and_guard_outcome_was_exercised():
    """Every row of table.TRANSITIONS (each source of `stop`) was taken by a test above,
    and every guard was seen both true and false."""
    expected = set(table_rows())
    assert TAKEN, "no scenario ran before this test: run the whole module"
    assert TAKEN <= expected
    missing = sorted(expected - TAKEN)
    unseen = sorted((g, v) for g in table.GUARDS for v in (True, False) if (g, v) not in GUARD_OUTCOMES)
    report = [f"  row {i}: {source} --{trigger}--> {dest}" for i, source, trigger, dest in missing]
    report += [f"  guard {g} never seen {v}" for g, v in unseen]
    assert not report, "never exercised:\n" + "\n".join(report)


def test_the_thin_reaper_refuses_rescan_and_says_why():
    state = {"pid": 100, "by_session": True, "started": 1000.0, "target": "/srv/app", "run_count": 1,
             "control_fd": None, "supporting": {}, "proof": 10, "last_transition": {}}
    thin = reaper.Reaper(FakeSystem(), make_settings(), state)
    try:
        reply = thin.handle_request({"verb": "rescan"})
    finally:
        close_loop(thin.loop)
    assert reply["ok"] is False
    assert reply["message"].startswith("the thin reaper does not read /etc/service: fsm-init hands over to it only")
def test_a_passing_checks_leftovers_are_killed_and_its_pipes_closed(make):
    """Issue 11, point 8: a background child a check left (holding its stdout) goes when
    the check ends, passed or not; the check's pipes are closed in PID 1 at once."""
    h = in_check(make)
    pid = script_pid(h, "PeriodicST-a")
    output = h.engine.foreground.script.output
    pipes = list(output.readers)
    leftover = h.system.add_process(pid, sid=pid, pgid=pid)
    pass_check(h)
    assert h.state == "watch" and h.engine.service.last_checks[0].passed
    assert signal.SIGKILL in h.system.signals_to(leftover) or (-pid, signal.SIGKILL) in h.system.kills
    assert output.readers == {} and all(fd not in h.engine.loop.selector.get_map() for fd in pipes)
