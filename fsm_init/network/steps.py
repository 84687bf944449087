"""Steps firewall, ssh and pppoe: the container's network side.

The firewall's rules, dropbear (ssh) and the PPPoE dial-up (pppd) are applied on each
pass through the boot path, from the configuration then read, and kept while fsm-init
supervises; SSH's port is permitted exactly while dropbear runs.  A step that cannot be
done here (no iptables, no /dev/ppp) says so in one clear line, shows it in
`srvctl status`, and the machine goes on.
"""

from fsm_init.core import log
from fsm_init.core.loop import EventLoop
from fsm_init.core.settings import Settings
from fsm_init.core.system import System, Unavailable
from fsm_init.network import firewall, pppoe, ssh
from fsm_init.network.supporting import Supporting

STEPS = {"ssh": ssh, "pppoe": pppoe}


class Network:
    def __init__(self, system: System, loop: EventLoop, settings: Settings) -> None:
        self.system, self.settings = system, settings
        self.firewall = firewall.Firewall(system, settings)
        self.firewall_status = ""
        self.supporters = {name: Supporting(name, system, loop, settings.stop_grace) for name in STEPS}
        self.unavailable: dict[str, str] = {}  # step -> why it cannot be done here

    def apply_firewall(self, config: dict, has_config: bool) -> None:
        self.firewall_status = ""
        if firewall.enabled(config, has_config):
            self.firewall_status = self._unless_unavailable(
                "firewall", lambda: self.firewall.apply(config, self._ssh_up()))
        elif self.firewall.families:  # switched off after fsm-init applied its rules
            self._unless_unavailable("firewall", self.firewall.withdraw)

    def apply(self, name: str, config: dict, has_config: bool) -> None:
        """Step firewall (the rules applied), ssh or pppoe (its daemon started, changed or
        stopped as the config says)."""
        if name == "firewall":
            self.apply_firewall(config, has_config)
            return
        step = STEPS[name]
        spec = None
        if step.enabled(config, has_config):
            spec = self._unless_unavailable(name, lambda: step.spec(config, self.system, self.settings))
        self.supporters[name].apply(spec or None)

    def _ssh_up(self) -> bool:
        return self.supporters["ssh"].pid is not None

    def sync_ssh_permit(self, config: dict, has_config: bool) -> None:
        """dropbear started or exited: its port is permitted exactly while it runs."""
        if not self.firewall.families or not firewall.enabled(config, has_config):
            return
        try:
            self.firewall_status = self.firewall.apply(config, self._ssh_up(), quiet=True)
        except Unavailable as e:
            log.error(f"firewall: cannot update the SSH port's permit: {e}")

    def _unless_unavailable(self, name: str, work):
        """The step's work; if it cannot be done here, one clear line and the machine goes on."""
        self.unavailable.pop(name, None)
        try:
            return work()
        except Unavailable as e:
            self.unavailable[name] = str(e)
            log.error(f"{name} unavailable: {e}")
            return ""

    def shut_down(self) -> None:
        for supporter in self.supporters.values():
            supporter.shut_down()

    def keepalive(self) -> None:
        for supporter in self.supporters.values():
            supporter.keepalive()

    def exited(self, pid: int, status: int) -> bool:
        return any(s.exited(pid, status) for s in self.supporters.values())

    def status(self, syslog: str | None = None) -> dict[str, str]:
        """For `srvctl status`: each step's state, unavailable ones included; syslog: the
        relay's, when it was tried."""
        status = {name: f"unavailable: {why}" for name, why in self.unavailable.items()}
        if self.firewall_status:
            status["firewall"] = self.firewall_status
        if syslog is not None:
            status["syslog"] = syslog
        for name, supporter in self.supporters.items():
            if supporter.spec or supporter.pid:
                status[name] = supporter.status()
                describe = getattr(STEPS[name], "describe", None)  # pppoe: the link
                if describe and supporter.pid:
                    status[name] += f"; {describe(self.system, self.settings)}"
        return status
