"""Step custom_init: an executable ./init.sh replaces fsm-init's own steps (exec, keeping PID 1)."""

import os

from fsm_init import trust
from fsm_init.system import System


def find(directory: str | None, system: System) -> str | None:
    """./init.sh when it is executable and no other user could change it (refused: logged
    once, and fsm-init carries on with its own steps)."""
    if directory is None:
        return None
    path = os.path.join(directory, "init.sh")
    if not system.is_executable(path):
        return None
    return path if trust.trusted(path, system, "exec") else None
