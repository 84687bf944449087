"""/etc/container_environment for real: fsm-init runs as PID 1 of a fresh PID namespace,
imports the directory's variables into the service's environment and dumps its own
environment back (directory, .sh, .json) with my_init's modes and group.  The default
path is exercised inside the sandbox's private /etc overlay (files put in
``.etc-up`` before the start appear under /etc in the namespace); a docker_env group is
only ever added to that overlay's /etc/group, never to this machine's.
"""

import grp
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import AS_NOBODY, NOBODY, needs_nobody, needs_pid_namespace, wait_for

pytestmark = [pytest.mark.integration, needs_pid_namespace]

NAME = "ROUND_TRIP"
# Every character a shell or a quoting scheme could trip over, and embedded newlines.
VALUE = ("it's a \"quoted\" value: $HOME ${X:-y} `id` \\ back\\slash \\n\n"
         "second line\twith a tab\n\n  third line 'single' \"double\" end")
NOT_DUMPED = ("HOME", "USER", "GROUP", "UID", "GID", "SHELL")
# The service: writes $1's value, exactly, to the file $2.
PRINT = 'eval "printf %s \\"\\${$1}\\"" > "$2"'


def print_var(name: str, out: Path) -> tuple:
    """The command after --: a non-daemon service that writes $name to out and exits 0."""
    return ("--", "sh", "-c", PRINT, "print", name, str(out))


def sourced(sh_file: Path, name: str) -> str:
    """$name after `. sh_file` in a plain sh (outside the namespace: the file is on disk)."""
    result = subprocess.run(["sh", "-c", f'. "$1"; printf %s "${name}"', "sh", str(sh_file)],
                            capture_output=True, env={"PATH": os.environ["PATH"]}, timeout=10)
    assert result.returncode == 0, result.stderr
    return os.fsdecode(result.stdout)


def mode_and_gid(path: Path) -> tuple[int, int]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_gid


def warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if "container environment: cannot write" in line]


def free_gid() -> int:
    used = {g.gr_gid for g in grp.getgrall()}
    return next(gid for gid in range(8377, 60000) if gid not in used)


# -- root, directory moved into the sandbox ---------------------------------------------------


def test_a_value_with_quotes_dollars_backslashes_and_newlines_round_trips(sandbox):
    directory = sandbox.root / "container_environment"
    directory.mkdir()
    (directory / NAME).write_text(VALUE + "\n")  # the one trailing newline is stripped
    (directory / "TWO_NEWLINES").write_text("x\n\n")  # only one is
    out = sandbox.root / "seen"
    run = sandbox.start(*print_var(NAME, out))
    assert run.wait() == 0, run.log
    wait_for(out.exists, what="the service's output")
    assert out.read_text() == VALUE
    # dumped back without the newline; the .sh sourced and the .json give the same value
    assert (directory / NAME).read_text() == VALUE
    assert (directory / "TWO_NEWLINES").read_text() == "x\n"
    sh_file, json_file = sandbox.root / "container_environment.sh", sandbox.root / "container_environment.json"
    assert sourced(sh_file, NAME) == VALUE
    assert sourced(sh_file, "TWO_NEWLINES") == "x\n"
    assert json.loads(json_file.read_text())[NAME] == VALUE
    assert not warnings(run.log), run.log
    # docker restart: the dumped file is imported again to the same value
    again = sandbox.root / "seen-again"
    second = sandbox.start(*print_var(NAME, again))
    assert second.wait() == 0, second.log
    assert again.read_text() == VALUE


def test_names_a_shell_cannot_hold_are_written_with_underscores_as_my_init_does(sandbox):
    """DASH-NAME → DASH_NAME, my.prop.x → my_prop_x (my_init's sanitize_shenvname); the
    variable keeps its own name in the directory, the .json and the environment; a name
    starting with a digit is left out of the .sh (my_init writes it and the file stops
    there)."""
    directory = sandbox.root / "container_environment"
    directory.mkdir()
    for name, value in {"DASH-NAME": "dash", "my.prop.x": "dots", "spring.profiles.active": "prod",
                        "9LIVES": "cat", "ZLAST": "last"}.items():
        (directory / name).write_text(value)
    out = sandbox.root / "seen"
    run = sandbox.start(*print_var("ZLAST", out))
    assert run.wait() == 0, run.log
    sh_file = sandbox.root / "container_environment.sh"
    assert sourced(sh_file, "DASH_NAME") == "dash"
    assert sourced(sh_file, "my_prop_x") == "dots"
    assert sourced(sh_file, "spring_profiles_active") == "prod"
    assert sourced(sh_file, "ZLAST") == "last"  # sourcing went through to the end
    assert "9LIVES" not in sh_file.read_text()
    assert json.loads((sandbox.root / "container_environment.json").read_text())["my.prop.x"] == "dots"
    assert (directory / "DASH-NAME").read_text() == "dash"


