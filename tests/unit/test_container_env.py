"""container_env: my_init's /etc/container_environment import and dump."""

import errno
import json
import os
import subprocess

import pytest

from fsm_init.compat import container_env as ce
from fsm_init.core import trust
from fsm_init.core.system import System
from tests.unit.fakes import FakeSystem

D = "/etc/container_environment"


@pytest.fixture
def fs():
    system = FakeSystem()
    system.add_dir(D)
    system.group_ids["docker_env"] = 8377
    return system


def warnings(capfd) -> list[str]:
    return [line for line in capfd.readouterr().err.splitlines() if "warning:" in line]


# -- import ----------------------------------------------------------------------------


def test_import_strips_one_trailing_newline_and_keeps_existing(fs):
    fs.add_file(f"{D}/A", "one\n")
    fs.add_file(f"{D}/B", "two\n\n")
    fs.add_file(f"{D}/C", "no newline")
    fs.add_file(f"{D}/PATH", "/evil\n")
    env = ce.import_env({"PATH": "/usr/bin"}, fs, D)
    assert env == {"PATH": "/usr/bin", "A": "one", "B": "two\n", "C": "no newline"}


def test_import_does_not_modify_the_callers_dict(fs):
    fs.add_file(f"{D}/A", "1")
    environ = {"X": "y"}
    ce.import_env(environ, fs, D)
    assert environ == {"X": "y"}


def test_import_skips_invalid_names_with_one_warning_and_dot_files_silently(fs, capfd):
    fs.add_file(f"{D}/GOOD", "ok")
    fs.add_file(f"{D}/A=B", "x")
    fs.add_file(f"{D}/has space", "x")
    fs.add_file(f"{D}/.GOOD.123.tmp", "half written")
    fs.add_dir(f"{D}/subdir")
    assert ce.import_env({}, fs, D) == {"GOOD": "ok"}
    lines = warnings(capfd)
    assert len(lines) == 1 and "'A=B'" in lines[0] and "'has space'" in lines[0]
    assert ".GOOD" not in lines[0]


def test_import_without_directory_is_a_no_op(fs):
    assert ce.import_env({"A": "1"}, fs, "/nowhere") == {"A": "1"}


def test_import_keeps_non_utf8_bytes_as_the_environment_does(fs):
    fs.add_file(f"{D}/RAW", b"caf\xe9")
    value = ce.import_env({}, fs, D)["RAW"]
    assert os.fsencode(value) == b"caf\xe9"


def test_names_and_quoting():
    assert ce.valid_name("FOO_1") and ce.valid_name("my.prop") and ce.valid_name("a-b")
    for bad in ("", ".hidden", "A=B", "a b", "a/b", "nul\x00"):
        assert not ce.valid_name(bad)
    # my_init's rule: each character a shell name cannot hold becomes _.
    assert ce.shell_name("my.prop-x") == "my_prop_x"
    assert ce.shell_name("DASH-NAME") == "DASH_NAME" and ce.shell_name("spring.profiles.active") == \
        "spring_profiles_active"
    assert ce.shell_name("...") == "___" and ce.shell_name("café") == "caf_" and ce.shell_name("_1") == "_1"
    assert ce.shell_name("1ABC") is None and ce.shell_name("9-x") is None  # no shell takes these
    assert ce.shell_quote("it's") == "'it'\\''s'"


def test_sh_names_are_sanitised_and_a_real_name_wins_over_a_renamed_one():
    text = ce.render_sh({"my.prop.x": "renamed", "DASH-NAME": "d", "A-B": "renamed", "A_B": "real",
                         "1X": "skipped"}).decode()
    assert text.splitlines() == ["export A_B='real'", "export DASH_NAME='d'", "export my_prop_x='renamed'"]


# -- export ------------------------------------------------------------------------------


def test_export_writes_directory_sh_json_with_group_and_modes(fs):
    env = {"A": "1", "Q": "it's \"quoted\"", "HOME": "/root", "USER": "root", "GROUP": "g",
           "UID": "0", "GID": "0", "SHELL": "/bin/sh", "my.prop": "p"}
    result = ce.export_env(env, fs, D, "/etc/container_environment.sh", "/etc/container_environment.json")
    assert result.problems == []
    assert result.written == {"A", "Q", "my.prop"}
    assert fs.files[f"{D}/A"] == b"1" and fs.files[f"{D}/my.prop"] == b"p"
    for name in ce.NOT_DUMPED:
        assert f"{D}/{name}" not in fs.files
    sh = fs.files["/etc/container_environment.sh"].decode()
    assert sh == "export A='1'\nexport Q='it'\\''s \"quoted\"'\nexport my_prop='p'\n"
    assert json.loads(fs.files["/etc/container_environment.json"]) == {"A": "1", "Q": "it's \"quoted\"", "my.prop": "p"}
    for path in (f"{D}/A", "/etc/container_environment.sh", "/etc/container_environment.json"):
        assert fs.modes[path] == 0o640 and fs.groups[path] == 8377
    assert fs.modes[D] == 0o750 and fs.groups[D] == 8377


