"""Whole-session signalling and the leftover sweep, shared by the engine and the thin reaper.

A service is spawned as the leader of a new session, so "the service" is every live
process in that session (or, when it owns the terminal, its process group): a start
script that put a daemon in the background is stopped with it.
"""

import signal

from fsm_init import log
from fsm_init.system import System


class Group:
    """The live processes of one spawned session or process group."""

    def __init__(self, leader: int, by_session: bool = True) -> None:
        self.leader = leader
        self.by_session = by_session

    def members(self, system: System) -> list[int]:
        if self.by_session:
            return [p.pid for p in system.processes() if p.sid == self.leader]
        return [p.pid for p in system.processes() if p.pgid == self.leader]

    def signal(self, system: System, sig: int) -> int:
        members = self.members(system)
        for pid in members:
            system.kill(pid, sig)
        return len(members)


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
    """A signal, a grace time, SIGKILL; ``then`` runs once nothing is left."""

    def __init__(self, system: System, loop) -> None:
        self.system, self.loop = system, loop
        self.find = None
        self.then = None
        self.label = ""

    def stop_group(self, group: Group, sig: int, grace: float, then) -> None:
        self._start(lambda: group.members(self.system), sig, grace, then, "the service's session")

    def sweep(self, grace: float, then) -> None:
        self._start(lambda: leftovers(self.system), signal.SIGTERM, grace, then, "leftover processes")

    def _start(self, find, sig: int, grace: float, then, label: str) -> None:
        self.find, self.then, self.label = find, then, label
        pids = find()
        if not pids:
            self._finish()
            return
        for pid in pids:
            self.system.kill(pid, sig)
        log.info(f"sent {signal.Signals(sig).name} to {label} ({len(pids)} process(es)); SIGKILL in {grace:g}s")
        self.loop.call_later("stop-kill", grace, self._kill)
        self.loop.call_later("stop-poll", POLL, self.check)

    def check(self) -> None:
        """Called on every child exit, and by its own poll: finish when nothing is left."""
        if self.find is None:
            return
        if self.find():
            self.loop.call_later("stop-poll", POLL, self.check)
        else:
            self._finish()

    def _kill(self) -> None:
        pids = self.find()
        for pid in pids:
            self.system.kill(pid, signal.SIGKILL)
        if pids:
            log.warn(f"{self.label} outlived the grace time: sent SIGKILL to {len(pids)} process(es)")
        self.loop.call_later("stop-kill", KILL_SETTLE, self._finish)

    def _finish(self) -> None:
        self.loop.cancel("stop-kill")
        self.loop.cancel("stop-poll")
        then, self.find, self.then = self.then, None, None
        if then:
            then()
