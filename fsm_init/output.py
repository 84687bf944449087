"""Passes a check script's stdout and stderr through to the container log, keeping the
last bytes so a failure can be explained ("output: connection refused")."""

import os

from fsm_init.system import System

KEEP = 400


class CapturedOutput:
    def __init__(self, loop, system: System) -> None:
        self.loop, self.system = loop, system
        self.tail = b""
        self.readers: dict[int, int] = {}  # pipe read end -> fsm-init's own fd it passes through to

    def spawn(self, argv: list[str], env: dict) -> int:
        pipes = [os.pipe2(os.O_CLOEXEC)]
        try:
            pipes.append(os.pipe2(os.O_CLOEXEC))  # EMFILE here must not leak the first pipe
            pid = self.system.spawn(argv, env, stdout=pipes[0][1], stderr=pipes[1][1])
        except OSError:
            for r, w in pipes:
                os.close(r)
                os.close(w)
            raise
        for target, (r, w) in zip((1, 2), pipes):
            os.close(w)
            os.set_blocking(r, False)
            self.readers[r] = target
            self.loop.watch(r, lambda r=r: self._pump(r))
        return pid

    def _pump(self, fd: int) -> bool:
        if fd not in self.readers:
            return False
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.loop.unwatch(fd)
            os.close(fd)
            del self.readers[fd]
            return False
        try:
            os.write(self.readers[fd], data)
        except OSError:
            pass
        self.tail = (self.tail + data)[-KEEP:]
        return True

    def last_words(self) -> str:
        """The end of what the script printed so far, as one short line."""
        for fd in list(self.readers):
            while fd in self.readers and self._pump(fd):
                pass
        words = " ".join(self.tail.decode("utf-8", "replace").split())
        return words[-160:]
