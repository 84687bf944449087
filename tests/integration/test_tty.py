"""fsm-init on a terminal, as PID 1 of a fresh PID namespace.

With a pseudo-terminal as stdin/stdout/stderr (its controlling terminal), the non-daemon
service must be the terminal's foreground process group, as under tini: an interactive
shell reads what is typed, and Ctrl-C reaches the service, not fsm-init.  The anchors'
scenarios: tini's `docker run -ti ... tini -- dash` + `exit 0` and Ctrl-C → 130,
dumb-init's "the child gets the controlling tty" (`$-` holds `m`).
"""

import fcntl
import os
import re
import select
import signal
import subprocess
import termios
import time

import pytest

from tests.conftest import FSM_INIT, needs_pid_namespace

pytestmark = needs_pid_namespace


class Terminal:
    """fsm-init running as PID 1 of a PID namespace on the slave side of a new pty."""

    def __init__(self, sandbox, *args, **env) -> None:
        self.master, slave = os.openpty()
        self.buffer = b""
        self.eof = False
        env = sandbox.env(**env)
        env.pop("ENV", None)  # no start-up file for sh -i
        env["TERM"] = "dumb"

        def controlling_terminal():
            # start_new_session already made this child a session leader; the pty
            # (now its stdin) becomes its controlling terminal, its group the foreground.
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            self.proc = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *FSM_INIT, *args],
                stdin=slave, stdout=slave, stderr=slave, env=env, cwd=sandbox.root,
                start_new_session=True, preexec_fn=controlling_terminal)
        finally:
            os.close(slave)

    def read_available(self, timeout: float) -> None:
        if self.eof:
            return
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every slave fd closed
            data = b""
        if data:
            self.buffer += data
        else:
            self.eof = True

    @property
    def text(self) -> str:
        return self.buffer.decode(errors="replace")

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match:
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        while True:
            match = regex.search(self.text)
            if match:
                return match
            if time.monotonic() > end or self.eof:
                raise AssertionError(f"no /{pattern}/ on the terminal within {timeout}s\n--- terminal:\n{self.text}")
            self.read_available(0.05)

    def type(self, data: str) -> None:
        os.write(self.master, data.encode())

    def wait(self, timeout: float = 10.0) -> int:
        end = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > end:
                raise AssertionError(f"fsm-init did not exit within {timeout}s\n--- terminal:\n{self.text}")
            self.read_available(0.05)  # keep draining: a full pty would block the writers
        while not self.eof:
            self.read_available(0.05)
            if time.monotonic() > end + 2:
                break
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.master)


@pytest.fixture
def terminal(sandbox):
    started = []

    def start(*args, **env) -> Terminal:
        term = Terminal(sandbox, *args, **env)
        started.append(term)
        return term

    yield start
    for term in started:
        term.close()


STAT_FIELDS = r"""set -- $(sed 's/.*) //' /proc/$$/stat); echo "PGRP=$3 SID=$4 TPGID=$6 PID=$$"; """
# The service announces itself once it owns the terminal (fsm-init hands it over just
# after the spawn).  The marker is quoted so that fsm-init's "starting the service: ..."
# log line, which shows the command, does not match it.
UP = r"""until (set -- $(sed 's/.*) //' /proc/$$/stat); [ "$3" = "$6" ]); do sleep 0.01; done; echo SERVICE-"UP"; """


def test_non_daemon_service_is_the_terminal_foreground_process_group(terminal):
    # /proc/self/stat after the comm field: state ppid pgrp session tty_nr tpgid
    term = terminal("--", "sh", "-c", STAT_FIELDS + "exit 4")
    match = term.expect(r"PGRP=(\d+) SID=(\d+) TPGID=(-?\d+) PID=(\d+)")
    assert term.wait() == 4, term.text
    pgrp, sid, tpgid, pid = (int(x) for x in match.groups())
    assert tpgid == pgrp, f"the terminal's foreground group is {tpgid}, the service's group {pgrp}\n{term.text}"
    assert pgrp == pid, "the service leads a process group of its own"
    assert pgrp != 1, "the service must not share fsm-init's process group"


def test_interactive_shell_reads_the_terminal_and_its_exit_status_is_kept(terminal):
    term = terminal("--", "sh", "-i", PS1="fsmtest> ")
    term.expect(r"fsmtest> ")
    assert "job control turned off" not in term.text, term.text
    term.type("echo \"flags=$-\"\n")
    flags = term.expect(r"flags=(\w+)").group(1)
    assert "m" in flags, f"sh -i has no job control (flags {flags})\n{term.text}"
    term.type("read line\n")
    term.expect(r"read line\r?\n")  # the echo of the command line
    term.type("hello from the terminal\n")
    term.type("echo \"got:$line\"\n")
    term.expect(r"got:hello from the terminal")
    term.type("exit 3\n")
    assert term.wait() == 3, term.text
    assert "exiting with status 3" in term.text


def test_ctrl_c_on_the_terminal_reaches_the_service_not_fsm_init(terminal):
    term = terminal("--", "sh", "-c", UP + "while :; do sleep 0.1; done")
    term.expect(r"SERVICE-UP")
    term.type("\x03")  # ^C: SIGINT to the terminal's foreground process group
    assert term.wait() == 130, term.text
    assert "received SIGINT" not in term.text, "fsm-init got the terminal's SIGINT itself\n" + term.text


def test_terminal_service_gets_a_clean_signal_state(terminal):
    term = terminal("--", "cat", "/proc/self/status")
    assert term.wait() == 0, term.text
    fields = dict(re.findall(r"^(Sig\w+):\s*([0-9a-f]+)", term.text, re.M))
    assert int(fields["SigBlk"], 16) == 0, term.text
    ignored = int(fields["SigIgn"], 16)
    for sig in (signal.SIGPIPE, signal.SIGTTIN, signal.SIGTTOU):
        assert not ignored & (1 << (sig - 1)), f"{sig.name} ignored in the service\n{term.text}"


@pytest.mark.parametrize("phase", ["engine", "reaper"])
def test_sigterm_to_pid1_stops_the_terminal_service(terminal, phase):
    """SIGTERM to PID 1 reaches the service's process group (its trap runs), from the
    engine and from the thin reaper (which stops the group, not a session, here)."""
    term = terminal("--", "sh", "-c", "trap 'echo got-\"term\"; exit 0' TERM; " + UP + "while :; do sleep 0.1; done",
                    FSM_INIT_HANDOVER_AFTER="0" if phase == "engine" else "0.2")
    term.expect(r"SERVICE-UP")
    pid1 = _pid1(term)
    if phase == "reaper":
        term.expect(r"handing PID duties to the thin reaper")
        end = time.monotonic() + 10
        while "fsm_init.core.reaper" not in _cmdline(pid1):
            assert time.monotonic() < end, "PID 1 did not become the thin reaper\n" + term.text
            term.read_available(0.02)
    os.kill(pid1, signal.SIGTERM)
    assert term.wait() == 0, term.text
    assert "got-term" in term.text
    assert "received SIGTERM: stopping" in term.text


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pid1(term: Terminal) -> int:
    def found():
        try:
            with open(f"/proc/{term.proc.pid}/task/{term.proc.pid}/children") as f:
                children = f.read().split()
        except OSError:
            return None
        return int(children[0]) if children else None
    end = time.monotonic() + 10
    while not (pid := found()):
        if time.monotonic() > end:
            raise AssertionError("fsm-init did not start")
        term.read_available(0.02)
    return pid
