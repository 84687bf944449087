"""Network namespaces for integration tests: a "container" and a "peer" joined by a veth pair.

Only namespaces created here are ever targets: every command that touches iptables
or addresses runs under ``ip netns exec`` in one of them, never in the host's own
network namespace.  ``NetPair.delete`` removes both (the veth pair goes with them).

``NetnsRunning`` is conftest's ``Running`` with fsm-init started as PID 1 of a fresh
PID namespace inside the container namespace.  ``Prober`` is a small probe server in
the peer namespace that answers TCP, UDP and ICMP echo probes with their outcome as
seen by a client there ("connected", "ECONNREFUSED", "reply", "prohibited", ...).
"""

import itertools
import json
import os
import shutil
import subprocess
import sys

from tests.conftest import FSM_INIT, Running, first_child, wait_for

_names = itertools.count()

CONTAINER4, PEER4 = "10.199.0.1", "10.199.0.2"
CONTAINER6, PEER6 = "fd00:199::1", "fd00:199::2"


def can_netns() -> bool:
    tools = ("ip", "unshare", "setpriv", "iptables-restore", "ip6tables-restore")
    if os.geteuid() != 0 or not all(shutil.which(p) for p in tools):
        return False
    name = f"fsmfw-probe-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        return False
    try:
        return subprocess.run(["ip", "netns", "exec", name, "iptables-save"], capture_output=True).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20, input=input)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


class NetPair:
    """Two fresh network namespaces and a veth pair between them, IPv4 and IPv6."""

    def __init__(self) -> None:
        tag = f"fsmfw-{os.getpid()}-{next(_names)}"
        self.container, self.peer = f"{tag}-c", f"{tag}-p"
        self.created: list[str] = []
        try:
            for ns in (self.container, self.peer):
                sh("ip", "netns", "add", ns)
                self.created.append(ns)
                # no duplicate address detection: addresses are usable at once
                self.run(ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0",
                         "net.ipv6.conf.default.accept_dad=0")
                self.run(ns, "ip", "link", "set", "lo", "up")
            sh("ip", "link", "add", "veth0", "netns", self.container, "type", "veth", "peer", "name", "veth0",
               "netns", self.peer)
            for ns, v4, v6 in ((self.container, CONTAINER4, CONTAINER6), (self.peer, PEER4, PEER6)):
                self.run(ns, "ip", "addr", "add", f"{v4}/24", "dev", "veth0")
                self.run(ns, "ip", "-6", "addr", "add", f"{v6}/64", "dev", "veth0", "nodad")
                self.run(ns, "ip", "link", "set", "veth0", "up")
        except BaseException:
            self.delete()
            raise

    def run(self, ns: str, *argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *argv, check=check, input=input)

    def iptables(self, *argv: str, v6: bool = False) -> subprocess.CompletedProcess:
        """iptables (ip6tables) in the container namespace."""
        return self.run(self.container, "ip6tables" if v6 else "iptables", "-w", "5", *argv)

    def save(self, v6: bool = False) -> str:
        """iptables-save of the container namespace, without comments and counters."""
        out = self.run(self.container, "ip6tables-save" if v6 else "iptables-save").stdout
        lines = [line for line in out.splitlines() if not line.startswith("#")]
        return "\n".join(line.rsplit(" [", 1)[0] if line.startswith(":") else line for line in lines)

    def delete(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created = []


class NetnsRunning(Running):
    """fsm-init as PID 1 of a fresh PID namespace inside a network namespace;
    launcher is put between unshare and fsm-init (e.g. setpriv dropping a capability)."""

    def __init__(self, sandbox, netns: str, env: dict, launcher=()) -> None:
        self.sandbox = sandbox
        number = len(sandbox.runs)
        self.out_path = sandbox.root / f"out-{number}.log"
        self.err_path = sandbox.root / f"err-{number}.log"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, "unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                 *launcher, *FSM_INIT],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=sandbox.root)
        sandbox.runs.append(self)
        self.pid1 = wait_for(lambda: first_child(self.proc.pid), what="fsm-init to start")


PROBE_SERVER = r'''
import errno, json, os, select, socket, struct, sys, time

def checksum(data):
    data += b"\0" * (len(data) % 2)
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF

def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET

def failure(e):
    return errno.errorcode.get(e.errno, str(e)) if e.errno else "timeout"

def tcp(host, port, timeout):
    with socket.socket(family(host), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            return "connected", s.recv(100).decode(errors="replace")
        except socket.timeout:
            return "timeout", ""
        except OSError as e:
            return failure(e), ""

def udp(host, port, timeout):
    with socket.socket(family(host), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            s.send(b"ping")
            return "reply", s.recv(100).decode(errors="replace")
        except socket.timeout:
            return "timeout", ""
        except OSError as e:
            return failure(e), ""

def ping(host, timeout, ident=os.getpid() & 0xFFFF):
    v6 = ":" in host
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    request, reply, unreachable = (128, 129, 1) if v6 else (8, 0, 3)
    with socket.socket(family(host), socket.SOCK_RAW, proto) as s:
        header = struct.pack("!BBHHH", request, 0, 0, ident, 1) + b"fsm-init"
        if not v6:  # the kernel sums ICMPv6 itself
            header = header[:2] + struct.pack("!H", checksum(header)) + header[4:]
        s.sendto(header, (host, 0))
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            data, addr = s.recvfrom(2000)
            if not v6:
                data = data[(data[0] & 0x0F) * 4:]
            kind, code = data[0], data[1]
            if kind == reply and struct.unpack("!H", data[4:6])[0] == ident:
                return "reply", ""
            if kind == unreachable:
                inner = data[8:]
                inner = inner[40:] if v6 else inner[(inner[0] & 0x0F) * 4:]
                if inner[:1] == bytes([request]) and struct.unpack("!H", inner[4:6])[0] == ident:
                    return "prohibited", f"code {code}"
        return "timeout", ""

for line in sys.stdin:
    kind, host, *rest = line.split()
    start = time.monotonic()
    if kind == "tcp":
        result, data = tcp(host, int(rest[0]), float(rest[1]))
    elif kind == "udp":
        result, data = udp(host, int(rest[0]), float(rest[1]))
    else:
        result, data = ping(host, float(rest[0]))
    print(json.dumps({"result": result, "data": data, "elapsed": time.monotonic() - start}), flush=True)
'''


class Prober:
    """Probes sent from the peer namespace, one at a time; each answers within its own timeout."""

    def __init__(self, pair: NetPair) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", pair.peer, sys.executable, "-u", "-c", PROBE_SERVER],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _ask(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise AssertionError(f"the probe server died ({self.proc.wait()}) on {line!r}")
        return json.loads(answer)

    def tcp(self, host: str, port: int, timeout: float = 3.0) -> dict:
        return self._ask(f"tcp {host} {port} {timeout}")

    def udp(self, host: str, port: int, timeout: float = 2.0) -> dict:
        return self._ask(f"udp {host} {port} {timeout}")

    def ping(self, host: str, timeout: float = 2.0) -> dict:
        return self._ask(f"ping {host} {timeout}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
