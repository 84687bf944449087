"""``fsm-init status`` in a real terminal, as a person sees it.

fsm-init runs as PID 1 of a fresh PID namespace (see ``tests/conftest.py``); the live
view (``python -m fsm_init status --interval 0.2``) runs in a tmux pane of 110x45 on a
private tmux server (``tmux -L <unique name>``, killed when the test ends).  The test
changes the service's state -- a failing check, ``srvctl restart``, a killed service,
``srvctl stop`` -- and asserts only on what ``tmux capture-pane -p`` shows.  Every
wait polls the pane with a deadline; none is a bare sleep.

Also here: ``scripts/status-picture`` (the README's picture of the view) runs, writes
an SVG of the view, and ``diagrams/status-view.svg`` is what it writes today.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import FSM_INIT, ROOT, needs_pid_namespace, wait_for

WIDTH, HEIGHT = 110, 45
PANE_DEADLINE = 10.0
CHECKED = {"initdelay": 0, "workstart": "./run.sh", "workwatch": 1, "workintvl": 1}
# The service records its (namespace) pid and runs until it is stopped.  Its check fails,
# saying why on stderr, while ./fail exists or when the service is gone: in status-check
# mode the checks, not the service's exit, decide about a restart.
HOLD = "echo $$ > pid\nwhile :; do sleep 0.05; done\n"
CHECK = ("if [ -e fail ] || ! kill -0 \"$(cat pid)\" 2>/dev/null; then\n"
         "    echo 'curl: (7) Failed to connect to 127.0.0.1 port 8080: connection refused' >&2; exit 7\n"
         "fi\n")
HEALTHY = (r"state\s+watch for \d+s", r"health\s+healthy\b", r"PeriodicST-http\s+ok\b")

needs_tmux = pytest.mark.skipif(not shutil.which("tmux"), reason="needs tmux (scripts/setup installs it) "
                                                                  "to drive fsm-init status in a real terminal")


class Pane:
    """One command running in a tmux pane on a private tmux server."""

    def __init__(self, command: list[str], env: dict) -> None:
        self.socket = f"fsm-init-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.last = ""
        # The pane's command gets the client's environment explicitly: a tmux server
        # starts its panes from its own (global) environment, not the caller's.
        line = shlex.join(["env", "-i", *(f"{k}={v}" for k, v in sorted(env.items())), *command])
        # remain-on-exit: a view that exits leaves its last words on the pane for the assertion.
        subprocess.run(self.tmux("start-server", ";", "set-option", "-g", "remain-on-exit", "on", ";",
                                 "new-session", "-d", "-x", str(WIDTH), "-y", str(HEIGHT), line),
                       check=True, env=env, timeout=10)
        where = subprocess.run(self.tmux("display-message", "-p", "#{socket_path}"), capture_output=True,
                               text=True, timeout=5)
        self.socket_path = where.stdout.strip()

    def tmux(self, *args: str) -> list[str]:
        return ["tmux", "-L", self.socket, "-f", "/dev/null", *args]

    def capture(self) -> str:
        result = subprocess.run(self.tmux("capture-pane", "-p"), capture_output=True, text=True, timeout=5)
        if result.returncode == 0:
            self.last = result.stdout
        return self.last

    def wait(self, *patterns: str, timeout=PANE_DEADLINE, what="") -> str:
        """The pane's text once every regex in ``patterns`` is on it."""
        regexes = [re.compile(p, re.M) for p in patterns]

        def shown():
            text = self.capture()
            return text if all(r.search(text) for r in regexes) else None

        try:
            return wait_for(shown, timeout, what or " and ".join(patterns), interval=0.1)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- the pane shows:\n{self.last}") from None

    def kill(self) -> None:
        subprocess.run(self.tmux("kill-server"), capture_output=True, timeout=10)
        if self.socket_path.endswith(self.socket):  # tmux leaves its socket file behind
            Path(self.socket_path).unlink(missing_ok=True)


@pytest.fixture
def pane_for(request):
    """pane_for(env): fsm-init status live in a fresh tmux pane, with the client environment env."""

    def start(env: dict) -> Pane:
        # rich measures the pane itself: no COLUMNS/LINES from the caller, no outer tmux.
        env = {k: v for k, v in env.items() if k not in ("TMUX", "TMUX_PANE", "COLUMNS", "LINES")}
        env["TERM"] = "xterm-256color"
        pane = Pane([*FSM_INIT, "status", "--interval", "0.2"], env)
        request.addfinalizer(pane.kill)
        return pane

    return start


