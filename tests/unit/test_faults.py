"""Faults the engine must live through (issue 12, points 9-11), on the recording fake:
a full or read-only disk, fork and fd exhaustion, wall-clock jumps; and the summary
of forwarded signal floods."""

import errno
import json
import os

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
