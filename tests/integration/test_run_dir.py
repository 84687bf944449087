"""The run directory (control socket, journal) and the state directory with no
FSM_INIT_RUN_DIR / FSM_INIT_STATE_DIR, as in a container run with ``--user`` or
``--read-only``: fsm-init as PID 1 of a fresh PID namespace whose mount namespace has
its own /run (read-only and empty), /tmp and /dev/shm, so nothing reaches the machine's.
srvctl, run in the same mount namespace with no FSM_INIT_RUN_DIR either, must find it."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import AS_NOBODY, NOBODY, Running, needs_nobody, needs_pid_namespace, wait_for

pytestmark = needs_pid_namespace

CHECKOUT = Path(__file__).resolve().parents[2]  # fsm-init itself must stay visible, wherever it is

# The paths to keep visible at their places under the private /tmp (the sandbox, and the
# checkout and its virtualenv when they live under /tmp), then --keep-end, then options,
# then --.
PRIVATE_DIRS = r"""
set -eu
keep=""
while [ "$1" != --keep-end ]; do keep="$keep $1"; shift; done
shift
mount -t tmpfs tmpfs /run
i=0
for path in $keep; do mkdir /run/keep$i; mount --bind "$path" /run/keep$i; i=$((i + 1)); done
mount -t tmpfs -o mode=1777 tmpfs /tmp
i=0
for path in $keep; do mkdir -p "$path"; mount --move /run/keep$i "$path"; rmdir /run/keep$i; i=$((i + 1)); done
mount -o remount,ro /run
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
while [ $# -gt 0 ]; do
    case $1 in
    --) shift; break ;;
    --ro-tmp) mount -o remount,ro /tmp ;;
    --trap=*) uid=${1#--trap=}; mkdir /tmp/elsewhere; ln -s /tmp/elsewhere "/tmp/fsm-init-$uid" ;;
    --foreign-run=*) mount -o remount,rw /run; chmod 1777 /run; mkdir -m 0700 /run/fsm-init
                     chown "${1#--foreign-run=}" /run/fsm-init ;;
    esac
    shift
done
exec "$@"
"""


def start(box, *options, user=(), keep_state_dir=True, **given):
    script = box.root / "private-dirs.sh"
    script.write_text(PRIVATE_DIRS)
    script.chmod(0o755)
    keep = [str(box.root), str(CHECKOUT), sys.prefix]
    launcher = ("sh", str(script), *keep, "--keep-end", *options, "--", *user)
    drop = ("FSM_INIT_RUN_DIR",) if keep_state_dir else ("FSM_INIT_RUN_DIR", "FSM_INIT_STATE_DIR")
    env = {k: v for k, v in box.env().items() if k not in drop}
    env.update({k: str(v) for k, v in given.items()})
    run = Running(box, ("--", "sleep", "600"), env, launcher)
    box.runs.append(run)
    return run


def srvctl(run, *args, user=(), module="fsm_init.client.srvctl"):
    env = {k: v for k, v in run.sandbox.env().items() if k not in ("FSM_INIT_RUN_DIR", "FSM_INIT_STATE_DIR")}
    return subprocess.run(["nsenter", "-t", str(run.pid1), "-m", *user, sys.executable, "-m", module, *args],
                          env=env, capture_output=True, text=True, timeout=15, cwd="/")


def answers(run, user=()):
    def ok():
        result = srvctl(run, "status", "--json", user=user)
        return json.loads(result.stdout) if result.returncode == 0 else None
    return wait_for(ok, what=f"srvctl status to answer\n--- log:\n{run.log}")


def in_ns(run, *argv) -> str:
    return subprocess.run(["nsenter", "-t", str(run.pid1), "-m", *argv], capture_output=True, text=True,
                          timeout=10).stdout


def test_root_with_a_read_only_run_uses_a_private_directory_in_tmp(sandbox):
    run = start(sandbox)
    # the thin reaper, after the hand-over, answers on the same socket
    wait_for(lambda: answers(run)["state"] == "handover", what=f"the hand-over\n--- log:\n{run.log}")
    assert "run directory /tmp/fsm-init-0 (/run/fsm-init (Read-only file system))" in run.log, run.log
    assert "error" not in run.log and "warning" not in run.log, run.log
    assert in_ns(run, "stat", "-c", "%a %u %F", "/tmp/fsm-init-0").split() == ["700", "0", "directory"]
    # srvctl history reads the journal there
    history = srvctl(run, "history")
    assert history.returncode == 0 and "foreground" in history.stdout, (history.stdout, history.stderr)
    # fsm-init status and graph --live find it the same way
    status = srvctl(run, "status", "--once", "--json", module="fsm_init")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "handover", status.stderr
    graph = srvctl(run, "graph", "--live", module="fsm_init")
    assert graph.returncode == 0, graph.stderr


@needs_nobody
def test_a_non_root_uid_gets_its_own_run_and_state_directories(nobody_sandbox):
    box, _ = nobody_sandbox
    uid = NOBODY[0]
    run = start(box, user=AS_NOBODY, keep_state_dir=False)
    answers(run, user=AS_NOBODY)  # srvctl as the same uid, as a HEALTHCHECK runs
    assert f"run directory /tmp/fsm-init-{uid} (/run/fsm-init (" in run.log, run.log
    assert f"state directory /tmp/fsm-init-{uid}/state" in run.log, run.log
    assert "error" not in run.log and "warning" not in run.log, run.log
    assert in_ns(run, "stat", "-c", "%a %u", f"/tmp/fsm-init-{uid}").split() == ["700", str(uid)]
    # root (docker exec -u root) finds it through PID 1's uid
    answers(run)
    assert srvctl(run, "health", user=AS_NOBODY).returncode in (0, 1)


def test_a_symlink_planted_in_tmp_is_refused_and_dev_shm_used(sandbox):
    run = start(sandbox, "--trap=0")
    answers(run)
    assert "/tmp/fsm-init-0 (is a symbolic link)" in run.log, run.log
    assert "run directory /dev/shm/fsm-init-0" in run.log
    assert in_ns(run, "ls", "/tmp/elsewhere").split() == []


@needs_nobody
def test_a_run_fsm_init_another_uid_made_under_a_world_writable_run_is_refused(sandbox):
    run = start(sandbox, f"--foreign-run={NOBODY[0]}")
    answers(run)
    assert f"run directory /tmp/fsm-init-0 (/run/fsm-init (is owned by uid {NOBODY[0]}, not 0))" in run.log, run.log
    assert in_ns(run, "ls", "-A", "/run/fsm-init").split() == []


def test_read_only_tmp_falls_back_to_dev_shm(sandbox):
    run = start(sandbox, "--ro-tmp")
    answers(run)
    assert "run directory /dev/shm/fsm-init-0" in run.log, run.log


@needs_nobody
def test_a_given_run_directory_another_user_owns_is_refused(sandbox):
    # FSM_INIT_RUN_DIR on a directory the workuser owns (a volume): it could plant a link for
    # root's journal writes, its own control socket, or PPPoE hooks that pppd runs as root.
    given = sandbox.root / "workuser-run"
    given.mkdir()
    os.chown(given, *NOBODY)
    run = start(sandbox, FSM_INIT_RUN_DIR=given)
    answers(run)  # srvctl finds the directory chosen instead
    assert (f"refusing the run directory {given} (FSM_INIT_RUN_DIR): another user could change it: {given} is "
            f"owned by uid {NOBODY[0]}, not root") in run.log, run.log
    assert "run directory /tmp/fsm-init-0" in run.log and os.listdir(given) == []
