"""workcfg.json validation, where the config comes from, which /srv directory, and `fsm-init validate`."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsm_init import cli
from fsm_init.config import schema as config_schema, workcfg as config
from fsm_init.steps import load_config, resolve_target
from fsm_init.config.workcfg import MASK
from fsm_init.steps.resolve_target import Target

from .fakes import FakeSystem, make_settings

ROOT = Path(__file__).resolve().parents[2]

DEFAULTS = config.defaults()


def validate(document: dict):
    effective, problems = config_schema.validate(document)
    return effective, {p.key: p for p in problems if not p.dropped}, [p for p in problems if p.dropped]


def strict_json(text: str):
    def reject(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=reject)


# -- defaults and the top-level keys ----------------------------------------------------------------


def test_empty_document_is_the_defaults():
    effective, problems, dropped = validate({})
    assert effective == DEFAULTS and not problems and not dropped
    assert effective["workwatch"] is None and effective["workstart"] is None


def test_defaults_are_fresh_copies():
    first = config.defaults()
    first["firewall"]["enable"] = "no"
    assert config.defaults()["firewall"]["enable"] == "yes"


@pytest.mark.parametrize("key, raw, value", [
    ("initdelay", 0, 0), ("initdelay", 15, 15), ("initdelay", "15", 15), ("initdelay", " 7 ", 7),
    ("initdelay", 4.0, 4),
    ("workintvl", 1, 1), ("workintvl", "60", 60),
    ("worktimeout", 20, 20), ("worktimeout", "20", 20), ("worktimeout", None, None),
    ("workwatch", 0, 0), ("workwatch", "0", 0), ("workwatch", 30, 30), ("workwatch", "30", 30),
    ("workwatch", None, None),
    ("workstart", "./run.sh --port 80", "./run.sh --port 80"),
    ("workstart", ["./run.sh", "a b"], ["./run.sh", "a b"]),
    ("workstart", ["printf", "%s|", ""], ["printf", "%s|", ""]),  # an empty argument is an argument
    ("workstart", ["./run", "", " "], ["./run", "", " "]),
])
def test_valid_top_level_values(key, raw, value):
    effective, problems, _ = validate({key: raw})
    assert effective[key] == value and type(effective[key]) is type(value)
    assert not problems


@pytest.mark.parametrize("key, raw, reason", [
    ("initdelay", -1, "at least 0"), ("initdelay", "abc", "not an integer"), ("initdelay", 1.5, "not an integer"),
    ("initdelay", True, "boolean"), ("initdelay", None, ""), ("initdelay", "1e3", "not an integer"),
    ("initdelay", [3], "not an integer"),
    ("workintvl", 0, "at least 1"), ("workintvl", "-3", "at least 1"), ("workintvl", False, "boolean"),
    ("worktimeout", 0, "at least 1"), ("worktimeout", "soon", "not an integer"),
    ("workstart", "", "command"), ("workstart", "   ", "command"), ("workstart", [], "command"),
    ("workstart", ["", "./run"], "first element (the program) is not empty"), ("workstart", [""], "command"),
    ("workstart", ["./run", 1], "command"), ("workstart", 7, "command"),
    ("workstart", ["./run", "a\0b"], "NUL byte"), ("workstart", "./run a\0b", "NUL byte"),
])
def test_invalid_top_level_values_take_the_default(key, raw, reason):
    effective, problems, _ = validate({key: raw})
    assert effective[key] == DEFAULTS[key]
    problem = problems[key]
    assert problem.value == raw and problem.default == DEFAULTS[key]
    assert reason in problem.reason
    text = problem.describe()
    assert text.startswith(f"config key '{key}' = ") and "using" in text


@pytest.mark.parametrize("raw", [-1, "-5", "abc", True, 2.5, [0], {"n": 1}])
def test_workwatch_that_is_not_a_non_negative_integer_means_non_daemon(raw):
    effective, problems, _ = validate({"workwatch": raw})
    assert effective["workwatch"] is None
    assert "non-daemon" in problems["workwatch"].reason


def test_absent_workwatch_is_non_daemon_without_a_problem():
    effective, problems, _ = validate({"initdelay": 1})
    assert effective["workwatch"] is None and "workwatch" not in problems


@pytest.mark.parametrize("document", [
    {"initdelay": "--5"}, {"initdelay": "\u00b2"}, {"workintvl": "\u00b3"}, {"workwatch": "--1"},
    {"worktimeout": "-\u00b2"}, {"sshsrv": {"sshport": "\u00b2"}},
    {"firewall": {"tcpportpmt": "\u00b2"}}, {"firewall": {"udpportpmt": "80:\u00b9"}},
], ids=repr)
def test_odd_numeric_strings_are_problems_not_crashes(document):
    effective, problems, dropped = validate(document)  # raised ValueError from int()
    assert problems or dropped
    assert effective["initdelay"] == DEFAULTS["initdelay"] or "initdelay" not in document


# -- sections ---------------------------------------------------------------------------------------

YES_NO_KEYS = [("firewall", k) for k in ("enable", "icmppermit", "igmppermit", "grepermit", "esppermit", "ahpermit")] \
    + [("sshsrv", "enable"), ("sshsrv", "password"), ("inetdail", "enable"), ("inetdail", "usedefgw")]


@pytest.mark.parametrize("section, key", YES_NO_KEYS)
@pytest.mark.parametrize("raw, value", [
    ("yes", "yes"), ("YES", "yes"), ("Yes", "yes"), (" no ", "no"), ("NO", "no"), ("nO", "no"),
    ("true", "yes"), ("False", "no"), (True, "yes"), (False, "no"),
])
def test_yes_no_in_any_case_and_json_booleans(section, key, raw, value):
    effective, problems, _ = validate({section: {key: raw}})
    assert effective[section][key] == value and not problems


@pytest.mark.parametrize("section, key", YES_NO_KEYS)
@pytest.mark.parametrize("raw", ["maybe", "", 1, 0, None, ["yes"], "y"])
def test_invalid_yes_no_takes_the_default(section, key, raw):
    effective, problems, _ = validate({section: {key: raw}})
    assert effective[section][key] == DEFAULTS[section][key]
    assert problems[f"{section}.{key}"].value == raw


@pytest.mark.parametrize("key", ["tcpportpmt", "udpportpmt"])
def test_port_lists(key):
    effective, problems, dropped = validate({"firewall": {key: "80:86,125,8080"}})
    assert effective["firewall"][key] == "80:86,125,8080" and not problems and not dropped
    effective, _, _ = validate({"firewall": {key: 443}})
    assert effective["firewall"][key] == "443"
    effective, _, _ = validate({"firewall": {key: " 22 , 80:90 ,"}})
    assert effective["firewall"][key] == "22,80:90"
    # iptables would read 010 as octal (port 8)
    effective, _, _ = validate({"firewall": {key: "010,0080:00090"}})
    assert effective["firewall"][key] == "10,80:90"


@pytest.mark.parametrize("key", ["tcpportpmt", "udpportpmt"])
def test_invalid_port_list_entries_are_dropped(key):
    effective, problems, dropped = validate({"firewall": {key: "80:86,abc,125,0,65536,90:80,8080,1:2:3"}})
    assert effective["firewall"][key] == "80:86,125,8080"
    assert not problems
    assert [p.value for p in dropped] == ["abc", "0", "65536", "90:80", "1:2:3"]
    assert {p.key for p in dropped} == {f"firewall.{key}"}
    assert all(p.describe().endswith("entry dropped") for p in dropped)


@pytest.mark.parametrize("raw", [["80"], True, {"a": 1}, 1.5])
def test_port_list_that_is_not_a_string_takes_the_default(raw):
    effective, problems, _ = validate({"firewall": {"tcpportpmt": raw}})
    assert effective["firewall"]["tcpportpmt"] == "" and "firewall.tcpportpmt" in problems


@pytest.mark.parametrize("raw, value", [(22, 22), ("8022", 8022), (" 2222 ", 2222), (1, 1), (65535, 65535)])
def test_sshport(raw, value):
    effective, problems, _ = validate({"sshsrv": {"sshport": raw}})
    assert effective["sshsrv"]["sshport"] == value and not problems


@pytest.mark.parametrize("raw", [0, 65536, "ssh", "-22", True, 22.5, None])
def test_invalid_sshport_takes_8022(raw):
    effective, problems, _ = validate({"sshsrv": {"sshport": raw}})
    assert effective["sshsrv"]["sshport"] == 8022
    assert problems["sshsrv.sshport"].default == 8022


def test_ssh_and_dial_text_keys():
    document = {"sshsrv": {"rootpwd": "hunter2", "authkeys": " ssh-ed25519 AAAA me "},
                "inetdail": {"dialuser": "u", "dialpswd": "p", "dialintf": "eth1"}}
    effective, problems, _ = validate(document)
    assert not problems
    assert effective["sshsrv"]["rootpwd"] == "hunter2"
    assert effective["sshsrv"]["authkeys"] == ["ssh-ed25519 AAAA me"]
    assert effective["inetdail"] == {"enable": "no", "dialuser": "u", "dialpswd": "p", "dialintf": "eth1",
                                     "usedefgw": "no"}
    effective, _, _ = validate({"sshsrv": {"authkeys": ["a", " ", "b "]}})
    assert effective["sshsrv"]["authkeys"] == ["a", "b"]


@pytest.mark.parametrize("section, key, raw", [
    ("sshsrv", "authkeys", [1]), ("sshsrv", "authkeys", 5), ("sshsrv", "rootpwd", 5),
    ("inetdail", "dialuser", ["u"]), ("inetdail", "dialintf", None),
])
def test_invalid_text_keys_take_the_default(section, key, raw):
    effective, problems, _ = validate({section: {key: raw}})
    assert effective[section][key] == DEFAULTS[section][key]
    assert f"{section}.{key}" in problems


def test_unknown_keys_are_kept_at_top_level_and_in_sections():
    document = {"myservice": {"threads": 4, "hosts": ["a", "b"]}, "flag": None,
                "firewall": {"enable": "no", "extra": [1, {"x": "y"}]},
                "sshsrv": {"banner": "hi"}, "inetdail": {"mtu": 1492}}
    effective, problems, _ = validate(document)
    assert not problems
    assert effective["myservice"] == {"threads": 4, "hosts": ["a", "b"]} and effective["flag"] is None
    assert effective["firewall"]["extra"] == [1, {"x": "y"}] and effective["firewall"]["enable"] == "no"
    assert effective["sshsrv"]["banner"] == "hi" and effective["inetdail"]["mtu"] == 1492


@pytest.mark.parametrize("section", ["firewall", "sshsrv", "inetdail"])
@pytest.mark.parametrize("raw", ["no", ["enable"], 0, None, True])
def test_section_that_is_not_an_object_takes_the_default_section(section, raw):
    effective, problems, _ = validate({section: raw})
    assert effective[section] == DEFAULTS[section]
    assert problems[section].value == raw


def test_problems_inside_a_section_are_named_section_dot_key():
    _, problems, _ = validate({"firewall": {"icmppermit": "x"}, "sshsrv": {"sshport": 0}, "initdelay": -1})
    assert set(problems) == {"firewall.icmppermit", "sshsrv.sshport", "initdelay"}


# -- secrets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("section, key, raw", [("sshsrv", "rootpwd", 987654321), ("inetdail", "dialpswd", ["s3cr3t!"])])
def test_invalid_secrets_are_masked_in_problems(section, key, raw):
    _, problems, _ = validate({section: {key: raw}})
    problem = problems[f"{section}.{key}"]
    text = problem.describe()
    assert MASK in text and "987654321" not in text and "s3cr3t" not in text
    as_dict = problem.as_dict()
    assert as_dict["value"] == MASK and "s3cr3t" not in json.dumps(as_dict) and "987654321" not in json.dumps(as_dict)


def test_masked_hides_secrets_and_leaves_the_config_alone():
    effective, _, _ = validate({"sshsrv": {"rootpwd": "hunter2"}, "inetdail": {"dialpswd": "pppw", "dialuser": "u"}})
    shown = config.masked(effective)
    assert shown["sshsrv"]["rootpwd"] == MASK and shown["inetdail"]["dialpswd"] == MASK
    assert shown["inetdail"]["dialuser"] == "u"
    assert effective["sshsrv"]["rootpwd"] == "hunter2"  # not mutated
    assert "hunter2" not in json.dumps(shown) and "pppw" not in json.dumps(shown)
    assert config.masked(DEFAULTS)["sshsrv"]["rootpwd"] == ""  # nothing to hide


def test_effective_config_is_strict_json_for_the_service():
    """$SRVCFG handed to the service must be JSON a strict parser accepts."""
    document, why = config.parse_document(b'{"initdelay": 0, "big": 1e400}')
    assert document is None or why == ""
    if document is not None:
        effective, _ = config_schema.validate(document)
        text = config.dumps_compact(effective)
        assert strict_json(text) == effective, text  # 1e400 became Infinity


# -- parse_document -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw, why", [
    (b"", "empty"), (b"  \n", "empty"), (b"[1]", "list"), (b'"x"', "str"), (b"3", "int"), (b"null", "NoneType"),
    (b"{", "not valid JSON"), (b'{"a": NaN}', "not valid JSON"), (b'{"a": Infinity}', "not valid JSON"),
    (b"\xff{}", "not UTF-8"),
])
def test_documents_that_are_not_objects(raw, why):
    document, reason = config.parse_document(raw)
    assert document is None and why in reason


def test_deeply_nested_document_is_rejected_not_raised():
    document, reason = config.parse_document("[" * 100000 + "]" * 100000)
    assert document is None and reason


# -- ConfigSource: $SRVCFG and workcfg.json -----------------------------------------------------------

PATH = "/srv/app/workcfg.json"
GOOD = b'{"initdelay": 1, "workstart": "./good"}'


def source(srvcfg: str = "", *, first_start=True, directory="/srv/app", file=GOOD):
    fake = FakeSystem()
    if directory:
        fake.add_dir(directory)
        if file is not None:
            fake.add_file(PATH, file, 0o644)
    target = Target("app" if directory else None, directory, first_start)
    return load_config.ConfigSource(target, srvcfg, fake), fake


def test_workcfg_json_is_read_and_validated():
    src, fake = source()
    loaded = src.load()
    assert loaded.has_config and not loaded.errors and not loaded.problems
    assert loaded.config["initdelay"] == 1 and loaded.config["workstart"] == "./good"
    assert fake.writes == []


def test_valid_srvcfg_is_written_exactly_as_given_with_mode_0600():
    raw = '{ "workstart" : "./new",\n  "initdelay": "2", "zzz": [1,2] }  '
    src, fake = source(raw)
    loaded = src.load()
    assert fake.files[PATH] == raw.encode() and fake.modes[PATH] == 0o600
    assert fake.writes == [(PATH, raw.encode(), 0o600)]
    assert loaded.config["workstart"] == "./new" and loaded.config["initdelay"] == 2
    assert loaded.config["zzz"] == [1, 2] and not loaded.errors


@pytest.mark.parametrize("raw, names", [
    ("not json", "not valid JSON"), ('["a"]', "a JSON list, not an object"), ("42", "a JSON int"),
    ('{"a": NaN}', "not valid JSON"), ('{"a": 1', "not valid JSON"),
])
def test_invalid_srvcfg_leaves_workcfg_json_untouched(raw, names):
    src, fake = source(raw)
    loaded = src.load()
    assert fake.files[PATH] == GOOD and fake.writes == []
    assert len(loaded.errors) == 1 and "$SRVCFG" in loaded.errors[0] and names in loaded.errors[0]
    assert PATH in loaded.errors[0]
    assert loaded.config["workstart"] == "./good"


def test_blank_srvcfg_is_no_srvcfg():
    src, fake = source("   ")
    loaded = src.load()
    assert not loaded.errors and fake.writes == [] and loaded.config["workstart"] == "./good"


def test_srvcfg_is_taken_once_per_process():
    src, fake = source('{"workstart": "./from-env"}')
    assert src.load().config["workstart"] == "./from-env"
    fake.add_file(PATH, b'{"workstart": "./edited"}')
    assert src.load().config["workstart"] == "./edited"
    assert len(fake.writes) == 1


def test_restart_ignores_srvcfg():
    src, fake = source('{"workstart": "./from-env"}', first_start=False)
    loaded = src.load()
    assert fake.writes == [] and fake.files[PATH] == GOOD
    assert loaded.config["workstart"] == "./good" and not loaded.errors


def test_srvcfg_without_a_directory_is_kept_for_the_restarts_of_this_process():
    src, fake = source('{"workstart": "/bin/app"}', directory=None)
    first = src.load()
    assert first.has_config and first.config["workstart"] == "/bin/app"
    again = src.load()
    assert again.has_config and again.config["workstart"] == "/bin/app"
    assert fake.writes == []


def test_no_directory_and_no_srvcfg_is_no_config():
    src, _ = source("", directory=None)
    loaded = src.load()
    assert loaded == load_config.Loaded(DEFAULTS, False, [], [])


def test_srvcfg_that_cannot_be_written_serves_from_memory_and_is_written_when_it_can(capfd):
    src, fake = source('{"workstart": "./from-env"}')
    fake.fail("write_atomic", OSError(28, "No space left on device"), PATH)
    for _ in range(3):  # the first start and two restarts on a full disk
        loaded = src.load()
        assert loaded.config["workstart"] == "./from-env" and loaded.errors == []
    assert fake.files[PATH] == GOOD
    assert "No space left on device" in src.writes.status()[PATH]
    err = capfd.readouterr().err
    assert err.count(f"cannot write {PATH}: No space left on device") == 1, err
    fake.faults.clear()  # space again: the next restart writes it, and says so once
    assert src.load().config["workstart"] == "./from-env"
    assert fake.files[PATH] == b'{"workstart": "./from-env"}' and src.writes.status() == {}
    assert src.load().config["workstart"] == "./from-env"
    assert capfd.readouterr().err.count(f"{PATH} written again after 3 failed write(s)") == 1


@pytest.mark.parametrize("file, names", [(None, "no /srv/app/workcfg.json"), (b"{oops", "not valid JSON"),
                                         (b"[]", "a JSON list"), (b"\xfe\xff", "not UTF-8")])
def test_unusable_workcfg_json_means_defaults(file, names):
    src, _ = source(file=file)
    loaded = src.load()
    assert loaded.has_config and loaded.config == DEFAULTS
    assert names in loaded.errors[0] and "built-in defaults" in loaded.errors[0]


def test_problems_are_reported_with_the_effective_config():
    src, _ = source(file=b'{"initdelay": -3, "firewall": {"tcpportpmt": "22,x"}}')
    loaded = src.load()
    assert loaded.config["initdelay"] == 3 and loaded.config["firewall"]["tcpportpmt"] == "22"
    assert {p.key for p in loaded.problems} == {"initdelay", "firewall.tcpportpmt"}


def test_accepted_srvcfg_is_what_the_next_start_reads():
    """$SRVCFG is an environment string (bytes decoded with surrogateescape); what was
    accepted and written must be a workcfg.json the next container start accepts."""
    environ_value = b'{"workstart": "./run", "sshsrv": {"rootpwd": "caf\xe9"}}'.decode("utf-8", "surrogateescape")
    src, fake = source(environ_value)
    first = src.load()
    restart = load_config.ConfigSource(Target("app", "/srv/app", False), "", fake).load()
    if fake.files[PATH] != GOOD:  # accepted and written
        assert restart.errors == [], restart.errors
        assert restart.config == first.config
    else:
        assert first.errors


def test_a_file_broken_between_two_starts_keeps_the_configuration_read_before():
    """A typo while editing workcfg.json must not stop dropbear and close the ports."""
    src, fake = source(first_start=False)
    assert src.load().config["workstart"] == "./good"
    fake.add_file(PATH, b'{"workstart": "./good",,}')
    again = src.load()
    assert again.config["workstart"] == "./good" and again.config["initdelay"] == 1
    assert len(again.errors) == 1 and again.errors[0].startswith(f"{PATH} is not valid JSON")
    assert again.errors[0].endswith("keeping the configuration read before (fix it, then srvctl restart)")
    fake.remove(PATH)
    assert src.load().config["workstart"] == "./good"
    fake.add_file(PATH, b'{"workstart": "./fixed"}')
    assert src.load().config["workstart"] == "./fixed"


def test_srvcfg_for_a_srvname_that_fell_back_leaves_imginits_file_alone():
    fake = FakeSystem()
    fake.add_file("/srv/imginit/workcfg.json", b'{"workstart": "./imginit"}')
    target = Target("imginit", "/srv/imginit", True, fallback=True)
    src = load_config.ConfigSource(target, '{"workstart": "./web.sh"}', fake)
    assert src.load().config["workstart"] == "./web.sh"
    assert src.load().config["workstart"] == "./web.sh", "a restart of this process"
    assert fake.files["/srv/imginit/workcfg.json"] == b'{"workstart": "./imginit"}' and fake.writes == []


# -- resolve_target -----------------------------------------------------------------------------------

STATE = "/var/lib/fsm-init"
MARK = f"{STATE}/target"


def resolve(environ, dirs=("web", "imginit"), marker=None):
    fake = FakeSystem()
    for name in dirs:
        fake.add_dir(f"/srv/{name}")
    if marker is not None:
        fake.add_file(MARK, marker)
    target, notes = resolve_target.resolve(make_settings(), environ, fake)
    return target, notes, fake


def test_first_start_takes_srvname_and_remembers_it():
    target, notes, fake = resolve({"SRVNAME": "web"})
    assert target == Target("web", "/srv/web", True)
    assert fake.files[MARK] == b"web\n" and STATE in fake.dirs
    assert any("first start" in n for n in notes)


def test_first_start_without_srvname_is_imginit():
    target, _, fake = resolve({})
    assert target == Target("imginit", "/srv/imginit", True, default=True)
    assert fake.files[MARK] == b"imginit\n"


def test_a_command_line_without_srvname_has_no_target_and_remembers_nothing():
    fake = _with_dirs("web", "imginit")
    target, notes = resolve_target.resolve(make_settings(), {}, fake, command=True)
    assert target == Target(None, None, True)
    assert any("as under tini" in n for n in notes)
    assert MARK not in fake.files


def test_a_command_line_with_srvname_serves_the_named_directory():
    fake = _with_dirs("web")
    target, _ = resolve_target.resolve(make_settings(), {"SRVNAME": "web"}, fake, command=True)
    assert target == Target("web", "/srv/web", True) and fake.files[MARK] == b"web\n"


def test_a_misspelled_srvname_is_an_error_naming_the_directories_escaped():
    target, notes = resolve_target.resolve(make_settings(), {"SRVNAME": "wbe"},
                                              _with_dirs("web", "imginit", "a\x1bb"))
    assert target.fallback
    errors = [n for n in notes if isinstance(n, resolve_target.Error)]
    assert len(errors) == 1 and "'wbe'" in errors[0]
    assert "'a\\x1bb', 'imginit', 'web'" in errors[0] and "\x1b" not in errors[0]


def _with_dirs(*names) -> FakeSystem:
    fake = FakeSystem()
    for name in names:
        fake.add_dir(f"/srv/{name}")
    return fake


def test_restart_serves_the_remembered_directory():
    target, notes, fake = resolve({"SRVNAME": "imginit"}, marker="web\n")
    assert target == Target("web", "/srv/web", False)
    assert fake.writes == []
    assert any("not read again" in n for n in notes)


@pytest.mark.parametrize("srvname", ["nope", "../etc", "a/b", ".."])
def test_unusable_srvname_falls_back_and_is_not_remembered(srvname):
    target, notes, fake = resolve({"SRVNAME": srvname})
    assert target == Target("imginit", "/srv/imginit", True, fallback=True)
    assert MARK not in fake.files
    assert any("not remembered" in n for n in notes)


def test_fallback_without_imginit_is_the_built_in_defaults():
    target, notes, fake = resolve({"SRVNAME": "nope"}, dirs=())
    assert target == Target(None, None, True) and MARK not in fake.files
    assert any("built-in defaults" in n for n in notes)


def test_remembered_directory_that_vanished_falls_back():
    target, _, fake = resolve({"SRVNAME": "web"}, dirs=("imginit",), marker="web\n")
    assert target == Target("imginit", "/srv/imginit", False, fallback=True)
    assert fake.files[MARK] == b"web\n"


@pytest.mark.parametrize("marker", ["", "\n", "../x\n", "a/b"])
def test_unusable_marker_is_a_first_start(marker):
    target, _, fake = resolve({"SRVNAME": "web"}, marker=marker)
    assert target == Target("web", "/srv/web", True) and fake.files[MARK] == b"web\n"


def test_marker_that_cannot_be_written_is_reported():
    fake = FakeSystem()
    fake.add_dir("/srv/web")
    fake.fail("write_atomic", OSError(30, "Read-only file system"), MARK)
    target, notes = resolve_target.resolve(make_settings(), {"SRVNAME": "web"}, fake)
    assert target == Target("web", "/srv/web", True)
    assert any("cannot remember" in n and "Read-only" in n for n in notes)


# -- fsm-init validate ----------------------------------------------------------------------------------


def write(tmp_path, document) -> str:
    path = tmp_path / "workcfg.json"
    path.write_bytes(document if isinstance(document, bytes) else json.dumps(document).encode())
    return str(path)


def test_validate_clean_file(tmp_path, capsys):
    path = write(tmp_path, {"initdelay": 0, "workstart": "./run.sh", "workwatch": "30"})
    assert cli.main(["validate", path]) == 0
    out, err = capsys.readouterr()
    shown = json.loads(out)
    assert shown["workwatch"] == 30 and shown["firewall"] == DEFAULTS["firewall"]
    assert "problem" not in err


def test_validate_reports_problems_and_exits_1(tmp_path, capsys):
    path = write(tmp_path, {"initdelay": "soon", "firewall": {"tcpportpmt": "22,abc"}})
    assert cli.main(["validate", path]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["initdelay"] == 3
    assert "problem: config key 'initdelay' = 'soon'" in err
    assert "problem: config key 'firewall.tcpportpmt': entry 'abc'" in err


def test_validate_lists_kept_unknown_keys(tmp_path, capsys):
    path = write(tmp_path, {"initdelay": 0, "zeta": 1, "alpha": {"x": 1}})
    assert cli.main(["validate", path]) == 0
    out, err = capsys.readouterr()
    assert "kept: unknown key 'alpha'" in err and "kept: unknown key 'zeta'" in err
    assert err.index("'alpha'") < err.index("'zeta'")
    assert json.loads(out)["alpha"] == {"x": 1}


def test_validate_shows_an_unknown_key_escaped(tmp_path, capsys):
    path = write(tmp_path, {"initdelay": 0, "x\x1b]0;title\x07\nproblem: forged": 1})
    assert cli.main(["validate", path]) == 0
    err = capsys.readouterr().err
    assert "kept: unknown key 'x\\x1b]0;title\\x07\\nproblem: forged'" in err and "\x1b" not in err


def test_validate_masks_secrets(tmp_path, capsys):
    path = write(tmp_path, {"sshsrv": {"rootpwd": "hunter2"}, "inetdail": {"dialpswd": 1234567}})
    assert cli.main(["validate", path]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["sshsrv"]["rootpwd"] == MASK
    assert "hunter2" not in out + err and "1234567" not in out + err
    assert "inetdail.dialpswd" in err


def test_validate_json(tmp_path, capsys):
    path = write(tmp_path, {"sshsrv": {"rootpwd": "hunter2", "sshport": "0"}, "extra": True})
    assert cli.main(["validate", "--json", path]) == 1
    out, _ = capsys.readouterr()
    report = json.loads(out)
    assert report["ok"] is False and report["file"] == path and report["error"] is None
    assert report["config"]["sshsrv"]["rootpwd"] == MASK and report["config"]["sshsrv"]["sshport"] == 8022
    assert report["kept"] == ["extra"]
    assert [p["key"] for p in report["problems"]] == ["sshsrv.sshport"]
    assert "hunter2" not in out


def test_validate_json_clean(tmp_path, capsys):
    path = write(tmp_path, {"initdelay": 0})
    assert cli.main(["validate", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["problems"] == [] and report["kept"] == []


@pytest.mark.parametrize("as_json", [False, True])
def test_validate_reads_stdin(monkeypatch, capsys, as_json):
    raw = json.dumps({"workwatch": "-1", "other": 1}).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    code = cli.main(["validate", *(["--json"] if as_json else []), "-"])
    assert code == 1
    out, err = capsys.readouterr()
    if as_json:
        report = json.loads(out)
        assert report["file"] == "-" and report["kept"] == ["other"]
        assert report["problems"][0]["key"] == "workwatch"
    else:
        assert json.loads(out)["workwatch"] is None
        assert "problem: config key 'workwatch'" in err and "kept: unknown key 'other'" in err


@pytest.mark.parametrize("raw, names", [(b"[1, 2]", "a JSON list, not an object"), (b"{", "not valid JSON"),
                                        (b"", "empty")])
def test_validate_document_that_is_not_an_object(tmp_path, capsys, raw, names):
    path = write(tmp_path, raw)
    assert cli.main(["validate", path]) == 1
    out, err = capsys.readouterr()
    assert out == "" and names in err
    assert cli.main(["validate", "--json", path]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and names in report["error"] and report["config"] is None


def test_validate_missing_file(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path / "nope.json")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_validate_usage_errors(capsys):
    assert cli.main(["validate", "a.json", "b.json"]) == 2
    assert cli.main(["validate", "--bogus"]) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["validate", "--json"], ["graph"]])
def test_a_reader_that_went_away_ends_a_printing_subcommand_quietly(tmp_path, args):
    """`fsm-init validate --json | head -1`: no traceback when the pipe's reader is gone."""
    path = tmp_path / "workcfg.json"
    path.write_text('{"workintvl": 5}')
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "fsm_init", *args, *([str(path)] if args[0] == "validate" else [])],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode == 1


