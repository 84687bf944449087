"""Faults the engine must live through (issue 12, points 9-11), on the recording fake:
a full or read-only disk, fork and fd exhaustion, wall-clock jumps; and the summary
of forwarded signal floods."""

import errno
import json
import os
import signal

import pytest

from fsm_init.core.writes import FileWrites

from .fakes import exited
from .test_machine import COUNT, SRV, handovers, in_check, listens, make, no_real_exec, pass_check  # noqa: F401

RUN = "/run/fsm-init"
JOURNAL, STATUS = f"{RUN}/journal.jsonl", f"{RUN}/status.json"
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
EROFS = OSError(errno.EROFS, os.strerror(errno.EROFS))


def cycles(h, n: int) -> None:
    """n passed check cycles of PeriodicST-a (workwatch 30)."""
    for _ in range(n):
        pass_check(h)
        assert h.state == "watch"
        h.advance(29)
        assert h.state == "check"


# -- 12.9: a full or read-only disk ------------------------------------------------------------


@pytest.mark.parametrize("error", [ENOSPC, EROFS], ids=["ENOSPC", "EROFS"])
def test_unwritable_files_are_reported_once_supervision_goes_on_and_recovery_is_said_once(make, capfd, error):
    h = in_check(make)
    h.system.add_dir(RUN)
    for path in (JOURNAL, STATUS, COUNT):
        h.system.fail("append_line" if path == JOURNAL else "write_atomic", error, path)
    first = h.engine.checks.cycle_count
    cycles(h, 5)
    assert h.engine.checks.cycle_count == first + 5  # supervision went on
    reply = h.request("status")  # srvctl answers from memory
    problems = reply["status"]["write_problems"]
    assert sorted(problems) == sorted([JOURNAL, STATUS, COUNT])
    assert all(error.strerror in text for text in problems.values())
    err = capfd.readouterr().err
    for path in (JOURNAL, STATUS, COUNT):
        assert err.count(f"cannot write {path}: {error.strerror}") == 1, err
    h.system.faults.clear()  # space again
    cycles(h, 3)
    err = capfd.readouterr().err
    for path in (JOURNAL, STATUS, COUNT):
        assert err.count(f"{path} written again after") == 1, err
    assert "cannot write" not in err
    assert h.engine.explain.snapshot()["write_problems"] == {}
    assert json.loads(h.system.files[STATUS])["write_problems"] == {}
    assert b"Status-Monitored" in h.system.files[COUNT]


def test_a_new_reason_is_news_a_relapse_soon_after_recovery_is_not(capfd):
    clock = [0.0]
    writes = FileWrites(lambda: clock[0], lambda: 1e9 + clock[0])

    def fail(error):
        def write():
            raise error
        return write

    assert not writes.attempt("/x", fail(ENOSPC))
    assert not writes.attempt("/x", fail(EROFS))  # ENOSPC, then a read-only remount: said
    assert writes.attempt("/x", lambda: None)
    clock[0] += 5
    assert not writes.attempt("/x", fail(EROFS))  # the same trouble at once again: quiet
    assert writes.status()["/x"].startswith("Read-only file system since")
    assert writes.attempt("/x", lambda: None)
    clock[0] += 120
    assert not writes.attempt("/x", fail(EROFS))  # long after: said again
    err = capfd.readouterr().err
    assert err.count("cannot write /x: No space left on device") == 1
    assert err.count("cannot write /x: Read-only file system") == 2
    assert err.count("/x written again after") == 1  # the quiet relapse's recovery is quiet too


def test_a_half_written_journal_line_is_cut_off(tmp_path, monkeypatch):
    from fsm_init.core.system import System

    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"a": 1}\n')
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:5]))  # the disk fills mid-line
    with pytest.raises(OSError) as caught:
        System().append_line(str(path), b'{"b": 2}\n', 1 << 20)
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == b'{"a": 1}\n'


# -- forwarded signals: summarised, without idle wake-ups ---------------------------------------


