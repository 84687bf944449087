"""An untrusted service cannot take over PID 1 (issue 11): fsm-init as PID 1 of a fresh
namespace, the attacker's steps done by a real service script running as the workuser
(``nobody``); SSH logins against a real dropbear on the loopback of a network namespace
the test made (``tests/integration/nsbox.py``).  Every wait has a deadline.
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

from tests.conftest import FSM_INIT, NOBODY, ROOT, needs_nobody, needs_pid_namespace, wait_for, wait_lines
from tests.integration.nsbox import in_namespaces_of, launcher, netns  # noqa: F401  (netns: a fixture)

pytestmark = [needs_pid_namespace, needs_nobody]

PASSWORD = "Root-pw-0f-the-test"
PY = "/usr/bin/python3"  # the workuser cannot reach a python under /root (pyenv)
SSH_TOOLS = ("dropbear", "dropbearkey", "ssh", "sshpass", "nc", "ssh-keygen", "iptables-save")
needs_ssh = pytest.mark.skipif(any(shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
                                   for t in SSH_TOOLS), reason=f"needs {', '.join(SSH_TOOLS)}")


def supervised(**values) -> dict:
    return {"initdelay": 0, "workstart": "./start.sh", "workwatch": 0, "workintvl": 1,
            "workuser": "nobody", "firewall": {"enable": "no"}, **values}


def nobody_owns(path: Path) -> None:
    os.chown(path, NOBODY[0], NOBODY[1])


# -- 1. the workuser becomes root through the target directory ---------------------------------


def test_a_workuser_owning_the_target_directory_never_gets_root_to_run_its_files(workuser_sandbox):
    sandbox, out = workuser_sandbox
    # The service, as nobody, drops workuser from workcfg.json, plants an EnvResume-*, and
    # exits to force a restart: without the rule root re-reads the file and runs start.sh.
    attack = f"""#!/bin/sh
id -u >> {out}/start-uids
printf '{{"initdelay": 0, "workstart": "./start.sh", "workwatch": 0, "workintvl": 1}}' > .new && mv -f .new workcfg.json
printf '#!/bin/sh\\nid -u > {out}/pwned\\n' > EnvResume-pwn && chmod 755 EnvResume-pwn
exit 1
"""
    directory = sandbox.service("app", supervised(), start__sh=attack)
    nobody_owns(directory)
    run = sandbox.start(SRVNAME="app")
    refusal = (f"refusing to take fsm-init's configuration from {directory}/workcfg.json: another user could "
               f"change it: {directory} is owned by uid {NOBODY[0]}, not root (fix: chown root {directory})")
    run.wait_log(re.escape(refusal))
    run.wait_state("idle")
    # nothing of the directory ran: not the service, not as root
    assert not (out / "start-uids").exists() and not (out / "pwned").exists()
    # a second reading of the config says it no more
    assert run.srvctl("restart").returncode == 0
    run.wait_log("no workstart configured", count=2)
    assert run.log.count(refusal) == 1
    run.signal(signal.SIGTERM)
    assert run.wait() == 143  # stopped in the idle wait: no service ever ran


def test_an_env_resume_the_workuser_may_rewrite_is_never_run_by_root(workuser_sandbox):
    sandbox, out = workuser_sandbox
    rewrite = f"""#!/bin/sh
