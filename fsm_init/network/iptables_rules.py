"""The firewall's rule set as iptables-restore text: pure functions, no OS calls.

``policy`` turns the config's permits into the rules fsm-init owns (filter INPUT,
FORWARD and the init-managed chain ``FSMINIT``); ``restore_script`` turns that, plus
what ``iptables-save`` shows now, into one ``iptables-restore --noflush`` input that
creates what is missing and rebuilds only what fsm-init owns.

What iptables-restore --noflush does (checked with iptables 1.8.9, nf_tables and
legacy back ends alike): a declaration ``:CHAIN - [0:0]`` of a user chain that
already exists FLUSHES it, so the service chains are declared only while they are
missing; a declaration of a built-in chain sets its policy and keeps its rules;
command lines such as ``-F INPUT``, ``-I`` and ``-D`` work as in iptables; each
table is committed at its ``COMMIT`` line, all of it or none of it, so the filter
table (the policy) comes first and never is half-built.
"""

from fsm_init.core.records import NamedTuple

OWN_CHAIN = "FSMINIT"
MULTIPORT_SLOTS = 15  # iptables' multiport limit; a range takes two

# (table, chain, hooked from): created when missing, hooked once, never flushed.
SERVICE_CHAINS = (
    ("filter", "SRVLCH", "INPUT"),
    ("filter", "SRVFWD", "FORWARD"),
    ("nat", "SRVDNAT", "PREROUTING"),
    ("nat", "SRVSNAT", "POSTROUTING"),
    ("mangle", "SRVMFW", "FORWARD"),
    ("mangle", "SRVMPE", "PREROUTING"),
)
TABLES = ("filter", "nat", "mangle")

NEW = "-m conntrack --ctstate NEW"
ICMP_LIMIT = "-m limit --limit 100/sec --limit-burst 300"
# Per source address: one shared counter (-m limit) would let anyone who sends a SYN
# every 15 s lock every client out of SSH.
SSH_LIMIT = ("-m conntrack --ctstate NEW -m hashlimit --hashlimit-upto 4/min --hashlimit-burst 20 "
             "--hashlimit-mode srcip --hashlimit-name fsm-ssh")


class Family(NamedTuple):
    name: str  # "ipv4" / "ipv6"
    save: str
    restore: str
    icmp: str  # the -p name of ICMP
    reject_input: str
    reject_forward: str
    infrastructure: tuple  # INPUT rules the protocol itself needs (IPv6 neighbour discovery, MLD)
    protocols: dict  # permit key -> rule (without "-A CHAIN")


IPV4 = Family(
    "ipv4", "iptables-save", "iptables-restore", "icmp",
    "icmp-host-prohibited", "icmp-admin-prohibited", (),
    {"igmppermit": "-p igmp -j ACCEPT", "grepermit": "-p gre -j ACCEPT",
     "esppermit": "-p esp -j ACCEPT", "ahpermit": "-p ah -j ACCEPT"},
)

