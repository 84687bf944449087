"""Step start: what to run, and in which of the three modes.

workwatch selects the mode: not a non-negative integer → non-daemon (the service's
exit is fsm-init's exit); 0 → daemon (restart when it exits); N > 0 → status-check
(PeriodicST-* every N seconds decide).
"""

import errno
import os
import shlex
import sys

from fsm_init.core import log
from fsm_init.core.records import NamedTuple
from fsm_init.core.system import System, which
from fsm_init.core.table import DAEMON, NON_DAEMON, STATUS_CHECK

DO_NOTHING = "DoNothing"
DO_NOTHING_SECONDS = "600"


class Mode(NamedTuple):
    kind: str
    period: int | None  # seconds between check cycles, status-check mode only


class Command(NamedTuple):
    argv: list[str]
    executable: str | None  # what to execute when it differs from argv[0] (DoNothing)
    note: str  # why the command differs from what was asked for, or ""


def mode(config: dict) -> Mode:
    watch = config["workwatch"]
    if watch is None:
        return Mode(NON_DAEMON, None)
    return Mode(DAEMON, None) if watch == 0 else Mode(STATUS_CHECK, watch)


def check_timeout(config: dict, period: int) -> int:
    return config["worktimeout"] or period


def has_command(config: dict, command_line: list[str] | None) -> bool:
    return bool(command_line) or config["workstart"] is not None


def command(config: dict, command_line: list[str] | None, directory: str | None, system: System) -> Command:
    """The argv to start.  A command line is run as given (a failure to execute it is
    the container's exit status, as with tini); a workstart that cannot be executed
    becomes ``DoNothing 600`` so the container stays up for debugging."""
    if command_line:
        return Command(list(command_line), None, "")
    workstart = config["workstart"]
    if isinstance(workstart, list):
        argv = list(workstart)
    else:
        try:
            argv = shlex.split(workstart)
        except ValueError as e:
            return _do_nothing([], f"workstart {workstart!r} cannot be split ({e})")
        if not argv:
            return _do_nothing([], f"workstart {workstart!r} is empty")
    if argv[0] == DO_NOTHING:
        return _do_nothing(argv[1:], "")
    if not _executable(argv[0], directory, system):
        return _do_nothing([], f"the service {argv[0]!r} is not an executable file")
    return Command(argv, None, "")


def as_user(argv: list[str], workuser: str | None, executable: str | None = None) -> list[str]:
    """argv run through setuser as workuser ("user" or "user:group"); argv itself without one.

    Pure: the user is looked up by setuser in the child (and by ``workuser_problem``
    before the service starts).  ``executable`` is what to exec when it differs from
    argv[0] (DoNothing): setuser execs it, so the caller spawns the result as it is.
    ``-P`` keeps the service's directory (the child's cwd) off sys.path: setuser runs
    as root until it switches, and must not import a module the workuser could plant.
    """
    if not workuser:
        return list(argv)
    user, group = split_workuser(workuser)
    prefix = [sys.executable, "-P", "-m", "fsm_init.core.setuser"]
    if group is not None:
        prefix += ["--group", group]
    if executable:
        prefix += ["--executable", executable]
    return prefix + [user, "--"] + list(argv)


def split_workuser(workuser: str) -> tuple[str, str | None]:
    """"user[:group]" as (user, group or None)."""
    user, colon, group = workuser.partition(":")
    return user, (group if colon else None)


def workuser_problem(workuser: str | None) -> str:
    """Why the service cannot run as workuser (an unknown user or group), or ""."""
    if not workuser:
        return ""
    from fsm_init.core import setuser

    try:
        setuser.resolve(*split_workuser(workuser))
    except setuser.Failure as e:
        return str(e)
    return ""


def program_path(program: str, directory: str | None) -> str | None:
    """The file that running program executes (a relative path from directory), or None."""
    if "/" in program:
        return os.path.join(directory or ".", program)
    return which(program)


def do_nothing() -> Command:
    return _do_nothing([], "")


def shown(argv: list[str]) -> str:
    """argv for a log line: space-separated, each argument escaped by log.escape (a newline
    in a workstart argument must not forge a line of fsm-init's log)."""
    return " ".join(log.escape(arg) for arg in argv)


def _executable(program: str, directory: str | None, system: System) -> bool:
    if "/" in program:
        return system.is_executable(os.path.join(directory or ".", program))
    return which(program) is not None


def exec_hint(program: str, error: OSError, system: System) -> str:
    """Why the kernel said ENOENT for a file that is there: its #! interpreter is not."""
    if error.errno != errno.ENOENT:
        return ""
    head = (system.read_bytes(program) or b"")[:256]
    if not head.startswith(b"#!"):
        return ""
    line = head[2:].split(b"\n", 1)[0]
    if line.endswith(b"\r"):
        return "; its #! line ends in a carriage return (Windows line endings)"
    interpreter = line.split()[0].decode("utf-8", "replace") if line.split() else ""
    return f"; its #! interpreter {interpreter!r} is not there" if interpreter else ""


def _do_nothing(args: list[str], why: str) -> Command:
    """imginit's DoNothing is sleep under another name; keep the name so ps shows it."""
    note = f"{why}; running \"{DO_NOTHING} {DO_NOTHING_SECONDS}\" instead" if why else ""
    return Command([DO_NOTHING] + (args or [DO_NOTHING_SECONDS]), which("sleep") or "/bin/sleep", note)


def count_text(run_count: int, mode_: Mode, config: dict, cycle: int = 0) -> str:
    """./service.run.count in imginit's format."""
    if mode_.kind == NON_DAEMON:
        line = "None-Daemoned"
    elif mode_.kind == DAEMON:
        line = f"With-Daemoned( Delay: {config['workintvl']} )"
    else:
        line = f"Status-Monitored( Delay: {config['workintvl']}, Periodic: {mode_.period}, MCount: {cycle} )"
    return f"RestartCount: {run_count}\n{line}\n"


def idle_count_text(run_count: int, seconds: float) -> str:
    return f"RestartCount: {run_count}\nInternal-Delay( {seconds:g} )\n"
