"""Faults the engine must live through (issue 12, points 9-11), on the recording fake:
a full or read-only disk, fork and fd exhaustion, wall-clock jumps; and the summary
of forwarded signal floods."""

import errno
import json
import os
import signal

import pytest

from fsm_init.writes import FileWrites

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
    first = h.engine.cycle_count
    cycles(h, 5)
    assert h.engine.cycle_count == first + 5  # supervision went on
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
    assert h.engine.snapshot()["write_problems"] == {}
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
    from fsm_init.system import System

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
    from fsm_init.forwarded import DEADLINE

    from .test_machine import cfg

    h = make(cfg(workwatch=0))  # daemon mode: nothing else is scheduled while it runs
    h.begin()
    h.advance(10)
    assert h.state == "watch" and not h.engine.loop.deadlines
    capfd.readouterr()
    for _ in range(200):
        h.signal(signal.SIGHUP)
    for _ in range(3):
        h.signal(signal.SIGUSR1)
    h.advance(0.5)
    err = capfd.readouterr().err
    assert err.count("forwarded") == 1 and "forwarded SIGHUP to the service's session" in err
    assert DEADLINE in h.engine.loop.deadlines  # a summary is pending
    h.advance(0.5)
    err = capfd.readouterr().err
    assert "forwarded SIGHUP ×199, SIGUSR1 ×3 to the service's session in 1.0s" in err, err
    assert err.count("forwarded") == 1
    h.advance(1)  # a quiet second ends the summary: no deadline left, no wake-up when idle
    assert not h.engine.loop.deadlines and "forwarded" not in capfd.readouterr().err
    assert len(h.system.signals_to(h.engine.service.pid)) == 203  # every signal forwarded
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
    from fsm_init import reaper

    from .fakes import FakeSystem, close_loop, make_settings

    fake = FakeSystem()
    fake.procs[100] = fake.procs[1]._replace(pid=100, ppid=1, pgid=100, sid=100)
    state = {"pid": 100, "by_session": True, "started": 0.0, "target": None, "run_count": 1, "control_fd": None,
             "quiet": False, "supporting": {}, "proof": 5, "last_transition": {}}
    thin = reaper.Reaper(fake, make_settings(), state)
    try:
        for _ in range(50):
            thin._on_signal(signal.SIGHUP)
        fake.clock += 1
        thin.loop._fire_due()
        err = capfd.readouterr().err
        assert err.count("forwarded") == 2 and "forwarded SIGHUP ×49 to the service's session in 1.0s" in err
        fake.clock += 1
        thin.loop._fire_due()
        assert not thin.loop.deadlines
    finally:
        close_loop(thin.loop)
