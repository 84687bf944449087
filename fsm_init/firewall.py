"""Step firewall: takes over inbound and forwarded traffic with iptables.

Runs whenever a configuration exists (as imginit did); ``firewall.enable`` "no"
leaves iptables alone.  The rule set itself arrives with the network-steps issue.
"""

from fsm_init.settings import Settings
from fsm_init.system import System, Unavailable


def enabled(config: dict, has_config: bool) -> bool:
    return has_config and config["firewall"]["enable"] == "yes"


class Firewall:
    """Applies the config's permits; remembers what it applied, across restarts."""

    def __init__(self, system: System, settings: Settings) -> None:
        self.system, self.settings = system, settings

    def apply(self, config: dict) -> str:
        """A one-line summary of what is in force; raises Unavailable when it cannot be done here."""
        raise Unavailable("the iptables firewall is not available in this version of fsm-init; inbound traffic is not filtered")
