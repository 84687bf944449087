"""my_init's features with fsm-init as real PID 1 of a fresh PID namespace: start-up
scripts and rc.local, shutdown scripts, runit-style /etc/service daemons and my_init's
options.

Files under /etc go into the sandbox's private overlay over /etc (``Sandbox.etc``), so
fsm-init reads the real default paths and this machine's /etc is never touched.
"""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import (AS_NOBODY, NOBODY, ROOT, SRVCTL, lines, needs_nobody, needs_pid_namespace, wait_for,
                            wait_lines)

pytestmark = [pytest.mark.integration, needs_pid_namespace]

# A value that survives the container environment only if nothing re-quotes or trims it.
VALUE = "it's \"quoted\" $HOME \\ back\\slash\n  second line  "
DAEMON_CFG = {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1}


def appender(out: Path, text: str) -> str:
    return f'echo "{text}" >> {out}\n'


# -- start-up scripts and rc.local ------------------------------------------------------------


def test_startup_scripts_then_rc_local_in_order_before_the_service_with_what_they_export(sandbox):
    order, value_file, seen = sandbox.root / "order", sandbox.root / "value", sandbox.root / "seen"
    value_file.write_text(VALUE)
    env_dir = sandbox.etc("container_environment")
    sandbox.etc("my_init.d/20-second", appender(order, "20") + f'printf %s "$FROM_TEN" > {seen}-by-20\n')
    sandbox.etc("my_init.d/10-first", appender(order, "10") + f"cp {value_file} /etc/container_environment/FROM_TEN\n")
    sandbox.etc("my_init.d/15-not-executable", appender(order, "15"), mode=0o644)
    sandbox.etc("rc.local", appender(order, "rc"))
    run = sandbox.start("--", "sh", "-c", f'printf %s "$FROM_TEN" > {seen}-by-service; echo service >> {order}',
                        FSM_INIT_CONTAINER_ENVIRONMENT="")
    assert run.wait() == 0, run.log
    assert lines(order) == ["10", "20", "rc", "service"]
    assert Path(f"{seen}-by-20").read_text() == VALUE
    assert Path(f"{seen}-by-service").read_text() == VALUE
    sourced = subprocess.run(["sh", "-c", f'. {env_dir}.sh; printf %s "$FROM_TEN"'], capture_output=True, text=True)
    assert sourced.stdout == VALUE
    assert json.loads((env_dir.parent / "container_environment.json").read_text())["FROM_TEN"] == VALUE


def test_why_names_the_startup_script_that_runs(sandbox):
    release = sandbox.root / "release"
    sandbox.etc("my_init.d/10-waits", f"while [ ! -e {release} ]; do sleep 0.05; done\n")
    run = sandbox.start("--", "true")
    run.wait_state("startup_scripts")
    why = run.srvctl("why").stdout
    assert re.match(r"startup_scripts: .*; running 10-waits \(killed at \d\d:\d\d:\d\d if still running\)", why), why
    release.touch()
    assert run.wait() == 0, run.log


def test_a_failing_startup_script_stops_the_start_up_with_exit_1(sandbox):
    order = sandbox.root / "order"
    sandbox.etc("my_init.d/10-fails", appender(order, "10") + "exit 3\n")
    sandbox.etc("my_init.d/20-never", appender(order, "20"))
    sandbox.etc("rc.local", appender(order, "rc"))
    run = sandbox.start("--", "sh", "-c", appender(order, "service"))
    assert run.wait() == 1, run.log
    assert lines(order) == ["10"]
    assert "start-up script /etc/my_init.d/10-fails exited with status 3: the start-up stops (exit 1)" in run.log


def test_a_failing_rc_local_stops_the_start_up_too(sandbox):
    sandbox.etc("rc.local", "exit 2\n")
    run = sandbox.start("--", "true")
    assert run.wait() == 1
    assert "start-up script /etc/rc.local exited with status 2" in run.log


def test_a_startup_script_past_its_time_out_is_killed_and_the_start_up_stops(sandbox):
    started = sandbox.root / "started"
    sandbox.etc("my_init.d/10-hangs", f"echo $$ > {started}\nexec sleep 60\n")
    run = sandbox.start("--", "true", FSM_INIT_STARTUP_TIMEOUT="0.5")
    assert run.wait() == 1, run.log
    assert started.exists()
    assert "start-up script /etc/my_init.d/10-hangs timed out after 0.5s and was killed" in run.log