@pytest.mark.parametrize("workstart", ["./run.sh a\u0000b", ["./run.sh", "a\u0000b"], ["./run.sh", "\ud800"]])
def test_a_workstart_no_program_could_receive_is_rejected_naming_the_key(workstart):
    effective, problems = config_schema.validate({"workstart": workstart})
    assert effective["workstart"] is None
    [problem] = problems
    assert problem.key == "workstart" and ("NUL" in problem.reason or "surrogate" in problem.reason)
    assert "\0" not in problem.describe()


def test_a_newline_in_a_workstart_argument_is_kept_for_the_program():
    effective, problems = config_schema.validate({"workstart": ["./run.sh", "a\nb"]})
    assert effective["workstart"] == ["./run.sh", "a\nb"] and problems == []


@pytest.mark.parametrize("key", ["sshsrv.rootpwd", "inetdail.dialuser", "inetdail.dialpswd", "inetdail.dialintf"])
@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\0b"])
def test_a_value_that_becomes_a_line_rejects_line_breaks_and_nul(key, bad):
    section, _, name = key.split(".")[0], None, key.split(".")[1]
    effective, problems = config_schema.validate({section: {name: bad}})
    assert effective[section][name] == "" and [p.key for p in problems] == [key]
    assert bad not in problems[0].describe()


def test_an_authkeys_entry_with_a_line_break_is_dropped_alone():
    good = "ssh-ed25519 AAAAC3Nza good"
    effective, problems = config_schema.validate({"sshsrv": {"authkeys": [good, "ssh-ed25519 AAA a\nssh-rsa BBB b",
                                                                   "ssh-rsa CCC\r"]}})
    assert effective["sshsrv"]["authkeys"] == [good, "ssh-rsa CCC"]
    [problem] = problems
    assert problem.key == "sshsrv.authkeys" and problem.dropped and "line break" in problem.reason