def test_a_flood_of_forwarded_signals_is_summarised_once_a_second_and_idle_needs_no_deadline(make, capfd):
    from fsm_init.core.forwarded import DEADLINE

    from .test_machine import cfg

    h = make(cfg(workwatch=0))  # daemon mode: nothing else is scheduled while it runs
    h.begin()
    h.advance(10)
    assert h.state == "watch" and not h.engine.loop.pending()
    capfd.readouterr()
    for _ in range(200):
        h.signal(signal.SIGHUP)
    for _ in range(3):
        h.signal(signal.SIGUSR1)
    h.advance(0.5)
    err = capfd.readouterr().err
    assert err.count("forwarded") == 1 and "forwarded SIGHUP to the service's session" in err
    assert DEADLINE in h.engine.loop.pending()  # a summary is pending
    h.advance(0.5)
    err = capfd.readouterr().err
    assert "forwarded SIGHUP ×199, SIGUSR1 ×3 to the service's session in 1.0s" in err, err
    assert err.count("forwarded") == 1
    h.advance(1)  # a quiet second ends the summary: no deadline left, no wake-up when idle
    assert not h.engine.loop.pending() and "forwarded" not in capfd.readouterr().err
    assert len(h.system.signals_to(h.engine.service.instance.pid)) == 203  # every signal forwarded
    h.signal(signal.SIGWINCH)  # after the quiet second: said at once again
    assert "forwarded SIGWINCH to the service's session" in capfd.readouterr().err


def test_counted_signals_are_said_before_fsm_init_exits(make, capfd):
    from .test_machine import cfg

    h = make(cfg(workwatch=0))
    h.begin()
    h.advance(10)
    for _ in range(5):
        h.signal(signal.SIGCONT)
    h.signal(signal.SIGTERM)
    h.advance(30)
    assert h.state == "exited"
    err = capfd.readouterr().err
    assert "forwarded SIGCONT ×4 to the service's session" in err
    assert err.index("SIGCONT ×4") < err.index("exiting with status")


def test_the_thin_reaper_summarises_forwarded_signals_too(capfd):
    from fsm_init.core import reaper

    from .fakes import FakeSystem, close_loop, make_settings

    fake = FakeSystem()
    fake.procs[100] = fake.procs[1]._replace(pid=100, ppid=1, pgid=100, sid=100)
    state = {"pid": 100, "by_session": True, "started": 0.0, "target": None, "run_count": 1, "control_fd": None,
             "quiet": False, "supporting": {}, "proof": 5, "last_transition": {}}
    thin = reaper.Reaper(fake, make_settings(), state)
    try:
        for _ in range(50):
            thin.loop.on_signal(signal.SIGHUP)
        fake.clock += 1
        thin.loop.fire_due()
        err = capfd.readouterr().err
        assert err.count("forwarded") == 2 and "forwarded SIGHUP ×49 to the service's session in 1.0s" in err
        fake.clock += 1
        thin.loop.fire_due()
        assert not thin.loop.pending()
    finally:
        close_loop(thin.loop)


# -- 12.10: fork failures (EAGAIN) and fd exhaustion (EMFILE) -----------------------------------

EAGAIN = OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
EMFILE = OSError(errno.EMFILE, os.strerror(errno.EMFILE))


def test_a_service_that_cannot_be_forked_is_retried_with_the_back_off_and_said_once(make, capfd):
    from .test_machine import cfg

    h = make(cfg(workwatch=0, workintvl=1, workbackoff=8))
    h.system.fail("spawn", EAGAIN, "./run.sh")
    h.begin()
    waits = []
    for _ in range(5):
        assert h.state == "restart_interval" and h.engine.service.instance is None
        waits.append(h.deadline("state") - h.system.clock)
        h.advance(waits[-1])
    assert waits == [1, 2, 4, 8, 8]  # the back-off, not a spin
    err = capfd.readouterr().err
    assert err.count("cannot execute ./run.sh: Resource temporarily unavailable") == 1, err
    h.system.faults.clear()  # the pids limit is lifted
    h.advance(8)
    assert h.state == "watch" and h.engine.service.instance is not None
    assert "the service started (pid " in capfd.readouterr().err


