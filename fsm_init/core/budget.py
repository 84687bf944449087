"""The stop budget: the whole stop path within ``FSM_INIT_STOP_BUDGET`` seconds, and the
one line that says where a stop's time went.

An orchestrator gives a stop a deadline and then sends SIGKILL: Docker after 10 s
(``docker stop -t``), Kubernetes after ``terminationGracePeriodSeconds`` (30 s). The stop
path's parts each have a grace of their own (the shutdown scripts' time-out, the
service's and each /etc/service daemon's TERM → KILL grace, the leftovers'); added up
they can pass that deadline, and the orchestrator's KILL then cuts the last daemon's
stop short. With a budget, ``StopBudget`` is the deadline every part asks "how much may
I take": a part gets its own grace, never more than what is left of the budget once the
shares kept for the parts that must always run are set aside (the service's stop and
the leftovers' KILL, reserved when the stop begins). What is left over by a quick part
goes to the next one. A part with nothing left still runs at once: TERM then KILL.

Parts, in order (the states of ``table.STOP_PATH``): pre-shutdown (the shutdown scripts,
and a start-up script interrupted by the stop), service, daemons (one by one), post-
shutdown, leftovers.  The engine and the thin reaper (whose stop path is service and
leftovers) both say at the end, in one log line and in the journal's last entry, where
the time went.  Without a budget every part keeps its own grace; ``grace_sum`` adds them
up at start-up, so that fsm-init can warn once when Docker's default would cut them short.

Standard library only: the thin reaper uses it.
"""

from fsm_init.core import log

TYPE_CHECKING = False  # the thin reaper imports no typing; the type checker sees True
if TYPE_CHECKING:
    from collections.abc import Callable

# The stop path's states, each with its part of the time line.
PARTS = {"pre_shutdown": "pre-shutdown", "stopping": "service", "stop_daemons": "daemons",
         "post_shutdown": "post-shutdown", "teardown": "leftovers"}
ORDER = ("pre-shutdown", "service", "daemons", "post-shutdown", "leftovers")
END = "exited"

# The shares of the budget kept from the start for the parts that must always run: the
# service's stop (at most its own grace) and the leftovers' TERM and KILL (at most their
# grace).  With 9 s: 2.25 s and 1.35 s, whatever the shutdown scripts take before them.
SERVICE_SHARE = 0.25
LEFTOVER_SHARE = 0.15
# After SIGKILL, a budgeted part waits this long (not kill.KILL_SETTLE) for the kernel to
# finish the kill: a KILLed process is gone in milliseconds unless it sleeps in I/O, and
# the leftover sweep (or PID 1's own exit) takes care of that one.
KILL_WAIT = 0.25
# docker stop's default time-out: the per-part graces are said once at start-up when they
# add up to more.
DOCKER_DEFAULT = 10.0


def parse(raw: str | None) -> tuple[float | None, str]:
    """$FSM_INIT_STOP_BUDGET: (seconds, "") or (None, why it is refused); unset is (None, "")."""
    if raw is None or raw.strip() == "":
        return None, ""
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):  # also nan
        return None, (f"environment FSM_INIT_STOP_BUDGET={raw!r} is not a number of seconds > 0: refused; "
                      "the stop path keeps its per-part graces")
    return value, ""


def grace_sum(settings, pre_scripts: int, daemons: int, finishes: int, post_scripts: int) -> list[tuple[str, float]]:
    """The stop path's parts at their own graces, as (what, seconds): the longest a stop
    takes without a budget (the kernel's time to finish a KILL aside)."""
    grace = settings.stop_grace
    parts = []
    if pre_scripts:
        parts.append((f"pre-shutdown {pre_scripts} script(s) x {grace:g}s", pre_scripts * grace))
    parts.append((f"service {grace:g}s", grace))
    if daemons:
        parts.append((f"daemons {daemons} x {grace:g}s" + (f" + {finishes} finish x {grace:g}s" if finishes else ""),
                      (daemons + finishes) * grace))
    if post_scripts:
        parts.append((f"post-shutdown {post_scripts} script(s) x {grace:g}s", post_scripts * grace))
    if settings.kill_all_on_exit:
        parts.append((f"leftovers {settings.leftover_grace:g}s", settings.leftover_grace))
    return parts


def check_graces(settings, pre_scripts: int, daemons: int, finishes: int, post_scripts: int) -> None:
    """At start-up, once: the budget in force, or a warning when the per-part graces add
    up to more than docker stop's default time-out."""
    if settings.stop_budget is not None:
        log.info(f"stop budget {settings.stop_budget:g}s (FSM_INIT_STOP_BUDGET): the stop path ends within it")
        return
    parts = grace_sum(settings, pre_scripts, daemons, finishes, post_scripts)
    total = sum(seconds for _, seconds in parts)
    if total > DOCKER_DEFAULT:
        log.warn(f"a stop may take up to {total:g}s at the per-part graces ({', '.join(what for what, _ in parts)}), "
                 f"more than the {DOCKER_DEFAULT:g}s docker stop waits by default before SIGKILL: set "
                 "FSM_INIT_STOP_BUDGET a little under the runtime's deadline (9 for docker stop's 10 s) "
                 "to share it out")


class _Span:
    """A part of the stop, or one daemon within the daemons part: its time and notes."""

    def __init__(self, name: str, began: float) -> None:
        self.name, self.began, self.took = name, began, 0.0
        self.notes: list[str] = []
        self.items: list[_Span] = []

    def text(self) -> str:
        inner = [f"{item.name} {item.took:.1f}s" + (f": {', '.join(item.notes)}" if item.notes else "")
                 for item in self.items] + self.notes
        return f"{self.name} {self.took:.1f}s" + (f" ({'; '.join(inner)})" if inner else "")

    def as_dict(self) -> dict:
        entry: dict = {"part": self.name, "took": round(self.took, 3), "notes": list(self.notes)}
        if self.items:
            entry["items"] = [{"name": i.name, "took": round(i.took, 3), "notes": list(i.notes)} for i in self.items]
        return entry


