"""The trust rule (sshd's StrictModes) and the secrets of a config file, on the fake system."""

import errno
import json

import pytest

from fsm_init.config import schema as config_schema, workcfg as config
from fsm_init.core import trust
from fsm_init.steps.load_config import ConfigSource
from fsm_init.steps.resolve_target import Target
from tests.unit.fakes import FakeSystem
from tests.unit.test_machine import SRV, cfg, make  # noqa: F401  (the fixture)

NOBODY = 65534


@pytest.fixture(autouse=True)
def fresh_reports():
    trust.forget()
    yield
    trust.forget()


def test_root_owned_and_not_writable_by_others_is_trusted():
    fake = FakeSystem()
    fake.add_script(f"{SRV}/run.sh")
    assert trust.problem(f"{SRV}/run.sh", fake) == ""


@pytest.mark.parametrize("where", [SRV, f"{SRV}/run.sh", "/srv"])
def test_a_component_owned_by_another_user_is_named_with_the_fix(where):
    fake = FakeSystem()
    fake.add_script(f"{SRV}/run.sh")
    fake.owners[where] = NOBODY
    assert trust.problem(f"{SRV}/run.sh", fake) == \
        f"{where} is owned by uid {NOBODY}, not root (fix: chown root {where})"


def test_group_or_other_write_is_refused_unless_a_sticky_directory():
    fake = FakeSystem()
    fake.add_script(f"{SRV}/run.sh", mode=0o775)
    assert "fix: chmod go-w /srv/app/run.sh" in trust.problem(f"{SRV}/run.sh", fake)
    assert "writable by its group (mode 0775" in trust.problem(f"{SRV}/run.sh", fake)
    fake.modes[f"{SRV}/run.sh"] = 0o755
    fake.dir_modes["/srv"] = 0o777
    assert "/srv is writable by its group and others (mode 0777" in trust.problem(f"{SRV}/run.sh", fake)
    fake.dir_modes["/srv"] = 0o1777  # as /tmp: nobody else may rename or remove root's entry
    assert trust.problem(f"{SRV}/run.sh", fake) == ""


def test_a_missing_file_is_refused_where_another_user_could_create_it():
    # Not there at the check, there at the read or exec: the directories above decide.
    fake = FakeSystem()
    fake.add_dir(SRV)
    assert trust.problem(f"{SRV}/run.sh", fake) == ""
    fake.owners[SRV] = NOBODY
    assert trust.problem(f"{SRV}/run.sh", fake) == \
        f"{SRV} is owned by uid {NOBODY}, not root (fix: chown root {SRV})"
    fake.owners[SRV] = 0
    fake.dir_modes[SRV] = 0o1777  # sticky: it protects an entry that is there, not a missing one
    assert trust.problem(f"{SRV}/run.sh", fake) == (
        f"{SRV} is writable by its group and others (mode 1777, and {SRV}/run.sh is not there: another "
        f"user could create it; fix: chmod go-w {SRV})")
    fake.add_script(f"{SRV}/run.sh")
    assert trust.problem(f"{SRV}/run.sh", fake) == ""


class _AppearsAfterTheCheck(FakeSystem):
    """workcfg.json created by the workuser between fsm-init's lstat and its read."""

    def owner_mode(self, path):
        return None if path.endswith("/workcfg.json") else super().owner_mode(path)


def test_a_config_file_that_appears_after_the_check_in_a_workusers_directory_is_not_read(capfd):
    fake = _AppearsAfterTheCheck()
    fake.add_file(f"{SRV}/workcfg.json", json.dumps({"workstart": "./run.sh", "workintvl": 9}))
    fake.owners[SRV] = NOBODY
    loaded = _source(fake).load()
    assert loaded.config["workstart"] is None and loaded.config["workintvl"] != 9
    assert ("read_bytes", f"{SRV}/workcfg.json") not in fake.calls
    assert (f"refusing to take fsm-init's configuration from {SRV}/workcfg.json: another user could change it: "
            f"{SRV} is owned by uid {NOBODY}") in capfd.readouterr().err


def test_not_root_fsm_inits_own_uid_is_trusted_and_others_are_not():
    fake = FakeSystem()
    fake.uid = 1000
    fake.add_script(f"{SRV}/run.sh")
    fake.owners[f"{SRV}/run.sh"] = 1000
    assert trust.problem(f"{SRV}/run.sh", fake) == ""
    fake.owners[SRV] = 1001
    assert trust.problem(f"{SRV}/run.sh", fake) == \
        f"{SRV} is owned by uid 1001, not root or uid 1000 (fix: chown root {SRV} (or chown 1000))"


def test_a_refusal_is_logged_once(capfd):
    fake = FakeSystem()
    fake.add_script(f"{SRV}/run.sh")
    fake.owners[SRV] = NOBODY
    for _ in range(3):
        assert not trust.trusted(f"{SRV}/run.sh", fake, "run")
    err = capfd.readouterr().err
    assert err.count(f"refusing to run {SRV}/run.sh: another user could change it: {SRV} is owned by uid") == 1


def _source(fake: FakeSystem) -> ConfigSource:
    return ConfigSource(Target("app", SRV, False, False), "", fake)


