"""Script discovery for every step that runs a directory's scripts by name prefix:
/etc/my_init.d (startup_scripts), the shutdown script directories (shutdown_scripts),
the target's EnvResume-* (env_resume) and PeriodicRT-*/ST-*/MT-* (watch)."""

import os

from fsm_init.system import System


def executables(directory: str | None, prefix: str, system: System) -> list[str]:
    """Executable regular files named prefix*, in name order (as the original's shell glob)."""
    if directory is None:
        return []
    paths = (os.path.join(directory, n) for n in system.list_dir(directory) if n.startswith(prefix))
    return [p for p in paths if system.is_executable(p)]
