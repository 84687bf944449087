"""Which files fsm-init may run, or take its own configuration from (sshd's StrictModes).

fsm-init runs as root (or as the user a container was started as): a file it executes
with its own privileges (init.sh, EnvResume-*, a start-up, shutdown or check script,
an /etc/service run or finish, the service's program when there is no workuser) or
reads its configuration from (workcfg.json) must be one that no other user can change.
The file and every directory above it, up to /, must be

* owned by root or by the uid fsm-init runs as, and
* not writable by group or others; a directory that is (/tmp) is accepted only with the
  sticky bit, where nobody but an entry's owner may rename or remove that entry (and
  the entry below it must itself pass: owned by root or fsm-init's uid).

Symbolic links are followed: both the path as written and the one it resolves to are
checked.  A refusal is logged once per file and problem, with the fix.
"""

import posixpath
import stat

from fsm_init.core import log
from fsm_init.core.system import System

_reported: set[str] = set()


def problem(path: str, system: System) -> str:
    """Why another user could change path (the first unsafe component and the fix), or ""."""
    me = system.euid()
    owners = "root" if me == 0 else f"root or uid {me}"
    absolute = posixpath.abspath(path)
    seen = set()
    for start in (absolute, system.realpath(absolute)):
        component, missing = start, ""
        while component not in seen:
            seen.add(component)
            found = system.owner_mode(component)
            if found is not None:
                uid, mode = found
                if not stat.S_ISLNK(mode):
                    if uid not in (0, me):
                        fix = f"chown root {component}" if me == 0 else f"chown root {component} (or chown {me})"
                        return f"{component} is owned by uid {uid}, not {owners} (fix: {fix})"
                    # The sticky bit protects an entry that is there; a missing one anybody
                    # who may write the directory could create (between the check and the use).
                    if mode & 0o022 and not (stat.S_ISDIR(mode) and mode & stat.S_ISVTX and not missing):
                        who = "group and others" if mode & 0o022 == 0o022 else "group" if mode & 0o020 else "others"
                        created = f", and {missing} is not there: another user could create it" if missing else ""
                        return (f"{component} is writable by its {who} (mode {stat.S_IMODE(mode):04o}{created}; "
                                f"fix: chmod go-w {component})")
                missing = ""
            else:
                # Not there (yet): the directories above must still be safe, or another
                # user could create it between this check and the read or exec.
                missing = component
            if component == "/":
                break
            component = posixpath.dirname(component)
    return ""


def trusted(path: str, system: System, what: str) -> bool:
    """Whether fsm-init may use path for what ("run", "read its configuration from");
    a refusal is logged once (an error naming the path and the fix)."""
    why = problem(path, system)
    if not why:
        return True
    message = f"refusing to {what} {path}: another user could change it: {why}"
    if message not in _reported:
        _reported.add(message)
        log.error(message)
    return False


def forget() -> None:
    """Tests: report every refusal again."""
    _reported.clear()
