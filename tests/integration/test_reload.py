"""`srvctl reload [--dry-run]` against fsm-init as PID 1 of a fresh PID namespace: each
change applied by its own step and nothing else touched.  The firewall with real packets
between network namespaces the test creates (tests/integration/netns.py), SSH with a real
dropbear (tests/integration/nsbox.py); every wait has a deadline.
"""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import FSM_INIT, lines, needs_pid_namespace, wait_for, wait_lines
from tests.integration import test_firewall as fw
from tests.integration import test_ssh as sshtest
from tests.integration.netns import CONTAINER4, CONTAINER6, can_netns
from tests.integration.nsbox import netns  # noqa: F401  (fixture)
from tests.integration.test_firewall import net  # noqa: F401  (fixture)
from tests.integration.test_ssh import client_key, host_keys, shadow_guard  # noqa: F401  (fixtures)

pytestmark = needs_pid_namespace

HOLD = "echo $$ >> pids\nwhile :; do sleep 1; done\n"


def start_time(run, ns_pid: int) -> int:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22)."""
    raw = Path(f"/proc/{run.host_pid(ns_pid)}/stat").read_bytes()
    return int(raw[raw.rfind(b")") + 2:].split()[19])


def write(directory: Path, cfg) -> None:
    (directory / "workcfg.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))


def reload(run, *args) -> subprocess.CompletedProcess:
    return run.srvctl("reload", *args)


# -- the firewall: a port, with real packets ----------------------------------------------------


@pytest.mark.skipif(not can_netns(), reason="needs root, ip netns, unshare and iptables (integration)")
def test_a_firewall_port_only_reapplies_the_rules_and_leaves_the_service_running(sandbox, net):  # noqa: F811
    pair, probe = net
    directory = fw.service(sandbox, fw.workcfg(tcpportpmt="8080", udpportpmt=""))
    run = fw.start(sandbox, pair)
    pid = fw.listener_pid(run, directory)
    run.wait_log("firewall applied")
    started = start_time(run, pid)
    for host in (CONTAINER4, CONTAINER6):
        assert probe.tcp(host, 8080)["result"] == "connected"
        assert probe.tcp(host, 8081)["result"] == "ECONNREFUSED"

    write(directory, fw.workcfg(tcpportpmt="8081", udpportpmt=""))
    dry = reload(run, "--dry-run")
    assert dry.returncode == 1, dry
    assert dry.stdout.splitlines() == [
        "would apply 1 change(s):", f"config: {directory}/workcfg.json read again",
        'firewall: firewall.tcpportpmt "8080" -> "8081": re-apply the rules (one iptables-restore per family, '
        "atomically)"]
    assert probe.tcp(CONTAINER4, 8080)["result"] == "connected"  # a dry run changes nothing
    assert run.log.count("firewall applied") == 1

    done = reload(run)
    assert done.returncode == 0, done
    assert done.stdout.splitlines()[0] == "applied 1 change(s):"
    for host in (CONTAINER4, CONTAINER6):
        got = probe.tcp(host, 8081)
        assert (got["result"], got["data"]) == ("connected", "hello 8081"), (host, got)
        got = probe.tcp(host, 8080)
        assert got["result"] == "ECONNREFUSED" and got["elapsed"] < 1.0, (host, got)
    status = run.status()
    assert status["service_pid"] == pid and status["run_count"] == 1 and status["state"] == "watch"
    assert start_time(run, pid) == started
    assert status["supporting"]["firewall"] == "tcp 8081 udp -; ipv4+ipv6"
    assert run.log.count("firewall applied") == 2
    for save in (pair.save(), pair.save(v6=True)):
        permits = [line for line in save.splitlines() if "-m multiport --dports" in line]
        assert len(permits) == 1 and "--dports 8081 " in permits[0], permits

    again = reload(run, "--dry-run")
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == "no change: nothing to apply", again
    history = run.srvctl("history").stdout
    assert re.search(r"watch -> watch \(reload\): srvctl reload: firewall: firewall.tcpportpmt", history), history
    assert "last reload at" in run.srvctl("why").stdout


# -- sshsrv: dropbear restarted, the service not ---------------------------------------------------


@pytest.mark.skipif(sshtest.pytestmark[1].args[0], reason="needs dropbear, ssh and friends")
def test_sshsrv_only_restarts_dropbear(sandbox, netns, client_key, host_keys, shadow_guard):  # noqa: F811
    ns = netns()
    pubkey = client_key.with_suffix(".pub").read_text().strip()
    cfg = sshtest.workcfg(sshport=2201, password="no", authkeys=[pubkey])
    run = sshtest.start(sandbox, ns, cfg, keys=host_keys)
    sshtest.wait_login(ns, 2201, key=client_key)
    dropbear = sshtest.dropbear_pid(run)
    service = wait_for(lambda: run.status()["service_pid"], what="the service")
    started = start_time(run, service)

    write(sandbox.srv / "app", sshtest.workcfg(sshport=2202, password="no", authkeys=[pubkey]))
    done = reload(run)
    assert done.returncode == 0, done
    assert "ssh: sshsrv.sshport 2201 -> 2202: restart dropbear" in done.stdout.splitlines()
    sshtest.wait_login(ns, 2202, key=client_key)
    assert sshtest.dropbear_pid(run) not in (None, dropbear)
    assert sshtest.ssh(ns, 2201, key=client_key).returncode == 255  # the old port: connection refused
    status = run.status()
    assert status["service_pid"] == service and status["run_count"] == 1
    assert start_time(run, service) == started
    # a change that is not sshsrv's leaves dropbear alone
    restarted = sshtest.dropbear_pid(run)
    write(sandbox.srv / "app", dict(sshtest.workcfg(sshport=2202, password="no", authkeys=[pubkey]), workintvl=2))
    done = reload(run)
    assert done.returncode == 0 and done.stdout.splitlines()[-1].startswith("checks: workintvl 1 -> 2"), done
    assert sshtest.dropbear_pid(run) == restarted and run.status()["service_pid"] == service


# -- the service's own keys ------------------------------------------------------------------------


def test_workstart_only_restarts_the_service_once_and_dry_run_exit_codes(sandbox):
    cfg = {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1}
    directory = sandbox.service("app", cfg, run__sh=HOLD)
    run = sandbox.start(SRVNAME="app")
    first = int(wait_lines(directory / "pids", 1)[0])
    run.wait_state("watch")
    nothing = reload(run, "--dry-run")
    assert nothing.returncode == 0 and nothing.stdout.splitlines()[-1] == "no change: nothing to apply", nothing

    write(directory, dict(cfg, workstart="./run.sh --second"))
    dry = reload(run, "--dry-run")
    assert dry.returncode == 1
    assert dry.stdout.splitlines()[-1] == 'service: workstart "./run.sh" -> "./run.sh --second": restart the service'
    assert run.status()["run_count"] == 1 and lines(directory / "pids") == [str(first)]

    done = reload(run)
    assert done.returncode == 0, done
    second = int(wait_lines(directory / "pids", 2)[1])
    status = wait_for(lambda: (s := run.status())["state"] == "watch" and s["service_pid"] == second and s,
                      what="the restarted service")
    assert status["run_count"] == 2 and second != first
    assert status["last_transition"]["cause"] == f"service started (pid {second}, run 2)"
    assert reload(run, "--dry-run").returncode == 0  # the new file is what runs now
    entries = [json.loads(line) for line in (sandbox.run_dir / "journal.jsonl").read_text().splitlines()]
    reloads = [e for e in entries if e["trigger"] == "reload"]
    assert len(reloads) == 1 and "workstart" in reloads[0]["cause"]
    restarts = [e for e in entries if e["trigger"] == "restart_request"]
    assert len(restarts) == 1 and restarts[0]["cause"].startswith("srvctl reload: workstart")
    assert lines(directory / "pids") == [str(first), str(second)]


def test_workwatch_only_takes_effect_from_the_next_cycle_without_a_restart(sandbox):
    cfg = {"initdelay": 0, "workstart": "./run.sh", "workwatch": 6, "workintvl": 1}
    check = "python3 -c 'import time; print(time.monotonic())' >> cycles\n"
    directory = sandbox.service("app", cfg, run__sh=HOLD, PeriodicST_a=check)
    run = sandbox.start(SRVNAME="app")
    wait_lines(directory / "cycles", 1)
    service = run.status()["service_pid"]

    write(directory, dict(cfg, workwatch=1))
    asked = time.monotonic()
    done = reload(run)
    assert done.returncode == 0, done
    assert done.stdout.splitlines()[-1] == "checks: workwatch 6 -> 1: from the next cycle, without a restart"
    before = len(lines(directory / "cycles"))
    wait_lines(directory / "cycles", before + 3)
    ticks = [float(t) for t in lines(directory / "cycles")[before:before + 3]]
    assert ticks[0] - asked < 2.0, ticks  # not the ~6 s the old period had left
    for a, b in zip(ticks, ticks[1:], strict=False):
        assert 0.5 < b - a < 1.9, ticks
    status = run.status()
    assert status["service_pid"] == service and status["run_count"] == 1 and status["period"] == 1
    assert lines(directory / "pids") == [str(service)]


def unchanging(status: dict) -> dict:
    """srvctl status without what moves with time alone (ages, and readiness as health)."""
    kept = {k: v for k, v in status.items() if k not in ("since", "uptime", "log_dropped", "healthy")}
    moving = ("ready", "reason", "ready_for")
    kept["readiness"] = {k: v for k, v in kept.get("readiness", {}).items() if k not in moving}
    return kept


def test_a_broken_file_is_refused_whole_with_validates_words(sandbox):
    cfg = {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1}
    directory = sandbox.service("app", cfg, run__sh=HOLD)
    run = sandbox.start(SRVNAME="app")
    pid = int(wait_lines(directory / "pids", 1)[0])
    run.wait_state("watch")
    before = unchanging(run.status())
    path = directory / "workcfg.json"

    # a key with a bad value, beside a good change: the whole file is refused
    write(directory, dict(cfg, workstart="./other.sh", workintvl="soon"))
    validate = subprocess.run([*FSM_INIT, "validate", str(path)], capture_output=True, text=True,
                              env=sandbox.env(), timeout=30)
    problems = [line for line in validate.stderr.splitlines() if line.startswith("problem:")]
    assert validate.returncode == 1 and problems
    for args in ((), ("--dry-run",)):
        refused = reload(run, *args)
        assert refused.returncode == 1
        assert refused.stdout.splitlines() == ["configuration refused, the running one is kept:", *problems]
    # not JSON at all
    write(directory, '{"workstart": "./other.sh",')
    validate = subprocess.run([*FSM_INIT, "validate", str(path)], capture_output=True, text=True,
                              env=sandbox.env(), timeout=30)
    refused = reload(run)
    assert refused.returncode == 1
    assert refused.stdout.splitlines() == ["configuration refused, the running one is kept:",
                                           validate.stderr.strip()]
    assert validate.stderr.startswith(f"error: {path} is not valid JSON")

    after = unchanging(run.status())
    assert after == before and after["service_pid"] == pid
    assert lines(directory / "pids") == [str(pid)]
    assert run.log.count("srvctl reload: configuration refused") == 2  # a dry run says nothing in the log
    write(directory, cfg)
    assert reload(run, "--dry-run").returncode == 0  # what runs is still the first file


def test_a_daemon_whose_run_changed_is_restarted_alone(sandbox):
    cfg = {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1}
    directory = sandbox.service("app", cfg, run__sh=HOLD)
    for name in ("alpha", "beta"):
        sandbox.etc(f"service/{name}/run", "exec sleep 1000\n")
    run = sandbox.start(SRVNAME="app")
    run.wait_state("watch")

    def daemons():
        return {d["name"]: d["pid"] for d in run.status()["daemons"]}
    before = wait_for(lambda: all(daemons().values()) and daemons(), what="both daemons")
    service = run.status()["service_pid"]
    # a new run for alpha, written inside the container (a change below /etc/service/alpha
    # is no change of /etc/service itself: only a reload picks it up)
    subprocess.run(["nsenter", "-t", str(run.pid1), "-m", "sh", "-c",
                    "printf '#!/bin/sh\\nexec sleep 2000\\n' > /etc/service/alpha/run.new && "
                    "chmod 755 /etc/service/alpha/run.new && mv /etc/service/alpha/run.new /etc/service/alpha/run"],
                   check=True, timeout=15)
    dry = reload(run, "--dry-run")
    assert dry.returncode == 1 and dry.stdout.splitlines()[-1] == "daemons: run changed alpha: restart it", dry
    assert daemons() == before
    assert reload(run).returncode == 0
    after = wait_for(lambda: (d := daemons())["alpha"] not in (None, before["alpha"]) and d, what="alpha restarted")
    assert after["beta"] == before["beta"]
    status = run.status()
    assert status["service_pid"] == service and status["run_count"] == 1
    assert lines(directory / "pids") == [str(service)]
    assert reload(run, "--dry-run").returncode == 0


# -- the environment the service gets ----------------------------------------------------------------


def test_a_changed_container_environment_restarts_the_service_with_it(sandbox):
    env_dir = sandbox.root / "container_environment"
    env_dir.mkdir(mode=0o755)
    (env_dir / "GREETING").write_text("one\n")
    cfg = {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1}
    directory = sandbox.service("app", cfg, run__sh='echo "$GREETING" >> seen\n' + HOLD)
    run = sandbox.start(SRVNAME="app")
    first = int(wait_lines(directory / "pids", 1)[0])
    run.wait_state("watch")
    # fsm-init dumped its whole environment there at the start: that is no change
    nothing = reload(run, "--dry-run")
    assert nothing.returncode == 0 and nothing.stdout.splitlines()[-1] == "no change: nothing to apply", nothing

    (env_dir / "GREETING").write_text("two-secret\n")
    dry = reload(run, "--dry-run")
    assert dry.returncode == 1
    assert dry.stdout.splitlines()[-1] == f"service: environment GREETING changed ({env_dir}): restart the service"
    assert "two-secret" not in dry.stdout and lines(directory / "seen") == ["one"]
    assert reload(run).returncode == 0
    second = int(wait_lines(directory / "pids", 2)[1])
    assert second != first and lines(directory / "seen") == ["one", "two-secret"]
    assert reload(run, "--dry-run").returncode == 0
    assert "two-secret" not in (sandbox.run_dir / "journal.jsonl").read_text()
