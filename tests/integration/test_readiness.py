"""workready notify / fd:N, workwatchdog and notification-fd, with fsm-init as PID 1 of a
fresh PID namespace.

The notifying services are small Python scripts sending datagrams with the standard
library (the sender must still live when fsm-init reads its message: its credentials are
checked against the service's session).  Every wait has a deadline; the services move on
when the test creates a file, never after a sleep.
"""

import json
import re
import shutil
import socket
import sys

import pytest

from tests.conftest import lines, needs_pid_namespace, wait_for, wait_lines

pytestmark = needs_pid_namespace

# A notify service: STATUS=warming up at once, READY=1 and STATUS=serving once ./go exists,
# then WATCHDOG=1 every 0.2 s while ./beat exists and ./stop-beat does not.
NOTIFY_SERVICE = f"""#!{sys.executable}
import os, socket, time

def send(text):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = os.environ["NOTIFY_SOCKET"]
    s.sendto(text.encode(), "\\0" + path[1:] if path.startswith("@") else path)  # "@": abstract
    s.close()

with open("pids", "a") as f:
    f.write(f"{{os.getpid()}} {{os.environ.get('WATCHDOG_USEC', '-')}}\\n")
send("STATUS=warming up")
while not os.path.exists("go"):
    time.sleep(0.05)
send("READY=1\\nSTATUS=serving")
said = set()
while True:
    if os.path.exists("beat") and not os.path.exists("stop-beat"):
        send("WATCHDOG=1")
    for name in ("RELOADING", "STOPPING"):  # ./reloading, ./stopping: said once each
        if os.path.exists(name.lower()) and name not in said:
            said.add(name)
            send(name + "=1")
    time.sleep(0.2)
"""

DAEMON = {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1}


def health(run) -> int:
    return run.srvctl("health").returncode


def status(run) -> dict:
    """srvctl status --json, {} while fsm-init does not answer yet."""
    result = run.srvctl("status", "--json")
    return json.loads(result.stdout) if result.returncode == 0 else {}


def test_ready_when_the_service_says_so_and_its_status_shown(sandbox):
    d = sandbox.service("app", dict(DAEMON, workready="notify"), run__sh=NOTIFY_SERVICE)
    run = sandbox.start(SRVNAME="app")
    wait_lines(d / "pids", 1)
    wait_for(lambda: (status(run).get("readiness") or {}).get("status") == "warming up", what="STATUS=warming up")
    # Past workintvl, which alone made a daemon-mode service healthy before.
    wait_for(lambda: (status(run).get("uptime") or 0) >= 1.5, what="workintvl to pass")
    answer = run.srvctl("health")
    assert answer.returncode == 1 and "waiting for READY=1 on NOTIFY_SOCKET" in answer.stdout, answer
    assert re.search(r"^ready:\s+no \(workready notify\); STATUS: warming up$", run.srvctl("status").stdout, re.M)
    (d / "go").touch()
    wait_for(lambda: health(run) == 0, what="srvctl health 0 after READY=1")
    assert "READY=1: the service says it is ready" in run.log
    text = run.srvctl("status").stdout
    assert re.search(r"^ready:\s+yes \(workready notify\); STATUS: serving$", text, re.M), text
    assert "the service says: serving" in run.srvctl("why").stdout
    readiness = run.status()["readiness"]
    assert readiness["ready"] is True and readiness["socket"]["taken"] == 2 and readiness["socket"]["refused"] == 0
    assert lines(d / "pids")[0].endswith(" -")  # no WATCHDOG_USEC without workwatchdog
    (d / "reloading").touch()
    wait_for(lambda: re.search(r"^ready:\s+yes \(workready notify, reloading\); STATUS: serving$",
                               run.srvctl("status").stdout, re.M), what="RELOADING=1 in srvctl status")
    (d / "stopping").touch()
    wait_for(lambda: health(run) == 1, what="not ready after STOPPING=1")
    assert run.srvctl("health").stdout.strip() == "the service said STOPPING=1"
    assert status(run)["readiness"]["phase"] == "stopping"


