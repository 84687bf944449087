"""The one event loop: signals, child exits, control requests and deadlines.

Single-threaded and standard library only.  Signals are caught by no-op Python
handlers whose only effect is the C-level write of the signal number to a wake-up
pipe (``signal.set_wakeup_fd``); the loop reads those numbers in ``select``, so no
trigger ever runs inside a signal handler.  With no deadline set, ``select`` blocks
without a time-out: an idle fsm-init never wakes.
"""

import gc
import os
import selectors
import signal
from collections.abc import Callable

from fsm_init.core.system import System

# Signals fsm-init acts on.  Everything else keeps its default disposition (for PID 1
# the kernel drops default-action signals, which is what we want for the rest).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT, signal.SIGWINCH, signal.SIGCONT)
CAUGHT = STOP_SIGNALS + FORWARDED_SIGNALS + (signal.SIGCHLD,)
MAX_WAIT = 86400.0  # seconds: the longest single wait in select


def _noop(signum, frame):  # the wake-up fd carries the signal number
    pass


class EventLoop:
    def __init__(self, system: System, on_signal: Callable[[int], None],
                 on_exit: Callable[[int, int], None]) -> None:
        self.system = system
        self.on_signal = on_signal
        self.on_exit = on_exit
        self.selector = selectors.DefaultSelector()
        self._deadlines: dict[str, tuple[float, Callable[[], None]]] = {}
        self.stopped = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def install(self) -> None:
        """Take over signal handling; call before the first child exists."""
        for sig in (signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)
        for sig in CAUGHT:
            signal.signal(sig, _noop)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._drain_signals)
        # Signals blocked by whoever exec'd us (the engine before handing over to the
        # thin reaper) stay pending until now; unblocking delivers them to the handlers.
        signal.pthread_sigmask(signal.SIG_SETMASK, ())

    @property
    def wakeup_fd(self) -> int:
        """The write end the C-level signal handler writes each caught signal's number to."""
        return self._wake_w

    def take_signals(self) -> list[int]:
        """The signals caught but not handled yet (their numbers wait in the wake-up pipe),
        taken out of it: before an exec, which would lose them.  SIGCHLD is left out: the
        exec'd program reaps what exited anyway."""
        taken: list[int] = []
        while True:
            try:
                data = os.read(self._wake_r, 4096)
            except BlockingIOError:
                break
            if not data:
                break
            taken.extend(signum for signum in data if signum != signal.SIGCHLD and signum not in taken)
        return taken

    def watch(self, fileobj, callback: Callable[[], None]) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, callback)

    def watch_writable(self, fileobj, callback: Callable[[], None]) -> None:
        """callback when fileobj can be written (a stalled log stream: ``log.Outlet``)."""
        self.selector.register(fileobj, selectors.EVENT_WRITE, callback)

    def unwatch(self, fileobj) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def call_at(self, name: str, when: float, callback: Callable[[], None]) -> None:
        self._deadlines[name] = (when, callback)

    def call_later(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self.call_at(name, self.system.now() + delay, callback)

    def cancel(self, name: str) -> None:
        self._deadlines.pop(name, None)

    def due(self, name: str) -> float | None:
        """When the deadline called name is due (System.now's clock); None: none is set."""
        entry = self._deadlines.get(name)
        return entry[0] if entry else None

    def pending(self) -> dict[str, float]:
        """Every deadline set, name -> when it is due (a copy)."""
        return {name: when for name, (when, _) in self._deadlines.items()}

    def next_due(self) -> float | None:
        """When the earliest deadline is due; None: no deadline is set."""
        return min((when for when, _ in self._deadlines.values()), default=None)

    def run(self) -> None:
        # What the start-up made (the imports, marshmallow's schema, the machine) stays for
        # the life of PID 1: frozen, the garbage collector no longer walks it, and a
        # collection that falls on a signal's path is a short one.
        gc.freeze()
        # Children may have exited before the loop started (or before an exec handed over).
        self.reap()
        while not self.stopped:
            timeout = None
            first = self.next_due()
            if first is not None:
                # epoll refuses a time-out past ~24.8 days (OverflowError); a deadline
                # further away (workwatch of a month) is reached by waking once a day.
                timeout = min(MAX_WAIT, max(0.0, first - self.system.now()))
            self.poll(timeout)
            if self.stopped:
                return
            self.fire_due()

    def poll(self, timeout: float | None = 0) -> None:
        """One wait in select (at most timeout seconds; 0: none) and the callbacks of every
        file found ready (what run does between deadlines; tests call it directly)."""
        for key, _ in self.selector.select(timeout):
            # An earlier callback of this batch may have unwatched (and closed) this fd,
            # and its number may already belong to a new file.
            if self.selector.get_map().get(key.fileobj) is key:
                self._call(key.data)
            if self.stopped:
                return

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        """Release the selector and the wake-up pipe (a loop that will not run again)."""
        self.selector.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def fire_due(self) -> None:
        """Run every deadline due by now, earliest first (what run does after each wait;
        tests with a fake clock call it after moving the clock)."""
        now = self.system.now()
        for name, (when, callback) in sorted(self._deadlines.items(), key=lambda item: item[1][0]):
            if when <= now and self._deadlines.get(name) == (when, callback):
                del self._deadlines[name]
                self._call(callback)
                if self.stopped:
                    return

    def _call(self, callback: Callable[[], None]) -> None:
        """A bug in one reaction must not take PID 1, and the whole container, down."""
        try:
            callback()
        except Exception as error:  # noqa: BLE001
            from fsm_init.core import log

            log.error(f"internal error, carrying on: {error!r}")
            log.exception(error)

    def _drain_signals(self) -> None:
        try:
            data = os.read(self._wake_r, 4096)
        except BlockingIOError:
            return
        # Reap first: a service that exited just before a SIGTERM arrived must be seen
        # to have exited with its own status, not be "stopped" as a zombie.
        if signal.SIGCHLD in data:
            self.reap()
        for signum in data:
            if signum != signal.SIGCHLD:
                self.on_signal(signum)

    def reap(self) -> None:
        for pid, status in self.system.reap():
            self.on_exit(pid, status)
