"""The kill library: whole-session signalling, the one TERM → grace → KILL (``Stopper``)
and the leftover sweep, shared by the engine, the thin reaper, the supporting services
and the /etc/service daemons.

A service is spawned as the leader of a new session, so "the service" is every live
process in that session (or, when it owns the terminal, its process group): a start
script that put a daemon in the background is stopped with it.
"""

import signal

from fsm_init.core import log
from fsm_init.core.system import System

TYPE_CHECKING = False  # the thin reaper imports no typing; the type checker sees True
if TYPE_CHECKING:
    from collections.abc import Callable


class Group:
    """The live processes of one spawned session or process group."""

    def __init__(self, leader: int, by_session: bool = True) -> None:
        self.leader = leader
        self.by_session = by_session

    def _procs(self, system: System):
        if self.by_session:
            return [p for p in system.processes() if p.sid == self.leader]
        return [p for p in system.processes() if p.pgid == self.leader]

    def members(self, system: System) -> list[int]:
        return [p.pid for p in self._procs(system)]

    def signal(self, system: System, sig: int) -> int:
        """sig to every member, once each; returns how many there were."""
        # The leader's process group first, in one syscall, then the members that
        # moved to process groups of their own (found by a /proc scan).
        reached_group = system.kill(-self.leader, sig)
        procs = self._procs(system)
        for p in procs:
            if p.pgid != self.leader:
                system.kill(p.pid, sig)
        # The scan may come after the group died of the signal: it was there all the same.
        return max(len(procs), int(reached_group))


def leftovers(system: System) -> list[int]:
    """Every process fsm-init is answerable for, other than itself.

    As PID 1 that is the whole PID namespace.  Otherwise (a subreaper, say under
    ``docker --init`` or in a test) only its own descendants: kill(-1) there would
    reach processes outside the container.
    """
    me = system.getpid()
    procs = system.processes()
    if me == 1:
        return [p.pid for p in procs if p.pid != 1]
    children: dict[int, list[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    found, todo = [], list(children.get(me, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


# How often a stop looks again for survivors: a grandchild's death sends no SIGCHLD
# to PID 1 while its parent lives, so exits alone cannot tell "all gone".
POLL = 0.05
# After SIGKILL, how long to wait for the kernel to finish the kills (a process in
# uninterruptible sleep dies only when its I/O returns) before moving on anyway.
KILL_SETTLE = 1.0


class Stopper:
    """A signal, a grace time, SIGKILL; ``then`` runs once nothing is left.  ``name``
    prefixes the loop's deadlines, so that several stoppers can run at once.  ``budget``
    (a budget.StopBudget): on the stop path the grace and the wait after SIGKILL are what
    it allows, and a KILL is noted in its time line."""

    def __init__(self, system: System, loop, name: str = "stop", budget=None) -> None:
        self.system, self.loop, self.budget = system, loop, budget
        self.kill_deadline, self.poll_deadline = f"{name}-kill", f"{name}-poll"
        self.graces = (0.0, 0.0, "")  # the grace given, the caller's own and what it was for: the budget's note
        self.began = 0.0  # when the grace began (System.now's clock)
        self.killing = False  # SIGKILL sent: the kill deadline is now the wait for the kernel
        # Set by _start (or time_limit) while a group is being stopped.
        self.find: Callable[[], object] | None = None
        self.send: Callable[[int], int] | None = None
        self.then: Callable[[], object] | None = None
        self.label = ""

    def stop_group(self, group: Group, sig: int, grace: float, then, label: str = "the service's session") -> None:
        self._start(lambda: group.members(self.system), lambda s: group.signal(self.system, s),
                    sig, grace, then, label)

    def sweep(self, grace: float, then) -> None:
        def send(sig: int) -> int:
            pids = leftovers(self.system)
            for pid in pids:
                self.system.kill(pid, sig)
            return len(pids)

        self._start(lambda: leftovers(self.system), send, signal.SIGTERM, grace, then, "leftover processes")

    def _limit(self, grace: float, what: str = "") -> float:
        given = self.budget.grace(grace) if self.budget else grace
        self.graces = (given, grace, what)
        self.began, self.killing = self.system.now(), False
        return given

    def to_budget(self) -> None:
        """A stop or time limit begun before the stop path, with the caller's own grace
        (a daemon's restart, its finish script): its KILL, or its wait for the kernel
        after one, brought forward to what the stop budget leaves now."""
        due = self.loop.due(self.kill_deadline)
        if not self.budget or not self.budget.active or self.send is None or due is None:
            return
        now = self.system.now()
        if self.killing:
            if now + self.budget.settle(KILL_SETTLE) < due:
                self.loop.call_later(self.kill_deadline, self.budget.settle(KILL_SETTLE), self._finish)
            return
        _, own, what = self.graces
        grace = self.budget.grace(own)
        if now + grace < due:
            self.graces = (now - self.began + grace, own, what)
            self.loop.call_later(self.kill_deadline, grace, self._kill)

    def _start(self, find, send, sig: int, grace: float, then, label: str) -> None:
        self.find, self.send, self.then, self.label = find, send, then, label
        grace = self._limit(grace)
        count = send(sig)
        if not count:
            self._finish()
            return
        self.system.yield_cpu()  # the signalled processes' handlers before this stop's bookkeeping
        log.info(f"sent {signal.Signals(sig).name} to {label} ({count} process(es)); SIGKILL in {grace:g}s")
        self.loop.call_later(self.kill_deadline, grace, self._kill)
        self.loop.call_later(self.poll_deadline, POLL, self.check)

    def time_limit(self, group: Group, grace: float, then, label: str) -> None:
        """No signal now: SIGKILL to the group if it is still there after grace, then()
        once the kernel has had KILL_SETTLE to finish the kill.  For a process that is
        waited for by its exit (a daemon's finish script): cancel() when it exits in time."""
        self.find, self.send, self.then, self.label = None, lambda s: group.signal(self.system, s), then, label
        self.loop.call_later(self.kill_deadline, self._limit(grace, "time limit"), self._kill)

    def cancel(self) -> None:
        """Drop the stop or time limit under way; then() is not called."""
        self.loop.cancel(self.kill_deadline)
        self.loop.cancel(self.poll_deadline)
        self.find = self.send = self.then = None

    def check_soon(self) -> None:
        """After a child exit: look again once the current batch of exits is handled
        (a /proc scan per reaped orphan would make reaping 10 000 of them quadratic)."""
        if self.find is not None:
            self.loop.call_later(self.poll_deadline, 0, self.check)

    def check(self) -> None:
        """Finish when nothing is left; polls itself while something is."""
        if self.find is None:
            return
        if self.find():
            self.loop.call_later(self.poll_deadline, POLL, self.check)
        else:
            self._finish()

    def _kill(self) -> None:
        assert self.send is not None  # only scheduled by _start or time_limit
        self.killing = True
        count = self.send(signal.SIGKILL)
        if count:
            log.warn(f"{self.label} outlived the grace time: sent SIGKILL to {count} process(es)")
            if self.budget:
                self.budget.killed(*self.graces)
        settle = self.budget.settle(KILL_SETTLE) if self.budget else KILL_SETTLE
        self.loop.call_later(self.kill_deadline, settle, self._finish)

    def _finish(self) -> None:
        self.loop.cancel(self.kill_deadline)
        self.loop.cancel(self.poll_deadline)
        then, self.find, self.then = self.then, None, None
        if then:
            then()
