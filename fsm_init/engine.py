"""The engine: the model that ``table.TRANSITIONS`` drives.

``on_enter_<state>`` methods do each state's work through the step modules and the
``System`` boundary, then either fire the next trigger at once or leave a deadline,
a child process or a control request to fire it from the event loop.  Guards are
the small predicates named in the table.  Nothing here sleeps or waits.
"""

import os
import signal
import sys
from typing import NamedTuple

from functools import partial

from transitions import Event, EventData, Machine, Transition

from fsm_init import (config, custom_init, delay, env_resume, firewall, load_config, log, oom, pppoe,
                      resolve_target, restart_interval, shutdown_scripts, ssh, start, startup_scripts, trust,
                      watch)
from fsm_init.container_env import ContainerEnvironment
from fsm_init.control import NOT_SUPERVISED, ControlServer
from fsm_init.daemons import Daemons
from fsm_init.forwarded import ForwardLog
from fsm_init.journal import Journal
from fsm_init.repeats import Repeats, is_resource
from fsm_init.writes import FileWrites
from fsm_init.output import CapturedOutput
from fsm_init.loop import STOP_SIGNALS, EventLoop
from fsm_init.settings import Settings
from fsm_init.kill import Group, Stopper
from fsm_init.supporting import Supporting
from fsm_init.syslog_relay import SyslogRelay
from fsm_init.system import System, Unavailable, describe_exit, exit_code, spawn_error_code, which
from fsm_init.table import STATES, STOPPABLE, TRANSITIONS

SUPPORTING_STEPS = {"ssh": ssh, "pppoe": pppoe}
INTERNAL_ERROR_STATUS = 70  # EX_SOFTWARE: fsm-init itself failed; never reported as 0


class _RecordingTransition(Transition):
    """Records on the model each guard's value and the transition taken, for the journal."""

    def _eval_conditions(self, event_data):
        model = event_data.model
        for condition in self.conditions:
            passed = condition.check(event_data)
            model.guard_results[condition.func] = passed if condition.target else not passed
            if not passed:
                return False
        model.taking = (self.source, self.dest, event_data.event.name)
        return True


class _CausedEvent(Event):
    """Carries the cause given to ``Engine.fire`` with the queued trigger: with
    queued=True a trigger fired while another transition runs is processed later,
    and must not lend its cause to the transition still being recorded."""

    def trigger(self, model, *args, **kwargs):
        data = EventData(None, self, self.machine, model, args=args, kwargs=kwargs)
        data.cause, model.next_cause = model.next_cause, ""
        return self.machine._process(partial(self._trigger, data))

    def _trigger(self, event_data):
        event_data.model.cause = event_data.cause
        return super()._trigger(event_data)


class _Machine(Machine):
    transition_cls = _RecordingTransition
    event_cls = _CausedEvent


class Instance(NamedTuple):
    pid: int
    group: Group
    started: float  # monotonic


class Script(NamedTuple):
    """A script run in the foreground: a start-up or shutdown script, EnvResume-* or PeriodicST-*."""
    pid: int
    name: str
    started: float
    on_done: object  # callable(name, exit | None, duration, output)
    output: CapturedOutput | None


