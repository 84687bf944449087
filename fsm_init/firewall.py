"""Step firewall: takes over inbound and forwarded traffic with iptables.

Runs whenever a configuration exists (as imginit did); ``firewall.enable`` "no"
leaves iptables alone.  The rule set itself arrives with the network-steps issue.
"""

from fsm_init.system import System, Unavailable


def enabled(config: dict, has_config: bool) -> bool:
    return has_config and config["firewall"]["enable"] == "yes"


def apply(config: dict, system: System) -> str:
    raise Unavailable("the iptables firewall is not available in this version of fsm-init; inbound traffic is not filtered")
