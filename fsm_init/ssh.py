"""Step ssh: dropbear as a supporting service when ``sshsrv.enable`` is yes."""

from fsm_init.system import System, Unavailable


def enabled(config: dict, has_config: bool) -> bool:
    return has_config and config["sshsrv"]["enable"] == "yes"


def apply(config: dict, system: System) -> str:
    raise Unavailable("the dropbear SSH service is not available in this version of fsm-init")
