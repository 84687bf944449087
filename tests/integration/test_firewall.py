"""The firewall step with real packets between network namespaces.

fsm-init runs as PID 1 inside a "container" network namespace that the test creates;
its service is a Python listener on TCP and UDP ports (IPv4 and IPv6), permitted and
not.  A probe server in a "peer" namespace, joined by a veth pair, connects, sends
and pings.  Only these namespaces are targets; both are deleted after each test, also
when it fails; the host's own iptables rules are never read or touched.
"""

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import wait_for
from tests.integration.netns import (CONTAINER4, CONTAINER6, PEER4, NetnsRunning, NetPair, Prober, can_netns)

pytestmark = pytest.mark.skipif(not can_netns(), reason="needs root, ip netns, unshare and iptables (integration)")

# 16 ports: 9100 lands in the second multiport rule
TCP_PERMIT = "8080," + ",".join(str(p) for p in range(9000, 9014)) + ",9100"
UDP_PERMIT = "5300"
TCP_PORTS = (8080, 9100, 8081)  # 8081 has a listener but no permit
UDP_PORTS = (5300, 5301)

LISTENER = f"""\
import os, selectors, socket
sel = selectors.DefaultSelector()
for kind, ports in ((socket.SOCK_STREAM, {TCP_PORTS!r}), (socket.SOCK_DGRAM, {UDP_PORTS!r})):
    for port in ports:
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        if kind == socket.SOCK_STREAM:
            s.listen(16)
        sel.register(s, selectors.EVENT_READ, port)
with open("ready.tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename("ready.tmp", "ready")
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s.type == socket.SOCK_STREAM:
            conn, _ = s.accept()
            conn.sendall(b"hello %d" % key.data)
            conn.close()
        else:
            data, addr = s.recvfrom(100)
            s.sendto(b"echo %d " % key.data + data, addr)
"""


def workcfg(**firewall_keys) -> dict:
    return {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1,
            "firewall": {"tcpportpmt": TCP_PERMIT, "udpportpmt": UDP_PERMIT, **firewall_keys}}


@pytest.fixture
def net(sandbox):
    pair = NetPair()
    prober = None
    try:
        prober = Prober(pair)
        yield pair, prober
    finally:
        for running in sandbox.runs:
            running.kill()
        if prober:
            prober.close()
        pair.delete()


def service(sandbox, cfg: dict):
    return sandbox.service("app", cfg, run__sh=f"exec {sys.executable} ./listener.py\n",
                           listener__py=f"#!{sys.executable}\n" + LISTENER)


def start(sandbox, pair: NetPair, launcher=()) -> NetnsRunning:
    return NetnsRunning(sandbox, pair.container, sandbox.env(SRVNAME="app"), launcher)


def listener_pid(run: NetnsRunning, directory, other_than=None) -> int:
    def ready():
        try:
            pid = int((directory / "ready").read_text())
        except (OSError, ValueError):
            return None
        return pid if pid != other_than else None
    return wait_for(ready, what=f"the service's listener\n--- log:\n{run.log}")


def restart(run: NetnsRunning, directory, old_pid: int, applied_lines: int) -> int:
    assert run.srvctl("restart").returncode == 0
    pid = listener_pid(run, directory, other_than=old_pid)
    run.wait_log(r"firewall( applied|: permits unchanged)", count=applied_lines)
    return pid


def supporting(run: NetnsRunning) -> dict:
    return run.status()["supporting"]


def hooks(save: str) -> list[str]:
    return sorted(line for line in save.splitlines() if re.fullmatch(r"-A \S+ -j (SRV\w+|FSMINIT)", line))


EXPECTED_HOOKS = sorted(["-A INPUT -j SRVLCH", "-A INPUT -j FSMINIT", "-A FORWARD -j SRVFWD",
                         "-A PREROUTING -j SRVDNAT", "-A POSTROUTING -j SRVSNAT",
                         "-A FORWARD -j SRVMFW", "-A PREROUTING -j SRVMPE"])


# -- tests ------------------------------------------------------------------------------------------


