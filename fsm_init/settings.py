"""Environment settings shared by the engine, the thin reaper and srvctl (stdlib only)."""

import math
import os


def _seconds(name: str, default: float, alias: str = "") -> float:
    """$name in seconds; $alias (my_init's name for the same setting) when name is unset."""
    if alias and not os.environ.get(name) and os.environ.get(alias):
        name = alias
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not 0 <= value < math.inf:  # also nan
        from fsm_init import log

        log.warn(f"environment {name}={raw!r} is not a number of seconds >= 0; using {default}")
        return default
    return value


class Settings:
    """Where fsm-init keeps its files and how long it waits; read once at start."""

    def __init__(self) -> None:
        env = os.environ
        self.srv_root = env.get("FSM_INIT_SRV_ROOT") or "/srv"
        self.state_dir = env.get("FSM_INIT_STATE_DIR") or "/var/lib/fsm-init"
        self.run_dir = env.get("FSM_INIT_RUN_DIR") or "/run/fsm-init"
        self.stop_grace = _seconds("FSM_INIT_STOP_GRACE", 5.0, "KILL_PROCESS_TIMEOUT")
        self.leftover_grace = _seconds("FSM_INIT_LEFTOVER_GRACE", 2.0, "KILL_ALL_PROCESSES_TIMEOUT")
        self.startup_timeout = _seconds("FSM_INIT_STARTUP_TIMEOUT", 300.0)
        self.idle_wait = _seconds("FSM_INIT_IDLE_WAIT", 600.0)
        self.handover_after = _seconds("FSM_INIT_HANDOVER_AFTER", 1.0)
        self.exec_service = env.get("FSM_INIT_EXEC_SERVICE", "").lower() in ("1", "yes", "true")
        # my_init's directories; ENV_INIT_DIRECTORY is its own variable.
        self.init_dir = env.get("ENV_INIT_DIRECTORY") or "/etc/my_init.d"
        self.pre_shutdown_dir = env.get("FSM_INIT_PRE_SHUTDOWN_DIRECTORY") or "/etc/my_init.pre_shutdown.d"
        self.post_shutdown_dir = env.get("FSM_INIT_POST_SHUTDOWN_DIRECTORY") or "/etc/my_init.post_shutdown.d"
        self.service_dir = env.get("FSM_INIT_SERVICE_DIRECTORY") or "/etc/service"
        # my_init's options (the command line sets them)
        self.skip_startup_files = False
        self.skip_runit = False
        self.kill_all_on_exit = True

    @property
    def control_socket(self) -> str:
        return os.path.join(self.run_dir, "control.sock")
