"""fsm-init's PID-1 duties, each checked with fsm-init as real PID 1 of a fresh PID namespace.

Scenarios follow the anchors' suites (tini, dumb-init, my_init; see
shared/reference/pid1-anchors.md): exit status passthrough, signal forwarding to the
whole session, graceful stop with a deadline in every waiting state, a clean signal
state for children, zombie reaping, leftover processes, the subreaper when not PID 1,
and the handover to the thin reaper.

Many tests run twice (``phase``): once against the engine (``FSM_INIT_HANDOVER_AFTER=0``
keeps it PID 1 for good) and once against the thin reaper it execs into (a short
``FSM_INIT_HANDOVER_AFTER``, and the test waits until PID 1's command line is the
reaper's before it acts).
"""

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BLOCKING_LAUNCHER, FSM_INIT, needs_pid_namespace, wait_for
from tests.procfs import namespace_processes, proc_state

pytestmark = needs_pid_namespace

PY = sys.executable
HANDOVER_LINE = "handing PID duties to the thin reaper"


# -- helpers -------------------------------------------------------------------------------

def script(sandbox, name: str, body: str) -> Path:
    """An executable /bin/sh script in the sandbox (outside /srv)."""
    path = sandbox.root / name
    path.write_text(body if body.startswith("#!") else "#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def proc_status(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def gone(pid: int) -> bool:
    """Exited and reaped: not even a zombie is left."""
    return proc_state(pid) is None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_kib(pid: int) -> int:
    return int(proc_status(pid)["VmRSS"].split()[0])


def mapped_libraries(pid: int) -> set[str]:
    """Basenames of the shared objects (C extensions included) mapped into a process."""
    libs = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1]
        if ".so" in path:
            libs.add(os.path.basename(path))
    return libs


def signal_set(hex_mask: str) -> set[int]:
    mask = int(hex_mask, 16)
    return {n for n in range(1, 65) if mask & (1 << (n - 1))}


def namespace_states(run) -> dict[int, str]:
    """Host pid → state of every process in fsm-init's PID namespace, zombies included."""
    return {pid: fields[0].decode() for pid, fields in namespace_processes(run.pid1).items()}


def host_pid(run, ns_pid: int) -> int:
    """The host pid of the process that is ns_pid inside fsm-init's namespace."""
    for pid in namespace_states(run):
        try:
            if proc_status(pid)["NSpid"].split()[-1] == str(ns_pid):
                return pid
        except (OSError, KeyError):
            pass
    raise AssertionError(f"no process {ns_pid} in the namespace")


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def wait_file(path: Path, timeout=10.0, contains: str = "") -> str:
    """Wait for a file (holding contains) and return its text."""
    wait_for(lambda: path.exists() and contains in read_text(path),
             timeout, f"{path.name} to exist" + (f" and hold {contains!r}" if contains else ""))
    return read_text(path)


def timed_wait(run, timeout) -> tuple[int, float]:
    start = time.monotonic()
    code = run.wait(timeout)
    return code, time.monotonic() - start


def exit_after_log(run, text: str, timeout: float) -> tuple[int, float]:
    """Wait for a log line, then for fsm-init's exit (polled every 5 ms): the exit status
    and the seconds between the two."""
    end = time.monotonic() + timeout
    while text not in run.log:
        if time.monotonic() > end or run.proc.poll() is not None:
            raise AssertionError(f"no log line {text!r}\n--- log:\n{run.log}")
        time.sleep(0.005)
    seen = time.monotonic()
    while run.proc.poll() is None:
        if time.monotonic() > end:
            raise AssertionError(f"fsm-init did not exit within {timeout}s\n--- log:\n{run.log}")
        time.sleep(0.005)
    return run.proc.returncode, time.monotonic() - seen


def is_reaper(pid: int) -> bool:
    return "fsm_init.core.reaper" in cmdline(pid)


