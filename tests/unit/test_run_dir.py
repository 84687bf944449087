"""Where fsm-init keeps its control socket and journal (the run directory) and its state,
for any uid and on a read-only root: /run/fsm-init when it can be made, else a private
per-uid directory in /tmp (or /dev/shm), which srvctl finds the same way."""

import errno
import os

import pytest

from fsm_init.core import settings as settings_module
from fsm_init.core.private_dirs import private_problem
from fsm_init.core.settings import RUN_DIR, STATE_DIR, fallback_run_dirs, settle_dirs
from fsm_init.core.system import System

from .fakes import FakeSystem, make_settings


def settle(fake: FakeSystem, **given):
    s = make_settings(**{"run_dir_given": False, "state_dir_given": False, **given})
    return s, settle_dirs(s, fake)


def test_run_dir_is_run_fsm_init_when_it_can_be_made():
    s, notes = settle(FakeSystem())
    assert (s.run_dir, s.state_dir, notes) == (RUN_DIR, STATE_DIR, [])


def test_an_unwritable_run_falls_back_to_a_private_directory_per_uid():
    fake = FakeSystem()
    fake.uid = 1000
    fake.fail("writable_dir", PermissionError(errno.EACCES, "Permission denied"), RUN_DIR)
    fake.fail("writable_dir", PermissionError(errno.EACCES, "Permission denied"), STATE_DIR)
    s, notes = settle(fake)
    assert s.run_dir == "/tmp/fsm-init-1000" and ("private_dir", "/tmp/fsm-init-1000") in fake.calls
    assert s.state_dir == "/tmp/fsm-init-1000/state"
    assert [level for level, _ in notes] == ["info", "info"]
    assert "/run/fsm-init (Permission denied)" in notes[0][1]


def test_a_refused_tmp_directory_falls_back_to_dev_shm_then_to_an_error():
    fake = FakeSystem()
    fake.fail("writable_dir", OSError(errno.EROFS, "Read-only file system"), RUN_DIR)
    fake.fail("private_dir", OSError(0, "is owned by uid 1001, not 0"), "/tmp/fsm-init-0")
    s, notes = settle(fake)
    assert s.run_dir == "/dev/shm/fsm-init-0"
    fake.fail("private_dir", OSError(0, "is a symbolic link"), "/dev/shm/fsm-init-0")
    s, notes = settle(fake)
    assert notes[-1][0] == "error" and "is a symbolic link" in notes[-1][1] and "FSM_INIT_RUN_DIR" in notes[-1][1]
    assert s.state_dir == STATE_DIR


def test_a_run_fsm_init_someone_else_made_is_not_used():
    fake = FakeSystem()
    fake.fail("private_dir", OSError(0, "is owned by uid 1001, not 0"), RUN_DIR)
    s, notes = settle(fake)
    assert s.run_dir == "/tmp/fsm-init-0"
    assert "/run/fsm-init (is owned by uid 1001, not 0)" in notes[0][1]


def test_explicit_directories_are_used_as_given():
    fake = FakeSystem()
    fake.fail("writable_dir", OSError(errno.EROFS, "Read-only file system"))
    s, notes = settle(fake, run_dir="/x/run", state_dir="/x/state", run_dir_given=True, state_dir_given=True)
    assert (s.run_dir, s.state_dir, notes) == ("/x/run", "/x/state", [])
    assert not [c for c in fake.calls if c[0] in ("writable_dir", "private_dir")]


# -- the real checks on the real file system -------------------------------------------------------


def test_private_dir_is_made_0700_and_traps_are_refused(tmp_path):
    system = System()
    mine = tmp_path / "mine"
    assert system.private_dir(str(mine)) == "" and (mine.stat().st_mode & 0o777) == 0o700
    assert system.private_dir(str(mine)) == ""  # again: already ours
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    assert system.private_dir(str(tmp_path / "link")) == "is a symbolic link"
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o755)
    assert system.private_dir(str(loose)) == "has mode 0755, not 0700"
    (tmp_path / "file").write_text("")
    assert system.private_dir(str(tmp_path / "file")) == "is not a directory"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_directory_another_uid_owns_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 12345, 12345)
    assert System().private_dir(str(theirs)) == f"is owned by uid 12345, not {os.geteuid()}"
    assert private_problem(str(theirs), 12345) == ""


def test_readers_find_the_directory_holding_the_socket(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_module, "RUN_DIR", str(tmp_path / "run" / "fsm-init"))
    monkeypatch.setattr(settings_module, "FALLBACK_PARENTS", (str(tmp_path / "tmp"), str(tmp_path / "shm")))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "shm").mkdir()
    assert settings_module.locate_run_dir() == str(tmp_path / "run" / "fsm-init")  # nothing anywhere
    tmp_dir, shm_dir = settings_module.fallback_run_dirs(os.geteuid())
    os.mkdir(shm_dir, 0o700)
    (tmp_path / "shm" / f"fsm-init-{os.geteuid()}" / "journal.jsonl").write_text("")
    assert settings_module.locate_run_dir() == shm_dir  # a journal, after fsm-init exited
    os.mkdir(tmp_dir, 0o700)
    (tmp_path / "tmp" / f"fsm-init-{os.geteuid()}" / "control.sock").write_text("")
    assert settings_module.locate_run_dir() == tmp_dir  # a socket beats a journal
    os.chmod(tmp_dir, 0o777)  # no longer private: not trusted
    assert settings_module.locate_run_dir() == shm_dir


def test_fallbacks_are_per_uid():
    assert fallback_run_dirs(1000) == ["/tmp/fsm-init-1000", "/dev/shm/fsm-init-1000"]


@pytest.mark.parametrize("given", [False, True])
def test_a_state_directory_another_user_could_change_is_refused(given):
    # Root's SSH host keys and password record live there (a chown -R of /var/lib, a volume).
    fake = FakeSystem()
    state = "/x/state" if given else STATE_DIR
    fake.add_dir(state)
    fake.owners[state] = 65534
    s, notes = settle(fake, state_dir=state, state_dir_given=given)
    assert s.state_dir == f"{RUN_DIR}/state"
    assert notes == [("error", f"refusing the state directory {state}: another user could change it: {state} is "
                               f"owned by uid 65534, not root (fix: chown root {state}); using {RUN_DIR}/state "
                               "(lost when the container stops)")]


def test_a_given_run_directory_another_user_could_change_is_refused():
    fake = FakeSystem()
    fake.add_dir("/x/run")
    fake.owners["/x/run"] = 65534
    s, notes = settle(fake, run_dir="/x/run", run_dir_given=True)
    assert s.run_dir == RUN_DIR and s.state_dir == STATE_DIR
    assert notes == [("error", "refusing the run directory /x/run (FSM_INIT_RUN_DIR): another user could change "
                               "it: /x/run is owned by uid 65534, not root (fix: chown root /x/run); choosing one "
                               "as without it")]