class Engine:
    def __init__(self, system: System, settings: Settings, environ: dict,
                 command: list[str] | None = None) -> None:
        self.system, self.settings = system, settings
        self.environ = dict(environ)
        # $SRVCFG as given, for load_config; every child (EnvResume-*, the daemons, the
        # container environment's dump) gets it with the passwords masked.
        self.srvcfg = self.environ.get("SRVCFG", "")
        if self.srvcfg:
            self.environ["SRVCFG"] = config.masked_text(self.srvcfg)
        self.override = command
        # A command line runs where fsm-init was started (the image's WORKDIR), as under
        # tini; workstart and the target's scripts run in the target directory.
        self.caller_dir = system.getcwd()
        self.loop = EventLoop(system, self._on_signal, self._on_exit)
        self.stopper = Stopper(system, self.loop)
        self.forwards = ForwardLog(self.loop, system)
        self.repeats = Repeats()  # spawn failures said once while they repeat
        self.check_retry: tuple[str, str] | None = None  # a check that could not be started: (name, why)
        self.control: ControlServer | None = None
        self.target: resolve_target.Target | None = None
        self.source: load_config.ConfigSource | None = None
        self.config = config.defaults()
        self.has_config = False
        self.mode = start.mode(self.config)
        self.service: Instance | None = None
        self.service_pid: int | None = None  # the leader of the latest instance, alive or not
        self.leader_alive = False
        self.run_count = 0
        self.failures = 0  # consecutive failure restarts: the back-off exponent
        self.failure_times: list[float] = []  # for workretry's window
        self.last_exit: int | None = None
        self.exit_status = 0
        self.operator = False
        self.stop_signal = signal.SIGTERM
        self.stop_requested = False  # srvctl stop: exit 0 whatever the service's status
        self.in_turn: list[str] = []  # the foreground scripts still to run in this state
        self.script: Script | None = None
        self.background: dict[str, int] = {}
        self.cycle: watch.Cycle | None = None
        self.cycle_count = 0
        self.cycle_anchor: float | None = None
        self.last_checks: list[watch.CheckResult] = []
        self.checks_healthy = False  # the latest cycle of this instance passed
        self.healthy_since: float | None = None  # this instance's first passed check cycle
        self.firewall = firewall.Firewall(system, settings)
        self.firewall_status = ""
        self.supporters = {name: Supporting(name, system, self.loop, settings.stop_grace) for name in SUPPORTING_STEPS}
        self.supporters["ssh"].on_change = self._sync_ssh_permit
        self.daemons = Daemons(system, self.loop, settings.stop_grace, lambda: self.config)
        # The OOM kill count of fsm-init's memory cgroup, read now and on a SIGKILL death.
        self.oom = oom.Watch.start(system)
        self.last_oom = ""  # the latest out-of-memory kill, for `srvctl why`
        self.daemons.killed_by_oom = self.killed_by_oom
        self.unavailable: dict[str, str] = {}
        self.container_env = ContainerEnvironment.from_environ(system, self.environ)
        # FSM_INIT_SYSLOG_SOCKET moves /dev/log (tests), "off" disables the relay.
        self.syslog_path = self.environ.get("FSM_INIT_SYSLOG_SOCKET") or "/dev/log"
        self.syslog = SyslogRelay(self.loop, self.syslog_path)
        self.state_since = system.now()
        self.writes = FileWrites(system.now, system.wall)
        self.journal = Journal(settings.run_dir, system, self.writes)
        self.guard_results: dict[str, bool] = {}
        self.taking = ("", "boot", "")
        self.cause = ""  # why the transition being processed happens
        self.next_cause = ""  # taken by the next trigger called (see _CausedEvent)
        self.restart_cause = ""  # what set off the restart in progress, for `srvctl why`
        self.gave_up_reason = ""  # for `srvctl live` while in gave_up
        self.internal_error = ""  # the first internal error: the exit status is then never 0
        self.give_up_status: int | None = None  # workretry.action exit: never 0
        self.last_transition: dict = {}
        self.entry_recorded = False
        self.machine = _Machine(
            model=self, states=[name for name, _ in STATES], transitions=TRANSITIONS,
            initial="boot", auto_transitions=False, queued=True, ignore_invalid_triggers=True,
            prepare_event="_new_event", before_state_change="_leaving_state",
            after_state_change="_entered_state", on_exception="_on_error")

    # -- running -----------------------------------------------------------------

    def run(self) -> int:
        log.set_state(lambda: self.state)
        log.attach(self.loop)
        self.loop.install()
        if self.system.getpid() != 1 and not self.system.set_subreaper():
            log.warn("not PID 1 and cannot become a child subreaper: orphans will not be reaped")
        self.control = ControlServer.listen(self.settings.control_socket, self.loop, self.handle_request)
        if self.syslog_path != "off":
            self.syslog.start()
        self.begin()
        self.loop.run()
        return self.exit_status

    def _new_event(self) -> None:
        self.guard_results = {}

    def _leaving_state(self) -> None:
        self.loop.cancel("state")

    def _entered_state(self) -> None:
        if self.entry_recorded:  # on_enter_handover recorded it before its exec
            self.entry_recorded = False
            return
        self.state_since = self.system.now()
        source, dest, trigger = self.taking
        self.last_transition = {
            "time": round(self.system.wall(), 3), "from": source, "to": dest, "trigger": trigger,
            "guards": self.guard_results, "cause": self.cause, "restarts": max(0, self.run_count - 1)}
        self.journal.record(self.last_transition, self.snapshot())

    def fire(self, trigger: str, cause: str) -> None:
        """Fire a trigger, saying why (for the journal and `srvctl why`)."""
        self.next_cause = cause
        self.trigger(trigger)

    def _on_error(self, *_args) -> None:
        # transitions calls this from inside its except block (with the trigger's own
        # arguments, not the event): the error is the one being handled.
        error = sys.exc_info()[1]
        if not isinstance(error, Exception):
            raise error
        log.error(f"internal error in state {self.state}: {error!r}")
        self.internal_error = self.internal_error or f"{error!r} in state {self.state}"
        log.exception(error)
        if self.state in STOPPABLE:
            self.fire("stop", f"internal error: {error!r}")
        elif self.state != "exited":
            self.loop.call_later("state", 0, lambda: self.fire("done", f"internal error: {error!r}"))

    # -- guards --------------------------------------------------------------------

    def delay_due(self) -> bool:
        return self.run_count == 0 and delay.seconds(self.config, self.target.first_start, self.has_config) > 0

    def has_command(self) -> bool:
        return start.has_command(self.config, self.override)

    def non_daemon(self) -> bool:
        return self.mode.kind == start.NON_DAEMON

    def daemon_mode(self) -> bool:
        return self.mode.kind == start.DAEMON

    def has_instance(self) -> bool:
        return self.service is not None

    def checks_passed(self) -> bool:
        return self.cycle is not None and self.cycle.passed

    def operator_request(self) -> bool:
        return self.operator

    def retries_exhausted(self) -> bool:
        return restart_interval.exhausted(self.config, self.failure_times, self.system.now())

    def give_up_exits(self) -> bool:
        return self.config["workretry"]["action"] == "exit"

    def keeps_supervising(self) -> bool:
        # A watched service directory, even empty, may gain a service at run time.
        return bool(self.daemons.names or self.daemons.watching or self._shutdown_scripts(self.settings.pre_shutdown_dir)
                    or self._shutdown_scripts(self.settings.post_shutdown_dir))

    # -- boot path -------------------------------------------------------------------

    def on_enter_startup_scripts(self) -> None:
        # my_init's order: /etc/container_environment first, so that everything after
        # (the start-up scripts, SRVNAME, SRVCFG, a custom init, the service) sees it.
        self.environ = self.container_env.start(self.environ)
        timeout = self.settings.startup_timeout
        self._run_in_turn(startup_scripts.pending(self.settings, self.system), timeout,
                          partial(self._startup_script_done, timeout), self.done, "start-up script")

    def _startup_script_done(self, timeout: float, path: str, status: int | None) -> bool:
        # What a script wrote to /etc/container_environment reaches the next one and the services.
        self.environ = self.container_env.after_script(self.environ)
        if status == 0:
            return True
        cause = startup_scripts.describe_failure(path, status, timeout)
        log.error(f"{cause}: the start-up stops (exit {startup_scripts.FAILED_STATUS})")
        self.last_exit = startup_scripts.FAILED_STATUS
        self.fire("script_failed", cause)
        return False

    def on_enter_resolve_target(self) -> None:
        self.target, notes = resolve_target.resolve(self.settings, self.environ, self.system,
                                                    command=self.override is not None)
        for note in notes:
            (log.error if isinstance(note, resolve_target.Error) else log.info)(note)
        if self.target.directory:
            self.system.chdir(self.target.directory)
        self.source = load_config.ConfigSource(self.target, self.srvcfg, self.system, self.writes)
        self.done()

    def on_enter_custom_init(self) -> None:
        path = custom_init.find(self.target.directory, self.system)
        if path:
            log.info(f"custom init {path} takes over (exec, keeping this PID and environment)")
            if self.control:
                self.control.close()
            self.syslog.close()
            try:
                # init.sh takes over every step, the SSH password included: $SRVCFG as given.
                self.system.execve([path], dict(self.environ, **({"SRVCFG": self.srvcfg} if self.srvcfg else {})))
            except OSError as e:
                log.error(f"cannot exec {path}: {e.strerror}; carrying on with fsm-init's own steps")
                self.control = ControlServer.listen(self.settings.control_socket, self.loop, self.handle_request)
                if self.syslog.tried:
                    self.syslog.start()
        self.done()

    def on_enter_env_resume(self) -> None:
        self._run_in_turn(env_resume.pending(self.target.directory, self.system), env_resume.TIMEOUT,
                          partial(_carry_on, env_resume.TIMEOUT), self.done)

    def on_enter_daemons(self) -> None:
        if self.settings.skip_runit:
            log.info(f"--skip-runit: {self.settings.service_dir} is not read")
        else:
            self.daemons.start_all(self.settings.service_dir, self.environ)
        self.done()

    def on_enter_load_config(self) -> None:
        loaded = self.source.load()
        for message in loaded.errors:
            log.error(message)
        for problem in loaded.problems:
            log.warn(problem.describe())
        self.config, self.has_config = loaded.config, loaded.has_config
        self.mode = start.mode(self.config)
        self.done()

    def on_enter_delay(self) -> None:
        seconds = delay.seconds(self.config, self.target.first_start, self.has_config)
        log.info(f"initdelay: waiting {seconds}s (srvctl restart goes on at once)")
        self.loop.call_later("state", seconds, lambda: self.fire("done", f"initdelay {seconds}s elapsed"))

    def on_enter_firewall(self) -> None:
        self.firewall_status = ""
        if firewall.enabled(self.config, self.has_config):
            self.firewall_status = self._unless_unavailable(lambda: self.firewall.apply(self.config, self._ssh_up()))
        elif self.firewall.families:  # switched off after fsm-init applied its rules
            self._unless_unavailable(self.firewall.withdraw)
        self.done()

    def _supporting_step(self) -> None:
        step = SUPPORTING_STEPS[self.state]
        spec = None
        if step.enabled(self.config, self.has_config):
            spec = self._unless_unavailable(lambda: step.spec(self.config, self.system, self.settings))
        self.supporters[self.state].apply(spec or None)
        self.done()

    on_enter_ssh = on_enter_pppoe = _supporting_step

    def _ssh_up(self) -> bool:
        return self.supporters["ssh"].pid is not None

    def _sync_ssh_permit(self) -> None:
        """dropbear started or exited: its port is permitted exactly while it runs."""
        if not self.firewall.families or not firewall.enabled(self.config, self.has_config) \
                or self.state not in STOPPABLE:
            return
        try:
            self.firewall_status = self.firewall.apply(self.config, self._ssh_up(), quiet=True)
        except Unavailable as e:
            log.error(f"firewall: cannot update the SSH port's permit: {e}")

    def _unless_unavailable(self, work):
        """The step's work; if it cannot be done here, one clear line and the machine goes on."""
        self.unavailable.pop(self.state, None)
        try:
            return work()
        except Unavailable as e:
            self.unavailable[self.state] = str(e)
            log.error(f"{self.state} unavailable: {e}")
            return ""

    def supporting(self) -> dict[str, str]:
        status = {name: f"unavailable: {why}" for name, why in self.unavailable.items()}
        if self.firewall_status:
            status["firewall"] = self.firewall_status
        if self.syslog.tried:
            status["syslog"] = self.syslog.status()
        for name, supporter in self.supporters.items():
            if supporter.spec or supporter.pid:
                status[name] = supporter.status()
                describe = getattr(SUPPORTING_STEPS[name], "describe", None)  # pppoe: the link
                if describe and supporter.pid:
                    status[name] += f"; {describe(self.system, self.settings)}"
        return status

    def on_enter_idle(self) -> None:
        self.run_count += 1
        seconds = self.settings.idle_wait
        self._write_count(start.idle_count_text(self.run_count, seconds))
        log.info(f"no workstart configured: reading the config again in {seconds:g}s (srvctl restart: now)")
        self.loop.call_later("state", seconds, lambda: self.fire("done", f"idle wait {seconds:g}s elapsed"))

    # -- the service -------------------------------------------------------------------

    def _service_env(self) -> dict:
        env = dict(self.environ)
        # The passwords are fsm-init's (root's SSH login, the dial-up): a service, maybe
        # running as a workuser, and its check scripts get them masked.  A service named
        # by $SRVNAME (or given $SRVCFG) reads its config there; a command line run as
        # under tini, or imginit serving by default or as a fall-back, gets no $SRVCFG that
        # the container was not started with.
        if self.srvcfg or (self.target.directory and not self.target.default and not self.target.fallback):
            env["SRVCFG"] = config.dumps_compact(config.masked(self.config))
        return env

    def on_enter_start(self) -> None:
        self.run_count += 1
        self.operator = False
        self.cycle_anchor = None
        self.cycle_count = 0  # $SMCNT counts the cycles of this instance, as in imginit
        self.last_checks, self.checks_healthy = [], False
        self.healthy_since: float | None = None  # this instance's first passed check cycle
        self._write_count(start.count_text(self.run_count, self.mode, self.config))
        cmd = start.command(self.config, self.override, self.target.directory, self.system)
        if cmd.note:
            log.warn(cmd.note)
        workuser = self.config["workuser"]
        problem = start.workuser_problem(workuser)
        if problem:
            self.last_exit = 126
            cause = f"cannot start the service as workuser {workuser!r}: {problem} (status 126)"
            log.error(cause)
            self.fire("spawn_failed", cause)
            return
        if not workuser and cmd.executable is None:
            program = start.program_path(cmd.argv[0], self.caller_dir if self.override else self.target.directory)
            if program and not trust.trusted(program, self.system, "run"):
                if not self.override:  # as a workstart that is not executable: stay up for debugging
                    cmd = start.do_nothing()
                else:
                    self.last_exit = 126
                    cause = f"cannot execute {start.shown([cmd.argv[0]])}: refused, another user could change it (status 126)"
                    log.error(cause)
                    self.fire("spawn_failed", cause)
                    return
        as_whom = f" as {workuser} (setuser, no_new_privs)" if workuser else ""
        log.info(f"starting the service (run {self.run_count}, {self.mode.kind} mode){as_whom}: {start.shown(cmd.argv)}")
        if workuser:
            cmd = start.Command(start.as_user(cmd.argv, workuser, cmd.executable), None, cmd.note)
        env = self._service_env()
        tty = self.system.terminal() if self.non_daemon() else None
        try:
            if self.non_daemon() and self.settings.exec_service:
                if self.keeps_supervising():
                    log.warn("FSM_INIT_EXEC_SERVICE ignored: the /etc/service daemons or the shutdown scripts "
                             "need fsm-init to stay PID 1")
                else:
                    self._exec_service(cmd, env)
            pid = self.system.spawn(cmd.argv, env, cmd.executable, tty, cwd=self.caller_dir if self.override else None)
        except OSError as e:
            self.last_exit = spawn_error_code(e)
            hint = start.exec_hint(cmd.executable or cmd.argv[0], e, self.system)
            cause = f"cannot execute {start.shown([cmd.argv[0]])}: {e.strerror}{hint} (status {self.last_exit})"
            # Retried with the back-off; said once while it fails the same way (EAGAIN under
            # a pids limit can last), the journal has every attempt.
            self.repeats.failed("service", e.strerror, partial(log.error,
                cause + ("" if self.non_daemon() else "; retried with the back-off, said once while it fails")))
            self.fire("spawn_failed", cause)
            return
        failed = self.repeats.succeeded("service")
        if failed:
            log.info(f"the service started (pid {pid}) after {failed} failed attempt(s)")
        self.service = Instance(pid, Group(pid, by_session=tty is None), self.system.now())
        self.service_pid, self.leader_alive = pid, True
        # The pid in the journal: each start the service records can be matched to its line.
        self.fire("spawned", f"service started (pid {pid}, run {self.run_count})")

    def _exec_service(self, cmd: start.Command, env: dict) -> None:
        """Opt-in imginit behaviour: the service replaces fsm-init as PID 1."""
        log.info("FSM_INIT_EXEC_SERVICE: the service replaces fsm-init (no reaping, no graceful stop)")
        if self.control:
            self.control.close()
            self.control = None
        self.syslog.close()
        if self.override:
            self.system.chdir(self.caller_dir)
        self.system.execve(cmd.argv, env, cmd.executable or which(cmd.argv[0]) or cmd.argv[0])

    def on_enter_foreground(self) -> None:
        if self.settings.handover_after > 0:
            self.loop.call_later("state", self.settings.handover_after,
                                 lambda: self.fire("settled", f"the service ran {self.settings.handover_after:g}s"))

    def on_enter_handover(self) -> None:
        from fsm_init import reaper

        if self.control:
            self.control.sock.set_inheritable(True)
        relaying = self.syslog.sock is not None
        self.syslog.close()  # the thin reaper does not relay: remove /dev/log, not leave it stale
        # The exec replaces this process before transitions would record the entry.
        self._entered_state()
        self.entry_recorded = True
        self.forwards.close()
        reaper.hand_over(self)
        # Only reached when the exec failed: this engine carries on reaping.
        if self.control:
            self.control.sock.set_inheritable(False)
        if relaying:
            self.syslog.start()

    def on_enter_restart_interval(self) -> None:
        if self.service:
            seconds = restart_interval.seconds(self.config)
            log.info(f"workintvl: first check in {seconds}s")
        else:
            if self.taking[0] == "start":
                self.restart_cause = self.cause
            now = self.system.now()
            self.failures += 1
            window = self.config["workretry"]["window"]
            self.failure_times = [t for t in self.failure_times if now - t < window] + [now]
            seconds = restart_interval.backoff(self.config, self.failures)
            log.info(f"restart in {seconds}s (failure {self.failures} in a row"
                     f"{', backing off' if self.failures > 1 else ''})")
        self.loop.call_later("state", seconds, lambda: self.fire("done", f"workintvl {seconds}s elapsed"))

    def on_enter_watch(self) -> None:
        if self.mode.kind != start.STATUS_CHECK:
            return
        now = self.system.now()
        if self.cycle_anchor is None:
            self.cycle_anchor = now
        self.loop.call_at("cycle", watch.next_cycle_at(self.cycle_anchor, self.mode.period, now),
                          lambda: self.fire("cycle_due", f"check cycle {self.cycle_count + 1} due"))

    def on_enter_check(self) -> None:
        for supporter in self.supporters.values():
            supporter.keepalive()
        self.cycle_count += 1
        self._write_count(start.count_text(self.run_count, self.mode, self.config, self.cycle_count))
        self._start_background(watch.RT)
        self.cycle = watch.Cycle(self.cycle_count, self.target.directory, self.system)
        self._next_check()

    def _check_env(self) -> dict:
        env = self._service_env()
        env["SMCNT"] = str(self.cycle_count)
        env["PERDC"] = str(self.mode.period)
        return env

    def _next_check(self) -> None:
        path = self.cycle.next_check()
        if path:
            timeout = start.check_timeout(self.config, self.mode.period)
            self._run_script(path, timeout, self._check_done, self._check_env(), capture=True,
                             workuser=self.config["workuser"], retries=0)
            return
        self.last_checks = self.cycle.results
        failure = self.cycle.failure
        self.checks_healthy = failure is None
        if self.checks_healthy and self.healthy_since is None:
            self.healthy_since = self.system.now()
        if failure:
            cause = f"check failed: {failure.describe()}"
            log.warn(f"{cause}; restarting the service")
        else:
            cause = "every check passed" if self.cycle.results else "no PeriodicST-* scripts: healthy"
            self._start_background(watch.MT)
        self.fire("checks_done", cause)

    def _check_done(self, name: str, status: int | None, duration: float, output: str) -> None:
        self.cycle.record(watch.CheckResult(name, status, duration, self.system.wall(), output))
        self._next_check()

    def _start_background(self, prefix: str) -> None:
        env = self._check_env()
        for path in watch.executables(self.target.directory, prefix, self.system):
            name = watch.name(path)
            if name in self.background:
                log.info(f"{name} is still running from an earlier cycle: not started again")
                continue
            if not self.config["workuser"] and not trust.trusted(path, self.system, "run"):
                continue
            try:
                self.background[name] = self.system.spawn(start.as_user([path], self.config["workuser"]), env)
            except OSError as e:
                self.repeats.failed(name, e.strerror, partial(log.error,
                    f"cannot execute {name}: {e.strerror} (tried again next cycle, said once while it fails)"))
                continue
            if self.repeats.succeeded(name):
                log.info(f"{name} started again")

    def on_enter_restart(self) -> None:
        self.restart_cause = self.cause
        self.loop.cancel("cycle")
        stable = self.config["workstable"]
        if self.failures and self._stable_for() >= stable:
            log.info(f"the instance ran {stable}s or more: the restart back-off starts over")
            self.failures = 0
        script = self._abandon_script()
        if script and script.output:
            script.output.close()
        self._stop_service(signal.SIGTERM)

    def _stable_for(self) -> float:
        """How long the instance has run well: in status-check mode since its first passed
        cycle (a service whose checks hang never passed one), otherwise since its start."""
        if self.service is None:
            return 0.0
        since = self.healthy_since if self.mode.kind == start.STATUS_CHECK else self.service.started
        return 0.0 if since is None else self.system.now() - since

    def on_enter_gave_up(self) -> None:
        retry = self.config["workretry"]
        action = "staying up for debugging (srvctl restart tries again)"
        if self.give_up_exits():
            # A last status of 0 (a start script that daemonised, say) would tell the
            # orchestrator that nothing failed.
            self.give_up_status = self.last_exit or 1
            action = f"exiting with status {self.give_up_status}" + ("" if self.last_exit else
                                                                     " (the last instance's own status was 0)")
        cause = f"{len(self.failure_times) + 1} failure restarts within {retry['window']}s (workretry.max {retry['max']})"
        log.error(f"gave up: {cause}; {action}")
        self.gave_up_reason = cause
        self.failure_times, self.failures = [], 0
        self.fire("done", f"gave up ({retry['action']})")

    # -- stop path ---------------------------------------------------------------------

    def on_enter_pre_shutdown(self) -> None:
        self.loop.cancel("cycle")
        # A script still running (start-up, EnvResume, check) is cut short: its session gets
        # SIGTERM now (teardown kills what is left), and its exit must not start the next one.
        # As my_init does, the script gets one SIGTERM and the stop grace to finish (what its
        # handler starts included) before the shutdown scripts run and anything is swept.
        script, self.script, self.in_turn, self.check_retry = self.script, None, [], None
        self.loop.cancel("script")
        run_scripts = partial(self._run_shutdown_scripts, self.settings.pre_shutdown_dir)
        if script:
            def scripts_after_it() -> None:
                if script.output:  # read what it wrote before its end, then close the pipes
                    script.output.close()
                run_scripts()

            self.stopper.stop_group(Group(script.pid), signal.SIGTERM, self.settings.stop_grace, scripts_after_it,
                                    f"{script.name}'s session")
            return
        run_scripts()

    def on_enter_stopping(self) -> None:
        self._stop_service(self.stop_signal)

    def _stop_service(self, sig: int) -> None:
        if self.service is None:
            self._instance_gone()
        else:
            self.stopper.stop_group(self.service.group, sig, self.settings.stop_grace, self._instance_gone)

    def _instance_gone(self) -> None:
        self.service = None
        self.fire("group_gone", "the service's session is gone")

    def on_enter_stop_daemons(self) -> None:
        self.daemons.stop_all(lambda: self.fire("done", f"no {self.settings.service_dir} daemon runs"))

    def on_enter_post_shutdown(self) -> None:
        self._run_shutdown_scripts(self.settings.post_shutdown_dir)

    def _shutdown_scripts(self, directory: str) -> list[str]:
        return shutdown_scripts.pending(directory, self.settings, self.system)

    def _run_shutdown_scripts(self, directory: str) -> None:
        paths, grace = self._shutdown_scripts(directory), self.settings.stop_grace
        cause = f"{len(paths)} script(s) of {directory} run" if paths else f"no script in {directory}"
        self._run_in_turn(paths, grace, partial(_carry_on, grace), lambda: self.fire("done", cause), "shutdown script")

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
        if self.stop_requested:
            self.exit_status = 0
        elif self.give_up_status is not None:
            self.exit_status = self.give_up_status
        else:
            self.exit_status = self.last_exit or 0
        self.forwards.close()
        if self.internal_error and self.exit_status == 0:
            self.exit_status = INTERNAL_ERROR_STATUS
            log.error(f"exiting with status {self.exit_status}: an internal error ({self.internal_error}) "
                      "ended fsm-init, which must not look like success")
        else:
            log.info(f"exiting with status {self.exit_status}")
        if self.control:
            self.control.close()
        self.syslog.close()
        self.loop.stop()

    # -- events from the loop ---------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in STOP_SIGNALS:
            if self.state in STOPPABLE:
                log.info(f"received {name}: stopping")
                self.stop_signal = signum
                self.fire("stop", f"received {name}")
            return
        if self.service and self.service.group.signal(self.system, signum):
            self.forwards.forwarded(name)

    def _on_exit(self, pid: int, status: int) -> None:
        code = exit_code(status)
        # leader_alive: once reaped, the leader's pid may be reused by a daemon or a script.
        if pid == self.service_pid and self.leader_alive:
            self.last_exit, self.leader_alive = code, False
            cause = f"service (pid {pid}) {describe_exit(status)}"
            oom_kill = self.killed_by_oom(f"the service (pid {pid})", status)
            if oom_kill:
                cause += f", {oom_kill}"
            (log.warn if oom_kill else log.info)(cause)
            if self.service:
                self.fire("service_exit", cause)
        elif any(s.exited(pid, status) for s in self.supporters.values()) or self.daemons.exited(pid, status):
            pass
        elif self.script and pid == self.script.pid:
            script, self.script = self.script, None
            self.loop.cancel("script")
            self._finish_script(script, code)
        else:
            for name, bg_pid in list(self.background.items()):
                if bg_pid == pid:
                    del self.background[name]
        self.stopper.check_soon()

    def killed_by_oom(self, who: str, status: int) -> str:
        """"" unless the child died of the kernel's OOM killer (only a SIGKILL death reads
        the cgroup); remembered for `srvctl why`."""
        words = self.oom.killed(status)
        if words:
            self.last_oom = f"{who} at {log.clock(self.system.wall())}, {words}"
        return words

    # -- foreground scripts -----------------------------------------------------------------

    def _run_in_turn(self, paths: list[str], timeout: float, after_each, after_all, what: str = "") -> None:
        """Run paths one at a time in the foreground; ``after_each(path, status)`` (status
        None: timed out and killed) returns False to stop there, without ``after_all``.
        ``what`` ("start-up script"): each is logged as it starts, and when it succeeds with
        its duration, as my_init's "Running /etc/my_init.d/..." lines."""
        self.in_turn = list(paths)

        def done(path: str, _name: str, status: int | None, duration: float, *_) -> None:
            if what and status == 0:
                log.info(f"{what} {path} finished in {duration:.2f}s")
            if after_each(path, status):
                next_one()

        def next_one() -> None:
            if not self.in_turn:
                after_all()
                return
            path = self.in_turn.pop(0)
            if what:
                log.info(f"running {what} {path}")
            self._run_script(path, timeout, partial(done, path), self.environ)

        next_one()

    def _run_script(self, path: str, timeout: float, on_done, env: dict, capture: bool = False,
                    workuser: str | None = None, retries: int | None = None) -> None:
        """retries: a check (PeriodicST-*), whose start failing for lack of resources
        (EAGAIN, EMFILE, ...) is no verdict on the service: it is tried again with a
        back-off (1 s, doubling, at most its timeout), said once while it fails."""
        name = watch.name(path)
        if not workuser and not trust.trusted(path, self.system, "run"):
            # Refused like a file that is not executable: a start-up script fails the
            # start-up, a PeriodicST-* check fails its cycle.
            on_done(name, 126, 0.0, "refused: another user could change it")
            return
        argv = start.as_user([path], workuser)
        output = CapturedOutput(self.loop, self.system, name) if capture else None
        try:
            pid = output.spawn(argv, env) if output else self.system.spawn(argv, env)
        except OSError as e:
            if retries is not None and is_resource(e):
                wait = min(2.0 ** min(retries, 16), timeout)
                self.repeats.failed(name, e.strerror, partial(log.error,
                    f"cannot start {name}: {e.strerror}; no verdict on the service: trying again in {wait:g}s, "
                    "backing off while it fails (said once)"))
                self.check_retry = (name, e.strerror)
                self.loop.call_later("script", wait, lambda: self._run_script(
                    path, timeout, on_done, env, capture, workuser, retries + 1))
                return
            log.error(f"cannot execute {name}: {e.strerror}")
            on_done(name, spawn_error_code(e), 0.0, e.strerror)
            return
        self.check_retry = None
        failed = self.repeats.succeeded(name)
        if failed:
            log.info(f"{name} started after {failed} failed attempt(s)")
        self.script = Script(pid, name, self.system.now(), on_done, output)
        self.loop.call_later("script", timeout, self._script_timed_out)

    def _finish_script(self, script: Script, status: int | None) -> None:
        words = ""
        if script.output:
            # A check is done when its leader exits: what it left running in its session
            # (a background child holding its stdout, say) goes with it, passed or not, and
            # its pipes are read once and closed, or they would pile up in PID 1.
            words = script.output.finish()
            Group(script.pid).signal(self.system, signal.SIGKILL)
        script.on_done(script.name, status, self.system.now() - script.started, words)

    def _script_timed_out(self) -> None:
        script = self._abandon_script()
        if script:
            self._finish_script(script, None)

    def _abandon_script(self) -> Script | None:
        """Kill the running foreground script with everything it started."""
        script, self.script, self.check_retry = self.script, None, None
        self.loop.cancel("script")
        if script:
            Group(script.pid).signal(self.system, signal.SIGKILL)
        return script

    # -- control requests ---------------------------------------------------------------

    def handle_request(self, request: dict) -> dict:
        verb = request.get("verb")
        if "name" in request:  # one /etc/service daemon
            if verb not in ("start", "stop", "restart"):
                return {"ok": False, "message": f"{verb} does not take a service name"}
            ok, message = self.daemons.request(verb, str(request["name"]))
            return {"ok": ok, "message": message}
        if verb == "status":
            return {"ok": True, "status": self.snapshot()}
        if verb == "rescan":
            ok, message = self.daemons.rescan()
            log.info(f"srvctl rescan: {message}")
            return {"ok": ok, "message": message}
        if verb == "health":
            healthy, why = self.health()
            return {"ok": healthy, "message": why}
        if verb == "live":
            if self.state == "gave_up":
                return {"ok": False, "message": f"fsm-init gave up: {self.gave_up_reason}"}
            return {"ok": True, "message": f"fsm-init answers ({self.state})"}
        if verb == "why":
            return {"ok": True, "message": self.why()}
        if verb == "restart":
            if not self.may_restart_request():
                return {"ok": False, "message": self._why_no_restart()}
            log.info("srvctl restart")
            self.operator, was = True, self.state
            self.fire("restart_request", "srvctl restart")
            return {"ok": True, "message": f"restarting (was {was})"}
        if verb == "stop":
            if self.state not in STOPPABLE:
                return {"ok": False, "message": f"already {self.state}"}
            log.info("srvctl stop: stopping the service, then exiting 0")
            self.stop_requested = True
            self.stop_signal = signal.SIGTERM
            self.fire("stop", "srvctl stop")
            return {"ok": True, "message": "stopping"}
        return {"ok": False, "message": f"unknown verb {verb!r}"}

    def health(self) -> tuple[bool, str]:
        """Docker HEALTHCHECK / readiness: this instance runs and has proved itself."""
        if not self.service:
            return False, f"no service instance ({self.state})"
        if self.mode.kind == start.STATUS_CHECK:
            if self.checks_healthy:
                return True, "the latest check cycle of this instance passed"
            return False, "no check cycle of this instance has passed yet" if not self.last_checks \
                else f"check failed: {self.cycle.failure.describe()}"
        ran = self.system.now() - self.service.started
        proof = restart_interval.seconds(self.config)
        if ran >= proof:
            return True, f"the service has run {ran:.0f}s"
        return False, f"the service has run {ran:.1f}s of the {proof}s (workintvl) it needs to count as healthy"

    def why(self) -> str:
        """The current state as a causal chain, in one paragraph."""
        t = self.last_transition
        guards = ", ".join(f"{g} {'yes' if v else 'no'}" for g, v in t.get("guards", {}).items())
        reason = t.get("cause") or f"from {t.get('from') or 'boot'}" + (f" ({guards})" if guards else "")
        when = f" at {log.clock(t['time'])}" if t.get("time") else ""
        if self.state in ("restart", "gave_up") or (self.state == "restart_interval" and not self.service):
            reason = self.restart_cause or reason
        if self.state == "restart_interval" and self.service and self.restart_cause:
            text = f"{self.state}: started again{when} after {self.restart_cause}"
        else:
            text = f"{self.state}: {reason}{when}"
        # In a failure's restart interval, name the restart that is coming.
        restart = self.run_count if self.state == "restart_interval" and not self.service else self.run_count - 1
        if restart > 0:
            text += f"; restart {restart}"
        upcoming = self._upcoming()
        text = f"{text}; {upcoming}" if upcoming else text
        return f"{text}; last out-of-memory kill: {self.last_oom}" if self.last_oom else text

    def _upcoming(self) -> str:
        when = {name: log.clock(self.system.wall() + at - self.system.now())
                for name, at in self.loop.pending().items()}
        pid = self.service.pid if self.service else None
        running = f"running {self.script.name} (killed at {when.get('script')} if still running)" if self.script else ""
        phrases = {
            "startup_scripts": running, "env_resume": running, "post_shutdown": running,
            "pre_shutdown": running or (f"waiting for the interrupted script's session to end (SIGKILL at "
                                        f"{when[self.stopper.kill_deadline]})" if self.stopper.kill_deadline in when else ""),
            "stop_daemons": "stopping the /etc/service daemons one by one, in reverse order",
            "delay": f"the start goes on at {when.get('state')}",
            "idle": f"the config is read again at {when.get('state')}",
            "restart_interval": (f"first check at {when.get('state')}" if pid else f"next start at {when.get('state')}"),
            "watch": (f"next check at {when.get('cycle')}" if "cycle" in when else f"waiting for the service (pid {pid}) to exit"),
            "check": f"running {self.script.name}" if self.script else
                     (f"{self.check_retry[0]} cannot be started ({self.check_retry[1]}): trying again at "
                      f"{when.get('script')}" if self.check_retry and "script" in when else ""),
            "foreground": f"the service (pid {pid}) runs; fsm-init exits with its status",
            "restart": f"SIGKILL at {when.get(self.stopper.kill_deadline)} if it is still there",
            "stopping": f"SIGKILL at {when.get(self.stopper.kill_deadline)} if it is still there",
            "gave_up": "srvctl restart tries again",
        }
        return phrases.get(self.state, "")

    def _why_no_restart(self) -> str:
        if self.state in ("foreground", "handover"):
            return NOT_SUPERVISED
        return f"cannot restart during {self.state}"

    def snapshot(self) -> dict:
        now = self.system.now()
        return {
            "state": self.state,
            "since": round(now - self.state_since, 3),
            "mode": self.mode.kind,
            "period": self.mode.period,
            "target": self.target.directory if self.target else None,
            # In status-check mode an instance outlives its leader (a start script may
            # daemonise): the pid is shown only while the leader lives.
            "service_pid": self.service.pid if self.service and self.leader_alive else None,
            "uptime": round(now - self.service.started, 3) if self.service and self.leader_alive else None,
            "run_count": self.run_count,
            "restarts": max(0, self.run_count - 1),
            "failures": self.failures,
            "last_exit": self.last_exit,
            "checks": [r._asdict() for r in self.last_checks],
            "healthy": self.health()[0],
            "last_transition": self.last_transition,
            "supporting": self.supporting(),
            "daemons": self.daemons.status(),
            "pid": self.system.getpid(),
            "log_dropped": log.dropped(),
            # files fsm-init cannot write (a full or read-only disk): path -> the problem
            "write_problems": self.writes.status(),
        }

    def _write_count(self, text: str) -> None:
        if not self.target.directory:
            return
        path = os.path.join(self.target.directory, "service.run.count")
        self.writes.attempt(path, lambda: self.system.write_atomic(path, text.encode()))


def _carry_on(timeout: float, path: str, status: int | None) -> bool:
    """A script whose failure is reported, not fatal (EnvResume-*, shutdown scripts)."""
    if status is None:
        log.error(f"{path} timed out after {timeout:g}s and was killed; carrying on")
    elif status:
        log.error(f"{path} exited with status {status}; carrying on")
    return True