class StopBudget:
    """The stop path's clock and, with a budget, its deadline.

    ``entering(state)`` is told every state entered (the engine's transitions, the thin
    reaper's steps): the first state of the stop path starts the clock, each one after it
    ends a part and begins the next, ``exited`` logs the time line.  The parts ask
    ``grace(own)`` for a TERM → KILL grace or a script's time-out and ``settle(own)`` for
    the wait after KILL; ``killed()``, ``note()`` and ``item()`` fill in the time line.
    Outside the stop path, or without a budget, every part keeps its own grace."""

    def __init__(self, seconds: float | None, stop_grace: float, leftover_grace: float,
                 now: "Callable[[], float]") -> None:
        self.seconds, self.now = seconds, now
        # The shares kept for the parts that must always run, from the start of the stop.
        self.reserves: dict[str, float] = {}
        if seconds:
            self.reserves = {"service": min(stop_grace + KILL_WAIT, seconds * SERVICE_SHARE),
                             "leftovers": min(leftover_grace + KILL_WAIT, seconds * LEFTOVER_SHARE)}
        self.began: float | None = None  # when the stop path began
        self.parts: list[_Span] = []
        self.item_span: _Span | None = None  # the daemon being stopped
        self.report: dict | None = None  # the time line, once the stop is over

    @property
    def active(self) -> bool:
        """A budget applies now: the stop path runs and is not over."""
        return bool(self.seconds) and self.began is not None and self.report is None

    # -- the clock ---------------------------------------------------------------------------

    def entering(self, state: str) -> None:
        part = PARTS.get(state)
        if part is None and (state != END or self.began is None or self.report is not None):
            return
        now = self.now()
        if self.began is None:
            self.began = now
        self._close(now)
        if part is not None:
            self.parts.append(_Span(part, now))
            return
        self._finish(now)

    def _close(self, now: float) -> None:
        self._close_item(now)
        if self.parts:
            self.parts[-1].took = now - self.parts[-1].began

    def _close_item(self, now: float) -> None:
        if self.item_span is not None:
            self.item_span.took = now - self.item_span.began
            self.item_span = None

    def _finish(self, now: float) -> None:
        assert self.began is not None  # only called once the stop began
        took = now - self.began
        of = f" of the {self.seconds:g}s budget" if self.seconds else ""
        line = f"stop took {took:.1f}s{of}: " + ", ".join(part.text() for part in self.parts)
        self.report = {"took": round(took, 3), "budget": self.seconds, "parts": [p.as_dict() for p in self.parts],
                       "line": line}
        # Past the budget (a process in uninterruptible sleep, a loaded machine): the
        # runtime's SIGKILL may have been close; said as a warning.
        (log.warn if self.seconds and took > self.seconds else log.info)(line)

    def journal(self, state: str) -> dict:
        """Fields for the journal's entry of state: the time line on the way to exited."""
        return {"stop": self.report} if state == END and self.report is not None else {}

    # -- what the parts ask ------------------------------------------------------------------

    def left(self) -> float:
        """Seconds until the current part must end: the budget's end, less the shares kept
        for the parts after it."""
        assert self.seconds is not None and self.began is not None  # only asked while active
        current = self.parts[-1].name if self.parts else ORDER[0]
        later = ORDER[ORDER.index(current) + 1:]
        return self.began + self.seconds - sum(self.reserves.get(part, 0.0) for part in later) - self.now()

    def grace(self, own: float, kill_wait: bool = True) -> float:
        """The grace (or, kill_wait False, a script's time-out, killed at once when it ends)
        the current part may take: its own, cut to what is left."""
        given = own
        if self.active:
            left, wait = max(0.0, self.left()), KILL_WAIT if kill_wait else 0.0
            if self.parts and self.parts[-1].name in self.reserves:
                # The service and the leftovers: the wait after their KILL takes at most half
                # of what is left, so that a share under 2 x KILL_WAIT (a budget under 2 or
                # 3 s) still gives TERM a chance.
                wait = min(wait, left / 2)
            given = min(own, max(0.0, left - wait))
        return given

    def settle(self, own: float) -> float:
        """How long to wait for the kernel after SIGKILL: own (kill.KILL_SETTLE), cut to
        what is left, but never under KILL_WAIT."""
        if not self.active:
            return own
        return min(own, max(KILL_WAIT, self.left()))

    # -- the time line -----------------------------------------------------------------------

    def _span(self) -> _Span | None:
        if self.began is None or self.report is not None or not self.parts:
            return None
        return self.item_span or self.parts[-1]

    def note(self, text: str) -> None:
        span = self._span()
        if span is not None and text not in span.notes:
            span.notes.append(text)

    def killed(self, given: float, own: float, what: str = "") -> None:
        """A TERM → grace → KILL (or, what "time limit", a finish script's time limit) ended in
        KILL (kill.Stopper), after given of its own grace."""
        prefix = f"{what}: " if what else ""
        if given < own:
            self.note(f"{prefix}KILL after {given:.1f}s of {own:g}s grace")
        else:
            self.note(f"{prefix}KILL after grace")

    def item(self, name: str) -> None:
        """One thing of the current part is stopped now (a daemon, in turn): it is timed on its own."""
        span = self._span()
        if span is None or (self.item_span is not None and self.item_span.name == name):
            return
        now = self.now()
        self._close_item(now)
        self.item_span = _Span(name, now)
        self.parts[-1].items.append(self.item_span)