# Neighbour discovery (router solicitation/advertisement, neighbour solicitation/
# advertisement) only from the link (hop limit 255), MLD only from link-local
# addresses: IPv6 does not work without them.  Redirects (137) are not accepted.
_ND = tuple(f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -m hl --hl-eq 255 -j ACCEPT" for t in (133, 134, 135, 136))
_MLD = tuple(f"-s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in (130, 131, 132, 143))

IPV6 = Family(
    "ipv6", "ip6tables-save", "ip6tables-restore", "ipv6-icmp",
    "icmp6-adm-prohibited", "icmp6-adm-prohibited", _ND + _MLD,
    # IGMP does not exist in IPv6 (MLD, its counterpart, is always accepted above);
    # AH is an extension header, which "-p ah" never matches: the ah match does.
    {"grepermit": "-p gre -j ACCEPT", "esppermit": "-p esp -j ACCEPT", "ahpermit": "-m ah -j ACCEPT"},
)

PROTOCOL_KEYS = ("icmppermit", "igmppermit", "grepermit", "esppermit", "ahpermit")


class Permits(NamedTuple):
    tcp: str  # a validated multiport list ("80:86,125,8080") or ""
    udp: str
    protocols: tuple  # the PROTOCOL_KEYS that are "yes", in that order
    ssh_port: int | None
    http_port: int | None = None  # FSM_INIT_HTTP's, unless it listens on loopback only

    @classmethod
    def from_config(cls, config: dict) -> "Permits":
        fw, ssh = config["firewall"], config["sshsrv"]
        return cls(fw.get("tcpportpmt", ""), fw.get("udpportpmt", ""),
                   tuple(k for k in PROTOCOL_KEYS if fw.get(k) == "yes"),
                   int(ssh["sshport"]) if ssh.get("enable") == "yes" else None)

    def summary(self) -> str:
        """e.g. "tcp 80:86,125 udp - icmp ssh 8022"."""
        words = [f"tcp {self.tcp or '-'}", f"udp {self.udp or '-'}"]
        words += [k[:-len("permit")] for k in self.protocols]
        if self.ssh_port is not None:
            words.append(f"ssh {self.ssh_port}")
        if self.http_port is not None:
            words.append(f"http {self.http_port}")
        return " ".join(words)


def split_ports(ports: str) -> list[str]:
    """A multiport list cut into lists of at most 15 slots each (a range takes two), in order."""
    groups: list[list[str]] = []
    used = MULTIPORT_SLOTS
    for entry in (e.strip() for e in ports.split(",")):
        if not entry:
            continue
        size = 2 if ":" in entry else 1
        if used + size > MULTIPORT_SLOTS:
            groups.append([])
            used = 0
        groups[-1].append(entry)
        used += size
    return [",".join(group) for group in groups]


def permit_rules(permits: Permits, family: Family) -> list[str]:
    """The rules of the init-managed chain, without the "-A FSMINIT" prefix."""
    rules = []
    for proto, ports in (("tcp", permits.tcp), ("udp", permits.udp)):
        rules += [f"-p {proto} -m multiport --dports {group} {NEW} -j ACCEPT" for group in split_ports(ports)]
    if "icmppermit" in permits.protocols:
        rules.append(f"-p {family.icmp} {ICMP_LIMIT} -j ACCEPT")
    rules += [family.protocols[k] for k in permits.protocols if k in family.protocols]
    if permits.ssh_port is not None:
        rules.append(f"-p tcp -m tcp --dport {permits.ssh_port} {SSH_LIMIT} -j ACCEPT")
    if permits.http_port is not None:
        rules.append(f"-p tcp -m tcp --dport {permits.http_port} {NEW} -j ACCEPT")
    return rules


def policy(permits: Permits, family: Family) -> dict[str, list[str]]:
    """Every rule fsm-init owns in the filter table, by chain, without "-A CHAIN"."""
    established = "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    return {
        "INPUT": ["-i lo -j ACCEPT", established, *family.infrastructure,
                  "-m conntrack --ctstate INVALID -j DROP",
                  "-j SRVLCH", f"-j {OWN_CHAIN}",
                  "-p tcp -j REJECT --reject-with tcp-reset",
                  f"-j REJECT --reject-with {family.reject_input}"],
        "FORWARD": [established, "-j SRVFWD", f"-j REJECT --reject-with {family.reject_forward}"],
        OWN_CHAIN: permit_rules(permits, family),
    }


def policy_text(rules: dict[str, list[str]]) -> str:
    """The policy as "-A CHAIN rule" lines: what the Firewall remembers as applied."""
    return "".join(f"-A {chain} {rule}\n" for chain, chain_rules in rules.items() for rule in chain_rules)


class Tables(NamedTuple):
    """What iptables-save shows: table -> chain -> policy ("-" for a user chain), and the rules."""
    chains: dict  # table -> {chain: policy}
    rules: dict  # table -> [(chain, "rest of the line")]

    def has_chain(self, table: str, chain: str) -> bool:
        return chain in self.chains.get(table, {})

    def count(self, table: str, chain: str, rule: str) -> int:  # type: ignore[override]  # not tuple.count: never used
        return self.rules.get(table, []).count((chain, rule))

    def chain_rules(self, table: str, chain: str) -> list[str]:
        return [rule for c, rule in self.rules.get(table, []) if c == chain]


def parse_save(text: str) -> Tables:
    chains: dict = {}
    rules: dict = {}
    table = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:]
            chains.setdefault(table, {})
            rules.setdefault(table, [])
        elif table is None or line == "COMMIT":
            continue
        elif line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            chains[table][name] = rest.split(" ")[0] if rest else "-"
        elif line.startswith("-A "):
            chain, _, rest = line[3:].partition(" ")
            rules[table].append((chain, rest))
    return Tables(chains, rules)


def restore_script(rules: dict[str, list[str]], now: Tables) -> str:
    """One iptables-restore --noflush input: filter first (the policy), then nat and mangle.

    filter: the service chains are declared only while missing (a declaration would
    flush them); FSMINIT, INPUT and FORWARD are flushed and rebuilt; INPUT and FORWARD
    get the DROP policy (their last rules reject everything anyway; the policy only
    matters should someone flush them).  nat and mangle: the service chains are
    created when missing and hooked at position 1 when not hooked; copies of a hook
    beyond the first (imginit inserted the mangle hooks on every run) are deleted.
    Nothing else there is touched: Docker keeps its embedded-DNS rules in nat.
    """
    out = []
    for table in TABLES:
        lines = []
        if table == "filter":
            lines += [":INPUT DROP [0:0]", ":FORWARD DROP [0:0]"]
        for t, chain, _ in SERVICE_CHAINS:
            if t == table and not now.has_chain(table, chain):
                lines.append(f":{chain} - [0:0]")
        if table == "filter":
            lines.append(f"-F {OWN_CHAIN}" if now.has_chain(table, OWN_CHAIN) else f":{OWN_CHAIN} - [0:0]")
            lines += ["-F INPUT", "-F FORWARD"]
            lines += [f"-A {chain} {rule}" for chain in (OWN_CHAIN, "INPUT", "FORWARD") for rule in rules[chain]]
        else:
            for t, chain, hook in SERVICE_CHAINS:
                if t != table:
                    continue
                copies = now.count(table, hook, f"-j {chain}")
                if copies == 0:
                    lines.append(f"-I {hook} 1 -j {chain}")
                lines += [f"-D {hook} -j {chain}"] * max(0, copies - 1)
        if lines:
            out += [f"*{table}", *lines, "COMMIT"]
    return "\n".join(out) + "\n"


def withdraw_script(now: Tables) -> str:
    """Undo what fsm-init owns in the filter table (INPUT, FORWARD open again, FSMINIT empty);
    the service chains and their rules stay."""
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", "-F INPUT", "-F FORWARD"]
    if now.has_chain("filter", OWN_CHAIN):
        lines.append(f"-F {OWN_CHAIN}")
    return "\n".join(lines + ["COMMIT"]) + "\n"
