"""The three ways a service runs, for real: non-daemon, daemon and status-check mode.

fsm-init runs as PID 1 of a fresh PID namespace (see ``tests/conftest.py``).  Every
wait has a deadline and polls for an event: a log line, a file, a process state.
"""

import json
import os
import re
import signal
from pathlib import Path

import pytest

from tests.conftest import count_file, lines, needs_pid_namespace, wait_for, wait_lines

pytestmark = needs_pid_namespace

# A service that records its (namespace) pid and runs until ./release exists.
HOLD = "echo $$ >> pids\nwhile [ ! -e release ]; do sleep 0.05; done\n"


def ns_pids(run) -> dict[int, int]:
    """Namespace pid -> host pid of every live (non-zombie) process in run's namespace."""
    found = {}
    for host in run.namespace_pids():
        try:
            for line in Path(f"/proc/{host}/status").read_text().splitlines():
                if line.startswith("NSpid:"):
                    found[int(line.split()[-1])] = host
        except OSError:
            pass
    return found


# -- non-daemon -------------------------------------------------------------------------


@pytest.mark.parametrize("handover_after, state", [("0", "foreground"), ("1", "handover")])
def test_non_daemon_exit_status_is_fsm_inits_and_status_shows_the_service(sandbox, handover_after, state):
    d = sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh"}, run__sh=HOLD + "exit 3\n")
    run = sandbox.start(SRVNAME="app", FSM_INIT_HANDOVER_AFTER=handover_after)
    status = run.wait_state(state)
    pid = int(wait_lines(d / "pids", 1)[0])
    assert status["mode"] == "non-daemon"
    assert status["service_pid"] == pid
    assert status["target"] == str(d)
    assert status["last_exit"] is None
    text = run.srvctl("status")
    assert text.returncode == 0
    assert re.search(r"^mode:\s+non-daemon", text.stdout, re.M), text.stdout
    assert re.search(rf"^service:\s+pid {pid}\b", text.stdout, re.M), text.stdout
    assert count_file(d) == "RestartCount: 1\nNone-Daemoned\n"
    (d / "release").touch()
    assert run.wait() == 3
    assert "exiting with status 3" in run.log


def test_a_workstart_array_is_the_exact_argv_empty_arguments_included(sandbox):
    d = sandbox.service("app", {"initdelay": 0, "workstart": ["./args.sh", "", "a b", ""]},
                        args__sh='printf "[%s]" "$@" > argv\n')
    run = sandbox.start(SRVNAME="app")
    assert run.wait() == 0, run.log
    assert (d / "argv").read_text() == "[][a b][]"
    assert "is not a command string" not in run.log


def test_non_daemon_service_killed_by_a_signal_gives_128_plus_n(sandbox):
    sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh"}, run__sh="kill -9 $$\n")
    run = sandbox.start(SRVNAME="app")
    assert run.wait() == 128 + 9
    assert "was killed by SIGKILL" in run.log


def proc_state(host_pid: int) -> str:
    raw = Path(f"/proc/{host_pid}/stat").read_bytes()
    return raw[raw.rfind(b")") + 2:].split()[0].decode()


@pytest.mark.parametrize("handover_after, state", [("0", "foreground"), ("1", "handover")])
def test_non_daemon_exit_status_survives_a_sigterm_that_races_the_exit(sandbox, handover_after, state):
    # The service exits with 9 while a SIGTERM for PID 1 is pending (docker stop as the
    # service ends by itself).  PID 1 is frozen from the host (SIGSTOP from an ancestor
    # namespace) so that both the TERM and the SIGCHLD are pending when it resumes.
    d = sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh"}, run__sh=HOLD + "exit 9\n")
    run = sandbox.start(SRVNAME="app", FSM_INIT_HANDOVER_AFTER=handover_after)
    pid = int(wait_lines(d / "pids", 1)[0])
    run.wait_state(state)
    host = ns_pids(run)[pid]
    os.kill(run.pid1, signal.SIGSTOP)
    try:
        wait_for(lambda: proc_state(run.pid1) == "T", what="PID 1 to be stopped")
        run.signal(signal.SIGTERM)
        (d / "release").touch()
        wait_for(lambda: proc_state(host) == "Z", what="the service to exit")
    finally:
        os.kill(run.pid1, signal.SIGCONT)
    assert run.wait() == 9, run.log
    assert "exiting with status 9" in run.log, run.log


