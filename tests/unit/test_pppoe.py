"""The pppoe step and its helpers (``fsm_init.network.dial``) on the recording FakeSystem: the
unavailable paths, pppd's argv and options file, the quoting pppd reads back, the
interface detection, and the ip-up/ip-down hooks' commands and resolv.conf edits."""

import errno
import json
import os
import sys

import pytest

from fsm_init.config import workcfg as config
from fsm_init.network import dial, pppoe
from fsm_init.core.system import System, Unavailable

from .fakes import FakeSystem, ProcessReplaced, make_settings

PASSWORD = 'p@ss "word" \\ #1\ttab'
PPPD = "/usr/sbin/pppd"
PLUGIN = "/usr/lib/pppd/2.4.9/rp-pppoe.so"
RUN = "/run/fsm-init/pppoe"


def probe_says(what="", number=0, reason=""):
    """The kernel probe's answer: ("", 0) means /dev/ppp opened fine."""
    if not what:
        return 0, "", ""
    return 1, f"{what} {number} {reason}\n", ""


class Machine:
    def __init__(self, pppd=True, plugin=("rp-pppoe.so", "pppoe.so"), kernel=probe_says()):
        self.system = fake = FakeSystem()
        if pppd:
            fake.add_file(PPPD, b"", 0o755)
        fake.add_dir("/usr/lib/pppd/2.4.9")
        for name in plugin:
            fake.add_file(f"/usr/lib/pppd/2.4.9/{name}", b"\x7fELF", 0o644)
        fake.commands[PPPD] = (0, "", "pppd version 2.4.9\n")
        fake.commands[sys.executable] = kernel

    def spec(self, **values):
        section = dict(config.defaults()["inetdail"], enable="yes", dialuser="user@isp", dialpswd=PASSWORD)
        section.update(values)
        return pppoe.spec({"inetdail": section}, self.system, make_settings())


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(pppoe, "said_once", set())


# -- unavailable -----------------------------------------------------------------------------------


def test_without_pppd():
    with pytest.raises(Unavailable, match=r"pppd is not installed \(Debian package ppp\)"):
        Machine(pppd=False).spec()


def test_without_the_plugin():
    with pytest.raises(Unavailable, match=r"PPPoE plugin \(rp-pppoe.so or pppoe.so\) is not installed"):
        Machine(plugin=()).spec()


@pytest.mark.parametrize("code, reason, message", [
    (errno.ENXIO, "No such device or address",
     "the kernel has no PPP support: opening /dev/ppp gives 'No such device or address'"),
    (errno.ENOENT, "No such file or directory", "there is no /dev/ppp: give the container the device"),
    (errno.EPERM, "Operation not permitted", "not allowed to open /dev/ppp (Operation not permitted)"),
    (errno.EIO, "Input/output error", "cannot open /dev/ppp: Input/output error"),
])
def test_without_kernel_ppp_support(code, reason, message):
    m = Machine(kernel=probe_says("ppp", code, reason))
    with pytest.raises(Unavailable) as caught:
        m.spec()
    assert str(caught.value).startswith(message)
    assert not any(path.startswith(RUN) for path in m.system.files), "nothing written for a dial-up that cannot run"
    [probe] = [argv for argv, _ in m.system.runs if argv[0] == sys.executable]
    assert probe[1:3] == ["-I", "-S"] and "/dev/ppp" in probe[-1]


def test_the_kernel_probe_really_names_the_error():
    status, out, _ = __import__("fsm_init.core.system", fromlist=["System"]).System().run(
        [sys.executable, "-I", "-S", "-c", pppoe.KERNEL_PROBE.replace("/dev/ppp", "/nonexistent/ppp")])
    assert status == 1 and out.split(" ", 2)[:2] == ["ppp", str(errno.ENOENT)]


def test_no_pppoe_module_is_a_warning_only(capfd):
    m = Machine(kernel=probe_says("pppoe", errno.EAFNOSUPPORT, "Address family not supported by protocol"))
    m.spec()
    m.spec()
    assert capfd.readouterr().err.count("the kernel seems to have no PPPoE support") == 1


def test_without_a_user():
    with pytest.raises(Unavailable, match="inetdail.dialuser is empty"):
        Machine().spec(dialuser="")


