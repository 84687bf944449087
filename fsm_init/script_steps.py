"""The work of the steps that run scripts in the foreground, one at a time
(``foreground.Foreground``): startup_scripts, env_resume, pre_shutdown, post_shutdown.
Which scripts each step runs, and how a failure counts, is said in ``foreground``.
"""

import signal
from collections.abc import Callable
from functools import partial

from fsm_init.compat.container_env import ContainerEnvironment
from fsm_init.core import budget, log
from fsm_init.core.kill import Group, Stopper
from fsm_init.core.records import Protocol
from fsm_init.core.settings import Settings
from fsm_init.core.system import System
from fsm_init.steps import foreground
from fsm_init.steps.foreground import Foreground, carry_on
from fsm_init.steps.resolve_target import Target
from fsm_init.steps.service import Service


class Engine(Protocol):
    """What the script steps use: the engine (``engine.Engine``)."""
    environ: dict
    target: Target
    system: System
    settings: Settings
    service: Service
    foreground: Foreground
    stopper: Stopper
    budget: budget.StopBudget
    container_env: ContainerEnvironment

    def fire(self, trigger: str, cause: str = "") -> None: ...


class ScriptSteps:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.timeout = 0.0  # the running shutdown script's time-out (what the stop budget gave it)

    def environ(self) -> dict:
        return self.engine.environ

    def startup_scripts(self) -> None:
        engine = self.engine
        # my_init's order: /etc/container_environment first, so that everything after
        # (the start-up scripts, SRVNAME, SRVCFG, a custom init, the service) sees it.
        engine.environ = engine.container_env.start(engine.environ)
        timeout = engine.settings.startup_timeout
        engine.foreground.run_in_turn(foreground.startup_scripts(engine.settings, engine.system), timeout,
                                      self.environ, partial(self.startup_script_done, timeout),
                                      partial(engine.fire, "done"), "start-up script")

    def startup_script_done(self, timeout: float, path: str, status: int | None) -> bool:
        engine = self.engine
        # What a script wrote to /etc/container_environment reaches the next one and the services.
        engine.environ = engine.container_env.after_script(engine.environ)
        if status == 0:
            return True
        cause = foreground.startup_failure(path, status, timeout)
        log.error(f"{cause}: the start-up stops (exit {foreground.STARTUP_FAILED_STATUS})")
        engine.service.last_exit = foreground.STARTUP_FAILED_STATUS
        engine.fire("script_failed", cause)
        return False

    def env_resume(self) -> None:
        engine, timeout = self.engine, foreground.ENV_RESUME_TIMEOUT
        engine.foreground.run_in_turn(foreground.env_resume_scripts(engine.target.directory, engine.system), timeout,
                                      self.environ, partial(carry_on, timeout), partial(engine.fire, "done"))

    def pre_shutdown(self) -> None:
        engine = self.engine
        # A script still running (start-up, EnvResume, check) is cut short: its session gets
        # SIGTERM now (teardown kills what is left), and its exit must not start the next one.
        # As my_init does, the script gets one SIGTERM and the stop grace to finish (what its
        # handler starts included) before the shutdown scripts run and anything is swept.
        script = engine.foreground.interrupt()
        run_scripts: Callable[[], None] = partial(self.run_shutdown_scripts, engine.settings.pre_shutdown_dir)
        if script:
            def scripts_after_it() -> None:
                if script.output:  # read what it wrote before its end, then close the pipes
                    script.output.close()
                run_scripts()

            engine.stopper.stop_group(Group(script.pid), signal.SIGTERM, engine.settings.stop_grace,
                                      scripts_after_it, f"{script.name}'s session")
            return
        run_scripts()

    def post_shutdown(self) -> None:
        self.run_shutdown_scripts(self.engine.settings.post_shutdown_dir)

    def shutdown_scripts(self) -> bool:
        """Are there scripts for pre_shutdown or post_shutdown to run?"""
        settings, system = self.engine.settings, self.engine.system
        return bool(foreground.shutdown_scripts(settings.pre_shutdown_dir, settings, system)
                    or foreground.shutdown_scripts(settings.post_shutdown_dir, settings, system))

    def run_shutdown_scripts(self, directory: str) -> None:
        engine = self.engine
        paths = foreground.shutdown_scripts(directory, engine.settings, engine.system)
        grace = engine.settings.stop_grace
        cause = f"{len(paths)} script(s) of {directory} run" if paths else f"no script in {directory}"
        engine.foreground.run_in_turn(paths, partial(self.shutdown_timeout, grace), self.environ,
                                      self.shutdown_script_done, lambda: engine.fire("done", cause), "shutdown script")

    def shutdown_timeout(self, grace: float) -> float:
        """A shutdown script's time-out: its grace, cut to what the stop budget leaves; kept
        for its end (other stops, a daemon's, ask the budget meanwhile)."""
        self.timeout = self.engine.budget.grace(grace, False)
        return self.timeout

    def shutdown_script_done(self, path: str, status: int | None) -> bool:
        """A shutdown script's end: reported, never fatal; a kill noted in the stop's time line."""
        if status is None:
            self.engine.budget.note(f"{foreground.name(path)} killed after {self.timeout:.1f}s")
        return carry_on(self.timeout, path, status)

    def check_graces(self, daemons: int, finish_scripts: int) -> None:
        """At start-up, once: do the stop path's graces fit Docker's 10 s (budget.check_graces)?"""
        settings, system = self.engine.settings, self.engine.system
        budget.check_graces(settings, len(foreground.shutdown_scripts(settings.pre_shutdown_dir, settings, system)),
                            daemons, finish_scripts,
                            len(foreground.shutdown_scripts(settings.post_shutdown_dir, settings, system)))