def test_each_startup_script_is_logged_as_it_runs_with_its_duration(sandbox):
    sandbox.etc("my_init.d/10-quick", "exit 0\n")
    sandbox.etc("my_init.d/20-slower", "sleep 0.3\n")
    sandbox.etc("rc.local", "exit 0\n")
    run = sandbox.start("--", "true")
    assert run.wait() == 0, run.log
    found = re.findall(r"(running start-up script \S+|start-up script \S+ finished in ([\d.]+)s)", run.log)
    assert [text.split(" finished")[0] for text, _ in found] == [
        "running start-up script /etc/my_init.d/10-quick", "start-up script /etc/my_init.d/10-quick",
        "running start-up script /etc/my_init.d/20-slower", "start-up script /etc/my_init.d/20-slower",
        "running start-up script /etc/rc.local", "start-up script /etc/rc.local"], run.log
    assert float(found[3][1]) >= 0.25, run.log  # sleep 0.3, timed from after the spawn, printed to 0.01 s


@pytest.mark.parametrize("grace_variable", ["FSM_INIT_STOP_GRACE", "KILL_PROCESS_TIMEOUT"])
def test_sigterm_during_a_startup_script_gives_it_one_term_and_the_stop_grace(sandbox, grace_variable):
    """As my_init: one SIGTERM, then the grace for the script and what its handler
    starts; before, the leftover sweep sent it a second TERM a few ms later and killed
    the handler's child as a leftover."""
    terms, ready, order = sandbox.root / "terms", sandbox.root / "ready", sandbox.root / "order"
    child = sandbox.root / "child.sh"
    child.write_text(f"#!/bin/sh\ntrap 'echo child-TERM >> {terms}' TERM\nsleep 0.6\necho child-done >> {terms}\n")
    child.chmod(0o755)
    sandbox.etc("my_init.d/10-term", f"trap 'echo TERM >> {terms}; {child} & wait $!; echo handler-done >> {terms}; "
                                     f"exit 0' TERM\ntouch {ready}\nwhile :; do sleep 0.05; done\n")
    sandbox.etc("my_init.d/20-never", appender(order, "20"))
    sandbox.etc("my_init.pre_shutdown.d/10-pre", f'cat {terms} | tr "\\n" " " >> {order}; echo >> {order}\n')
    run = sandbox.start("--", "sh", "-c", appender(order, "service"), **{grace_variable: "5"})
    wait_for(ready.exists, what="the start-up script")
    run.signal(signal.SIGTERM)
    assert run.wait(15) == 143, run.log  # stopped by SIGTERM before any service ran
    assert lines(terms) == ["TERM", "child-done", "handler-done"], run.log
    # The shutdown scripts ran once the script was done, and nothing after it started.
    assert lines(order) == ["TERM child-done handler-done "], run.log
    assert "running start-up script /etc/my_init.d/20-never" not in run.log


def test_a_startup_script_ignoring_sigterm_is_killed_after_the_stop_grace(sandbox):
    ready = sandbox.root / "ready"
    sandbox.etc("my_init.d/10-deaf", f"trap '' TERM\ntouch {ready}\nwhile :; do sleep 0.05; done\n")
    run = sandbox.start("--", "true", KILL_PROCESS_TIMEOUT="1")
    wait_for(ready.exists, what="the start-up script")
    run.signal(signal.SIGTERM)
    started = time.monotonic()
    run.wait_state("pre_shutdown")
    why = run.srvctl("why").stdout
    assert re.search(r"pre_shutdown: .*waiting for the interrupted script's session to end \(SIGKILL at \d\d:", why), why
    run.wait(15)
    assert time.monotonic() - started >= 0.9, run.log
    assert "10-deaf's session outlived the grace time: sent SIGKILL" in run.log, run.log


def test_env_init_directory_moves_the_startup_scripts_and_skip_startup_files_runs_none(sandbox):
    order = sandbox.root / "order"
    moved = sandbox.root / "init.d"
    moved.mkdir()
    (moved / "10-moved").write_text("#!/bin/sh\n" + appender(order, "moved"))
    (moved / "10-moved").chmod(0o755)
    sandbox.etc("my_init.d/10-default", appender(order, "default"))
    sandbox.etc("rc.local", appender(order, "rc"))
    assert sandbox.start("--", "true", ENV_INIT_DIRECTORY=str(moved)).wait() == 0
    assert lines(order) == ["moved", "rc"]
    run = sandbox.start("--skip-startup-files", "--", "true")
    assert run.wait() == 0
    assert lines(order) == ["moved", "rc"]


# -- shutdown scripts --------------------------------------------------------------------------


