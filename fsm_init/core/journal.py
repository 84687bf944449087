"""The transition journal and status.json in $FSM_INIT_RUN_DIR.

Every transition is appended as one JSON line to journal.jsonl (time, from, to,
trigger, guard results, cause, restart count); the file is rotated to
journal.jsonl.1 past MAX_BYTES, so it never grows without bound.  status.json,
beside it, is rewritten atomically after every transition, so a reader (``fsm-init
status``, a sidecar) never sees half a file.  Both are written once per chain of
transitions that one trigger sets off (``with journal:``): the chain's lines in one
append, status.json with its last state, since a rename over the old file costs about a
millisecond on ext4 or overlayfs (the boot path is a chain of a dozen transitions), and
on the stop path the service is signalled first.  Standard library only.
"""

import json
import os
from collections.abc import Callable

MAX_BYTES = 1 << 20
JOURNAL = "journal.jsonl"
STATUS = "status.json"


class Journal:
    def __init__(self, run_dir: str, system, writes=None) -> None:
        from fsm_init.core.writes import FileWrites

        self.run_dir, self.system = run_dir, system
        self.path = os.path.join(run_dir, JOURNAL)
        # A full or read-only run directory must never stop PID 1 from working: each
        # file's failure is said once, and each transition tries again.
        self.writes = writes or FileWrites(system.now, system.wall)
        self.held = 0  # > 0: a chain of transitions runs; the files wait for its end
        self.lines: list[bytes] = []
        self.pending: Callable[[], dict] | None = None

    def record(self, entry: dict, snapshot: Callable[[], dict]) -> None:
        """Append entry to the journal; snapshot makes status.json's content, called once,
        when the file is written (at once, or at the end of a held chain)."""
        self.lines.append(json.dumps(entry, ensure_ascii=True).encode() + b"\n")
        self.pending = snapshot
        if not self.held:
            self.flush()

    def __enter__(self) -> "Journal":
        """``with journal:`` holds the files for the block (blocks nest): the chain's journal
        lines go out in one append at its end and status.json once, with its last state;
        on the stop path the service is signalled before either file is touched."""
        self.held += 1
        return self

    def __exit__(self, *_exc) -> None:
        self.held -= 1
        if not self.held:
            self.flush()

    def flush(self) -> None:
        """Write the journal lines and the last recorded status now (also before an exec
        replaces this process)."""
        if self.lines:
            data, self.lines = b"".join(self.lines), []
            self.writes.attempt(self.path, lambda: self.system.append_line(self.path, data, MAX_BYTES),
                                "transitions are not journalled")
        pending, self.pending = self.pending, None
        if pending is None:
            return
        status = pending()
        status = dict(status, write_problems=self.writes.status()) if "write_problems" in status else status
        path = os.path.join(self.run_dir, STATUS)
        self.writes.attempt(path, lambda: self.system.write_atomic(
            path, json.dumps(status, ensure_ascii=True).encode() + b"\n", 0o644, durable=False))


def read(run_dir: str, limit: int) -> list[dict]:
    """The last ``limit`` entries, oldest first (rotated file included)."""
    lines: list[bytes] = []
    for name in (JOURNAL + ".1", JOURNAL):
        try:
            with open(os.path.join(run_dir, name), "rb") as f:
                lines.extend(f.read().splitlines())
        except OSError:
            pass
    entries = []
    for line in lines[-limit:] if limit else lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries
