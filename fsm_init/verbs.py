"""The engine's answers to control requests (srvctl's verbs): ``status.answer`` routes a
request here, as it routes the thin reaper's to ``reaper.Reaper``.
"""

from collections.abc import Callable

from fsm_init.compat.daemons import Daemons
from fsm_init.core import log, status
from fsm_init.core.control import NOT_SUPERVISED
from fsm_init.core.records import Protocol
from fsm_init.core.table import STOPPABLE
from fsm_init.explain import Explain
from fsm_init.steps.reload import Reloader
from fsm_init.steps.service import Service


class Engine(Protocol):
    """What Verbs acts on: the engine (``engine.Engine``)."""
    state: str
    service: Service
    daemons: Daemons
    explain: Explain
    reloader: Reloader
    may_restart_request: Callable[[], bool]  # added by transitions

    def fire(self, trigger: str, cause: str = "") -> None: ...

    def stop(self, cause: str, signum: int | None = None) -> None: ...


class Verbs:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def handle(self, request: dict) -> dict:
        """The reply to one control request (``control.ControlServer`` calls this)."""
        return status.answer(self, request)

    def snapshot(self) -> dict:
        return self.engine.explain.snapshot()

    def why(self) -> str:
        return self.engine.explain.why()

    def health(self) -> tuple[bool, str]:
        return self.engine.explain.health()

    def request_daemon(self, verb: str, name) -> tuple[bool, str]:
        if verb not in ("start", "stop", "restart"):
            return False, f"{verb} does not take a service name"
        return self.engine.daemons.request(verb, str(name))

    def request_rescan(self) -> tuple[bool, str]:
        ok, message = self.engine.daemons.rescan()
        log.info(f"srvctl rescan: {message}")
        return ok, message

    def metrics_text(self) -> str:
        return self.engine.explain.metrics_text()

    def request_reload(self, dry_run: bool) -> dict:
        return self.engine.reloader.request(dry_run)

    def request_live(self) -> tuple[bool, str]:
        if self.engine.state == "gave_up":
            return False, f"fsm-init gave up: {self.engine.service.gave_up_reason}"
        return True, f"fsm-init answers ({self.engine.state})"

    def request_restart(self) -> tuple[bool, str]:
        engine = self.engine
        if not engine.may_restart_request():
            return False, NOT_SUPERVISED if engine.state in ("foreground", "handover") else \
                f"cannot restart during {engine.state}"
        log.info("srvctl restart")
        engine.service.restart_requested, was = True, engine.state
        engine.fire("restart_request", "srvctl restart")
        return True, f"restarting (was {was})"

    def request_stop(self) -> tuple[bool, str]:
        if self.engine.state not in STOPPABLE:
            return False, f"already {self.engine.state}"
        log.info("srvctl stop: stopping the service, then exiting 0")
        self.engine.service.stop_requested = True
        self.engine.stop("srvctl stop")
        return True, "stopping"

    def refused(self, verb) -> str:
        return f"unknown verb {verb!r}"