def test_a_watchdog_that_stops_restarts_the_service_with_the_cause(sandbox):
    d = sandbox.service("app", dict(DAEMON, workready="notify", workwatchdog=1, workintvl=3), run__sh=NOTIFY_SERVICE)
    (d / "go").touch()
    (d / "beat").touch()
    run = sandbox.start(SRVNAME="app")
    first = wait_lines(d / "pids", 1)[0]
    assert first.endswith(" 1000000"), first  # WATCHDOG_USEC
    wait_for(lambda: health(run) == 0, what="ready")
    # The keep-alives arrive: no restart across several watchdog periods.
    wait_for(lambda: (status(run).get("uptime") or 0) >= 2.5, what="2.5 s of keep-alives")
    assert len(lines(d / "pids")) == 1 and "no WATCHDOG=1" not in run.log
    (d / "stop-beat").touch()
    run.wait_log(r"watchdog: no WATCHDOG=1 from the service within workwatchdog 1s; restarting the service")
    why = wait_for(lambda: "watchdog" in (w := run.srvctl("why").stdout) and w, what="the cause in srvctl why")
    assert "watchdog: no WATCHDOG=1 from the service within workwatchdog 1s" in why, why
    history = run.srvctl("history", "--json").stdout
    assert any(json.loads(line)["to"] == "restart" and "watchdog" in json.loads(line)["cause"]
               for line in history.splitlines()), history
    wait_lines(d / "pids", 2, timeout=20)


def test_messages_from_outside_the_service_are_refused(sandbox):
    notify = sandbox.run_dir / "notify.sock"
    # A daemon of the same container, in a session of its own, tries to speak for the service.
    sandbox.etc("service/intruder/run", f"""#!{sys.executable}
import socket, time
while True:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(b"READY=1\\nSTATUS=forged", "{notify}")
        s.close()
    except OSError:
        pass
    time.sleep(0.1)
""")
    d = sandbox.service("app", dict(DAEMON, workready="notify"), run__sh=NOTIFY_SERVICE)
    run = sandbox.start(SRVNAME="app")
    wait_lines(d / "pids", 1)
    # And a process outside the namespace altogether (its pid means nothing in there).
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as outsider:
        outsider.sendto(b"READY=1\nSTATUS=from the host", str(notify))
    wait_for(lambda: run.status()["readiness"]["socket"]["refused"] >= 3, what="refused messages")
    said = run.status()["readiness"]
    assert said["ready"] is False and said["status"] == "warming up", said
    assert health(run) == 1
    (d / "go").touch()
    wait_for(lambda: health(run) == 0, what="the service's own READY=1")
    assert run.status()["readiness"]["status"] == "serving"


def test_fd_3_readiness(sandbox):
    d = sandbox.service("app", dict(DAEMON, workready="fd:3"),
                        run__sh="echo $$ >> pids\nwhile [ ! -e go ]; do sleep 0.05; done\necho >&3\nexec sleep 1000\n")
    run = sandbox.start(SRVNAME="app")
    wait_lines(d / "pids", 1)
    wait_for(lambda: (status(run).get("uptime") or 0) >= 1.5, what="workintvl to pass")
    answer = run.srvctl("health")
    assert answer.returncode == 1 and "waiting for a newline on file descriptor 3" in answer.stdout, answer
    (d / "go").touch()
    wait_for(lambda: health(run) == 0, what="srvctl health 0 after the newline on fd 3")
    assert "workready fd:3: the service says it is ready" in run.log
    assert re.search(r"^ready:\s+yes \(workready fd:3\)$", run.srvctl("status").stdout, re.M)


