"""Foreground scripts: one at a time, each with a time-out, its exit heard from the loop.

The steps startup_scripts, env_resume, pre_shutdown and post_shutdown run their
scripts here in turn, and the check runner (``watch.Checks``) its PeriodicST-* checks:

- startup_scripts: every executable in /etc/my_init.d ($ENV_INIT_DIRECTORY) in name
  order, then /etc/rc.local when it is executable; the container environment is read
  again after each.  A non-zero exit or a time-out stops the start-up and fsm-init
  exits 1, as my_init does (its start-up raises, and Python exits 1).
- env_resume: the target's ./EnvResume-* in name order, once per container start, to
  restore what does not survive a restart (interface addresses, MACs); a failure is
  logged, not fatal.
- pre_shutdown and post_shutdown, my_init's shutdown hooks: every executable in
  /etc/my_init.pre_shutdown.d when the stop path begins, while the service and the
  /etc/service daemons still run (to deregister, to flush), and in
  /etc/my_init.post_shutdown.d once they are gone.  Each gets the stop grace time; a
  failure is logged and the stop goes on.  my_init runs them only when runit is used;
  fsm-init always has a stop path, so it always runs them (``--skip-startup-files``
  turns them off with the start-up files).
"""

import os
import signal
from collections.abc import Callable
from functools import partial

from fsm_init.core import log, trust
from fsm_init.core.kill import Group
from fsm_init.core.loop import EventLoop
from fsm_init.core.records import NamedTuple
from fsm_init.core.repeats import Repeats, is_resource
from fsm_init.core.system import System, spawn_error_code
from fsm_init.steps import start
from fsm_init.steps.output import CapturedOutput

RC_LOCAL = "/etc/rc.local"
STARTUP_FAILED_STATUS = 1
ENV_RESUME = "EnvResume-"
ENV_RESUME_TIMEOUT = 60.0


def scripts(directory: str | None, prefix: str, system: System) -> list[str]:
    """Executable regular files named prefix*, in name order (as the original's shell glob)."""
    if directory is None:
        return []
    paths = (os.path.join(directory, n) for n in system.list_dir(directory) if n.startswith(prefix))
    return [p for p in paths if system.is_executable(p)]


def startup_scripts(settings, system: System) -> list[str]:
    if settings.skip_startup_files:
        return []
    found = scripts(settings.init_dir, "", system)
    if system.is_executable(RC_LOCAL):
        found.append(RC_LOCAL)
    return found


def startup_failure(path: str, status: int | None, timeout: float) -> str:
    if status is None:
        return f"start-up script {path} timed out after {timeout:g}s and was killed"
    return f"start-up script {path} exited with status {status}"


def env_resume_scripts(directory: str | None, system: System) -> list[str]:
    return scripts(directory, ENV_RESUME, system)


def shutdown_scripts(directory: str, settings, system: System) -> list[str]:
    return [] if settings.skip_startup_files else scripts(directory, "", system)


def carry_on(timeout: float, path: str, status: int | None) -> bool:
    """A script whose failure is reported, not fatal (EnvResume-*, shutdown scripts)."""
    if status is None:
        log.error(f"{path} timed out after {timeout:g}s and was killed; carrying on")
    elif status:
        log.error(f"{path} exited with status {status}; carrying on")
    return True


def name(path: str) -> str:
    return os.path.basename(path)


class Script(NamedTuple):
    """A script run in the foreground: a start-up or shutdown script, EnvResume-* or PeriodicST-*."""
    pid: int
    name: str
    started: float
    on_done: Callable  # (name, exit | None, duration, output)
    output: CapturedOutput | None