@pytest.mark.parametrize("error", [EAGAIN, EMFILE], ids=["EAGAIN", "EMFILE"])
def test_a_check_that_cannot_be_started_is_no_verdict_and_is_retried_with_a_back_off(make, capfd, error):
    from .test_machine import cfg

    h = make(cfg(workwatch=30, workintvl=5, worktimeout=10), scripts=("run.sh", "PeriodicST-a"))
    h.system.fail("spawn", error, f"{SRV}/PeriodicST-a")
    h.begin()
    pid = h.engine.service.instance.pid
    h.advance(5)
    waits = []
    for _ in range(6):
        assert h.state == "check" and h.engine.foreground.script is None
        waits.append(h.deadline("script") - h.system.clock)
        h.advance(waits[-1])
    assert waits == [1, 2, 4, 8, 10, 10]  # backing off up to the check's timeout
    assert h.engine.service.instance.pid == pid and h.system.signals_to(pid) == []  # not restarted
    assert "PeriodicST-a cannot be started" in h.request("why")["message"]
    err = capfd.readouterr().err
    assert err.count(f"cannot start PeriodicST-a: {error.strerror}") == 1, err
    h.system.faults.clear()
    h.advance(10)
    assert h.engine.foreground.script is not None and "PeriodicST-a started after 7 failed attempt(s)" in capfd.readouterr().err
    pass_check(h)
    assert h.state == "watch" and h.engine.service.checks_healthy


def test_rt_and_mt_scripts_that_cannot_be_started_are_said_once(make, capfd):
    from .test_machine import script_pid

    h = in_check(make, extra=("PeriodicRT-r",))
    h.exit(script_pid(h, "PeriodicRT-r"), exited(0))  # the first cycle's run is over
    h.system.fail("spawn", EAGAIN, f"{SRV}/PeriodicRT-r")
    for _ in range(4):
        pass_check(h)
        h.advance(29)
    assert capfd.readouterr().err.count("cannot execute PeriodicRT-r: Resource temporarily unavailable") == 1
    h.system.faults.clear()
    pass_check(h)
    h.advance(29)
    assert "PeriodicRT-r started again" in capfd.readouterr().err


def test_a_check_whose_output_pipes_cannot_be_made_leaks_no_descriptor():
    from fsm_init.steps.output import CapturedOutput

    from .fakes import FakeSystem

    fake, made = FakeSystem(), []
    real = fake.pipe

    def pipe():
        if made:
            raise EMFILE
        made.append(real())
        return made[-1]
    fake.pipe = pipe  # the second pipe fails (EMFILE): the first must be closed again
    with pytest.raises(OSError):
        CapturedOutput(None, fake).spawn(["true"], {})
    for fd in made[0]:
        with pytest.raises(OSError):
            os.fstat(fd)  # closed again


def test_accept_failing_backs_off_is_said_once_and_recovery_once(capfd):
    from fsm_init.core import control

    from .fakes import advance, close_loop
    from .test_control import OutOfDescriptors, Rig

    listener = OutOfDescriptors()
    rig = Rig(listener)
    try:
        pauses = []
        for _ in range(6):
            rig.serve(rounds=5)
            assert not rig.server.listening
            pauses.append(rig.loop.due("control-accept") - rig.system.clock)
            advance(rig, pauses[-1])
        assert pauses == [1, 2, 4, 8, 8, 8] and listener.accepts == 6
        err = capfd.readouterr().err
        assert err.count("cannot accept (Too many open files)") == 1
        listener.accept = lambda: (_ for _ in ()).throw(BlockingIOError())  # descriptors again
        rig.serve(rounds=1)
        listener.accept = lambda: (socket_pair()[0], None)
        rig.serve(rounds=1)
        assert "control socket: accepting again after 6 failed attempt(s)" in capfd.readouterr().err
        assert rig.server.accept_failures == 0 and control.ACCEPT_PAUSE_MAX == 8
    finally:
        for conn in list(rig.server.buffers):
            conn.close()
        listener.close()
        close_loop(rig.loop)


