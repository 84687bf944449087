"""Step firewall: takes over inbound and forwarded traffic with iptables (and ip6tables).

Runs whenever a configuration exists (as imginit did); ``firewall.enable`` "no"
leaves iptables alone.  The rule set is in ``iptables_rules``; this module reads
what is in force (``iptables-save``), applies the change in one
``iptables-restore --noflush`` per address family, and remembers what it applied so
that a restart with the same permits touches nothing.  Every OS call goes through
``System``.
"""


from fsm_init.core import log
from fsm_init.core.settings import Settings
from fsm_init.core.system import System, Unavailable, refuse_host_namespace
from fsm_init.network import iptables_rules as rules

IF_INET6 = "/proc/net/if_inet6"  # present when the kernel has IPv6
NOT_FILTERED = "inbound traffic is not filtered"
TIMEOUT = 20.0
# On older kernels (Debian 12's 6.1) the host's network namespace has an ordinary inode
# number, so the host is also recognised by its filter table: chains that container
# engines, Kubernetes and host firewalls create there, never in a container's own
# namespace (Docker's embedded-DNS chains are in a container's nat table, not filter).
HOST_CHAIN_PREFIXES = ("DOCKER", "KUBE-", "CNI-", "LIBVIRT_", "ufw-", "ufw6-", "f2b-", "FLANNEL", "CILIUM", "cali-")


def http_port(raw: str) -> int | None:
    """FSM_INIT_HTTP's port, to be permitted: None when unset, invalid (http_probes says so)
    or on loopback (the rules accept -i lo)."""
    import ipaddress  # only with FSM_INIT_HTTP; http_probes.parse_address's rule, not its import (another part)

    host, _, port = raw.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        return None
    if (address.version == 6) != bracketed:  # what http_probes refuses listens nowhere: no permit
        return None
    return None if address.is_loopback else int(port)


def enabled(config: dict, has_config: bool) -> bool:
    return has_config and config["firewall"]["enable"] == "yes"


class Firewall:
    """Applies the config's permits; remembers what it applied, across restarts."""

    def __init__(self, system: System, settings: Settings) -> None:
        self.system, self.settings = system, settings
        self.applied: str | None = None  # the policy text in force, as last applied
        self.families: list[rules.Family] = []  # where it is in force
        self.summary = ""
        self.problems: list[str] = []  # the last apply's family not filtered (IPv6), for `srvctl reload`

    def apply(self, config: dict, ssh_up: bool = True, quiet: bool = False) -> str:
        """A one-line summary of what is in force; raises Unavailable when it cannot be done here.

        ssh_up: dropbear runs, so its port is permitted; otherwise it is not (a local user
        could bind the port dropbear could not).  quiet: no line when nothing changes."""
        self.problems = []
        self._refuse_host_network()
        permits = rules.Permits.from_config(config)
        if not ssh_up:
            permits = permits._replace(ssh_port=None)
        permits = permits._replace(http_port=http_port(getattr(self.settings, "http", "")))
        families = [rules.IPV4] + ([rules.IPV6] if self.system.read_bytes(IF_INET6) is not None else [])
        wanted = {family.name: rules.policy(permits, family) for family in families}
        text = "".join(f"# {name}\n{rules.policy_text(policy)}" for name, policy in wanted.items())
        if text == self.applied:
            if quiet:
                return self.summary
            log.info(f"firewall: permits unchanged, the rules in force are kept ({self.summary})")
            return self.summary
        self.applied = None
        done, failures = [], []
        for family in families:
            try:
                self._restore(family, lambda now, family=family: rules.restore_script(wanted[family.name], now))
            except Unavailable as e:
                if family is rules.IPV4:
                    raise
                failures.append(f"IPv6 inbound traffic is not filtered: {e}")
            else:
                done.append(family)
        self.families, self.problems = done, failures
        self.summary = f"{permits.summary()}; {'+'.join(f.name for f in done)}"
        if failures:
            self.summary += " (IPv6 not filtered)"
            for failure in failures:
                log.error(f"firewall: {failure}")
        else:
            self.applied = text  # a partial success is tried again on the next restart
        log.info(f"firewall applied: {self.summary}")
        return self.summary

    def withdraw(self) -> str:
        """firewall.enable turned "no" after fsm-init applied its rules: open INPUT and
        FORWARD again and empty FSMINIT (the service chains and their rules stay).
        Does nothing when fsm-init applied nothing."""
        self.problems = []
        if not self.families:
            return ""
        families, self.families, self.applied, self.summary = self.families, [], None, ""
        for family in families:
            self._restore(family, rules.withdraw_script)
        log.info("firewall disabled: fsm-init's rules removed, inbound and forwarded traffic are open again")
        return ""

    def _refuse_host_network(self) -> None:
        """A container run with --network host shares the machine's network namespace:
        its iptables rules are the host's."""
        refuse_host_namespace(self.system, "net", "this is the host's network namespace (a container run with "
                              "--network host, or fsm-init started on the host): fsm-init leaves the host's "
                              "iptables alone")

    def _restore(self, family: rules.Family, script) -> None:
        status, out, err = self.system.run([family.save], timeout=TIMEOUT)
        if status:
            raise self._unavailable(family.save, status, err)
        now = rules.parse_save(out)
        host = sorted(c for c in now.chains.get("filter", {}) if c.startswith(HOST_CHAIN_PREFIXES))
        if host:
            raise Unavailable(f"the filter table holds {', '.join(host[:3])}: this looks like the host's network "
                              "namespace (--network host), whose iptables fsm-init leaves alone")
        text = script(now)
        argv = [family.restore, "--wait=5", "--noflush"]
        status, _, err = self.system.run(argv, input=text.encode(), timeout=TIMEOUT)
        if status:
            raise self._unavailable(family.restore, status, err)

    @staticmethod
    def _unavailable(program: str, status: int, err: str) -> Unavailable:
        said = _first_line(err)
        if status == 127:
            return Unavailable(f"{program} not found (install iptables); {NOT_FILTERED}")
        if any(s in err for s in ("Permission denied", "Operation not permitted", "must be root")):
            return Unavailable(f"no NET_ADMIN capability ({said}); {NOT_FILTERED} "
                               "(give the container NET_ADMIN: docker run --cap-add NET_ADMIN)")
        return Unavailable(f"{program} failed with status {status}: {said}; {NOT_FILTERED}")


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Try `", "Try '")):
            return line if len(line) <= 200 else line[:197] + "..."
    return "no message"
