"""``fsm-init``: run the engine, or validate a config.

Parsed by hand: argparse would cost PID 1 start-up time for four options.
"""

import json
import os
import sys

from fsm_init import __version__
from fsm_init.core import log

USAGE = """\
usage: fsm-init [--quiet] [--skip-startup-files] [--skip-runit] [--no-kill-all-on-exit] [--] [CMD ARGS...]
       fsm-init validate [--json] [FILE|-]
       fsm-init graph [--format mermaid|dot|svg|png] [-o FILE] [--live]
       fsm-init pppoe detect
       fsm-init status [--json] [--once] [--interval S]
       fsm-init --version | --help

Runs as the container's PID 1: resolves /srv/$SRVNAME, runs its init steps and
supervises its service (see the README).  CMD replaces the config's workstart;
with CMD and no $SRVNAME no service directory is used: CMD runs as under tini.

  --quiet      only warnings and errors from fsm-init itself
  --skip-startup-files  run neither /etc/my_init.d, /etc/rc.local nor the
               pre/post-shutdown scripts (my_init's option)
  --skip-runit do not start the /etc/service daemons (my_init's option)
  --no-kill-all-on-exit  leave leftover processes alone on exit (as PID 1, the
               kernel kills them when fsm-init exits)
  validate     print the effective config of FILE (default ./workcfg.json,
               - for stdin) with secrets masked, and every problem found;
               exit 1 when there is any problem
  pppoe detect the interfaces where a PPPoE access concentrator answers,
               one "INTERFACE<tab>NAME" line each; exit 1 when none does

environment: SRVNAME SRVCFG FSM_INIT_SRV_ROOT FSM_INIT_STATE_DIR FSM_INIT_RUN_DIR
             FSM_INIT_STOP_GRACE (KILL_PROCESS_TIMEOUT) FSM_INIT_LEFTOVER_GRACE
             (KILL_ALL_PROCESSES_TIMEOUT) FSM_INIT_IDLE_WAIT FSM_INIT_HANDOVER_AFTER
             FSM_INIT_STOP_BUDGET (the whole stop path's deadline)
             FSM_INIT_EXEC_SERVICE FSM_INIT_STARTUP_TIMEOUT ENV_INIT_DIRECTORY
             FSM_INIT_PRE_SHUTDOWN_DIRECTORY FSM_INIT_POST_SHUTDOWN_DIRECTORY
             FSM_INIT_SERVICE_DIRECTORY FSM_INIT_SYSLOG_SOCKET
             FSM_INIT_CONTAINER_ENVIRONMENT FSM_INIT_LOG_FORMAT FSM_INIT_HTTP (docs/environment.md
             explains each; graph and status have their own --help)
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["--help"], ["-h"]):
        print(USAGE, end="")
        return 0
    if args[:1] == ["--version"]:
        print(f"fsm-init {__version__}")
        return 0
    if args[:1] == ["validate"]:
        return _printing(lambda: validate(args[1:]))
    if args[:2] == ["pppoe", "detect"]:
        from fsm_init.network import dial

        return _printing(lambda: dial.main(args[1:]))
    if args[:1] == ["graph"]:
        from fsm_init.client import graph

        return _printing(lambda: graph.main(args[1:]))
    if args[:1] == ["status"]:
        from fsm_init.client import status_view

        return _printing(lambda: status_view.main(args[1:]))
    return run(args)


def _printing(command) -> int:
    """A subcommand that prints: a reader that goes away (``| head``) ends it quietly, as
    it does cat, instead of with a traceback (twice: again when Python flushes stdout)."""
    try:
        return command()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def run(args: list[str]) -> int:
    import signal

    from fsm_init.core.loop import CAUGHT

    # Until the event loop's handlers are installed, a signal with its default action
    # is dropped by the kernel for PID 1; blocked, it stays pending and is handled.
    signal.pthread_sigmask(signal.SIG_BLOCK, CAUGHT)
    from fsm_init.core.settings import Settings, settle_dirs

    settings = Settings()
    command = None
    while args:
        arg = args.pop(0)
        if arg == "--":
            command = args
            break
        if arg in MY_INIT_OPTIONS:
            setattr(settings, *MY_INIT_OPTIONS[arg])
        elif arg == "--quiet":
            log.set_quiet(True)
        elif arg == "--enable-insecure-key":
            sys.stderr.write(f"fsm-init: {arg} is my_init's publicly known SSH key: not supported; "
                             "use sshsrv.authkeys in workcfg.json (see docs/network.md)\n")
            return 2
        elif arg.startswith("-"):
            sys.stderr.write(f"fsm-init: unknown option {arg}\n{USAGE}")
            return 2
        else:
            command = [arg] + args
            break
    # PID 1's own writes to stdout and stderr never block, whatever the log reader does.
    log.go_nonblocking()
    from fsm_init.core.reaper import exit_now
    from fsm_init.core.system import System
    from fsm_init.engine import Engine

    system = System()
    undo_locale_coercion(system, os.environ)
    for level, note in settle_dirs(settings, system):
        getattr(log, level)(note)
    if settings.stop_budget_error:
        log.error(settings.stop_budget_error)
    environ = dict(os.environ)
    if environ.get("SRVCFG"):
        from fsm_init.config import workcfg as config

        # fsm-init's own environment is what every helper command inherits (chpasswd,
        # dropbearkey, iptables-restore, pppd's probes): the passwords masked there too.
        # The engine keeps $SRVCFG as given, for load_config and a custom init.sh.
        os.environ["SRVCFG"] = config.masked_text(environ["SRVCFG"])
    exit_now(Engine(system, settings, environ, command or None).run())
    return 0  # not reached: exit_now leaves the process (the reaper imports no typing for NoReturn)


def undo_locale_coercion(system, environ) -> None:
    """Python's locale coercion (PEP 538) sets LC_CTYPE=C.UTF-8 in its own environment when
    the container's locale is C or unset; the service, the scripts and
    /etc/container_environment must get the environment the container was started with.
    /proc/self/environ still holds the one given to the exec."""
    if "LC_CTYPE" not in environ:
        return
    given = system.read_bytes("/proc/self/environ")
    if given is not None and not any(v.startswith(b"LC_CTYPE=") for v in given.split(b"\0")):
        del environ["LC_CTYPE"]


# my_init's options: option -> the Settings attribute and its value.
MY_INIT_OPTIONS = {
    "--skip-startup-files": ("skip_startup_files", True),
    "--skip-runit": ("skip_runit", True),
    "--no-kill-all-on-exit": ("kill_all_on_exit", False),
}


def validate(args: list[str]) -> int:
    as_json = "--json" in args
    paths = [a for a in args if a != "--json"]
    if len(paths) > 1 or any(p.startswith("-") and p != "-" for p in paths):
        sys.stderr.write(USAGE)
        return 2
    path = paths[0] if paths else "workcfg.json"
    from fsm_init.config import schema as config_schema
    from fsm_init.config import workcfg as config

    try:
        raw = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()
    except OSError as e:
        return _report_validation(as_json, path, None, [], f"cannot read {path}: {e.strerror}")
    document, why = config.parse_document(raw)
    if document is None:
        return _report_validation(as_json, path, None, [], f"{path} is {why}")
    effective, problems = config_schema.validate(document)
    return _report_validation(as_json, path, effective, problems, "", sorted(set(document) - set(config.defaults())))


def _report_validation(as_json, path, effective, problems, error, kept=()) -> int:
    from fsm_init.config import workcfg as config

    failed = bool(error or problems)
    if as_json:
        print(json.dumps({"ok": not failed, "file": path, "error": error or None,
                          "config": config.masked(effective) if effective else None,
                          "problems": [p.as_dict() for p in problems], "kept": list(kept)}, indent=2))
        return int(failed)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(config.masked(effective), indent=2))
    from fsm_init.core.log import escape

    for key in kept:  # a key is text from the file: escaped like every name shown
        print(f"kept: unknown key '{escape(key)}' (passed to the service unchanged)", file=sys.stderr)
    for problem in problems:
        print(f"problem: {problem.describe()}", file=sys.stderr)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
