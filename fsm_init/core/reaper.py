"""The thin reaper: non-daemon mode's PID 1 once the init steps are done.

A non-daemon service can run for months; the engine that started it holds the
interpreter plus transitions and marshmallow in memory for nothing.  Once the
service has settled, the engine execs this module (same PID, same children, the
control socket's fd kept open), which imports only the standard library and
fsm-init's standard-library modules: it forwards signals, reaps, answers srvctl,
and runs the same stop path (``kill.Stopper``) as the engine, within the same stop
budget (``budget.StopBudget``: its parts are the service and the leftovers).
"""

import json
import os
import signal
import socket
import sys

from fsm_init.core import budget, log, status
from fsm_init.core.control import NOT_SUPERVISED, ControlServer
from fsm_init.core.forwarded import ForwardLog
from fsm_init.core.journal import Journal
from fsm_init.core.kill import Group, Stopper
from fsm_init.core.loop import CAUGHT, STOP_SIGNALS, EventLoop
from fsm_init.core.metrics import Metrics
from fsm_init.core.settings import Settings
from fsm_init.core.system import System, exit_code
from fsm_init.core.table import NON_DAEMON

HANDOVER_ENV = "FSM_INIT_HANDOVER"
# What ps, pidof and docker top show for PID 1 after the hand-over: argv[0] (cmdline)
# and the process name (/proc/1/comm), as before it.
NAME = "fsm-init"


def hand_over(system: System, loop: EventLoop, state: dict) -> None:
    """exec the reaper in place of the engine, giving it state (what ``Reaper`` reads);
    returns only if the exec failed."""
    env = dict(os.environ, **{HANDOVER_ENV: json.dumps(state)})
    log.info("init steps done: handing PID duties to the thin reaper")
    # -I -S: no site-packages scan and no .pth files (about 2 MB of RSS); the package's
    # own directory is put on sys.path explicitly instead.
    # (the directory above the fsm_init package, wherever this module sits in it)
    package_parent = os.path.dirname(os.path.abspath(sys.modules["fsm_init"].__path__[0]))
    code = f"import sys; sys.path.insert(0, {package_parent!r}); from fsm_init.core.reaper import main; main()"
    # From here a signal stays pending, blocked, across the exec until the reaper's handlers
    # are in.  One caught a moment before (its number waiting in the wake-up pipe, which the
    # exec would close unread) is sent again to this process: pending too, for the reaper.
    system.block_signals(CAUGHT)
    for signum in loop.take_signals():
        system.kill(system.getpid(), signum)
    try:
        system.execve([argv0(), "-I", "-S", "-c", code], env, sys.executable, blocked=CAUGHT)
    except OSError as e:
        log.error(f"cannot exec the thin reaper ({e.strerror}): the engine carries on")
        system.unblock_signals(CAUGHT)  # what is pending reaches the engine's handlers


def argv0() -> str:
    """fsm-init beside the interpreter: ps and pidof read the name, and the interpreter,
    which finds its standard library from argv[0]'s directory, finds it there as it did
    (a bare name would be looked up on the PATH: a relocatable Python would be lost)."""
    return os.path.join(os.path.dirname(sys.executable), NAME) if sys.executable else NAME


