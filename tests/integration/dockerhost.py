"""A real Docker engine for the tests: dockerd (started here when none answers), the base
image made locally, the fsm-init image built from the checkout, and containers.

No container registry is reachable from the machines the suite runs on, and they have no
systemd, so:

- ``Engine.up()`` uses the daemon on ``$DOCKER_HOST`` / ``/var/run/docker.sock`` when one
  answers; otherwise it starts ``dockerd`` with a data root of its own (kept between runs,
  so the layer cache makes the next build fast: ``$FSM_INIT_TEST_DOCKER_ROOT``, default
  ``/var/lib/fsm-init-test/docker``), an exec root and a pid file under
  ``/run/fsm-init-test``, and waits for its socket with a deadline.  ``Engine.down()``
  stops the daemon it started and puts back what dockerd changes on the host: the
  iptables and ip6tables rules (``iptables-save``/``-restore``), ``net.ipv4.ip_forward``
  and the bridges ``docker0`` and ``docker_gwbridge`` when they were not there before.
- The base ``debian:bookworm-slim`` is ``debootstrap --variant=minbase bookworm`` with
  slim's dpkg excludes (cached in ``/var/cache/fsm-init-test``, as the emulated image test
  did), ``docker import``-ed under a tag of its own (``BASE``), never over a real
  ``debian:bookworm-slim`` a user may have.
- The image is built with the classic builder (``DOCKER_BUILDKIT=0``) and the host's
  network; pip in the builder trusts the CA certificates installed under
  ``/usr/local/share/ca-certificates`` (a TLS-intercepting proxy's) through the
  Dockerfile's ``EXTRA_CA_CERTS`` build argument.

With ``CI=true``, an engine that cannot run fails the tests instead of skipping them.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

SUITE = "bookworm"
CACHE = Path(os.environ.get("FSM_INIT_TEST_CACHE") or "/var/cache/fsm-init-test")
DATA_ROOT = Path(os.environ.get("FSM_INIT_TEST_DOCKER_ROOT") or "/var/lib/fsm-init-test/docker")
RUN_DIR = Path("/run/fsm-init-test")
SOCKET = "/var/run/docker.sock"
BASE = "fsm-init-test/bookworm-slim"
IMAGE = "fsm-init-test/fsm-init:latest"
LABEL = "fsm-init-test"
CA_DIR = Path("/usr/local/share/ca-certificates")
# What dockerd adds to the host, removed again when it was not there before.
DOCKER_LINKS = ("docker0", "docker_gwbridge")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# debian:bookworm-slim's /etc/dpkg/dpkg.cfg.d/docker: no documentation, manuals or locales.
SLIM_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
"""


def unavailable(reason: str):
    """Docker cannot run here: a skip, or a failure in CI (CI=true), where it must run."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Docker cannot run (CI=true, so this fails): {reason}", pytrace=False)
    pytest.skip(f"Docker cannot run: {reason}")


def docker_cli() -> str | None:
    # The client of the docker.io package first (the daemon's own version), then the PATH's.
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


DOCKER = docker_cli()
ENV = {**os.environ, "DOCKER_BUILDKIT": "0", "DOCKER_CLI_HINTS": "false"}


def docker(*argv, timeout=120, check=True, input=None) -> subprocess.CompletedProcess:
    """docker ARGV: the CompletedProcess (text); check: a failure with its output."""
    result = subprocess.run([DOCKER, *map(str, argv)], env=ENV, capture_output=True, text=True,
                            timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(map(str, argv))[:300]} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def out(*argv, **kwargs) -> str:
    return docker(*argv, **kwargs).stdout.strip()


# -- the daemon ------------------------------------------------------------------------------

def _save_tables(tool: str) -> str | None:
    if not shutil.which(tool):
        return None
    result = subprocess.run([tool], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def _tables(text: str) -> dict[str, list[str]]:
    """iptables-save output: table name -> its lines (from *table to COMMIT)."""
    tables: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
            tables[current] = [line]
        elif current and not line.startswith("#"):
            tables[current].append(line)
            if line == "COMMIT":
                current = None
    return tables


def restore_input(saved: str, now: str) -> str:
    """iptables-restore input that puts every table back as saved: a table that was not
    there before (dockerd made it) is emptied, its built-in chains' policies ACCEPT."""
    before, after = _tables(saved), _tables(now)
    text = []
    for name, lines in after.items():
        if name in before:
            text.extend(before[name])
        else:
            builtins = [f":{m.group(1)} ACCEPT [0:0]" for m in
                        (re.match(r":(\S+) (ACCEPT|DROP|RETURN|QUEUE)\b", line) for line in lines) if m]
            text.extend([f"*{name}", *builtins, "COMMIT"])
    for name, lines in before.items():
        if name not in after:
            text.extend(lines)
    return "\n".join(text) + "\n"