id -u >> {out}/start-uids
printf '#!/bin/sh\\nid -u > {out}/pwned\\n' > ./EnvResume-setup && echo rewrote > {out}/attack
exec sleep 1000
"""
    directory = sandbox.service("app", supervised(), start__sh=rewrite,
                                EnvResume_setup=f"#!/bin/sh\nid -u >> {out}/envresume-uids\n")
    nobody_owns(directory / "EnvResume-setup")  # an application's Dockerfile chowned it
    refusal = (f"refusing to run {directory}/EnvResume-setup: another user could change it: "
               f"{directory}/EnvResume-setup is owned by uid {NOBODY[0]}, not root "
               f"(fix: chown root {directory}/EnvResume-setup)")
    first = sandbox.start(SRVNAME="app")
    wait_for(lambda: (out / "attack").exists(), what=f"the service's attack\n--- log:\n{first.log}")
    assert refusal in first.log
    first.signal(signal.SIGTERM)
    first.wait()
    # the next container start: root must not run what the workuser wrote
    second = sandbox.start(SRVNAME="app")
    assert wait_lines(out / "start-uids", 2) == [str(NOBODY[0])] * 2
    assert refusal in second.log
    assert not (out / "pwned").exists() and not (out / "envresume-uids").exists()
    second.signal(signal.SIGTERM)
    second.wait()


def test_an_init_sh_the_workuser_plants_is_never_execd_by_root(workuser_sandbox):
    # A service directory the workuser owns, the config given in $SRVCFG (kept in memory):
    # the service plants ./init.sh, which root would exec at the next container start.
    sandbox, out = workuser_sandbox
    plant = f"""#!/bin/sh