def test_status_check_mode_needs_the_word_and_a_passed_check(sandbox):
    d = sandbox.service("app", dict(DAEMON, workready="fd:3", workwatch=1),
                        run__sh="while [ ! -e go ]; do sleep 0.05; done\necho >&3\nexec sleep 1000\n",
                        PeriodicST_ok="exit 0\n")
    run = sandbox.start(SRVNAME="app")
    wait_for(lambda: status(run).get("checks"), what="a passed check cycle")
    assert health(run) == 1
    (d / "go").touch()
    wait_for(lambda: health(run) == 0, what="ready: the newline and a passed cycle")


def test_a_daemon_with_notification_fd(sandbox):
    go = sandbox.root / "daemon-go"
    sandbox.etc("service/web/run", f"while [ ! -e {go} ]; do sleep 0.05; done\necho >&4\nexec sleep 1000\n")
    (sandbox.root / ".etc-up/service/web/notification-fd").write_text("4\n")
    sandbox.service("app", DAEMON, run__sh="exec sleep 1000\n")
    run = sandbox.start(SRVNAME="app")

    def web() -> dict:
        return next((d for d in status(run).get("daemons", []) if d["name"] == "web"), {})
    wait_for(lambda: web().get("state") == "running", what="daemon web running")
    assert web()["ready"] is False
    assert re.search(r"^daemon:\s+web: running, pid \d+, up \d+s, not ready yet \(notification-fd\)$",
                     run.srvctl("status").stdout, re.M)
    go.touch()
    wait_for(lambda: web().get("ready") is True, what="daemon web ready")
    assert re.search(r"daemon web \(pid \d+\) is ready \(a newline on fd 4\)", run.log)
    assert re.search(r"^daemon:\s+web: running, pid \d+, up \d+s, ready$", run.srvctl("status").stdout, re.M)


@pytest.mark.skipif(shutil.which("systemd-notify") is None, reason="no systemd-notify")
def test_systemd_notify_from_a_shell_script(sandbox):
    """systemd's own tool: run as root it sends with its parent's pid (the service's shell),
    which lives on."""
    d = sandbox.service("app", dict(DAEMON, workready="notify"),
                        run__sh='while [ ! -e go ]; do sleep 0.05; done\n'
                                'systemd-notify --ready --status="up via systemd-notify"\nexec sleep 1000\n')
    run = sandbox.start(SRVNAME="app")
    wait_for(lambda: status(run).get("service_pid"), what="the service")
    assert health(run) == 1
    (d / "go").touch()
    wait_for(lambda: health(run) == 0, what="srvctl health 0 after systemd-notify --ready")
    assert run.status()["readiness"]["status"] == "up via systemd-notify"


def test_a_workuser_service_reaches_its_notify_socket(tmp_path):
    """The run directory is 0700 and the service runs as nobody: it gets an abstract socket."""
    import os
    import pwd
    import tempfile
    from pathlib import Path

    from tests.conftest import Sandbox

    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("needs the nobody account")
    if os.geteuid() != 0:
        pytest.skip("workuser needs root")
    root = Path(tempfile.mkdtemp(prefix="notify-sandbox-"))
    root.chmod(0o711)
    box = Sandbox(root)
    out = root / "out"
    out.mkdir()
    out.chmod(0o1777)
    try:
        service = NOTIFY_SERVICE.replace('with open("pids", "a")', f'with open("{out}/pids", "a")') \
                                .replace('os.path.exists("go")', f'os.path.exists("{out}/go")')
        box.service("app", dict(DAEMON, workready="notify", workuser="nobody"), run__sh=service)
        run = box.start(SRVNAME="app")
        wait_lines(out / "pids", 1)
        wait_for(lambda: (status(run).get("readiness") or {}).get("status") == "warming up",
                 what=f"STATUS=warming up from nobody\n--- log:\n{run.log}")
        assert status(run)["readiness"]["socket"]["socket"].startswith("@fsm-init-notify-")
        (out / "go").touch()
        wait_for(lambda: health(run) == 0, what="ready")
    finally:
        for running in box.runs:
            running.kill()
        shutil.rmtree(root, ignore_errors=True)