def test_an_over_long_password_is_refused():
    with pytest.raises(Unavailable, match="longer than pppd's 255 bytes"):
        Machine().spec(dialpswd="x" * 256)


# -- argv and files ------------------------------------------------------------------------------------


def test_argv_with_an_interface_and_the_private_options_file(capfd):
    m = Machine()
    spec = m.spec(dialintf="eth1", usedefgw="yes")
    assert spec.argv == [
        PPPD, "file", f"{RUN}/options", "nodetach", "persist", "holdoff", "5", "maxfail", "0",
        "lcp-echo-failure", "6", "lcp-echo-interval", "5", "noauth", "refuse-eap", "hide-password", "noipdefault",
        "nodefaultroute", "usepeerdns", "mtu", "1492", "mru", "1492", "logfd", "2", "ifname", "inet0",
        "ipparam", "DEFROUTE PATHBACK PEERDNS", "ip-up-script", f"{RUN}/ip-up", "ip-down-script", f"{RUN}/ip-down",
        "plugin", PLUGIN, "nic-eth1"]
    assert m.system.modes[f"{RUN}/options"] == 0o600
    assert ("makedirs", RUN) in m.system.calls
    assert m.system.files[f"{RUN}/options"].decode().splitlines()[1:] == [
        'user "user@isp"', 'password "p@ss \\"word\\" \\\\ #1\\011tab"']
    for hook in ("ip-up", "ip-down"):
        script = m.system.files[f"{RUN}/{hook}"].decode()
        assert m.system.modes[f"{RUN}/{hook}"] == 0o755
        assert script.startswith("#!/bin/sh\n") and f"-m fsm_init.network.dial {hook} \"$@\"" in script
        assert "FSM_INIT_RUN_DIR=/run/fsm-init " in script and "FSM_INIT_LOG_PID=1 " in script
    assert spec.summary == "user user@isp, interface eth1, default route taken over"
    assert spec.env["FSM_INIT_RUN_DIR"] == "/run/fsm-init" and "PYTHONPATH" in spec.env
    everything = " ".join(spec.argv) + spec.fingerprint + spec.summary + json.dumps(spec.env) + capfd.readouterr().err
    assert PASSWORD not in everything and "p@ss" not in everything
    assert not any(PASSWORD in " ".join(argv) for argv, _ in m.system.runs)


def test_without_an_interface_the_dial_helper_detects_it_then_runs_pppd():
    spec = Machine().spec(usedefgw="no")
    assert spec.argv[:5] == [sys.executable, "-m", "fsm_init.network.dial", "run", "--"]
    assert spec.argv[5] == PPPD and spec.argv[-2:] == ["plugin", PLUGIN]
    assert spec.argv[spec.argv.index("ipparam") + 1] == "PATHBACK"
    assert spec.summary == "user user@isp, interface detected at each start, default route left alone"


def test_the_plugin_of_the_installed_pppd_version():
    m = Machine(plugin=("pppoe.so",))
    m.system.add_file("/usr/lib/pppd/2.4.7/rp-pppoe.so", b"", 0o644)  # a leftover for another pppd
    assert m.spec(dialintf="eth0").argv[-2] == "/usr/lib/pppd/2.4.9/pppoe.so"


@pytest.mark.parametrize("change", [{"dialuser": "other"}, {"dialpswd": "other"}, {"dialintf": "eth2"},
                                    {"usedefgw": "yes"}])
def test_the_fingerprint_changes_with_each_setting(change):
    m = Machine()
    base = {"dialintf": "eth1", "usedefgw": "no"}
    before = m.spec(**base)
    assert m.spec(**base).fingerprint == before.fingerprint
    assert m.spec(**{**base, **change}).fingerprint != before.fingerprint


def pppd_getword(text: str) -> list[str]:
    """pppd's options.c getword(), transcribed: words, quotes, backslash escapes, comments."""
    words, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c.isspace():
            i += 1
            continue
        word, quoted = [], None
        while i < n:
            c = text[i]
            if c == "\\":
                i += 1
                c = text[i]
                simple = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "s": " ", "t": "\t"}
                if c in simple:
                    word.append(simple[c])
                    i += 1
                elif c in "01234567":
                    value, digits = 0, 0
                    while digits < 3 and i < n and text[i] in "01234567":
                        value, digits, i = value * 8 + int(text[i]), digits + 1, i + 1
                    word.append(chr(value))
                else:
                    word.append(c)
                    i += 1
                continue
            if quoted:
                if c == quoted:
                    quoted = None
                    i += 1
                    continue
            elif c in "\"'":
                quoted = c
                i += 1
                continue
            elif c.isspace() or c == "#":
                break
            word.append(c)
            i += 1
        words.append("".join(word))
    return words


