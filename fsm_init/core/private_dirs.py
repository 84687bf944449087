"""Whether a directory is one user's own: the run directory's rule (docs/security.md).

Used by ``System.private_dir`` (fsm-init choosing its run directory) and by
``settings.locate_run_dir`` (srvctl finding it).  A module of its own, standard library
only: srvctl's probes use it, and System's imports (``signal``, with ``enum``) would
double a probe's own time (docs/benchmark.md).
"""

import os
import stat


def private_problem(path: str, uid: int) -> str:
    """"" when path is a real directory that uid owns and only uid may use; otherwise why not."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return e.strerror or str(e)
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not {uid}"
    if st.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(st.st_mode):04o}, not 0700"
    return ""