def test_pre_shutdown_runs_while_the_service_runs_and_post_shutdown_once_it_is_gone(sandbox):
    order, pid_file = sandbox.root / "order", sandbox.root / "service.pid"
    check = f'kill -0 $(cat {pid_file}) 2>/dev/null && echo "$0: service alive" >> {order} || echo "$0: service gone" >> {order}\n'
    sandbox.etc("my_init.pre_shutdown.d/10-pre", check)
    sandbox.etc("my_init.post_shutdown.d/10-post", check)
    service = (f"trap 'echo service: term >> {order}; exit 0' TERM; echo $$ > {pid_file}; "
               "while :; do sleep 0.05; done")
    run = sandbox.start("--", "sh", "-c", service)
    wait_for(pid_file.exists, what="the service")
    run.wait_log(r"starting the service")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log
    assert lines(order) == ["/etc/my_init.pre_shutdown.d/10-pre: service alive", "service: term",
                            "/etc/my_init.post_shutdown.d/10-post: service gone"]
    assert "handing PID duties to the thin reaper" not in run.log  # the engine had the hooks to run


def test_a_failing_shutdown_script_is_reported_and_the_stop_goes_on(sandbox):
    order = sandbox.root / "order"
    sandbox.etc("my_init.pre_shutdown.d/10-fails", appender(order, "pre") + "exit 4\n")
    sandbox.etc("my_init.post_shutdown.d/10-post", appender(order, "post"))
    run = sandbox.start("--", "true")
    assert run.wait() == 0
    assert lines(order) == ["pre", "post"]
    assert "/etc/my_init.pre_shutdown.d/10-fails exited with status 4; carrying on" in run.log


# -- runit-style daemons -------------------------------------------------------------------------


def runit_service(sandbox, name: str, out: Path, *, ignore_term=False, finish=False, down=False) -> None:
    """/etc/service/NAME: run records its pid in NAME.pids and its TERM in ``stopped``."""
    on_term = "trap '' TERM\n" if ignore_term else f"trap 'echo {name} >> {out}/stopped; exit 0' TERM\n"
    # the trap first: a pid in NAME.pids means the daemon is ready for a TERM
    sandbox.etc(f"service/{name}/run", f"{on_term}echo $$ >> {out}/{name}.pids\nwhile :; do sleep 0.05; done\n")
    if finish:
        sandbox.etc(f"service/{name}/finish", f'echo "$1 $2 $(pwd)" >> {out}/{name}.finish\n')
    if down:
        sandbox.etc(f"service/{name}/down", "")


def daemons(run) -> dict:
    return {d["name"]: d for d in run.status()["daemons"]}


def test_runit_services_are_supervised_beside_the_service(sandbox):
    out = sandbox.root
    runit_service(sandbox, "alpha", out, finish=True)
    runit_service(sandbox, "beta", out)
    runit_service(sandbox, "delta", out, ignore_term=True)
    runit_service(sandbox, "gamma", out, down=True)
    sandbox.service("app", DAEMON_CFG, run__sh=f"trap 'echo service >> {out}/stopped; exit 0' TERM\n"
                                               "while :; do sleep 0.05; done\n")
    run = sandbox.start(SRVNAME="app", FSM_INIT_STOP_GRACE="1")
    run.wait_state("watch")
    for name in ("alpha", "beta", "delta"):
        wait_lines(out / f"{name}.pids", 1)
    log = run.log
    assert log.index("daemon alpha started") < log.index("daemon delta started") < log.index("starting the service")
    assert "daemon gamma: /etc/service/gamma/down exists, not started" in log
    found = daemons(run)
    assert found["gamma"]["state"] == "down" and found["gamma"]["down_file"] and not (out / "gamma.pids").exists()
    assert found["alpha"]["state"] == "running" and found["alpha"]["pid"] == int(lines(out / "alpha.pids")[0])
    text = run.srvctl("status").stdout
    assert re.search(rf"daemon: +alpha: running, pid {found['alpha']['pid']}, up \d+s", text), text

    # A killed daemon comes back after the back-off, and finish sees how it ended.
    os.kill(run.host_pid(found["alpha"]["pid"]), signal.SIGKILL)
    assert wait_lines(out / "alpha.finish", 1) == ["-1 9 /etc/service/alpha"]
    wait_lines(out / "alpha.pids", 2)
    assert daemons(run)["alpha"]["restarts"] == 1 and daemons(run)["alpha"]["last_exit"] == 137

    # srvctl acts on one daemon.
    assert run.srvctl("stop", "beta").returncode == 0
    wait_for(lambda: "beta" in lines(out / "stopped"), what="beta's TERM")
    wait_for(lambda: daemons(run)["beta"]["state"] == "down", what="beta down")
    assert run.srvctl("start", "gamma").returncode == 0
    wait_lines(out / "gamma.pids", 1)
    assert run.srvctl("restart", "alpha").returncode == 0
    wait_lines(out / "alpha.pids", 3)
    assert wait_lines(out / "alpha.finish", 2)[1] == "0 0 /etc/service/alpha"
    assert run.srvctl("start", "beta").returncode == 0
    wait_lines(out / "beta.pids", 2)
    unknown = run.srvctl("stop", "nosuch")
    assert unknown.returncode == 1 and "known: alpha, beta, delta, gamma" in unknown.stdout
    assert run.status()["state"] == "watch" and run.status()["restarts"] == 0  # the service was left alone

    # Teardown: the service first, then the daemons one by one in reverse order;
    # delta ignores TERM and is killed after the grace time.
    stopped_before = len(lines(out / "stopped"))
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log
    assert lines(out / "stopped")[stopped_before:] == ["service", "gamma", "beta", "alpha"]
    assert re.search(r"daemon delta's session outlived the grace time: sent SIGKILL to \d+ process", run.log)
    assert run.log.index("daemon delta's session outlived") < run.log.rindex("stopping daemon beta")