def host_pid(run, ns_pid: int) -> int:
    """The host pid of the process that is ``ns_pid`` inside run's PID namespace."""
    for host in run.namespace_pids():
        try:
            for line in Path(f"/proc/{host}/status").read_text().splitlines():
                if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                    return host
        except OSError:
            pass
    raise AssertionError(f"no process is pid {ns_pid} in the namespace")


def restarts(text: str) -> int:
    found = re.search(r"\brestarts\s+(\d+)", text)
    assert found, f"no restart count on the pane:\n{text}"
    return int(found.group(1))


def service_pid(text: str) -> int:
    found = re.search(r"\bservice\s+pid (\d+)", text)
    assert found, f"no service pid on the pane:\n{text}"
    return int(found.group(1))


@needs_pid_namespace
@needs_tmux
def test_live_view_follows_checks_restarts_kills_and_stop(sandbox, pane_for):
    d = sandbox.service("web", CHECKED, run__sh=HOLD, PeriodicST_http=CHECK)
    run = sandbox.start(SRVNAME="web")
    wait_for(lambda: run.srvctl("status").returncode == 0, what=f"fsm-init to answer\n--- log:\n{run.log}")
    pane = pane_for(sandbox.env())

    # Healthy: watching between check cycles, the check passing, the state marked on the path.
    text = pane.wait(*HEALTHY, what="state watch and healthy")
    assert re.search(r"mode\s+status-check, checks every 1s", text), text
    assert "▶watch" in text
    assert restarts(text) == 0
    assert re.search(r"last exit\s+-\s", text), text

    # (a) The check fails: the pane shows its name, its output and the restart it sets off.
    (d / "fail").touch()
    # The failed cycle's row leaves the check table as soon as the next instance starts
    # ("no check results of this instance yet"); the transition keeps the cause in view.
    text = pane.wait(r"check → restart\s.*check failed: PeriodicST-http exited 7",
                     r"\(output: curl: \(7\) Failed to connect", r"connection refused\)",
                     what="the failed check, its output and the restart")
    (d / "fail").unlink()
    text = pane.wait(*HEALTHY, r"\brestarts\s+[1-9]", what="healthy again, a restart counted")
    before = restarts(text)

    # (b) srvctl restart: the count goes up and the transition's cause says who asked.
    first = service_pid(text)
    assert run.srvctl("restart").returncode == 0
    text = pane.wait(rf"\brestarts\s+{before + 1}\b", r"watch → restart\s.*srvctl restart", *HEALTHY,
                     what="the restart by srvctl restart, counted")
    second = service_pid(text)
    assert second != first

    # (c) The service is killed: its exit shows, the next check fails and a new instance starts.
    os.kill(host_pid(run, second), signal.SIGKILL)
    pane.wait(r"last exit\s+137\b", what="the killed service's exit status")
    text = pane.wait(rf"\brestarts\s+{before + 2}\b", *HEALTHY, what="a new instance after the kill")
    assert service_pid(text) != second
    assert re.search(r"check → restart\s.*check failed: PeriodicST-http exited 7", text), text

    # (d) srvctl stop: fsm-init exits; the view says so over the last recorded state.
    assert run.srvctl("stop").returncode == 0
    assert run.wait() == 0
    text = pane.wait(r"fsm-init is not running \(last seen \d\d:\d\d:\d\d", r"fsm-init status \(not running\)",
                     what="the not-running banner")
    assert re.search(r"state\s+exited\b", text), text


PICTURE = ROOT / "diagrams" / "status-view.svg"


def test_status_picture_is_the_view_rendered_today(tmp_path):
    out = tmp_path / "status-view.svg"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "status-picture"), str(out)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    svg = out.read_text()
    assert svg.lstrip().startswith("<svg") and svg.rstrip().endswith("</svg>")
    text = svg.replace("&#160;", " ")  # rich writes the spaces of the terminal's cells as &#160;
    for shown in ("fsm-init status", "restart for 1s", "▶restart", "PeriodicST-http", "exit 7",
                  "Connection refused", "firewall", "unavailable: iptables not found", "srvctl restart",
                  "check → restart"):
        assert shown in text, f"{shown!r} is not in the picture"
    assert PICTURE.exists() and PICTURE.read_text() == svg, \
        f"{PICTURE.relative_to(ROOT)} differs from the view rendered today: run scripts/status-picture"