def test_export_writes_atomically_and_not_durably(fs):
    ce.export_env({"A": "1"}, fs, D)
    # write_atomic is the only way a file is written (temporary file + rename)
    assert {c[0] for c in fs.calls if c[0] in ("write_atomic", "append_line")} == {"write_atomic"}


def test_export_without_docker_env_group_keeps_the_default_group(fs):
    fs.group_ids.clear()
    ce.export_env({"A": "1"}, fs, D)
    assert fs.modes[f"{D}/A"] == 0o640 and f"{D}/A" not in fs.groups


def test_export_without_directory_writes_nothing(fs):
    assert ce.export_env({"A": "1"}, fs, "/nowhere", "/nowhere.sh", "/nowhere.json").written == frozenset()
    assert fs.writes == []


def test_non_root_skips_group_and_chmod_and_warns_once(fs, capfd):
    fs.uid = 1000
    perm = PermissionError(errno.EACCES, "Permission denied")
    fs.fail("write_atomic", perm)
    result = ce.export_env({f"V{i}": str(i) for i in range(50)}, fs, D)
    assert result.written == frozenset()
    lines = warnings(capfd)
    assert len(lines) == 1
    assert "Permission denied" in lines[0] and "49 more variables" in lines[0] and "uid 1000" in lines[0]
    assert "container_environment.sh" in lines[0] and "container_environment.json" in lines[0]
    # it gave up on the directory after the first failure, and never tried chgrp/chmod on it
    assert sum(1 for c in fs.calls if c[0] == "write_atomic") == 3
    assert not any(c[0] == "set_mode" for c in fs.calls)


def test_non_root_with_a_writable_directory_writes_without_group(fs, capfd):
    fs.uid = 1000
    result = ce.export_env({"A": "1"}, fs, D)
    assert result.problems == [] and result.written == {"A"}
    assert f"{D}/A" not in fs.groups and fs.modes[f"{D}/A"] == 0o640
    assert warnings(capfd) == []


def test_read_only_sh_alone_is_skipped_the_rest_written(fs, capfd):
    fs.fail("write_atomic", OSError(errno.EROFS, "Read-only file system"), "/etc/container_environment.sh")
    result = ce.export_env({"A": "1"}, fs, D)
    assert result.written == {"A"} and "/etc/container_environment.json" in fs.files
    lines = warnings(capfd)
    assert len(lines) == 1 and "container_environment.sh (Read-only file system)" in lines[0]


def test_chmod_of_directory_failing_is_one_warning_not_a_crash(fs, capfd):
    fs.fail("set_mode", PermissionError(errno.EPERM, "Operation not permitted"))
    assert ce.export_env({"A": "1"}, fs, D).written == {"A"}
    assert len(warnings(capfd)) == 1


# -- the engine's handle: start, after each start-up script ---------------------------------


def test_start_imports_then_dumps_everything(fs):
    fs.add_file(f"{D}/FROM_FILE", "f\n")
    handle = ce.ContainerEnvironment(fs, D)
    env = handle.start({"FROM_DOCKER": "d", "HOME": "/root"})
    assert env == {"FROM_DOCKER": "d", "FROM_FILE": "f", "HOME": "/root"}
    assert fs.files[f"{D}/FROM_DOCKER"] == b"d"
    assert b"export FROM_FILE='f'" in fs.files[D + ".sh"]
    assert handle.dumped == {"FROM_DOCKER", "FROM_FILE"}


def test_after_script_overrides_adds_and_unsets(fs):
    handle = ce.ContainerEnvironment(fs, D)
    env = handle.start({"KEEP": "k", "CHANGE": "old", "GONE": "g", "HOME": "/root"})
    # a start-up script edits the directory
    fs.add_file(f"{D}/CHANGE", "new\n")
    fs.add_file(f"{D}/ADDED", "a")
    fs.remove(f"{D}/GONE")
    env = handle.after_script(env)
    assert env == {"KEEP": "k", "CHANGE": "new", "ADDED": "a", "HOME": "/root"}
    assert json.loads(fs.files[D + ".json"]) == {"KEEP": "k", "CHANGE": "new", "ADDED": "a"}
    # a second script deletes what the first added
    fs.remove(f"{D}/ADDED")
    assert "ADDED" not in handle.after_script(env)


def test_after_script_keeps_variables_that_could_not_be_dumped(fs):
    fs.uid = 1000
    fs.fail("write_atomic", PermissionError(errno.EACCES, "Permission denied"))
    handle = ce.ContainerEnvironment(fs, D)
    env = handle.start({"FROM_DOCKER": "d"})
    assert handle.after_script(env) == {"FROM_DOCKER": "d"}