def test_set_variables_win_and_fsm_inits_environment_is_dumped_except_the_users(sandbox):
    directory = sandbox.root / "container_environment"
    directory.mkdir()
    (directory / "KEEP").write_text("from-file\n")
    (directory / "NEW").write_text("from-file\n")
    out = sandbox.root / "seen"
    run = sandbox.start("--", "sh", "-c", 'printf "%s\\n" "$KEEP" "$NEW" "$FROM_ENV" "$HOME" "$SHELL" > "$1"',
                        "sh", str(out), KEEP="from-env", FROM_ENV="dumped value",
                        HOME="/root", USER="root", GROUP="root", UID="0", GID="0", SHELL="/bin/sh")
    assert run.wait() == 0, run.log
    wait_for(out.exists, what="the service's output")
    assert out.read_text().splitlines() == ["from-env", "from-file", "dumped value", "/root", "/bin/sh"]
    assert (directory / "KEEP").read_text() == "from-env"
    assert (directory / "NEW").read_text() == "from-file"
    assert (directory / "FROM_ENV").read_text() == "dumped value"
    assert (directory / "PATH").read_text() == os.environ["PATH"]
    dumped_json = json.loads((sandbox.root / "container_environment.json").read_text())
    assert dumped_json["KEEP"] == "from-env" and dumped_json["FROM_ENV"] == "dumped value"
    sh_text = (sandbox.root / "container_environment.sh").read_text()
    assert "export FROM_ENV='dumped value'\n" in sh_text
    for name in NOT_DUMPED:
        assert not (directory / name).exists(), name
        assert name not in dumped_json, name
        assert f"export {name}=" not in sh_text, name
    assert not warnings(run.log), run.log


def test_modes_without_a_docker_env_group_keep_roots_group(sandbox):
    if "docker_env" in {g.gr_name for g in grp.getgrall()}:
        pytest.skip("this machine has a docker_env group")
    directory = sandbox.root / "container_environment"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    (directory / "A").write_text("1\n")
    (directory / "A").chmod(0o666)
    out = sandbox.root / "seen"
    assert sandbox.start(*print_var("A", out)).wait() == 0
    assert out.read_text() == "1"
    assert mode_and_gid(directory) == (0o750, 0)
    for path in [*directory.iterdir(), sandbox.root / "container_environment.sh",
                 sandbox.root / "container_environment.json"]:
        assert mode_and_gid(path) == (0o640, 0), path
        assert not path.name.startswith("."), path  # no temporary file left behind


def test_no_directory_writes_nothing_and_the_service_still_runs(sandbox):
    out = sandbox.root / "seen"
    run = sandbox.start(*print_var("FROM_ENV", out), FROM_ENV="v")
    assert run.wait() == 0, run.log
    assert out.read_text() == "v"
    assert not (sandbox.root / "container_environment").exists()
    assert not (sandbox.root / "container_environment.sh").exists()
    assert not (sandbox.root / "container_environment.json").exists()
    assert not warnings(run.log), run.log


# -- root, the real default path in the private /etc overlay -----------------------------------


def test_default_etc_path_with_the_docker_env_group_and_modes(sandbox):
    etc_up = sandbox.root / ".etc-up"
    etc_up.mkdir()
    gid = free_gid()
    host_group = Path("/etc/group").read_text()
    (etc_up / "group").write_text(host_group + ("" if host_group.endswith("\n") else "\n") + f"docker_env:x:{gid}:\n")
    directory = etc_up / "container_environment"
    directory.mkdir()
    directory.chmod(0o755)
    (directory / NAME).write_text(VALUE + "\n")
    (directory / NAME).chmod(0o644)
    host_had = os.path.lexists("/etc/container_environment")
    out = sandbox.root / "seen"
    # "" unsets FSM_INIT_CONTAINER_ENVIRONMENT (the harness's own value): the default applies
    run = sandbox.start(*print_var(NAME, out), FSM_INIT_CONTAINER_ENVIRONMENT="", FROM_ENV="dumped")
    assert run.wait() == 0, run.log
    wait_for(out.exists, what="the service's output")
    assert out.read_text() == VALUE
    assert (directory / "FROM_ENV").read_text() == "dumped"
    assert mode_and_gid(directory) == (0o750, gid)
    files = sorted(directory.iterdir())
    assert {p.name for p in files} >= {NAME, "FROM_ENV", "PATH"}
    sh_file, json_file = etc_up / "container_environment.sh", etc_up / "container_environment.json"
    for path in [*files, sh_file, json_file]:
        assert mode_and_gid(path) == (0o640, gid), path
        assert not path.name.startswith("."), path
    assert sourced(sh_file, NAME) == VALUE
    assert json.loads(json_file.read_text())[NAME] == VALUE
    assert not warnings(run.log), run.log
    # nothing reached this machine's /etc
    assert os.path.lexists("/etc/container_environment") == host_had
    assert Path("/etc/group").read_text() == host_group


