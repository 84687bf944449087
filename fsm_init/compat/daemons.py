"""The /etc/service daemons, in runit's layout: /etc/service/NAME/run, as phusion
baseimage-docker images have them, supervised without runit.

runit's rules, kept: ./run is started in its service directory and started again
whenever it exits (unless the service is wanted down); an executable ./finish then
runs first, with run's exit code and wait status as its two arguments; a ``down``
file means "known, but not started at boot".  Unlike runsv's fixed one-second
pause, consecutive failures back off (restart_interval.daemon_backoff), so a
daemon that dies at once cannot spin the CPU.

Nothing here waits: the event loop's named deadlines time the restarts and kills,
and the engine hands over every child exit through ``Daemons.exited``.

The directory is watched while fsm-init runs (inotify, an fd in the one event loop: no
polling, no wake-up while nothing changes).  A service directory added at run time
(``ln -s``, ``cp -r``, ``mv``) starts within a second, one removed is stopped as on
teardown (TERM, grace, KILL); ``srvctl rescan`` does the same scan on request.  A new
directory whose run is not there yet (``cp -r`` makes the directory first) is watched
itself until run appears.
"""

import errno
import os
import signal
from functools import partial

from fsm_init.core import log, readiness, trust
from fsm_init.core import system as os_events
from fsm_init.core.kill import Group, Stopper
from fsm_init.core.repeats import Repeats
from fsm_init.core.system import System, describe_exit, exit_code
from fsm_init.steps import restart_interval

# What changes the list of services: entries made, removed or renamed in the directory.
DIRECTORY_EVENTS = (os_events.IN_CREATE | os_events.IN_DELETE | os_events.IN_MOVED_FROM | os_events.IN_MOVED_TO
                    | os_events.IN_DELETE_SELF | os_events.IN_MOVE_SELF | os_events.IN_ONLYDIR)
# What makes a new service directory's run appear: created, renamed in, written, chmod +x.
PENDING_EVENTS = (os_events.IN_CREATE | os_events.IN_MOVED_TO | os_events.IN_CLOSE_WRITE
                  | os_events.IN_ATTRIB | os_events.IN_ONLYDIR)
# A change is acted on once the directory has been quiet this long (cp -r writes run after
# making the directory; running a file still open for writing fails with ETXTBSY), and at
# most this long after the first event of a burst: within a second, as promised.
SETTLE = 0.1
MAX_SETTLE = 0.5


# s6's convention: a finish script exiting 125 marks the service down for good (a permanent
# failure, as after `s6-svc -O`); fsm-init also takes it from run itself when there is no
# finish.  A run script that finds it cannot work here (cron in a container started with
# --user) says so once and exits 125, instead of a restart loop logging every few seconds.
PERMANENT_FAILURE = 125


def _permanent(status: int) -> bool:
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == PERMANENT_FAILURE


DIGEST_LIMIT = 1 << 20  # a run up to this size (a script) is compared by content


def run_digest(system: System, path: str) -> str:
    """What run is, to tell a change (`srvctl reload`): a script by its content (rewritten
    the same, it is no change); a larger file, a program, by its inode, size and time,
    not read whole on the event loop."""
    import hashlib

    identity = system.file_identity(path)
    if identity is None:
        return ""
    if identity[1] > DIGEST_LIMIT:
        return "identity:" + ":".join(map(str, identity))
    return hashlib.sha256(system.read_bytes(path) or b"").hexdigest()


