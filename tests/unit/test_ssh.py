"""The ssh step (dropbear) on the recording FakeSystem: argv, files, modes, chpasswd's
input, the generated password logged once, and no secret on any argv, in any log
line, fingerprint, summary or environment."""

import json
import re

import pytest

from fsm_init.config import workcfg as config
from fsm_init.network import ssh
from fsm_init.core.system import INIT_NAMESPACE_INO, Unavailable

from .fakes import FakeSystem, Harness, make_settings

PASSWORD = "s3cr3t pass:word\"'"
STATE = "/var/lib/fsm-init/dropbear"
AUTHKEYS = "/root/.ssh/authorized_keys"
KEY1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne one@example"
KEY2 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQTwo two@example"


class Machine:
    """A FakeSystem with dropbear, dropbearkey and chpasswd installed."""

    def __init__(self, dropbear=True, sftp="/usr/lib/openssh/sftp-server", chpasswd_status=0, chpasswd_err=""):
        self.system = FakeSystem()
        self.chpasswd_inputs: list[bytes] = []
        self.hashes = 0
        fake = self.system
        if dropbear:
            fake.add_file("/usr/sbin/dropbear", b"\x7fELF...\0/usr/lib/sftp-server\0-s\0", 0o755)
        fake.add_file("/usr/bin/dropbearkey", b"", 0o755)
        fake.add_file("/usr/sbin/chpasswd", b"", 0o755)
        if sftp:
            fake.add_file(sftp, b"\x7fELF sftp-server", 0o755)
        fake.add_file("/etc/passwd", "daemon:x:1:1::/usr/sbin:/bin/false\nroot:x:0:0:root:/root:/bin/bash\n")
        fake.add_file("/etc/shadow", "root:*:20228:0:99999:7:::\ndaemon:*:1::::::\n", 0o640)
        fake.add_dir("/run/fsm-init")
        fake.commands["/usr/bin/dropbearkey"] = self.dropbearkey
        fake.commands["/usr/sbin/chpasswd"] = self.chpasswd
        self.chpasswd_status, self.chpasswd_err = chpasswd_status, chpasswd_err

    def dropbearkey(self, argv, stdin):
        kind, path = argv[argv.index("-t") + 1], argv[argv.index("-f") + 1]
        self.system.add_file(path, f"{kind} private key".encode(), 0o600)
        return 0, f"Public key portion is:\nssh-{kind} AAAA root@x\nFingerprint: SHA256:{kind}print\n", ""

    def chpasswd(self, argv, stdin):
        self.chpasswd_inputs.append(stdin)
        if self.chpasswd_status:
            return self.chpasswd_status, "", self.chpasswd_err
        self.hashes += 1
        shadow = self.system.files["/etc/shadow"].decode()
        self.system.files["/etc/shadow"] = re.sub(r"^root:[^:]*:", f"root:$y$hash{self.hashes}:", shadow, flags=re.M).encode()
        return 0, "", ""

    def spec(self, **values):
        section = dict(config.defaults()["sshsrv"], enable="yes", **values)
        return ssh.spec({"sshsrv": section}, self.system, make_settings())


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    monkeypatch.setattr(ssh, "said_once", set())


def every_argv(system) -> str:
    return "\n".join(" ".join(argv) for argv, _ in system.runs) + "\n".join(" ".join(s.argv) for s in system.spawns)


def test_not_installed_is_unavailable():
    with pytest.raises(Unavailable, match="dropbear is not installed"):
        Machine(dropbear=False).spec(rootpwd=PASSWORD)


def test_started_on_the_host_itself_it_leaves_roots_account_alone():
    m = Machine()
    m.system.namespaces["mnt"] = INIT_NAMESPACE_INO["mnt"]
    with pytest.raises(Unavailable, match="this is the host's own mount namespace"):
        m.spec(rootpwd=PASSWORD)
    assert m.chpasswd_inputs == [] and m.system.writes == []
    # the init of the whole machine may
    m.system.namespaces["pid"] = INIT_NAMESPACE_INO["pid"]
    m.spec(rootpwd=PASSWORD)
    assert m.chpasswd_inputs == [f"root:{PASSWORD}\n".encode()]


