"""Steps watch and check: status-check mode's periodic cycle.

Each cycle: every ./PeriodicRT-* in the background, then each ./PeriodicST-* in the
foreground in name order (a non-zero exit or a time-out fails the cycle and stops it
there), then, when every ST passed, every ./PeriodicMT-* in the background.  An RT or
MT script never overlaps its own previous run.  Cycles run at a fixed rate.
"""

import os
from typing import NamedTuple

from fsm_init.script_files import executables
from fsm_init.system import System

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
        self.pending = executables(directory, ST, system)
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


def name(path: str) -> str:
    return os.path.basename(path)
