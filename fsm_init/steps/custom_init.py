"""Step custom_init: an executable ./init.sh replaces fsm-init's own steps (exec, keeping PID 1)."""

import os

from fsm_init.core import log, trust
from fsm_init.core.system import System


def find(directory: str | None, system: System) -> str | None:
    """./init.sh when it is executable and no other user could change it (refused: logged
    once, and fsm-init carries on with its own steps)."""
    if directory is None:
        return None
    path = os.path.join(directory, "init.sh")
    if not system.is_executable(path):
        return None
    return path if trust.trusted(path, system, "exec") else None


def take_over(path: str, system: System, environ: dict) -> None:
    """exec path in fsm-init's place (keeping PID 1); returns only if the exec failed."""
    log.info(f"custom init {path} takes over (exec, keeping this PID and environment)")
    try:
        system.execve([path], environ)
    except OSError as e:
        log.error(f"cannot exec {path}: {e.strerror}; carrying on with fsm-init's own steps")