@pytest.mark.parametrize("secret", [PASSWORD, "", "plain", "'single'", "end\\", "#", "7\x017", "\x7f0", "new\nline",
                                    "ünïcødé", " lead and trail "])
def test_options_file_words_read_back_as_pppd_reads_them(secret):
    assert pppd_getword(pppoe.options_file("u s\"er", secret).decode()) == ["user", "u s\"er", "password", secret]


# -- interface detection -----------------------------------------------------------------------------


def add_interface(fake, name, index, flags, kind=1, operstate="up"):
    base = f"/sys/class/net/{name}"
    fake.add_file(f"{base}/flags", f"0x{flags:x}\n")
    fake.add_file(f"{base}/type", f"{kind}\n")
    fake.add_file(f"{base}/ifindex", f"{index}\n")
    fake.add_file(f"{base}/operstate", f"{operstate}\n")


def lan() -> FakeSystem:
    fake = FakeSystem()
    add_interface(fake, "lo", 1, 0x9, kind=772, operstate="unknown")
    add_interface(fake, "zeth", 2, 0x1003)  # up, broadcast: first by ifindex
    add_interface(fake, "eth1", 3, 0x1002, operstate="down")  # administratively down
    add_interface(fake, "eth2", 4, 0x1003, operstate="lowerlayerdown")  # no link
    add_interface(fake, "aeth", 5, 0x1003)
    add_interface(fake, "inet0", 6, 0x10d1, kind=512, operstate="unknown")  # a PPP link: point-to-point
    add_interface(fake, "dummy0", 7, 0x83, operstate="unknown")
    fake.add_file("/usr/sbin/pppoe-discovery", b"", 0o755)
    return fake


def test_candidates_are_up_broadcast_ethernet_with_a_link_in_ifindex_order():
    assert dial.candidates(lan()) == ["zeth", "aeth", "dummy0"]


def test_detect_probes_every_candidate_and_keeps_the_order():
    fake = lan()

    def discovery(argv, stdin):
        interface = argv[argv.index("-I") + 1]
        if interface in ("aeth", "dummy0"):
            return 0, f"Access-Concentrator: ac-{interface}\nAC-Ethernet-Address: 02:00:00:00:00:01\n", ""
        return 1, "", "Timeout waiting for PADO packets\n"
    fake.commands["/usr/sbin/pppoe-discovery"] = discovery
    probed, found = dial.detect(fake)
    assert probed == ["zeth", "aeth", "dummy0"]
    assert found == [("aeth", "ac-aeth"), ("dummy0", "ac-dummy0")]
    assert sorted(argv[2] for argv, _ in fake.runs) == ["aeth", "dummy0", "zeth"]
    assert all(argv[3:] == ["-t", "1", "-a", "2", "-U"] for argv, _ in fake.runs)


def test_run_execs_pppd_on_the_first_interface_that_answers():
    fake = lan()
    fake.commands["/usr/sbin/pppoe-discovery"] = lambda argv, stdin: (0, "Access-Concentrator: isp\n", "") \
        if argv[2] == "aeth" else (1, "", "")
    with pytest.raises(ProcessReplaced):
        dial.run(fake, "/run/fsm-init", [PPPD, "file", "x"])
    assert [(e.argv, e.env) for e in fake.execs] == [([PPPD, "file", "x", "nic-aeth"], dict(os.environ))]
    link = json.loads(fake.files["/run/fsm-init/pppoe/link.json"])
    assert (link["state"], link["device"], link["ac"]) == ("dialling", "aeth", "isp")


def test_run_without_an_answer_exits_1_with_one_clear_line(capfd):
    fake = lan()
    fake.commands["/usr/sbin/pppoe-discovery"] = (1, "", "Timeout waiting for PADO packets\n")
    assert dial.run(fake, "/run/fsm-init", [PPPD]) == 1 and fake.execs == []
    assert "error: pppoe: no PPPoE access concentrator answered on zeth, aeth, dummy0;" in capfd.readouterr().err