def socket_pair():
    import socket

    return socket.socketpair()


def test_the_proc_scan_survives_fd_exhaustion():
    """With no descriptor left, PID 1 must still see the processes it is stopping: the scan
    uses the spare descriptors System holds (a scan that silently returned [] would call a
    stopped session gone)."""
    import subprocess
    import sys

    code = """
import os, resource
from fsm_init.core.system import System
system = System()
child = os.posix_spawn("/bin/sleep", ["sleep", "30"], os.environ)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError as e:
    assert e.errno == 24
pids = [p.pid for p in system.processes()]
names = system.list_dir("/proc")
os.kill(child, 9)
print(child in pids, os.getpid() in pids, str(child) in names)
"""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=30)
    assert out.stdout.split() == ["True", "True", "True"], out.stderr


def test_an_admin_command_that_cannot_be_forked_is_a_failed_command_not_an_exception(monkeypatch):
    from fsm_init.core.system import System

    def refuse(*args, **kwargs):
        raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    monkeypatch.setattr(System, "spawn", refuse)
    system = System()  # with its two spare descriptors
    before = len(os.listdir("/proc/self/fd"))
    status, out, err = system.run(["iptables-save"])
    assert status == 126 and "cannot run iptables-save: Resource temporarily unavailable" in err
    assert len(os.listdir("/proc/self/fd")) == before  # its pipes closed


# -- 12.11: wall-clock jumps ---------------------------------------------------------------------


def _scenario(make, jumps: dict) -> tuple[list, list]:
    """A status-check service: checks pass, one fails (restart: grace, KILL, back-off), an
    operator restart, a stop with the grace running out.  jumps: step -> seconds the wall
    clock jumps by before that step.  Returns (every deadline after each step, journal)."""
    from .test_machine import cfg, script_pid

    h = make(cfg(workwatch=30, workintvl=5, workbackoff=60), scripts=("run.sh", "PeriodicST-a"))
    h.system.add_dir(RUN)
    seen = []

    def step(n, action):
        h.system.wall_offset += jumps.get(n, 0)
        action()
        seen.append((n, h.state, sorted(h.engine.loop.pending().items())))

    step(0, h.begin)
    step(1, lambda: h.advance(5))  # workintvl: the first check
    step(2, lambda: pass_check(h))
    step(3, lambda: h.advance(29))  # the next cycle, at its fixed rate
    step(4, lambda: h.system.stubborn(h.engine.service.instance.pid))
    step(5, lambda: h.exit(script_pid(h, "PeriodicST-a"), exited(1)))  # failed: restart, grace
    step(6, lambda: h.advance(5))  # the grace ran out: KILL
    step(7, lambda: h.advance(10))  # the settle time, the back-off, a new start, workintvl
    step(8, lambda: h.request("restart"))
    step(9, lambda: h.advance(3))
    step(10, lambda: h.signal(signal.SIGTERM))
    step(11, lambda: h.advance(30))
    assert h.state == "exited"
    journal = [json.loads(line) for line in h.system.files[JOURNAL].splitlines()]
    return seen, journal


@pytest.mark.parametrize("jump", [3600, -3600], ids=["forward", "back"])
def test_wall_clock_jumps_shift_no_timer_and_journal_times_follow_the_wall(make, jump):
    steady, steady_journal = _scenario(make, {})
    jumped, jumped_journal = _scenario(make, {3: jump, 6: jump, 9: -jump})
    # The check schedule, workintvl, the back-off, the grace and settle timers: the same
    # deadlines at the same (monotonic) times whatever the wall clock did.
    assert jumped == steady
    assert [(e["from"], e["to"], e["trigger"]) for e in jumped_journal] == \
           [(e["from"], e["to"], e["trigger"]) for e in steady_journal]
    # Journal times are wall time: they carry the jumps.
    offsets = {round(j["time"] - s["time"]) for j, s in zip(jumped_journal, steady_journal)}
    assert offsets == {0, jump, 2 * jump}


