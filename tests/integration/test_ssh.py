"""The ssh step for real: dropbear started by fsm-init as PID 1, real logins.

fsm-init runs in a "container" (``tests/integration/nsbox.py``): its own network
namespace (the logins go to 127.0.0.1 there, nowhere else) and a private mount
namespace where /etc is an overlay and /root a tmpfs, so chpasswd and authorized_keys
never reach the machine's root account; each test checks that the machine's
/etc/shadow is unchanged afterwards.  Every wait has a deadline.
"""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import needs_pid_namespace, wait_for
from tests.integration.nsbox import host_file_digest, in_namespaces_of, launcher, netns, sh  # noqa: F401

TOOLS = ("dropbear", "dropbearkey", "ssh", "sshpass", "sftp", "ip", "nsenter", "chpasswd", "ssh-keygen")
pytestmark = [needs_pid_namespace,
              pytest.mark.skipif(any(shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
                                     for t in TOOLS), reason=f"needs {', '.join(TOOLS)}")]

PASSWORD = "Pw-0f-the:test \"root\" #1"
HOLD = "while :; do sleep 1; done\n"


def workcfg(**ssh) -> dict:
    return {"initdelay": 0, "workstart": "./run.sh", "workwatch": 1, "workintvl": 1,
            "firewall": {"enable": "no"}, "sshsrv": {"enable": "yes", **ssh}}


@pytest.fixture(scope="module")
def client_key(tmp_path_factory) -> Path:
    key = tmp_path_factory.mktemp("client") / "id_ed25519"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fsm-init-test", "-f", key)
    return key


@pytest.fixture(scope="module")
def host_keys(tmp_path_factory) -> Path:
    """Host keys made once (dropbearkey's RSA key takes a second): later tests start with them."""
    directory = tmp_path_factory.mktemp("hostkeys")
    for kind in ("ed25519", "ecdsa", "rsa"):
        sh("dropbearkey", "-t", kind, "-f", directory / f"dropbear_{kind}_host_key")
    return directory


@pytest.fixture
def shadow_guard():
    """The machine's root account must come out of every test untouched."""
    before = {p: host_file_digest(p) for p in ("/etc/shadow", "/etc/passwd", "/root/.ssh/authorized_keys")}
    yield
    after = {p: host_file_digest(p) for p in before}
    assert after == before, "a test changed the machine's root account"


def start(sandbox, ns, cfg, keys: Path | None = None):
    sandbox.service("app", cfg, run__sh=HOLD)
    if keys:
        shutil.copytree(keys, sandbox.state_dir / "dropbear")
    return sandbox.start(launcher=launcher(sandbox, ns), SRVNAME="app")


def ssh(ns, port, password=None, key=None, command="echo ok", timeout=20) -> subprocess.CompletedProcess:
    argv = ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "-p", str(port)]
    env = dict(os.environ)
    if password is not None:
        # sshpass -e: the password comes from the environment, not this test's own command line.
        env["SSHPASS"] = password
        argv = ["sshpass", "-e", *argv, "-o", "PreferredAuthentications=password,keyboard-interactive",
                "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"]
    else:
        argv += ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "PreferredAuthentications=publickey",
                 "-o", "BatchMode=yes"]
    return ns.run(*argv, "root@127.0.0.1", command, check=False, env=env, timeout=timeout)


def dropbear_pid(run) -> int | None:
    """dropbear's pid (in fsm-init's namespace) as srvctl status reports it."""
    text = run.status()["supporting"].get("ssh", "")
    found = re.match(r"running, pid (\d+)", text)
    return int(found.group(1)) if found else None


def wait_login(ns, port, **how) -> subprocess.CompletedProcess:
    def attempt():
        result = ssh(ns, port, **how)
        return result if result.returncode == 0 else None
    return wait_for(attempt, 20, f"a login on port {port}", interval=0.2)


def wait_restarted(run, runs: int) -> dict:
    def done():
        status = run.status()
        return status if status["run_count"] >= runs and status["state"] in ("watch", "check", "restart_interval") \
            and status["supporting"].get("ssh", "").startswith(("running", "disabled")) or \
            status["run_count"] >= runs and "ssh" not in status["supporting"] else None
    return wait_for(done, 20, f"run {runs}\n--- log:\n{run.log}")


def restart_with(run, directory: Path, cfg: dict) -> dict:
    runs = run.status()["run_count"] + 1
    (directory / "workcfg.json").write_text(json.dumps(cfg))
    assert run.srvctl("restart").returncode == 0
    return wait_restarted(run, runs)


def host_pids(run, comm: str) -> list[int]:
    found = []
    for pid in run.namespace_pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                found.append(pid)
        except OSError:
            pass
    return found


def secret_on_any_command_line(secret: str) -> list[str]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if secret.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    found.append(name)
            except OSError:
                pass
    return found