id -u >> {out}/start-uids
printf '#!/bin/sh\\nid -u > {out}/pwned\\nexec sleep 1000\\n' > init.sh && chmod 755 init.sh && echo planted > {out}/attack
exec sleep 1000
"""
    directory = sandbox.service("app", None, start__sh=plant)
    nobody_owns(directory)
    srvcfg = json.dumps(supervised())
    first = sandbox.start(SRVNAME="app", SRVCFG=srvcfg)
    wait_for(lambda: (out / "attack").exists(), what=f"the service's attack\n--- log:\n{first.log}")
    assert wait_lines(out / "start-uids", 1) == [str(NOBODY[0])]
    first.signal(signal.SIGTERM)
    first.wait()
    second = sandbox.start(SRVNAME="app", SRVCFG=srvcfg)
    second.wait_log(re.escape(f"refusing to exec {directory}/init.sh: another user could change it: "
                              f"{directory}/init.sh is owned by uid {NOBODY[0]}, not root"))
    second.wait_state("idle")  # fsm-init's own steps went on; the directory's config is refused too
    assert not (out / "pwned").exists()
    second.signal(signal.SIGTERM)
    second.wait()


def test_a_state_directory_the_workuser_owns_gets_nothing_of_roots(workuser_sandbox):
    # Root's SSH host keys, its password record and the first-start marker live there: a
    # state directory the workuser owns (a volume, a chown -R of /var/lib) is not used.
    sandbox, out = workuser_sandbox
    sandbox.state_dir.mkdir()
    nobody_owns(sandbox.state_dir)
    look = f"#!/bin/sh\nls -A {sandbox.state_dir} > {out}/seen\nexec sleep 1000\n"
    sandbox.service("app", supervised(), start__sh=look)
    run = sandbox.start(SRVNAME="app")
    run.wait_log(re.escape(f"refusing the state directory {sandbox.state_dir}: another user could change it: "
                           f"{sandbox.state_dir} is owned by uid {NOBODY[0]}, not root"))
    wait_for(lambda: (out / "seen").exists(), what=f"the service\n--- log:\n{run.log}")
    assert (out / "seen").read_text() == "" and os.listdir(sandbox.state_dir) == []
    assert (sandbox.run_dir / "state" / "target").read_text() == "app\n"
    run.signal(signal.SIGTERM)
    run.wait()


# -- 10, 11. bad input ---------------------------------------------------------------------------


def test_a_nul_in_a_workstart_argument_is_rejected_by_validate_and_at_start(workuser_sandbox):
    sandbox, out = workuser_sandbox
    config = {"initdelay": 0, "workstart": ["./start.sh", "a\u0000b"], "workwatch": 0}
    directory = sandbox.service("app", config, start__sh=f"#!/bin/sh\ntouch {out}/started\nexec sleep 1000\n")
    validate = subprocess.run([*FSM_INIT, "validate", str(directory / "workcfg.json")], capture_output=True,
                              text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=30)
    assert validate.returncode == 1, validate
    assert "problem: config key 'workstart' = [\"./start.sh\", \"a\\u0000b\"]: contains a NUL byte" in validate.stderr
    run = sandbox.start(SRVNAME="app")
    run.wait_log("config key 'workstart'.*contains a NUL byte")
    run.wait_state("idle")
    assert "internal error" not in run.log and not (out / "started").exists()
    run.signal(signal.SIGTERM)
    assert run.wait() == 143  # stopped in the idle wait: no service ever ran


def test_an_internal_error_never_exits_0(workuser_sandbox, tmp_path):
    """A fault injected into the real PID 1 (a sitecustomize that makes the service's spawn
    raise as "embedded null byte" did): the stop path runs, and the status is 70."""
    sandbox, _ = workuser_sandbox
    (tmp_path / "sitecustomize.py").write_text(
        "import fsm_init.core.system as s\n"
        "_spawn = s.System.spawn\n"
        "def spawn(self, argv, *args, **kwargs):\n"
        "    if argv and argv[-1] == 'FAULT':\n"
        "        raise ValueError('embedded null byte')\n"
        "    return _spawn(self, argv, *args, **kwargs)\n"
        "s.System.spawn = spawn\n")
    sandbox.service("app", {"initdelay": 0, "workstart": ["./start.sh", "FAULT"]}, start__sh="exit 0\n")
    run = sandbox.start(SRVNAME="app", PYTHONPATH=f"{tmp_path}:{ROOT}")
    assert run.wait() == 70, run.log
    assert "internal error in state start: ValueError('embedded null byte')" in run.log
    assert "exiting with status 70: an internal error" in run.log


def test_a_newline_in_a_workstart_argument_forges_no_log_line(workuser_sandbox):
    sandbox, out = workuser_sandbox
    forged = "x\nfsm-init[watch] error: forged by the config"
    sandbox.service("app", {"initdelay": 0, "workstart": ["./start.sh", forged]},
                    start__sh=f"#!/bin/sh\nprintf '%s' \"$1\" > {out}/argument\n")
    run = sandbox.start(SRVNAME="app")
    assert run.wait() == 0
    assert (out / "argument").read_text() == forged  # the program gets it as given
    assert not any(line.startswith("fsm-init[watch] error: forged") for line in run.log.splitlines()), run.log
    assert "./start.sh x\\nfsm-init[watch] error: forged by the config" in run.log


# -- 2-5, 11. secrets, helpers and the SSH port, with a real dropbear -------------------------


@pytest.fixture(scope="module")
def client_key(tmp_path_factory) -> Path:
    key = tmp_path_factory.mktemp("client") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="module")
def host_keys(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("hostkeys")
    for kind in ("ed25519", "ecdsa", "rsa"):
        subprocess.run(["dropbearkey", "-t", kind, "-f", str(directory / f"dropbear_{kind}_host_key")],
                       check=True, capture_output=True)
    return directory


def ssh_argv(port: int) -> list[str]:
    return ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "-p", str(port)]


def password_login(ns, port: int, password: str) -> subprocess.CompletedProcess:
    argv = ["sshpass", "-e", *ssh_argv(port), "-o", "PreferredAuthentications=password,keyboard-interactive",
            "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1", "root@127.0.0.1", "id -u"]
    return ns.run(*argv, check=False, env=dict(os.environ, SSHPASS=password), timeout=20)


def key_login(ns, port: int, key: Path) -> subprocess.CompletedProcess:
    return ns.run(*ssh_argv(port), "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                  "root@127.0.0.1", "id -u", check=False, timeout=20)


def wait_login(login) -> subprocess.CompletedProcess:
    return wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(login()), 20, "a login", interval=0.2)


def with_keys(sandbox, host_keys: Path) -> None:
    shutil.copytree(host_keys, sandbox.state_dir / "dropbear")


def comm(pid: int) -> str:
    """The process's name; "" once it is gone (a short-lived child may exit between the scan and the read)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def dropbear_host_pids(run) -> list[int]:
    return [pid for pid in run.namespace_pids() if comm(pid) == "dropbear"]


