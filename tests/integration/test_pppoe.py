"""The pppoe step for real, as far as this machine allows.

This machine's kernel has no PPP driver (a /dev/ppp char device 108,0 gives ENXIO), so
no PPP link can come up here.  What is real: a pppoe-server (Debian package pppoe)
answering PPPoE discovery in a peer network namespace, the interface detection (in
fsm-init's step and in ``python -m fsm_init.network.dial detect``) choosing among several
veths, fsm-init as PID 1 starting and restarting the dial-up, the real pppd refusing
for want of kernel support, and the ip-up/ip-down hooks changing a real namespace's
routing table and a bind-mounted resolv.conf.  What stands in: pppd's link phase, by
a recording script bound over /usr/sbin/pppd inside the container's mount namespace
(it records its argv and options file, then runs the ip-up hook pppd would run).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, needs_pid_namespace, wait_for
from tests.integration.nsbox import WRAPPER, launcher, netns, sh  # noqa: F401  (netns: a fixture)

TOOLS = ("pppd", "pppoe-server", "pppoe-discovery", "ip", "nsenter")
pytestmark = [needs_pid_namespace,
              pytest.mark.skipif(any(shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
                                     for t in TOOLS), reason=f"needs {', '.join(TOOLS)}")]

AC_NAME = "fsm-test-ac"
PASSWORD = 'dial "pw" with\\ spaces # and\ttab'
HOLD = "while :; do sleep 1; done\n"
RESOLV = "# the container's own\nnameserver 198.51.100.1\n"

STAND_IN = r"""#!/bin/sh
# A recording stand-in for pppd (the kernel here has no PPP driver): records what it
# was given, then plays pppd's part of a link: an interface, the ip-up hook, and on
# SIGTERM the ip-down hook.
rec=@REC@
if [ "$1" = --version ]; then echo "pppd version @VERSION@" >&2; exit 0; fi
prev= up= down= param= opts= dev=
for a in "$@"; do
    case $prev in
    ip-up-script) up=$a ;; ip-down-script) down=$a ;; ipparam) param=$a ;; file) opts=$a ;;
    esac
    prev=$a dev=$a
done
n=$$
printf '%s\n' "$0" "$@" > "$rec/argv.$n"
stat -c '%a' "$opts" "$(dirname "$opts")" > "$rec/modes.$n"
cat "$opts" > "$rec/options.$n"
ip link del inet0 2>/dev/null
ip link add inet0 type veth peer name inet0-peer && ip link set inet0-peer up &&
    ip addr add 10.64.0.2 peer 10.64.0.1 dev inet0 && ip link set inet0 up
