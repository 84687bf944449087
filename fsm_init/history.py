"""What the engine did and why: the transition being taken, the guards it evaluated,
the cause of each trigger, and the journal entry that each state entry leaves.

The machine is ``transitions``' own, extended only where its documentation says to:
``condition_cls`` (each guard's value is recorded), a transition's ``before`` callbacks
(the one taken), ``prepare_event``/``finalize_event`` (the cause of each trigger, in
order, as ``queued=True`` processes them) and ``after_state_change`` (the journal).
"""

from collections import deque
from collections.abc import Callable

from transitions import Machine, Transition
from transitions.core import Condition

from fsm_init.core import status
from fsm_init.core.journal import Journal
from fsm_init.core.system import System

Taken = tuple[str, str, str]  # (source, dest, trigger)


class RecordingCondition(Condition):
    """Records in the model's History each guard's value for a real trigger (a
    may_<trigger>() probe builds an Event of its own and is not recorded), for the journal."""

    def check(self, event_data):
        passed = super().check(event_data)
        if event_data.machine.events.get(event_data.event.name) is event_data.event:
            event_data.model.history.guard_results[self.func] = passed if self.target else not passed
        return passed


class RecordingTransition(Transition):
    condition_cls = RecordingCondition  # transitions' documented way to change how guards are checked


class RecordingMachine(Machine):
    """A Machine whose model has a ``history`` (a History) that its guards are recorded in."""
    transition_cls = RecordingTransition


class History:
    def __init__(self, system: System, journal: Journal, state: Callable[[], str]) -> None:
        self.system, self.journal, self.state = system, journal, state
        self.since = system.now()  # when the current state was entered (monotonic)
        self.guard_results: dict[str, bool] = {}
        self.taking: Taken = ("", "boot", "")
        self.took: Taken | None = None  # the transition the trigger being processed took
        # Told, after each trigger, the transition it took (or None) and the guards it
        # evaluated: how the unit tests' Harness follows the machine.
        self.observer: Callable[[Taken | None, dict[str, bool]], None] | None = None
        self.cause = ""  # why the transition being processed happens
        # The causes of the triggers fired and not yet processed, in order (see queue).
        self.causes: deque[str] = deque()
        self.last_transition: dict = {}
        self.entry_recorded = False
        # Told each transition recorded, handover's early one included (the metrics count them).
        self.recorded: Callable[[str, str, str], None] | None = None
        # More fields for the entry of a state (the stop budget's time line in exited's).
        self.annotate: Callable[[str], dict] | None = None

    def queue(self, cause: str) -> None:
        """A trigger is fired: with queued=True one fired while another transition runs is
        processed later, in order, so its cause waits here, is taken when its processing
        begins (new_event) and dropped when it ends (event_done, called for every trigger,
        an ignored one too)."""
        self.causes.append(cause)

    def fire(self, trigger: Callable[[], object], cause: str) -> None:
        """Process one trigger with its cause (see queue).  The journal's lines and
        status.json are written once, after the whole chain of transitions it sets off:
        on the stop path, after the service is signalled (``with journal:``)."""
        self.queue(cause)
        with self.journal:
            try:
                trigger()
            except BaseException:
                self.causes.clear()  # transitions dropped the triggers still queued
                raise

    def new_event(self) -> None:
        self.guard_results = {}
        if self.causes:  # not for a may_<trigger>() probe between events
            self.cause = self.causes[0]

    def event_done(self) -> None:
        if self.causes:
            self.causes.popleft()
        took, self.took = self.took, None
        if self.observer:
            self.observer(took, self.guard_results)

    def take(self, trigger: str, dest: str) -> None:
        """The transition (trigger to dest) is taken: its guards passed."""
        self.taking = self.took = (self.state(), dest, trigger)

    def entered(self, run_count: int, snapshot: Callable[[], dict], early: bool = False) -> None:
        """The state is entered: the journal's entry.  early: before the state's work rather
        than after the transition (handover's exec would replace the process first); the
        transition's own call is then skipped."""
        if self.entry_recorded:
            self.entry_recorded = False
            return
        self.entry_recorded = early
        self.since = self.system.now()
        source, dest, trigger = self.taking
        self.last_transition = status.transition(self.system.wall(), source, dest, trigger, self.guard_results,
                                                 self.cause, run_count)
        if self.annotate:
            self.last_transition.update(self.annotate(dest))
        if self.recorded:
            self.recorded(source, dest, trigger)
        self.journal.record(self.last_transition, snapshot)  # made once, when status.json is written
