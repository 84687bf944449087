"""The engine: the model that ``table.TRANSITIONS`` drives.

``on_enter_<state>`` methods do each state's work through the step modules and the
``System`` boundary, then either fire the next trigger at once or leave a deadline,
a child process or a control request to fire it from the event loop.  Guards are
the small predicates named in the table.  Nothing here sleeps or waits.
"""

import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from functools import partial

from transitions import Machine, Transition
from transitions.core import Condition

from fsm_init import (config, custom_init, delay, foreground, load_config, log, oom, readiness, resolve_target,
                      restart_interval, start, status, trust, watch)
from fsm_init.container_env import ContainerEnvironment
from fsm_init.control import NOT_SUPERVISED, ControlServer
from fsm_init.daemons import Daemons
from fsm_init.foreground import Foreground, carry_on
from fsm_init.forwarded import ForwardLog
from fsm_init.journal import Journal
from fsm_init.repeats import Repeats
from fsm_init.writes import FileWrites
from fsm_init.loop import STOP_SIGNALS, EventLoop
from fsm_init.network import Network
from fsm_init.service import Service
from fsm_init.settings import Settings
from fsm_init.kill import Group, Stopper
from fsm_init.syslog_relay import SyslogRelay
from fsm_init.system import System, describe_exit, exit_code, spawn_error_code, which
from fsm_init.table import STATES, STOPPABLE, TRANSITIONS

INTERNAL_ERROR_STATUS = 70  # EX_SOFTWARE: fsm-init itself failed; never reported as 0


class _RecordingCondition(Condition):
    """Records on the model each guard's value for a real trigger (a may_<trigger>() probe
    builds an Event of its own and is not recorded), for the journal."""

    def check(self, event_data):
        passed = super().check(event_data)
        if event_data.machine.events.get(event_data.event.name) is event_data.event:
            event_data.model.guard_results[self.func] = passed if self.target else not passed
        return passed


class _RecordingTransition(Transition):
    condition_cls = _RecordingCondition  # transitions' documented way to change how guards are checked


