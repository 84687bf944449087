"""fsm-init's processes read from /proc, from outside its PID namespace: the integration
tests, the soak run and the benchmark look at the same facts the same way."""

import os
from pathlib import Path


def stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name: [state, ppid, pgrp, ...];
    None once the process is gone (reaped)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].split()


def proc_state(pid: int | str) -> str | None:
    """The one-letter state of a process, or None once it is gone (reaped)."""
    fields = stat_fields(pid)
    return fields[0].decode() if fields else None


def namespace_processes(pid1: int) -> dict[int, list[bytes]]:
    """Host pid -> stat_fields of every process in pid1's PID namespace, zombies included."""
    ns = os.readlink(f"/proc/{pid1}/ns/pid")
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{name}/ns/pid") != ns:
                continue
        except OSError:
            continue
        fields = stat_fields(name)
        if fields:
            found[int(name)] = fields
    return found
