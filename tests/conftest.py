"""Shared test harness.

``sandbox`` gives an integration test a temporary /srv root, state dir and run dir,
and starts fsm-init as real PID 1 of a fresh PID namespace
(``unshare --pid --fork --mount-proc``).  Every wait has a deadline and polls for an
event (a log line, a file, a process state); none is a bare sleep.
"""

import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.procfs import namespace_processes

ROOT = Path(__file__).resolve().parent.parent
FSM_INIT = [sys.executable, "-m", "fsm_init"]
SRVCTL = [sys.executable, "-m", "fsm_init.client.srvctl"]
DEADLINE = 15.0
# Each fsm-init under test gets its own network namespace (loopback up), a private
# overlay over /etc and an empty /root: a firewall, chpasswd or authorized_keys written
# by a test must never reach this machine.  unshare makes the new mounts private.
ISOLATE = (
    'box=$1; shift; ip link set lo up || exit 1; '
    'mkdir -p "$box/.etc-up" "$box/.etc-work" "$box/.root" && '
    'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$box/.etc-up,workdir=$box/.etc-work" /etc && '
    'mount --bind "$box/.root" /root || exit 1; '
    'exec "$@"'
)
# How the image starts fsm-init: the signals stay blocked (pending, not dropped by the
# kernel as PID 1's default-action signals are) while the interpreter starts.
BLOCKING_LAUNCHER = ("env", "--block-signal=TERM,INT,HUP,USR1,USR2,QUIT,WINCH,CONT,CHLD")


def wait_for(predicate, timeout=DEADLINE, what="condition", interval=0.02):
    """Poll predicate until it returns a true value or the deadline passes."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def lines(path: Path) -> list[str]:
    """The lines of a file a service or script writes; [] until it exists."""
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def wait_lines(path: Path, n: int, timeout=DEADLINE) -> list[str]:
    return wait_for(lambda: len(lines(path)) >= n and lines(path), timeout, f"{n} line(s) in {path.name}")


def count_file(directory: Path) -> str:
    """./service.run.count, or "" before fsm-init wrote it."""
    try:
        return (directory / "service.run.count").read_text()
    except FileNotFoundError:
        return ""


def first_child(pid: int) -> int | None:
    """unshare's child: PID 1 of the namespace it made (None until it is there)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                          capture_output=True).returncode == 0


needs_pid_namespace = pytest.mark.skipif(not can_unshare(), reason="needs root and unshare --pid (integration)")


class Running:
    """One fsm-init running as PID 1 of its own PID namespace."""

    def __init__(self, sandbox: "Sandbox", args, env, launcher=()) -> None:
        self.sandbox = sandbox
        self.out_path = sandbox.root / f"out-{len(sandbox.runs)}.log"
        self.err_path = sandbox.root / f"err-{len(sandbox.runs)}.log"
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--net", "--fork", "--mount-proc", "--kill-child",
             "sh", "-c", ISOLATE, "isolate", str(sandbox.root), *launcher, *FSM_INIT, *args],
            env=env, stdin=subprocess.DEVNULL,
            stdout=open(self.out_path, "wb"), stderr=open(self.err_path, "wb"),
            cwd=sandbox.root)
        self.pid1 = wait_for(lambda: first_child(self.proc.pid), what="fsm-init to start")

    @property
    def log(self) -> str:
        return self.err_path.read_text(errors="replace")

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout=DEADLINE, count=1) -> str:
        regex = re.compile(pattern)
        wait_for(lambda: len(regex.findall(self.log)) >= count or self.proc.poll() is not None and
                 len(regex.findall(self.log)) >= count, timeout, f"log line /{pattern}/ x{count}\n--- log:\n{self.log}")
        return self.log

    def wait(self, timeout=DEADLINE) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"fsm-init did not exit within {timeout}s\n--- log:\n{self.log}")

    def signal(self, sig: int) -> None:
        os.kill(self.pid1, sig)

    def srvctl(self, *args, timeout=DEADLINE) -> subprocess.CompletedProcess:
        return subprocess.run([*SRVCTL, *args], env=self.sandbox.env(), capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict:
        result = self.srvctl("status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def wait_state(self, state: str, timeout=DEADLINE) -> dict:
        def reached():
            result = self.srvctl("status", "--json")
            if result.returncode == 0:
                status = json.loads(result.stdout)
                return status if status["state"] == state else None
            return None
        return wait_for(reached, timeout, f"state {state}\n--- log:\n{self.log}")

    def namespace_pids(self) -> list[int]:
        """Host pids of every live process in the namespace (fsm-init included)."""
        return [pid for pid, fields in namespace_processes(self.pid1).items() if fields[0] != b"Z"]

    def host_pid(self, ns_pid: int) -> int:
        """The host pid of the namespace's ns_pid (the test runs outside the namespace)."""
        for host in self.namespace_pids():
            for line in Path(f"/proc/{host}/status").read_text().splitlines():
                if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                    return host
        raise AssertionError(f"no process {ns_pid} in the namespace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            # PID 1 first: its death ends the namespace.  unshare's --kill-child works through
            # the parent-death signal, which setpriv clears when it changes the user.
            try:
                os.kill(self.pid1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.srv = root / "srv"
        self.state_dir = root / "state"
        self.run_dir = root / "run"
        self.srv.mkdir()
        self.runs: list[Running] = []

    def env(self, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SRV", "FSM_INIT_"))}
        env.update(FSM_INIT_SRV_ROOT=str(self.srv), FSM_INIT_STATE_DIR=str(self.state_dir),
                   FSM_INIT_RUN_DIR=str(self.run_dir), PYTHONPATH=str(ROOT),
                   FSM_INIT_SYSLOG_SOCKET="off",  # a test that wants the relay names a path
                   FSM_INIT_CONTAINER_ENVIRONMENT=str(self.root / "container_environment"))
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def service(self, name: str, workcfg=None, **scripts: str) -> Path:
        """A service directory; workcfg is a dict (dumped), a str (written raw) or None (no file).
        Keyword arguments are executable files (names with - written as _, e.g. PeriodicST_ok)."""
        directory = self.srv / name
        directory.mkdir()
        if workcfg is not None:
            (directory / "workcfg.json").write_text(workcfg if isinstance(workcfg, str) else json.dumps(workcfg))
        for filename, body in scripts.items():
            path = directory / filename.replace("_", "-", 1) if filename.startswith(("Periodic", "EnvResume")) \
                else directory / filename.replace("__", ".")
            path.write_text(body if body.startswith("#!") else "#!/bin/sh\n" + body)
            path.chmod(0o755)
        return directory

    def etc(self, relative: str, body: str | None = None, mode: int = 0o755) -> Path:
        """/etc/RELATIVE as fsm-init sees it: a file (body given) or a directory in the upper
        layer of the sandbox's private overlay over /etc; the machine's /etc is never touched."""
        upper = self.root / ".etc-up"
        path = upper / relative
        directory = path if body is None else path.parent
        directory.mkdir(parents=True, exist_ok=True)
        # 0755 whatever the umask: fsm-init may run as nobody (nobody_sandbox).
        for d in [directory, *directory.parents]:
            if d == upper.parent:
                break
            d.chmod(0o755)
        if body is None:
            return path
        path.write_text(body if body.startswith("#!") else "#!/bin/sh\n" + body)
        path.chmod(mode)
        return path

    def start(self, *args, launcher=(), **env) -> Running:
        running = Running(self, args, self.env(**env), launcher)
        self.runs.append(running)
        return running


@pytest.fixture
def sandbox(tmp_path):
    box = Sandbox(tmp_path)
    yield box
    for running in box.runs:
        running.kill()


# -- fsm-init itself as a non-root user --------------------------------------------------------

AS_NOBODY = ("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups")


def _nobody() -> tuple[int, int] | None:
    try:
        return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    except KeyError:
        return None


NOBODY = _nobody()
needs_nobody = pytest.mark.skipif(NOBODY is None or not shutil.which("setpriv"),
                                  reason="needs the nobody user, the nogroup group and setpriv")


@contextlib.contextmanager
def reachable_sandbox(prefix: str):
    """(Sandbox, out path) in a new root-owned 0711 directory (pytest's tmp_path is under a
    0700 one): nobody can reach what is below it, not create files in it.  The runs are
    killed and the directory removed at the end."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o711)
    box = Sandbox(root)
    try:
        yield box, root / "out"
    finally:
        for running in box.runs:
            running.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def nobody_sandbox():
    """(Sandbox, out) fsm-init can run in as nobody (launcher=AS_NOBODY): a root-owned
    0711 root (nobody cannot create files in it), state, run and out directories nobody owns."""
    with reachable_sandbox("nobody-sandbox-") as (box, out):
        for directory in (box.state_dir, box.run_dir, out):
            directory.mkdir()
            os.chown(directory, *NOBODY)
        yield box, out


@pytest.fixture
def workuser_sandbox():
    """(Sandbox, out) for a service run as the workuser nobody by fsm-init as root: a /srv
    nobody can reach (root-owned, 0711 above it) and an out directory anyone may write
    (the scripts' reports)."""
    with reachable_sandbox("workuser-sandbox-") as (box, out):
        out.mkdir()
        out.chmod(0o1777)
        yield box, out


@pytest.fixture
def public_dir():
    """A directory nobody can reach and read (0755; pytest's tmp_path is under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="fsmt-public-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