@needs_ssh
def test_the_workuser_cannot_read_roots_password_nor_log_in_with_it(workuser_sandbox, netns, host_keys):
    sandbox, out = workuser_sandbox
    ns = netns()
    # The service, as nobody, reads sshsrv.rootpwd from workcfg.json (0644 as COPY makes
    # it) and logs in as root over SSH on loopback once dropbear listens.
    attack = f"""#!/bin/sh
exec > {out}/attack.log 2>&1
pw=$({PY} -c 'import json; print(json.load(open("workcfg.json"))["sshsrv"]["rootpwd"])')
echo "read: $?"
i=0; while ! nc -z 127.0.0.1 2210; do i=$((i+1)); [ $i -gt 900 ] && break; sleep 0.05; done
SSHPASS="$pw" sshpass -e {' '.join(ssh_argv(2210))} -o PreferredAuthentications=password \
    -o PubkeyAuthentication=no -o NumberOfPasswordPrompts=1 root@127.0.0.1 id -u > {out}/login.out 2>&1
echo $? > {out}/login.status
exec sleep 1000
"""
    config = supervised(sshsrv={"enable": "yes", "sshport": 2210, "rootpwd": PASSWORD})
    directory = sandbox.service("app", config, start__sh=attack)
    (directory / "workcfg.json").chmod(0o644)
    with_keys(sandbox, host_keys)
    run = sandbox.start(launcher=launcher(sandbox, ns), SRVNAME="app")
    status = wait_lines(out / "login.status", 1, timeout=60)
    assert status != ["0"] and "0" not in (out / "login.out").read_text().split(), (out / "attack.log").read_text()
    assert "Permission denied" in (out / "attack.log").read_text()
    mode = (directory / "workcfg.json").stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == 0
    assert run.log.count(f"{directory}/workcfg.json holds sshsrv.rootpwd: made it mode 0600, owner root "
                         "(was 0644, owner uid 0)") == 1
    # the password is root's all the same: the operator logs in with it
    assert wait_login(lambda: password_login(ns, 2210, PASSWORD)).stdout.strip() == "0"
    assert PASSWORD not in run.log
    run.signal(signal.SIGTERM)
    run.wait()


@needs_ssh
def test_helper_commands_get_the_masked_srvcfg(workuser_sandbox, netns, host_keys):
    sandbox, out = workuser_sandbox
    ns = netns()
    stand_in = sandbox.root / "chpasswd"
    stand_in.write_text(f"#!/bin/sh\ntr '\\0' '\\n' < /proc/$$/environ > {out}/chpasswd.environ\ncat > /dev/null\n")
    stand_in.chmod(0o755)
    sandbox.service("app", None, start__sh="exec sleep 1000\n")
    with_keys(sandbox, host_keys)
    srvcfg = json.dumps(supervised(workuser="", sshsrv={"enable": "yes", "sshport": 2212, "rootpwd": PASSWORD}))
    run = sandbox.start(launcher=launcher(sandbox, ns, f"--bind={stand_in}:/usr/sbin/chpasswd"),
                        SRVNAME="app", SRVCFG=srvcfg)
    environ = wait_lines(out / "chpasswd.environ", 1)
    assert PASSWORD not in "\n".join(environ), "chpasswd inherited the raw $SRVCFG"
    [srvcfg_seen] = [line for line in environ if line.startswith("SRVCFG=")]
    assert json.loads(srvcfg_seen[len("SRVCFG="):])["sshsrv"]["rootpwd"] == "********"
    wait_for(lambda: dropbear_host_pids(run), what="dropbear")
    for pid in dropbear_host_pids(run) + [run.pid1]:
        environ_of = Path(f"/proc/{pid}/environ").read_bytes()
        assert PASSWORD.encode() not in environ_of or pid == run.pid1  # PID 1's own: root only
    run.signal(signal.SIGTERM)
    run.wait()