def test_a_config_file_with_a_secret_is_made_private_once(capfd):
    fake = FakeSystem()
    fake.add_file(f"{SRV}/workcfg.json", json.dumps({"sshsrv": {"rootpwd": "s3cret"}}), mode=0o644)
    source = _source(fake)
    assert source.load().config["sshsrv"]["rootpwd"] == "s3cret"
    assert fake.modes[f"{SRV}/workcfg.json"] == 0o600 and fake.owners[f"{SRV}/workcfg.json"] == 0
    source.load()
    err = capfd.readouterr().err
    assert err.count("workcfg.json holds sshsrv.rootpwd: made it mode 0600, owner root (was 0644") == 1
    assert "s3cret" not in err


def test_a_secret_that_cannot_be_made_private_is_refused(capfd):
    fake = FakeSystem()
    fake.add_file(f"{SRV}/workcfg.json", json.dumps({"workintvl": 7, "inetdail": {"dialpswd": "pppw"}}))
    fake.fail("make_private", OSError(errno.EROFS, "Read-only file system"))
    loaded = _source(fake).load()
    assert loaded.config["inetdail"]["dialpswd"] == "" and loaded.config["workintvl"] == 7
    err = capfd.readouterr().err
    assert "(Read-only file system): it holds inetdail.dialpswd, which other users can read; " \
           "inetdail.dialpswd refused" in err and "pppw" not in err


def test_a_config_file_another_user_could_change_is_refused_and_the_one_read_before_kept(capfd):
    fake = FakeSystem()
    fake.add_file(f"{SRV}/workcfg.json", json.dumps({"workuser": "nobody", "workstart": "./run.sh"}))
    source = _source(fake)
    assert source.load().config["workuser"] == "nobody"
    fake.files[f"{SRV}/workcfg.json"] = json.dumps({"workstart": "./run.sh"}).encode()
    fake.owners[f"{SRV}/workcfg.json"] = NOBODY  # replaced by the workuser
    assert source.load().config["workuser"] == "nobody"
    fresh = _source(fake).load()  # nothing read before: the defaults, no workstart
    assert fresh.config["workstart"] is None
    assert "refusing to take fsm-init's configuration from /srv/app/workcfg.json" in capfd.readouterr().err


def test_srvcfg_is_kept_in_memory_when_the_target_directory_is_not_trusted():
    fake = FakeSystem()
    fake.add_dir(SRV)
    fake.owners[SRV] = NOBODY
    source = ConfigSource(Target("app", SRV, True, False), '{"workintvl": 9}', fake)
    loaded = source.load()
    assert loaded.config["workintvl"] == 9 and f"{SRV}/workcfg.json" not in fake.files
    assert source.load().config["workintvl"] == 9
    assert "is not written to /srv/app/workcfg.json" in loaded.errors[0]


def test_a_refused_check_fails_its_cycle_and_a_refused_env_resume_is_not_run(make, capfd):
    h = make(cfg(workwatch=30, workintvl=5), scripts=("run.sh", "EnvResume-a", "PeriodicST-a"))
    h.system.owners[f"{SRV}/EnvResume-a"] = NOBODY
    h.system.owners[f"{SRV}/PeriodicST-a"] = NOBODY
    h.begin()
    h.advance(5)
    ran = [s.argv for s in h.system.spawns]
    assert [f"{SRV}/EnvResume-a"] not in ran and [f"{SRV}/PeriodicST-a"] not in ran
    assert h.engine.service.last_checks[0].exit == 126 and h.state in ("restart", "restart_interval")
    assert capfd.readouterr().err.count(f"refusing to run {SRV}/PeriodicST-a") == 1


def test_a_workstart_root_would_run_that_another_user_could_change_is_not_run(make, capfd):
    h = make(cfg(workwatch=0))
    h.system.owners[f"{SRV}/run.sh"] = NOBODY
    h.begin()
    assert h.system.spawns[-1].argv == ["DoNothing", "600"]
    assert "refusing to run /srv/app/./run.sh" in capfd.readouterr().err
    # as a workuser, the file is the workuser's business
    h2 = make(cfg(workwatch=0, workuser="root"), name="other")
    h2.system.add_script("/srv/other/run.sh")
    h2.system.owners["/srv/other/run.sh"] = NOBODY
    h2.begin()
    assert h2.system.spawns[-1].argv[-1] == "./run.sh"


def test_the_masked_config_and_secret_removal():
    doc = {"sshsrv": {"rootpwd": "x", "enable": "yes"}, "inetdail": {"dialpswd": ""}}
    assert config.secrets_in(doc) == ["sshsrv.rootpwd"]
    assert config.without_secrets(doc) == {"sshsrv": {"enable": "yes"}, "inetdail": {"dialpswd": ""}}


def test_a_secret_inside_a_malformed_section_never_reaches_the_log(make, capfd):
    # "sshsrv" an array around the password: the section's problem line must not show it.
    h = make(cfg(workwatch=0, sshsrv=[{"rootpwd": "S3cret-pw"}], inetdail={"dialpswd": ["pp-secret"]}))
    h.begin()
    err = capfd.readouterr().err
    assert "config key 'sshsrv' = ********: is not a JSON object" in err
    assert "S3cret" not in err and "pp-secret" not in err
    problems = config_schema.validate({"sshsrv": [{"rootpwd": "S3cret-pw"}]})[1]
    assert "S3cret" not in json.dumps([p.as_dict() for p in problems])
    # a section that holds no secret is shown as it is
    assert "config key 'firewall' = [1]: is not a JSON object" in config_schema.validate({"firewall": [1]})[1][0].describe()
