"""The image smoke test, without a Docker engine.

The image is built the way ``docker build`` builds ./Dockerfile, with the same
``scripts/image-install`` subcommands, and booted the way a container runtime boots it:

=============================================  ==========================================================
Dockerfile                                     here
=============================================  ==========================================================
``FROM debian:bookworm-slim``                  ``debootstrap --variant=minbase bookworm`` from the mirror
                                               apt uses on this machine, with slim's dpkg path excludes
builder ``RUN image-install builder-packages`` the same, in a chroot of that root file system
builder ``RUN image-install deps ...``         the same; pip reads a wheelhouse that the host's pip
                                               downloaded (``--no-binary`` for the two C extensions, so
                                               the builder compiles them with its gcc and libcap-dev)
builder ``RUN image-install wheel /src /dist`` the same, from a copy of the working tree as
                                               .dockerignore leaves it (also for ``COPY srv/``)
builder ``RUN image-install venv /dist ...``   the same
runtime ``RUN image-install runtime-packages`` the same, in a second chroot of the base
``COPY --from=builder /opt/fsm-init ...``      ``cp -a`` from the builder's root
``RUN image-install finish``                   the same
``COPY srv/ /srv/`` + ``RUN image-install srv`` the same
``docker run``                                 ``unshare --pid --mount --net --uts --ipc --fork``; an
                                               overlay of the image's layers (a fresh writable layer per
                                               container); /proc, /sys, a tmpfs /dev with the usual nodes;
                                               loopback up; a hostname; chroot; ``env -i`` with Docker's
                                               PATH; the Dockerfile's ENTRYPOINT + CMD, read from it
``docker exec``                                ``nsenter`` into the container's namespaces and root
``docker stop``                                SIGTERM to PID 1 (STOPSIGNAL), then wait for its exit
``FROM fsm-init`` (an application image)       the Dockerfile's ONBUILD triggers (ARG, ENV, COPY srv/,
                                               RUN) in one more overlay layer
=============================================  ==========================================================

``test_this_test_builds_what_the_dockerfile_says`` fails when the Dockerfile's steps change
and this emulation does not.

Layers that depend only on ``scripts/image-install`` (and, for the builder's dependencies,
``constraints.txt`` and ``pyproject.toml``) are cached under ``$FSM_INIT_TEST_CACHE``
(default ``/var/cache/fsm-init-test``), keyed by a hash of those files, like Docker's layer
cache; the steps that depend on the source tree run every time.  Every build step runs in
a mount and PID namespace of its own, so nothing stays mounted or running on the host.
The first run debootstraps and installs (a few minutes, needs the Debian mirror and the
package index pip uses); ``rm -rf /var/cache/fsm-init-test`` starts over, e.g. to pick up
Debian security updates.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, first_child, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the image smoke test needs root (debootstrap, chroot, namespaces)"),
]

SUITE = "bookworm"
CACHE = Path(os.environ.get("FSM_INIT_TEST_CACHE") or "/var/cache/fsm-init-test")
IMAGE_INSTALL = ROOT / "scripts" / "image-install"
# Docker's PATH for a container whose image sets none.
DOCKER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STEP_ENV = {"PATH": DOCKER_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
# The C extensions among fsm-init's dependencies: the builder stage exists to compile them.
C_EXTENSIONS = "python-prctl,netifaces"
RUNTIME_PACKAGES = ["python3", "iptables", "dropbear-bin", "ppp", "pppoe", "iproute2", "procps",
                    "ca-certificates", "jq", "ipset", "inotify-tools", "psmisc", "netcat-openbsd",
                    "sqlite3", "unzip", "sshpass", "libcap2", "openssh-sftp-server", "cron"]
BUILDER_ONLY = ["gcc", "libcap-dev", "python3-dev", "python3-venv"]
STOP_GRACE, LEFTOVER_GRACE = 5, 2
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

# Shell helpers for the steps, each run as `unshare --mount --pid --fork` sh -c HELPERS+STEP.
HELPERS = r"""
set -eu
# enter ROOT: what a build container has (/proc of its own PID namespace, the host's /dev).
enter() { mount -t proc proc "$1/proc"; mount --rbind /dev "$1/dev"; }
# layer LOWERS UPPER MERGED: an overlay, as Docker's overlay2 stacks an image's layers.
layer() {
    mkdir -p "$2" "$2.work" "$3"
    mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$2.work" "$3"
}
"""

# The container's PID 1 before it execs the entrypoint: a runtime's set-up, then chroot.
BOOT = HELPERS + r"""
lowers=$1 upper=$2 root=$3 name=$4 workdir=$5; shift 5
layer "$lowers" "$upper" "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o nosuid,mode=755,size=65536k tmpfs "$root/dev"
mknod -m 666 "$root/dev/null" c 1 3
mknod -m 666 "$root/dev/zero" c 1 5
mknod -m 666 "$root/dev/full" c 1 7
mknod -m 666 "$root/dev/random" c 1 8
mknod -m 666 "$root/dev/urandom" c 1 9
mknod -m 666 "$root/dev/tty" c 5 0
mkdir -p "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=65536k shm "$root/dev/shm"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
echo "$name" > /proc/sys/kernel/hostname
ip link set lo up
exec chroot "$root" /usr/bin/env -C "$workdir" -i "$@"
"""


# -- the Dockerfile ---------------------------------------------------------------------------

class Stage:
    def __init__(self, line: str) -> None:
        self.base = line.split()[0]
        self.name = line.split()[2] if len(line.split()) > 2 else None
        self.instructions: list[tuple[str, str]] = []

    def all(self, keyword: str) -> list[str]:
        return [rest for kind, rest in self.instructions if kind == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def dockerfile() -> list[Stage]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in (ROOT / "Dockerfile").read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        kind, _, rest = line.strip().partition(" ")
        if kind.upper() == "FROM":
            stages.append(Stage(rest.strip()))
        elif stages:
            stages[-1].instructions.append((kind.upper(), rest.strip()))
    return stages


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def substitute(text: str, variables: dict) -> str:
    """Dockerfile variable substitution: $X, ${X} and ${X:-default}."""
    def one(match):
        name, default = match.group(1) or match.group(3), match.group(2)
        value = variables.get(name, "")
        return value if value or default is None else default
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", one, text)


def dockerignored():
    """A copytree ignore function that leaves out what .dockerignore keeps out of the build
    context (the last matching pattern wins; a pattern matches a path or any of its parents)."""
    import fnmatch

    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def excluded(relative: str) -> bool:
        parts = relative.split("/")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        verdict = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            glob = pattern.lstrip("!").rstrip("/")
            if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
                verdict = not negated
        return verdict

    def ignore(directory, names):
        base = Path(directory).relative_to(ROOT).as_posix()
        return {n for n in names if excluded(f"{base}/{n}" if base != "." else n)}
    return ignore


# -- building ------------------------------------------------------------------------------

def sh(script: str, *args, env=None, timeout=1800, what="step", check=True):
    """Run script in a mount and PID namespace of its own: its output, or a failure with it
    (check=False: the CompletedProcess)."""
    argv = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", script, "sh", *map(str, args)]
    result = subprocess.run(argv, env={**STEP_ENV, **(env or {})}, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=timeout)
    if not check:
        return result
    if result.returncode != 0:
        pytest.fail(f"{what} failed (exit {result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout + result.stderr


def host(argv, timeout=1800, what=None) -> str:
    result = subprocess.run([str(a) for a in argv], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{what or argv[0]} failed (exit {result.returncode}):\n"
                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout + result.stderr


def digest(*paths: Path, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for path in paths:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def remove(path: Path) -> None:
    if path.exists() or path.is_symlink():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def cached(name: str, key: str, build) -> Path:
    """CACHE/name-key, made by build(tmp_dir) when missing; older keys of name are pruned."""
    final = CACHE / f"{name}-{key}"
    if final.is_dir():
        return final
    tmp = CACHE / f".{name}-{key}.tmp"
    remove(tmp)
    build(tmp)
    tmp.rename(final)
    for old in CACHE.glob(f"{name}-*"):
        if old != final:
            remove(old)
    return final


def host_codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return ""
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    return match.group(1) if match else ""


def deb822_stanzas(text: str):
    stanza: dict[str, str] = {}
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza = {}
        elif ":" in line and not line[0].isspace():
            key, _, value = line.partition(":")
            stanza[key.strip().lower()] = value.strip()
    return


def apt_mirror() -> str:
    """The Debian mirror apt uses here (deb822 .sources first, then one-line lists)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in deb822_stanzas(path.read_text()):
            if ("deb" in stanza.get("types", "").split() and SUITE in stanza.get("suites", "").split()
                    and stanza.get("enabled", "yes") != "no"):
                return stanza["uris"].split()[0]
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if path.exists():
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    return "http://deb.debian.org/debian"


