"""setuser's command line, start.as_user (the argv the engine spawns for workuser) and
the workuser key's validation.  No process changes identity here: see
tests/integration/test_setuser.py for that."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsm_init.config import schema as config_schema, workcfg as config
from fsm_init.core import setuser
from fsm_init.steps import start

ROOT = Path(__file__).resolve().parents[2]


def validate(value):
    effective, problems = config_schema.validate({"workuser": value})
    return effective["workuser"], [p for p in problems if p.key == "workuser"]


# -- the workuser key ---------------------------------------------------------------------------


def test_workuser_defaults_to_none():
    assert config.defaults()["workuser"] is None
    assert config_schema.validate({})[0]["workuser"] is None


@pytest.mark.parametrize("value, effective", [
    ("nobody", "nobody"), ("nobody:nogroup", "nobody:nogroup"), ("65534", "65534"),
    ("65534:1", "65534:1"), (" daemon ", "daemon"), ("www-data", "www-data"), ("_apt", "_apt"),
    ("svc.user:svc-group", "svc.user:svc-group"), ("machine$", "machine$"), (1000, "1000"),
    ("", None), (None, None),
])
def test_valid_workuser(value, effective):
    assert validate(value) == (effective, [])


@pytest.mark.parametrize("value", [
    "a b", "-x", "nobody:", ":nogroup", "a:b:c", "nobody:-g", "1user$x", "x" * 40, "us\x00er",
    True, -1, 1.5, ["nobody"], {"user": "nobody"},
])
def test_invalid_workuser_is_a_problem_and_none(value):
    effective, problems = validate(value)
    assert effective is None
    assert len(problems) == 1 and problems[0].default is None
    assert "workuser" in problems[0].describe()


def test_workuser_is_only_checked_for_form_by_the_config():
    # Whether the user exists is for the container that runs the service, at start.
    assert validate("no-such-user-here") == ("no-such-user-here", [])


# -- start.as_user: the argv the engine spawns -------------------------------------------------------


PREFIX = [sys.executable, "-P", "-m", "fsm_init.core.setuser"]


def test_no_workuser_is_the_argv_itself():
    argv = ["./run", "--flag"]
    for workuser in (None, ""):
        result = start.as_user(argv, workuser)
        assert result == argv and result is not argv


def test_workuser_prefixes_setuser():
    assert start.as_user(["./run", "-x"], "nobody") == PREFIX + ["nobody", "--", "./run", "-x"]


def test_workuser_group_becomes_group_option():
    assert start.as_user(["/srv/x/PeriodicST-a"], "nobody:daemon") == \
        PREFIX + ["--group", "daemon", "nobody", "--", "/srv/x/PeriodicST-a"]


def test_executable_is_passed_to_setuser():
    assert start.as_user(["DoNothing", "600"], "65534", "/bin/sleep") == \
        PREFIX + ["--executable", "/bin/sleep", "65534", "--", "DoNothing", "600"]
    assert start.as_user(["DoNothing", "600"], None, "/bin/sleep") == ["DoNothing", "600"]


def test_as_user_does_not_touch_its_argument():
    argv = ["./run"]
    start.as_user(argv, "nobody:daemon", "/bin/true")
    assert argv == ["./run"]


@pytest.mark.parametrize("argv", [["./run"], ["--", "-dash"], ["sh", "-c", "echo --group x"], ["--group"]])
@pytest.mark.parametrize("workuser, executable", [("nobody", None), ("nobody:daemon", "/bin/x"), ("0:0", None)])
def test_as_user_round_trips_through_setuser_parse(argv, workuser, executable):
    wrapped = start.as_user(argv, workuser, executable)
    assert wrapped[:4] == PREFIX
    request = setuser.parse(wrapped[4:])
    user, group = start.split_workuser(workuser)
    assert (request.user, request.group, request.executable, request.command) == (user, group, executable, argv)


def test_split_workuser():
    assert start.split_workuser("nobody") == ("nobody", None)
    assert start.split_workuser("nobody:daemon") == ("nobody", "daemon")


def test_workuser_problem():
    assert start.workuser_problem(None) == ""
    assert start.workuser_problem("root") == ""
    assert start.workuser_problem("0:0") == ""
    assert "unknown user 'no-such-user-zz'" in start.workuser_problem("no-such-user-zz")
    assert "unknown group 'no-such-group-zz'" in start.workuser_problem("root:no-such-group-zz")


# -- setuser's command line ---------------------------------------------------------------------


@pytest.mark.parametrize("args, expected", [
    (["nobody", "id", "-u"], ("nobody", None, None, ["id", "-u"])),
    (["nobody", "--", "id"], ("nobody", None, None, ["id"])),
    (["nobody", "sh", "--", "x"], ("nobody", None, None, ["sh", "--", "x"])),
    (["--group", "daemon", "nobody", "--", "id"], ("nobody", "daemon", None, ["id"])),
    (["--group=daemon", "--executable=/bin/sleep", "1", "DoNothing"], ("1", "daemon", "/bin/sleep", ["DoNothing"])),
    (["--", "nobody", "id"], ("nobody", None, None, ["id"])),
])
def test_parse(args, expected):
    r = setuser.parse(args)
    assert (r.user, r.group, r.executable, r.command) == expected


@pytest.mark.parametrize("args", [
    [], ["nobody"], ["nobody", "--"], ["--group"], ["--group", "daemon"], ["--bogus", "nobody", "id"],
    ["--group=", "nobody", "id"], ["", "id"],
])
def test_parse_usage_errors(args):
    with pytest.raises(setuser.Failure) as e:
        setuser.parse(args)
    assert e.value.status == setuser.EXIT_USAGE


def test_main_usage_error_exits_2(capsys):
    assert setuser.main(["nobody"]) == 2
    err = capsys.readouterr().err
    assert "setuser: no COMMAND given" in err and "usage: setuser" in err


def test_main_help(capsys):
    assert setuser.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: setuser")


def test_main_unknown_user_exits_1(capsys):
    assert setuser.main(["no-such-user-zz", "true"]) == 1
    assert "setuser: unknown user 'no-such-user-zz'" in capsys.readouterr().err


# -- looking up, environment, identity ------------------------------------------------------------


def test_resolve_name_and_uid():
    for spec in ("root", "0"):
        identity = setuser.resolve(spec)
        assert (identity.name, identity.uid, identity.gid) == ("root", 0, 0)
        assert identity.home == "/root"


def test_resolve_group_override():
    assert setuser.resolve("root", "0").gid == 0
    assert setuser.resolve("root", "4242").gid == 4242  # a numeric gid need not be named


@pytest.mark.parametrize("user, group", [("no-such-user-zz", None), ("99999999", None), ("root", "no-such-group-zz"),
                                         ("root", "99999999999")])
def test_resolve_unknown(user, group):
    with pytest.raises(setuser.Failure) as e:
        setuser.resolve(user, group)
    assert e.value.status == setuser.EXIT_IDENTITY


def test_environment_sets_the_user_and_keeps_the_rest():
    identity = setuser.Identity("svc", 1234, 99, "/home/svc")
    env = {"HOME": "/root", "USER": "root", "PATH": "/bin", "SRVCFG": "{}", "LOGNAME": "root"}
    changed = setuser.environment(env, identity)
    assert changed == {"HOME": "/home/svc", "USER": "svc", "LOGNAME": "svc", "UID": "1234",
                       "PATH": "/bin", "SRVCFG": "{}"}
    assert env["HOME"] == "/root"


def test_become_without_root(monkeypatch):
    for name in ("geteuid", "getuid"):
        monkeypatch.setattr(setuser.os, name, lambda: 1000)
    for name in ("getegid", "getgid"):
        monkeypatch.setattr(setuser.os, name, lambda: 1000)
    setuser.become(setuser.Identity("me", 1000, 1000, "/home/me"))  # oneself: nothing to do
    with pytest.raises(setuser.Failure, match="not root") as e:
        setuser.become(setuser.Identity("other", 1001, 1000, "/home/other"))
    assert e.value.status == 1
    with pytest.raises(setuser.Failure):
        setuser.become(setuser.Identity("me", 1000, 1001, "/home/me"))


# -- import budget: setuser runs before every Periodic script under workuser -----------------------------


def test_setuser_imports_stdlib_and_prctl_only():
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
before = set(sys.modules)
import fsm_init.core.setuser
print(json.dumps(sorted(set(sys.modules) - before)))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    added = json.loads(result.stdout)
    assert [m for m in added if m.split(".")[0] not in sys.stdlib_module_names
            and m.split(".")[0] not in ("fsm_init", "prctl", "_prctl")] == []
    assert [m for m in added if m.startswith("fsm_init.")] == ["fsm_init.core", "fsm_init.core.setuser"]
    assert "typing" not in added
