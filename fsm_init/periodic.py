"""The target's own scripts, found by name prefix: EnvResume-*, PeriodicRT-*, PeriodicST-*, PeriodicMT-*."""

import os

from fsm_init.system import System


def scripts(directory: str | None, prefix: str, system: System) -> list[str]:
    """Executable regular files named prefix*, in name order (as the original's shell glob)."""
    if directory is None:
        return []
    paths = (os.path.join(directory, n) for n in system.list_dir(directory) if n.startswith(prefix))
    return [p for p in paths if system.is_executable(p)]
