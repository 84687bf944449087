"""Out-of-memory kills named: was a SIGKILL the kernel's OOM killer?

The container's memory cgroup counts the kills of its OOM killer: ``oom_kill`` in
``memory.events`` (cgroup v2) or ``memory.oom_control`` (cgroup v1).  fsm-init finds
its own cgroup once at start (``/proc/self/cgroup``; inside a container the cgroup is
often mounted as the root of /sys/fs/cgroup, so that is tried too) and reads the count
then; after that only when the service or a daemon dies of SIGKILL: a count that went
up means the kernel killed it for memory, under the cgroup's limit (``memory.max``,
``memory.limit_in_bytes``).  Every read goes through ``System``; standard library only
(the thin reaper imports this module when its service dies of SIGKILL).
"""

import os
import signal

from fsm_init.core import log
from fsm_init.core.system import exit_code

TYPE_CHECKING = False  # typing is not imported at run time (the thin reaper's budget)
if TYPE_CHECKING:
    from collections.abc import Callable

V2_ROOT = "/sys/fs/cgroup"
V1_ROOT = "/sys/fs/cgroup/memory"
# cgroup v1 reports no limit as a number near 2**63.
NO_LIMIT = 1 << 60


def _field(text: bytes | None, key: str) -> int | None:
    for line in (text or b"").decode("ascii", "replace").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def locate(system) -> tuple[str, str, str] | None:
    """(counter file, limit file, kind) of fsm-init's memory cgroup, or None."""
    raw = system.read_bytes("/proc/self/cgroup")
    v1 = v2 = None
    for line in (raw or b"").decode("utf-8", "replace").splitlines():
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if "memory" in controllers.split(","):
            v1 = path
        elif hierarchy == "0" and controllers == "":
            v2 = path
    # The memory controller is on a v1 hierarchy when one lists it; otherwise on v2.
    if v1 is not None:
        choices = [(os.path.join(V1_ROOT + v1, "memory.oom_control"), "memory.limit_in_bytes", "v1")]
        choices.append((os.path.join(V1_ROOT, "memory.oom_control"), "memory.limit_in_bytes", "v1"))
    elif v2 is not None:
        choices = [(os.path.join(V2_ROOT + v2, "memory.events"), "memory.max", "v2"),
                   (os.path.join(V2_ROOT, "memory.events"), "memory.max", "v2")]
    else:
        return None
    for counter, limit, kind in choices:
        if _field(system.read_bytes(counter), "oom_kill") is not None:
            return counter, os.path.join(os.path.dirname(counter), limit), kind
    return None


def describe_limit(raw: bytes | None) -> str:
    text = (raw or b"").decode("ascii", "replace").strip()
    if text in ("", "max"):
        return "no memory limit" if text == "max" else "memory limit unknown"
    try:
        limit = int(text)
    except ValueError:
        return f"memory limit {text}"
    if limit >= NO_LIMIT:
        return "no memory limit"
    return f"memory limit {limit / (1 << 20):g} MiB" if limit % (1 << 20) == 0 else f"memory limit {limit} bytes"


def may_be_oom(status: int) -> bool:
    """Killed by SIGKILL, or exited 137 (128 + SIGKILL): the only statuses worth a read."""
    return exit_code(status) == 128 + signal.SIGKILL


class Watch:
    """The OOM kill count of fsm-init's memory cgroup, as last read."""

    def __init__(self, system, counter: str | None = None, limit: str | None = None, seen: int = 0) -> None:
        self.system, self.counter, self.limit, self.seen = system, counter, limit, seen
        self.last = ""  # the latest out-of-memory kill that killed_by saw, for `srvctl why`
        # Told "service" or "daemon" at each kill killed_by sees (the metrics count them).
        self.observer: Callable[[str], None] | None = None

    @classmethod
    def start(cls, system) -> "Watch":
        found = locate(system)
        if found is None:
            return cls(system)
        counter, limit, _ = found
        return cls(system, counter, limit, _field(system.read_bytes(counter), "oom_kill") or 0)

    def state(self) -> dict:
        """What the thin reaper needs to carry on (JSON)."""
        return {"counter": self.counter, "limit": self.limit, "seen": self.seen}

    @classmethod
    def from_state(cls, system, state: dict | None) -> "Watch":
        state = state or {}
        return cls(system, state.get("counter"), state.get("limit"), state.get("seen", 0))

    def killed(self, status: int) -> str:
        """For a child's wait status: "" unless it died of SIGKILL (or exited 137, as a shell
        does whose command was killed) and the cgroup counted a new OOM kill since the last
        read; then the words that say so."""
        if not self.counter or not may_be_oom(status):
            return ""
        count = _field(self.system.read_bytes(self.counter), "oom_kill")
        if count is None or count <= self.seen:
            return ""
        self.seen = count
        return (f"killed by the kernel's out-of-memory killer ({describe_limit(self.system.read_bytes(self.limit))}; "
                f"oom_kill {count} in {self.counter})")

    def killed_by(self, who: str, status: int) -> str:
        """killed() for the child who ("the service (pid 12)"); a kill is remembered, with
        the time it was seen, in ``last``."""
        words = self.killed(status)
        if words:
            self.last = f"{who} at {log.clock(self.system.wall())}, {words}"
            if self.observer:
                self.observer("service" if who.startswith("the service") else "daemon")
        return words
