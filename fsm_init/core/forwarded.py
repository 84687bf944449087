"""The log of forwarded signals, summarised: a flood of HUPs is one line a second, not
one line each.

The first signal after a quiet second is logged at once; those that follow within the
second are counted and summed up in one line when it ends (``forwarded SIGHUP ×200,
SIGUSR1 ×3 to the service's session in 1.0s``).  The summary is a deadline of the
event loop that exists only while signals are being counted: an idle fsm-init does not
wake for it.  Standard library only (the thin reaper uses it).
"""

from fsm_init.core import log

WINDOW = 1.0  # seconds
DEADLINE = "forward-summary"


class ForwardLog:
    def __init__(self, loop, system, whom: str = "the service's session") -> None:
        self.loop, self.system, self.whom = loop, system, whom
        self.counts: dict[str, int] = {}
        self.since: float | None = None  # the window being counted; None: quiet

    def forwarded(self, name: str) -> None:
        if self.since is None:
            log.info(f"forwarded {name} to {self.whom}")
            self._open()
        else:
            self.counts[name] = self.counts.get(name, 0) + 1

    def _open(self) -> None:
        self.since = self.system.now()
        self.loop.call_later(DEADLINE, WINDOW, self.flush)

    def flush(self) -> None:
        """Say what was counted; a window with nothing counted ends the summary."""
        self.loop.cancel(DEADLINE)
        if not self.counts:
            self.since = None
            return
        took = self.system.now() - self.since
        text = ", ".join(f"{name} ×{count}" for name, count in self.counts.items())
        log.info(f"forwarded {text} to {self.whom} in {took:.1f}s")
        self.counts = {}
        self._open()

    def close(self) -> None:
        """Before fsm-init exits or execs: the last counts are not lost."""
        self.flush()
        self.loop.cancel(DEADLINE)
        self.since = None