def test_exactly_the_permits_pass(sandbox, net):
    pair, probe = net
    directory = service(sandbox, workcfg())
    run = start(sandbox, pair)
    listener_pid(run, directory)
    run.wait_log("firewall applied")
    assert supporting(run)["firewall"] == f"tcp {TCP_PERMIT} udp {UDP_PERMIT}; ipv4+ipv6"

    for host in (CONTAINER4, CONTAINER6):
        for port in (8080, 9100):  # first and second multiport rule
            got = probe.tcp(host, port)
            assert (got["result"], got["data"]) == ("connected", f"hello {port}"), (host, port, got)
        # a listener, but no permit: a TCP reset at once, not a time-out
        got = probe.tcp(host, 8081)
        assert got["result"] == "ECONNREFUSED" and got["elapsed"] < 1.0, (host, got)
        got = probe.udp(host, 5300)
        assert (got["result"], got["data"]) == ("reply", "echo 5300 ping"), (host, got)
        # not permitted: an ICMP error (host / administratively prohibited), at once
        got = probe.udp(host, 5301)
        assert got["result"] in ("EHOSTUNREACH", "EACCES") and got["elapsed"] < 1.0, (host, got)
        # icmppermit is off: echo requests are rejected, not answered
        got = probe.ping(host)
        assert got["result"] == "prohibited", (host, got)

    # what is in force is exactly the policy (IPv6 with neighbour discovery)
    v4, v6 = pair.save(), pair.save(v6=True)
    assert "-A INPUT -j REJECT --reject-with icmp-host-prohibited" in v4.splitlines()
    assert "-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j ACCEPT" in v6.splitlines()
    for save in (v4, v6):
        assert hooks(save) == EXPECTED_HOOKS
        assert ":INPUT DROP" in save and ":OUTPUT ACCEPT" in save
        assert len([line for line in save.splitlines() if line.startswith("-A FSMINIT -p tcp -m multiport")]) == 2
    assert len([line for line in run.log.splitlines() if "error" in line]) == 0, run.log


def test_service_rules_nat_and_hooks_survive_restarts(sandbox, net):
    pair, probe = net
    # Docker's embedded-DNS rules, and imginit's duplicated mangle hooks, before fsm-init starts
    pair.iptables("-t", "nat", "-N", "DOCKER_OUTPUT")
    pair.iptables("-t", "nat", "-A", "OUTPUT", "-d", "127.0.0.11/32", "-j", "DOCKER_OUTPUT")
    pair.iptables("-t", "nat", "-A", "DOCKER_OUTPUT", "-d", "127.0.0.11/32", "-p", "udp", "--dport", "53",
                  "-j", "DNAT", "--to-destination", "127.0.0.11:45000")
    pair.iptables("-t", "mangle", "-N", "SRVMFW")
    for _ in range(3):
        pair.iptables("-t", "mangle", "-I", "FORWARD", "1", "-j", "SRVMFW")
    docker = [line for line in pair.save().splitlines() if "DOCKER_OUTPUT" in line]

    directory = service(sandbox, workcfg())
    run = start(sandbox, pair)
    pid = listener_pid(run, directory)
    run.wait_log("firewall applied")
    assert probe.ping(CONTAINER4)["result"] == "prohibited"
    assert probe.tcp(CONTAINER6, 8081)["result"] == "ECONNREFUSED"

    # the service opens 8081 in its own chain, as a start script would
    for v6 in (False, True):
        pair.iptables("-A", "SRVLCH", "-p", "tcp", "--dport", "8081", "-j", "ACCEPT", v6=v6)
    assert probe.tcp(CONTAINER4, 8081)["result"] == "connected"

    # a restart with changed permits re-applies: SRVLCH is kept, ICMP now passes
    (directory / "workcfg.json").write_text(json.dumps(workcfg(icmppermit="yes")))
    pid = restart(run, directory, pid, 2)
    assert run.log.count("firewall applied") == 2
    assert supporting(run)["firewall"] == f"tcp {TCP_PERMIT} udp {UDP_PERMIT} icmp; ipv4+ipv6"
    for host in (CONTAINER4, CONTAINER6):
        assert probe.ping(host)["result"] == "reply", host
        got = probe.tcp(host, 8081)
        assert (got["result"], got["data"]) == ("connected", "hello 8081"), (host, got)
    after_change = pair.save(), pair.save(v6=True)

    # restarts with the same permits leave every rule as it is
    pid = restart(run, directory, pid, 3)
    pid = restart(run, directory, pid, 4)
    assert run.log.count("firewall: permits unchanged") == 2
    assert (pair.save(), pair.save(v6=True)) == after_change
    for save in after_change:
        assert hooks(save) == EXPECTED_HOOKS  # each hook once, the three mangle copies too
        assert "-A SRVLCH -p tcp -m tcp --dport 8081 -j ACCEPT" in save.splitlines()
    assert [line for line in after_change[0].splitlines() if "DOCKER_OUTPUT" in line] == docker

    # the step run again by a fresh fsm-init in the same namespace: identical iptables-save
    run.kill()
    run = start(sandbox, pair)
    listener_pid(run, directory, other_than=pid)
    run.wait_log("firewall applied")
    assert (pair.save(), pair.save(v6=True)) == after_change
    assert probe.tcp(CONTAINER4, 8081)["result"] == "connected"