def test_logins_with_password_and_key_and_sftp_and_no_secret_anywhere(sandbox, netns, client_key, shadow_guard):
    ns = netns()
    pubkey = client_key.with_suffix(".pub").read_text().strip()
    run = start(sandbox, ns, workcfg(sshport=2200, rootpwd=PASSWORD, authkeys=[pubkey]))
    assert wait_login(ns, 2200, password=PASSWORD).stdout.strip() == "ok"
    assert ssh(ns, 2200, key=client_key, command="id -u").stdout.strip() == "0"
    wrong = ssh(ns, 2200, password=PASSWORD + "x")
    assert wrong.returncode != 0 and "Permission denied" in wrong.stderr, wrong
    # sftp over dropbear (its compiled-in sftp-server path)
    batch = sandbox.root / "sftp.batch"
    batch.write_text("put /etc/hostname /root/fsm-sftp-probe\nls -l /root/fsm-sftp-probe\nrm /root/fsm-sftp-probe\n")  # /root: a tmpfs
    sftp = ns.run("sftp", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                  "-o", "IdentitiesOnly=yes", "-i", client_key, "-P", "2200", "-b", batch, "root@127.0.0.1",
                  check=False)
    assert sftp.returncode == 0 and "fsm-sftp-probe" in sftp.stdout, sftp
    # host keys: generated on this first start, kept in the state dir, private
    log = run.log
    for kind in ("ed25519", "ecdsa", "rsa"):
        key = sandbox.state_dir / "dropbear" / f"dropbear_{kind}_host_key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert f"generated the {kind} host key {key}" in log
    # root's account inside the container: set, and authorized_keys private
    inside = in_namespaces_of(run.pid1, "sh", "-c", "grep ^root: /etc/shadow; stat -c '%a %n' /root/.ssh "
                              "/root/.ssh/authorized_keys; cat /root/.ssh/authorized_keys").stdout
    assert re.search(r"^root:\$", inside, re.M), inside
    assert "700 /root/.ssh\n" in inside and "600 /root/.ssh/authorized_keys\n" in inside
    assert pubkey in inside
    record = sandbox.state_dir / "dropbear" / "rootpwd.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    # the password: on no command line, in no log, in no status, not in dropbear's environment
    assert secret_on_any_command_line(PASSWORD) == []
    assert PASSWORD not in log and PASSWORD not in run.output
    assert PASSWORD not in record.read_text()
    status = run.srvctl("status", "--json").stdout
    assert PASSWORD not in status and "port 2200, password logins on, 1 authorized key(s), sftp on" in status
    [dropbear] = host_pids(run, "dropbear")
    assert PASSWORD.encode() not in Path(f"/proc/{dropbear}/environ").read_bytes()
    argv = Path(f"/proc/{dropbear}/cmdline").read_bytes().split(b"\0")
    assert argv[1:5] == [b"-F", b"-E", b"-p", b"2200"] and b"-s" not in argv


def test_generated_password_is_in_a_root_only_file_never_in_the_log_and_password_logins_can_be_turned_off(
        sandbox, netns, client_key, host_keys, shadow_guard):
    ns = netns()
    run = start(sandbox, ns, workcfg(), keys=host_keys)
    run.wait_log("root's password is now a generated one")
    handed = sandbox.state_dir / "dropbear" / "root-password"
    generated = handed.read_text().strip()
    assert len(generated) >= 16 and stat.S_IMODE(handed.stat().st_mode) == 0o600 and handed.stat().st_uid == 0
    assert generated not in run.log and generated not in run.output
    assert wait_login(ns, 8022, password=generated).stdout.strip() == "ok"
    pid = dropbear_pid(run)
    # the same settings: dropbear is left running and no new password is made
    d = sandbox.srv / "app"
    restart_with(run, d, workcfg())
    assert dropbear_pid(run) == pid
    assert run.log.count("password is now") == 1
    assert ssh(ns, 8022, password=generated).returncode == 0
    # password logins off, a key instead: dropbear restarts with -s
    pubkey = client_key.with_suffix(".pub").read_text().strip()
    restart_with(run, d, workcfg(password="no", authkeys=pubkey))
    wait_for(lambda: dropbear_pid(run) not in (None, pid), 10, "dropbear restarted")
    assert wait_login(ns, 8022, key=client_key).stdout.strip() == "ok"
    refused = ssh(ns, 8022, password=generated)
    assert refused.returncode != 0 and "Permission denied (publickey)" in refused.stderr, refused
    assert "password logins off" in run.status()["supporting"]["ssh"]
    assert run.log.count("password is now") == 1 and generated not in run.log
    assert secret_on_any_command_line(generated) == []


def test_port_change_keepalive_and_disable(sandbox, netns, client_key, host_keys, shadow_guard):
    ns = netns()
    pubkey = client_key.with_suffix(".pub").read_text().strip()
    run = start(sandbox, ns, workcfg(sshport=2201, password="no", authkeys=[pubkey]), keys=host_keys)
    wait_login(ns, 2201, key=client_key)
    assert "generated the" not in run.log  # the kept host keys are used
    first = dropbear_pid(run)
    d = sandbox.srv / "app"
    # a new port: dropbear is restarted on it and the old port is closed
    restart_with(run, d, workcfg(sshport=2202, password="no", authkeys=[pubkey]))
    wait_login(ns, 2202, key=client_key)
    second = dropbear_pid(run)
    assert second != first
    assert ssh(ns, 2201, key=client_key).returncode == 255  # connection refused
    # killed: started again by the next status-check cycle (workwatch 1)
    [host_pid] = host_pids(run, "dropbear")
    os.kill(host_pid, signal.SIGKILL)
    run.wait_log("ssh is not running: starting it again", timeout=10)
    third = wait_for(lambda: dropbear_pid(run) not in (None, second) and dropbear_pid(run), 10, "dropbear back")
    assert wait_login(ns, 2202, key=client_key).returncode == 0
    assert third != second
    # disabled: stopped
    restart_with(run, d, dict(workcfg(), sshsrv={"enable": "no"}))
    wait_for(lambda: host_pids(run, "dropbear") == [], 10, "dropbear stopped")
    assert "ssh" not in run.status()["supporting"]
    assert ssh(ns, 2202, key=client_key).returncode == 255
    run.signal(signal.SIGTERM)
    run.wait()
