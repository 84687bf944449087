"""Steps pre_shutdown and post_shutdown: my_init's shutdown hooks.

Every executable in /etc/my_init.pre_shutdown.d runs in name order when the stop path
begins, while the service and the /etc/service daemons still run (to deregister, to
flush); every executable in /etc/my_init.post_shutdown.d once they are gone.  Each
gets the stop grace time; a failure is logged and the stop goes on.  my_init runs them
only when runit is used; fsm-init always has a stop path, so it always runs them
(``--skip-startup-files`` turns them off with the start-up files).
"""

from fsm_init.script_files import executables
from fsm_init.system import System


def pending(directory: str, settings, system: System) -> list[str]:
    return [] if settings.skip_startup_files else executables(directory, "", system)