# -- the hooks -----------------------------------------------------------------------------------------


def hook_system():
    fake = FakeSystem()
    fake.commands["ip"] = (0, "", "")
    return fake


class FakeFile:
    """A file of the fake, read as text (what pathlib's read_text gives for a real one)."""

    def __init__(self, fake: FakeSystem, path: str, text: str | None = None) -> None:
        self.fake, self.path = fake, path
        if text is not None:
            fake.add_file(path, text)

    def read_text(self) -> str:
        return self.fake.files[self.path].decode()


UP = ["inet0", "eth1", "0", "10.64.0.2", "10.64.0.1"]
ENV = {"DNS1": "192.0.2.53", "DNS2": "192.0.2.54"}


def test_ip_up_and_down_with_every_flag():
    fake = hook_system()
    resolv = FakeFile(fake, "/etc/resolv.conf", "nameserver 198.51.100.1\n")
    dial.ip_up(fake, "/run/fsm-init", UP + ["DEFROUTE PATHBACK PEERDNS"], ENV)
    commands = [argv[1:] for argv, _ in fake.runs]
    assert ["route", "replace", "0.0.0.0/1", "dev", "inet0", "metric", "10"] in commands
    assert ["route", "replace", "128.0.0.0/1", "dev", "inet0", "metric", "10"] in commands
    assert ["rule", "add", "from", "10.64.0.2", "lookup", "17", "pref", "17"] in commands
    assert ["route", "replace", "default", "dev", "inet0", "table", "17"] in commands
    assert resolv.read_text() == (f"{dial.RESOLV_BEGIN}\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n"
                                  f"{dial.RESOLV_END}\nnameserver 198.51.100.1\n")
    link = json.loads(fake.files["/run/fsm-init/pppoe/link.json"])
    assert (link["state"], link["interface"], link["device"], link["local"], link["remote"], link["dns"]) == \
        ("up", "inet0", "eth1", "10.64.0.2", "10.64.0.1", ["192.0.2.53", "192.0.2.54"])
    fake.runs.clear()
    dial.ip_down(fake, "/run/fsm-init", UP + ["DEFROUTE PATHBACK PEERDNS"], {"CONNECT_TIME": "9"})
    commands = [argv[1:] for argv, _ in fake.runs]
    assert commands == [["route", "del", "0.0.0.0/1", "dev", "inet0"], ["route", "del", "128.0.0.0/1", "dev", "inet0"],
                        ["rule", "del", "from", "10.64.0.2", "lookup", "17", "pref", "17"],
                        ["route", "del", "default", "dev", "inet0", "table", "17"]]
    assert resolv.read_text() == "nameserver 198.51.100.1\n"
    assert json.loads(fake.files["/run/fsm-init/pppoe/link.json"])["state"] == "down"


def test_ip_up_with_pathback_only_leaves_routes_and_resolv_conf_alone():
    fake = hook_system()
    resolv = FakeFile(fake, "/etc/resolv.conf", "nameserver 198.51.100.1\n")
    dial.ip_up(fake, "/run/fsm-init", UP + ["PATHBACK"], ENV)
    commands = [argv[1:] for argv, _ in fake.runs]
    assert not any("0.0.0.0/1" in c for c in commands)
    assert ["rule", "add", "from", "10.64.0.2", "lookup", "17", "pref", "17"] in commands
    assert resolv.read_text() == "nameserver 198.51.100.1\n"


