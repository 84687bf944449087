"""Step custom_init: an executable ./init.sh replaces fsm-init's own steps (exec, keeping PID 1)."""

import os

from fsm_init.system import System


def find(directory: str | None, system: System) -> str | None:
    if directory is None:
        return None
    path = os.path.join(directory, "init.sh")
    return path if system.is_executable(path) else None