def _meaning(text: str) -> set[str]:
    """The rules, user-defined chains and non-ACCEPT policies of iptables-save output."""
    meaning, table = set(), ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A") or (line.startswith(":") and " ACCEPT " not in line):
            meaning.add(f"{table} {line.split(' [')[0]}")
    return meaning


class Engine:
    """The Docker daemon the tests use; started (and afterwards stopped, the host put back
    as it was) only when none answers."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.saved: dict = {}
        self.log_path = RUN_DIR / "dockerd.log"

    @staticmethod
    def answers() -> bool:
        try:
            return docker("version", "--format", "{{.Server.Version}}", timeout=20, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def up(self, deadline=60.0) -> None:
        if DOCKER is None or not (shutil.which("dockerd") or Path("/usr/sbin/dockerd").exists()):
            unavailable("docker.io is not installed (./scripts/setup installs it)")
        if self.answers():
            return
        if os.geteuid() != 0:
            unavailable("no Docker daemon answers, and starting one needs root")
        if os.environ.get("DOCKER_HOST"):
            unavailable(f"DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer")
        self.saved = {
            "iptables": _save_tables("iptables-save"),
            "ip6tables": _save_tables("ip6tables-save"),
            "ip_forward": IP_FORWARD.read_text() if IP_FORWARD.exists() else None,
            "links": {link for link in DOCKER_LINKS if Path(f"/sys/class/net/{link}").exists()},
        }
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        self.proc = subprocess.Popen(
            [dockerd, "--data-root", str(DATA_ROOT), "--exec-root", str(RUN_DIR / "docker"),
             "--pidfile", str(RUN_DIR / "docker.pid"), "--host", f"unix://{SOCKET}"],
            stdin=subprocess.DEVNULL, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        end = time.monotonic() + deadline
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > end:
                log = self.log_path.read_text(errors="replace")[-3000:]
                self.down()
                unavailable(f"dockerd did not answer on {SOCKET} within {deadline:.0f}s:\n{log}")
            time.sleep(0.2)

    def down(self, deadline=30.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(deadline)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        self.restore_host()

    def differences(self) -> list[str]:
        """What is still not as it was before dockerd started (empty: all put back).  Rules,
        user chains and policies are compared; a table left empty with ACCEPT policies
        counts as absent."""
        found = []
        for tool in ("iptables", "ip6tables"):
            saved, now = self.saved.get(tool), _save_tables(f"{tool}-save")
            if saved is not None and now is not None and _meaning(saved) != _meaning(now):
                found.append(f"{tool}: {sorted(_meaning(now) ^ _meaning(saved))[:5]}")
        if self.saved.get("ip_forward") is not None and IP_FORWARD.read_text() != self.saved["ip_forward"]:
            found.append(f"ip_forward is {IP_FORWARD.read_text().strip()}")
        for link in DOCKER_LINKS:
            if link not in self.saved.get("links", ()) and Path(f"/sys/class/net/{link}").exists():
                found.append(f"{link} is there")
        return found

    def restore_host(self) -> None:
        for tool in ("iptables", "ip6tables"):
            saved = self.saved.get(tool)
            now = _save_tables(f"{tool}-save")
            if saved is not None and now is not None and now != saved:
                subprocess.run([f"{tool}-restore"], input=restore_input(saved, now), text=True, check=True)
        if self.saved.get("ip_forward") is not None:
            IP_FORWARD.write_text(self.saved["ip_forward"])
        for link in DOCKER_LINKS:
            if link not in self.saved.get("links", ()) and Path(f"/sys/class/net/{link}").exists():
                subprocess.run(["ip", "link", "delete", link], check=False)


# -- the images ------------------------------------------------------------------------------

def host_codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return ""
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    return match.group(1) if match else ""


def apt_mirror() -> str:
    """The Debian mirror apt uses here (deb822 .sources first, then one-line lists)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = {k.strip().lower(): v.strip() for k, _, v in
                      (line.partition(":") for line in stanza.splitlines() if line and not line.startswith("#"))}
            if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split() \
                    and fields.get("enabled", "yes") != "no":
                return fields["uris"].split()[0]
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if path.exists():
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    return "http://deb.debian.org/debian"