def test_on_a_host_an_older_kernel_cannot_name_the_initial_pid_namespace_tells():
    """Debian 12's kernel gives the initial mount namespace an ordinary inode number, but
    the initial PID namespace has a fixed one: a process in it other than PID 1 is on the host."""
    m = Machine()
    m.system.namespaces["pid"] = INIT_NAMESPACE_INO["pid"]
    m.system.pid = 4242
    with pytest.raises(Unavailable, match="leaves the host's root password and SSH keys alone"):
        m.spec(rootpwd=PASSWORD)
    assert m.chpasswd_inputs == [] and m.system.writes == []


def test_argv_host_keys_password_and_authorized_keys(capfd):
    m = Machine()
    spec = m.spec(sshport=2222, rootpwd=PASSWORD, authkeys=[KEY1, KEY2])
    keys = [f"{STATE}/dropbear_{kind}_host_key" for kind in ("ed25519", "ecdsa", "rsa")]
    assert spec.argv == ["/usr/sbin/dropbear", "-F", "-E", "-p", "2222", "-P", "/run/fsm-init/dropbear.pid",
                         "-I", "600", "-K", "30", "-r", keys[0], "-r", keys[1], "-r", keys[2]]
    assert spec.env == {"PATH": ssh.SEARCH_PATH}
    assert spec.summary == "port 2222, password logins on, 2 authorized key(s), sftp on"
    # host keys: made with dropbearkey beside their final name, then put in place, private
    generated = [argv for argv, _ in m.system.runs if argv[0] == "/usr/bin/dropbearkey"]
    assert generated == [["/usr/bin/dropbearkey", "-t", kind, "-f", f"{key}.new"]
                         for kind, key in zip(("ed25519", "ecdsa", "rsa"), keys)]
    assert all(m.system.modes[key] == 0o600 for key in keys)
    assert not any(path.endswith(".new") for path in m.system.files)
    # the password: chpasswd's stdin only
    assert m.chpasswd_inputs == [f"root:{PASSWORD}\n".encode()]
    assert ["/usr/sbin/chpasswd"] in [argv for argv, _ in m.system.runs]
    # authorized_keys: atomically written, 0600, in root's home from /etc/passwd
    assert m.system.files[AUTHKEYS] == ssh.AUTHKEYS_HEADER + f"{KEY1}\n{KEY2}\n".encode()
    assert m.system.modes[AUTHKEYS] == 0o600
    assert ("makedirs", "/root/.ssh") in m.system.calls and ("write_atomic", AUTHKEYS) in m.system.calls
    record = json.loads(m.system.files[f"{STATE}/rootpwd.json"])
    assert m.system.modes[f"{STATE}/rootpwd.json"] == 0o600 and record["source"] == "config"
    # no secret anywhere but chpasswd's stdin
    out, err = capfd.readouterr()
    for text in (every_argv(m.system), spec.fingerprint, spec.summary, json.dumps(spec.env), out, err,
                 m.system.files[f"{STATE}/rootpwd.json"].decode()):
        assert PASSWORD not in text
    assert "ssh: generated the ed25519 host key" in err and "SHA256:ed25519print" in err


def test_host_keys_are_generated_once():
    m = Machine()
    m.spec(rootpwd=PASSWORD)
    m.spec(rootpwd=PASSWORD)
    assert len([a for a, _ in m.system.runs if a[0] == "/usr/bin/dropbearkey"]) == 3


def test_dropbearkey_failure_is_unavailable():
    m = Machine()
    m.system.commands["/usr/bin/dropbearkey"] = (1, "", "cannot write")
    with pytest.raises(Unavailable, match="dropbearkey -t ed25519 failed .status 1.: cannot write"):
        m.spec(rootpwd=PASSWORD)


def test_the_configured_password_is_set_again_only_when_it_or_the_shadow_entry_changed():
    m = Machine()
    first = m.spec(rootpwd=PASSWORD)
    again = m.spec(rootpwd=PASSWORD)
    assert len(m.chpasswd_inputs) == 1 and again.fingerprint == first.fingerprint
    changed = m.spec(rootpwd=PASSWORD + "2")
    assert len(m.chpasswd_inputs) == 2 and changed.fingerprint != first.fingerprint
    # someone changed root's password by hand: the config's is put back
    m.system.files["/etc/shadow"] = b"root:$y$byhand:1::::::\n"
    m.spec(rootpwd=PASSWORD + "2")
    assert m.chpasswd_inputs[-1] == f"root:{PASSWORD}2\n".encode() and len(m.chpasswd_inputs) == 3


