"""The container environment, as phusion's my_init keeps it.

``/etc/container_environment/NAME`` files are variables: imported at start (a
value's one trailing newline stripped, variables already set not overridden), then
the whole environment is dumped back to the directory, to
``/etc/container_environment.sh`` (``export NAME='value'`` lines a shell can
source) and to ``/etc/container_environment.json``, group ``docker_env``, mode 0640
(the directory 0750).  After each start-up script the directory is read again, so
what a script writes (or deletes) there reaches the services.

Unlike my_init, nothing here raises: a container running as a non-root user, or a
read-only /etc, gets what can be done and one warning naming what was skipped.
Every file operation goes through the ``System`` boundary.
"""

import json
import os
import re

from fsm_init.core import log, trust
from fsm_init.core.records import NamedTuple

DIRECTORY = "/etc/container_environment"
SH_PATH = "/etc/container_environment.sh"
JSON_PATH = "/etc/container_environment.json"
GROUP = "docker_env"
FILE_MODE = 0o640
DIR_MODE = 0o750
# Never dumped (my_init's list): they describe the user fsm-init runs as, and a
# service run as another user must not inherit root's HOME through the directory.
NOT_DUMPED = frozenset({"HOME", "USER", "GROUP", "UID", "GID", "SHELL"})
# The environment variable that moves the directory (the .sh and .json follow it).
DIRECTORY_VARIABLE = "FSM_INIT_CONTAINER_ENVIRONMENT"

# compiled by re's cache at the first use, not at every start of PID 1
_INVALID_NAME = r"[=\x00-\x20\x7f/]"
_NOT_SHELL = r"[^A-Za-z0-9_]"


def valid_name(name: str) -> bool:
    """A name the environment and the directory can both hold."""
    return bool(name) and not name.startswith(".") and not re.search(_INVALID_NAME, name)


def shell_name(name: str) -> str | None:
    """The name in the .sh file: my_init's sanitising, every character a shell name cannot
    hold replaced by ``_`` (``DASH-NAME`` → ``DASH_NAME``, ``my.prop.x`` → ``my_prop_x``;
    my_init's ``re.sub(r"\\W", "_", name)``, except that a non-ASCII letter, which no shell
    accepts in a name, is replaced too).  None for a name that starts with a digit: my_init
    writes it as it is, and the shell sourcing the file stops there."""
    clean = re.sub(_NOT_SHELL, "_", name)
    return clean if clean and not clean[0].isdigit() else None


def shell_quote(value: str) -> str:
    """Single quotes, each ' as '\\'' : the one quoting in which no character is special."""
    return "'" + value.replace("'", "'\\''") + "'"


def read_directory(system, directory: str) -> dict[str, str] | None:
    """NAME -> value for each file in directory; None when it is not a directory or
    cannot be listed.

    Dot files are skipped silently (editor back-ups, an interrupted atomic write's
    temporary file); other names no environment can hold, and unreadable files,
    with one warning.
    """
    if not system.is_dir(directory) or not system.can_list(directory):
        return None
    found: dict[str, str] = {}
    invalid, unreadable = [], []
    for name in system.list_dir(directory):
        if name.startswith("."):
            continue
        path = os.path.join(directory, name)
        if not valid_name(name):
            invalid.append(repr(name))
            continue
        if system.is_dir(path):
            continue
        data = system.read_bytes(path)
        if data is None:
            unreadable.append(name)
            continue
        if data.endswith(b"\n"):
            data = data[:-1]
        found[name] = os.fsdecode(data.replace(b"\x00", b""))
    if invalid:
        log.warn(f"{directory}: skipped file names that are not variable names: {', '.join(invalid)}")
    if unreadable:
        log.warn(f"{directory}: cannot read {', '.join(unreadable)}; not imported")
    return found


def import_env(environ: dict, system, directory: str = DIRECTORY) -> dict:
    """environ plus the directory's variables; a variable already set keeps its value."""
    env = dict(environ)
    for name, value in (read_directory(system, directory) or {}).items():
        env.setdefault(name, value)
    return env


def _reload(environ: dict, found: dict | None, dumped) -> dict:
    """After a start-up script: the directory's variables (found) override environ, and a
    variable in ``dumped`` (known to be in the directory before the script ran) whose
    file the script deleted is unset.  Nothing else is dropped: unlike my_init, which
    clears the environment, a variable that could not be dumped (or HOME, never dumped)
    survives.  An unreadable directory (found None) leaves environ as it is."""
    if found is None:
        return dict(environ)
    env = {name: value for name, value in environ.items() if name not in dumped or name in found}
    env.update(found)
    return env


class Exported(NamedTuple):
    written: frozenset  # names written to the directory
    problems: list  # "path: reason", one per thing skipped


def _dumped(environ: dict) -> dict:
    return {name: environ[name] for name in sorted(environ) if name not in NOT_DUMPED}


def render_sh(environ: dict) -> bytes:
    lines = []
    for name, value in _dumped(environ).items():
        clean = shell_name(name)
        # A variable that has the sanitised name itself wins over the one renamed to it.
        if clean is not None and (clean == name or clean not in environ):
            lines.append(f"export {clean}={shell_quote(value)}\n")
    return os.fsencode("".join(lines))


def render_json(environ: dict) -> bytes:
    return (json.dumps(_dumped(environ), indent=None, sort_keys=True) + "\n").encode()


