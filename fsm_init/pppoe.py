"""Step pppoe: a PPPoE dial-up (pppd) as a supporting service when ``inetdail.enable`` is yes."""

from fsm_init.system import System, Unavailable


def enabled(config: dict, has_config: bool) -> bool:
    return has_config and config["inetdail"]["enable"] == "yes"


def apply(config: dict, system: System) -> str:
    raise Unavailable("the PPPoE dial-up is not available in this version of fsm-init")