class Phase:
    """Which program is PID 1 when the test acts: the engine, or the thin reaper."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def env(self) -> dict:
        return {"FSM_INIT_HANDOVER_AFTER": "0" if self.name == "engine" else "0.2"}

    def settle(self, pid: int, log) -> None:
        """Wait until the program under test holds PID duties (log: a callable returning the log)."""
        if self.name == "reaper":
            wait_for(lambda: HANDOVER_LINE in log(), 10, f"the handover log line\n--- log:\n{log()}")
            wait_for(lambda: is_reaper(pid), 10, f"PID 1 to become the thin reaper\n--- log:\n{log()}")
        else:
            assert not is_reaper(pid)

    def check(self, pid: int, log) -> None:
        """After the action: the program under test was still the one in charge."""
        if self.name == "engine":
            assert HANDOVER_LINE not in log()
        else:
            assert is_reaper(pid) or HANDOVER_LINE in log()


@pytest.fixture(params=["engine", "reaper"])
def phase(request):
    return Phase(request.param)


def settle(phase, run):
    phase.settle(run.pid1, lambda: run.log)
    # An answer over the control socket: the program in charge is in its event loop.
    run.wait_state("foreground" if phase.name == "engine" else "handover")


# -- exit status -------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [0, 1, 2, 127, 255])
def test_exit_status_is_passed_through(sandbox, code):
    run = sandbox.start("--", "sh", "-c", f"exit {code}")
    assert run.wait() == code
    assert f"exiting with status {code}" in run.log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_service_killed_by_a_signal_gives_128_plus_signal(sandbox, sig):
    run = sandbox.start("--", "sh", "-c", f"kill -{sig.name[3:]} $$")
    assert run.wait() == 128 + sig
    assert re.search(rf"was killed by {sig.name} \(status {128 + sig}\)", run.log), run.log


def _missing_absolute(sandbox):
    return str(sandbox.root / "no-such-program")


def _not_executable(sandbox):
    path = sandbox.root / "plain-file"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o644)
    return str(path)


def _directory(sandbox):
    path = sandbox.root / "a-directory"
    path.mkdir()
    return str(path)


@pytest.mark.parametrize("make, expected", [
    (_missing_absolute, 127),
    (lambda sandbox: "fsm-init-no-such-program-on-path", 127),
    (_not_executable, 126),
    (_directory, 126),
], ids=["missing-path", "missing-on-PATH", "not-executable", "directory"])
def test_exec_failure_of_the_command_line(sandbox, make, expected):
    run = sandbox.start("--", make(sandbox), "arg")
    code, elapsed = timed_wait(run, 10)
    assert code == expected, run.log
    assert re.search(rf"cannot execute .*\(status {expected}\)", run.log), run.log
    assert elapsed < 5


# -- stop signals --------------------------------------------------------------------------------

GRANDCHILD = """\
import os, signal, sys
out, ready = sys.argv[1], sys.argv[2]
def caught(signum, frame):
    with open(out + ".tmp", "w") as f:
        f.write(signal.Signals(signum).name)
    os.rename(out + ".tmp", out)
    os._exit(0)
signal.signal(signal.SIGTERM, caught)
signal.signal(signal.SIGINT, caught)
open(ready, "w").close()
while True:
    signal.pause()
"""


@pytest.mark.parametrize("traps", [False, True], ids=["service-dies", "service-traps"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_stop_signal_reaches_the_whole_session(sandbox, phase, sig, traps):
    """TERM/INT to PID 1 → the same signal to every process of the service's session (a
    grandchild catches it and writes a file); exit with the service's own status."""
    grandchild = sandbox.root / "grandchild.py"
    grandchild.write_text(GRANDCHILD)
    got, ready = sandbox.root / "got", sandbox.root / "ready"
    trap = "trap 'exit 0' TERM INT\n" if traps else ""
    service = script(sandbox, "service.sh", f"{trap}{PY} {grandchild} {got} {ready} &\nwait\n")
    run = sandbox.start("--", str(service), FSM_INIT_STOP_GRACE=12, **phase.env)
    wait_file(ready)
    settle(phase, run)
    run.signal(sig)
    code, elapsed = timed_wait(run, 10)
    assert read_text(got) == sig.name, f"the grandchild did not catch {sig.name}\n{run.log}"
    assert code == (0 if traps else 128 + sig), run.log
    assert elapsed < 6, f"took {elapsed:.1f}s: the stop waited for the grace time\n{run.log}"
    assert "outlived the grace time" not in run.log
    # The grandchild was stopped with the session, not swept up later as a leftover.
    assert "leftover processes" not in run.log, run.log
    phase.check(run.pid1, lambda: run.log)


def test_service_ignoring_sigterm_is_killed_after_the_grace_time(sandbox, phase):
    ready = sandbox.root / "ready"
    service = script(sandbox, "service.sh", f"trap '' TERM\ntouch {ready}\nwhile :; do sleep 0.1; done\n")
    run = sandbox.start("--", str(service), FSM_INIT_STOP_GRACE=1, **phase.env)
    wait_file(ready)
    settle(phase, run)
    run.signal(signal.SIGTERM)
    code, elapsed = timed_wait(run, 10)
    assert code == 137, run.log
    assert 0.9 <= elapsed < 6, f"exit after {elapsed:.2f}s with FSM_INIT_STOP_GRACE=1\n{run.log}"
    assert re.search(r"the service's session outlived the grace time: sent SIGKILL", run.log), run.log


# -- forwarded signals --------------------------------------------------------------------------

FORWARDED = [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT, signal.SIGWINCH, signal.SIGCONT]


RECORDER = """\
import signal, sys
out, ready = sys.argv[1], sys.argv[2]
def record(signum, frame):
    with open(out, "a") as f:
        f.write(signal.Signals(signum).name[3:] + "\\n")
for name in sys.argv[3:]:
    signal.signal(getattr(signal, "SIG" + name), record)
open(ready, "w").close()
while True:
    signal.pause()
"""