# -- daemon ------------------------------------------------------------------------------


def test_daemon_mode_restarts_after_workintvl(sandbox):
    d = sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 2},
                        run__sh="date +%s.%N >> starts\n"
                                "[ $(wc -l < starts) -ge 2 ] && exec sleep 1000\n"
                                "exit 5\n")
    run = sandbox.start(SRVNAME="app")
    wait_for(lambda: count_file(d) == "RestartCount: 2\nWith-Daemoned( Delay: 2 )\n",
             what=f"the second run in service.run.count\n--- log:\n{run.log}")
    first, second = (float(t) for t in wait_lines(d / "starts", 2)[:2])
    assert second - first >= 1.9, f"restarted {second - first:.2f}s after the exit, workintvl is 2"
    assert "restart in 2s (failure 1 in a row)" in run.log
    status = run.wait_state("watch")
    assert status["mode"] == "daemon"
    assert status["restarts"] == 1
    assert status["last_exit"] == 5
    assert status["service_pid"] is not None
    assert "exited with status 5" in run.log


def test_daemon_mode_restart_stops_what_the_exited_service_left_running(sandbox):
    d = sandbox.service(
        "app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1},
        run__sh="echo run >> runs\n"
                "if [ $(wc -l < runs) -eq 1 ]; then\n"
                "  sh -c 'echo $$ > bg.pid; exec sleep 1000' &\n"
                "  while [ ! -s bg.pid ]; do sleep 0.02; done\n"
                "  exit 4\n"
                "fi\n"
                "exec sleep 1000\n")
    run = sandbox.start(SRVNAME="app", FSM_INIT_STOP_GRACE=1)
    wait_for(lambda: count_file(d).startswith("RestartCount: 2\n"), what=f"a restart\n--- log:\n{run.log}")
    bg = int((d / "bg.pid").read_text())
    wait_for(lambda: bg not in ns_pids(run), 5, f"the first instance's background process {bg} to be gone")
    assert re.search(r"sent SIGTERM to the service's session \(1 process", run.log), run.log


# -- status-check ------------------------------------------------------------------------

CHECKED = {"initdelay": 0, "workstart": "./run.sh", "workwatch": 1, "workintvl": 1}


def test_periodic_scripts_run_each_cycle_with_smcnt_perdc_and_srvcfg(sandbox):
    record = "printf '%s %s %s\\n' \"$SMCNT\" \"$PERDC\" \"$SRVCFG\" >> {}\n"
    d = sandbox.service("app", dict(CHECKED, mine={"x": 1}), run__sh=HOLD,
                        PeriodicRT_env=record.format("rt.env"), PeriodicST_env=record.format("st.env"),
                        PeriodicMT_env=record.format("mt.env"))
    run = sandbox.start(SRVNAME="app")
    for name in ("rt.env", "st.env", "mt.env"):
        got = [line.split(" ", 2) for line in wait_lines(d / name, 2)[:2]]
        assert [g[0] for g in got] == ["1", "2"], (name, got)
        assert all(g[1] == "1" for g in got), (name, got)
        cfg = json.loads(got[0][2])
        assert cfg["workwatch"] == 1 and cfg["workstart"] == "./run.sh" and cfg["mine"] == {"x": 1}, cfg
    assert re.fullmatch(r"RestartCount: 1\nStatus-Monitored\( Delay: 1, Periodic: 1, MCount: \d+ \)\n", count_file(d))
    status = run.status()
    assert status["mode"] == "status-check" and status["period"] == 1
    assert status["checks"] and status["checks"][0]["name"] == "PeriodicST-env"
    assert status["checks"][0]["exit"] == 0


def test_a_failing_st_restarts_the_service_and_the_log_names_it(sandbox):
    d = sandbox.service("app", CHECKED, run__sh=HOLD,
                        PeriodicST_a="echo $SMCNT >> st-a.ran\n[ -e fail ] && { rm fail; exit 1; }\nexit 0\n")
    run = sandbox.start(SRVNAME="app")
    wait_lines(d / "st-a.ran", 1)
    first_pid = int(wait_lines(d / "pids", 1)[0])
    (d / "fail").touch()
    run.wait_log(r"check failed: PeriodicST-a exited 1 after [\d.]+s; restarting the service")
    run.wait_log(r"starting the service \(run 2, status-check mode\)")
    pids = wait_lines(d / "pids", 2)
    assert int(pids[1]) != first_pid
    assert run.status()["restarts"] == 1


