"""Step env_resume: ./EnvResume-* in name order, each in the foreground, once per container start.

They restore state that does not survive a container restart (interface addresses,
MACs); a failure is logged, not fatal.
"""

from fsm_init.script_files import executables
from fsm_init.system import System

PREFIX = "EnvResume-"
TIMEOUT = 60.0


def pending(directory: str | None, system: System) -> list[str]:
    return executables(directory, PREFIX, system)
