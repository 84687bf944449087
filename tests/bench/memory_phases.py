"""What PID 1's resident memory is made of, for bench.py's `profile` step.

    memory_phases.py reaper   run as the thin reaper runs (python -I -S): its imports in steps
    memory_phases.py engine   run as the engine runs (the venv's python with site): the engine,
                              ctypes (the first spawn), marshmallow (a workcfg.json to validate)

VmRSS after each step, one line on stderr, `step=KiB|...`.  Not a pytest module.
"""

import sys

ROOT = __file__.rsplit("/tests/bench/", 1)[0]


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


STEPS = {
    "reaper": [("the interpreter (-I -S)", ""), ("enum (imported by signal and socket)", "import enum"),
               ("signal, socket, selectors (their enum classes)", "import signal, socket, selectors"),
               ("re, json", "import re, json"),
               ("fsm-init's modules of the thin reaper", "import fsm_init.core.reaper")],
    "engine": [("the interpreter (with site)", ""), ("re, json, socket, signal, selectors",
                                                      "import re, json, socket, signal, selectors"),
               ("logging, inspect (imported by transitions)", "import logging, inspect"),
               ("transitions", "import transitions"), ("fsm-init's engine modules", "import fsm_init.engine"),
               ("ctypes (loaded at the first spawn)", "import ctypes; ctypes.CDLL(None)"),
               ("marshmallow (a workcfg.json is validated)",
                "from fsm_init.config import schema; schema.validate({'initdelay': 0})")],
}

sys.path.insert(0, ROOT)
out, before = [], rss()
for name, code in STEPS[sys.argv[1]]:
    exec(code)
    now = rss()
    out.append(f"{name}={now - before if code else now}")
    before = now
sys.stderr.write("|".join(out) + "\n")