def test_no_scheduling_reads_the_wall_clock():
    """An audit of fsm_init/: every deadline, time-out and duration comes from System.now
    (CLOCK_MONOTONIC); the wall clock (time.time, System.wall) only stamps records and
    shows times to people.  A new call of time.time/wall must be added here on purpose."""
    import ast
    import pathlib

    package = pathlib.Path(__file__).resolve().parents[2] / "fsm_init"
    allowed_wall = {
        ("dial.py", "*"),  # the link's up/down time in link.json
        ("history.py", "entered"), ("watch.py", "_done"),  # journal and check records
        ("explain.py", "upcoming"),  # `srvctl why`: a monotonic deadline shown as a clock time
        ("oom.py", "killed_by"),  # `srvctl why`: when the out-of-memory kill was seen
        ("log.py", "_emit"), ("syslog_relay.py", "_format"), ("output.py", "pass_lines"),  # JSON log lines' "time"
        ("reaper.py", "_enter"),  # the thin reaper's journal lines
        ("reload.py", "_journal"), ("reload.py", "request"),  # a reload's journal line, `srvctl why`'s "last reload at"
        ("status_view.py", "*"),  # the viewer's own "last seen" display
        ("system.py", "wall"),
        ("writes.py", "__init__"), ("writes.py", "failed"),  # "since" of a write problem in srvctl status
        ("engine.py", "__init__"), ("journal.py", "__init__"), ("load_config.py", "__init__"),  # ... given to FileWrites
    }
    found = set()
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(func):
                name = None
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "time" \
                        and node.attr in ("time", "monotonic", "sleep", "time_ns", "clock_gettime"):
                    name = f"time.{node.attr}"
                elif isinstance(node, ast.Attribute) and node.attr == "wall" and isinstance(node.ctx, ast.Load):
                    name = "wall"
                if name:
                    found.add((path.name, func.name, name))
    for module, function, name in sorted(found):
        if name == "time.monotonic":
            # log.drain: the bounded wait for a stalled log reader before an exec or the exit;
            # System.run: a short admin command's time-out
            assert (module, function) in {("system.py", "now"), ("writes.py", "__init__"), ("log.py", "drain"),
                                          ("system.py", "run")}, (module, function)
        elif name == "time.sleep" and module not in ("status_view.py", "graph.py", "srvctl.py"):  # not PID 1
            raise AssertionError(f"{module}:{function} sleeps: PID 1 never blocks")
        elif name != "time.sleep":
            assert (module, function) in allowed_wall or (module, "*") in allowed_wall, (module, function, name)


def test_a_supporting_service_that_cannot_be_forked_is_said_once_per_episode(capfd):
    from fsm_init.core.loop import EventLoop
    from fsm_init.network.supporting import Spec, Supporting

    from .fakes import FakeSystem, close_loop

    fake = FakeSystem()
    loop = EventLoop(fake, lambda signum: None, lambda pid, status: None)
    try:
        dropbear = Supporting("ssh", fake, loop, 5.0)
        fake.fail("spawn", EAGAIN, "dropbear")
        dropbear.apply(Spec(["dropbear", "-F"], {}, "port 8022", "port 8022"))
        for _ in range(5):  # every check cycle keeps it alive
            dropbear.keepalive()
        err = capfd.readouterr().err
        assert err.count("cannot start ssh (dropbear): Resource temporarily unavailable") == 1, err
        assert "is not running: starting it again" not in err
        fake.faults.clear()
        dropbear.keepalive()
        assert dropbear.pid is not None
        err = capfd.readouterr().err
        assert "ssh started (pid " in err and "port 8022 after 6 failed attempt(s)" in err, err
    finally:
        close_loop(loop)


def test_fsm_init_status_shows_the_files_that_cannot_be_written():
    from fsm_init.client import status_view

    rows = status_view.supporting({"write_problems": {
        "/run/fsm-init/status.json": "No space left on device since 12:00:03 (4 failed write(s))"}})
    assert ("cannot write", "/run/fsm-init/status.json: No space left on device since 12:00:03 (4 failed write(s))",
            "bad") in rows