def test_skip_runit_starts_no_daemon(sandbox):
    runit_service(sandbox, "alpha", sandbox.root)
    run = sandbox.start("--skip-runit", "--", "true")
    assert run.wait() == 0
    assert not (sandbox.root / "alpha.pids").exists()
    assert "--skip-runit: /etc/service is not read" in run.log


# -- my_init's other options ---------------------------------------------------------------------


@pytest.mark.parametrize("option, signalled", [((), True), (("--no-kill-all-on-exit",), False)])
def test_no_kill_all_on_exit_leaves_leftovers_to_the_kernel(sandbox, option, signalled):
    started, termed = sandbox.root / "started", sandbox.root / "termed"
    leftover = f"trap 'echo term > {termed}; exit 0' TERM; echo ok > {started}; while :; do sleep 0.05; done"
    service = f"setsid sh -c \"{leftover}\" & while [ ! -e {started} ]; do sleep 0.02; done"
    run = sandbox.start(*option, "--", "sh", "-c", service)
    assert run.wait() == 0, run.log
    assert termed.exists() is signalled


def test_kill_process_timeout_is_the_stop_grace(sandbox):
    pid_file = sandbox.root / "pid"
    run = sandbox.start("--", "sh", "-c", f"trap '' TERM; echo $$ > {pid_file}; while :; do sleep 0.05; done",
                        KILL_PROCESS_TIMEOUT="0.5", FSM_INIT_HANDOVER_AFTER="0")
    wait_for(pid_file.exists, what="the service")
    run.signal(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGKILL
    assert "SIGKILL in 0.5s" in run.log and "outlived the grace time" in run.log


def test_srvctl_names_a_daemon_only_for_start_stop_restart(sandbox):
    result = subprocess.run([*SRVCTL, "status", "alpha"], env=sandbox.env(), capture_output=True, text=True)
    assert result.returncode == 2 and "srvctl restart|stop|start NAME" in result.stderr


# -- as a non-root user --------------------------------------------------------------------------


@needs_nobody
def test_startup_scripts_daemons_and_the_environment_as_nobody(nobody_sandbox):
    box, out = nobody_sandbox
    env_dir = box.etc("container_environment")
    os.chown(env_dir, *NOBODY)
    box.etc("my_init.d/10-export", f"id -u > {out}/startup-uid\necho from-startup > /etc/container_environment/FROM_STARTUP\n")
    box.etc("service/alpha/run", f'echo "$(id -u) $FROM_STARTUP" > {out}/alpha\nexec sleep 1000\n')
    run = box.start("--", "sh", "-c", f"printf %s \"$FROM_STARTUP\" > {out}/service; while [ ! -s {out}/alpha ]; do sleep 0.02; done",
                    launcher=AS_NOBODY, FSM_INIT_CONTAINER_ENVIRONMENT="")
    assert run.wait() == 0, run.log
    assert (out / "startup-uid").read_text().strip() == str(NOBODY[0])
    assert (out / "service").read_text() == "from-startup"
    assert (out / "alpha").read_text().split() == [str(NOBODY[0]), "from-startup"]
    assert "Traceback" not in run.log


def test_the_example_daemon_runs_and_its_finish_reports_the_stop(sandbox):
    run = sandbox.start("--", "sleep", "1000", FSM_INIT_SERVICE_DIRECTORY=str(ROOT / "examples" / "service"))
    wait_for(lambda: re.search(r"loadavg: \S+ load average \S+ \S+ \S+", run.output),
             what=f"the daemon's line\n{run.log}")
    run.signal(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM
    assert "loadavg: run ended (exit -1, signal 15)" in run.output


def test_one_shot_mode_runs_the_command_beside_the_daemons_and_exits_with_its_status(sandbox):
    """my_init's `-- CMD`: start-up files, daemons, CMD; then the daemons stop and the exit
    status is CMD's."""
    out = sandbox.root
    runit_service(sandbox, "alpha", out)
    sandbox.etc("my_init.d/10-first", appender(out / "order", "startup"))
    run = sandbox.start("--", "sh", "-c", f"while [ ! -s {out}/alpha.pids ]; do sleep 0.02; done; "
                                          f"echo command >> {out}/order; exit 5")
    assert run.wait() == 5, run.log
    assert lines(out / "order") == ["startup", "command"]
    assert lines(out / "stopped") == ["alpha"]


# -- services added and removed at run time ------------------------------------------------------


def voluntary_switches(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches for {pid}")


def idle_wakeups(pid: int, window: float = 1.0) -> int:
    """How often PID 1 woke up in a quiet window (tests/bench's measure): a select with no
    time-out and no ready fd never does.  The sleep is the measuring window, not a wait."""
    before = voluntary_switches(pid)
    time.sleep(window)
    return voluntary_switches(pid) - before


def service_store(out: Path, *names: str) -> Path:
    """Service directories outside /etc/service, to be linked or copied in while fsm-init runs."""
    store = out / "store"
    for name in names:
        (store / name).mkdir(parents=True)
        run = store / name / "run"
        run.write_text(f"#!/bin/sh\ntrap 'echo {name} >> {out}/stopped; exit 0' TERM\necho $$ >> {out}/{name}.pids\n"
                       "while :; do sleep 0.05; done\n")
        run.chmod(0o755)
    return store


def test_services_added_and_removed_at_run_time(sandbox):
    out = sandbox.root
    service_dir = out / "service"  # on the file system the test shares with fsm-init: its changes are seen
    service_dir.mkdir()
    store = service_store(out, "alpha", "beta")
    run = sandbox.start("--", "sleep", "1000", FSM_INIT_SERVICE_DIRECTORY=str(service_dir), FSM_INIT_STOP_GRACE="1")
    run.wait_log("starting the service")
    # Past FSM_INIT_HANDOVER_AFTER (1 s), the one deadline of this state: the engine stays.
    wait_for(lambda: run.status()["since"] > 1.2, what="the hand-over time")
    assert idle_wakeups(run.pid1) == 0, "PID 1 wakes up while nothing happens"
    assert run.status()["state"] == "foreground", "a watched service directory keeps the engine"

    # docker exec ... ln -s / cp -r: both run within a second.
    os.symlink(store / "alpha", service_dir / "alpha")
    subprocess.run(["cp", "-r", str(store / "beta"), str(service_dir / "beta")], check=True)
    run.wait_log(r"daemon alpha started", timeout=1.0)
    run.wait_log(r"daemon beta started", timeout=1.0)
    wait_lines(out / "alpha.pids", 1)
    wait_lines(out / "beta.pids", 1)
    assert {d["name"]: d["state"] for d in run.status()["daemons"]} == {"alpha": "running", "beta": "running"}

    # Removed: stopped (TERM) and forgotten; the other one runs on.
    (service_dir / "alpha").unlink()
    wait_for(lambda: "alpha" in lines(out / "stopped"), timeout=2.0, what=f"alpha's TERM\n{run.log}")
    wait_for(lambda: [d["name"] for d in run.status()["daemons"]] == ["beta"], what="alpha forgotten")
    assert "daemon alpha: " + str(service_dir / "alpha") + " was removed; stopping it" in run.log
    assert len(lines(out / "alpha.pids")) == 1, "a removed service came back"

    # srvctl rescan: the same scan on request.
    rescan = run.srvctl("rescan")
    assert rescan.returncode == 0 and rescan.stdout.strip() == f"rescanned {service_dir} (watched): no change"
    assert idle_wakeups(run.pid1) == 0, "the watch costs wake-ups once things are quiet again"

    run.signal(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM, run.log
    assert lines(out / "stopped") == ["alpha", "beta"]
    assert "Traceback" not in run.log


def test_the_thin_reaper_refuses_rescan(sandbox):
    run = sandbox.start("--", "sleep", "1000", FSM_INIT_SERVICE_DIRECTORY=str(sandbox.root / "nothing-here"),
                        FSM_INIT_HANDOVER_AFTER="0.1")
    run.wait_state("handover")
    rescan = run.srvctl("rescan")
    assert rescan.returncode == 1 and "the thin reaper does not read" in rescan.stdout
    run.signal(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM
