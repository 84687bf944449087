"""``srvctl``, every verb, against fsm-init running as PID 1 of a fresh PID namespace.

Exit codes: 0 done, 1 refused, 2 usage, 3 no engine listening.
"""

import json
import os
import re
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SRVCTL, count_file, lines, needs_pid_namespace, wait_for, wait_lines

pytestmark = needs_pid_namespace

# A service that records its (namespace) pid, reports a TERM on stdout and runs until
# ./release exists.
HOLD = ("trap 'echo \"got-term $$\"; exit 0' TERM\n"
        "echo $$ >> pids\nwhile [ ! -e release ]; do sleep 0.05; done\n")
# The same, but exits 9 on TERM: srvctl stop must still make fsm-init exit 0.
HOLD_EXIT_9 = "trap 'exit 9' TERM\necho $$ >> pids\nwhile [ ! -e release ]; do sleep 0.05; done\n"

DAEMON = {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1}
CHECKED = {"initdelay": 0, "workstart": "./run.sh", "workwatch": 1, "workintvl": 1}
NON_DAEMON = {"initdelay": 0, "workstart": "./run.sh"}


def ns_pids(run) -> set[int]:
    """Namespace pids of every live (non-zombie) process in run's namespace."""
    found = set()
    for host in run.namespace_pids():
        try:
            for line in Path(f"/proc/{host}/status").read_text().splitlines():
                if line.startswith("NSpid:"):
                    found.add(int(line.split()[-1]))
        except OSError:
            pass
    return found


def srvctl(sandbox, *args) -> subprocess.CompletedProcess:
    """srvctl with the sandbox's environment, whether or not an fsm-init runs."""
    return subprocess.run([*SRVCTL, *args], env=sandbox.env(), capture_output=True, text=True, timeout=15)


# -- status --------------------------------------------------------------------------------


def test_status_text_and_json(sandbox):
    d = sandbox.service("app", CHECKED, run__sh=HOLD, PeriodicST_ok="exit 0\n")
    run = sandbox.start(SRVNAME="app")
    pid = int(wait_lines(d / "pids", 1)[0])
    wait_for(lambda: run.status()["checks"], what="a finished check cycle")
    status = run.status()
    for key in ("state", "mode", "target", "service_pid", "restarts", "last_exit", "checks"):
        assert key in status, (key, status)
    assert status["state"] in ("watch", "check")
    assert status["mode"] == "status-check"
    assert status["target"] == str(d)
    assert status["service_pid"] == pid
    assert status["restarts"] == 0
    assert status["last_exit"] is None
    assert [(c["name"], c["exit"]) for c in status["checks"]] == [("PeriodicST-ok", 0)]

    text = run.srvctl("status")
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert re.search(r"^state:\s+(watch|check)\b", out, re.M), out
    assert re.search(r"^mode:\s+status-check, checks every 1s$", out, re.M), out
    assert re.search(rf"^target:\s+{re.escape(str(d))}$", out, re.M), out
    assert re.search(rf"^service:\s+pid {pid}, up \d+s$", out, re.M), out
    assert re.search(r"^restarts:\s+0$", out, re.M), out
    assert re.search(r"^last exit:\s+-$", out, re.M), out
    assert re.search(r"^check:\s+PeriodicST-ok: exit 0 in [\d.]+s$", out, re.M), out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_status_shows_restarts_and_the_last_exit(sandbox):
    d = sandbox.service("app", DAEMON, run__sh="echo x >> runs\n[ $(wc -l < runs) -ge 2 ] && exec sleep 1000\nexit 6\n")
    run = sandbox.start(SRVNAME="app")
    wait_lines(d / "runs", 2)
    status = run.wait_state("watch")
    assert status["restarts"] == 1 and status["last_exit"] == 6, status
    out = run.srvctl("status").stdout
    assert re.search(r"^restarts:\s+1$", out, re.M) and re.search(r"^last exit:\s+6$", out, re.M), out


# -- restart -----------------------------------------------------------------------------


def test_restart_in_daemon_mode(sandbox):
    # workintvl 30: an operator's restart does not wait for it.
    d = sandbox.service("app", dict(DAEMON, workintvl=30), run__sh=HOLD)
    run = sandbox.start(SRVNAME="app")
    first = int(wait_lines(d / "pids", 1)[0])
    run.wait_state("watch")
    result = run.srvctl("restart")
    assert result.returncode == 0, result
    assert result.stdout.startswith("restarting")
    second = int(wait_lines(d / "pids", 2, timeout=5)[1])
    assert second != first
    assert f"got-term {first}" in run.output
    wait_for(lambda: first not in ns_pids(run), 5, "the first instance to be gone")
    assert count_file(d) == "RestartCount: 2\nWith-Daemoned( Delay: 30 )\n"
    assert run.wait_state("watch")["service_pid"] == second


def test_restart_in_status_check_mode(sandbox):
    d = sandbox.service("app", CHECKED, run__sh=HOLD, PeriodicST_ok="exit 0\n")
    run = sandbox.start(SRVNAME="app")
    first = int(wait_lines(d / "pids", 1)[0])
    run.wait_log(r"workintvl: first check")
    wait_for(lambda: run.status()["state"] in ("watch", "check"), what="the first check cycle")
    result = run.srvctl("restart")
    assert result.returncode == 0, result
    second = int(wait_lines(d / "pids", 2, timeout=5)[1])
    assert second != first
    assert f"got-term {first}" in run.output
    status = run.status()
    assert status["restarts"] == 1 and status["service_pid"] == second
    assert first not in ns_pids(run)


def test_restart_during_the_interval_before_the_first_check(sandbox):
    d = sandbox.service("app", dict(CHECKED, workintvl=30), run__sh=HOLD, PeriodicST_ok="exit 0\n")
    run = sandbox.start(SRVNAME="app")
    first = int(wait_lines(d / "pids", 1)[0])
    run.wait_state("restart_interval")
    result = run.srvctl("restart")
    assert result.returncode == 0 and result.stdout.startswith("restarting"), result
    second = int(wait_lines(d / "pids", 2, timeout=5)[1])
    assert second != first
    assert f"got-term {first}" in run.output
    assert first not in ns_pids(run)


def test_restart_cuts_the_restart_interval_after_an_exit_short(sandbox):
    d = sandbox.service("app", dict(DAEMON, workintvl=30),
                        run__sh="echo x >> runs\n[ $(wc -l < runs) -ge 2 ] && exec sleep 1000\nexit 1\n")
    run = sandbox.start(SRVNAME="app")
    wait_lines(d / "runs", 1)
    run.wait_state("restart_interval")
    result = run.srvctl("restart")
    assert result.returncode == 0, result
    wait_lines(d / "runs", 2, timeout=5)
    assert run.wait_state("watch", timeout=5)["restarts"] == 1


def test_restart_cuts_the_idle_wait_short(sandbox):
    d = sandbox.service("app", {"initdelay": 0}, run__sh=HOLD)
    run = sandbox.start(SRVNAME="app", FSM_INIT_IDLE_WAIT=600)
    run.wait_state("idle")
    (d / "workcfg.json").write_text(json.dumps(DAEMON))
    result = run.srvctl("restart")
    assert result.returncode == 0 and result.stdout.startswith("restarting"), result
    wait_lines(d / "pids", 1, timeout=5)
    assert count_file(d) == "RestartCount: 2\nWith-Daemoned( Delay: 1 )\n"


def test_restart_cuts_the_initdelay_short(sandbox):
    d = sandbox.service("app", dict(DAEMON, initdelay=600), run__sh=HOLD)
    run = sandbox.start(SRVNAME="app")
    run.wait_state("delay")
    assert "initdelay: waiting 600s" in run.log
    assert not (d / "pids").exists()
    result = run.srvctl("restart")
    assert result.returncode == 0 and result.stdout.startswith("restarting"), result
    wait_lines(d / "pids", 1, timeout=5)
    assert run.wait_state("watch")["run_count"] == 1


def test_restart_reads_workcfg_json_again(sandbox):
    d = sandbox.service("app", dict(DAEMON, tag="old"),
                        run__sh="printf '%s\\n' \"$SRVCFG\" >> seen\n" + HOLD)
    run = sandbox.start(SRVNAME="app")
    assert json.loads(wait_lines(d / "seen", 1)[0])["tag"] == "old"
    (d / "workcfg.json").write_text(json.dumps(dict(DAEMON, tag="new", workintvl=2)))
    assert run.srvctl("restart").returncode == 0
    assert json.loads(wait_lines(d / "seen", 2, timeout=5)[1])["tag"] == "new"
    assert count_file(d) == "RestartCount: 2\nWith-Daemoned( Delay: 2 )\n"


@pytest.mark.parametrize("handover_after, state", [("0", "foreground"), ("1", "handover")])
def test_restart_is_refused_in_non_daemon_mode(sandbox, handover_after, state):
    d = sandbox.service("app", NON_DAEMON, run__sh=HOLD)
    run = sandbox.start(SRVNAME="app", FSM_INIT_HANDOVER_AFTER=handover_after)
    pid = int(wait_lines(d / "pids", 1)[0])
    run.wait_state(state)
    result = run.srvctl("restart")
    assert result.returncode == 1, result
    assert "non-daemon" in result.stdout
    status = run.status()
    assert status["state"] == state and status["service_pid"] == pid
    assert "got-term" not in run.output and lines(d / "pids") == [str(pid)]
    (d / "release").touch()
    assert run.wait() == 0


# -- stop ------------------------------------------------------------------------------------


@pytest.mark.parametrize("workcfg, env, state", [
    (NON_DAEMON, {"FSM_INIT_HANDOVER_AFTER": "0"}, "foreground"),
    (NON_DAEMON, {}, "handover"),
    (DAEMON, {}, "watch"),
    (dict(CHECKED, workintvl=30), {}, "restart_interval"),
], ids=["non-daemon-foreground", "non-daemon-handover", "daemon", "status-check"])
def test_stop_exits_0_even_if_the_service_exits_non_zero_on_term(sandbox, workcfg, env, state):
    d = sandbox.service("app", workcfg, run__sh=HOLD_EXIT_9)
    run = sandbox.start(SRVNAME="app", **env)
    pid = int(wait_lines(d / "pids", 1)[0])
    run.wait_state(state)
    result = run.srvctl("stop")
    assert result.returncode == 0, result
    assert run.wait() == 0
    assert re.search(rf"service \(pid {pid}\) exited with status 9", run.log), run.log
    assert "exiting with status 0" in run.log


def test_sigterm_instead_of_stop_gives_the_services_status(sandbox):
    # The counterpart of the test above: without srvctl stop the exit status is the service's.
    d = sandbox.service("app", NON_DAEMON, run__sh=HOLD_EXIT_9)
    run = sandbox.start(SRVNAME="app")
    wait_lines(d / "pids", 1)
    run.wait_state("handover")
    run.signal(signal.SIGTERM)
    assert run.wait() == 9


def test_stop_kills_a_service_that_ignores_term_after_the_grace(sandbox):
    d = sandbox.service("app", DAEMON, run__sh="trap '' TERM\necho $$ >> pids\nexec sleep 1000\n")
    run = sandbox.start(SRVNAME="app", FSM_INIT_STOP_GRACE=1)
    wait_lines(d / "pids", 1)
    run.wait_state("watch")
    assert run.srvctl("stop").returncode == 0
    assert run.wait(timeout=8) == 0
    assert "outlived the grace time: sent SIGKILL" in run.log


def test_stop_during_the_initdelay(sandbox):
    sandbox.service("app", dict(DAEMON, initdelay=600), run__sh=HOLD)
    run = sandbox.start(SRVNAME="app")
    run.wait_state("delay")
    assert run.srvctl("stop").returncode == 0
    assert run.wait(timeout=5) == 0


# -- no engine, usage, permissions -------------------------------------------------------------


def test_exit_3_when_no_engine_listens(sandbox):
    for verb in ("status", "restart", "stop"):
        result = srvctl(sandbox, verb)
        assert result.returncode == 3, result
        assert "no fsm-init answers" in result.stderr
    # And after an fsm-init has come and gone.
    run = sandbox.start("--", "true")
    assert run.wait() == 0
    result = srvctl(sandbox, "status", "--json")
    assert result.returncode == 3, result


def test_exit_3_when_a_stale_socket_file_has_no_listener(sandbox):
    import socket

    sandbox.run_dir.mkdir(mode=0o700)
    path = str(sandbox.run_dir / "control.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()  # the file stays, nobody listens
    assert srvctl(sandbox, "status").returncode == 3


@pytest.mark.parametrize("args", [[], ["bogus"], ["restart", "a", "b"], ["status", "cron"], ["start"], ["--json"],
                                  ["STATUS"]])
def test_exit_2_for_no_verb_or_an_unknown_verb(sandbox, args):
    result = srvctl(sandbox, *args)
    assert result.returncode == 2, result
    assert "usage" in result.stderr


def test_usage_is_checked_while_an_engine_runs_too(sandbox):
    d = sandbox.service("app", DAEMON, run__sh=HOLD)
    run = sandbox.start(SRVNAME="app")
    wait_lines(d / "pids", 1)
    assert run.srvctl("frobnicate").returncode == 2
    assert run.srvctl().returncode == 2
    assert run.status()["restarts"] == 0


def test_control_socket_is_0600_and_the_run_dir_0700(sandbox):
    sandbox.run_dir.mkdir(mode=0o755)
    os.chmod(sandbox.run_dir, 0o755)
    d = sandbox.service("app", DAEMON, run__sh=HOLD)
    run = sandbox.start(SRVNAME="app")
    wait_lines(d / "pids", 1)
    run.wait_state("watch")
    sock = os.stat(sandbox.run_dir / "control.sock")
    assert stat.S_ISSOCK(sock.st_mode)
    assert stat.S_IMODE(sock.st_mode) == 0o600, oct(sock.st_mode)
    assert stat.S_IMODE(os.stat(sandbox.run_dir).st_mode) == 0o700, oct(os.stat(sandbox.run_dir).st_mode)