def test_other_signals_are_forwarded_and_do_not_stop_fsm_init(sandbox, phase):
    """Each forwarded signal reaches the service (its trap records it) and a grandchild in
    the service's session; fsm-init and the service carry on."""
    got, ready = sandbox.root / "got", sandbox.root / "ready"
    grandchild_got, grandchild_ready = sandbox.root / "grandchild-got", sandbox.root / "grandchild-ready"
    recorder = sandbox.root / "recorder.py"
    recorder.write_text(RECORDER)
    names = [s.name[3:] for s in FORWARDED]
    traps = "".join(f"trap 'echo {name} >> {got}' {name}\n" for name in names)
    service = script(sandbox, "service.sh",
                     f"ulimit -c 0\n{traps}{PY} {recorder} {grandchild_got} {grandchild_ready} {' '.join(names)} &\n"
                     f"touch {ready}\nwhile :; do sleep 0.1; done\n")
    run = sandbox.start("--", str(service), **phase.env)
    wait_file(ready)
    wait_file(grandchild_ready)
    settle(phase, run)
    service_pid = run.status()["service_pid"]
    for sig, name in zip(FORWARDED, names):
        run.signal(sig)
        for path, who in ((got, "the service's trap"), (grandchild_got, "the grandchild")):
            wait_for(lambda: name in read_text(path).split(), 10,
                     f"{who} to record {sig.name}; got {read_text(path).split()}\n--- log:\n{run.log}")
    assert read_text(got).split() == names
    assert read_text(grandchild_got).split() == names
    assert run.proc.poll() is None, run.log
    status = run.status()
    assert status["state"] == ("foreground" if phase.name == "engine" else "handover")
    assert status["service_pid"] == service_pid
    phase.check(run.pid1, lambda: run.log)
    run.signal(signal.SIGTERM)
    assert run.wait(10) == 143


# -- SIGTERM in every waiting state --------------------------------------------------------------

NO_FIREWALL = {"firewall": {"enable": "no"}}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_stop_signal_during_initdelay(sandbox, sig):
    directory = sandbox.service("svc", {"initdelay": 30, "workstart": "./run.sh", **NO_FIREWALL},
                                run__sh="touch ran\nexec sleep 60\n")
    run = sandbox.start(SRVNAME="svc")
    run.wait_state("delay")
    run.signal(sig)
    code, elapsed = timed_wait(run, 10)
    assert code == 128 + sig, run.log  # stopped before any service ran: as tini reports a signal
    assert elapsed < 8, f"{elapsed:.1f}s\n{run.log}"
    assert not (directory / "ran").exists(), "the service was started after the stop signal"
    assert "starting the service" not in run.log


def test_sigterm_during_a_hanging_foreground_check(sandbox):
    directory = sandbox.service(
        "svc", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 1, "workintvl": 1, "worktimeout": 60,
                **NO_FIREWALL},
        run__sh="trap 'exit 0' TERM\nwhile :; do sleep 0.1; done\n",
        PeriodicST_hang="touch checking\nexec sleep 60\n")
    run = sandbox.start(SRVNAME="svc")
    wait_file(directory / "checking")
    run.wait_state("check")
    run.signal(signal.SIGTERM)
    code, elapsed = timed_wait(run, 10)
    assert code == 0, run.log
    assert elapsed < 8, f"{elapsed:.1f}s\n{run.log}"


def test_sigterm_during_a_check_abandons_the_check_cycle(sandbox):
    """A check that exits cleanly on SIGTERM must not make the stopping engine go on to
    the next check or to the PeriodicMT-* scripts."""
    directory = sandbox.service(
        "svc", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 1, "workintvl": 1, "worktimeout": 60,
                **NO_FIREWALL},
        run__sh="trap 'exit 0' TERM\nwhile :; do sleep 0.1; done\n",
        PeriodicST_a="trap 'exit 0' TERM\ntouch checking\nwhile :; do sleep 0.1; done\n",
        PeriodicST_b="touch b-ran\n",
        PeriodicMT_after="touch mt-ran\n")
    run = sandbox.start(SRVNAME="svc")
    wait_file(directory / "checking")
    run.wait_state("check")
    run.signal(signal.SIGTERM)
    code, elapsed = timed_wait(run, 10)
    assert code == 0, run.log
    assert not (directory / "b-ran").exists(), f"PeriodicST-b was started during the stop\n{run.log}"
    assert not (directory / "mt-ran").exists(), f"PeriodicMT-after was started during the stop\n{run.log}"
    assert "restarting the service" not in run.log, run.log
    assert elapsed < 8, f"{elapsed:.1f}s\n{run.log}"


def test_sigterm_during_the_interval_before_the_first_check(sandbox):
    sandbox.service("svc", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 5, "workintvl": 30,
                            **NO_FIREWALL},
                    run__sh="exec sleep 60\n")
    run = sandbox.start(SRVNAME="svc")
    status = run.wait_state("restart_interval")
    assert status["service_pid"]
    run.signal(signal.SIGTERM)
    code, elapsed = timed_wait(run, 10)
    assert code == 143, run.log
    assert elapsed < 8, f"{elapsed:.1f}s\n{run.log}"


