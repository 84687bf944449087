"""The supervised service: its current instance, the restart policy and its health.

One object holds what used to be a dozen interlocking engine attributes: the instance
running now (if any), the leader's latest exit, the failure restarts with their
back-off, retry window, stable reset and give-up, an operator's pending restart or
stop, and whether this instance has proved itself healthy.  The engine's states call
its methods; it does no I/O and keeps no deadline (the clock is given), so it is
tested alone (tests/unit/test_service.py).
"""

from collections.abc import Callable

from fsm_init.core import readiness
from fsm_init.core.kill import Group
from fsm_init.core.records import NamedTuple
from fsm_init.steps import restart_interval, start


class Instance(NamedTuple):
    pid: int
    group: Group
    started: float  # monotonic


class Readiness(NamedTuple):
    """What the metrics and probes read: Service.readiness()."""
    ready: bool
    since: float | None  # monotonic: when this instance became ready; None while it is not
    status: str  # the latest STATUS= the service sent ("" when none)
    reason: str  # why it is ready or not, in words


class Service:
    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.instance: Instance | None = None
        self.pid: int | None = None  # the leader of the latest instance, alive or not
        self.leader_alive = False
        self.run_count = 0
        self.failures = 0  # consecutive failure restarts: the back-off exponent
        self.failure_times: list[float] = []  # for workretry's window
        self.last_exit: int | None = None
        self.restart_requested = False  # srvctl restart asked for the restart in progress
        self.stop_requested = False  # srvctl stop: exit 0 whatever the service's status
        self.give_up_status: int | None = None  # workretry.action exit: never 0
        self.gave_up_reason = ""  # for `srvctl live` while in gave_up
        self.restart_cause = ""  # what set off the restart in progress, for `srvctl why`
        self.last_checks: list = []  # the latest check cycle's results (watch.CheckResult)
        self.checks_healthy = False  # the latest cycle of this instance passed
        self.healthy_since: float | None = None  # this instance's first passed check cycle
        # workready notify / fd:N: what the instance itself said (readiness.Notifier feeds it)
        self.declared = readiness.State(now)

    # -- the instance ----------------------------------------------------------------------

    def starting(self) -> None:
        """A new instance is about to start: the run counts, its health starts over."""
        self.run_count += 1
        self.restart_requested = False
        self.last_checks, self.checks_healthy, self.healthy_since = [], False, None

    def started(self, pid: int, group: Group) -> None:
        self.instance = Instance(pid, group, self.now())
        self.pid, self.leader_alive = pid, True

    def leader_exited(self, pid: int, code: int) -> bool:
        """True if pid was the living leader of the latest instance (its exit is then
        the service's); once reaped, its pid may be reused by a daemon or a script."""
        if pid != self.pid or not self.leader_alive:
            return False
        self.last_exit, self.leader_alive = code, False
        return True

    def gone(self) -> None:
        """The instance's session is gone."""
        self.instance = None

    # -- the restart policy ----------------------------------------------------------------

    def failed(self, config: dict) -> int:
        """A failure restart is coming: counted in the retry window; the seconds to wait."""
        now = self.now()
        self.failures += 1
        window = config["workretry"]["window"]
        self.failure_times = [t for t in self.failure_times if now - t < window] + [now]
        return restart_interval.backoff(config, self.failures)

    def retries_exhausted(self, config: dict) -> bool:
        return restart_interval.exhausted(config, self.failure_times, self.now())

    def stable_for(self, status_check: bool) -> float:
        """How long the instance has run well: in status-check mode since its first passed
        cycle (a service whose checks hang never passed one), otherwise since its start."""
        if self.instance is None:
            return 0.0
        since = self.healthy_since if status_check else self.instance.started
        return 0.0 if since is None else self.now() - since

    def reset_if_stable(self, config: dict, status_check: bool) -> bool:
        """workstable: an instance that ran well long enough starts the back-off over."""
        if self.failures and self.stable_for(status_check) >= config["workstable"]:
            self.failures = 0
            return True
        return False

    def give_up(self, config: dict) -> tuple[str, str]:
        """workretry.max reached: (cause, what fsm-init does now); the window starts over."""
        retry = config["workretry"]
        action = "staying up for debugging (srvctl restart tries again)"
        if retry["action"] == "exit":
            # A last status of 0 (a start script that daemonised, say) would tell the
            # orchestrator that nothing failed.
            self.give_up_status = self.last_exit or 1
            action = f"exiting with status {self.give_up_status}" + ("" if self.last_exit else
                                                                     " (the last instance's own status was 0)")
        cause = (f"{len(self.failure_times) + 1} failure restarts within {retry['window']}s "
                 f"(workretry.max {retry['max']})")
        self.gave_up_reason = cause
        self.failure_times, self.failures = [], 0
        return cause, action

    def exit_status(self, stop_signal: int | None = None) -> int:
        """fsm-init's own exit status, as the service's story ends; stop_signal: the signal
        (SIGTERM, SIGINT) that stopped fsm-init, if one did."""
        if self.stop_requested:
            return 0
        if self.give_up_status is not None:
            return self.give_up_status
        if self.last_exit is None and stop_signal is not None:
            # Stopped before any service ran (during a start-up script, the delay, the idle
            # wait): the status the stop signal gives a process, as under tini (143 for TERM).
            return 128 + stop_signal
        return self.last_exit or 0

    # -- health ----------------------------------------------------------------------------

    def checks_done(self, results: list, passed: bool) -> None:
        self.last_checks, self.checks_healthy = results, passed
        if passed and self.healthy_since is None:
            self.healthy_since = self.now()

    def health(self, mode: start.Mode, config: dict, failure: str = "") -> tuple[bool, str]:
        """Docker HEALTHCHECK / readiness: this instance runs and has proved itself.
        failure: the failed check of the latest cycle, described."""
        answer = self.readiness(mode, config, failure)
        return answer.ready, answer.reason

    def readiness(self, mode: start.Mode, config: dict, failure: str = "") -> Readiness:
        """Ready or not, since when, the service's latest STATUS= and why.  With workready
        notify or fd:N the service's own word counts (in status-check mode: and the latest
        check cycle passed); with checks, the check cycle or workintvl seconds of running."""
        declared = self.declared
        status = declared.status_text if declared.declared else ""
        if self.instance is None:
            return Readiness(False, None, status, "no service instance")
        if declared.declared:
            if declared.stopping:
                return Readiness(False, None, status, "the service said STOPPING=1")
            if not declared.notified:
                return Readiness(False, None, status, declared.waiting_for())
            said = "READY=1" if declared.kind == readiness.NOTIFY else f"a newline on fd {declared.fd}"
            if mode.kind != start.STATUS_CHECK:
                return Readiness(True, declared.notified_at, status, f"the service said it is ready ({said})")
        if mode.kind == start.STATUS_CHECK:
            if self.checks_healthy:
                since = self.healthy_since
                if declared.declared and since is not None and declared.notified_at is not None:
                    since = max(since, declared.notified_at)
                return Readiness(True, since, status, "the latest check cycle of this instance passed"
                                 + (" and the service said it is ready" if declared.declared else ""))
            return Readiness(False, None, status, "no check cycle of this instance has passed yet"
                             if not self.last_checks else f"check failed: {failure}")
        ran = self.now() - self.instance.started
        proof = restart_interval.seconds(config)
        if ran >= proof:
            return Readiness(True, self.instance.started + proof, status, f"the service has run {ran:.0f}s")
        return Readiness(False, None, status, f"the service has run {ran:.1f}s of the {proof}s (workintvl) "
                         "it needs to count as healthy")