def build_base(tmp: Path, mirror: str) -> None:
    """FROM debian:bookworm-slim, as near as debootstrap gets."""
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    host([debootstrap, "--variant=minbase", SUITE, tmp, mirror], what=f"debootstrap {SUITE} from {mirror}")
    (tmp / "etc/dpkg/dpkg.cfg.d/docker").write_text(SLIM_EXCLUDES)
    if host_codename() == SUITE:
        # The same sources as the host's apt (security and updates suites included).
        sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
        if sources:
            for path in sources:
                shutil.copy(path, tmp / "etc/apt/sources.list.d" / path.name)
            (tmp / "etc/apt/sources.list").unlink(missing_ok=True)
    shutil.copy("/etc/resolv.conf", tmp / "etc/resolv.conf")


def copy_tree(src: Path, dst: Path) -> None:
    host(["cp", "-a", "--", src, dst], what=f"copy {src}")


def add_image_install(root: Path) -> None:
    target = root / "usr/local/sbin/image-install"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(IMAGE_INSTALL, target)
    target.chmod(0o755)


def build_runtime(tmp: Path, base: Path) -> None:
    copy_tree(base, tmp)
    add_image_install(tmp)
    sh(HELPERS + 'enter "$1"; exec chroot "$1" image-install runtime-packages', tmp,
       what="image-install runtime-packages")


