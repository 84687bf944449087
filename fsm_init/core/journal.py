"""The transition journal and status.json in $FSM_INIT_RUN_DIR.

Every transition is appended as one JSON line to journal.jsonl (time, from, to,
trigger, guard results, cause, restart count); the file is rotated to
journal.jsonl.1 past MAX_BYTES, so it never grows without bound.  status.json,
beside it, is rewritten atomically on every transition, so a reader (``fsm-init
status``, a sidecar) never sees half a file.  Standard library only.
"""

import json
import os

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

    def record(self, entry: dict, status: dict) -> None:
        line = json.dumps(entry, ensure_ascii=True).encode() + b"\n"
        self.writes.attempt(self.path, lambda: self.system.append_line(self.path, line, MAX_BYTES),
                            "transitions are not journalled")
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
