"""Step ssh: dropbear as a supporting service when ``sshsrv.enable`` is yes."""

from fsm_init.settings import Settings
from fsm_init.supporting import Spec
from fsm_init.system import System, Unavailable


def enabled(config: dict, has_config: bool) -> bool:
    return has_config and config["sshsrv"]["enable"] == "yes"


def spec(config: dict, system: System, settings: Settings) -> Spec:
    """Prepares what the process needs (and raises Unavailable when it cannot run here);
    the engine's Supporting starts, watches and restarts it."""
    raise Unavailable("the dropbear SSH service is not available in this version of fsm-init")
