"""fsm-init's numbers, in the OpenMetrics text format (`srvctl metrics`, ``GET /metrics``).

One ``Metrics`` object per supervisor counts what happens (the engine's transitions,
check cycles and out-of-memory kills: one call each from small hooks) and renders the
counters with the facts read at that moment (the state, readiness, the daemons' restarts,
the syslog relay's counts, the log lines dropped).  Every name starts with ``fsm_init_``;
every counter without a label, or with a fixed set of labels, exists from the start at
zero.  The counts cross the exec to the thin reaper (``state``/``from_state``), which
goes on counting.  Standard library only, and not even typing: the thin reaper imports it.
"""

from fsm_init.core import log
from fsm_init.core.table import STATES

CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# Why the service started again, from the transition that ended its previous instance:
#   exit     it exited (daemon mode)          oom      the kernel's OOM killer killed it
#   check    a check cycle failed             request  srvctl restart
#   spawn    it could not be started          watchdog  workwatchdog missed (or WATCHDOG=trigger)
RESTART_CAUSES = ("exit", "oom", "check", "request", "spawn", "watchdog")
CHECK_RESULTS = ("passed", "failed", "timed_out")
OOM_PROCESSES = ("service", "daemon")
STATE_NAMES = tuple(name for name, _ in STATES)


