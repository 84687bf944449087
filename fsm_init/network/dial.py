"""The PPPoE dial-up's helpers.  Each runs as a process of its own, never inside PID 1:

  python -m fsm_init.network.dial detect              the interfaces where an access concentrator
                                              answers, with its name (imginit's
                                              ``inetdial.sh ifdetect``)
  python -m fsm_init.network.dial run -- PPPD ARGS... detect, then exec pppd on the first
                                              interface that answers (``nic-IF`` appended)
  python -m fsm_init.network.dial ip-up|ip-down IF DEVICE SPEED LOCAL REMOTE IPPARAM
                                              pppd's hooks (``ip-up-script``): routes,
                                              peer DNS servers and the link state

The hooks do what imginit's inetdial.sh did, by the flags in ipparam:
DEFROUTE  the two half routes 0.0.0.0/1 and 128.0.0.0/1 over the link (they win over
          the container's default route without removing it);
PATHBACK  replies from the link's address leave through the link (``ip rule from
          LOCAL lookup 17``, a default route in table 17);
PEERDNS   the peer's DNS servers first in /etc/resolv.conf, rewritten in place (under
          Docker the file is a bind mount: a rename over it fails).
ip-down undoes exactly what ip-up did.  The link state goes to
``$FSM_INIT_RUN_DIR/pppoe/link.json`` for ``srvctl status``.
"""

import json
import os
import posixpath
import re
import sys

from fsm_init.core import log
from fsm_init.core.settings import Settings
from fsm_init.core.system import System, find_program

IFF_UP, IFF_BROADCAST, IFF_LOOPBACK = 0x1, 0x2, 0x8
ARPHRD_ETHER = 1
SYS_NET = "/sys/class/net"
RESOLV_CONF = "/etc/resolv.conf"
PATHBACK_TABLE = "17"  # imginit's routing table and rule priority for PATHBACK
RESOLV_BEGIN = "# fsm-init pppoe: the peer's DNS servers, removed when the link goes down"
RESOLV_END = "# fsm-init pppoe: end"
DISCOVERY = ["-t", "1", "-a", "2", "-U"]  # imginit's: 1 s timeout, 2 attempts, Host-Unique

USAGE = """\
usage: python -m fsm_init.network.dial detect
       python -m fsm_init.network.dial run -- PPPD [ARGS...]
       python -m fsm_init.network.dial ip-up|ip-down IFNAME DEVICE SPEED LOCAL REMOTE IPPARAM
"""


# -- interface detection ----------------------------------------------------------------------


def _read(system: System, path: str) -> str:
    return (system.read_bytes(path) or b"").decode(errors="replace").strip()


def candidates(system: System) -> list[str]:
    """Up, broadcast-capable, non-loopback Ethernet interfaces with a link, in ifindex order:
    the names from netifaces, their state from /sys/class/net (netifaces has no link state)."""
    found = []
    for name in system.interfaces():
        base = posixpath.join(SYS_NET, name)
        try:
            flags = int(_read(system, f"{base}/flags"), 16)
            kind = int(_read(system, f"{base}/type"))
            index = int(_read(system, f"{base}/ifindex") or 0)
        except ValueError:
            continue
        operstate = _read(system, f"{base}/operstate")
        if (flags & IFF_UP and flags & IFF_BROADCAST and not flags & IFF_LOOPBACK
                and kind == ARPHRD_ETHER and operstate in ("up", "unknown")):
            found.append((index, name))
    return [name for _, name in sorted(found)]


def probe(system: System, discovery: str, interface: str) -> str | None:
    """The name of the access concentrator that answers PPPoE discovery on interface."""
    status, out, _ = system.run([discovery, "-I", interface, *DISCOVERY], timeout=15.0)
    found = re.search(r"^Access-Concentrator:[ \t]*(.*?)[ \t]*$", out, re.MULTILINE)
    # The name comes from the network (any access concentrator on the segment): escaped.
    return (log.escape(found.group(1)) or "(unnamed)") if found else None


