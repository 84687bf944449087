"""The engine: the model that ``table.TRANSITIONS`` drives, and the wiring of its parts.

``on_enter_<state>`` methods start each state's work in the step modules and objects
(``launch``, ``foreground``, ``watch``, ``daemons``, ``network``, ...), then either fire
the next trigger at once or leave a deadline, a child process or a control request to
fire it from the event loop.  Guards are the small predicates named in the table.  What
happened and why is kept by ``history``; what fsm-init says about itself by ``explain``
and ``verbs``.  Nothing here sleeps or waits.
"""

import signal
import sys
from collections.abc import Callable
from functools import partial

from fsm_init import handover
from fsm_init.compat.container_env import ContainerEnvironment
from fsm_init.compat.daemons import Daemons
from fsm_init.compat.syslog_relay import SyslogRelay
from fsm_init.config import workcfg as config
from fsm_init.core import log, oom
from fsm_init.core.budget import StopBudget
from fsm_init.core.control import ControlServer
from fsm_init.core.forwarded import ForwardLog
from fsm_init.core.http_probes import HttpServer
from fsm_init.core.journal import Journal
from fsm_init.core.kill import Stopper
from fsm_init.core.loop import STOP_SIGNALS, EventLoop
from fsm_init.core.metrics import Metrics
from fsm_init.core.readiness import Notifier
from fsm_init.core.repeats import Repeats
from fsm_init.core.settings import Settings
from fsm_init.core.system import System, exit_code
from fsm_init.core.table import STATES, STOPPABLE, TRANSITIONS
from fsm_init.core.writes import FileWrites
from fsm_init.explain import Explain
from fsm_init.history import History, RecordingMachine
from fsm_init.network.steps import Network
from fsm_init.script_steps import ScriptSteps
from fsm_init.steps import custom_init, delay, load_config, resolve_target, start, watch
from fsm_init.steps.foreground import Foreground
from fsm_init.steps.launch import Launch, service_env
from fsm_init.steps.reload import Reloader
from fsm_init.steps.service import Service
from fsm_init.supervise import Supervise
from fsm_init.verbs import Verbs

INTERNAL_ERROR_STATUS = 70  # EX_SOFTWARE: fsm-init itself failed; never reported as 0
NOT_RESOLVED = resolve_target.Target(None, None, first_start=False)  # until step resolve_target


