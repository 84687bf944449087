"""Failures that repeat at every retry (a fork failing under a pids limit, no file
descriptor left) are said once; the first success after them is said once.
Standard library only."""

import errno

# A process or a descriptor could not be had: the kernel's limits, not the program's fault.
RESOURCE_ERRORS = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE})


def is_resource(error: OSError) -> bool:
    return error.errno in RESOURCE_ERRORS


class Repeats:
    def __init__(self) -> None:
        self.failing: dict[str, list] = {}  # key -> [reason, failures]

    def failed(self, key: str, reason: str | None, say) -> None:
        """say() unless key already failed for this same reason."""
        entry = self.failing.get(key)
        if entry is not None and entry[0] == reason:
            entry[1] += 1
            return
        self.failing[key] = [reason, (entry[1] if entry else 0) + 1]
        say()

    def succeeded(self, key: str) -> int:
        """How many failures in a row this success ends (0: none)."""
        entry = self.failing.pop(key, None)
        return entry[1] if entry else 0

    def reason(self, key: str) -> str | None:
        entry = self.failing.get(key)
        return entry[0] if entry else None