def _run(argv, what, timeout=1800, **kwargs) -> str:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{what} failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result.stdout


def base_rootfs() -> Path:
    """FROM debian:bookworm-slim, as near as debootstrap gets: CACHE/base-KEY."""
    mirror = apt_mirror()
    key = hashlib.sha256(f"{SUITE} minbase {mirror} {host_codename()} v1".encode()).hexdigest()[:16]
    final = CACHE / f"base-{key}"
    if final.is_dir():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f".base-{key}.tmp"
    subprocess.run(["rm", "-rf", "--one-file-system", str(tmp)], check=True)
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    _run([debootstrap, "--variant=minbase", SUITE, tmp, mirror], f"debootstrap {SUITE} from {mirror}")
    (tmp / "etc/dpkg/dpkg.cfg.d/docker").write_text(SLIM_EXCLUDES)
    if host_codename() == SUITE:
        sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
        for path in sources:  # the host's suites (security and updates included)
            shutil.copy(path, tmp / "etc/apt/sources.list.d" / path.name)
        if sources:
            (tmp / "etc/apt/sources.list").unlink(missing_ok=True)
    (tmp / "etc/resolv.conf").write_text("")  # Docker mounts its own
    tmp.rename(final)
    return final


def base_image() -> str:
    """The imported base, tagged BASE:KEY (made once per debootstrap cache)."""
    root = base_rootfs()
    tag = f"{BASE}:{root.name.split('-', 1)[1]}"
    if docker("image", "inspect", tag, check=False).returncode != 0:
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([DOCKER, "import", "--change", 'CMD ["bash"]', "-", tag], stdin=tar.stdout,
                                  env=ENV, capture_output=True, text=True, timeout=600)
        tar.stdout.close()
        tar.wait()
        assert imported.returncode == 0 and tar.returncode == 0, f"docker import failed: {imported.stderr}"
    return tag


def extra_ca_certs() -> str:
    """The CA certificates installed on this machine beyond Debian's (a proxy's), as PEM."""
    if not CA_DIR.is_dir():
        return ""
    return "".join(p.read_text() for p in sorted(CA_DIR.glob("**/*.crt")) if "BEGIN CERTIFICATE" in p.read_text())