# -- fsm-init itself not root ------------------------------------------------------------------

@needs_nobody
def test_non_root_with_an_unwritable_directory_imports_and_warns_once(nobody_sandbox):
    box, out = nobody_sandbox
    directory = box.root / "container_environment"  # the harness's path: root-owned, 0755
    directory.mkdir()
    directory.chmod(0o755)
    (directory / "VAR").write_text("readable by all\n")
    (directory / "VAR").chmod(0o644)
    seen = out / "seen"
    run = box.start(*print_var("VAR", seen), launcher=AS_NOBODY, FROM_ENV="x")
    assert run.wait() == 0, run.log
    wait_for(seen.exists, what="the service's output")
    assert seen.read_text() == "readable by all"
    assert seen.stat().st_uid == NOBODY[0]  # it really ran as nobody
    found = warnings(run.log)
    assert len(found) == 1, run.log
    line = found[0]
    assert f"{directory}/" in line and "more variables" in line
    assert f"{box.root}/container_environment.sh" in line and f"{box.root}/container_environment.json" in line
    assert "Permission denied" in line and f"running as uid {NOBODY[0]}" in line
    assert "Traceback" not in run.log
    assert sorted(p.name for p in directory.iterdir()) == ["VAR"]
    assert (directory / "VAR").read_text() == "readable by all\n"
    assert mode_and_gid(directory) == (0o755, 0)
    assert not (box.root / "container_environment.sh").exists()
    assert not (box.root / "container_environment.json").exists()


@needs_nobody
def test_non_root_with_a_directory_it_owns_writes_everything(nobody_sandbox):
    box, out = nobody_sandbox
    parent = box.root / "env"  # the .sh and .json are written beside the directory
    directory = parent / "container_environment"
    directory.mkdir(parents=True)
    for path in (parent, directory):
        path.chmod(0o755)
        os.chown(path, *NOBODY)
    (directory / "VAR").write_text("imported\n")  # root's file, replaced by rename
    (directory / "VAR").chmod(0o644)
    seen = out / "seen"
    run = box.start(*print_var("VAR", seen), launcher=AS_NOBODY, FROM_ENV="dumped",
                    FSM_INIT_CONTAINER_ENVIRONMENT=str(directory))
    assert run.wait() == 0, run.log
    wait_for(seen.exists, what="the service's output")
    assert seen.read_text() == "imported"
    assert not warnings(run.log), run.log
    assert (directory / "VAR").read_text() == "imported"
    assert (directory / "FROM_ENV").read_text() == "dumped"
    sh_file, json_file = parent / "container_environment.sh", parent / "container_environment.json"
    for path in [*directory.iterdir(), sh_file, json_file]:
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, *NOBODY), path
        assert not path.name.startswith("."), path
    assert sourced(sh_file, "FROM_ENV") == "dumped"
    assert json.loads(json_file.read_text())["VAR"] == "imported"
    for name in NOT_DUMPED:
        assert not (directory / name).exists(), name


@needs_nobody
def test_non_root_with_a_directory_it_cannot_list_says_so(nobody_sandbox):
    """my_init's image leaves the directory 0700 (0750 root:docker_env here): a user outside
    the group cannot even list it.  Nothing crashes, and the log says what was not imported."""
    box, out = nobody_sandbox
    directory = box.root / "container_environment"
    directory.mkdir()
    directory.chmod(0o750)
    (directory / "VAR").write_text("hidden\n")
    seen = out / "seen"
    run = box.start(*print_var("VAR", seen), launcher=AS_NOBODY)
    assert run.wait() == 0, run.log
    assert seen.read_text() == ""
    assert f"container environment: cannot list {directory} (running as uid {NOBODY[0]}); " \
           "its variables are not imported" in run.log
    assert "Traceback" not in run.log