class Engine:
    # Set by transitions on the model: the current state and a may_<trigger>() per trigger.
    state: str
    trigger: Callable[[str], bool]
    may_restart_request: Callable[[], bool]

    def __init__(self, system: System, settings: Settings, environ: dict,
                 command: list[str] | None = None) -> None:
        self.system, self.settings = system, settings
        self.environ = dict(environ)
        # $SRVCFG as given, for load_config; every child (EnvResume-*, the daemons, the
        # container environment's dump) gets it with the passwords masked.
        self.srvcfg = self.environ.get("SRVCFG", "")
        if self.srvcfg:
            self.environ["SRVCFG"] = config.masked_text(self.srvcfg)
        self.command_line = command  # the command given to fsm-init, run instead of workstart
        self.loop = EventLoop(system, self._on_signal, self._on_exit)
        # The stop path's clock and, with FSM_INIT_STOP_BUDGET, its deadline (budget.py).
        self.budget = StopBudget(settings.stop_budget, settings.stop_grace, settings.leftover_grace, system.now)
        self.stopper = Stopper(system, self.loop, budget=self.budget)
        self.forwards = ForwardLog(self.loop, system)
        self.repeats = Repeats()  # spawn failures said once while they repeat
        self.foreground = Foreground(system, self.loop, self.repeats)  # one script at a time
        self.checks = watch.Checks(system, self.loop, self.foreground, self.repeats)
        self.control: ControlServer | None = None
        self.http: HttpServer | None = None  # FSM_INIT_HTTP
        self.metrics = Metrics()  # counted by small hooks: transitions, check cycles, OOM kills
        self.target = NOT_RESOLVED
        self.source: load_config.ConfigSource | None = None
        self.config = config.defaults()
        self.has_config = False
        self.mode = start.mode(self.config)
        self.service = Service(system.now)
        # workready notify / fd:N: the service's own word, heard in the loop (readiness.py)
        self.notifier = Notifier(system, self.loop, settings.run_dir, self.service.declared,
                                 lambda cause: self.supervise.readiness_failed(cause))
        # A command line runs where fsm-init was started (the image's WORKDIR), as under
        # tini; workstart and the target's scripts run in the target directory.
        self.launch = Launch(system, settings, self.service, self.repeats, command, system.getcwd(),
                             self.keeps_supervising, self.release, self.notifier)
        self.exit_status = 0
        self.stop_signal: int = signal.SIGTERM
        self.stopped_by_signal = False  # SIGTERM/SIGINT, not srvctl stop or an internal error
        self.network = Network(system, self.loop, settings)  # steps firewall, ssh, pppoe
        self.network.supporters["ssh"].on_change = self._sync_ssh_permit
        self.daemons = Daemons(system, self.loop, settings.stop_grace, lambda: self.config, self.budget)
        # The OOM kill count of fsm-init's memory cgroup, read now and on a SIGKILL death.
        self.oom = oom.Watch.start(system)
        self.oom.observer = self.metrics.oom_kill
        self.daemons.killed_by_oom = self.oom.killed_by
        self.container_env = ContainerEnvironment.from_environ(system, self.environ)
        # FSM_INIT_SYSLOG_SOCKET moves /dev/log (tests), "off" disables the relay.
        self.syslog_path = self.environ.get("FSM_INIT_SYSLOG_SOCKET") or "/dev/log"
        self.syslog = SyslogRelay(self.loop, self.syslog_path)
        self.writes = FileWrites(system.now, system.wall)
        self.history = History(system, Journal(settings.run_dir, system, self.writes), lambda: self.state)
        self.history.recorded = self.metrics.transition
        self.history.annotate = self.budget.journal  # the stop's time line, on the way to exited
        self.explain = Explain(self)  # srvctl why, health and status
        self.verbs = Verbs(self)  # the answers to control requests
        self.reloader = Reloader(self)  # srvctl reload
        self.scripts = ScriptSteps(self)  # startup_scripts, env_resume, pre_shutdown, post_shutdown
        self.supervise: Supervise = Supervise(self)  # idle, restart_interval, watch, check, restart, gave_up, stopping
        self.internal_error = ""  # the first internal error: the exit status is then never 0
        # Each state's work: a step object's method (here), or an on_enter_<state> method below.
        work = {"startup_scripts": self.scripts.startup_scripts, "env_resume": self.scripts.env_resume,
                "idle": self.supervise.idle, "handover": partial(handover.enter, self),
                "restart_interval": self.supervise.restart_interval, "watch": self.supervise.watch,
                "check": self.supervise.check, "restart": self.supervise.restart, "gave_up": self.supervise.gave_up,
                "stopping": self.supervise.stopping, "post_shutdown": self.scripts.post_shutdown}
        self.machine = RecordingMachine(
            model=self, states=[{"name": name, "on_enter": [work[name]] if name in work else []} for name, _ in STATES],
            # Each transition's own "before" callbacks run once its guards passed: the one taken.
            transitions=[dict(row, before=[partial(self.history.take, row["trigger"], row["dest"]),
                                           partial(self.budget.entering, row["dest"])]) for row in TRANSITIONS],
            initial="boot", auto_transitions=False, queued=True, ignore_invalid_triggers=True,
            prepare_event=self.history.new_event, before_state_change=partial(self.loop.cancel, "state"),
            after_state_change=self._entered_state, on_exception=self._on_error,
            finalize_event=self.history.event_done)

    # -- running -----------------------------------------------------------------

    def run(self) -> int:
        log.set_state(lambda: self.state)
        log.attach(self.loop)
        self.loop.install()
        if self.system.getpid() != 1 and not self.system.set_subreaper():
            log.warn("not PID 1 and cannot become a child subreaper: orphans will not be reaped")
        self.listen()
        self.http = HttpServer.start(self.settings.http, self.loop, self.verbs)
        if self.syslog_path != "off":
            self.syslog.start()
        self.fire("begin")
        self.loop.run()
        return self.exit_status

    def listen(self) -> None:
        self.control = ControlServer.listen(self.settings.control_socket, self.loop, self.verbs.handle)

    def release(self) -> None:
        """Before an exec: the control socket and /dev/log are closed (removed), the journal written."""
        if self.control:
            self.control.close()
            self.control = None
        self.syslog.close()
        self.notifier.close()
        self.history.journal.flush()  # the chain's lines and status.json: the exec would lose them

    def _entered_state(self) -> None:
        self.history.entered(self.service.run_count, self.explain.snapshot)

    def fire(self, trigger: str, cause: str = "") -> None:
        """Fire a trigger, saying why (for the journal and `srvctl why`).  Every trigger
        goes through here (history.queue says how queued triggers keep their causes)."""
        self.history.fire(lambda: self.trigger(trigger), cause)

    def stop(self, cause: str, signum: int | None = None) -> None:
        """Take the stop path: for a stop signal (signum), or srvctl stop (SIGTERM the service)."""
        self.stop_signal = signum or signal.SIGTERM
        self.stopped_by_signal = signum is not None
        self.fire("stop", cause)

    def _on_error(self, *_args) -> None:
        # transitions calls this from inside its except block (with the trigger's own
        # arguments, not the event): the error is the one being handled.
        error = sys.exc_info()[1]
        if not isinstance(error, Exception):
            raise  # a BaseException (KeyboardInterrupt, the fakes' own stop ...) is not handled here
        log.error(f"internal error in state {self.state}: {error!r}")
        self.internal_error = self.internal_error or f"{error!r} in state {self.state}"
        log.exception(error)
        if self.state in STOPPABLE:
            self.fire("stop", f"internal error: {error!r}")
        elif self.state != "exited":  # on the stop path: on to its next state ("stopping" waits for group_gone)
            trigger = "group_gone" if self.state == "stopping" else "done"
            self.loop.call_later("state", 0, lambda: self.fire(trigger, f"internal error: {error!r}"))

    # -- guards --------------------------------------------------------------------

    def delay_due(self) -> bool:
        return self.service.run_count == 0 and delay.seconds(self.config, self.target.first_start, self.has_config) > 0

    def has_command(self) -> bool:
        return start.has_command(self.config, self.command_line)

    def non_daemon(self) -> bool:
        return self.mode.kind == start.NON_DAEMON

    def daemon_mode(self) -> bool:
        return self.mode.kind == start.DAEMON

    def has_instance(self) -> bool:
        return self.service.instance is not None

    def checks_passed(self) -> bool:
        return self.checks.cycle is not None and self.checks.cycle.passed

    def operator_request(self) -> bool:
        return self.service.restart_requested

    def retries_exhausted(self) -> bool:
        return self.service.retries_exhausted(self.config)

    def give_up_exits(self) -> bool:
        return self.config["workretry"]["action"] == "exit"

    def keeps_supervising(self) -> bool:
        # A watched service directory, even empty, may gain a service at run time.
        return bool(self.daemons.names or self.daemons.watching or self.notifier.needs_engine
                    or self.scripts.shutdown_scripts())

    # -- boot path: each state's work, in the table's order ---------------------------

    def on_enter_resolve_target(self) -> None:
        self.target, notes = resolve_target.resolve(self.settings, self.environ, self.system,
                                                    command=self.command_line is not None)
        resolve_target.say(notes)
        if self.target.directory:
            self.system.chdir(self.target.directory)
        self.source = load_config.ConfigSource(self.target, self.srvcfg, self.system, self.writes)
        self.fire("done")

    def on_enter_custom_init(self) -> None:
        path = custom_init.find(self.target.directory, self.system)
        if path:
            relaying = self.syslog.tried
            self.release()
            # init.sh takes over every step, the SSH password included: $SRVCFG as given.
            env = dict(self.environ, **({"SRVCFG": self.srvcfg} if self.srvcfg else {}))
            custom_init.take_over(path, self.system, env)
            self.listen()  # only reached when the exec failed: fsm-init's own steps carry on
            if relaying:
                self.syslog.start()
        self.fire("done")

    def on_enter_daemons(self) -> None:
        if self.settings.skip_runit:
            log.info(f"--skip-runit: {self.settings.service_dir} is not read")
        else:
            self.daemons.start_all(self.settings.service_dir, self.environ)
        self.scripts.check_graces(*self.daemons.stop_counts())
        self.fire("done")

    def on_enter_load_config(self) -> None:
        if self.source is None:
            raise RuntimeError("load_config before resolve_target")
        loaded = self.source.load()
        loaded.say()
        self.config, self.has_config = loaded.config, loaded.has_config
        self.mode = start.mode(self.config)
        self.fire("done")

    def on_enter_delay(self) -> None:
        seconds = delay.seconds(self.config, self.target.first_start, self.has_config)
        log.info(f"initdelay: waiting {seconds}s (srvctl restart goes on at once)")
        self.loop.call_later("state", seconds, lambda: self.fire("done", f"initdelay {seconds}s elapsed"))

    def on_enter_firewall(self) -> None:  # and ssh, pppoe: network.Network's steps
        self.network.apply(self.state, self.config, self.has_config)
        self.fire("done")

    on_enter_ssh = on_enter_pppoe = on_enter_firewall

    def _sync_ssh_permit(self) -> None:
        if self.state in STOPPABLE:
            self.network.sync_ssh_permit(self.config, self.has_config)

    def side_services(self) -> dict[str, str]:
        """`srvctl status`'s "supporting": the firewall, dropbear, pppd, the syslog relay."""
        return self.network.status(self.syslog.status() if self.syslog.tried else None)

    # -- the service ---------------------------------------------------------------------

    def service_env(self) -> dict:
        return service_env(self.environ, self.srvcfg, self.config, self.target)

    def on_enter_start(self) -> None:
        self.service.starting()
        self.checks.new_instance()
        self.supervise.write_count(start.count_text(self.service.run_count, self.mode, self.config))
        self.fire(*self.launch.start(self.config, self.mode, self.target.directory, self.service_env()))

    def on_enter_foreground(self) -> None:
        after = self.settings.handover_after
        if after > 0:
            self.loop.call_later("state", after, lambda: self.fire("settled", f"the service ran {after:g}s"))

    # -- stop path ---------------------------------------------------------------------

    def on_enter_pre_shutdown(self) -> None:
        self.loop.cancel("cycle")
        self.network.shut_down()  # dropbear, pppd: a restart under way does not start them again
        self.scripts.pre_shutdown()

    def on_enter_stop_daemons(self) -> None:
        self.daemons.stop_all(lambda: self.fire("done", f"no {self.settings.service_dir} daemon runs"))

    def on_enter_teardown(self) -> None:
        self.loop.cancel("cycle")
        if not self.settings.kill_all_on_exit:
            log.info("--no-kill-all-on-exit: leftover processes are left alone")
            self.fire("done", "--no-kill-all-on-exit")
            return
        self.stopper.sweep(self.settings.leftover_grace, lambda: self.fire("done", "no leftover process remains"))

    def on_enter_exited(self) -> None:
        # The service may be a zombie not reaped yet (it died while the stop path ran).
        self.loop.reap()
        self.exit_status = self.service.exit_status(self.stop_signal if self.stopped_by_signal else None)
        self.forwards.close()
        if self.internal_error and self.exit_status == 0:
            self.exit_status = INTERNAL_ERROR_STATUS
            log.error(f"exiting with status {self.exit_status}: an internal error ({self.internal_error}) "
                      "ended fsm-init, which must not look like success")
        else:
            log.info(f"exiting with status {self.exit_status}")
        self.release()
        if self.http:
            self.http.close()
        self.loop.stop()

    # -- events from the loop ---------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in STOP_SIGNALS:
            if self.state in STOPPABLE:
                log.info(f"received {name}: stopping")
                self.stop(f"received {name}", signum)
            return
        if self.service.instance and self.service.instance.group.signal(self.system, signum):
            self.forwards.forwarded(name)

    def _on_exit(self, pid: int, status: int) -> None:
        if not (self.supervise.exited(pid, status) or self.network.exited(pid, status)
                or self.daemons.exited(pid, status) or self.foreground.exited(pid, exit_code(status))):
            self.checks.exited(pid)
        self.stopper.check_soon()