@needs_ssh
def test_keys_without_a_root_password_mean_key_logins_only_and_one_line_per_key(workuser_sandbox, netns, host_keys,
                                                                                client_key):
    sandbox, out = workuser_sandbox
    ns = netns()
    pubkey = client_key.with_suffix(".pub").read_text().strip()
    forged = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKE one\nssh-rsa AAAAB3NzaFORGED two"
    sandbox.service("app", supervised(workuser="", sshsrv={"enable": "yes", "sshport": 2213,
                                                           "authkeys": [pubkey, forged]}),
                    start__sh="exec sleep 1000\n")
    with_keys(sandbox, host_keys)
    run = sandbox.start(launcher=launcher(sandbox, ns), SRVNAME="app")
    assert wait_login(lambda: key_login(ns, 2213, client_key)).stdout.strip() == "0"
    refused = password_login(ns, 2213, "anything")
    assert refused.returncode != 0 and "Permission denied (publickey)" in refused.stderr, refused
    log = run.log
    assert "password is now" not in log and not (sandbox.state_dir / "dropbear" / "root-password").exists()
    assert "sshsrv.authkeys is set and sshsrv.rootpwd is not: password logins are off" in log
    assert "config key 'sshsrv.authkeys': entry 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKE one\\nssh-rsa " \
           "AAAAB3NzaFORGED two' contains a line break or a NUL byte; entry dropped" in log
    assert "password logins off, 1 authorized key(s)" in run.status()["supporting"]["ssh"]
    keys = in_namespaces_of(run.pid1, "cat", "/root/.ssh/authorized_keys").stdout.splitlines()
    assert [k for k in keys if not k.startswith("#")] == [pubkey]
    [dropbear] = dropbear_host_pids(run)
    assert b"-s" in Path(f"/proc/{dropbear}/cmdline").read_bytes().split(b"\0")
    run.signal(signal.SIGTERM)
    run.wait()


@needs_ssh
def test_the_ssh_port_is_permitted_only_while_dropbear_runs(workuser_sandbox, netns, host_keys, client_key):
    sandbox, out = workuser_sandbox
    ns = netns()
    pubkey = client_key.with_suffix(".pub").read_text().strip()
    config = supervised(workuser="", workwatch=30, firewall={"enable": "yes"},
                        sshsrv={"enable": "yes", "sshport": 2214, "authkeys": [pubkey]})
    directory = sandbox.service("app", config, start__sh="exec sleep 1000\n")
    sandbox.state_dir.mkdir()
    (sandbox.state_dir / "dropbear").write_text("not a directory")  # the SSH step cannot prepare dropbear

    def permitted() -> bool:
        return "--dport 2214" in ns.run("iptables-save").stdout

    run = sandbox.start(launcher=launcher(sandbox, ns), SRVNAME="app")
    run.wait_log("ssh unavailable: cannot prepare dropbear")
    wait_for(lambda: run.status()["state"] in ("restart_interval", "watch"), what="the service started")
    assert "firewall applied" in run.log and "DROP" in ns.run("iptables-save").stdout
    assert not permitted(), "the SSH port is open with no dropbear behind it"
    # fixed: dropbear runs, and its port is permitted
    (sandbox.state_dir / "dropbear").unlink()
    with_keys(sandbox, host_keys)
    assert run.srvctl("restart").returncode == 0
    wait_for(lambda: dropbear_host_pids(run), what=f"dropbear\n--- log:\n{run.log}")
    wait_for(permitted, what="the SSH port's permit")
    assert wait_login(lambda: key_login(ns, 2214, client_key)).stdout.strip() == "0"
    # dropbear dies: the permit goes with it (the next check cycle is 30 s away)
    [dropbear] = dropbear_host_pids(run)
    os.kill(dropbear, signal.SIGKILL)
    wait_for(lambda: not permitted(), what=f"the permit withdrawn\n--- log:\n{run.log}")
    assert not dropbear_host_pids(run)
    # back with the next restart
    assert run.srvctl("restart").returncode == 0
    wait_for(permitted, what="the permit back")
    assert directory.exists()
    run.signal(signal.SIGTERM)
    run.wait()

