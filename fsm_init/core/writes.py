"""Files PID 1 writes but can live without: the journal, status.json, service.run.count,
workcfg.json (from $SRVCFG).

A full disk (ENOSPC) or a read-only root (EROFS) must not fill the container log with
the same warning every check cycle, nor stop supervision: a failed write is reported
once per file, the file is tried again at its next write, and the first success after
failures is reported once.  What is failing shows in ``srvctl status`` (``write_problems``);
answers come from memory, not from these files.  Standard library only (the thin reaper
uses it through the journal).
"""

import time

from fsm_init.core import log

# A file that fails again soon after it recovered (a nearly full tmpfs where a short
# line still fits in the last page) is not announced again within this many seconds.
RELAPSE_QUIET = 60.0


class FileWrites:
    def __init__(self, clock=time.monotonic, wall=time.time) -> None:
        self.clock, self.wall = clock, wall
        self.failing: dict[str, dict] = {}  # path -> {"error", "since" (wall), "failed" (count), "announced"}
        self.announced: dict[str, tuple] = {}  # path -> (when (monotonic), reason) last announced

    def attempt(self, path: str, write, consequence: str = "") -> bool:
        """write(); False when it failed (reported once per episode)."""
        try:
            write()
        except OSError as e:
            self.failed(path, e, consequence)
            return False
        self.succeeded(path)
        return True

    def failed(self, path: str, error: OSError, consequence: str = "") -> None:
        reason = error.strerror or str(error)
        problem = self.failing.get(path)
        if problem is None:
            problem = self.failing[path] = {"error": reason, "since": round(self.wall(), 3), "failed": 0,
                                            "announced": False}
            last = self.announced.get(path)
            quiet = last is not None and last[1] == reason and self.clock() - last[0] < RELAPSE_QUIET
        else:
            quiet = problem["error"] == reason  # said already; a new reason (ENOSPC, then EROFS) is news
        problem["failed"] += 1
        problem["error"] = reason
        if quiet:
            return
        problem["announced"] = True
        self.announced[path] = (self.clock(), reason)
        then = f" ({consequence})" if consequence else ""
        log.warn(f"cannot write {path}: {reason}{then}; supervision goes on from memory, "
                 "tried again at each write, said once (srvctl status shows it)")

    def succeeded(self, path: str) -> None:
        problem = self.failing.pop(path, None)
        if problem is not None and problem["announced"]:
            log.info(f"{path} written again after {problem['failed']} failed write(s)")

    def status(self) -> dict[str, str]:
        """For srvctl status: path -> what fails, since when, how often."""
        return {path: f"{p['error']} since {log.clock(p['since'])} "
                      f"({p['failed']} failed write(s))" for path, p in self.failing.items()}