def test_sigterm_during_the_interval_before_a_restart(sandbox):
    sandbox.service("svc", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 30,
                            **NO_FIREWALL},
                    run__sh="exit 3\n")
    run = sandbox.start(SRVNAME="svc")
    run.wait_log(r"restart in 30s \(failure 1 in a row\)")
    status = run.wait_state("restart_interval")
    assert status["service_pid"] is None and status["last_exit"] == 3
    run.signal(signal.SIGTERM)
    code, elapsed = timed_wait(run, 10)
    assert code == 3, run.log
    assert elapsed < 8, f"{elapsed:.1f}s\n{run.log}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_stop_signal_during_the_idle_wait(sandbox, sig):
    sandbox.service("svc", {"initdelay": 0, **NO_FIREWALL})
    run = sandbox.start(SRVNAME="svc")
    run.wait_state("idle")
    run.signal(sig)
    code, elapsed = timed_wait(run, 10)
    assert code == 128 + sig, run.log  # stopped before any service ran: as tini reports a signal
    assert elapsed < 8, f"{elapsed:.1f}s\n{run.log}"


# -- the children's signal state ----------------------------------------------------------------

def _assert_clean(status_text: str, who: str) -> None:
    """No signal blocked and none ignored: glibc's two internal ones (32, 33) included."""
    fields = dict(line.split(":\t", 1) for line in status_text.splitlines() if ":\t" in line)
    assert "SigIgn" in fields, f"{who}: no /proc status\n{status_text}"
    blocked, ignored = signal_set(fields["SigBlk"]), signal_set(fields["SigIgn"])
    assert not blocked, f"{who} starts with blocked signals {sorted(blocked)}"
    assert not ignored, f"{who} starts with ignored signals {sorted(ignored)}"


# How a child writes what it started with: cat inherits its mask and ignored set from the
# sh that fsm-init started (sh changes neither for a foreground command).
def _dump(out: Path, name: str) -> str:
    return f"cat /proc/self/status > {out}/{name}.tmp && mv {out}/{name}.tmp {out}/{name}.status\n"


# Everything a launcher can ignore and block (all but KILL, STOP and glibc's 32 and 33).
INHERITS_ALL = ("env", "--ignore-signal", "--block-signal")
# A launcher that also leaves 32 and 33 ignored, as glibc's posix_spawn does to its
# children (so fsm-init started by such a program): rt_sigaction by system call, since
# glibc's sigaction refuses its internal signals.
RT_SIGACTION = {"x86_64": 13, "aarch64": 134}.get(os.uname().machine)
IGNORE_32_33 = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for sig in (32, 33):
    act = (ctypes.c_ulong * 4)(1, 0, 0, 0)  # SIG_IGN, no flags, no restorer, empty mask
    if libc.syscall(%d, sig, act, None, 8) != 0:
        sys.exit(f"rt_sigaction({sig}): {os.strerror(ctypes.get_errno())}")
