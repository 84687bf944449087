"""Step handover's work, the engine's side: once a non-daemon service has settled, the
engine execs the thin reaper (``reaper``) in its place, handing it one state object
(what ``reaper.Reaper`` reads).  The exec keeps PID 1, the children and the control
socket; if it fails, the engine carries on reaping.
"""

from fsm_init.compat.syslog_relay import SyslogRelay
from fsm_init.core import log
from fsm_init.core.control import ControlServer
from fsm_init.core.forwarded import ForwardLog
from fsm_init.core.http_probes import HttpServer
from fsm_init.core.loop import EventLoop
from fsm_init.core.metrics import Metrics
from fsm_init.core.oom import Watch
from fsm_init.core.readiness import Notifier
from fsm_init.core.records import Protocol
from fsm_init.core.settings import Settings
from fsm_init.core.system import System
from fsm_init.explain import Explain
from fsm_init.history import History
from fsm_init.steps.resolve_target import Target
from fsm_init.steps.service import Service


class Engine(Protocol):
    """What the hand-over reads: the engine (``engine.Engine``)."""
    config: dict
    target: Target
    control: ControlServer | None
    http: HttpServer | None
    metrics: Metrics
    system: System
    settings: Settings
    loop: EventLoop
    service: Service
    history: History
    explain: Explain
    forwards: ForwardLog
    syslog: SyslogRelay
    oom: Watch
    notifier: Notifier

    def side_services(self) -> dict[str, str]: ...


def enter(engine: Engine) -> None:
    from fsm_init.core import reaper  # the exec's code: not imported on the boot path

    instance = engine.service.instance
    if instance is None:  # the table reaches handover from foreground only, where an instance runs
        raise RuntimeError("handover without a service instance")
    control = engine.control
    http = engine.http
    for listening in (control, http):
        if listening:
            listening.sock.set_inheritable(True)
    relaying = engine.syslog.sock is not None
    engine.syslog.close()  # the thin reaper does not relay: remove /dev/log, not leave it stale
    engine.notifier.close()
    # The exec replaces this process before transitions would record the entry.
    engine.history.entered(engine.service.run_count, engine.explain.snapshot, early=True)
    engine.history.journal.flush()
    engine.forwards.close()
    settings = engine.settings
    reaper.hand_over(engine.system, engine.loop, {
        "pid": instance.pid, "by_session": instance.group.by_session, "started": instance.started,
        "target": engine.target.directory, "run_count": engine.service.run_count,
        "control_fd": control.sock.fileno() if control else None, "quiet": log.is_quiet(),
        "supporting": engine.side_services(), "kill_all_on_exit": settings.kill_all_on_exit,
        "proof": engine.config["workintvl"], "last_transition": engine.history.last_transition,
        "run_dir": settings.run_dir, "state_dir": settings.state_dir, "oom": engine.oom.state(),
        "http_fd": http.sock.fileno() if http else None,
        "metrics": engine.metrics.state((engine.syslog.relayed, engine.syslog.dropped))})
    # Only reached when the exec failed: this engine carries on reaping.
    for listening in (control, http):
        if listening:
            listening.sock.set_inheritable(False)
    if relaying:
        engine.syslog.start()
