"""Step startup_scripts: my_init's start-up files, before any of the target's steps.

Every executable regular file in /etc/my_init.d ($ENV_INIT_DIRECTORY), in name order,
then /etc/rc.local when it is executable; each in the foreground with a time-out, the
container environment read again after each.  A non-zero exit or a time-out stops the
start-up and fsm-init exits 1, as my_init does (its start-up raises, and Python exits 1).
"""

from fsm_init.script_files import executables
from fsm_init.system import System

RC_LOCAL = "/etc/rc.local"
FAILED_STATUS = 1


def pending(settings, system: System) -> list[str]:
    if settings.skip_startup_files:
        return []
    found = executables(settings.init_dir, "", system)
    if system.is_executable(RC_LOCAL):
        found.append(RC_LOCAL)
    return found


def describe_failure(path: str, status: int | None, timeout: float) -> str:
    if status is None:
        return f"start-up script {path} timed out after {timeout:g}s and was killed"
    return f"start-up script {path} exited with status {status}"