def test_after_script_with_an_unreadable_directory_changes_nothing(fs):
    handle = ce.ContainerEnvironment(fs, "/nowhere")
    assert handle.after_script({"A": "1"}) == {"A": "1"}


def test_a_directory_it_cannot_list_is_named_once_and_nothing_is_lost(fs, capfd):
    fs.uid = 1000
    fs.add_file(f"{D}/SECRET_GROUP_ONLY", "x")
    fs.unlistable.add(D)
    handle = ce.ContainerEnvironment(fs, D)
    env = handle.start({"A": "1"})
    for _ in range(2):
        env = handle.after_script(env)
    assert env == {"A": "1"}
    said = [line for line in capfd.readouterr().err.splitlines() if "cannot list" in line]
    assert len(said) == 1 and said[0].endswith(f"warning: container environment: cannot list {D} "
                                               "(running as uid 1000); its variables are not imported")


def test_the_handle_warns_once_per_path_across_scripts(fs, capfd):
    fs.uid = 1000
    fs.fail("write_atomic", PermissionError(errno.EACCES, "Permission denied"))
    handle = ce.ContainerEnvironment(fs, D)
    env = handle.start({"A": "1"})
    for _ in range(3):
        env = handle.after_script(env)
    assert len(warnings(capfd)) == 1


def test_paths_follow_the_environment_variable(fs):
    handle = ce.ContainerEnvironment.from_environ(fs, {"FSM_INIT_CONTAINER_ENVIRONMENT": "/tmp/ce/"})
    assert (handle.directory, handle.sh_path, handle.json_path) == ("/tmp/ce", "/tmp/ce.sh", "/tmp/ce.json")
    default = ce.ContainerEnvironment.from_environ(fs, {})
    assert (default.directory, default.sh_path, default.json_path) == (ce.DIRECTORY, ce.SH_PATH, ce.JSON_PATH)


# -- the real thing, in a temporary directory ------------------------------------------------

AWKWARD = {
    "QUOTES": "it's a \"test\" with `backticks` and $HOME and \\n",
    "SPACES": "  leading and trailing  ",
    "NEWLINES": "line1\nline2\n\nline4",
    "UNICODE": "café ☕",
    "EMPTY": "",
    "GLOB": "*",
}


def test_real_round_trip_through_a_shell(tmp_path):
    directory = tmp_path / "container_environment"
    directory.mkdir(mode=0o700)
    (directory / "FROM_FILE").write_text("from the image\n")
    system = System()
    handle = ce.ContainerEnvironment(system, str(directory))
    env = handle.start({**AWKWARD, "PATH": os.environ["PATH"], "HOME": "/root"})
    assert env["FROM_FILE"] == "from the image"
    # sourced by a shell, `env` shows exactly the values
    dump = subprocess.run(["sh", "-c", '. "$0"; env -0', str(tmp_path / "container_environment.sh")],
                          env={}, capture_output=True, check=True).stdout
    sourced = dict(item.split(b"=", 1) for item in dump.split(b"\0") if item)
    for name, value in AWKWARD.items():
        assert sourced[name.encode()] == value.encode(), name
    assert sourced[b"FROM_FILE"] == b"from the image" and b"HOME" not in sourced
    assert json.loads((tmp_path / "container_environment.json").read_text())["QUOTES"] == AWKWARD["QUOTES"]
    # the directory reads back to the same values (a newline-ending value keeps all but one)
    again = ce.import_env({}, system, str(directory))
    assert {k: again[k] for k in AWKWARD} == AWKWARD
    # modes; no temporary files left
    assert (directory.stat().st_mode & 0o777) == 0o750
    for path in (directory / "QUOTES", tmp_path / "container_environment.sh", tmp_path / "container_environment.json"):
        assert (path.stat().st_mode & 0o777) == 0o640
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]


def test_real_group_is_docker_env_when_it_exists(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("chgrp to an arbitrary group needs root")
    directory = tmp_path / "ce"
    directory.mkdir()
    system = System()
    monkeypatch.setattr(system, "group_id", lambda name: 8377 if name == "docker_env" else None)
    ce.ContainerEnvironment(system, str(directory)).start({"A": "1"})
    for path in (directory, directory / "A", tmp_path / "ce.sh", tmp_path / "ce.json"):
        assert path.stat().st_gid == 8377


def test_a_directory_another_user_could_change_is_neither_imported_nor_written(fs, capfd):
    trust.forget()
    fs.add_file(f"{D}/LD_PRELOAD", "/tmp/evil.so")
    fs.owners[D] = 65534
    handle = ce.ContainerEnvironment(fs, D)
    env = handle.start({"FROM_DOCKER": "d"})
    assert env == {"FROM_DOCKER": "d"} and f"{D}/FROM_DOCKER" not in fs.files
    assert handle.after_script(env) == env
    err = capfd.readouterr().err
    assert err.count(f"refusing to import the container environment from {D}: another user could change it: "
                     f"{D} is owned by uid 65534, not root (fix: chown root {D})") == 1