os.execvp(sys.argv[1], sys.argv[1:])
"""
LAUNCHERS = {"clean": (), "inherits-all": INHERITS_ALL,
             "inherits-32-33": (PY, "-c", IGNORE_32_33 % (RT_SIGACTION or 0), *INHERITS_ALL)}


def _launcher(name: str) -> tuple:
    if name == "inherits-32-33" and RT_SIGACTION is None:
        pytest.skip(f"no rt_sigaction number known for {os.uname().machine}")
    return LAUNCHERS[name]


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_command_line_service_starts_with_a_clean_signal_state(sandbox, launcher):
    run = sandbox.start("--", "cat", "/proc/self/status", launcher=_launcher(launcher))
    assert run.wait() == 0, run.log
    _assert_clean(run.output, "the service")


@pytest.mark.skipif(not os.path.exists("/usr/bin/dumb-init"), reason="needs dumb-init")
def test_children_start_at_least_as_clean_as_dumb_inits(sandbox):
    """The reference: dumb-init as PID 1 with the same inherited state unblocks everything
    and resets the standard signals; fsm-init resets every signal (dumb-init 1.2.5 leaves
    the real-time ones ignored, and 32 and 33 when it inherited them so)."""
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *INHERITS_ALL,
                           "/usr/bin/dumb-init", "--", "cat", "/proc/self/status"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(":\t", 1) for line in done.stdout.splitlines() if ":\t" in line)
    assert not signal_set(fields["SigBlk"]) and not {s for s in signal_set(fields["SigIgn"]) if s < 32}, done.stdout
    run = sandbox.start("--", "cat", "/proc/self/status", launcher=INHERITS_ALL)
    assert run.wait() == 0, run.log
    _assert_clean(run.output, "fsm-init's child")


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_every_kind_of_child_starts_with_a_clean_signal_state(sandbox, launcher):
    """The service, start-up scripts, EnvResume, checks (ST, RT, MT), a daemon, a shutdown
    script and a helper command (iptables-save, found on PATH), with fsm-init itself
    started with every signal ignored and blocked that its launcher could."""
    out = sandbox.root / "out"
    out.mkdir()
    fake_bin = sandbox.root / "bin"
    fake_bin.mkdir()
    for name in ("iptables-save", "ip6tables-save"):
        script(sandbox, f"bin/{name}", _dump(out, name) + "exit 1\n")
    sandbox.etc("my_init.d/10-sig", _dump(out, "startup"))
    sandbox.etc("service/sigd/run", _dump(out, "daemon") + "exec sleep 1000\n")
    sandbox.etc("my_init.pre_shutdown.d/10-sig", _dump(out, "pre_shutdown"))
    sandbox.service(
        "svc", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 1, "workintvl": 1,
                "firewall": {"enable": "yes"}},
        run__sh=_dump(out, "service") + "exec sleep 1000\n",
        EnvResume_sig=_dump(out, "envresume"), PeriodicST_sig=_dump(out, "check"),
        PeriodicRT_sig=_dump(out, "rt"), PeriodicMT_sig=_dump(out, "mt"))
    run = sandbox.start(SRVNAME="svc", PATH=f"{fake_bin}:{os.environ['PATH']}", launcher=_launcher(launcher))
    children = ("startup", "envresume", "daemon", "iptables-save", "service", "check", "rt", "mt")
    for name in children:
        wait_file(out / f"{name}.status")
    # The launcher did its work: fsm-init itself runs with what it inherited ignored.
    inherited = {"clean": set(), "inherits-all": {signal.SIGALRM, signal.SIGPROF, 40},
                 "inherits-32-33": {32, 33, signal.SIGALRM}}[launcher]
    assert inherited <= signal_set(proc_status(run.pid1)["SigIgn"]), proc_status(run.pid1)["SigIgn"]
    run.signal(signal.SIGTERM)
    assert run.wait(20) == 143, run.log
    for name in (*children, "pre_shutdown"):
        _assert_clean(read_text(out / f"{name}.status"), name)


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_service_replacing_fsm_init_starts_with_a_clean_signal_state(sandbox, launcher):
    """FSM_INIT_EXEC_SERVICE: the service is exec'd in fsm-init's place with every signal
    reset, glibc's 32 and 33 too when fsm-init inherited them ignored (a glibc program's
    posix_spawn started it): exec would keep them ignored."""
    run = sandbox.start("--", "cat", "/proc/self/status", launcher=_launcher(launcher), FSM_INIT_EXEC_SERVICE="1")
    assert run.wait() == 0, run.log
    assert "the service replaces fsm-init" in run.log
    _assert_clean(run.output, "the exec'd service")


# -- zombies -----------------------------------------------------------------------------------

ORPHANS = 3000
ROUNDS = 4
ZOMBIE_SERVICE = """\
#!/bin/sh
# Each round (a line on ./go): orphan $1 short-lived processes (double fork, so PID 1
# adopts them), all blocked on ./release, then let them all exit at once.
n=$1
exec 3<>release
round=0
while :; do
  read cmd < go || continue
  round=$((round+1))
  i=0
  while [ $i -lt $n ]; do ( { read x <&3; } & ); i=$((i+1)); done
  echo $round > forked
  yes '' | head -n $n >&3
  echo $round > released