class Daemon:
    """One service directory: its run process, its finish script and its restarts."""

    def __init__(self, name: str, directory: str, owner: "Daemons") -> None:
        self.name, self.directory, self.owner = name, directory, owner
        self.run = os.path.join(directory, "run")
        self.finish = os.path.join(directory, "finish")
        self.down_file = "down" in owner.system.list_dir(directory)
        self.wanted = not self.down_file
        self.pid: int | None = None
        self.finish_pid: int | None = None
        self.started = 0.0
        self.starts = 0
        self.failures = 0  # consecutive, for the back-off
        self.last_exit: int | None = None
        self.stopping = False  # its session is being stopped (TERM, grace, KILL)
        self.again = False  # start right after the exit and finish: no back-off, no failure
        self.delay = 0  # the back-off chosen when run last exited
        self.exit_status = 0  # run's last wait status, for finish
        self.removed = False  # its directory left the service directory: stop, then forget it
        self.out_of_memory = False  # run's last exit was the kernel's OOM killer
        self.digest = ""  # run's content when it was last started
        # s6's notification-fd: run writes a newline to this fd once ready (None: no file)
        self.notification_fd = self._notification_fd()
        self.ready_at: float | None = None
        self.ready_pipe: readiness.FdWatch | None = None
        self.stopper = Stopper(owner.system, owner.loop, self.deadline("stop"), owner.budget)
        self.finish_limit = Stopper(owner.system, owner.loop, self.deadline("finish"), owner.budget)

    def _notification_fd(self) -> int | None:
        path = os.path.join(self.directory, "notification-fd")
        if "notification-fd" not in self.owner.system.list_dir(self.directory):
            return None
        if not trust.trusted(path, self.owner.system, "read its notification-fd from"):
            return None  # another user could change it (a FIFO would block PID 1's read)
        raw = self.owner.system.read_bytes(path) or b""
        number = readiness.parse_notification_fd(raw.decode("utf-8", "replace"))
        if number is None:
            log.error(f"daemon {self.name}: {path} = {log.escape(raw.decode('utf-8', 'replace').strip()[:40])!r}: "
                      f"not a file descriptor number from 3 to {readiness.MAX_FD}; its readiness is not followed")
        return number

    def _became_ready(self) -> None:
        self.ready_pipe = None
        if self.pid is not None:
            self.ready_at = self.owner.system.now()
            log.info(f"daemon {self.name} (pid {self.pid}) is ready (a newline on fd {self.notification_fd})")

    def _end_ready_pipe(self) -> None:
        self.ready_at = None
        if self.ready_pipe is not None:
            self.ready_pipe.close()
            self.ready_pipe = None

    def deadline(self, what: str) -> str:
        return f"daemon-{self.name}-{what}"

    @property
    def busy(self) -> bool:
        return self.pid is not None or self.stopping or self.finish_pid is not None

    @property
    def state(self) -> str:
        if self.stopping:
            return "stopping"
        if self.pid is not None:
            return "running"
        if self.finish_pid is not None:
            return "finishing"
        return "backoff" if self.owner.loop.due(self.deadline("restart")) is not None else "down"

    def start(self) -> str | None:
        """Spawn run now; on failure the error (already logged), with a retry scheduled."""
        system, loop = self.owner.system, self.owner.loop
        loop.cancel(self.deadline("restart"))
        self._end_ready_pipe()
        try:
            if not trust.trusted(self.run, system, "run"):
                raise PermissionError(errno.EACCES, "refused: another user could change it", self.run)
            fds = []
            if self.notification_fd is not None:
                self.ready_pipe = readiness.FdWatch(system, loop, self.notification_fd, self._became_ready)
                fds = self.ready_pipe.open()
            self.pid = system.spawn([self.run], self.owner.environ, cwd=self.directory, fds=fds)
        except OSError as e:
            self._end_ready_pipe()
            self.failures += 1
            delay = self._backoff()
            # Said once while it fails the same way (a pids limit can last): the retries back off.
            self.owner.repeats.failed(self.name, e.strerror, partial(log.error,
                f"cannot start daemon {self.name} ({self.run}): {e.strerror}; retry in {delay}s, "
                "backing off while it fails (said once)"))
            loop.call_later(self.deadline("restart"), delay, self.start)
            return e.strerror
        self.started = system.now()
        if self.ready_pipe is not None:
            self.ready_pipe.spawned()
        self.starts += 1
        self.digest = run_digest(system, self.run)  # what runs: `srvctl reload` restarts it when run changes
        failed = self.owner.repeats.succeeded(self.name)
        log.info(f"daemon {self.name} started (pid {self.pid})"
                 + (f" after {failed} failed attempt(s)" if failed else ""))
        return None

    def terminate(self) -> None:
        log.info(f"stopping daemon {self.name} (pid {self.pid})")
        assert self.pid is not None  # only terminated while running
        self._clear_session(self.pid)

    def _clear_session(self, leader: int) -> None:
        # run's whole session, not just run: a child it left behind would otherwise
        # outlive a stop, or run twice beside the next run after a restart.
        self.stopping = True
        self.stopper.stop_group(Group(leader), signal.SIGTERM, self.owner.grace, self._session_gone,
                                f"daemon {self.name}'s session")

    def _session_gone(self) -> None:
        if self.pid is not None:
            if not any(p.pid == self.pid for p in self.owner.system.processes()):
                return  # run is a zombie not reaped yet: _run_exited goes on from here
            # Still there after SIGKILL and the settle time: uninterruptible sleep (a hung
            # NFS or FUSE mount).  The stop path must end, so fsm-init goes on without it.
            log.warn(f"daemon {self.name} (pid {self.pid}) is still there after SIGKILL; going on without it")
            self.pid, self.exit_status = None, signal.SIGKILL
            self._end_ready_pipe()
            self.last_exit = exit_code(self.exit_status)
        self.stopping = False
        if self.owner.system.is_executable(self.finish):
            self._run_finish(self.exit_status)
        else:
            self._after_finish()

    def exited(self, pid: int, status: int) -> bool:
        if pid == self.pid:
            self._run_exited(status)
        elif pid == self.finish_pid:
            self.finish_pid = None
            self.finish_limit.cancel()
            log.info(f"daemon {self.name}: finish (pid {pid}) {describe_exit(status)}"
                     + (f": it stays down (s6's permanent failure; `srvctl start {self.name}` tries again)"
                        if _permanent(status) and self.wanted else ""))
            if _permanent(status):
                self.wanted = False
            self._after_finish()
        else:
            return False
        return True

    def _run_exited(self, status: int) -> None:
        system = self.owner.system
        pid, self.pid = self.pid, None
        assert pid is not None  # called for run's own exit
        self._end_ready_pipe()
        self.last_exit, self.exit_status = exit_code(status), status
        if self.wanted and not self.again:
            if system.now() - self.started >= self.owner.config()["workstable"]:
                self.failures = 0
            self.failures += 1
            self.delay = self._backoff()
        else:
            self.delay = 0
        finish = system.is_executable(self.finish)
        if self.wanted and not finish and _permanent(status):
            self.wanted = False  # run says it cannot run here: no restart loop, no repeated lines
            self.delay = 0
        then = ("stay down" if not self.wanted else f"restart in {self.delay}s" if self.delay else "restart now") \
            + (f" (exit {PERMANENT_FAILURE}: it cannot run here; `srvctl start {self.name}` tries again)"
               if _permanent(status) and not finish else "")
        oom_kill = self.owner.killed_by_oom(f"daemon {self.name} (pid {pid})", status)
        self.out_of_memory = bool(oom_kill)
        (log.warn if oom_kill else log.info)(f"daemon {self.name} (pid {pid}) {describe_exit(status)}"
                                             f"{', ' + oom_kill if oom_kill else ''}; "
                                             f"{'finish, then ' if finish else ''}{then}")
        if not self.stopping:
            self._clear_session(pid)
        elif self.stopper.find is None:  # the stop saw the session empty before run was reaped
            self._session_gone()

    def _run_finish(self, status: int) -> None:
        # runit's arguments: run's exit code and 0, or -1 and the signal that killed it.
        if os.WIFSIGNALED(status):
            args = ["-1", str(os.WTERMSIG(status))]
        else:
            args = [str(os.WEXITSTATUS(status)), "0"]
        try:
            if not trust.trusted(self.finish, self.owner.system, "run"):
                raise PermissionError(errno.EACCES, "refused: another user could change it", self.finish)
            self.finish_pid = self.owner.system.spawn([self.finish, *args], self.owner.environ, cwd=self.directory)
        except OSError as e:
            log.error(f"cannot run {self.finish}: {e.strerror}")
            self._after_finish()
            return
        # runsv waits for finish forever; a hung finish here would hold up restarts and teardown.
        self.finish_limit.time_limit(Group(self.finish_pid), self.owner.grace, self._finish_abandoned,
                                     f"daemon {self.name}: finish (pid {self.finish_pid})")

    def _after_finish(self) -> None:
        if not self.wanted:
            self.again = False
            self.owner.settled()
        elif self.again or not self.delay:
            self.again = False
            self.start()
        else:
            self.owner.loop.call_later(self.deadline("restart"), self.delay, self.start)

    def _backoff(self) -> int:
        return restart_interval.daemon_backoff(self.owner.config(), self.failures)

    def _finish_abandoned(self) -> None:
        # Still there after SIGKILL and the settle time (uninterruptible sleep): do not wait for it.
        log.warn(f"daemon {self.name}: finish (pid {self.finish_pid}) is still there after SIGKILL; going on")
        self.finish_pid = None
        self._after_finish()

    def status(self) -> dict:
        now = self.owner.system.now()
        return {"name": self.name, "state": self.state, "pid": self.pid,
                "uptime": round(now - self.started, 3) if self.pid is not None else None,
                "last_exit": self.last_exit, "restarts": max(0, self.starts - 1), "down_file": self.down_file,
                "removed": self.removed,
                "ready": None if self.notification_fd is None else self.ready_at is not None,
                "out_of_memory": self.out_of_memory}