def detect(system: System, interfaces: list[str] | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """(the interfaces probed, [(interface, access concentrator)] of those that answered),
    all probed at once, answers in the probe order."""
    from concurrent.futures import ThreadPoolExecutor

    probed = candidates(system) if interfaces is None else interfaces
    discovery = find_program(system, "pppoe-discovery")
    if not probed or not discovery:
        if not discovery:
            log.error("pppoe: pppoe-discovery is not installed (Debian package ppp): cannot detect the interface")
        return probed, []
    with ThreadPoolExecutor(max_workers=min(16, len(probed))) as pool:
        answers = list(pool.map(lambda interface: probe(system, discovery, interface), probed))
    return probed, [(interface, ac) for interface, ac in zip(probed, answers, strict=True) if ac]


# -- the link state ------------------------------------------------------------------------


def link_path(run_dir: str) -> str:
    return posixpath.join(run_dir, "pppoe", "link.json")


def write_link(system: System, run_dir: str, **state) -> None:
    try:
        system.makedirs(posixpath.dirname(link_path(run_dir)), 0o700)
        system.write_atomic(link_path(run_dir), json.dumps(state).encode() + b"\n", 0o644, durable=False)
    except OSError as e:
        log.warn(f"pppoe: cannot record the link state: {e.strerror}")


def describe(system: System, run_dir: str) -> str:
    try:
        link = json.loads(system.read_bytes(link_path(run_dir)) or b"null")
    except ValueError:
        link = None
    if not isinstance(link, dict):
        return "link not up yet"
    device = link.get("device", "?")
    if link.get("state") == "up" and system.is_dir(posixpath.join(SYS_NET, link.get("interface", "?"))):
        return f"link up: {link.get('interface')} over {device}, local {link.get('local')}, peer {link.get('remote')}"
    if link.get("state") == "dialling":
        # The access concentrator's name comes from the network: escaped, never shown raw.
        return f"dialling over {device} (access concentrator {log.escape(str(link.get('ac')))})"
    return f"link down (last over {device})"


# -- routes and resolv.conf ------------------------------------------------------------------


def _ip(system: System, *args: str, quiet: bool = False) -> bool:
    status, out, err = system.run(["ip", *args])
    if status != 0 and not quiet:
        log.warn(f"pppoe: ip {' '.join(args)}: {(err or out).strip()}")
    return status == 0


def without_block(text: str) -> str:
    """resolv.conf text without the lines fsm-init added."""
    kept, inside = [], False
    for line in text.splitlines(keepends=True):
        if line.rstrip("\n") == RESOLV_BEGIN:
            inside = True
        elif inside and line.rstrip("\n") == RESOLV_END:
            inside = False
        elif not inside:
            kept.append(line)
    return "".join(kept)


def with_servers(text: str, servers: list[str]) -> str:
    block = [RESOLV_BEGIN, *(f"nameserver {server}" for server in servers), RESOLV_END]
    return "\n".join(block) + "\n" + without_block(text)


def ip_up(system: System, run_dir: str, args: list[str], env: dict, resolv: str = RESOLV_CONF) -> int:
    interface, device, _speed, local, remote, ipparam = (args + [""] * 6)[:6]
    flags = ipparam.split()
    device = device.removeprefix("/dev/").removeprefix("nic-")
    done = []
    if "DEFROUTE" in flags:
        for half in ("0.0.0.0/1", "128.0.0.0/1"):
            _ip(system, "route", "replace", half, "dev", interface, "metric", "10")
        done.append("default route (0.0.0.0/1 and 128.0.0.0/1)")
    if "PATHBACK" in flags and local:
        for _ in range(8):  # a rule left by a link that went away without ip-down
            if not _ip(system, "rule", "del", "pref", PATHBACK_TABLE, quiet=True):
                break
        _ip(system, "rule", "add", "from", local, "lookup", PATHBACK_TABLE, "pref", PATHBACK_TABLE)
        _ip(system, "route", "replace", "default", "dev", interface, "table", PATHBACK_TABLE)
        done.append(f"replies from {local} through the link")
    servers = [env[k] for k in ("DNS1", "DNS2") if env.get(k)]
    if "PEERDNS" in flags and servers:
        try:
            system.rewrite_in_place(resolv, lambda text: with_servers(text, servers))
            done.append(f"DNS {' '.join(servers)}")
        except OSError as e:
            log.warn(f"pppoe: cannot put the peer's DNS servers in {resolv}: {e.strerror}")
    write_link(system, run_dir, state="up", interface=interface, device=device, local=local, remote=remote,
               dns=servers, flags=flags, since=system.wall())
    log.info(f"pppoe: link up: {interface} over {device}, local {local}, peer {remote}"
             + (f"; {', '.join(done)}" if done else ""))
    return 0


def ip_down(system: System, run_dir: str, args: list[str], env: dict, resolv: str = RESOLV_CONF) -> int:
    interface, device, _speed, local, remote, ipparam = (args + [""] * 6)[:6]
    flags = ipparam.split()
    device = device.removeprefix("/dev/").removeprefix("nic-")
    if "DEFROUTE" in flags:
        for half in ("0.0.0.0/1", "128.0.0.0/1"):
            _ip(system, "route", "del", half, "dev", interface, quiet=True)
    if "PATHBACK" in flags and local:
        _ip(system, "rule", "del", "from", local, "lookup", PATHBACK_TABLE, "pref", PATHBACK_TABLE, quiet=True)
        _ip(system, "route", "del", "default", "dev", interface, "table", PATHBACK_TABLE, quiet=True)
    if "PEERDNS" in flags:
        try:
            system.rewrite_in_place(resolv, without_block, create=False)
        except OSError as e:
            log.warn(f"pppoe: cannot take the peer's DNS servers out of {resolv}: {e.strerror}")
    write_link(system, run_dir, state="down", interface=interface, device=device, local=local, remote=remote,
               since=system.wall())
    log.info(f"pppoe: link down: {interface} over {device} (was local {local}, peer {remote})")
    return 0


# -- the entry point ----------------------------------------------------------------------------


def run(system: System, run_dir: str, pppd_argv: list[str]) -> int:
    """Detect the interface, then become pppd on it; exit 1 when nothing answers."""
    probed, found = detect(system)
    if not found:
        where = ", ".join(probed) if probed else "no interface (none is up, broadcast-capable Ethernet with a link)"
        log.error(f"pppoe: no PPPoE access concentrator answered on {where}; "
                  "tried again when fsm-init next checks its supporting services")
        return 1
    interface, ac = found[0]
    others = f" (also answering: {', '.join(i for i, _ in found[1:])})" if len(found) > 1 else ""
    log.info(f"pppoe: access concentrator '{ac}' answers on {interface}: dialling there{others}")
    write_link(system, run_dir, state="dialling", device=interface, ac=ac, since=system.wall())
    system.execve([*pppd_argv, f"nic-{interface}"], dict(os.environ))
    return 127  # not reached


def log_to(system: System, pid: str) -> None:
    """Send this process's log lines to fsm-init's log (its stderr), when that can be opened
    (a socket, journald's, cannot be opened again: the lines go where pppd put them)."""
    if pid.isdigit():
        system.stderr_to(f"/proc/{pid}/fd/2")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    log.set_state("pppoe")
    system = System()
    run_dir = Settings().run_dir
    verb = args.pop(0) if args else ""
    if verb == "detect" and not args:
        probed, found = detect(system)
        for interface, ac in found:
            print(f"{log.escape(interface)}\t{log.escape(ac)}")
        if not found:
            print(f"no access concentrator answered on: {', '.join(probed) or '(no candidate interface)'}",
                  file=sys.stderr)
        return 0 if found else 1
    if verb == "run" and args[:1] == ["--"] and len(args) > 1:
        try:
            return run(system, run_dir, args[1:])
        except OSError as e:
            log.error(f"pppoe: cannot run {args[1]}: {e.strerror}")
            return 127
    if verb in ("ip-up", "ip-down"):
        log_to(system, os.environ.get("FSM_INIT_LOG_PID", ""))
        hook = ip_up if verb == "ip-up" else ip_down
        return hook(system, run_dir, args, dict(os.environ))
    sys.stderr.write(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main())
