"""Step start's work: start the service (or, opted in, exec it in fsm-init's place).

``start.py`` says what to run and in which mode; this module runs it: the workuser and
trust checks, the spawn in a session of its own (the terminal's foreground process
group in non-daemon mode), the exec of FSM_INIT_EXEC_SERVICE, and the failures as the
trigger ``spawn_failed`` with the status the service would have had.
"""

from collections.abc import Callable
from functools import partial

from fsm_init.config import workcfg as config
from fsm_init.core import log, trust
from fsm_init.core.kill import Group
from fsm_init.core.readiness import Notifier
from fsm_init.core.repeats import Repeats
from fsm_init.core.settings import Settings
from fsm_init.core.system import System, spawn_error_code, which
from fsm_init.steps import start
from fsm_init.steps.resolve_target import Target
from fsm_init.steps.service import Service
from fsm_init.steps.start import Command

Outcome = tuple[str, str]  # (trigger, cause)


def service_env(environ: dict, srvcfg: str, config_: dict, target: Target) -> dict:
    """The environment of the service and its check scripts."""
    env = dict(environ)
    # The passwords are fsm-init's (root's SSH login, the dial-up): a service, maybe
    # running as a workuser, and its check scripts get them masked.  A service named
    # by $SRVNAME (or given $SRVCFG) reads its config there; a command line run as
    # under tini, or imginit serving by default or as a fall-back, gets no $SRVCFG that
    # the container was not started with.
    if srvcfg or (target.directory and not target.default and not target.fallback):
        env["SRVCFG"] = config.dumps_compact(config.masked(config_))
    return env


class Launch:
    def __init__(self, system: System, settings: Settings, service: Service, repeats: Repeats,
                 command_line: list[str] | None, caller_dir: str, keeps_supervising: Callable[[], bool],
                 before_exec: Callable[[], None], notifier: Notifier) -> None:
        self.system, self.settings, self.service, self.repeats = system, settings, service, repeats
        # The command given to fsm-init, run instead of workstart.  It runs where fsm-init
        # was started (the image's WORKDIR), as under tini; workstart in the target directory.
        self.command_line, self.caller_dir = command_line, caller_dir
        self.keeps_supervising = keeps_supervising
        self.before_exec = before_exec  # fsm-init's listening sockets are closed before an exec
        self.notifier = notifier  # workready notify / fd:N: the socket or pipe the service is given

    def refused(self, status: int, cause: str) -> Outcome:
        self.service.last_exit = status
        log.error(cause)
        return "spawn_failed", cause

    def start(self, config_: dict, mode: start.Mode, directory: str | None, env: dict) -> Outcome:
        """Start an instance: ("spawned", cause) once it runs, else ("spawn_failed", cause)."""
        cmd = start.command(config_, self.command_line, directory, self.system)
        if cmd.note:
            log.warn(cmd.note)
        workuser = config_["workuser"]
        problem = start.workuser_problem(workuser)
        if problem:
            return self.refused(126, f"cannot start the service as workuser {workuser!r}: {problem} (status 126)")
        if not workuser and cmd.executable is None:
            program = start.program_path(cmd.argv[0], self.caller_dir if self.command_line else directory)
            if program and not trust.trusted(program, self.system, "run"):
                if self.command_line:
                    return self.refused(126, f"cannot execute {start.shown([cmd.argv[0]])}: refused, another user "
                                             "could change it (status 126)")
                cmd = start.do_nothing()  # as a workstart that is not executable: stay up for debugging
        as_whom = f" as {workuser} (setuser, no_new_privs)" if workuser else ""
        log.info(f"starting the service (run {self.service.run_count}, {mode.kind} mode){as_whom}: "
                 f"{start.shown(cmd.argv)}")
        if workuser:
            cmd = Command(start.as_user(cmd.argv, workuser, cmd.executable), None, cmd.note)
        notify_env, fds = self.notifier.prepare(config_)
        env = dict(env, **notify_env)
        non_daemon = mode.kind == start.NON_DAEMON
        tty = self.system.terminal() if non_daemon else None
        try:
            if non_daemon and self.settings.exec_service:
                if self.keeps_supervising():
                    log.warn("FSM_INIT_EXEC_SERVICE ignored: the /etc/service daemons or the shutdown scripts "
                             "need fsm-init to stay PID 1")
                else:
                    self.exec_service(cmd, env)
            pid = self.system.spawn(cmd.argv, env, cmd.executable, tty,
                                    cwd=self.caller_dir if self.command_line else None, fds=fds)
        except OSError as e:
            self.notifier.end()
            self.service.last_exit = spawn_error_code(e)
            hint = start.exec_hint(cmd.executable or cmd.argv[0], e, self.system)
            cause = f"cannot execute {start.shown([cmd.argv[0]])}: {e.strerror}{hint} (status {self.service.last_exit})"
            # Retried with the back-off; said once while it fails the same way (EAGAIN under
            # a pids limit can last), the journal has every attempt.
            self.repeats.failed("service", e.strerror, partial(
                log.error, cause + ("" if non_daemon else "; retried with the back-off, said once while it fails")))
            return "spawn_failed", cause
        failed = self.repeats.succeeded("service")
        if failed:
            log.info(f"the service started (pid {pid}) after {failed} failed attempt(s)")
        self.service.started(pid, Group(pid, by_session=tty is None))
        self.notifier.started(pid, Group(pid, by_session=tty is None))
        # The pid in the journal: each start the service records can be matched to its line.
        return "spawned", f"service started (pid {pid}, run {self.service.run_count})"

    def exec_service(self, cmd: Command, env: dict) -> None:
        """Opt-in imginit behaviour: the service replaces fsm-init as PID 1."""
        log.info("FSM_INIT_EXEC_SERVICE: the service replaces fsm-init (no reaping, no graceful stop)")
        self.before_exec()
        if self.command_line:
            self.system.chdir(self.caller_dir)
        self.system.execve(cmd.argv, env, cmd.executable or which(cmd.argv[0]) or cmd.argv[0])