def build_wheelhouse(tmp: Path) -> None:
    """What the builder's pip would fetch from PyPI, fetched by the host's pip (its own index
    configuration); the C extensions as source, so the builder compiles them."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    host([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", tmp,
          "-c", ROOT / "constraints.txt", "--no-binary", C_EXTENSIONS, *deps, "setuptools", "wheel"],
         what="pip download (the builder's wheelhouse)")


def build_builder(tmp: Path, base: Path, wheelhouse: Path) -> None:
    copy_tree(base, tmp)
    add_image_install(tmp)
    (tmp / "src").mkdir()
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp / "src" / name)
    sh(HELPERS + 'enter "$1"; exec chroot "$1" image-install builder-packages', tmp,
       what="image-install builder-packages")
    sh(HELPERS + 'enter "$1"; mkdir -p "$1/wheelhouse"; mount --bind "$2" "$1/wheelhouse"\n'
       'exec chroot "$1" image-install deps /src/pyproject.toml /src/constraints.txt',
       tmp, wheelhouse, env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheelhouse"},
       what="image-install deps")
    (tmp / "wheelhouse").rmdir()


class Image:
    """The built image: its layers (lowest last, as overlayfs lists them), the build log, and
    the runtime stage's ENV, ENTRYPOINT and CMD."""

    def __init__(self, layers: list[Path], log: str, timings: dict, env=None) -> None:
        self.layers = layers
        self.log = log
        self.timings = timings
        runtime = dockerfile()[-1]
        self.entrypoint = exec_form(runtime.last("ENTRYPOINT"))
        self.cmd = exec_form(runtime.last("CMD") or "[]")
        self.healthcheck = exec_form(runtime.last("HEALTHCHECK").split(" CMD ", 1)[1])
        self.workdir = runtime.last("WORKDIR") or "/"
        self.stopsignal = getattr(signal, runtime.last("STOPSIGNAL") or "SIGTERM")
        image_env = dict(e.split("=", 1) for line in runtime.all("ENV") for e in line.split())
        self.env = {**image_env, **(env or {})}

    @property
    def lowerdir(self) -> str:
        return ":".join(str(p) for p in self.layers)