def test_without_net_admin_the_step_is_unavailable_and_the_service_starts(sandbox, net):
    pair, probe = net
    directory = service(sandbox, workcfg())
    run = start(sandbox, pair, launcher=("setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin"))
    listener_pid(run, directory)
    status = wait_for(lambda: (s := run.status())["state"] == "watch" and s, what="state watch")
    assert status["supporting"]["firewall"].startswith("unavailable: no NET_ADMIN capability ("), status
    errors = [line for line in run.log.splitlines() if "error" in line]
    assert len(errors) == 1 and "error: firewall unavailable: no NET_ADMIN capability" in errors[0], run.log
    assert "inbound traffic is not filtered" in errors[0]
    # nothing was applied: the unpermitted port is reachable, the tables are untouched
    assert probe.tcp(CONTAINER4, 8081)["result"] == "connected"
    assert "FSMINIT" not in pair.save()


CONNECTS = r"""
import json, socket, sys
port, attempts = int(sys.argv[1]), int(sys.argv[2])
def connect(source):
    with socket.socket() as s:
        s.settimeout(3)
        s.bind((source, 0))
        try:
            s.connect((sys.argv[3], port))
            return "connected"
        except OSError as e:
            return type(e).__name__
flood = [connect(sys.argv[4]) for _ in range(attempts)]
print(json.dumps({"flood": flood, "other": connect(sys.argv[5])}))
"""


def test_the_ssh_rate_limit_is_per_source_address(net, tmp_path):
    """One client using up the limit (20 new connections, then 4 a minute) must not lock
    the others out.  The rules fsm-init renders for sshsrv.enable, applied in the test's
    own container namespace, with real connections from two addresses of the peer."""
    from fsm_init.config import schema as config_schema
    from fsm_init.network import iptables_rules

    pair, _ = net
    cfg = config_schema.validate({"sshsrv": {"enable": "yes", "sshport": 8022}})[0]
    policy = iptables_rules.policy(iptables_rules.Permits.from_config(cfg), iptables_rules.IPV4)
    now = iptables_rules.parse_save(pair.run(pair.container, "iptables-save").stdout)
    pair.run(pair.container, "iptables-restore", "--noflush", input=iptables_rules.restore_script(policy, now))
    listener = subprocess.Popen(["ip", "netns", "exec", pair.container, sys.executable, "-c",
                                 "import socket, time\ns = socket.create_server(('0.0.0.0', 8022), backlog=64)\n"
                                 "open('ssh-ready', 'w').close()\nwhile True: s.accept()[0].close()\n"],
                                cwd=tmp_path)
    try:
        wait_for(lambda: (tmp_path / "ssh-ready").exists(), what="the stand-in SSH listener")
        other = "10.199.0.3"
        pair.run(pair.peer, "ip", "addr", "add", f"{other}/24", "dev", "veth0")
        out = pair.run(pair.peer, sys.executable, "-c", CONNECTS, "8022", "26", CONTAINER4, PEER4, other).stdout
        result = json.loads(out)
    finally:
        listener.kill()
        listener.wait(5)
    assert result["flood"][:20] == ["connected"] * 20, result
    assert "connected" not in result["flood"][21:], "the limit did not hold for the flooding address"
    assert result["other"] == "connected", "one address's flood locked another out"
