"""Where `fsm-init -- /bin/true`'s time goes, for bench.py's `profile` step.

Run by bench.py as PID 1 of a fresh PID namespace with the venv's interpreter, in place
of the `fsm-init` script: imports in the order fsm-init's own would first need them,
timestamps around the engine's construction, the boot path, the wait for the command
and the stop path, then fsm-init's exit.  One line on stderr, `phase=milliseconds|...`.
Not a pytest module.
"""

import os
import sys
import time

T = [("start", time.perf_counter())]
import re, json  # noqa: E401,E402  (the timestamps between the imports are the point)
T.append(("re, json (cli's own imports; json needs re)", time.perf_counter()))
import logging, inspect  # noqa: E401,E402
T.append(("logging, inspect (imported by transitions)", time.perf_counter()))
import transitions  # noqa: E402
T.append(("transitions itself (six, its core)", time.perf_counter()))
import selectors, signal, socket  # noqa: E401,E402
T.append(("socket, selectors, signal", time.perf_counter()))
import fsm_init.cli  # noqa: E402
import fsm_init.engine as engine  # noqa: E402
import fsm_init.core.reaper as reaper  # noqa: E402

T.append(("fsm-init's own modules", time.perf_counter()))
_init, _foreground, _exit_now = engine.Engine.__init__, engine.Engine.on_enter_foreground, reaper.exit_now


def init(self, *args, **kwargs):
    T.append(("cli up to the engine", time.perf_counter()))
    _init(self, *args, **kwargs)
    T.append(("Engine(): the Machine built from the table", time.perf_counter()))
    self.observer = observe  # the engine's own hook after each event (tests/unit/fakes.py uses it too)


def foreground(self):
    T.append(("boot path through the table to the spawn (ctypes loaded at the first spawn)", time.perf_counter()))
    _foreground(self)


def observe(took, guards):
    if took and took[0] == "foreground":
        T.append(("until /bin/true's exit is handled (out of state foreground)", time.perf_counter()))


def exit_now(code):
    T.append(("stop path to the exit", time.perf_counter()))
    line = "|".join(f"{name}={(t - T[i][1]) * 1e3:.3f}" for i, (name, t) in enumerate(T[1:]))
    os.write(2, (line + "\n").encode())
    _exit_now(code)


engine.Engine.__init__, engine.Engine.on_enter_foreground = init, foreground
reaper.exit_now = exit_now
sys.argv = ["fsm-init", "--", "/bin/true"]
sys.exit(fsm_init.cli.main())