class Daemons:
    """Every service of one runit-style directory, for the engine to drive."""

    def __init__(self, system: System, loop, grace: float, config, budget=None) -> None:
        self.system, self.loop, self.grace, self.config = system, loop, grace, config
        self.budget = budget  # the stop budget (budget.StopBudget) the stoppers ask on the stop path
        self.directory = ""
        self.environ: dict = {}
        self.services: dict[str, Daemon] = {}
        self.then = None
        self.shutting_down = False
        self.watch_fd: int | None = None  # the inotify instance watching the directory
        self.watch_error = ""  # why the directory is not watched, when it is not
        self.pending: dict[int, str] = {}  # watch descriptor -> a new directory without run yet
        self.burst_started: float | None = None  # the first change not acted on yet
        # (who, wait status) -> "" or why it was the kernel's OOM killer (the engine's)
        self.killed_by_oom = lambda who, status: ""
        self.repeats = Repeats()

    @property
    def names(self) -> list[str]:
        return sorted(self.services)

    def start_all(self, directory: str, environ: dict) -> None:
        self.directory, self.environ = directory, environ
        if not self.system.is_dir(directory):
            return
        self._watch()
        self.scan()

    @property
    def watching(self) -> bool:
        return self.watch_fd is not None

    def _watch(self) -> None:
        try:
            self.watch_fd = self.system.watch_open()
            self.system.watch_add(self.watch_fd, self.directory, DIRECTORY_EVENTS)
        except OSError as e:
            if self.watch_fd is not None:
                self.system.close(self.watch_fd)
                self.watch_fd = None
            self.watch_error = e.strerror or str(e)
            log.warn(f"cannot watch {self.directory} ({self.watch_error}): "
                     "a service added or removed later needs `srvctl rescan`")
            return
        self.loop.watch(self.watch_fd, self._changed)

    def _unwatch(self) -> None:
        self.loop.cancel("daemons-scan")
        if self.watch_fd is not None:
            self.loop.unwatch(self.watch_fd)
            self.system.close(self.watch_fd)  # its watches go with it
            self.watch_fd = None
            self.pending.clear()

    def _changed(self) -> None:
        """The directory (or a new one waiting for its run) changed: scan once it settles."""
        gone = False
        assert self.watch_fd is not None  # the loop reads only a watch it was given
        for wd, mask, _name in self.system.watch_read(self.watch_fd):
            if mask & os_events.IN_IGNORED:
                self.pending.pop(wd, None)
            elif mask & (os_events.IN_DELETE_SELF | os_events.IN_MOVE_SELF) and wd not in self.pending:
                gone = True
        if gone:
            log.warn(f"{self.directory} itself was removed or renamed: it is no longer watched; "
                     "its services run on (`srvctl rescan` reads it again once it is back)")
            self._unwatch()
            self.watch_error = f"{self.directory} was removed or renamed"
            return
        now = self.system.now()
        if self.burst_started is None:
            self.burst_started = now
        self.loop.call_at("daemons-scan", min(now + SETTLE, self.burst_started + MAX_SETTLE), self.scan)

    def scan(self) -> dict[str, list[str]]:
        """Bring the services in line with the directory: start the new ones, stop the ones
        that left.  Returns what changed, by kind ("started", "stopping", ...)."""
        self.loop.cancel("daemons-scan")
        self.burst_started = None
        done: dict[str, list[str]] = {"started": [], "down": [], "stopping": [], "removed": [], "waiting for run": []}
        if self.shutting_down or not self.system.is_dir(self.directory):
            return done  # a vanished directory stops nothing: its removal is said once, in _changed
        present = set()
        for name, path in self.service_dirs():
            present.add(name)
            daemon = self.services.get(name)
            if daemon is not None:
                if daemon.removed:  # back before its stop ended: it runs again after the stop
                    self._return(daemon, done)
                continue
            if not self.system.is_executable(os.path.join(path, "run")):
                self._await_run(name, path, done)
                continue
            if not trust.trusted(os.path.join(path, "run"), self.system, "run"):
                continue
            self._forget_pending(name)
            daemon = self.services[name] = Daemon(name, path, self)
            if daemon.down_file:
                log.info(f"daemon {name}: {path}/down exists, not started (srvctl start {name} starts it)")
                done["down"].append(name)
            else:
                daemon.start()
                done["started"].append(name)
        for name in [n for n in self.names if n not in present]:
            self._retire(self.services[name], done)
        for wd, name in list(self.pending.items()):
            if name not in present and self.watch_fd is not None:  # pending implies a watch
                self.system.watch_remove(self.watch_fd, wd)
                del self.pending[wd]
        return done

    def _await_run(self, name: str, path: str, done: dict) -> None:
        done["waiting for run"].append(name)
        if name in self.pending.values():
            return  # said once
        if self.watch_fd is not None:
            try:
                self.pending[self.system.watch_add(self.watch_fd, path, PENDING_EVENTS)] = name
            except OSError as e:
                log.warn(f"cannot watch {path} ({e.strerror}): `srvctl rescan` once its run is there")
            else:
                log.warn(f"daemon {name}: {path}/run is missing or not executable; started once it is")
                return
        log.warn(f"daemon {name}: {path}/run is missing or not executable; skipped")

    def _forget_pending(self, name: str) -> None:
        for wd, pending in list(self.pending.items()):
            if pending == name and self.watch_fd is not None:  # pending implies a watch
                self.system.watch_remove(self.watch_fd, wd)
                del self.pending[wd]

    def _retire(self, daemon: Daemon, done: dict) -> None:
        """Its directory is gone: stop it as teardown would, then forget it."""
        if not daemon.removed:
            log.info(f"daemon {daemon.name}: {daemon.directory} was removed; stopping it")
        daemon.removed, daemon.wanted, daemon.again = True, False, False
        self.loop.cancel(daemon.deadline("restart"))
        if daemon.state == "running":
            daemon.terminate()
        if daemon.busy:
            done["stopping"].append(daemon.name)
        else:
            del self.services[daemon.name]
            done["removed"].append(daemon.name)

    def _return(self, daemon: Daemon, done: dict) -> None:
        log.info(f"daemon {daemon.name}: {daemon.directory} is back; it starts again once its stop is done")
        daemon.removed = False
        daemon.wanted = daemon.again = not daemon.down_file
        done["started"].append(daemon.name)

    def rescan(self) -> tuple[bool, str]:
        """srvctl rescan: the scan a change in the directory sets off, now."""
        if self.shutting_down:
            return False, "shutting down"
        if not self.directory:
            return False, "the service directory is not read (--skip-runit, or the daemons step is still to come)"
        if not self.system.is_dir(self.directory):
            return False, f"no directory {self.directory}"
        if self.watch_fd is None:  # back after a removal, made after the start, or inotify failed before
            self._watch()
        done = self.scan()
        said = [f"{what} {', '.join(names)}" for what, names in done.items() if names]
        watch = "watched" if self.watching else f"not watched: {self.watch_error}"
        return True, f"rescanned {self.directory} ({watch}): " + ("; ".join(said) or "no change")

    def exited(self, pid: int, status: int) -> bool:
        for daemon in self.services.values():
            daemon.stopper.check_soon()  # any exit may have emptied a session being stopped
        return any(daemon.exited(pid, status) for daemon in self.services.values())

    def settled(self) -> None:
        """A daemon's run, session and finish are all done: the next one's turn on teardown."""
        if self.shutting_down:
            self._stop_next()
        for name in [n for n, d in self.services.items() if d.removed and not d.busy]:
            log.info(f"daemon {name} stopped and forgotten: its directory was removed")
            del self.services[name]

    def request(self, verb: str, name: str) -> tuple[bool, str]:
        daemon = self.services.get(name)
        if daemon is None:
            return False, f"no daemon {name!r} in {self.directory} (known: {', '.join(self.names) or 'none'})"
        if verb not in ("start", "stop", "restart"):
            return False, f"unknown verb {verb!r} (start, stop or restart)"
        if verb == "stop":
            return True, self._stop(daemon)
        if self.shutting_down:
            return False, "shutting down"
        daemon.wanted = True
        if daemon.state == "running":
            if verb == "start":
                return True, f"{name} is already running (pid {daemon.pid})"
            daemon.again = True
            daemon.terminate()
            return True, f"restarting {name} (pid {daemon.pid})"
        daemon.failures = 0
        if daemon.busy:
            # runsv never overlaps finish and run; nor does fsm-init run's old session and a new run.
            daemon.again = True
            self.loop.cancel(daemon.deadline("restart"))
            return True, f"{name} is {daemon.state}: starting it again once that is done"
        error = daemon.start()
        if error:
            return False, f"cannot start {name}: {error}; trying again after a back-off"
        return True, f"started {name} (pid {daemon.pid})"

    def _stop(self, daemon: Daemon) -> str:
        daemon.wanted, daemon.again = False, False
        self.loop.cancel(daemon.deadline("restart"))
        if daemon.state != "running":
            if daemon.busy:
                return f"{daemon.name} is {daemon.state}; it stays down"
            return f"{daemon.name} is already down"
        if self.shutting_down:
            return f"{daemon.name} is stopped in its turn: shutting down"
        daemon.terminate()
        return f"stopping {daemon.name} (pid {daemon.pid})"

    def stop_all(self, then) -> None:
        """Teardown: stop the services one at a time, in reverse name order (the reverse of
        the start order, so one started earlier outlives its later neighbours), then then()."""
        self.shutting_down, self.then = True, then
        self._unwatch()
        for daemon in self.services.values():
            daemon.wanted = daemon.again = False
            self.loop.cancel(daemon.deadline("restart"))
        self._stop_next()

    def _stop_next(self) -> None:
        for name in reversed(self.names):
            daemon = self.services[name]
            if daemon.busy:
                if self.budget:
                    self.budget.item(name)  # the time line shows each daemon's stop
                if daemon.state == "running":
                    daemon.terminate()
                else:  # its stop or finish began before the stop path, with its own grace
                    daemon.stopper.to_budget()
                    daemon.finish_limit.to_budget()
                return
        then, self.then = self.then, None
        if then:
            then()

    def status(self) -> list[dict]:
        return [self.services[name].status() for name in self.names]

    # -- srvctl reload -------------------------------------------------------------------

    def service_dirs(self) -> list[tuple[str, str]]:
        """(name, path) of each service in the directory, as runsvdir sees them: it skips
        dot-directories (a "supervise" or editor leftover) and plain files."""
        found = []
        for name in self.system.list_dir(self.directory):
            path = os.path.join(self.directory, name)
            if not name.startswith(".") and self.system.is_dir(path):
                found.append((name, path))
        return found

    def reload_plan(self) -> dict[str, list[str]]:
        """What `srvctl reload` would change, changing nothing: the services whose directory
        appeared ("added") or left ("removed"), the running ones whose run changed since
        they started ("changed"), and lines for the running ones whose run is not read, as
        another user could change it ("unread": a FIFO there would block PID 1)."""
        plan: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "unread": []}
        if not self.directory or self.shutting_down or not self.system.is_dir(self.directory):
            return plan
        present = set()
        for name, path in self.service_dirs():
            present.add(name)
            daemon = self.services.get(name)
            if daemon is None or daemon.removed:
                if self.system.is_executable(os.path.join(path, "run")) \
                        and not trust.problem(os.path.join(path, "run"), self.system):
                    plan["added"].append(name)
            elif daemon.state == "running":
                why = trust.problem(daemon.run, self.system)
                if why:
                    plan["unread"].append(f"{name}: {daemon.run} is not read, another user could change it: {why}")
                elif daemon.digest != run_digest(self.system, daemon.run):
                    plan["changed"].append(name)
        plan["removed"] = [n for n in self.names if n not in present and not self.services[n].removed]
        return plan

    def reload(self, changed: list[str]) -> None:
        """`srvctl reload`: the scan (new services started, removed ones stopped), then each
        running service whose run changed restarted (its session stopped: TERM, grace, KILL)."""
        if self.watch_fd is None and self.system.is_dir(self.directory):
            self._watch()
        self.scan()
        for name in changed:
            daemon = self.services.get(name)
            if daemon is not None and daemon.state == "running":
                log.info(f"daemon {name}: {daemon.run} changed; restarting it")
                daemon.again = True
                daemon.terminate()

    def stop_counts(self) -> tuple[int, int]:
        """How many daemons the stop path stops, and how many of them have a finish script
        (each its own grace): for the start-up's sum of the stop path's graces."""
        return len(self.services), sum(1 for d in self.services.values() if self.system.is_executable(d.finish))