class Foreground:
    """The one foreground script running now, and those still to run in this state."""

    def __init__(self, system: System, loop: EventLoop, repeats: Repeats) -> None:
        self.system, self.loop, self.repeats = system, loop, repeats
        self.script: Script | None = None
        self.in_turn: list[str] = []  # the foreground scripts still to run in this state
        self.retry: tuple[str, str] | None = None  # a check that could not be started: (name, why)

    def run_in_turn(self, paths: list[str], timeout: float | Callable[[], float], env: Callable[[], dict],
                    after_each, after_all, what: str = "") -> None:
        """Run paths one at a time, each with env() as it is then, and timeout (or timeout()
        as it is then: what the stop budget leaves); ``after_each(path, status)``
        (status None: timed out and killed) returns False to stop there, without ``after_all``.
        ``what`` ("start-up script"): each is logged as it starts, and when it succeeds with
        its duration, as my_init's "Running /etc/my_init.d/..." lines."""
        self.in_turn = list(paths)

        def done(path: str, _name: str, status: int | None, duration: float, *_) -> None:
            if what and status == 0:
                log.info(f"{what} {path} finished in {duration:.2f}s")
            if after_each(path, status):
                next_one()

        def next_one() -> None:
            if not self.in_turn:
                after_all()
                return
            path = self.in_turn.pop(0)
            if what:
                log.info(f"running {what} {path}")
            self.run(path, timeout() if callable(timeout) else timeout, partial(done, path), env())

        next_one()

    def run(self, path: str, timeout: float, on_done, env: dict, capture: bool = False,
            workuser: str | None = None, retries: int | None = None) -> None:
        """retries: a check (PeriodicST-*), whose start failing for lack of resources
        (EAGAIN, EMFILE, ...) is no verdict on the service: it is tried again with a
        back-off (1 s, doubling, at most its timeout), said once while it fails."""
        script_name = name(path)
        if not workuser and not trust.trusted(path, self.system, "run"):
            # Refused like a file that is not executable: a start-up script fails the
            # start-up, a PeriodicST-* check fails its cycle.
            on_done(script_name, 126, 0.0, "refused: another user could change it")
            return
        argv = start.as_user([path], workuser)
        output = CapturedOutput(self.loop, self.system, script_name) if capture else None
        try:
            pid = output.spawn(argv, env) if output else self.system.spawn(argv, env)
        except OSError as e:
            if retries is not None and is_resource(e):
                wait = min(2.0 ** min(retries, 16), timeout)
                self.repeats.failed(script_name, e.strerror, partial(log.error,
                    f"cannot start {script_name}: {e.strerror}; no verdict on the service: trying again in {wait:g}s, "
                    "backing off while it fails (said once)"))
                self.retry = (script_name, e.strerror or str(e))
                self.loop.call_later("script", wait, lambda: self.run(
                    path, timeout, on_done, env, capture, workuser, retries + 1))
                return
            log.error(f"cannot execute {script_name}: {e.strerror}")
            on_done(script_name, spawn_error_code(e), 0.0, e.strerror)
            return
        self.retry = None
        failed = self.repeats.succeeded(script_name)
        if failed:
            log.info(f"{script_name} started after {failed} failed attempt(s)")
        self.script = Script(pid, script_name, self.system.now(), on_done, output)
        self.loop.call_later("script", timeout, self._timed_out)

    def exited(self, pid: int, code: int) -> bool:
        """True if pid was the running script's (its on_done is then called with code)."""
        if not self.script or pid != self.script.pid:
            return False
        script, self.script = self.script, None
        self.loop.cancel("script")
        self._finish(script, code)
        return True

    def _finish(self, script: Script, status: int | None) -> None:
        words = ""
        if script.output:
            # A check is done when its leader exits: what it left running in its session
            # (a background child holding its stdout, say) goes with it, passed or not, and
            # its pipes are read once and closed, or they would pile up in PID 1.
            words = script.output.finish()
            Group(script.pid).signal(self.system, signal.SIGKILL)
        script.on_done(script.name, status, self.system.now() - script.started, words)

    def _timed_out(self) -> None:
        script = self.abandon()
        if script:
            self._finish(script, None)

    def abandon(self) -> Script | None:
        """Kill the running foreground script with everything it started."""
        script, self.script, self.retry = self.script, None, None
        self.loop.cancel("script")
        if script:
            Group(script.pid).signal(self.system, signal.SIGKILL)
        return script

    def interrupt(self) -> Script | None:
        """Stop running scripts here: none is started after the running one, whose exit
        no longer counts; returned, alive, for the caller to stop."""
        script, self.script, self.in_turn, self.retry = self.script, None, [], None
        self.loop.cancel("script")
        return script