def test_a_failing_st_does_not_run_the_later_sts_of_its_cycle(sandbox):
    d = sandbox.service("app", CHECKED, run__sh=HOLD,
                        PeriodicST_a="echo $SMCNT >> st-a.ran\n[ -e fail ] && { rm fail; exit 1; }\nexit 0\n",
                        PeriodicST_b="echo $SMCNT >> st-b.ran\n")
    (d / "fail").touch()
    run = sandbox.start(SRVNAME="app")
    run.wait_log(r"check failed: PeriodicST-a exited 1")
    # The failure is logged once the cycle has ended: b must not have run in it.
    assert not (d / "st-b.ran").exists()
    # The next passing cycle (after the restart) runs both.
    wait_lines(d / "st-b.ran", 1)


def test_an_st_past_worktimeout_is_killed_with_its_child_and_causes_a_restart(sandbox):
    d = sandbox.service(
        "app", dict(CHECKED, worktimeout=1), run__sh=HOLD,
        PeriodicST_hang="if [ -e hang ]; then\n"
                        "  rm hang\n"
                        "  sh -c 'echo $$ > child.pid; exec sleep 1000' &\n"
                        "  echo $$ > st.pid\n"
                        "  exec sleep 1000\n"
                        "fi\n"
                        "exit 0\n")
    (d / "hang").touch()
    run = sandbox.start(SRVNAME="app")
    child = int(wait_for(lambda: (d / "child.pid").exists() and (d / "child.pid").read_text().strip(),
                         what="the hanging check's child"))
    st = int(wait_for(lambda: (d / "st.pid").exists() and (d / "st.pid").read_text().strip(), what="st.pid"))
    assert child in ns_pids(run)
    run.wait_log(r"check failed: PeriodicST-hang timed out after 1\.\ds")
    wait_for(lambda: child not in ns_pids(run) and st not in ns_pids(run), 3,
             "the hanging check and its background child to be killed")
    run.wait_log(r"starting the service \(run 2")
    assert run.status()["restarts"] == 1


def test_mt_runs_only_when_every_st_passed(sandbox):
    # A cycle is named by the run (RestartCount) and $SMCNT, which restarts at 1 per instance.
    cycle = "$(sed -n 's/RestartCount: //p' service.run.count)-$SMCNT"
    d = sandbox.service("app", CHECKED, run__sh=HOLD,
                        PeriodicST_ok=f"if [ -e fail ]; then rm fail; echo {cycle} >> st.failed; exit 1; fi\n",
                        PeriodicMT_log=f"echo {cycle} >> mt.ran\n")
    run = sandbox.start(SRVNAME="app")
    wait_lines(d / "mt.ran", 1)
    (d / "fail").touch()
    failed = wait_lines(d / "st.failed", 1)[0]
    # Wait for an MT of the next instance: by then the failed cycle's MT, had it been
    # started, would long have written its line.
    wait_for(lambda: any(n.startswith("2-") for n in lines(d / "mt.ran")), what="an MT after the failed cycle")
    assert failed not in lines(d / "mt.ran"), (failed, lines(d / "mt.ran"))
    assert "check failed: PeriodicST-ok exited 1" in run.log


def test_no_st_scripts_means_healthy(sandbox):
    d = sandbox.service("app", CHECKED, run__sh=HOLD, PeriodicMT_log="echo $SMCNT >> mt.ran\n")
    run = sandbox.start(SRVNAME="app")
    wait_lines(d / "mt.ran", 2)
    status = run.status()
    assert status["restarts"] == 0
    assert status["checks"] == []
    assert len(lines(d / "pids")) == 1
    assert "check failed" not in run.log
    assert status["service_pid"] == int(lines(d / "pids")[0])


def test_an_rt_still_running_is_not_started_again(sandbox):
    d = sandbox.service("app", CHECKED, run__sh=HOLD,
                        PeriodicRT_slow="echo \"start $SMCNT\" >> rt.log\n"
                                        "while [ ! -e rt.release ]; do sleep 0.05; done\n"
                                        "rm -f rt.release\n")
    run = sandbox.start(SRVNAME="app")
    run.wait_log(r"PeriodicRT-slow is still running from an earlier cycle: not started again")
    assert lines(d / "rt.log") == ["start 1"]
    (d / "rt.release").touch()
    wait_lines(d / "rt.log", 2)
    assert lines(d / "rt.log")[1].startswith("start ") and lines(d / "rt.log")[1] != "start 1"


def test_cycles_run_at_a_fixed_rate(sandbox):
    # Each ST takes 0.5s of a 1s period: a fixed rate starts a cycle every 1s, a
    # period counted from the end of the checks would start one every 1.5s.
    d = sandbox.service("app", dict(CHECKED, worktimeout=3), run__sh=HOLD,
                        PeriodicST_slow="date +%s.%N >> st.times\nsleep 0.5\n")
    run = sandbox.start(SRVNAME="app")
    times = [float(t) for t in wait_lines(d / "st.times", 4)[:4]]
    # The average gap: one late start (a loaded machine) makes one long gap and one short
    # one, but a period counted from the end of the checks would average 1.5 s.
    average = (times[3] - times[0]) / 3
    assert 0.8 < average < 1.25, times
    assert run.status()["restarts"] == 0


def test_smcnt_starts_at_one_for_each_new_instance(sandbox):
    # imginit exports SMCNT=1 for every (re)start of the service; the count file's
    # MCount is that counter.
    d = sandbox.service("app", CHECKED, run__sh=HOLD,
                        PeriodicST_a="echo \"$SMCNT\" >> st.ran\n"
                                     "[ -e fail ] && { rm fail; exit 1; }\nexit 0\n")
    run = sandbox.start(SRVNAME="app")
    wait_lines(d / "st.ran", 1)
    (d / "fail").touch()
    run.wait_log(r"starting the service \(run 2")
    before = len(lines(d / "st.ran"))
    wait_lines(d / "st.ran", before + 1)
    assert lines(d / "st.ran")[before] == "1", lines(d / "st.ran")


def test_restart_stops_the_previous_instances_whole_session(sandbox):
    d = sandbox.service(
        "app", CHECKED,
        run__sh="sh -c 'echo $$ >> bg.pids; exec sleep 1000' &\n"
                "(trap '' TERM; sh -c 'echo $$ >> stubborn.pids; exec sleep 1000') &\n" + HOLD,
        PeriodicST_a="[ -e fail ] && { rm fail; exit 1; }\nexit 0\n")
    run = sandbox.start(SRVNAME="app", FSM_INIT_STOP_GRACE=1)
    leader = int(wait_lines(d / "pids", 1)[0])
    bg = int(wait_lines(d / "bg.pids", 1)[0])
    stubborn = int(wait_lines(d / "stubborn.pids", 1)[0])
    alive = ns_pids(run)
    assert {leader, bg, stubborn} <= set(alive)
    (d / "fail").touch()
    run.wait_log(r"outlived the grace time: sent SIGKILL to \d+ process")
    run.wait_log(r"starting the service \(run 2")
    wait_lines(d / "pids", 2)
    alive = ns_pids(run)
    assert not {leader, bg, stubborn} & set(alive), (leader, bg, stubborn, sorted(alive))
    assert int(lines(d / "pids")[1]) in alive


def test_sigterm_in_status_check_mode_stops_everything(sandbox):
    d = sandbox.service("app", CHECKED, run__sh="trap 'echo service-got-term; exit 0' TERM\n" + HOLD,
                        PeriodicST_ok="exit 0\n")
    run = sandbox.start(SRVNAME="app")
    run.wait_state("watch")
    wait_lines(d / "pids", 1)
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    assert "service-got-term" in run.output


def test_a_check_period_of_a_month_is_waited_for(sandbox):
    """The next cycle 30 days away: longer than epoll's longest time-out (~24.8 days)."""
    d = sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 2592000, "workintvl": 1},
                        run__sh="exec sleep 1000\n", PeriodicST_ok="echo ran >> checks\n")
    run = sandbox.start(SRVNAME="app")
    wait_lines(d / "checks", 1)
    status = run.wait_state("watch")
    assert status["period"] == 2592000 and run.proc.poll() is None, run.log
    assert run.srvctl("stop").returncode == 0 and run.wait() == 0
