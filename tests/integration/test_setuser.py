"""setuser and workuser as real processes: the command really has the uid, gids, HOME and
no_new_privs (read from its own /proc/self/status), and cannot gain privileges through a
set-uid binary.  Existing system accounts only (nobody, daemon): nothing is added to this
machine's passwd or group databases.
"""

import grp
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fsm_init.core.system import System
from tests.conftest import ROOT, needs_pid_namespace, wait_for

SETUSER = [sys.executable, "-P", "-m", "fsm_init.core.setuser"]


def _account(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="setuser changes identity: needs root"),
    pytest.mark.skipif(not (_account("nobody") and _account("daemon")), reason="needs the nobody and daemon accounts"),
]

NOBODY, DAEMON = pwd.getpwnam("nobody") if _account("nobody") else None, pwd.getpwnam("daemon") if _account("daemon") else None


def setuser(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([*SETUSER, *args], env=environ, capture_output=True, text=True, timeout=30, **kwargs)


def status_of(*args) -> dict:
    """/proc/self/status of `setuser ARGS cat /proc/self/status`, as a dict."""
    result = setuser(*args, "cat", "/proc/self/status")
    assert result.returncode == 0, result.stderr
    return dict(line.split(":\t", 1) for line in result.stdout.splitlines() if ":\t" in line)


def groups_of(user: str, gid: int) -> set[int]:
    return set(os.getgrouplist(user, gid))


# -- identity ----------------------------------------------------------------------------------


def test_nobody_id_u():
    result = setuser("nobody", "id", "-u")
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, str(NOBODY.pw_uid), "")


@pytest.mark.parametrize("spec", ["nobody", str(NOBODY.pw_uid) if NOBODY else "65534"])
def test_uid_gid_groups_and_no_new_privs(spec):
    status = status_of(spec)
    assert status["Uid"].split() == [str(NOBODY.pw_uid)] * 4  # real, effective, saved, filesystem
    assert status["Gid"].split() == [str(NOBODY.pw_gid)] * 4
    assert set(map(int, status["Groups"].split())) == groups_of("nobody", NOBODY.pw_gid)  # root's are gone
    assert status["NoNewPrivs"].strip() == "1"
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0


def test_supplementary_groups_are_the_users():
    result = setuser("daemon", "id", "-G")
    assert result.returncode == 0, result.stderr
    assert set(map(int, result.stdout.split())) == groups_of("daemon", DAEMON.pw_gid)


def test_group_option_sets_the_primary_group():
    status = status_of("--group", "daemon", "nobody", "--")
    daemon_gid = grp.getgrnam("daemon").gr_gid
    assert status["Uid"].split()[0] == str(NOBODY.pw_uid)
    assert status["Gid"].split() == [str(daemon_gid)] * 4
    assert daemon_gid in set(map(int, status["Groups"].split()))


def test_environment_home_user_logname_and_the_rest_kept():
    result = setuser("daemon", "env", env={"HOME": "/root", "USER": "root", "KEEP_ME": "a b 'c'"})
    assert result.returncode == 0, result.stderr
    env = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (DAEMON.pw_dir, "daemon", "daemon")
    assert env["KEEP_ME"] == "a b 'c'" and env["PATH"] == os.environ["PATH"]


def test_python_command_sees_no_new_privs():
    code = "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs:')][0])"
    result = setuser("nobody", "python3", "-c", code)
    assert (result.returncode, result.stdout.strip()) == (0, "1"), result.stderr


def test_set_uid_binary_gives_no_privilege(public_dir):
    """A set-uid-root copy of id: as plain nobody it reports euid 0, under setuser 65534."""
    setuid_id = public_dir / "id"
    shutil.copy2(shutil.which("id"), setuid_id)
    os.chown(setuid_id, 0, 0)
    setuid_id.chmod(0o4755)
    control = subprocess.run(["setpriv", "--reuid", str(NOBODY.pw_uid), "--regid", str(NOBODY.pw_gid),
                              "--clear-groups", str(setuid_id), "-u"], capture_output=True, text=True) \
        if shutil.which("setpriv") else None
    if control is None or control.stdout.strip() != "0":
        pytest.skip("set-uid binaries do not take effect here (nosuid mount or no setpriv): nothing to prevent")
    result = setuser("nobody", str(setuid_id), "-u")
    assert (result.returncode, result.stdout.strip()) == (0, str(NOBODY.pw_uid)), result.stderr