def export_env(environ: dict, system, directory: str = DIRECTORY, sh_path: str = SH_PATH,
               json_path: str = JSON_PATH, to_dir: bool = True, warn: bool = True) -> Exported:
    """Dump environ to the directory (one file per variable, when to_dir), the .sh and
    the .json; each file written atomically, group docker_env (when that group exists
    and fsm-init is root), mode 0640.  Nothing is written when the directory does not
    exist (an image that does not use it, as with my_init).  What cannot be written is
    skipped; with warn, one warning lists it all."""
    if not system.is_dir(directory):
        return Exported(frozenset(), [])
    root = system.euid() == 0
    gid = system.group_id(GROUP) if root else None
    problems: list[str] = []
    written: set[str] = set()

    def attempt(path: str, work) -> bool:
        try:
            work()
        except OSError as e:
            problems.append(f"{path} ({e.strerror or e})")
            return False
        return True

    if root:
        attempt(directory, lambda: system.set_mode(directory, DIR_MODE, gid))
    if to_dir:
        names = [name for name in _dumped(environ) if valid_name(name)]
        for index, name in enumerate(names):
            path = os.path.join(directory, name)
            data = os.fsencode(environ[name])
            if not attempt(path, lambda path=path, data=data: system.write_atomic(
                    path, data, FILE_MODE, durable=False, gid=gid)):
                # One failure is almost always all of them (EACCES, EROFS, ENOSPC).
                if len(names) > index + 1:
                    problems[-1] += f" and {len(names) - index - 1} more variables"
                break
            written.add(name)
    for path, data in ((sh_path, render_sh(environ)), (json_path, render_json(environ))):
        attempt(path, lambda path=path, data=data: system.write_atomic(path, data, FILE_MODE, durable=False, gid=gid))
    if warn and problems:
        who = "" if root else f" (running as uid {system.euid()})"
        log.warn(f"container environment: cannot write {'; '.join(problems)}{who}; skipped")
    return Exported(frozenset(written), problems)


class ContainerEnvironment:
    """The engine's handle: import and dump at start, reload after each start-up
    script, warning once per path that cannot be written."""

    def __init__(self, system, directory: str = DIRECTORY, sh_path: str | None = None,
                 json_path: str | None = None) -> None:
        self.system = system
        self.directory = directory.rstrip("/") or "/"
        self.sh_path = sh_path or self.directory + ".sh"
        self.json_path = json_path or self.directory + ".json"
        self.dumped: frozenset = frozenset()
        self.warned: set[str] = set()
        self.untrusted = False  # another user could change the directory: neither read nor written
        # The directory's variables as fsm-init last read or wrote them (None: no directory at
        # the start): `srvctl reload` takes what changed there since, and only that.
        self.seen: dict[str, str] | None = None

    @classmethod
    def from_environ(cls, system, environ: dict) -> "ContainerEnvironment":
        """$FSM_INIT_CONTAINER_ENVIRONMENT moves the directory, and the .sh and .json beside it."""
        return cls(system, environ.get(DIRECTORY_VARIABLE) or DIRECTORY)

    def start(self, environ: dict) -> dict:
        # Its variables reach every child of root (LD_PRELOAD, PATH): the directory must be
        # one no other user can change (README: Security model).
        self.untrusted = self.system.is_dir(self.directory) and \
            not trust.trusted(self.directory, self.system, "import the container environment from")
        if self.untrusted:
            return dict(environ)
        if self.system.is_dir(self.directory) and not self.system.can_list(self.directory):
            log.warn(f"container environment: cannot list {self.directory} (running as uid {self.system.euid()}); "
                     "its variables are not imported")
        found = read_directory(self.system, self.directory)
        env = dict(environ)
        for name, value in (found or {}).items():
            env.setdefault(name, value)
        written = self._export(env, to_dir=True)
        if found is not None:  # as a read gives it back: one trailing newline stripped
            self.seen = {**found, **{name: _as_read(env[name]) for name in written}}
        return env

    def after_script(self, environ: dict) -> dict:
        if self.untrusted:
            return dict(environ)
        found = read_directory(self.system, self.directory)
        env = _reload(environ, found, self.dumped)
        if found is not None:
            self.dumped = frozenset(found)
            self.seen = found
        self._export(env, to_dir=False)
        return env

    def reread(self, environ: dict) -> tuple[dict, dict | None, list[str], str]:
        """`srvctl reload`: the directory read again, writing nothing.  (the environment
        with what changed there since the last read or write taken: set, changed or
        unset; the directory's variables; the names changed; why it is not read, or "").
        The start's rule holds: a directory another user could change is not read."""
        if self.untrusted or self.seen is None:
            return environ, None, [], ""
        why = trust.problem(self.directory, self.system)
        if why:
            return environ, None, [], f"{self.directory} is not read, another user could change it: {why}"
        found = read_directory(self.system, self.directory)
        if found is None:
            return environ, None, [], ""
        seen = self.seen
        names = sorted(name for name in set(found) | set(seen) if found.get(name) != seen.get(name))
        env = {name: value for name, value in environ.items() if name not in names or name in found}
        env.update((name, found[name]) for name in names if name in found)
        return env, found, names, ""

    def accept(self, env: dict, found: dict) -> None:
        """A reload took found: the new baseline; the .sh and .json follow (as after a script)."""
        self.seen, self.dumped = found, frozenset(found)
        self._export(env, to_dir=False)

    def _export(self, env: dict, to_dir: bool) -> frozenset:
        result = export_env(env, self.system, self.directory, self.sh_path, self.json_path,
                            to_dir=to_dir, warn=False)
        if to_dir:
            self.dumped = result.written
        new = [p for p in result.problems if p.split(" (", 1)[0] not in self.warned]
        if new:
            self.warned.update(p.split(" (", 1)[0] for p in new)
            who = "" if self.system.euid() == 0 else f" (running as uid {self.system.euid()})"
            log.warn(f"container environment: cannot write {'; '.join(new)}{who}; skipped")
        return result.written


def _as_read(value: str) -> str:
    """A value as read_directory gives back what export_env wrote of it."""
    return value[:-1] if value.endswith("\n") else value