export IFNAME=inet0 IPLOCAL=10.64.0.2 IPREMOTE=10.64.0.1 DNS1=192.0.2.53 DNS2=192.0.2.54
"$up" inet0 "${dev#nic-}" 0 10.64.0.2 10.64.0.1 "$param" </dev/null >/dev/null 2>&1
echo up > "$rec/state.$n"
stop() {
    CONNECT_TIME=3 "$down" inet0 "${dev#nic-}" 0 10.64.0.2 10.64.0.1 "$param" </dev/null >/dev/null 2>&1
    ip link del inet0
    echo down > "$rec/state.$n"
    exit 0
}
trap stop TERM
while :; do sleep 0.1; done
"""


@pytest.fixture
def lan(netns):
    """A container namespace C with three veths: c-quiet (a peer that never answers),
    c-ac (the access concentrator's side, no server yet) and c-down (its peer is down)."""
    c, ac, quiet = netns(), netns(), netns()
    for mine, theirs, peer, up in (("c-quiet", "q-quiet", quiet, True), ("c-ac", "a-ac", ac, True),
                                   ("c-down", "q-down", quiet, False)):
        sh("ip", "link", "add", mine, "netns", c.name, "type", "veth", "peer", "name", theirs, "netns", peer.name)
        sh("ip", "-n", c.name, "link", "set", mine, "up")
        if up:
            sh("ip", "-n", peer.name, "link", "set", theirs, "up")
    servers = []

    def serve(name=AC_NAME):
        servers.append(ac.popen("pppoe-server", "-F", "-I", "a-ac", "-C", name,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    yield c, serve
    for server in servers:
        server.terminate()
        server.wait(5)


def dial_detect(ns) -> subprocess.CompletedProcess:
    return ns.run(sys.executable, "-m", "fsm_init.network.dial", "detect", check=False,
                  env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_detect_lists_the_interface_where_the_access_concentrator_answers(lan):
    c, serve = lan
    nothing = dial_detect(c)
    assert nothing.returncode == 1 and nothing.stdout == ""
    assert "no access concentrator answered on: c-quiet, c-ac" in nothing.stderr  # c-down has no link
    serve()
    found = wait_for(lambda: (r := dial_detect(c)).returncode == 0 and r, 15, "the access concentrator")
    assert found.stdout == f"c-ac\t{AC_NAME}\n"


def test_a_hostile_access_concentrator_name_is_shown_escaped(lan):
    # The name comes from the network: any host on the segment can answer with escapes.
    c, serve = lan
    serve("isp\x1b]0;pwned\x07\x1b[2K\x7fx")
    found = wait_for(lambda: (r := dial_detect(c)).returncode == 0 and r, 15, "the access concentrator")
    assert found.stdout == "c-ac\tisp\\x1b]0;pwned\\x07\\x1b[2K\\x7fx\n"


def pppd_version() -> str:
    out = sh("pppd", "--version", check=False)
    return re.search(r"version (\S+)", out.stdout + out.stderr).group(1)


def dialcfg(**dial) -> dict:
    return {"initdelay": 0, "workstart": "./run.sh", "workwatch": 1, "workintvl": 1, "firewall": {"enable": "no"},
            "inetdail": {"enable": "yes", "dialuser": "user@isp", "dialpswd": PASSWORD, **dial}}


@pytest.mark.parametrize("device, reason", [
    ("nodriver", "the kernel has no PPP support: opening /dev/ppp gives 'No such device or address'"),
    ("missing", "there is no /dev/ppp: give the container the device"),
])
def test_without_kernel_ppp_support_the_step_is_unavailable_and_the_service_starts(sandbox, netns, device, reason):
    ns = netns()
    d = sandbox.service("app", dialcfg(dialintf="eth9"), run__sh="echo started > started\n" + HOLD)
    run = sandbox.start(launcher=launcher(sandbox, ns, f"--ppp={device}"), SRVNAME="app")
    wait_for(lambda: (d / "started").exists(), 15, "the service")
    status = run.wait_state("watch")
    assert status["supporting"]["pppoe"] == f"unavailable: {reason}" or \
        status["supporting"]["pppoe"].startswith(f"unavailable: {reason}"), status["supporting"]
    assert run.log.count("error: pppoe unavailable: ") == 1 + run.log.count("srvctl restart")
    assert PASSWORD not in run.log


def test_real_pppd_reads_the_options_file_and_stops_at_dev_ppp(sandbox, netns, tmp_path):
    """The argv and options file fsm-init makes, given to the REAL pppd in a mount
    namespace whose /dev/ppp is the PPP char device 108,0 this kernel cannot open."""
    from fsm_init.network import pppoe
    from fsm_init.core.settings import Settings
    from fsm_init.core.system import System

    class NoProbe(System):
        def run(self, argv, input=None, timeout=10.0):
            if argv[:2] == [sys.executable, "-I"]:
                return 0, "", ""  # the kernel check is what this test leaves to pppd
            return super().run(argv, input, timeout)

    settings = Settings.__new__(Settings)
    settings.run_dir, settings.state_dir = str(tmp_path / "run"), str(tmp_path / "state")
    cfg = dialcfg(dialintf="c-ac")["inetdail"]
    spec = pppoe.spec({"inetdail": {**cfg, "usedefgw": "yes"}}, NoProbe(), settings)
    assert spec.argv[0].endswith("/pppd") and spec.argv[-1] == "nic-c-ac"
    assert PASSWORD not in " ".join(spec.argv)
    ns = netns()
    sh("ip", "link", "add", "c-ac", "netns", ns.name, "type", "veth", "peer", "name", "c-peer", "netns", ns.name)
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(WRAPPER)
    (tmp_path / "scratch").mkdir()
    result = sh("nsenter", f"--net={ns.path}", "unshare", "--mount", "--fork", "/bin/sh", wrapper,
                tmp_path / "scratch", "--ppp=nodriver", "--", *spec.argv, check=False, timeout=20)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "/dev/ppp" in out and "unrecognized option" not in out and "Plugin" in out, out
    assert PASSWORD not in out


def host_pid(run, ns_pid: int) -> int:
    for host in run.namespace_pids():
        for line in Path(f"/proc/{host}/status").read_text().splitlines():
            if line.startswith("NSpid:") and line.split()[-1] == str(ns_pid):
                return host
    raise AssertionError(f"no process {ns_pid} in fsm-init's namespace")


def status_pppoe(run) -> str:
    return run.status()["supporting"].get("pppoe", "")


def recorded(rec: Path, kind: str) -> list[Path]:
    return sorted(rec.glob(f"{kind}.*"), key=lambda p: p.stat().st_mtime_ns)


def ip(ns, *args) -> str:
    return sh("ip", "-n", ns.name, *args).stdout


def test_dial_up_with_detection_hooks_restart_keepalive_and_disable(sandbox, lan):
    c, serve = lan
    rec = sandbox.root / "pppd-rec"
    rec.mkdir()
    stand_in = sandbox.root / "pppd-stand-in"
    stand_in.write_text(STAND_IN.replace("@REC@", str(rec)).replace("@VERSION@", pppd_version()))
    stand_in.chmod(0o755)
    resolv = sandbox.root / "resolv.conf"
    resolv.write_text(RESOLV)
    d = sandbox.service("app", dialcfg(usedefgw="yes"), run__sh=HOLD)
    box = launcher(sandbox, c, "--ppp=openable", f"--bind={stand_in}:/usr/sbin/pppd", f"--bind={resolv}:/etc/resolv.conf")
    run = sandbox.start(launcher=box, SRVNAME="app")

    # No access concentrator yet: one clear line, and another try at the next check cycle.
    run.wait_log(r"no PPPoE access concentrator answered on c-quiet, c-ac;", timeout=15)
    serve()
    run.wait_log(rf"access concentrator '{AC_NAME}' answers on c-ac: dialling there", timeout=20)
    wait_for(lambda: recorded(rec, "state") and recorded(rec, "state")[-1].read_text() == "up\n", 10, "ip-up")

    # What pppd was given: no secret on its command line, the secret in a private file.
    [argv_file] = recorded(rec, "argv")
    argv = argv_file.read_text().splitlines()
    assert argv[0] == "/usr/sbin/pppd" and argv[1] == "file" and argv[-1] == "nic-c-ac"
    joined = " ".join(argv)
    assert "nodetach persist holdoff 5 maxfail 0 lcp-echo-failure 6 lcp-echo-interval 5" in joined
    assert re.search(r"plugin /usr/lib/pppd/[^ ]+/(rp-)?pppoe\.so nic-c-ac$", joined), joined
    assert "ipparam DEFROUTE PATHBACK PEERDNS" in joined
    assert recorded(rec, "modes")[0].read_text().split() == ["600", "700"]
    options = recorded(rec, "options")[0].read_text()
    assert 'user "user@isp"\n' in options
    assert 'password "dial \\"pw\\" with\\\\ spaces # and\\011tab"\n' in options
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                assert PASSWORD.encode() not in Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                pass
    assert PASSWORD not in run.log

    # The ip-up hook's work, in the container's real routing table and resolv.conf.
    log = run.wait_log(r"pppoe: link up: inet0 over c-ac, local 10.64.0.2, peer 10.64.0.1")
    routes = ip(c, "route", "show")
    assert "0.0.0.0/1 dev inet0 scope link metric 10" in routes and "128.0.0.0/1 dev inet0" in routes, routes
    assert "from 10.64.0.2 lookup 17" in ip(c, "rule", "show")
    assert "default dev inet0" in ip(c, "route", "show", "table", "17")
    text = resolv.read_text()
    assert text.splitlines()[1:3] == ["nameserver 192.0.2.53", "nameserver 192.0.2.54"] and text.endswith(RESOLV)
    link = json.loads((sandbox.run_dir / "pppoe" / "link.json").read_text())
    assert (link["state"], link["interface"], link["device"], link["local"], link["remote"]) == \
        ("up", "inet0", "c-ac", "10.64.0.2", "10.64.0.1")
    assert "link up: inet0 over c-ac, local 10.64.0.2, peer 10.64.0.1" in c.run(
        sys.executable, "-c", f"from fsm_init.network import dial; from fsm_init.core.system import System; "
        f"print(dial.describe(System(), {str(sandbox.run_dir)!r}))", env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    assert "user user@isp, interface detected at each start, default route taken over" in status_pppoe(run)

    # The same settings: pppd is left alone.
    first = status_pppoe(run)
    runs = run.status()["run_count"]
    assert run.srvctl("restart").returncode == 0
    wait_for(lambda: run.status()["run_count"] > runs and run.status()["state"] in ("watch", "restart_interval"),
             10, "the restart")
    assert re.match(r"running, pid (\d+)", status_pppoe(run)).group(1) == re.match(r"running, pid (\d+)", first).group(1)

    # An interface named in the config and no default route: restarted, ip-down undid ip-up first.
    (d / "workcfg.json").write_text(json.dumps(dialcfg(dialintf="c-ac", usedefgw="no")))
    assert run.srvctl("restart").returncode == 0
    wait_for(lambda: len(recorded(rec, "argv")) == 2 and recorded(rec, "state")[-1].read_text() == "up\n"
             and recorded(rec, "state")[0].read_text() == "down\n", 15, "pppd restarted")
    argv = recorded(rec, "argv")[-1].read_text().splitlines()
    assert argv[0] == "/usr/sbin/pppd" and argv[-1] == "nic-c-ac" and "PATHBACK" == argv[argv.index("ipparam") + 1]
    routes = ip(c, "route", "show")
    assert "0.0.0.0/1" not in routes and "128.0.0.0/1" not in routes, routes
    assert "from 10.64.0.2 lookup 17" in ip(c, "rule", "show")  # PATHBACK is always on, as in imginit
    assert resolv.read_text() == RESOLV  # the peer's DNS servers are gone again

    # Killed: started again by the next check cycle.
    pid = int(recorded(rec, "argv")[-1].name.split(".")[1])
    os.kill(host_pid(run, pid), signal.SIGKILL)
    run.wait_log("pppoe is not running: starting it again", timeout=10)
    wait_for(lambda: len(recorded(rec, "state")) == 3 and recorded(rec, "state")[-1].read_text() == "up\n",
             10, "pppd started again, its link up")

    # Disabled: stopped, and its hook took its rule away.
    (d / "workcfg.json").write_text(json.dumps(dialcfg(enable="no")))
    assert run.srvctl("restart").returncode == 0
    wait_for(lambda: recorded(rec, "state")[-1].read_text() == "down\n", 10, "pppd stopped")
    wait_for(lambda: "pppoe" not in run.status()["supporting"], 10, "pppoe gone from the status")
    assert "lookup 17" not in ip(c, "rule", "show")
    assert "inet0" not in ip(c, "link", "show")
    run.signal(signal.SIGTERM)
    run.wait()
