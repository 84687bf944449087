"""Passes a check script's stdout and stderr through to the container log, keeping the
last bytes so a failure can be explained ("output: connection refused").

A check runs as the workuser: what it prints is hostile.  Each line is passed through
escaped (``log.escape``) and prefixed with the check's name (``PeriodicST-http:
connection refused``), so a check can neither forge a line of fsm-init's
(``fsm-init[watch] ...``) nor reach the log reader's terminal; the lines go through
fsm-init's non-blocking output, never a blocking write.  The pipes are made, read and
closed through ``System`` (the unit tests' fake records them).

When the check ends, ``finish`` reads what its pipes hold once and closes them: a
background process the check left holding them must not keep PID 1's descriptors
(the engine then kills what is left of the check's session).
"""

from fsm_init.core import log
from fsm_init.core.system import System

KEEP = 400
MAX_LINE = 4000  # bytes: a longer line is passed through in pieces, each with the prefix
CHUNK = 65536
FINAL_READS = 4  # reads per pipe when the check ends: a leftover that keeps writing cannot hold us


class CapturedOutput:
    def __init__(self, loop, system: System, name: str = "") -> None:
        self.loop, self.system = loop, system
        self.name = name
        self.prefix = f"{log.escape(name)}: " if name else ""
        self.tail = b""
        self.readers: dict[int, int] = {}  # pipe read end -> fsm-init's own fd it passes through to
        self.partial: dict[int, bytes] = {}  # pipe read end -> the start of a line not ended yet

    def spawn(self, argv: list[str], env: dict) -> int:
        pipes = [self.system.pipe()]
        try:
            pipes.append(self.system.pipe())  # EMFILE here must not leak the first pipe
            pid = self.system.spawn(argv, env, stdout=pipes[0][1], stderr=pipes[1][1])
        except OSError:
            for r, w in pipes:
                self.system.close(r)
                self.system.close(w)
            raise
        for target, (r, w) in zip((1, 2), pipes, strict=True):
            self.system.close(w)
            self.system.set_nonblocking(r)
            self.readers[r] = target
            self.partial[r] = b""
            self.loop.watch(r, lambda r=r: self._pump(r))
        return pid

    def _pump(self, fd: int) -> bool:
        if fd not in self.readers:
            return False
        try:
            data = self.system.read(fd, CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._close(fd)
            return False
        self.tail = (self.tail + data)[-KEEP:]
        lines = (self.partial[fd] + data).split(b"\n")
        self.partial[fd] = lines.pop()
        while len(self.partial[fd]) > MAX_LINE:
            lines.append(self.partial[fd][:MAX_LINE])
            self.partial[fd] = self.partial[fd][MAX_LINE:]
        self.pass_lines(fd, lines)
        return True

    def pass_lines(self, fd: int, lines: list[bytes]) -> None:
        out = []
        for line in lines:
            for start in range(0, max(1, len(line)), MAX_LINE):
                piece = line[start:start + MAX_LINE]
                if log._json:  # FSM_INIT_LOG_FORMAT=json: one object a line, as fsm-init's own
                    import json
                    import time

                    out.append(json.dumps({"time": round(time.time(), 3), "program": self.name, "source": "check",
                                           "stream": "stdout" if self.readers[fd] == 1 else "stderr",
                                           "message": piece.decode("utf-8", "replace")}) + "\n")
                else:
                    out.append(f"{self.prefix}{log.escape_bytes(piece)}\n")
        if out:
            log.write(self.readers[fd], "".join(out).encode("utf-8", "replace"))

    def _close(self, fd: int) -> None:
        if self.partial.get(fd):
            self.pass_lines(fd, [self.partial[fd]])
        self.loop.unwatch(fd)
        self.system.close(fd)
        del self.readers[fd]
        self.partial.pop(fd, None)

    def finish(self) -> str:
        """The check has ended: take what its pipes hold now, once, close them, and return
        its last words."""
        for fd in list(self.readers):
            for _ in range(FINAL_READS):
                if not self._pump(fd):
                    break
            if fd in self.readers:
                self._close(fd)
        return self.last_words()

    def close(self) -> None:
        """Close the pipes without reading (a check abandoned on a restart or stop)."""
        for fd in list(self.readers):
            self._close(fd)

    def last_words(self) -> str:
        """The end of what the script printed so far, as one short line, escaped."""
        words = log.escape(" ".join(self.tail.decode("utf-8", "replace").split()))
        return words[-160:]