def build(context: Path, tag: str, *build_args: str, timeout=1800, check=True,
          buildkit=False) -> subprocess.CompletedProcess:
    """`docker build` with the classic builder (or BuildKit) and the host's network."""
    argv = ["build", "--network", "host", "--label", f"{LABEL}=1", "-t", tag]
    for arg in build_args:
        argv += ["--build-arg", arg]
    argv.append(str(context))
    if not buildkit:
        return docker(*argv, timeout=timeout, check=check)
    result = subprocess.run([DOCKER, *argv], env={**ENV, "DOCKER_BUILDKIT": "1"}, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"DOCKER_BUILDKIT=1 docker build exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def start_buildkit_build(tag: str) -> tuple[subprocess.Popen, Path]:
    """DOCKER_BUILDKIT=1 docker build of the checkout, in the background (its own cache);
    the process and its log file."""
    log = RUN_DIR / f"buildkit-{uuid.uuid4().hex[:8]}.log"
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    argv = [DOCKER, "build", "--network", "host", "--label", f"{LABEL}=1", "-t", tag]
    for arg in image_build_args():
        argv += ["--build-arg", arg]
    proc = subprocess.Popen([*argv, str(ROOT)], env={**ENV, "DOCKER_BUILDKIT": "1"}, stdin=subprocess.DEVNULL,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    return proc, log


def image_build_args() -> list[str]:
    """The local base, and the machine's extra CA certificates for pip."""
    args = [f"DEBIAN_IMAGE={base_image()}"]
    certs = extra_ca_certs()
    if certs:
        args.append(f"EXTRA_CA_CERTS={certs}")
    return args


def build_image() -> tuple[str, float]:
    """The fsm-init image from the checkout: its tag and how long the build took."""
    started = time.monotonic()
    build(ROOT, IMAGE, *image_build_args())
    return IMAGE, time.monotonic() - started


# -- containers ------------------------------------------------------------------------------

class Container:
    """One container (docker run -d), removed by cleanup()."""

    def __init__(self, name: str) -> None:
        self.name = name

    def inspect(self, template: str) -> str:
        return out("inspect", "-f", template, self.name)

    def state(self) -> dict:
        return json.loads(self.inspect("{{json .State}}"))

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *argv, user=None, timeout=30, check=False) -> subprocess.CompletedProcess:
        return docker("exec", *(["--user", user] if user else []), self.name, *argv, timeout=timeout, check=check)

    def wait_exit(self, timeout=30) -> int:
        state = wait_for(lambda: (s := self.state())["Status"] == "exited" and s, timeout,
                         f"{self.name} to exit\n{self.logs()[-3000:]}", interval=0.1)
        return state["ExitCode"]

    def wait_health(self, status="healthy", timeout=60) -> None:
        end = time.monotonic() + timeout
        while True:
            state = self.state()
            assert state["Status"] == "running", f"{self.name} is {state['Status']} " \
                f"(exit {state['ExitCode']}, OOMKilled {state['OOMKilled']})\n{self.logs()[-3000:]}"
            if state.get("Health", {}).get("Status") == status:
                return
            if time.monotonic() > end:
                raise AssertionError(f"{self.name} not {status} within {timeout}s:\n{self.logs()[-3000:]}\n"
                                     f"{json.dumps(state.get('Health'), indent=1)[-2000:]}")
            time.sleep(0.2)

    def wait_log(self, pattern: str, timeout=30, count=1) -> str:
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        while True:
            logs = self.logs()
            if len(regex.findall(logs)) >= count:
                return logs
            if time.monotonic() > end:
                raise AssertionError(f"/{pattern}/ x{count} not in docker logs {self.name} within {timeout}s:\n"
                                     f"{logs[-3000:]}")
            time.sleep(0.1)

    def status(self) -> dict | None:
        result = self.exec("srvctl", "status", "--json")
        return json.loads(result.stdout) if result.returncode == 0 else None

    def stop(self, timeout=10) -> float:
        started = time.monotonic()
        docker("stop", "--time", timeout, self.name, timeout=timeout + 30)
        return time.monotonic() - started

    def processes(self) -> list[str]:
        """`ps` inside: 'PID STAT COMM ARGS' lines (ps itself left out)."""
        lines = self.exec("ps", "-eo", "pid=,stat=,comm=,args=").stdout.splitlines()
        return [line for line in lines if line.split()[2:3] != ["ps"]]


# Health checks fast enough for tests (the image's HEALTHCHECK command, every second).
FAST_HEALTH = ["--health-interval", "1s", "--health-timeout", "5s", "--health-retries", "3",
               "--health-start-period", "60s"]


def run(image: str, *args, cmd=(), name=None, health=True) -> Container:
    """docker run -d [FAST_HEALTH] ARGS IMAGE CMD."""
    name = name or f"fsm-test-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "--label", f"{LABEL}=1", *(FAST_HEALTH if health else ()), *args,
           image, *cmd)
    return Container(name)


def cleanup() -> None:
    """Remove every container, service and application image the tests made."""
    ids = out("ps", "-aq", "--filter", f"label={LABEL}", check=False).split()
    if ids:
        docker("rm", "-f", *ids, check=False, timeout=120)
