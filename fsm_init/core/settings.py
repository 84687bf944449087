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
        from fsm_init.core import log

        log.warn(f"environment {name}={raw!r} is not a number of seconds >= 0; using {default}")
        return default
    return value


RUN_DIR = "/run/fsm-init"
STATE_DIR = "/var/lib/fsm-init"
# Where the run directory goes when RUN_DIR cannot be made (a non-root uid, a read-only
# root): a directory of the uid's own in /tmp, else in /dev/shm (a tmpfs Docker mounts
# writable for every uid even with --read-only).
FALLBACK_PARENTS = ("/tmp", "/dev/shm")


def fallback_run_dirs(uid: int) -> list[str]:
    return [os.path.join(parent, f"fsm-init-{uid}") for parent in FALLBACK_PARENTS]


def _pid1_uid() -> int | None:
    try:
        return os.stat("/proc/1").st_uid
    except OSError:
        return None


def locate_run_dir() -> str:
    """The run directory of the fsm-init a reader (srvctl, ``fsm-init status``, ``graph
    --live``) talks to, found the way fsm-init chose it: RUN_DIR, else the fall-backs of
    this uid, else those of PID 1's uid (``docker exec -u root`` into a ``--user``
    container).  A fall-back counts only when it is that uid's private directory; the
    first holding a control socket wins, else the first holding a journal, else RUN_DIR."""
    uids = [os.geteuid()]
    pid1 = _pid1_uid()
    if pid1 is not None and pid1 not in uids:
        uids.append(pid1)
    from fsm_init.core.private_dirs import private_problem

    candidates = [RUN_DIR] + [d for uid in uids for d in fallback_run_dirs(uid)
                              if not private_problem(d, uid)]
    for name in ("control.sock", "journal.jsonl"):
        for directory in candidates:
            if os.path.exists(os.path.join(directory, name)):
                return directory
    return RUN_DIR


def settle_dirs(settings: "Settings", system) -> list[tuple[str, str]]:
    """fsm-init's own choice of its run and state directories (through ``system``), the
    log lines that explain it.  An explicit FSM_INIT_RUN_DIR or FSM_INIT_STATE_DIR is
    used as given, unless another user could change it (then refused, said why)."""
    notes = []
    usable = True
    from fsm_init.core import trust

    given = settings.run_dir_given
    if given:
        # The control socket, the journal and the PPPoE hooks pppd runs as root live there:
        # a directory another user could change is not used (README: Security model).
        problem = trust.problem(settings.run_dir, system)
        if problem:
            notes.append(("error", f"refusing the run directory {settings.run_dir} (FSM_INIT_RUN_DIR): another "
                                   f"user could change it: {problem}; choosing one as without it"))
            given = False
    if not given:
        # Also fsm-init's alone: under a world-writable /run (--tmpfs /run) another uid
        # could have made it first, with links planted for root's journal writes.
        why = system.writable_dir(RUN_DIR, 0o700) or system.private_dir(RUN_DIR)
        if why:
            tried = [f"{RUN_DIR} ({why})"]
            for directory in fallback_run_dirs(system.euid()):
                problem = system.private_dir(directory)
                if not problem:
                    settings.run_dir = directory
                    notes.append(("info", f"run directory {directory} ({', '.join(tried)})"))
                    break
                tried.append(f"{directory} ({problem})")
            else:
                usable = False
                notes.append(("error", f"no usable run directory: {', '.join(tried)}; srvctl and the journal are "
                                       "off (set FSM_INIT_RUN_DIR to a writable directory)"))
        else:
            settings.run_dir = RUN_DIR
    if not settings.state_dir_given and usable:
        why = system.writable_dir(STATE_DIR)
        if why:
            settings.state_dir = os.path.join(settings.run_dir, "state")
            notes.append(("info", f"state directory {settings.state_dir} ({STATE_DIR}: {why})"))
    if usable:
        # Root's SSH host keys and root-password record live there, and the marker that
        # tells a first start from a restart: a directory another user could change (a
        # volume, a chown -R of /var/lib) is not used, given or not (README: Security model).
        problem = trust.problem(settings.state_dir, system)
        if problem:
            refused, settings.state_dir = settings.state_dir, os.path.join(settings.run_dir, "state")
            notes.append(("error", f"refusing the state directory {refused}: another user could change it: {problem}; "
                                   f"using {settings.state_dir} (lost when the container stops)"))
    return notes


class Settings:
    """Where fsm-init keeps its files and how long it waits; read once at start."""

    def __init__(self) -> None:
        env = os.environ
        self.srv_root = env.get("FSM_INIT_SRV_ROOT") or "/srv"
        self.state_dir_given = bool(env.get("FSM_INIT_STATE_DIR"))
        self.state_dir = env.get("FSM_INIT_STATE_DIR") or STATE_DIR
        self.run_dir_given = bool(env.get("FSM_INIT_RUN_DIR"))
        # A reader's view; fsm-init itself makes its choice with settle_dirs().
        self.run_dir = env.get("FSM_INIT_RUN_DIR") or locate_run_dir()
        self.stop_grace = _seconds("FSM_INIT_STOP_GRACE", 5.0, "KILL_PROCESS_TIMEOUT")
        self.leftover_grace = _seconds("FSM_INIT_LEFTOVER_GRACE", 2.0, "KILL_ALL_PROCESSES_TIMEOUT")
        from fsm_init.core import budget

        # The whole stop path's deadline (None: each part its own grace); a bad value is
        # refused with stop_budget_error, which fsm-init says once at start-up.
        self.stop_budget, self.stop_budget_error = budget.parse(env.get("FSM_INIT_STOP_BUDGET"))
        self.startup_timeout = _seconds("FSM_INIT_STARTUP_TIMEOUT", 300.0)
        self.idle_wait = _seconds("FSM_INIT_IDLE_WAIT", 600.0)
        self.handover_after = _seconds("FSM_INIT_HANDOVER_AFTER", 1.0)
        self.http = env.get("FSM_INIT_HTTP", "")  # ADDR:PORT of the HTTP probes (http_probes.py); off when empty
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