class Reaper:
    def __init__(self, system: System, settings: Settings, state: dict) -> None:
        self.system, self.settings = system, settings
        self.pid = state["pid"]
        self.group = Group(self.pid, state["by_session"])
        self.started = state["started"]
        self.target = state["target"]
        self.run_count = state["run_count"]
        self.supporting = state["supporting"]
        self.proof = state["proof"]
        self.last_transition = state["last_transition"]
        self.journal = Journal(settings.run_dir, system)
        self.kill_all_on_exit = state.get("kill_all_on_exit", True)
        self.oom_state = state.get("oom")
        self.last_oom = ""
        self.last_exit: int | None = None
        self.stop_requested = False
        self.state = "handover"
        self.since = system.now()
        self.loop = EventLoop(system, self._on_signal, self._on_exit)
        self.budget = budget.StopBudget(settings.stop_budget, settings.stop_grace, settings.leftover_grace, system.now)
        self.stopper = Stopper(system, self.loop, budget=self.budget)
        self.forwards = ForwardLog(self.loop, system)
        self.control = None
        if state["control_fd"] is not None:
            sock = socket.socket(fileno=state["control_fd"])
            sock.set_inheritable(False)
            self.control = ControlServer(sock, settings.control_socket, self.loop, self.handle_request)
        # FSM_INIT_HTTP: the probes keep answering (an orchestrator's liveness probe must not
        # fail because the engine handed over), and the metrics go on counting.
        self.metrics = Metrics(state.get("metrics"))
        self.http = None
        if state.get("http_fd") is not None:
            from fsm_init.core.http_probes import HttpServer

            listener = socket.socket(fileno=state["http_fd"])
            listener.set_inheritable(False)
            self.http = HttpServer(listener, self.loop, self)

    def run(self) -> int:
        self._enter("handover")
        log.attach(self.loop)
        self.loop.install()
        self.loop.run()
        return self.exit_status()

    def exit_status(self) -> int:
        return 0 if self.stop_requested or self.last_exit is None else self.last_exit

    def _enter(self, state: str, trigger: str = "", cause: str = "") -> None:
        """The reaper's own steps of the stop path, journalled as the engine's are (the
        engine recorded the handover itself, before its exec)."""
        previous, self.state, self.since = self.state, state, self.system.now()
        log.set_state(state)
        self.budget.entering(state)
        if trigger:
            self.last_transition = status.transition(self.system.wall(), previous, state, trigger, {}, cause,
                                                     self.run_count)
            self.metrics.transition(previous, state, trigger)
            self.last_transition.update(self.budget.journal(state))
            self.journal.record(self.last_transition, self.snapshot)

    def _on_signal(self, signum: int) -> None:
        if signum in STOP_SIGNALS:
            if self.state == "handover":
                log.info(f"received {signal.Signals(signum).name}: stopping")
                self._stop(signum, f"received {signal.Signals(signum).name}")
            return
        if self.group.signal(self.system, signum):
            self.forwards.forwarded(signal.Signals(signum).name)

    def _stop(self, signum: int, cause: str) -> None:
        with self.journal:  # status.json after the signal is sent, not before (a rename: ~1 ms)
            self._enter("stopping", "stop", cause)
            self.stopper.stop_group(self.group, signum, self.settings.stop_grace,
                                    lambda: self._teardown("group_gone", "the service's session is gone"))

    def _on_exit(self, pid: int, status: int) -> None:
        if pid == self.pid:
            self.last_exit = exit_code(status)
            cause = f"service (pid {pid}) exited with status {self.last_exit}"
            if self.last_exit == 128 + signal.SIGKILL:
                from fsm_init.core import oom  # only on this path: the reaper stays small

                words = oom.Watch.from_state(self.system, self.oom_state).killed(status)
                if words:
                    cause += f", {words}"
                    self.metrics.oom_kill("service")
                    self.last_oom = f"the service (pid {pid}), {words}"
            (log.warn if self.last_oom else log.info)(cause)
            if self.state == "handover":
                self._teardown("service_exit", cause)
        self.stopper.check_soon()

    def _teardown(self, trigger: str, cause: str) -> None:
        with self.journal:  # teardown and, when nothing is left, exited: status.json once
            self._enter("teardown", trigger, cause)
            if self.kill_all_on_exit:
                self.stopper.sweep(self.settings.leftover_grace, lambda: self._exited("no leftover process remains"))
            else:
                self._exited("--no-kill-all-on-exit")

    def _exited(self, cause: str) -> None:
        self._enter("exited", "done", cause)
        self.loop.reap()
        self.forwards.close()
        log.info(f"exiting with status {self.exit_status()}")
        if self.control:
            self.control.close()
        if self.http:
            self.http.close()
        self.loop.stop()

    def handle_request(self, request: dict) -> dict:
        return status.answer(self, request)

    def request_daemon(self, verb: str, name) -> tuple:
        # The engine hands over only when there is no /etc/service daemon.
        return False, f"no /etc/service daemon named {name!r}: there are none"

    def request_stop(self) -> tuple:
        if self.state != "handover":
            return False, self.refused("stop")
        log.info("srvctl stop: stopping the service, then exiting 0")
        self.stop_requested = True
        self._stop(signal.SIGTERM, "srvctl stop")
        return True, "stopping"

    def request_restart(self) -> tuple:
        return False, NOT_SUPERVISED

    def request_rescan(self) -> tuple:
        # The engine hands over only when there is no service directory to watch.
        return False, (f"the thin reaper does not read {self.settings.service_dir}: fsm-init hands over to it "
                       "only when that directory did not exist (or with --skip-runit); restart the container "
                       "to supervise services there")

    def request_reload(self, dry_run: bool) -> dict:
        message = ("the thin reaper reads no configuration: the service runs in non-daemon mode and fsm-init "
                   "handed over; restart the container to apply a new one")
        return {"ok": False, "message": message, "lines": [message], "changed": False}

    def health(self) -> tuple:
        ran = self.system.now() - self.started
        if self.last_exit is not None:
            return False, f"the service exited with status {self.last_exit}"
        if ran >= self.proof:
            return True, f"the service has run {ran:.0f}s"
        return False, f"the service has run {ran:.1f}s of the {self.proof}s it needs"

    def ready_since(self):
        """When the service became ready (System.now's clock), None while it is not."""
        return self.started + self.proof if self.health()[0] else None

    def metrics_text(self) -> str:
        since = self.ready_since()
        return self.metrics.render(self.state, None if since is None else self.system.now() - since)

    def request_live(self) -> tuple:
        return True, f"fsm-init answers ({self.state})"

    def why(self) -> str:
        if self.state != "handover":
            cause = self.last_transition.get("cause", "")
            return f"{self.state}: {cause}" + (f"; last out-of-memory kill: {self.last_oom}" if self.last_oom else "")
        return (f"{self.state}: the service (pid {self.pid}) runs in non-daemon mode; "
                "the thin reaper forwards signals, reaps, and exits with its status")

    def refused(self, verb) -> str:
        return f"cannot {verb} during {self.state}"

    def snapshot(self) -> dict:
        alive = self.last_exit is None
        return status.snapshot(
            state=self.state, since=self.system.now() - self.since, mode=NON_DAEMON, period=None,
            target=self.target, service_pid=self.pid if alive else None,
            uptime=self.system.now() - self.started if alive else None, run_count=self.run_count, failures=0,
            last_exit=self.last_exit, checks=[], healthy=self.health()[0], last_transition=self.last_transition,
            supporting=self.supporting, daemons=[], pid=self.system.getpid(),
            write_problems=self.journal.writes.status())


def main() -> None:
    state = json.loads(os.environ.pop(HANDOVER_ENV))
    log.set_quiet(state.get("quiet", False))
    log.go_nonblocking()
    system = System()
    system.set_name(NAME)
    settings = Settings()
    # The engine's choice (settings.settle_dirs), not a reader's guess.
    settings.run_dir = state.get("run_dir", settings.run_dir)
    settings.state_dir = state.get("state_dir", settings.state_dir)
    exit_now(Reaper(system, settings, state).run())


def exit_now(status: int) -> None:
    """Leave at once: interpreter shutdown would add milliseconds to every container stop,
    and PID 1 has nothing left to clean up (a stalled log reader gets half a second for
    the last lines, "exiting with status N")."""
    sys.stdout.flush()
    sys.stderr.flush()
    log.drain()
    os._exit(status)


if __name__ == "__main__":
    main()
