"""Steps watch and check: status-check mode's periodic cycle, and the check runner.

Each cycle: every ./PeriodicRT-* in the background, then each ./PeriodicST-* in the
foreground in name order (a non-zero exit or a time-out fails the cycle and stops it
there), then, when every ST passed, every ./PeriodicMT-* in the background.  An RT or
MT script never overlaps its own previous run.  Cycles run at a fixed rate.
"""

from collections.abc import Callable
from functools import partial

from fsm_init.core import log, trust
from fsm_init.core.loop import EventLoop
from fsm_init.core.records import NamedTuple
from fsm_init.core.repeats import Repeats
from fsm_init.core.system import System
from fsm_init.steps import start
from fsm_init.steps.foreground import Foreground, name, scripts

RT, ST, MT = "PeriodicRT-", "PeriodicST-", "PeriodicMT-"


class CheckResult(NamedTuple):
    name: str
    exit: int | None  # None: timed out
    duration: float
    at: float  # wall clock
    output: str = ""  # the end of what it printed
    @property
    def passed(self) -> bool:
        return self.exit == 0

    def describe(self) -> str:
        if self.exit is None:
            text = f"{self.name} timed out after {self.duration:.1f}s (killed with everything it started)"
        else:
            text = f"{self.name} exited {self.exit} after {self.duration:.2f}s"
        return f"{text} (output: {self.output})" if self.output and not self.passed else text


class Cycle:
    """One check cycle's ST scripts and their results."""

    def __init__(self, number: int, directory: str | None, system: System) -> None:
        self.number = number
        self.pending = scripts(directory, ST, system)
        self.results: list[CheckResult] = []

    def next_check(self) -> str | None:
        if self.results and not self.results[-1].passed:
            return None
        return self.pending.pop(0) if self.pending else None

    def record(self, result: CheckResult) -> None:
        self.results.append(result)

    @property
    def passed(self) -> bool:
        # No ST scripts means healthy, as in imginit.
        return all(r.passed for r in self.results)

    @property
    def failure(self) -> CheckResult | None:
        return next((r for r in self.results if not r.passed), None)


def next_cycle_at(anchor: float, period: float, now: float) -> float:
    """The first tick of anchor + k*period not in the past: a slow check skips ticks, never shifts them."""
    if now <= anchor:
        return anchor
    ticks = int((now - anchor) // period) + 1
    return anchor + ticks * period


class Checks:
    """The check runner: the cycles of one service instance (their count is $SMCNT, as in
    imginit), the ST checks through the foreground runner, the RT and MT in the background."""

    def __init__(self, system: System, loop: EventLoop, foreground: Foreground, repeats: Repeats) -> None:
        self.system, self.loop, self.foreground, self.repeats = system, loop, foreground, repeats
        self.cycle: Cycle | None = None
        self.cycle_count = 0
        self.anchor: float | None = None  # the fixed-rate cycles' first tick
        self.begun: float | None = None  # when this instance's latest cycle began
        self.background: dict[str, int] = {}  # RT and MT scripts still running: name -> pid
        self._run: tuple = ()  # the running cycle's (directory, config, period, env, on_done)

    def new_instance(self) -> None:
        self.anchor, self.begun, self.cycle_count = None, None, 0

    def rebase(self, period: int) -> None:
        """workwatch changed (`srvctl reload`): the fixed rate is counted again from the
        latest cycle's start, so the next cycle comes at most one new period from now (one
        period from now when no cycle ran yet: daemon mode turned status-check)."""
        self.anchor = self.begun if self.begun is not None else self.system.now() + period

    def schedule(self, period: int, due: Callable[[str], None]) -> None:
        """The next cycle at the next tick of this instance's fixed rate: due(cause)."""
        now = self.system.now()
        if self.anchor is None:
            self.anchor = now
        self.loop.call_at("cycle", next_cycle_at(self.anchor, period, now),
                          lambda: due(f"check cycle {self.cycle_count + 1} due"))

    def env(self, service_env: dict, period: int) -> dict:
        return dict(service_env, SMCNT=str(self.cycle_count), PERDC=str(period))

    def begin(self, directory: str | None, config: dict, period: int, service_env: dict,
              on_done: Callable[["Cycle"], None]) -> None:
        """Cycle number cycle_count (the caller counts it and writes it out first): RT in
        the background, then the ST checks, then MT if they passed; on_done(cycle) at the end."""
        env = self.env(service_env, period)
        self.begun = self.system.now()
        self._run = (directory, config, period, env, on_done)
        self.start_background(directory, RT, config, env)
        self.cycle = Cycle(self.cycle_count, directory, self.system)
        self._next()

    def _next(self) -> None:
        directory, config, period, env, on_done = self._run
        assert self.cycle is not None  # begun
        path = self.cycle.next_check()
        if path:
            self.foreground.run(path, start.check_timeout(config, period), self._done, env, capture=True,
                                workuser=config["workuser"], retries=0)
            return
        if self.cycle.failure is None:
            self.start_background(directory, MT, config, env)
        on_done(self.cycle)

    def _done(self, name_: str, status: int | None, duration: float, output: str) -> None:
        assert self.cycle is not None  # a check of the cycle begun ended
        self.cycle.record(CheckResult(name_, status, duration, self.system.wall(), output))
        self._next()

    def start_background(self, directory: str | None, prefix: str, config: dict, env: dict) -> None:
        for path in scripts(directory, prefix, self.system):
            script = name(path)
            if script in self.background:
                log.info(f"{script} is still running from an earlier cycle: not started again")
                continue
            if not config["workuser"] and not trust.trusted(path, self.system, "run"):
                continue
            try:
                self.background[script] = self.system.spawn(start.as_user([path], config["workuser"]), env)
            except OSError as e:
                self.repeats.failed(script, e.strerror, partial(log.error,
                    f"cannot execute {script}: {e.strerror} (tried again next cycle, said once while it fails)"))
                continue
            if self.repeats.succeeded(script):
                log.info(f"{script} started again")

    def exited(self, pid: int) -> bool:
        """True if pid was an RT or MT script's."""
        for script, bg_pid in list(self.background.items()):
            if bg_pid == pid:
                del self.background[script]
                return True
        return False
