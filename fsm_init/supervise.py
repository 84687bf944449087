"""The work of the supervised service's states: idle, restart_interval, watch, check,
restart, gave_up and stopping.  The restart policy itself (back-off, retry window,
stable reset, give-up) is ``service.Service``'s; the check cycles are ``Checks``'.
"""

import os
import signal
from collections.abc import Callable
from functools import partial

from fsm_init.core import log
from fsm_init.core.kill import Stopper
from fsm_init.core.loop import EventLoop
from fsm_init.core.metrics import Metrics
from fsm_init.core.oom import Watch
from fsm_init.core.readiness import Notifier
from fsm_init.core.records import Protocol
from fsm_init.core.settings import Settings
from fsm_init.core.system import System, describe_exit, exit_code
from fsm_init.core.table import STOPPABLE
from fsm_init.core.writes import FileWrites
from fsm_init.history import History
from fsm_init.network.steps import Network
from fsm_init.steps import restart_interval, start
from fsm_init.steps.foreground import Foreground
from fsm_init.steps.resolve_target import Target
from fsm_init.steps.service import Service
from fsm_init.steps.watch import Checks, Cycle


class Engine(Protocol):
    """What the supervised states use: the engine (``engine.Engine``)."""
    config: dict
    mode: start.Mode
    target: Target
    metrics: Metrics
    stop_signal: int
    system: System
    settings: Settings
    loop: EventLoop
    history: History
    service: Service
    checks: Checks
    network: Network
    foreground: Foreground
    stopper: Stopper
    writes: FileWrites
    oom: Watch
    notifier: Notifier
    state: str
    may_restart_request: Callable[[], bool]  # added by transitions

    def fire(self, trigger: str, cause: str = "") -> None: ...

    def service_env(self) -> dict: ...


class Supervise:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write_count(self, text: str, durable: bool = True) -> None:
        """./service.run.count, as imginit writes it."""
        directory = self.engine.target.directory
        if not directory:
            return
        path = os.path.join(directory, "service.run.count")
        self.engine.writes.attempt(path, lambda: self.engine.system.write_atomic(path, text.encode(),
                                                                                   durable=durable))

    def idle(self) -> None:
        engine = self.engine
        engine.service.run_count += 1
        seconds = engine.settings.idle_wait
        self.write_count(start.idle_count_text(engine.service.run_count, seconds))
        log.info(f"no workstart configured: reading the config again in {seconds:g}s (srvctl restart: now)")
        engine.loop.call_later("state", seconds, lambda: engine.fire("done", f"idle wait {seconds:g}s elapsed"))

    def restart_interval(self) -> None:
        engine, service = self.engine, self.engine.service
        if service.instance:
            seconds = restart_interval.seconds(engine.config)
            log.info(f"workintvl: first check in {seconds}s")
        else:
            if engine.history.taking[0] == "start":
                service.restart_cause = engine.history.cause
            seconds = service.failed(engine.config)
            failures = service.failures
            log.info(f"restart in {seconds}s (failure {failures} in a row{', backing off' if failures > 1 else ''})")
        engine.loop.call_later("state", seconds, lambda: engine.fire("done", f"workintvl {seconds}s elapsed"))

    def watch(self) -> None:
        engine = self.engine
        if engine.mode.kind == start.STATUS_CHECK and engine.mode.period is not None:
            engine.checks.schedule(engine.mode.period, partial(engine.fire, "cycle_due"))

    def check(self) -> None:
        engine = self.engine
        assert engine.mode.period is not None, "the check cycles of status-check mode only"
        engine.network.keepalive()
        engine.checks.cycle_count += 1
        # every cycle: atomic, but without the two fsyncs (~3 ms, up to 10, of PID 1 blocked on
        # the disk each cycle); the restart count, written at each start, stays durable
        self.write_count(start.count_text(engine.service.run_count, engine.mode, engine.config,
                                          engine.checks.cycle_count), durable=False)
        engine.checks.begin(engine.target.directory, engine.config, engine.mode.period, engine.service_env(),
                            self.checks_done)

    def checks_done(self, cycle: Cycle) -> None:
        failure = cycle.failure
        self.engine.metrics.checks_done(cycle.results)
        self.engine.service.checks_done(cycle.results, failure is None)
        if failure:
            cause = f"check failed: {failure.describe()}"
            log.warn(f"{cause}; restarting the service")
        else:
            cause = "every check passed" if cycle.results else "no PeriodicST-* scripts: healthy"
        self.engine.fire("checks_done", cause)

    def restart(self) -> None:
        engine = self.engine
        engine.service.restart_cause = engine.history.cause
        engine.loop.cancel("cycle")
        if engine.service.reset_if_stable(engine.config, engine.mode.kind == start.STATUS_CHECK):
            log.info(f"the instance ran {engine.config['workstable']}s or more: the restart back-off starts over")
        script = engine.foreground.abandon()
        if script and script.output:
            script.output.close()
        self.stop_service(signal.SIGTERM)

    def gave_up(self) -> None:
        engine = self.engine
        cause, action = engine.service.give_up(engine.config)
        log.error(f"gave up: {cause}; {action}")
        engine.fire("done", f"gave up ({engine.config['workretry']['action']})")

    def readiness_failed(self, cause: str) -> None:
        """The watchdog missed (readiness.Notifier): a failure restart, its cause named."""
        engine = self.engine
        if engine.state == "restart" or engine.state not in STOPPABLE:
            return  # the instance is being stopped already
        if not engine.may_restart_request():
            log.error(f"{cause}; not restarted in {engine.state}")
            return
        log.error(f"{cause}; restarting the service")
        engine.metrics.watchdog_missed()  # counted as the watchdog's restart, not srvctl restart's
        engine.fire("restart_request", cause)

    def exited(self, pid: int, status: int) -> bool:
        """True if pid was the service's living leader: its exit is the instance's end."""
        engine = self.engine
        # leader_alive: once reaped, the leader's pid may be reused by a daemon or a script.
        if not engine.service.leader_exited(pid, exit_code(status)):
            return False
        cause = f"service (pid {pid}) {describe_exit(status)}"
        oom_kill = engine.oom.killed_by(f"the service (pid {pid})", status)
        if oom_kill:
            cause += f", {oom_kill}"
        (log.warn if oom_kill else log.info)(cause)
        if engine.service.instance:
            engine.fire("service_exit", cause)
        return True

    def stopping(self) -> None:
        self.stop_service(self.engine.stop_signal)

    def stop_service(self, sig: int) -> None:
        """TERM (or sig), grace, KILL the instance's session; then group_gone."""
        engine = self.engine
        if engine.service.instance is None:
            self.instance_gone()
        else:
            engine.stopper.stop_group(engine.service.instance.group, sig, engine.settings.stop_grace,
                                      self.instance_gone)

    def instance_gone(self) -> None:
        self.engine.notifier.end()
        self.engine.service.gone()
        self.engine.fire("group_gone", "the service's session is gone")