def test_resolv_conf_is_rewritten_in_place_keeping_its_inode(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search example\nnameserver 198.51.100.1\n")
    inode = resolv.stat().st_ino
    system = System()
    system.rewrite_in_place(str(resolv), lambda text: dial.with_servers(text, ["192.0.2.1"]))
    system.rewrite_in_place(str(resolv), lambda text: dial.with_servers(text, ["192.0.2.2"]))
    assert resolv.stat().st_ino == inode
    assert resolv.read_text().count("nameserver 192.0.2") == 1 and "192.0.2.2" in resolv.read_text()
    assert system.rewrite_in_place(str(resolv), dial.without_block)
    assert resolv.read_text() == "search example\nnameserver 198.51.100.1\n"
    assert not system.rewrite_in_place(str(resolv), dial.without_block)  # unchanged
    assert not system.rewrite_in_place(str(tmp_path / "missing"), dial.without_block, create=False)
    assert not (tmp_path / "missing").exists()


def test_an_empty_or_missing_resolv_conf_and_one_dns_server():
    fake = hook_system()
    dial.ip_up(fake, "/run/fsm-init", UP + ["PEERDNS"], {"DNS1": "192.0.2.53"})
    assert FakeFile(fake, "/etc/resolv.conf").read_text() == \
        f"{dial.RESOLV_BEGIN}\nnameserver 192.0.2.53\n{dial.RESOLV_END}\n"
    fake.remove("/etc/resolv.conf")
    dial.ip_down(fake, "/run/fsm-init", UP + ["PEERDNS"], {})
    assert "/etc/resolv.conf" not in fake.files  # ip-down creates no resolv.conf


def test_a_resolv_conf_that_cannot_be_rewritten_is_one_warning(capfd):
    fake = hook_system()
    fake.fail("rewrite_in_place", PermissionError(13, "Permission denied"))
    dial.ip_up(fake, "/run/fsm-init", UP + ["PEERDNS"], ENV)
    assert "pppoe: cannot put the peer's DNS servers in /etc/resolv.conf: Permission denied" in capfd.readouterr().err
    assert json.loads(fake.files["/run/fsm-init/pppoe/link.json"])["state"] == "up"


def test_the_hooks_log_to_fsm_init_s_stderr():
    fake = FakeSystem()
    dial.log_to(fake, "42")
    dial.log_to(fake, "not-a-pid")
    assert [c for c in fake.calls if c[0] == "stderr_to"] == [("stderr_to", "/proc/42/fd/2")]


def test_describe_the_link():
    fake = FakeSystem()
    assert dial.describe(fake, "/run/fsm-init") == "link not up yet"
    fake.add_dir("/run/fsm-init/pppoe")
    dial.write_link(fake, "/run/fsm-init", state="dialling", device="eth1", ac="isp")
    assert dial.describe(fake, "/run/fsm-init") == "dialling over eth1 (access concentrator isp)"
    dial.write_link(fake, "/run/fsm-init", state="up", interface="inet0", device="eth1", local="10.64.0.2",
                    remote="10.64.0.1")
    assert dial.describe(fake, "/run/fsm-init") == "link down (last over eth1)"  # no inet0 any more
    fake.add_dir("/sys/class/net/inet0")
    assert dial.describe(fake, "/run/fsm-init") == "link up: inet0 over eth1, local 10.64.0.2, peer 10.64.0.1"
    assert pppoe.describe(fake, make_settings()) == dial.describe(fake, "/run/fsm-init")


# -- through the engine and the command line -------------------------------------------------------


def test_status_shows_the_link_while_pppd_runs():
    from .fakes import Harness

    m = Machine()
    m.system.add_dir("/srv/app")
    m.system.add_file("/srv/app/workcfg.json", json.dumps(
        {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "firewall": {"enable": "no"},
         "inetdail": {"enable": "yes", "dialuser": "u", "dialpswd": PASSWORD, "dialintf": "eth1"}}))
    m.system.add_script("/srv/app/run.sh")
    h = Harness(m.system, environ={"SRVNAME": "app"})
    try:
        h.begin()
        assert h.engine.explain.snapshot()["supporting"]["pppoe"].endswith("; link not up yet")
        dial.write_link(m.system, "/run/fsm-init", state="up", interface="inet0", device="eth1",
                        local="10.64.0.2", remote="10.64.0.1")
        m.system.add_dir("/sys/class/net/inet0")
        assert h.engine.explain.snapshot()["supporting"]["pppoe"].endswith(
            "; link up: inet0 over eth1, local 10.64.0.2, peer 10.64.0.1")
    finally:
        h.close()


def test_fsm_init_pppoe_detect_is_the_dial_helpers_detect(monkeypatch):
    from fsm_init import cli

    seen = []
    monkeypatch.setattr(dial, "main", lambda args: seen.append(args) or 0)
    assert cli.main(["pppoe", "detect"]) == 0 and seen == [["detect"]]
