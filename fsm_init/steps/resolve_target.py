"""Step resolve_target: which /srv directory this container serves.

$SRVNAME is honoured on the container's first start only; the name is then
remembered under $FSM_INIT_STATE_DIR (the container's writable layer), so a
``docker restart`` serves the same directory.  A name that cannot be used is
not remembered: the next start tries it again.
"""

import os

from fsm_init.core import log
from fsm_init.core.records import NamedTuple
from fsm_init.core.settings import Settings
from fsm_init.core.system import System

DEFAULT_NAME = "imginit"


class Target(NamedTuple):
    name: str | None  # None: no service directory, built-in defaults
    directory: str | None
    first_start: bool
    fallback: bool = False  # $SRVNAME could not be used: imginit serves this start only
    default: bool = False  # no $SRVNAME: imginit serves by default (its config is not put in $SRVCFG)


class Error(str):
    """A note that is an error line (a misspelled $SRVNAME)."""


def _unusable(name: str) -> str:
    if "/" in name or name in (".", ".."):
        return "is not a directory name"
    return ""


def say(notes: list[str]) -> None:
    """Step resolve_target's log lines: an Error as an error, the rest as information."""
    for note in notes:
        (log.error if isinstance(note, Error) else log.info)(note)


def resolve(settings: Settings, environ: dict, system: System, command: bool = False) -> tuple[Target, list[str]]:
    """The target and the log lines that explain the choice.  With a command line and
    no $SRVNAME (``docker run IMAGE CMD``) there is no target: the command runs as under
    tini, with the built-in defaults (no network step), and nothing is remembered."""
    marker = os.path.join(settings.state_dir, "target")
    remembered = (system.read_bytes(marker) or b"").decode("utf-8", "replace").strip()
    first_start = not remembered or bool(_unusable(remembered))
    if first_start and command and not environ.get("SRVNAME"):
        return Target(None, None, True), ["a command line and no $SRVNAME: no service directory, "
                                          "no network step (as under tini)"]
    name = (environ.get("SRVNAME") or DEFAULT_NAME) if first_start else remembered
    default = name == DEFAULT_NAME and not environ.get("SRVNAME")
    notes = []
    why = _unusable(name) or ("" if system.is_dir(os.path.join(settings.srv_root, name)) else "has no directory")
    if not why:
        if first_start:
            notes.extend(_remember(system, settings.state_dir, marker, name))
        notes.append(f"target service {name} in {os.path.join(settings.srv_root, name)}"
                     f" ({'first start' if first_start else 'restart: $SRVNAME and $SRVCFG are not read again'})")
        return Target(name, os.path.join(settings.srv_root, name), first_start, default=default), notes
    fallback = os.path.join(settings.srv_root, DEFAULT_NAME)
    if name != DEFAULT_NAME:
        existing = [d for d in system.list_dir(settings.srv_root) if system.is_dir(os.path.join(settings.srv_root, d))]
        notes.append(Error(f"SRVNAME {name!r} {why} under {settings.srv_root} (service directories: "
                           f"{', '.join(map(repr, existing)) or 'none'}): falling back for this start "
                           "(not remembered)"))
    if name != DEFAULT_NAME and system.is_dir(fallback):
        notes.append(f"target service {DEFAULT_NAME} in {fallback}")
        return Target(DEFAULT_NAME, fallback, first_start, fallback=True), notes
    notes.append(f"no service directory {fallback}: running with built-in defaults")
    return Target(None, None, first_start), notes


def _remember(system: System, state_dir: str, marker: str, name: str) -> list[str]:
    try:
        system.makedirs(state_dir, 0o755)
        system.write_atomic(marker, name.encode() + b"\n", 0o644)
    except OSError as e:
        return [f"cannot remember the target in {marker} ({e.strerror}): the next start reads $SRVNAME again"]
    return []
