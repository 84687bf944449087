"""Supporting services: processes that run beside the target service (dropbear, pppd).

imginit's rules, kept: a supporting service is started before the target service;
before a target restart it is restarted only if its settings changed or it died; in
status-check mode every cycle restarts it when it is enabled and dead; it is stopped
when disabled, and with everything else on teardown.  A restart with new settings
waits for the old process to exit (SIGKILL after the grace time) before starting
the new one, so the new one can bind the same port; the engine does not wait.  The
stop is the kill library's ``Stopper`` (TERM to the whole session, SIGKILL to what is
left of it after the grace time), as for the service and the daemons.
"""

import signal
from functools import partial

from fsm_init.core import log
from fsm_init.core.kill import Group, Stopper
from fsm_init.core.records import NamedTuple
from fsm_init.core.repeats import Repeats
from fsm_init.core.system import System, Unavailable, exit_code


def prepare(what: str, work) -> "Spec":
    """A supporting step's spec: work() prepares what the process needs; a file it cannot
    prepare makes the step unavailable, with the file named."""
    try:
        return work()
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise Unavailable(f"cannot prepare {what}{where}: {e.strerror or e}") from None


class Spec(NamedTuple):
    argv: list[str]
    env: dict
    fingerprint: str  # the settings that matter: a change means a restart
    summary: str  # for srvctl status, e.g. "port 8022"


class Supporting:
    def __init__(self, name: str, system: System, loop, grace: float, on_change=None) -> None:
        self.name, self.system, self.loop, self.grace = name, system, loop, grace
        self.on_change = on_change or (lambda: None)  # called when the process starts or exits
        self.spec: Spec | None = None
        self.pid: int | None = None
        self.started = 0.0
        self.last_exit: int | None = None
        self.restart_when_gone = False
        self.ended = False  # the stop path began: never started again
        self.repeats = Repeats()
        self.stopper = Stopper(system, loop, f"support-{name}")

    def apply(self, spec: Spec | None) -> None:
        """The settings for this (re)start of the target; None: disabled."""
        old, self.spec = self.spec, spec
        if self.pid is None:
            if spec:
                self._start()
        elif spec is None or old is None or spec.fingerprint != old.fingerprint:
            log.info(f"{self.name}: settings changed, restarting it" if spec else f"{self.name}: disabled, stopping it")
            self._stop(restart=spec is not None)

    def shut_down(self) -> None:
        """fsm-init stops: a restart under way (new settings, `srvctl reload`) does not start
        the process again; teardown stops what still runs."""
        self.ended, self.restart_when_gone = True, False

    def keepalive(self) -> None:
        if self.spec and self.pid is None and not self.restart_when_gone:
            if self.repeats.reason(self.name) is None:  # not while its start keeps failing
                log.warn(f"{self.name} is not running: starting it again")
            self._start()

    def exited(self, pid: int, status: int) -> bool:
        if pid != self.pid:
            return False
        self.pid, self.last_exit = None, exit_code(status)
        log.info(f"{self.name} (pid {pid}) exited with status {self.last_exit}")
        if self.restart_when_gone:
            self.restart_when_gone = False
            self._start()
        if self.pid is None:
            self.on_change()
        return True

    def status(self) -> str:
        if self.spec is None:
            return "disabled"
        if self.pid is None:
            return f"not running (last exit {self.last_exit}); {self.spec.summary}"
        return f"running, pid {self.pid}, up {self.system.now() - self.started:.0f}s; {self.spec.summary}"

    def _start(self) -> None:
        assert self.spec is not None  # only started with a spec
        if self.ended:
            return
        try:
            self.pid = self.system.spawn(self.spec.argv, self.spec.env)
        except OSError as e:
            self.repeats.failed(self.name, e.strerror, partial(log.error,
                f"cannot start {self.name} ({self.spec.argv[0]}): {e.strerror} (said once while it fails)"))
            return
        self.started = self.system.now()
        failed = self.repeats.succeeded(self.name)
        log.info(f"{self.name} started (pid {self.pid}): {self.spec.summary}"
                 + (f" after {failed} failed attempt(s)" if failed else ""))
        self.on_change()

    def _stop(self, restart: bool) -> None:
        # The restart waits for the leader's exit (exited), not for the whole session:
        # what the leader left behind is the stopper's to KILL at the grace time.
        self.restart_when_gone = restart
        assert self.pid is not None  # only stopped while running
        self.stopper.stop_group(Group(self.pid), signal.SIGTERM, self.grace, None, f"{self.name}'s session")
