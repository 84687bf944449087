"""fsm-init's own log lines: one line each on stderr, prefixed with the current state.

Written without the logging package: the thin reaper must stay within the
standard library's cheapest modules, and a PID 1 log needs no handlers.
"""

import os
import sys

_state = lambda: "boot"  # noqa: E731  (a callable: the engine's state is read at each line)
_quiet = False


def set_state(state) -> None:
    """A state name, or a callable returning the current one."""
    global _state
    _state = state if callable(state) else (lambda: state)


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


_json = os.environ.get("FSM_INIT_LOG_FORMAT", "").lower() == "json"


def _emit(level: str, message: str) -> None:
    if _json:
        import json
        import time

        line = json.dumps({"time": round(time.time(), 3), "program": "fsm-init", "state": _state(),
                           "level": level.rstrip(": ") or "info", "message": message}) + "\n"
    else:
        line = f"fsm-init[{_state()}] {level}{message}\n"
    try:
        # One write per line so that lines from fsm-init and its children never interleave mid-line.
        os.write(sys.stderr.fileno(), line.encode("utf-8", "replace"))
    except OSError:
        pass


def info(message: str) -> None:
    if not _quiet:
        _emit("", message)


def warn(message: str) -> None:
    _emit("warning: ", message)


def error(message: str) -> None:
    _emit("error: ", message)


def is_quiet() -> bool:
    return _quiet
