"""The whole lifecycle of fsm-init: one table of states and guarded transitions.

This table is the single source for the running engine (``engine.Engine`` builds a
``transitions.Machine`` from it) and for the diagrams (``fsm-init graph``).  Read it
top to bottom: the boot path, the three ways a service runs, the restart loop, the
stop path.  Transitions sharing a trigger and source are tried in order; the first
whose guards pass wins, so an unguarded line after guarded ones is the fallback.

Guards (methods of the engine, named for what they ask):
  delay_due         first container start, a configuration exists and initdelay > 0
  has_command       there is something to start (workstart or a command line)
  non_daemon        workwatch is not a non-negative integer
  daemon_mode       workwatch is 0
  has_instance      a service instance was started in this round and not yet stopped
  checks_passed     every PeriodicST-* of this cycle exited 0 in time
  operator_request  the restart was asked for with ``srvctl restart``
  retries_exhausted one more failure restart would exceed workretry.max within workretry.window
  give_up_exits     workretry.action is "exit" (not "stay", which keeps the container up for debugging)
  keeps_supervising /etc/service daemons, a watched /etc/service, shutdown scripts or a declared
                    readiness (workready notify, fd:N) need the engine: the thin reaper cannot take over
"""

# The three ways the service runs, the one list of their names: start.mode picks one
# from workwatch, the guards non_daemon and daemon_mode ask which, the status view shows it.
NON_DAEMON, DAEMON, STATUS_CHECK = "non-daemon", "daemon", "status-check"
MODES = (NON_DAEMON, DAEMON, STATUS_CHECK)

STATES = [
    ("boot", "PID 1 duties taken over: signals, reaping, control socket"),
    ("startup_scripts", "import /etc/container_environment; /etc/my_init.d/* in name order, then /etc/rc.local"),
    ("resolve_target", "choose /srv/$SRVNAME (or the imginit fall-back) and remember it"),
    ("custom_init", "exec ./init.sh when the target has one (it keeps PID 1)"),
    ("env_resume", "run ./EnvResume-* in order, once per container start"),
    ("daemons", "start each /etc/service/NAME/run, supervised beside the service"),
    ("load_config", "$SRVCFG on the first start, then ./workcfg.json, validated"),
    ("delay", "initdelay seconds, on the first start only"),
    ("firewall", "inbound and forward policy (iptables)"),
    ("ssh", "dropbear SSH as a supporting service"),
    ("pppoe", "PPPoE dial-up as a supporting service"),
    ("idle", "no workstart: wait, then read the config again"),
    ("start", "spawn the service in a session of its own"),
    ("foreground", "non-daemon: forward signals and reap until the service exits"),
    ("handover", "non-daemon, settled: the thin standard-library reaper carries on"),
    ("restart_interval", "workintvl seconds: after a start before the first check, "
                         "and before a restart a failure caused"),
    ("watch", "supervised: wait for the next check cycle (or, in daemon mode, the service's exit)"),
    ("check", "PeriodicRT-* in the background, PeriodicST-* in turn, PeriodicMT-* when all passed"),
    ("restart", "stop the previous instance's whole session: TERM, grace, KILL"),
    ("gave_up", "too many failure restarts within workretry.window: exit, or stay up for debugging"),
    ("pre_shutdown", "/etc/my_init.pre_shutdown.d/* in name order, while everything still runs"),
    ("stopping", "the stop signal sent to the service's session; KILL at the grace deadline"),
    ("stop_daemons", "the /etc/service daemons one by one, in reverse order: TERM, grace, KILL"),
    ("post_shutdown", "/etc/my_init.post_shutdown.d/* in name order"),
    ("teardown", "TERM, then KILL, every leftover process"),
    ("exited", "fsm-init exits with the service's status"),
]

# The stop path is reachable from every state that is not already on it.
STOP_PATH = ("pre_shutdown", "stopping", "stop_daemons", "post_shutdown", "teardown", "exited")
STOPPABLE = [name for name, _ in STATES if name not in STOP_PATH]


def _t(trigger, source, dest, conditions=(), unless=()):
    return {"trigger": trigger, "source": source, "dest": dest,
            "conditions": list(conditions), "unless": list(unless)}


TRANSITIONS = [
    _t("begin", "boot", "startup_scripts"),
    _t("done", "startup_scripts", "resolve_target"),
    _t("script_failed", "startup_scripts", "teardown"),
    _t("done", "resolve_target", "custom_init"),
    _t("done", "custom_init", "env_resume"),
    _t("done", "env_resume", "daemons"),
    _t("done", "daemons", "load_config"),
    _t("done", "load_config", "delay", ["delay_due"]),
    _t("done", "load_config", "firewall"),
    _t("done", "delay", "firewall"),
    _t("restart_request", "delay", "firewall"),
    _t("done", "firewall", "ssh"),
    _t("done", "ssh", "pppoe"),
    _t("done", "pppoe", "start", ["has_command"]),
    _t("done", "pppoe", "idle"),
    _t("done", "idle", "load_config"),
    _t("restart_request", "idle", "load_config"),
    # start: where the service goes depends on the mode.
    _t("spawned", "start", "foreground", ["non_daemon"]),
    _t("spawned", "start", "watch", ["daemon_mode"]),
    _t("spawned", "start", "restart_interval"),
    _t("spawn_failed", "start", "pre_shutdown", ["non_daemon"]),
    _t("spawn_failed", "start", "gave_up", ["retries_exhausted"]),
    _t("spawn_failed", "start", "restart_interval"),
    # non-daemon: the service's exit is fsm-init's exit.
    _t("service_exit", "foreground", "pre_shutdown"),
    _t("settled", "foreground", "handover", unless=["keeps_supervising"]),
    _t("service_exit", "handover", "teardown"),
    # supervised: interval, watch, check, restart.
    _t("done", "restart_interval", "watch", ["has_instance"]),
    _t("done", "restart_interval", "load_config"),
    _t("restart_request", "restart_interval", "restart", ["has_instance"]),
    _t("restart_request", "restart_interval", "load_config"),
    _t("cycle_due", "watch", "check"),
    _t("service_exit", "watch", "restart", ["daemon_mode"]),
    _t("restart_request", "watch", "restart"),
    _t("checks_done", "check", "watch", ["checks_passed"]),
    _t("checks_done", "check", "restart"),
    _t("restart_request", "check", "restart"),
    _t("group_gone", "restart", "load_config", ["operator_request"]),
    _t("group_gone", "restart", "gave_up", ["retries_exhausted"]),
    _t("group_gone", "restart", "restart_interval"),
    _t("done", "gave_up", "pre_shutdown", ["give_up_exits"]),
    _t("restart_request", "gave_up", "load_config"),
    # stop path: a stop signal or `srvctl stop`, from anywhere.
    _t("stop", STOPPABLE, "pre_shutdown"),
    _t("done", "pre_shutdown", "stopping"),
    _t("group_gone", "stopping", "stop_daemons"),
    _t("done", "stop_daemons", "post_shutdown"),
    _t("done", "post_shutdown", "teardown"),
    _t("done", "teardown", "exited"),
]

GUARDS = sorted({g for t in TRANSITIONS for g in t["conditions"] + t["unless"]})