def test_a_random_password_is_generated_into_a_private_file_never_logged(capfd):
    m = Machine()
    first = m.spec()
    err = capfd.readouterr().err
    handed = f"{STATE}/root-password"
    generated = m.system.files[handed].decode().strip()
    assert len(generated) >= 16 and m.system.modes[handed] == 0o600
    assert generated not in err
    assert err.count(f"root's password is now a generated one, in {handed} (mode 0600, root only") == 1
    assert m.chpasswd_inputs == [f"root:{generated}\n".encode()]
    record = m.system.files[f"{STATE}/rootpwd.json"]
    assert m.system.modes[f"{STATE}/rootpwd.json"] == 0o600 and generated.encode() not in record
    assert generated not in first.fingerprint + first.summary + every_argv(m.system)
    # restarts: kept, not logged again, dropbear not restarted for it
    second = m.spec()
    third = m.spec()
    err = capfd.readouterr().err
    assert "password is now" not in err and generated not in err
    assert len(m.chpasswd_inputs) == 1 and first.fingerprint == second.fingerprint == third.fingerprint
    # a new container layer (the shadow entry is not the one recorded): a new password, logged once
    m.system.files["/etc/shadow"] = b"root:*:20228:0:99999:7:::\n"
    fourth = m.spec()
    err = capfd.readouterr().err
    assert err.count("password is now") == 1 and generated not in err
    assert m.system.files[handed].decode().strip() not in err
    assert len(m.chpasswd_inputs) == 2 and fourth.fingerprint != first.fingerprint
    # the operator's own password: the generated one's file goes
    m.spec(rootpwd=PASSWORD)
    assert handed not in m.system.files


def test_keys_and_no_root_password_mean_no_password_logins_and_none_generated(capfd):
    m = Machine()
    spec = m.spec(authkeys=KEY1)
    assert spec.argv[-1] == "-s" and "password logins off" in spec.summary
    assert m.chpasswd_inputs == [] and f"{STATE}/root-password" not in m.system.files
    assert "password is now" not in capfd.readouterr().err
    # with the operator's password as well, password logins stay on
    spec = m.spec(authkeys=KEY1, rootpwd=PASSWORD)
    assert "-s" not in spec.argv and m.chpasswd_inputs == [f"root:{PASSWORD}\n".encode()]


def test_password_logins_off_adds_s_and_generates_no_password(capfd):
    m = Machine()
    spec = m.spec(password="no", authkeys=KEY1)
    assert spec.argv[-1] == "-s" and "password logins off" in spec.summary
    assert m.chpasswd_inputs == [] and "password is now" not in capfd.readouterr().err
    # a configured password is still set (for the console, su), logins stay key-only
    spec = m.spec(password="no", rootpwd=PASSWORD)
    assert spec.argv[-1] == "-s" and m.chpasswd_inputs == [f"root:{PASSWORD}\n".encode()]


@pytest.mark.parametrize("change", [{"sshport": 2223}, {"rootpwd": PASSWORD + "x"}, {"authkeys": [KEY2]},
                                    {"password": "no"}])
def test_the_fingerprint_changes_with_each_setting(change):
    m = Machine()
    base = {"sshport": 2222, "rootpwd": PASSWORD, "authkeys": [KEY1], "password": "yes"}
    before = m.spec(**base)
    after = m.spec(**{**base, **change})
    assert before.fingerprint != after.fingerprint
    assert m.spec(**base).fingerprint == before.fingerprint


def test_chpasswd_failure_is_unavailable_without_the_password():
    m = Machine(chpasswd_status=1, chpasswd_err=f"chpasswd: line 1: cannot set {PASSWORD}\n")
    with pytest.raises(Unavailable) as caught:
        m.spec(rootpwd=PASSWORD)
    assert "chpasswd could not set root's password (status 1)" in str(caught.value)
    assert PASSWORD not in str(caught.value) and "********" in str(caught.value)


def test_a_password_with_a_line_break_is_refused_before_chpasswd():
    m = Machine()
    with pytest.raises(Unavailable, match="line break"):
        m.spec(rootpwd="one\nroot2:two")
    assert m.chpasswd_inputs == []