done
"""


def _write_fifo(path: Path, text: str, timeout=10.0) -> None:
    def opened():
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no reader yet
                return None
            raise
    fd = wait_for(opened, timeout, f"a reader on {path.name}")
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def test_thousands_of_orphans_are_reaped(sandbox, phase):
    os.mkfifo(sandbox.root / "go")
    os.mkfifo(sandbox.root / "release")
    service = script(sandbox, "orphans.sh", ZOMBIE_SERVICE)
    run = sandbox.start("--", str(service), str(ORPHANS), **phase.env)
    settle(phase, run)
    wait_for(lambda: len(namespace_states(run)) >= 2, 10, "the service")
    baseline_pids = set(namespace_states(run))
    rss = [rss_kib(run.pid1)]
    for round_ in range(1, ROUNDS + 1):
        _write_fifo(sandbox.root / "go", "go\n")
        wait_file(sandbox.root / "forked", 30, str(round_))
        wait_file(sandbox.root / "released", 30, str(round_))

        def settled():
            states = namespace_states(run)
            zombies = [pid for pid, state in states.items() if state == "Z"]
            return not zombies and set(states) <= baseline_pids

        start = time.monotonic()
        try:
            wait_for(settled, 20, "every orphan to be reaped", interval=0.2)
        except AssertionError:
            states = namespace_states(run)
            zombies = sum(1 for s in states.values() if s == "Z")
            raise AssertionError(f"round {round_}: {zombies} zombie(s) and {len(states)} process(es) left "
                                 f"after 20s\n--- log:\n{run.log[-3000:]}")
        reap_time = time.monotonic() - start
        assert reap_time < 10, f"reaping took {reap_time:.1f}s"
        rss.append(rss_kib(run.pid1))
    assert run.proc.poll() is None, run.log
    phase.check(run.pid1, lambda: run.log)
    # No per-orphan state.  The first round warms the allocator up (up to ~1.5 MiB seen,
    # the burst of exits is reaped in large batches); after it, growth is allocator noise
    # that stays bounded (<= ~150 KiB seen), while state kept per orphan grows with every
    # round (my_init: ~78 KiB per 1000 orphans, ~700 KiB over these rounds).
    later = rss[-1] - rss[1]
    assert later < 384, f"RSS grew {later} KiB over {(ROUNDS - 1) * ORPHANS} orphans after the first round (KiB: {rss})"
    assert rss[-1] - rss[0] < 3072, f"RSS grew {rss[-1] - rss[0]} KiB over {ROUNDS * ORPHANS} orphans (KiB: {rss})"
    run.signal(signal.SIGTERM)
    assert run.wait(10) == 143


# -- leftovers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("daemon_ignores_term", [False, True], ids=["daemon-catches-TERM", "daemon-ignores-TERM"])
def test_leftover_daemon_is_stopped_when_the_service_exits(sandbox, phase, daemon_ignores_term):
    got, ready, go = sandbox.root / "got", sandbox.root / "ready", sandbox.root / "go"
    trap = "trap '' TERM" if daemon_ignores_term else f"trap 'echo TERM > {got}; exit 0' TERM"
    daemon = script(sandbox, "daemon.sh", f"{trap}\necho $$ > {ready}\nwhile :; do sleep 0.1; done\n")
    service = script(sandbox, "service.sh",
                     f"setsid {daemon} &\nwhile [ ! -e {go} ]; do sleep 0.02; done\nexit 5\n")
    grace = 1 if daemon_ignores_term else 12
    run = sandbox.start("--", str(service), FSM_INIT_LEFTOVER_GRACE=grace, **phase.env)
    wait_file(ready, contains="\n")
    settle(phase, run)
    start = time.monotonic()
    go.touch()
    code, after_sweep = exit_after_log(run, "sent SIGTERM to leftover processes", 15)
    elapsed = time.monotonic() - start
    assert code == 5, run.log
    if daemon_ignores_term:
        # SIGKILL at the grace deadline, then exit as soon as nothing is left: well before
        # the grace plus stop.KILL_SETTLE (1 s) that would pass if the SIGKILL did not land.
        assert 0.9 <= after_sweep < grace + 0.75, \
            f"exit {after_sweep:.2f}s after the sweep with FSM_INIT_LEFTOVER_GRACE={grace}\n{run.log}"
        assert re.search(r"leftover processes outlived the grace time: sent SIGKILL", run.log), run.log
    else:
        assert read_text(got) == "TERM\n", f"the leftover daemon got no catchable SIGTERM\n{run.log}"
        assert elapsed < 6, f"{elapsed:.1f}s: waited for the leftover grace time\n{run.log}"
        assert "outlived the grace time" not in run.log
    phase.check(run.pid1, lambda: run.log)


# -- subreaper (fsm-init not PID 1) -------------------------------------------------------------

@pytest.fixture
def plain(sandbox):
    """Start fsm-init as a plain child process (not PID 1); kill its tree afterwards."""
    started = []

    def start(*args, **env):
        out, err = sandbox.root / "plain.out", sandbox.root / "plain.err"
        proc = subprocess.Popen([*FSM_INIT, *args], env=sandbox.env(**env), stdin=subprocess.DEVNULL,
                                stdout=open(out, "wb"), stderr=open(err, "wb"), cwd=sandbox.root)
        started.append(proc)
        return proc, (lambda: read_text(err))

    yield start
    for proc in started:
        if proc.poll() is None:
            for pid in _descendants(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.kill()
            proc.wait(5)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(proc_status(int(name))["PPid"])
            except (OSError, KeyError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _until(path: Path) -> str:
    """A shell loop that waits for path, bounded (~30 s) so that nothing outlives a failed test."""
    return f"n=0; while [ ! -e {path} ] && [ $n -lt 1500 ]; do sleep 0.02; n=$((n+1)); done\n"


def ppid(pid: int) -> int | None:
    try:
        return int(proc_status(pid)["PPid"])
    except (OSError, KeyError):
        return None


def test_not_pid1_fsm_init_is_a_subreaper(sandbox, plain, phase):
    """Not PID 1 (no namespace): fsm-init adopts the service's orphans and reaps them."""
    d = sandbox.root
    orphan = script(sandbox, "orphan.sh", f"echo $$ > {d}/orphan.pid.tmp; mv {d}/orphan.pid.tmp {d}/orphan.pid\n"
                                          + _until(d / "release"))
    service = script(sandbox, "service.sh", _until(d / "spawn") + f"( {orphan} & )\n" + _until(d / "done"))
    proc, log = plain("--", str(service), **phase.env)
    try:
        wait_for(lambda: "starting the service" in log(), 10, "the service to start")
        phase.settle(proc.pid, log)
        assert proc_status(proc.pid)["NSpid"].split()[-1] != "1"
        (d / "spawn").touch()  # after the handover in the reaper phase: the attribute survived the exec
        pid = int(wait_file(d / "orphan.pid"))
        try:
            wait_for(lambda: ppid(pid) == proc.pid, 5, "re-parenting")
        except AssertionError:
            raise AssertionError(f"the orphan {pid} has parent {ppid(pid)} ({cmdline(ppid(pid) or 0)!r}), "
                                 f"not fsm-init {proc.pid}\n--- log:\n{log()}") from None
        (d / "release").touch()
        wait_for(lambda: gone(pid), 10,
                 f"the orphan {pid} to be reaped (state {proc_state(pid)})\n--- log:\n{log()}")
        assert proc.poll() is None
        (d / "done").touch()
        assert proc.wait(10) == 0, log()
        assert "cannot become a child subreaper" not in log()
        phase.check(proc.pid, log)
    finally:
        for name in ("spawn", "release", "done"):
            (d / name).touch()