def clean_status_of(*args, launcher=()) -> dict:
    """Like status_of, with setuser started the way fsm-init starts a child (every signal
    at its default, none blocked), whatever state this test run inherited (nohup, a
    background job)."""
    read, write = os.pipe2(os.O_CLOEXEC)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        pid = System().spawn([*launcher, *SETUSER, *args, "cat", "/proc/self/status"], env, stdout=write)
    finally:
        os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, text
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_signal_dispositions_are_the_defaults():
    # CPython ignores SIGPIPE and SIGXFSZ; an ignored signal would survive the exec.
    status = clean_status_of("nobody")
    assert int(status["SigIgn"], 16) == 0 and int(status["SigBlk"], 16) == 0


def test_inherited_dispositions_are_kept():
    """setuser is a wrapper: `nohup setuser USER CMD` keeps SIGHUP ignored for CMD."""
    status = clean_status_of("nobody", launcher=("env", "--ignore-signal=HUP,USR2"))
    assert int(status["SigIgn"], 16) == (1 << (signal.SIGHUP - 1)) | (1 << (signal.SIGUSR2 - 1))


@pytest.fixture
def unreadable_install():
    """(python argv, dir): fsm-init and its interpreter's standard library where nobody
    cannot read, as in a virtualenv or a Python under /root: a 0700 root directory holds
    a copy of the package and, through a symlink, the standard library (PYTHONHOME)."""
    top = Path(tempfile.mkdtemp(prefix="setuser-private-"))
    top.chmod(0o700)
    shutil.copytree(ROOT / "fsm_init", top / "fsm_init", ignore=shutil.ignore_patterns("__pycache__"))
    stdlib = Path(os.__file__).parent
    (top / "prefix" / "lib").mkdir(parents=True)
    (top / "prefix" / "lib" / stdlib.name).symlink_to(stdlib)
    python = os.path.realpath(sys.executable)
    code = f"import sys; sys.path.insert(0, {str(top)!r}); from fsm_init.core.setuser import main; sys.exit(main())"
    yield [python, "-S", "-c", code], top
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv")
@pytest.mark.parametrize("prctl", ["python-prctl", "ctypes"])
def test_installed_where_the_user_cannot_read(unreadable_install, prctl):
    """Everything setuser needs is imported while it is root (before: ModuleNotFoundError
    for ctypes once it was nobody).  With python-prctl installed beside it, and without
    (the ctypes fall-back)."""
    argv, top = unreadable_install
    if prctl == "python-prctl":
        import importlib.util

        spec = importlib.util.find_spec("prctl")
        if spec is None:
            pytest.skip("python-prctl is not installed")
        for path in Path(spec.origin).parent.glob("*prctl*"):
            if path.is_file():
                shutil.copy2(path, top)
    env = {"PATH": os.environ["PATH"], "PYTHONHOME": str(top / "prefix")}
    denied = subprocess.run(["setpriv", "--reuid", str(NOBODY.pw_uid), "--regid", str(NOBODY.pw_gid), "--clear-groups",
                             "cat", str(top / "fsm_init" / "core" / "setuser.py")], capture_output=True, text=True)
    assert denied.returncode != 0, "the copy must be unreadable for nobody"
    result = subprocess.run([*argv, "nobody", "sh", "-c", "id -u; grep NoNewPrivs /proc/self/status"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(NOBODY.pw_uid), "NoNewPrivs:", "1"]


def test_exec_keeps_the_pid_and_the_status():
    proc = subprocess.Popen([*SETUSER, "nobody", "sh", "-c", "echo $$; exit 7"], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    out, _ = proc.communicate(timeout=30)
    assert (proc.returncode, out.strip()) == (7, str(proc.pid))
    assert setuser("nobody", "sh", "-c", "kill -TERM $$").returncode == -15


# -- failures ---------------------------------------------------------------------------------


def test_command_not_found_is_127():
    result = setuser("nobody", "no-such-command-zz")
    assert result.returncode == 127
    assert "setuser: cannot execute no-such-command-zz: command not found" in result.stderr
    assert setuser("nobody", "/no/such/file").returncode == 127


def test_not_executable_is_126(public_dir):
    plain = public_dir / "plain"
    plain.write_text("#!/bin/sh\nexit 0\n")
    plain.chmod(0o644)
    for target in (plain, public_dir):
        result = setuser("nobody", str(target))
        assert result.returncode == 126, result.stderr
        assert "Permission denied" in result.stderr


def test_a_file_only_root_may_run_is_126_as_nobody(public_dir):
    script = public_dir / "root-only"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o700)
    assert subprocess.run([str(script)]).returncode == 0
    assert setuser("nobody", str(script)).returncode == 126


@pytest.mark.parametrize("args", [[], ["nobody"], ["--group"], ["--nope", "nobody", "id"]])
def test_usage_errors_are_2(args):
    result = setuser(*args)
    assert result.returncode == 2 and "usage: setuser" in result.stderr


def test_unknown_user_or_group_is_1():
    result = setuser("no-such-user-zz", "id")
    assert result.returncode == 1
    assert result.stderr == "setuser: unknown user 'no-such-user-zz' (not in the passwd database)\n"
    result = setuser("--group", "no-such-group-zz", "nobody", "id")
    assert result.returncode == 1 and "unknown group 'no-such-group-zz'" in result.stderr


def test_not_root_may_only_become_itself():
    inner = [*SETUSER]
    ok = setuser("nobody", *inner, "nobody", "id", "-u")
    assert (ok.returncode, ok.stdout.strip()) == (0, str(NOBODY.pw_uid)), ok.stderr
    refused = setuser("nobody", *inner, "daemon", "id", "-u")
    assert refused.returncode == 1 and "not root" in refused.stderr and refused.stdout == ""


# -- workuser in a full fsm-init run --------------------------------------------------------------

REPORT = """#!/bin/sh
{{ id -u; id -G; echo "$HOME"; grep NoNewPrivs /proc/self/status; }} > {out}/{name}.tmp && mv {out}/{name}.tmp {out}/{name}
"""


@needs_pid_namespace
def test_workuser_runs_the_service_and_periodic_scripts_as_nobody(workuser_sandbox):
    box, out = workuser_sandbox
    box.service("svc", {"initdelay": 0, "workstart": "./run", "workwatch": 1, "workintvl": 1, "workuser": "nobody"},
                run=REPORT.format(out=out, name="service") + "exec sleep 1000\n",
                PeriodicST_ok=REPORT.format(out=out, name="check"),
                PeriodicRT_bg=REPORT.format(out=out, name="background"))
    run = box.start(SRVNAME="svc")
    expected = [str(NOBODY.pw_uid), " ".join(map(str, sorted(groups_of("nobody", NOBODY.pw_gid)))),
                NOBODY.pw_dir, "NoNewPrivs:\t1"]
    for name in ("service", "check", "background"):
        wait_for(lambda: (out / name).exists(), what=f"{name} report\n--- log:\n{run.log}")
        lines = (out / name).read_text().splitlines()
        lines[1] = " ".join(sorted(lines[1].split(), key=int))
        assert lines == expected, (name, run.log)
    status = wait_for(lambda: (lambda s: s if s["checks"] else None)(run.status()), what="a check cycle")
    assert [(c["name"], c["exit"]) for c in status["checks"]] == [("PeriodicST-ok", 0)], status["checks"]
    assert Path(f"/proc/{run.pid1}/status").read_text().count("Uid:\t0\t0\t0\t0") == 1  # fsm-init stays root
    assert "as nobody" in run.log


@needs_pid_namespace
def test_workuser_children_start_with_a_clean_signal_state(workuser_sandbox):
    """Through setuser's exec: fsm-init (started with every signal it could inherit
    ignored and blocked) gives setuser a clean state, and setuser passes it on."""
    box, out = workuser_sandbox
    dump = "cat /proc/self/status > {out}/{name}.tmp && mv {out}/{name}.tmp {out}/{name}\n"
    box.service("svc", {"initdelay": 0, "workstart": "./run", "workwatch": 1, "workintvl": 1, "workuser": "nobody"},
                run=dump.format(out=out, name="service") + "exec sleep 1000\n",
                PeriodicST_ok=dump.format(out=out, name="check"))
    run = box.start(SRVNAME="svc", launcher=("env", "--ignore-signal", "--block-signal"))
    for name in ("service", "check"):
        text = wait_for(lambda: (out / name).exists() and (out / name).read_text(), what=f"{name}\n{run.log}")
        fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        assert fields["Uid"].split()[0] == str(NOBODY.pw_uid)
        assert (int(fields["SigIgn"], 16), int(fields["SigBlk"], 16)) == (0, 0), (name, fields["SigIgn"])


@needs_pid_namespace
def test_unknown_workuser_does_not_start_the_service(workuser_sandbox):
    box, out = workuser_sandbox
    box.service("svc", {"initdelay": 0, "workstart": "./run", "workuser": "no-such-user-zz"},
                run=f"#!/bin/sh\ntouch {out}/started\n")
    run = box.start(SRVNAME="svc")
    assert run.wait() == 126
    assert "cannot start the service as workuser 'no-such-user-zz': unknown user 'no-such-user-zz'" in run.log
    assert not (out / "started").exists()
