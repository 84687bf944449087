"""A "container" for the network-step tests: fsm-init as PID 1 of a fresh PID namespace,
inside a network namespace the test created and a private mount namespace where what
fsm-init changes on the machine is isolated:

* /etc is an overlay (chpasswd's rename of /etc/shadow lands in a scratch tmpfs: the
  machine's /etc/shadow is never written), /root is an empty tmpfs (root's ~/.ssh);
* /sys is sysfs mounted again, so /sys/class/net lists the namespace's interfaces;
* optionally /dev is an overlay with a /dev/ppp of the test's choosing, and files of
  the test are bound over paths (a stand-in pppd, a resolv.conf).

Network namespaces are named ``fsmt-<pid>-<n>`` and deleted by the fixture that made
them, also when a test fails.
"""

import itertools
import os
import subprocess
from pathlib import Path

import pytest

WRAPPER = r"""#!/bin/sh
# PID 1 of the test's PID namespace until it execs fsm-init; private mount namespace
# (unshare --mount-proc), the test's network namespace (nsenter --net).
set -eu
scratch=$1; shift
mount --make-rprivate /
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0700 tmpfs "$scratch"
mkdir "$scratch/etc" "$scratch/etc.work" "$scratch/dev" "$scratch/dev.work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$scratch/etc,workdir=$scratch/etc.work" /etc
mount -t tmpfs -o mode=0700 tmpfs /root
while [ $# -gt 0 ]; do
    case $1 in
    --) shift; break ;;
    --ppp=*)
        mount -t overlay overlay -o "lowerdir=/dev,upperdir=$scratch/dev,workdir=$scratch/dev.work" /dev
        rm -f /dev/ppp
        case ${1#--ppp=} in
        openable) touch /dev/ppp; mount --bind /dev/null /dev/ppp ;;
        nodriver) mknod /dev/ppp c 108 0 ;;
        esac ;;
    --bind=*) bind=${1#--bind=}; mount --bind "${bind%%:*}" "${bind#*:}" ;;
    *) echo "nsbox wrapper: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
# fsm-init's log in append mode, as a pipe would be: the lines pppd's hooks append
# (through /proc/1/fd/2) are not overwritten by fsm-init's next write.
exec "$@" 2>>/proc/self/fd/2
"""

_names = itertools.count(1)


def sh(*argv, check=True, timeout=30, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed ({result.returncode}): {result.stderr}{result.stdout}")
    return result


class NetNS:
    """A named network namespace with its loopback up."""

    def __init__(self) -> None:
        self.name = f"fsmt-{os.getpid()}-{next(_names)}"
        sh("ip", "netns", "add", self.name)
        sh("ip", "-n", self.name, "link", "set", "lo", "up")

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def run(self, *argv, check=True, **kwargs) -> subprocess.CompletedProcess:
        """argv inside the namespace (ip netns exec also mounts its own /sys)."""
        return sh("ip", "netns", "exec", self.name, *argv, check=check, **kwargs)

    def popen(self, *argv, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *map(str, argv)], **kwargs)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest.fixture
def netns():
    """make() -> a new NetNS; all of them are deleted afterwards."""
    made: list[NetNS] = []

    def make() -> NetNS:
        made.append(NetNS())
        return made[-1]

    yield make
    for ns in reversed(made):
        ns.delete()


def launcher(sandbox, ns: NetNS, *options: str) -> tuple[str, ...]:
    """What goes between ``unshare --pid --fork --mount-proc`` and ``python -m fsm_init``."""
    wrapper = sandbox.root / "nsbox-wrapper.sh"
    if not wrapper.exists():
        wrapper.write_text(WRAPPER)
    scratch = sandbox.root / f"nsbox-scratch-{len(sandbox.runs)}"
    scratch.mkdir()
    return ("nsenter", f"--net={ns.path}", "/bin/sh", str(wrapper), str(scratch), *options, "--")


def in_namespaces_of(pid: int, *argv, check=True, **kwargs) -> subprocess.CompletedProcess:
    """argv in the network and mount namespaces of pid (fsm-init's: it sees the overlay /etc)."""
    return sh("nsenter", "-t", pid, "-n", "-m", *argv, check=check, **kwargs)


def host_file_digest(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