# -- the thin reaper handover -------------------------------------------------------------------

HANDOVER_SERVICE = """\
trap 'echo HUP >> got' HUP
trap '( ./orphan.sh & )' USR1
touch ready
while :; do sleep 0.1; done
"""
ORPHAN = """\
echo $$ > orphan.pid.tmp && mv orphan.pid.tmp orphan.pid
while [ ! -e release ]; do sleep 0.02; done
"""


def _handover_run(sandbox, after="0.3", **env):
    directory = sandbox.service("svc", {"initdelay": 0, "workstart": "./run.sh", **NO_FIREWALL},
                                run__sh=HANDOVER_SERVICE, orphan__sh=ORPHAN)
    run = sandbox.start(SRVNAME="svc", FSM_INIT_HANDOVER_AFTER=after, **env)
    return run, directory


def _wait_handover(run):
    run.wait_log(HANDOVER_LINE)
    wait_for(lambda: is_reaper(run.pid1), 10, f"PID 1's command line to be the reaper's\n--- log:\n{run.log}")


def test_handover_to_the_thin_reaper(sandbox):
    run, directory = _handover_run(sandbox, after="1")
    wait_file(directory / "ready")
    before = run.status()
    assert before["state"] == "foreground" and before["mode"] == "non-daemon"
    engine_rss, engine_libs = rss_kib(run.pid1), mapped_libraries(run.pid1)
    _wait_handover(run)
    after = run.wait_state("handover")
    assert after["pid"] == 1
    assert after["service_pid"] == before["service_pid"]
    assert "transitions" not in cmdline(run.pid1) and "marshmallow" not in cmdline(run.pid1)
    # transitions and marshmallow are pure Python, so they leave no mapping of their own;
    # the C extensions that only they (and the engine's typing/contextvars use) pull in do:
    # marshmallow imports decimal and uuid.
    reaper_libs = mapped_libraries(run.pid1)
    assert reaper_libs <= engine_libs, f"the reaper maps more than the engine: {reaper_libs - engine_libs}"
    heavy = {lib for lib in reaper_libs if re.match(r"_(decimal|uuid|typing|contextvars)\.", lib)}
    assert not heavy, f"the thin reaper loaded {heavy}"
    reaper_rss = rss_kib(run.pid1)
    assert reaper_rss < engine_rss, f"RSS {engine_rss} KiB before the handover, {reaper_rss} KiB after"
    assert run.proc.poll() is None


def test_after_the_handover_pid_1_is_still_named_fsm_init(sandbox):
    """ps, pidof and docker top read the name (/proc/PID/comm) and the command line."""
    run, directory = _handover_run(sandbox)
    wait_file(directory / "ready")
    _wait_handover(run)
    run.wait_state("handover")  # the reaper answers: it named itself before its loop
    assert Path(f"/proc/{run.pid1}/comm").read_text() == "fsm-init\n"
    argv = Path(f"/proc/{run.pid1}/cmdline").read_bytes().split(b"\0")
    assert os.path.basename(argv[0]) == b"fsm-init", argv
    pidof = subprocess.run(["nsenter", "-t", str(run.pid1), "-p", "-m", "pidof", "fsm-init"],
                           capture_output=True, text=True, timeout=10)
    assert pidof.stdout.split() == ["1"], (pidof.stdout, pidof.stderr)


def test_thin_reaper_forwards_reaps_and_answers_srvctl(sandbox):
    run, directory = _handover_run(sandbox)
    wait_file(directory / "ready")
    _wait_handover(run)
    # forwards
    run.signal(signal.SIGHUP)
    wait_file(directory / "got", contains="HUP")
    # reaps an orphan re-parented to PID 1
    run.signal(signal.SIGUSR1)
    pid = host_pid(run, int(wait_file(directory / "orphan.pid")))
    wait_for(lambda: proc_status(pid)["PPid"] == str(run.pid1), 5,
             f"the orphan {pid} to be re-parented to PID 1 (host pid {run.pid1})")
    (directory / "release").touch()
    wait_for(lambda: gone(pid), 10, f"the orphan {pid} to be reaped (state {proc_state(pid)})\n--- log:\n{run.log}")
    assert not [p for p, s in namespace_states(run).items() if s == "Z"]
    # refuses restart, stays up
    restart = run.srvctl("restart")
    assert restart.returncode == 1, (restart.stdout, restart.stderr)
    assert "non-daemon" in restart.stdout
    assert run.status()["state"] == "handover"
    assert run.proc.poll() is None
    assert is_reaper(run.pid1)