def build_image(session: Path) -> Image:
    timings = {}
    CACHE.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build of the cache at a time
        started = time.monotonic()
        mirror = apt_mirror()
        base = cached("base", digest(extra=f"{SUITE} minbase {mirror} {host_codename()} v1"),
                      lambda tmp: build_base(tmp, mirror))
        runtime = cached("runtime", digest(IMAGE_INSTALL, extra=base.name), lambda tmp: build_runtime(tmp, base))
        wheelhouse = cached("wheelhouse", digest(ROOT / "constraints.txt", ROOT / "pyproject.toml"),
                            build_wheelhouse)
        builder = cached("builder", digest(IMAGE_INSTALL, ROOT / "constraints.txt", ROOT / "pyproject.toml",
                                           extra=base.name), lambda tmp: build_builder(tmp, base, wheelhouse))
        timings["cached layers"] = time.monotonic() - started

    # The steps that depend on the working tree: the builder's wheel and venv (in an overlay
    # of the builder layer), then the runtime's COPY --from=builder, finish, COPY srv/, srv.
    started = time.monotonic()
    src = session / "context"
    src.mkdir()
    for name in ("pyproject.toml", "constraints.txt", "README.md"):
        shutil.copy(ROOT / name, src / name)
    # The build context, as .dockerignore leaves it.
    shutil.copytree(ROOT / "fsm_init", src / "fsm_init", ignore=dockerignored())
    shutil.copytree(ROOT / "srv", session / "srv", ignore=dockerignored())
    layer = session / "layer"
    log = sh(HELPERS + r"""
context=$1 builder=$2 runtime=$3 session=$4 layer=$5 srv=$6
# builder stage
layer "$builder" "$session/builder" "$session/builder-root"
enter "$session/builder-root"
mkdir -p "$session/builder-root/wheelhouse" "$session/builder-root/context"
mount --bind "$7" "$session/builder-root/wheelhouse"
mount --bind "$context" "$session/builder-root/context"
chroot "$session/builder-root" sh -c 'cp -a /context/. /src/ && image-install wheel /src /dist &&
    image-install venv /dist /src/constraints.txt'
# runtime stage
layer "$runtime" "$layer" "$session/root"
cp -a "$session/builder-root/opt/fsm-init" "$session/root/opt/fsm-init"
enter "$session/root"
chroot "$session/root" image-install finish
cp -a "$srv/." "$session/root/srv/"
chroot "$session/root" image-install srv
""", src, builder, runtime, session, layer, session / "srv", wheelhouse,
             env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheelhouse"}, what="the image build")
    timings["image build"] = time.monotonic() - started
    return Image([layer, runtime], log, timings)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    for tool in ("unshare", "nsenter", "chroot", "ip"):
        assert shutil.which(tool), f"{tool} is missing (./scripts/setup installs it)"
    assert shutil.which("debootstrap") or Path("/usr/sbin/debootstrap").exists(), \
        "debootstrap is missing (./scripts/setup installs it)"
    built = build_image(tmp_path_factory.mktemp("image"))
    print("image timings:", {k: f"{v:.1f}s" for k, v in built.timings.items()})
    return built


def build_application(image: Image, workdir: Path, context_srv: Path, **build_args):
    """`docker build` of an application image whose Dockerfile is only `FROM fsm-init`: the
    base's ONBUILD triggers (ARG, ENV, COPY srv/ /srv/, RUN) in a layer of its own.  The
    Image, or the failed RUN's CompletedProcess."""
    variables, env, script = {}, {}, [HELPERS, 'layer "$1" "$2" "$3"; enter "$3"']
    for kind, rest in dockerfile()[-1].instructions:
        if kind != "ONBUILD":
            continue
        trigger, _, rest = rest.partition(" ")
        trigger = trigger.upper()
        if trigger == "ARG":
            name, _, default = rest.partition("=")
            variables[name] = str(build_args.get(name, default))
        elif trigger == "ENV":
            name, _, value = rest.partition("=")
            env[name] = substitute(value, {**variables, **env})
        elif trigger == "COPY":
            assert rest.split() == ["srv/", "/srv/"], rest
            script.append('cp -a "$4/." "$3/srv/"')
        elif trigger == "RUN":
            argv = exec_form(rest)
            assignments = " ".join(f"{k}='{v}'" for k, v in {**variables, **env}.items())
            script.append(f"chroot \"$3\" env {assignments} " + " ".join(argv))
        else:
            raise AssertionError(f"ONBUILD {trigger} is not emulated here: teach build_application")
    layer = workdir / "app-layer"
    result = sh("\n".join(script), image.lowerdir, layer, workdir / "app-root", context_srv, check=False)
    if result.returncode != 0:
        return result
    return Image([layer, *image.layers], result.stdout + result.stderr, {}, env={**image.env, **env})


# -- running -------------------------------------------------------------------------------

class Container:
    """One `docker run` of the image: fsm-init as PID 1 of fresh PID, mount, network, UTS
    and IPC namespaces, in an overlay of the image with a writable layer of its own."""

    def __init__(self, image: Image, workdir: Path, cmd=None, **env) -> None:
        self.image, self.workdir = image, workdir
        self.out_path, self.err_path = workdir / "stdout.log", workdir / "stderr.log"
        environment = {"PATH": DOCKER_PATH, "HOSTNAME": "fsm-image-test", "HOME": "/root", **image.env, **env}
        argv = ["unshare", "--pid", "--mount", "--net", "--uts", "--ipc", "--fork", "--kill-child",
                "sh", "-c", BOOT, "sh", image.lowerdir, workdir / "upper", workdir / "root", "fsm-image-test",
                image.workdir,
                *(f"{k}={v}" for k, v in environment.items()),
                *image.entrypoint, *(image.cmd if cmd is None else cmd)]
        self.proc = subprocess.Popen([str(a) for a in argv], env=STEP_ENV, stdin=subprocess.DEVNULL,
                                     stdout=open(self.out_path, "wb"), stderr=open(self.err_path, "wb"))
        self.pid1 = wait_for(lambda: first_child(self.proc.pid), what=f"PID 1 of the container\n{self.log}")
        # PID 1 is the set-up shell until it execs the entrypoint: python, from the image's venv.
        wait_for(lambda: self.cmdline(self.pid1).startswith("/opt/fsm-init/") or self.proc.poll() is not None,
                 what=f"fsm-init to be PID 1\n{self.log}")

    @property
    def log(self) -> str:
        return "--- stderr:\n" + self.err_path.read_text(errors="replace") + \
            "\n--- stdout:\n" + self.out_path.read_text(errors="replace")

    @staticmethod
    def cmdline(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    def exec(self, *argv, timeout=15) -> subprocess.CompletedProcess:
        """`docker exec`: the container's namespaces, root and working directory, a clean environment."""
        return subprocess.run(["nsenter", "-t", str(self.pid1), "-m", "-u", "-i", "-n", "-p", "-r", "-w",
                               "/usr/bin/env", "-i", f"PATH={DOCKER_PATH}", "HOME=/root", *argv],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict | None:
        result = self.exec("srvctl", "status", "--json")
        return json.loads(result.stdout) if result.returncode == 0 else None

    def wait_healthy(self, timeout=30) -> dict:
        """The service is up and a check cycle passed."""
        def healthy():
            assert self.proc.poll() is None, f"the container exited {self.proc.returncode}\n{self.log}"
            status = self.status()
            if status and status["state"] == "watch" and status["service_pid"] and status["checks"] \
                    and all(c["exit"] == 0 for c in status["checks"]):
                return status
            return None
        return wait_for(healthy, timeout, f"a passed check cycle\n{self.log}", interval=0.2)

    def namespace_processes(self) -> dict[int, str]:
        """Host pid -> command line of every live process in the container's PID namespace."""
        ns = os.readlink(f"/proc/{self.pid1}/ns/pid")
        found = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if os.readlink(f"/proc/{name}/ns/pid") == ns:
                        found[int(name)] = self.cmdline(int(name))
                except OSError:
                    pass
        return found

    def stop(self, timeout) -> tuple[int, float]:
        """`docker stop`: the STOPSIGNAL to PID 1; the exit status and how long it took."""
        started = time.monotonic()
        os.kill(self.pid1, self.image.stopsignal)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the container did not stop within {timeout}s\n{self.log}")
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def run(image, tmp_path):
    containers = []

    def start(cmd=None, of=None, **env):
        workdir = tmp_path / f"container-{len(containers)}"
        workdir.mkdir()
        container = Container(of or image, workdir, cmd, **env)
        containers.append(container)
        return container

    yield start
    for container in containers:
        container.kill()


# -- the tests -----------------------------------------------------------------------------

def test_this_test_builds_what_the_dockerfile_says():
    """The steps above mirror the Dockerfile: a change there must be made here too."""
    builder, runtime = dockerfile()
    assert builder.name == "builder" and builder.base == runtime.base == "${DEBIAN_IMAGE}"
    assert [exec_form(r) for r in builder.all("RUN")] == [
        ["image-install", "builder-packages"],
        ["image-install", "deps", "/src/pyproject.toml", "/src/constraints.txt"],
        ["image-install", "wheel", "/src", "/dist"],
        ["image-install", "venv", "/dist", "/src/constraints.txt"]]
    assert [exec_form(r) for r in runtime.all("RUN")] == [
        ["image-install", "runtime-packages"], ["image-install", "finish"], ["image-install", "srv"]]
    assert runtime.all("COPY") == ["scripts/image-install /usr/local/sbin/image-install",
                                   "--from=builder /opt/fsm-init /opt/fsm-init", "srv/ /srv/"]
    assert exec_form(runtime.last("ENTRYPOINT"))[-2:] == ["fsm-init", "--"]
    assert exec_form(runtime.last("CMD")) == []
    assert runtime.last("STOPSIGNAL") == "SIGTERM"
    assert exec_form(runtime.last("HEALTHCHECK").split(" CMD ", 1)[1]) == ["srvctl", "health"]
    assert "ONBUILD COPY srv/ /srv/" in [f"{k} {r}" for k, r in runtime.instructions]
    labels = " ".join(runtime.all("LABEL"))
    for key in ("title", "description", "version", "revision", "created", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    # The build context is an allow-list: everything the COPY lines name, nothing else.
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignored[0] == "*"
    assert {"!pyproject.toml", "!constraints.txt", "!README.md", "!fsm_init/", "!scripts/image-install",
            "!srv/"} <= set(ignored)
    ignore = dockerignored()
    assert ignore(str(ROOT), [".git", ".venv", "tests", "srv", "fsm_init", "README.md"]) == {".git", ".venv", "tests"}
    assert ignore(str(ROOT / "srv/web"), ["logs", "web-start.sh", "service.run.count", ".gitignore"]) == \
        {"logs", "service.run.count", ".gitignore"}


def test_the_build_ran_every_step(image):
    for line in ("built fsm_init-", "installed in /opt/fsm-init", "finished: fsm-init", "service directories in /srv"):
        assert line in image.log, f"{line!r} not in the build log:\n{image.log}"


def test_the_image_holds_what_services_rely_on_and_nothing_of_the_builder(run):
    container = run(SRVNAME="web")
    root = f"/proc/{container.pid1}/root"
    found = container.exec("dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n")
    installed = {line.split()[0] for line in found.stdout.splitlines() if line.split()[1:] == ["ii"]}
    assert set(RUNTIME_PACKAGES) <= installed, f"missing: {set(RUNTIME_PACKAGES) - installed}\n{found.stderr}"
    assert not set(BUILDER_ONLY) & installed, f"builder packages in the runtime: {set(BUILDER_ONLY) & installed}"
    # No SUID/SGID file is left anywhere in the image's file system.
    setid = subprocess.run(["find", root + "/", "-xdev", "-type", "f", "(", "-perm", "-4000", "-o", "-perm",
                            "-2000", ")"], capture_output=True, text=True)
    assert setid.stdout == "", f"SUID/SGID files: {setid.stdout}"
    assert Path(root, "usr/sbin/pppd").exists()  # one that Debian ships SUID root
    # srvctl, fsm-init, setuser and DoNothing on the PATH; DoNothing is sleep.
    where = container.exec("sh", "-c", 'for c in fsm-init srvctl setuser DoNothing; do command -v "$c"; done; '
                           'readlink -f "$(command -v DoNothing)"')
    assert where.stdout.split() == ["/usr/local/bin/fsm-init", "/usr/local/bin/srvctl", "/usr/local/bin/setuser",
                                    "/usr/local/bin/DoNothing", "/usr/bin/sleep"], where
    assert container.exec("DoNothing", "0").returncode == 0
    # my_init's /sbin/setuser, as baseimage-docker's run scripts call it.
    assert container.exec("/sbin/setuser", "nobody", "id", "-u").stdout.strip() == "65534"
    version = container.exec("fsm-init", "--version")
    assert version.returncode == 0 and version.stdout.startswith("fsm-init "), version
    # The virtualenv has its compiled dependencies and no installer.
    imports = container.exec("/opt/fsm-init/bin/python", "-c", "import prctl, netifaces, fsm_init; print('ok')")
    assert imports.stdout.strip() == "ok", imports
    assert not list(Path(root, "opt/fsm-init/bin").glob("pip*"))
    # Every shipped configuration validates, and the services' tools are there.
    for name in ("imginit", "demo", "web", "logship"):
        check = container.exec("fsm-init", "validate", f"/srv/{name}/workcfg.json")
        assert check.returncode == 0, (name, check.stderr)
    assert container.exec("jq", "-n", "1").returncode == 0
    tools = container.exec("sh", "-c", "for c in dropbear pppd pppoe iptables ipset nc sqlite3 sshpass inotifywait "
                           "killall fuser unzip ip ps pidof flock; do command -v $c || echo missing $c; done")
    assert "missing" not in tools.stdout, tools.stdout


def test_fsm_init_runs_a_service_as_pid_1_and_answers_inside(run):
    container = run(SRVNAME="web")
    status = container.wait_healthy()
    # Outside: PID 1 of the new PID namespace is fsm-init from the image's virtualenv, and
    # the service runs under its own name.
    assert "/opt/fsm-init/bin/python" in container.cmdline(container.pid1)
    nspid = Path(f"/proc/{container.pid1}/status").read_text().split("NSpid:")[1].split("\n")[0].split()
    assert nspid[-1] == "1", nspid
    processes = container.namespace_processes()
    assert any(cmd.startswith("web-httpd ") for cmd in processes.values()), processes
    assert any(cmd.startswith("logship-shipper ") for cmd in processes.values()), processes
    assert os.readlink(f"/proc/{container.pid1}/ns/net") != os.readlink("/proc/self/ns/net")
    # Inside: srvctl answers, the checks ran, the service answers HTTP in the container's
    # own network namespace, and the hostname is the container's.
    assert status["mode"] == "status-check" and status["target"] == "/srv/web", status
    assert {c["name"] for c in status["checks"]} >= {"PeriodicST-http", "PeriodicST-logship"}, status
    text = container.exec("srvctl", "status")
    assert text.returncode == 0 and "state:" in text.stdout, text
    page = container.exec("python3", "-c", "import urllib.request as u; "
                          "print(u.urlopen('http://127.0.0.1:8080/', timeout=5).status)")
    assert page.stdout.strip() == "200", page
    assert container.exec("hostname").stdout.strip() == "fsm-image-test"
    assert container.exec("pidof", "web-httpd").returncode == 0
    wait_for(lambda: Path(f"/proc/{container.pid1}/root/srv/web/htdocs/status.json").exists(),
             what=f"PeriodicMT-publish to write status.json\n{container.log}")


def test_srvctl_health_answers_for_a_healthy_service(run):
    container = run(SRVNAME="web")
    container.wait_healthy()
    health = container.exec(*container.image.healthcheck)
    if health.returncode == 2 and "usage" in (health.stderr + health.stdout).lower():
        pytest.skip("srvctl has no 'health' verb yet (the Dockerfile's HEALTHCHECK needs it)")
    assert health.returncode == 0, health


def test_sigterm_to_pid_1_stops_everything_within_the_grace_time(run):
    container = run(SRVNAME="web", FSM_INIT_STOP_GRACE=STOP_GRACE, FSM_INIT_LEFTOVER_GRACE=LEFTOVER_GRACE)
    container.wait_healthy()
    processes = container.namespace_processes()
    assert len(processes) >= 4, processes  # fsm-init, web-httpd, tee, logship-shipper, tail
    code, took = container.stop(timeout=STOP_GRACE + LEFTOVER_GRACE + 10)
    # web-httpd (python) does not handle SIGTERM: 128 + 15, the status docker reports.
    assert code == 143, f"exit {code}\n{container.log}"
    assert took < STOP_GRACE, f"took {took:.1f}s, the stop grace is {STOP_GRACE}s\n{container.log}"
    assert all(not Path(f"/proc/{pid}").exists() for pid in processes), processes


def test_a_command_replaces_workstart_and_its_status_is_the_containers(run):
    # `docker run IMAGE sh -c '...; exit 3'`: CMD is the service, in non-daemon mode (with
    # no SRVNAME no service directory is used: no delay, no firewall), and its status is
    # the container's, as with tini.
    container = run(cmd=["sh", "-c", "echo from the command; exit 3"])
    assert container.proc.wait(30) == 3, container.log
    assert "from the command" in container.out_path.read_text()


def test_the_image_has_my_inits_layout_and_dumps_the_container_environment(run):
    # What a baseimage-docker user's Dockerfile and scripts expect to find.
    script = ("stat -c '%n %a %G' /etc/container_environment /etc/container_environment.sh "
              "/etc/container_environment/GREETING; . /etc/container_environment.sh; echo \"greeting=$GREETING\"; "
              "ls -d /etc/my_init.d /etc/my_init.pre_shutdown.d /etc/my_init.post_shutdown.d /etc/service")
    container = run(cmd=["sh", "-c", script], GREETING="it's here")
    assert container.proc.wait(30) == 0, container.log
    out = container.out_path.read_text().splitlines()
    assert out[:3] == ["/etc/container_environment 750 docker_env", "/etc/container_environment.sh 640 docker_env",
                       "/etc/container_environment/GREETING 640 docker_env"], container.log
    assert "greeting=it's here" in out
    assert sorted(out[-4:]) == ["/etc/my_init.d", "/etc/my_init.post_shutdown.d", "/etc/my_init.pre_shutdown.d",
                                "/etc/service"]


def daemon_state(container, name: str) -> dict | None:
    status = container.status()
    return next((d for d in (status or {}).get("daemons", []) if d["name"] == name), None)


def test_cron_runs_jobs_with_the_container_environment_and_logs_their_output(run):
    # baseimage-docker runs cron beside every container; its users drop jobs into /etc/cron.d.
    container = run(SRVNAME="web", GREETING="hello from docker run")
    wait_for(lambda: (daemon_state(container, "cron") or {}).get("state") == "running",
             what=f"cron running\n{container.log}", interval=0.2)
    job = Path(f"/proc/{container.pid1}/root/etc/cron.d/fsm-test")  # docker exec ... > /etc/cron.d/fsm-test
    job.write_text('* * * * * root echo "root job: GREETING=$GREETING"\n'
                   '* * * * * nobody echo "nobody job: GREETING=$GREETING, uid $(id -u)"\n')
    job.chmod(0o644)
    # cron reads its tables and runs jobs at minute boundaries: at most a minute, once in the suite.
    output = re.compile(r"cron-job: (root|nobody) job: ")  # not cron's own "CMD (echo ...)" lines
    wait_for(lambda: len(set(output.findall(container.log))) == 2, timeout=125,
             what=f"the jobs' output in the container log\n{container.log}", interval=0.5)
    log = container.log
    assert "cron-job: root job: GREETING=hello from docker run\n" in log, log
    assert "cron-job: nobody job: GREETING=hello from docker run, uid 65534\n" in log, log
    assert "X-Cron-Env" not in log, log  # the mail headers list the job's environment: dropped
    assert daemon_state(container, "cron")["restarts"] == 0


def test_disable_cron_keeps_cron_down(run):
    container = run(SRVNAME="web", DISABLE_CRON="1")
    down = wait_for(lambda: (daemon_state(container, "cron") or {}).get("down_file") and daemon_state(container, "cron"),
                    what=f"cron known and down\n{container.log}", interval=0.2)
    assert down["state"] == "down" and down["pid"] is None
    assert "DISABLE_CRON is set: cron is not started" in container.log
    assert not any(cmd.startswith("/usr/sbin/cron") for cmd in container.namespace_processes().values())


def app_service(root: Path, name: str, workcfg: dict) -> Path:
    srv = root / "context-srv"
    service = srv / name
    service.mkdir(parents=True)
    (service / "workcfg.json").write_text(json.dumps(workcfg))
    (service / "hello.sh").write_text("#!/bin/bash\necho \"hello from $SRVNAME\"\nexec -a hello-app sleep 600\n")
    (service / "PeriodicST-alive").write_text("#!/bin/sh\npidof hello-app >/dev/null\n")
    for script in ("hello.sh", "PeriodicST-alive"):
        (service / script).chmod(0o755)
    return srv


def test_an_application_image_needs_only_from_and_its_srv_directory(image, run, tmp_path):
    # Dockerfile: `FROM fsm-init`; context: srv/hello/; docker build --build-arg SRVNAME=hello
    srv = app_service(tmp_path, "hello", {"initdelay": 0, "workstart": "./hello.sh", "workwatch": 2,
                                          "workintvl": 1, "firewall": {"enable": "no"}})
    app = build_application(image, tmp_path, srv, SRVNAME="hello")
    assert isinstance(app, Image), f"the ONBUILD steps failed:\n{app.stdout}\n{app.stderr}"
    assert "the container runs /srv/hello" in app.log, app.log
    assert app.env["SRVNAME"] == "hello"
    container = run(of=app)
    status = container.wait_healthy()
    assert status["target"] == "/srv/hello", status
    assert container.exec(*app.healthcheck).returncode == 0
    assert "hello from hello" in container.out_path.read_text()
    # The base image's own services are still there.
    assert container.exec("test", "-x", "/srv/web/web-start.sh").returncode == 0


def test_onbuild_refuses_a_broken_config_or_a_missing_service(image, tmp_path):
    srv = app_service(tmp_path, "broken", {"workstart": "./hello.sh", "workintvl": 0})
    strict = build_application(image, tmp_path / "strict", srv, SRVNAME="broken")
    assert not isinstance(strict, Image), "a config problem passed the ONBUILD check"
    assert "broken/workcfg.json" in strict.stderr and "workintvl" in strict.stderr, strict.stderr
    lenient = build_application(image, tmp_path / "warn", srv, SRVNAME="broken", FSM_INIT_VALIDATE="warn")
    assert isinstance(lenient, Image), f"{lenient.stdout}\n{lenient.stderr}"
    missing = build_application(image, tmp_path / "missing", srv, SRVNAME="nosuchservice")
    assert not isinstance(missing, Image) and "no /srv/nosuchservice" in missing.stderr, missing