class _Machine(Machine):
    transition_cls = _RecordingTransition


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
        self.command_line = command  # the command given to fsm-init, run instead of workstart
        # A command line runs where fsm-init was started (the image's WORKDIR), as under
        # tini; workstart and the target's scripts run in the target directory.
        self.caller_dir = system.getcwd()
        self.loop = EventLoop(system, self._on_signal, self._on_exit)
        self.stopper = Stopper(system, self.loop)
        self.forwards = ForwardLog(self.loop, system)
        self.repeats = Repeats()  # spawn failures said once while they repeat
        self.foreground = Foreground(system, self.loop, self.repeats)  # one script at a time
        self.checks = watch.Checks(system, self.loop, self.foreground, self.repeats)
        self.control: ControlServer | None = None
        self.target: resolve_target.Target | None = None
        self.source: load_config.ConfigSource | None = None
        self.config = config.defaults()
        self.has_config = False
        self.mode = start.mode(self.config)
        self.service = Service(system.now)
        # workready notify / fd:N: the service's own word, heard in the loop (readiness.py)
        self.notifier = readiness.Notifier(system, self.loop, settings.run_dir, self.service.declared,
                                           self._readiness_failed)
        self.exit_status = 0
        self.stop_signal = signal.SIGTERM
        self.stopped_by_signal = False  # SIGTERM/SIGINT, not srvctl stop or an internal error
        self.network = Network(system, self.loop, settings)  # steps firewall, ssh, pppoe
        self.network.supporters["ssh"].on_change = self._sync_ssh_permit
        self.daemons = Daemons(system, self.loop, settings.stop_grace, lambda: self.config)
        # The OOM kill count of fsm-init's memory cgroup, read now and on a SIGKILL death.
        self.oom = oom.Watch.start(system)
        self.last_oom = ""  # the latest out-of-memory kill, for `srvctl why`
        self.daemons.killed_by_oom = self.killed_by_oom
        self.container_env = ContainerEnvironment.from_environ(system, self.environ)
        # FSM_INIT_SYSLOG_SOCKET moves /dev/log (tests), "off" disables the relay.
        self.syslog_path = self.environ.get("FSM_INIT_SYSLOG_SOCKET") or "/dev/log"
        self.syslog = SyslogRelay(self.loop, self.syslog_path)
        self.state_since = system.now()
        self.writes = FileWrites(system.now, system.wall)
        self.journal = Journal(settings.run_dir, system, self.writes)
        self.guard_results: dict[str, bool] = {}
        self.taking = ("", "boot", "")
        self.took: tuple[str, str, str] | None = None  # the transition the trigger being processed took
        # Told, after each trigger, the transition it took (or None) and the guards it
        # evaluated: how the unit tests' Harness follows the machine.
        self.observer: Callable[[tuple[str, str, str] | None, dict[str, bool]], None] | None = None
        self.cause = ""  # why the transition being processed happens
        # The causes of the triggers fired and not yet processed, in order (see fire).
        self.causes: deque[str] = deque()
        self.internal_error = ""  # the first internal error: the exit status is then never 0
        self.last_transition: dict = {}
        self.entry_recorded = False
        self.machine = _Machine(
            model=self, states=[name for name, _ in STATES],
            # Each transition's own "before" callbacks run once its guards passed: the one taken.
            transitions=[dict(row, before=partial(self._taking, row["trigger"], row["dest"])) for row in TRANSITIONS],
            initial="boot", auto_transitions=False, queued=True, ignore_invalid_triggers=True,
            prepare_event="_new_event", before_state_change="_leaving_state",
            after_state_change="_entered_state", on_exception="_on_error", finalize_event="_event_done")

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
        self.fire("begin")
        self.loop.run()
        return self.exit_status

    def _new_event(self) -> None:
        self.guard_results = {}
        if self.causes:  # not for a may_<trigger>() probe between events
            self.cause = self.causes[0]

    def _event_done(self) -> None:
        if self.causes:
            self.causes.popleft()
        took, self.took = self.took, None
        if self.observer:
            self.observer(took, self.guard_results)

    def _taking(self, trigger: str, dest: str) -> None:
        self.taking = self.took = (self.state, dest, trigger)

    def _leaving_state(self) -> None:
        self.loop.cancel("state")

    def _entered_state(self) -> None:
        if self.entry_recorded:  # on_enter_handover recorded it before its exec
            self.entry_recorded = False
            return
        self.state_since = self.system.now()
        source, dest, trigger = self.taking
        self.last_transition = status.transition(self.system.wall(), source, dest, trigger, self.guard_results,
                                                 self.cause, self.service.run_count)
        self.journal.record(self.last_transition, self.snapshot())

    def fire(self, trigger: str, cause: str = "") -> None:
        """Fire a trigger, saying why (for the journal and `srvctl why`).  Every trigger
        goes through here: with queued=True one fired while another transition runs is
        processed later, in order, so its cause waits in self.causes, is taken when its
        processing begins (prepare_event) and dropped when it ends (finalize_event, called
        for every trigger, an ignored one too)."""
        self.causes.append(cause)
        try:
            self.trigger(trigger)
        except BaseException:
            self.causes.clear()  # transitions dropped the triggers still queued
            raise

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
                    or self._shutdown_scripts(self.settings.pre_shutdown_dir)
                    or self._shutdown_scripts(self.settings.post_shutdown_dir))

    # -- boot path -------------------------------------------------------------------

    def on_enter_startup_scripts(self) -> None:
        # my_init's order: /etc/container_environment first, so that everything after
        # (the start-up scripts, SRVNAME, SRVCFG, a custom init, the service) sees it.
        self.environ = self.container_env.start(self.environ)
        timeout = self.settings.startup_timeout
        self.foreground.run_in_turn(foreground.startup_scripts(self.settings, self.system), timeout,
                                    lambda: self.environ, partial(self._startup_script_done, timeout), partial(self.fire, "done"),
                                    "start-up script")

    def _startup_script_done(self, timeout: float, path: str, status: int | None) -> bool:
        # What a script wrote to /etc/container_environment reaches the next one and the services.
        self.environ = self.container_env.after_script(self.environ)
        if status == 0:
            return True
        cause = foreground.startup_failure(path, status, timeout)
        log.error(f"{cause}: the start-up stops (exit {foreground.STARTUP_FAILED_STATUS})")
        self.service.last_exit = foreground.STARTUP_FAILED_STATUS
        self.fire("script_failed", cause)
        return False

    def on_enter_resolve_target(self) -> None:
        self.target, notes = resolve_target.resolve(self.settings, self.environ, self.system,
                                                    command=self.command_line is not None)
        for note in notes:
            (log.error if isinstance(note, resolve_target.Error) else log.info)(note)
        if self.target.directory:
            self.system.chdir(self.target.directory)
        self.source = load_config.ConfigSource(self.target, self.srvcfg, self.system, self.writes)
        self.fire("done")

    def on_enter_custom_init(self) -> None:
        path = custom_init.find(self.target.directory, self.system)
        if path:
            log.info(f"custom init {path} takes over (exec, keeping this PID and environment)")
            if self.control:
                self.control.close()
            self.syslog.close()
            self.notifier.close()
            try:
                # init.sh takes over every step, the SSH password included: $SRVCFG as given.
                self.system.execve([path], dict(self.environ, **({"SRVCFG": self.srvcfg} if self.srvcfg else {})))
            except OSError as e:
                log.error(f"cannot exec {path}: {e.strerror}; carrying on with fsm-init's own steps")
                self.control = ControlServer.listen(self.settings.control_socket, self.loop, self.handle_request)
                if self.syslog.tried:
                    self.syslog.start()
        self.fire("done")

    def on_enter_env_resume(self) -> None:
        timeout = foreground.ENV_RESUME_TIMEOUT
        self.foreground.run_in_turn(foreground.env_resume_scripts(self.target.directory, self.system), timeout,
                                    lambda: self.environ, partial(carry_on, timeout), partial(self.fire, "done"))

    def on_enter_daemons(self) -> None:
        if self.settings.skip_runit:
            log.info(f"--skip-runit: {self.settings.service_dir} is not read")
        else:
            self.daemons.start_all(self.settings.service_dir, self.environ)
        self.fire("done")

    def on_enter_load_config(self) -> None:
        loaded = self.source.load()
        for message in loaded.errors:
            log.error(message)
        for problem in loaded.problems:
            log.warn(problem.describe())
        self.config, self.has_config = loaded.config, loaded.has_config
        self.mode = start.mode(self.config)
        self.fire("done")

    def on_enter_delay(self) -> None:
        seconds = delay.seconds(self.config, self.target.first_start, self.has_config)
        log.info(f"initdelay: waiting {seconds}s (srvctl restart goes on at once)")
        self.loop.call_later("state", seconds, lambda: self.fire("done", f"initdelay {seconds}s elapsed"))

    def on_enter_firewall(self) -> None:
        self.network.apply_firewall(self.config, self.has_config)
        self.fire("done")

    def _network_step(self) -> None:
        self.network.apply(self.state, self.config, self.has_config)
        self.fire("done")

    on_enter_ssh = on_enter_pppoe = _network_step

    def _sync_ssh_permit(self) -> None:
        if self.state in STOPPABLE:
            self.network.sync_ssh_permit(self.config, self.has_config)

    def supporting(self) -> dict[str, str]:
        return self.network.status(self.syslog.status() if self.syslog.tried else None)

    def on_enter_idle(self) -> None:
        self.service.run_count += 1
        seconds = self.settings.idle_wait
        self._write_count(start.idle_count_text(self.service.run_count, seconds))
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
        self.service.starting()
        self.checks.new_instance()
        self._write_count(start.count_text(self.service.run_count, self.mode, self.config))
        cmd = start.command(self.config, self.command_line, self.target.directory, self.system)
        if cmd.note:
            log.warn(cmd.note)
        workuser = self.config["workuser"]
        problem = start.workuser_problem(workuser)
        if problem:
            self.service.last_exit = 126
            cause = f"cannot start the service as workuser {workuser!r}: {problem} (status 126)"
            log.error(cause)
            self.fire("spawn_failed", cause)
            return
        if not workuser and cmd.executable is None:
            program = start.program_path(cmd.argv[0], self.caller_dir if self.command_line else self.target.directory)
            if program and not trust.trusted(program, self.system, "run"):
                if not self.command_line:  # as a workstart that is not executable: stay up for debugging
                    cmd = start.do_nothing()
                else:
                    self.service.last_exit = 126
                    cause = f"cannot execute {start.shown([cmd.argv[0]])}: refused, another user could change it (status 126)"
                    log.error(cause)
                    self.fire("spawn_failed", cause)
                    return
        as_whom = f" as {workuser} (setuser, no_new_privs)" if workuser else ""
        log.info(f"starting the service (run {self.service.run_count}, {self.mode.kind} mode){as_whom}: {start.shown(cmd.argv)}")
        if workuser:
            cmd = start.Command(start.as_user(cmd.argv, workuser, cmd.executable), None, cmd.note)
        notify_env, fds = self.notifier.prepare(self.config)
        env = dict(self._service_env(), **notify_env)
        tty = self.system.terminal() if self.non_daemon() else None
        try:
            if self.non_daemon() and self.settings.exec_service:
                if self.keeps_supervising():
                    log.warn("FSM_INIT_EXEC_SERVICE ignored: the /etc/service daemons or the shutdown scripts "
                             "need fsm-init to stay PID 1")
                else:
                    self._exec_service(cmd, env)
            pid = self.system.spawn(cmd.argv, env, cmd.executable, tty, cwd=self.caller_dir if self.command_line else None,
                                    fds=fds)
        except OSError as e:
            self.notifier.end()
            self.service.last_exit = spawn_error_code(e)
            hint = start.exec_hint(cmd.executable or cmd.argv[0], e, self.system)
            cause = f"cannot execute {start.shown([cmd.argv[0]])}: {e.strerror}{hint} (status {self.service.last_exit})"
            # Retried with the back-off; said once while it fails the same way (EAGAIN under
            # a pids limit can last), the journal has every attempt.
            self.repeats.failed("service", e.strerror, partial(log.error,
                cause + ("" if self.non_daemon() else "; retried with the back-off, said once while it fails")))
            self.fire("spawn_failed", cause)
            return
        failed = self.repeats.succeeded("service")
        if failed:
            log.info(f"the service started (pid {pid}) after {failed} failed attempt(s)")
        self.service.started(pid, Group(pid, by_session=tty is None))
        self.notifier.started(pid, self.service.instance.group)
        # The pid in the journal: each start the service records can be matched to its line.
        self.fire("spawned", f"service started (pid {pid}, run {self.service.run_count})")

    def _exec_service(self, cmd: start.Command, env: dict) -> None:
        """Opt-in imginit behaviour: the service replaces fsm-init as PID 1."""
        log.info("FSM_INIT_EXEC_SERVICE: the service replaces fsm-init (no reaping, no graceful stop)")
        if self.control:
            self.control.close()
            self.control = None
        self.syslog.close()
        self.notifier.close()
        if self.command_line:
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
        self.notifier.close()
        # The exec replaces this process before transitions would record the entry.
        self._entered_state()
        self.entry_recorded = True
        self.forwards.close()
        instance = self.service.instance
        reaper.hand_over(self.system, self.loop, {
            "pid": instance.pid, "by_session": instance.group.by_session, "started": instance.started,
            "target": self.target.directory, "run_count": self.service.run_count,
            "control_fd": self.control.sock.fileno() if self.control else None, "quiet": log.is_quiet(),
            "supporting": self.supporting(), "kill_all_on_exit": self.settings.kill_all_on_exit,
            "proof": self.config["workintvl"], "last_transition": self.last_transition,
            "run_dir": self.settings.run_dir, "state_dir": self.settings.state_dir, "oom": self.oom.state()})
        # Only reached when the exec failed: this engine carries on reaping.
        if self.control:
            self.control.sock.set_inheritable(False)
        if relaying:
            self.syslog.start()

    def on_enter_restart_interval(self) -> None:
        if self.service.instance:
            seconds = restart_interval.seconds(self.config)
            log.info(f"workintvl: first check in {seconds}s")
        else:
            if self.taking[0] == "start":
                self.service.restart_cause = self.cause
            seconds = self.service.failed(self.config)
            failures = self.service.failures
            log.info(f"restart in {seconds}s (failure {failures} in a row{', backing off' if failures > 1 else ''})")
        self.loop.call_later("state", seconds, lambda: self.fire("done", f"workintvl {seconds}s elapsed"))

    def on_enter_watch(self) -> None:
        if self.mode.kind != start.STATUS_CHECK:
            return
        self.checks.schedule(self.mode.period, partial(self.fire, "cycle_due"))

    def on_enter_check(self) -> None:
        self.network.keepalive()
        self.checks.cycle_count += 1
        self._write_count(start.count_text(self.service.run_count, self.mode, self.config, self.checks.cycle_count))
        self.checks.begin(self.target.directory, self.config, self.mode.period, self._service_env(), self._checks_done)

    def _checks_done(self, cycle: watch.Cycle) -> None:
        failure = cycle.failure
        self.service.checks_done(cycle.results, failure is None)
        if failure:
            cause = f"check failed: {failure.describe()}"
            log.warn(f"{cause}; restarting the service")
        else:
            cause = "every check passed" if cycle.results else "no PeriodicST-* scripts: healthy"
        self.fire("checks_done", cause)

    def on_enter_restart(self) -> None:
        self.service.restart_cause = self.cause
        self.loop.cancel("cycle")
        if self.service.reset_if_stable(self.config, self.mode.kind == start.STATUS_CHECK):
            log.info(f"the instance ran {self.config['workstable']}s or more: the restart back-off starts over")
        script = self.foreground.abandon()
        if script and script.output:
            script.output.close()
        self._stop_service(signal.SIGTERM)

    def on_enter_gave_up(self) -> None:
        cause, action = self.service.give_up(self.config)
        log.error(f"gave up: {cause}; {action}")
        self.fire("done", f"gave up ({self.config['workretry']['action']})")

    # -- stop path ---------------------------------------------------------------------

    def on_enter_pre_shutdown(self) -> None:
        self.loop.cancel("cycle")
        # A script still running (start-up, EnvResume, check) is cut short: its session gets
        # SIGTERM now (teardown kills what is left), and its exit must not start the next one.
        # As my_init does, the script gets one SIGTERM and the stop grace to finish (what its
        # handler starts included) before the shutdown scripts run and anything is swept.
        script = self.foreground.interrupt()
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
        if self.service.instance is None:
            self._instance_gone()
        else:
            self.stopper.stop_group(self.service.instance.group, sig, self.settings.stop_grace, self._instance_gone)

    def _instance_gone(self) -> None:
        self.notifier.end()
        self.service.gone()
        self.fire("group_gone", "the service's session is gone")

    def on_enter_stop_daemons(self) -> None:
        self.daemons.stop_all(lambda: self.fire("done", f"no {self.settings.service_dir} daemon runs"))

    def on_enter_post_shutdown(self) -> None:
        self._run_shutdown_scripts(self.settings.post_shutdown_dir)

    def _shutdown_scripts(self, directory: str) -> list[str]:
        return foreground.shutdown_scripts(directory, self.settings, self.system)

    def _run_shutdown_scripts(self, directory: str) -> None:
        paths, grace = self._shutdown_scripts(directory), self.settings.stop_grace
        cause = f"{len(paths)} script(s) of {directory} run" if paths else f"no script in {directory}"
        self.foreground.run_in_turn(paths, grace, lambda: self.environ, partial(carry_on, grace),
                                    lambda: self.fire("done", cause), "shutdown script")

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
        if self.control:
            self.control.close()
        self.syslog.close()
        self.notifier.close()
        self.loop.stop()

    # -- events from the loop ---------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in STOP_SIGNALS:
            if self.state in STOPPABLE:
                log.info(f"received {name}: stopping")
                self.stop_signal = signum
                self.stopped_by_signal = True
                self.fire("stop", f"received {name}")
            return
        if self.service.instance and self.service.instance.group.signal(self.system, signum):
            self.forwards.forwarded(name)

    def _on_exit(self, pid: int, status: int) -> None:
        code = exit_code(status)
        # leader_alive: once reaped, the leader's pid may be reused by a daemon or a script.
        if self.service.leader_exited(pid, code):
            cause = f"service (pid {pid}) {describe_exit(status)}"
            oom_kill = self.killed_by_oom(f"the service (pid {pid})", status)
            if oom_kill:
                cause += f", {oom_kill}"
            (log.warn if oom_kill else log.info)(cause)
            if self.service.instance:
                self.fire("service_exit", cause)
        elif self.network.exited(pid, status) or self.daemons.exited(pid, status):
            pass
        elif not self.foreground.exited(pid, code):
            self.checks.exited(pid)
        self.stopper.check_soon()

    def _readiness_failed(self, cause: str) -> None:
        """The watchdog missed (readiness.Notifier): a failure restart, its cause named."""
        if self.state == "restart" or self.state not in STOPPABLE:
            return  # the instance is being stopped already
        if not self.may_restart_request():
            log.error(f"{cause}; not restarted in {self.state}")
            return
        log.error(f"{cause}; restarting the service")
        self.fire("restart_request", cause)

    def killed_by_oom(self, who: str, status: int) -> str:
        """"" unless the child died of the kernel's OOM killer (only a SIGKILL death reads
        the cgroup); remembered for `srvctl why`."""
        words = self.oom.killed(status)
        if words:
            self.last_oom = f"{who} at {log.clock(self.system.wall())}, {words}"
        return words

    # -- control requests ---------------------------------------------------------------

    def handle_request(self, request: dict) -> dict:
        return status.answer(self, request)

    def request_daemon(self, verb: str, name) -> tuple[bool, str]:
        if verb not in ("start", "stop", "restart"):
            return False, f"{verb} does not take a service name"
        return self.daemons.request(verb, str(name))

    def request_rescan(self) -> tuple[bool, str]:
        ok, message = self.daemons.rescan()
        log.info(f"srvctl rescan: {message}")
        return ok, message

    def request_live(self) -> tuple[bool, str]:
        if self.state == "gave_up":
            return False, f"fsm-init gave up: {self.service.gave_up_reason}"
        return True, f"fsm-init answers ({self.state})"

    def request_restart(self) -> tuple[bool, str]:
        if not self.may_restart_request():
            return False, self._why_no_restart()
        log.info("srvctl restart")
        self.service.restart_requested, was = True, self.state
        self.fire("restart_request", "srvctl restart")
        return True, f"restarting (was {was})"

    def request_stop(self) -> tuple[bool, str]:
        if self.state not in STOPPABLE:
            return False, f"already {self.state}"
        log.info("srvctl stop: stopping the service, then exiting 0")
        self.service.stop_requested = True
        self.stop_signal = signal.SIGTERM
        self.fire("stop", "srvctl stop")
        return True, "stopping"

    def refused(self, verb) -> str:
        return f"unknown verb {verb!r}"

    def health(self) -> tuple[bool, str]:
        """Docker HEALTHCHECK / readiness: this instance runs and has proved itself."""
        if self.service.instance is None:
            return False, f"no service instance ({self.state})"
        failure = self.checks.cycle.failure if self.checks.cycle and self.service.last_checks else None
        return self.service.health(self.mode, self.config, failure.describe() if failure else "")

    def why(self) -> str:
        """The current state as a causal chain, in one paragraph."""
        t = self.last_transition
        guards = ", ".join(f"{g} {'yes' if v else 'no'}" for g, v in t.get("guards", {}).items())
        reason = t.get("cause") or f"from {t.get('from') or 'boot'}" + (f" ({guards})" if guards else "")
        when = f" at {log.clock(t['time'])}" if t.get("time") else ""
        service = self.service
        if self.state in ("restart", "gave_up") or (self.state == "restart_interval" and not service.instance):
            reason = service.restart_cause or reason
        if self.state == "restart_interval" and service.instance and service.restart_cause:
            text = f"{self.state}: started again{when} after {service.restart_cause}"
        else:
            text = f"{self.state}: {reason}{when}"
        # In a failure's restart interval, name the restart that is coming.
        restart = service.run_count - (0 if self.state == "restart_interval" and not service.instance else 1)
        if restart > 0:
            text += f"; restart {restart}"
        upcoming = self._upcoming()
        text = f"{text}; {upcoming}" if upcoming else text
        said = readiness.said(self.service.declared) if self.service.instance else ""
        text = f"{text}; {said}" if said else text
        return f"{text}; last out-of-memory kill: {self.last_oom}" if self.last_oom else text

    def _upcoming(self) -> str:
        when = {name: log.clock(self.system.wall() + at - self.system.now())
                for name, at in self.loop.pending().items()}
        pid = self.service.instance.pid if self.service.instance else None
        script, retry = self.foreground.script, self.foreground.retry
        running = f"running {script.name} (killed at {when.get('script')} if still running)" if script else ""
        phrases = {
            "startup_scripts": running, "env_resume": running, "post_shutdown": running,
            "pre_shutdown": running or (f"waiting for the interrupted script's session to end (SIGKILL at "
                                        f"{when[self.stopper.kill_deadline]})" if self.stopper.kill_deadline in when else ""),
            "stop_daemons": "stopping the /etc/service daemons one by one, in reverse order",
            "delay": f"the start goes on at {when.get('state')}",
            "idle": f"the config is read again at {when.get('state')}",
            "restart_interval": (f"first check at {when.get('state')}" if pid else f"next start at {when.get('state')}"),
            "watch": (f"next check at {when.get('cycle')}" if "cycle" in when else f"waiting for the service (pid {pid}) to exit"),
            "check": f"running {script.name}" if script else
                     (f"{retry[0]} cannot be started ({retry[1]}): trying again at "
                      f"{when.get('script')}" if retry and "script" in when else ""),
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
        now, service = self.system.now(), self.service
        # In status-check mode an instance outlives its leader (a start script may
        # daemonise): the pid is shown only while the leader lives.
        running = service.instance if service.leader_alive else None
        return status.snapshot(
            state=self.state, since=now - self.state_since, mode=self.mode.kind, period=self.mode.period,
            target=self.target.directory if self.target else None,
            service_pid=running.pid if running else None, uptime=now - running.started if running else None,
            run_count=service.run_count, failures=service.failures, last_exit=service.last_exit,
            checks=[r._asdict() for r in service.last_checks], healthy=self.health()[0],
            readiness=readiness.snapshot(service.readiness(self.mode, self.config), service.declared, self.notifier, now),
            last_transition=self.last_transition, supporting=self.supporting(), daemons=self.daemons.status(),
            pid=self.system.getpid(), write_problems=self.writes.status())

    def _write_count(self, text: str) -> None:
        if not self.target.directory:
            return
        path = os.path.join(self.target.directory, "service.run.count")
        self.writes.attempt(path, lambda: self.system.write_atomic(path, text.encode()))