def test_thin_reaper_sigterm_gives_143(sandbox):
    run, directory = _handover_run(sandbox)
    wait_file(directory / "ready")
    _wait_handover(run)
    run.signal(signal.SIGTERM)
    code, elapsed = timed_wait(run, 10)
    assert code == 143, run.log
    assert elapsed < 4


def test_thin_reaper_srvctl_stop_exits_0(sandbox):
    run, directory = _handover_run(sandbox)
    wait_file(directory / "ready")
    _wait_handover(run)
    stop = run.srvctl("stop")
    assert stop.returncode == 0, (stop.stdout, stop.stderr)
    code, elapsed = timed_wait(run, 10)
    assert code == 0, run.log
    assert elapsed < 4


def _wait_log_fast(run, text, timeout=10.0):
    """Poll the log every millisecond: the test must act within the handover's exec window."""
    end = time.monotonic() + timeout
    while text not in run.log:
        if time.monotonic() > end or run.proc.poll() is not None:
            raise AssertionError(f"no log line {text!r}\n--- log:\n{run.log}")
        time.sleep(0.001)


@pytest.mark.parametrize("attempt", range(3))
def test_sigterm_right_at_the_handover_is_not_lost(sandbox, attempt):
    run, directory = _handover_run(sandbox, after="0.2")
    _wait_log_fast(run, HANDOVER_LINE)
    run.signal(signal.SIGTERM)  # the engine has blocked it and is about to exec the reaper
    code, elapsed = timed_wait(run, 8)
    assert code == 143, run.log
    assert "received SIGTERM: stopping" in run.log


@pytest.mark.parametrize("attempt", range(3))
def test_sighup_right_at_the_handover_is_forwarded(sandbox, attempt):
    run, directory = _handover_run(sandbox, after="0.2")
    wait_file(directory / "ready")
    _wait_log_fast(run, HANDOVER_LINE)
    run.signal(signal.SIGHUP)
    wait_file(directory / "got", 8, contains="HUP")
    assert run.wait_state("handover")
    run.signal(signal.SIGTERM)
    assert run.wait(8) == 143, run.log


@pytest.mark.parametrize("attempt", range(3))
def test_service_exit_around_the_handover_is_not_missed(sandbox, attempt):
    """The service exits about when the engine execs the reaper (before, during or just
    after): its exit status must still be fsm-init's, promptly."""
    run = sandbox.start("--", "sh", "-c", "sleep 0.2; exit 9", FSM_INIT_HANDOVER_AFTER="0.2")
    code, elapsed = timed_wait(run, 8)
    assert code == 9, run.log


@pytest.mark.parametrize("outcome, expected", [("exit 0", 0), ("exit 7", 7), ("exit 255", 255),
                                               ("kill -HUP $$", 129), ("kill -KILL $$", 137)])
def test_exit_status_is_passed_through_after_settling(sandbox, phase, outcome, expected):
    """The same passthrough when the service ends later: from the engine's foreground
    state, or from the thin reaper."""
    go = sandbox.root / "go"
    run = sandbox.start("--", "sh", "-c", f"until [ -e {go} ]; do sleep 0.02; done; {outcome}", **phase.env)
    settle(phase, run)
    go.touch()
    assert run.wait(10) == expected, run.log
    phase.check(run.pid1, lambda: run.log)


def test_sigterm_while_the_interpreter_starts_is_not_lost(sandbox):
    """SIGTERM sent as soon as PID 1 has exec'd fsm-init's interpreter (a `docker stop`
    right after `docker run`).  PID 1's signals with the default action are discarded by
    the kernel, so they must be blocked from the exec on: the image starts fsm-init
    through `env --block-signal=...` (a C program blocks them within microseconds;
    the interpreter needs ~20 ms before fsm-init's own code can)."""
    run = sandbox.start("--", "sleep", "30", launcher=BLOCKING_LAUNCHER, FSM_INIT_HANDOVER_AFTER="0")
    # PID 1 is first the harness's isolating shell, then the launcher, then the interpreter.
    wait_for(lambda: cmdline(run.pid1).startswith(FSM_INIT[0] + " "), 10, "PID 1 to exec fsm-init",
             interval=0.0005)
    run.signal(signal.SIGTERM)
    try:
        code = run.proc.wait(5)
    except subprocess.TimeoutExpired:
        raise AssertionError("the SIGTERM sent while fsm-init's interpreter started was lost\n--- log:\n"
                             + run.log) from None
    assert code in (0, 143), run.log  # 0: stopped before the service started