def test_chpasswd_missing_is_unavailable():
    m = Machine()
    del m.system.files["/usr/sbin/chpasswd"]
    with pytest.raises(Unavailable, match="chpasswd is not installed"):
        m.spec(rootpwd=PASSWORD)


def test_authorized_keys_removed_when_emptied_but_an_operators_own_file_is_left_alone():
    m = Machine()
    m.spec(rootpwd=PASSWORD, authkeys=[KEY1])
    m.spec(rootpwd=PASSWORD, authkeys=[])
    assert AUTHKEYS not in m.system.files
    m.system.add_file(AUTHKEYS, f"{KEY2}\n", 0o600)
    m.spec(rootpwd=PASSWORD, authkeys=[])
    assert m.system.files[AUTHKEYS] == f"{KEY2}\n".encode()


def test_root_home_comes_from_etc_passwd():
    m = Machine()
    m.system.files["/etc/passwd"] = b"root:x:0:0:root:/home/admin:/bin/sh\n"
    m.spec(rootpwd=PASSWORD, authkeys=[KEY1])
    assert "/home/admin/.ssh/authorized_keys" in m.system.files


def test_sftp_server_is_copied_where_dropbear_looks_for_it(capfd):
    m = Machine(sftp="/usr/libexec/openssh/sftp-server")
    assert m.spec(rootpwd=PASSWORD).summary.endswith("sftp on")
    assert m.system.files["/usr/lib/sftp-server"] == b"\x7fELF sftp-server"
    assert m.system.modes["/usr/lib/sftp-server"] == 0o755
    assert "installed a copy of /usr/libexec/openssh/sftp-server there" in capfd.readouterr().err


def test_without_an_sftp_server_sftp_is_off_and_said_once(capfd):
    m = Machine(sftp=None)
    assert m.spec(rootpwd=PASSWORD).summary.endswith("sftp off")
    m.spec(rootpwd=PASSWORD)
    assert capfd.readouterr().err.count("no sftp-server installed") == 1


def test_an_unwritable_state_dir_is_unavailable_not_an_internal_error():
    m = Machine()
    m.system.fail("write_atomic", PermissionError(13, "Permission denied", f"{STATE}/dropbear_ed25519_host_key"))
    with pytest.raises(Unavailable, match=r"cannot prepare dropbear \(.*host_key\): Permission denied"):
        m.spec(rootpwd=PASSWORD)


# -- through the engine: started before the service, restarted only when changed --------------------


def engine_with(m: Machine, **values) -> Harness:
    m.system.add_dir("/srv/app")
    m.system.add_file("/srv/app/workcfg.json", json.dumps(
        {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "firewall": {"enable": "no"},
         "sshsrv": {"enable": "yes", **values}}))
    m.system.add_script("/srv/app/run.sh")
    return Harness(m.system, environ={"SRVNAME": "app"})


def test_engine_starts_dropbear_before_the_service_and_restarts_it_only_on_change():
    m = Machine()
    h = engine_with(m, rootpwd=PASSWORD, sshport=2222)
    try:
        h.begin()
        argvs = [s.argv for s in m.system.spawns]
        assert argvs[0][:5] == ["/usr/sbin/dropbear", "-F", "-E", "-p", "2222"] and argvs[1] == ["./run.sh"]
        dropbear = m.system.spawns[0].pid
        assert h.engine.explain.snapshot()["supporting"]["ssh"].startswith(f"running, pid {dropbear}")
        h.request("restart")
        h.advance(10)
        assert [s.argv[0] for s in m.system.spawns].count("/usr/sbin/dropbear") == 1
        m.system.files["/srv/app/workcfg.json"] = json.dumps(
            {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "firewall": {"enable": "no"},
             "sshsrv": {"enable": "yes", "rootpwd": PASSWORD, "sshport": 2223}}).encode()
        h.request("restart")
        h.advance(10)
        assert m.system.signals_to(dropbear)  # TERM'd for the new port
        started = [s.argv for s in m.system.spawns if s.argv[0] == "/usr/sbin/dropbear"]
        assert len(started) == 2 and started[1][4] == "2223"
    finally:
        h.close()