class Metrics:
    def __init__(self, state=None) -> None:
        state = state or {}
        self.starts = state.get("starts", 0)
        self.restarts = dict.fromkeys(RESTART_CAUSES, 0)
        self.restarts.update(state.get("restarts", {}))
        self.transitions = dict.fromkeys(STATE_NAMES, 0)  # by the state entered
        self.transitions.update(state.get("transitions", {}))
        self.checks = {tuple(key.split("\0", 1)): n for key, n in state.get("checks", {}).items()}
        self.check_seconds = dict(state.get("check_seconds", {}))  # script -> its latest run's duration
        self.oom_kills = dict.fromkeys(OOM_PROCESSES, 0)
        self.oom_kills.update(state.get("oom_kills", {}))
        self.cause = state.get("cause", "")  # why the next start will be a restart
        self.service_oom = False  # the service's latest death was an OOM kill
        self.watchdog = False  # the next restart_request is the watchdog's, not srvctl restart's
        # Counted by the engine's syslog relay and log outlets, which the thin reaper has not.
        self.syslog_base = tuple(state.get("syslog", (0, 0)))
        self.log_dropped_base = state.get("log_dropped", 0)

    def state(self, syslog=(0, 0)) -> dict:
        """The counts, as JSON, for the thin reaper; syslog: the relay's (relayed, dropped)."""
        return {"starts": self.starts, "restarts": self.restarts, "transitions": self.transitions,
                "checks": {"\0".join(key): n for key, n in self.checks.items()}, "check_seconds": self.check_seconds,
                "oom_kills": self.oom_kills, "cause": self.cause, "syslog": list(syslog),
                "log_dropped": self.log_dropped_base + log.dropped()}

    # -- what happens (the hooks) -----------------------------------------------------

    def transition(self, source, dest, trigger) -> None:
        """A transition taken: counted, and the starts and restarts told from it."""
        self.transitions[dest] = self.transitions.get(dest, 0) + 1
        if dest == "start":
            if self.starts:
                self.restarts[self.cause or "request"] += 1
            self.starts += 1
            self.cause = ""
            self.service_oom = False  # an earlier instance's kill (one whose exit was no transition)
        elif trigger == "service_exit" and dest == "restart":
            self.cause = "oom" if self.service_oom else "exit"
        elif trigger == "checks_done" and dest == "restart":
            self.cause = "check"
        elif trigger == "restart_request":
            self.cause = "watchdog" if self.watchdog else "request"
            self.watchdog = False
        elif trigger == "spawn_failed":
            self.cause = "spawn"
        if trigger == "service_exit":
            self.service_oom = False

    def checks_done(self, results) -> None:
        """One check cycle's results (watch.CheckResult: name, exit, duration)."""
        for result in results:
            outcome = "timed_out" if result.exit is None else "passed" if result.exit == 0 else "failed"
            key = (result.name, outcome)
            for other in CHECK_RESULTS:  # a script's every result exists once it ran
                self.checks.setdefault((result.name, other), 0)
            self.checks[key] += 1
            self.check_seconds[result.name] = result.duration

    def watchdog_missed(self) -> None:
        """The engine is about to fire restart_request for the watchdog (readiness.Notifier)."""
        self.watchdog = True

    def oom_kill(self, process) -> None:
        """process: "service" or "daemon"."""
        self.oom_kills[process] = self.oom_kills.get(process, 0) + 1
        if process == "service":
            self.service_oom = True

    # -- the text -----------------------------------------------------------------------

    def render(self, state, ready_for, daemons=(), syslog=None) -> str:
        """The OpenMetrics exposition.  state: the current state; ready_for: seconds since the
        service became ready, None while it is not; daemons: the status snapshot's daemons;
        syslog: the relay's (relayed, dropped), None: the counts carried over."""
        relayed, dropped = syslog if syslog is not None else self.syslog_base
        out: list[str] = []
        family(out, "fsm_init_state", "stateset", "The state fsm-init is in (docs/lifecycle.md)",
               [({"fsm_init_state": name}, int(name == state)) for name in STATE_NAMES])
        family(out, "fsm_init_transitions", "counter", "Transitions taken, by the state entered",
               [({"to": name}, n) for name, n in sorted(self.transitions.items())], "_total")
        family(out, "fsm_init_service_starts", "counter", "Starts of the service (the first one included)",
               [({}, self.starts)], "_total")
        family(out, "fsm_init_service_restarts", "counter", "Starts after the first, by what ended the instance before",
               [({"cause": cause}, self.restarts[cause]) for cause in RESTART_CAUSES], "_total")
        family(out, "fsm_init_service_ready", "gauge", "1 while the service is ready (srvctl health, /readyz)",
               [({}, int(ready_for is not None))])
        family(out, "fsm_init_service_ready_seconds", "gauge",
               "Seconds since the service became ready; 0 while it is not", [({}, round(ready_for or 0.0, 3))],
               unit="seconds")
        family(out, "fsm_init_check_runs", "counter", "Check script runs, by script and result",
               [({"script": name, "result": result}, n) for (name, result), n in sorted(self.checks.items())], "_total")
        family(out, "fsm_init_check_duration_seconds", "gauge", "How long each check script's latest run took",
               [({"script": name}, round(seconds, 6)) for name, seconds in sorted(self.check_seconds.items())],
               unit="seconds")
        family(out, "fsm_init_daemon_restarts", "counter", "Restarts of each /etc/service daemon",
               [({"daemon": d["name"]}, d["restarts"]) for d in daemons], "_total")
        family(out, "fsm_init_oom_kills", "counter", "Children killed by the kernel's out-of-memory killer",
               [({"process": process}, self.oom_kills[process]) for process in OOM_PROCESSES], "_total")
        family(out, "fsm_init_syslog_messages_relayed", "counter", "Messages the /dev/log relay wrote out",
               [({}, relayed)], "_total")
        family(out, "fsm_init_syslog_messages_dropped", "counter", "Messages the /dev/log relay dropped (rate limits)",
               [({}, dropped)], "_total")
        family(out, "fsm_init_log_lines_dropped", "counter", "fsm-init's log lines dropped while the reader stalled",
               [({}, self.log_dropped_base + log.dropped())], "_total")
        out.append("# EOF\n")
        return "".join(out)


def family(out, name, kind, text, samples, suffix="", unit="") -> None:
    out.append(f"# TYPE {name} {kind}\n")
    if unit:
        out.append(f"# UNIT {name} {unit}\n")
    out.append(f"# HELP {name} {text}\n")
    for labels, value in samples:
        shown = ",".join(f'{key}="{label_value(str(v))}"' for key, v in labels.items())
        out.append(f"{name}{suffix}{'{' + shown + '}' if shown else ''} {value}\n")


def label_value(text: str) -> str:
    """A label value as OpenMetrics writes it (backslash, quote and newline escaped); other
    control characters (a file name is a child's text) and the surrogates of a name that is
    not UTF-8 (os.listdir's escapes, which no encoder takes) become U+FFFD, never raw."""
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return "".join("\ufffd" if ord(c) < 0x20 or ord(c) == 0x7f or 0xd800 <= ord(c) < 0xe000 else c for c in text)
