"""What the engine says about itself: `srvctl why`, `srvctl health` and the snapshot
(`srvctl status`, each journal line).  It reads the engine's parts and changes nothing;
the shapes both PID-1 programs share (the snapshot, the journal entry, the answers to
requests) are built by ``status``, which the thin reaper uses too.
"""

from fsm_init.compat.daemons import Daemons
from fsm_init.compat.syslog_relay import SyslogRelay
from fsm_init.core import log, readiness, status
from fsm_init.core.kill import Stopper
from fsm_init.core.loop import EventLoop
from fsm_init.core.metrics import Metrics
from fsm_init.core.oom import Watch
from fsm_init.core.readiness import Notifier
from fsm_init.core.records import Protocol
from fsm_init.core.system import System
from fsm_init.core.writes import FileWrites
from fsm_init.history import History
from fsm_init.steps import start
from fsm_init.steps.foreground import Foreground
from fsm_init.steps.reload import Reloader
from fsm_init.steps.resolve_target import Target
from fsm_init.steps.service import Readiness, Service
from fsm_init.steps.watch import Checks


class Facts(Protocol):
    """What Explain reads: the engine (``engine.Engine``) has it all."""
    state: str
    config: dict
    mode: start.Mode
    target: Target
    system: System
    loop: EventLoop
    oom: Watch
    history: History
    service: Service
    foreground: Foreground
    stopper: Stopper
    checks: Checks
    daemons: Daemons
    writes: FileWrites
    reloader: Reloader
    notifier: Notifier
    metrics: Metrics
    syslog: SyslogRelay

    def side_services(self) -> dict[str, str]: ...


class Explain:
    def __init__(self, facts: Facts) -> None:
        self.facts = facts

    def health(self) -> tuple[bool, str]:
        """Docker HEALTHCHECK / readiness: this instance runs and has proved itself."""
        f = self.facts
        if f.service.instance is None:
            return False, f"no service instance ({f.state})"
        answer = self.readiness()
        return answer.ready, answer.reason

    def readiness(self) -> Readiness:
        """Ready or not (what `srvctl health` answers), since when (System.now's clock, for
        /metrics), the service's latest STATUS= and why."""
        f = self.facts
        failure = f.checks.cycle.failure if f.checks.cycle and f.service.last_checks else None
        return f.service.readiness(f.mode, f.config, failure.describe() if failure else "")

    def ready_since(self) -> float | None:
        return self.readiness().since

    def metrics_text(self) -> str:
        f = self.facts
        since = self.ready_since()
        return f.metrics.render(f.state, None if since is None else f.system.now() - since,
                                f.daemons.status(), (f.syslog.relayed, f.syslog.dropped))

    def why(self) -> str:
        """The current state as a causal chain, in one paragraph."""
        f = self.facts
        state, service, t = f.state, f.service, f.history.last_transition
        guards = ", ".join(f"{g} {'yes' if v else 'no'}" for g, v in t.get("guards", {}).items())
        reason = t.get("cause") or f"from {t.get('from') or 'boot'}" + (f" ({guards})" if guards else "")
        when = f" at {log.clock(t['time'])}" if t.get("time") else ""
        if state in ("restart", "gave_up") or (state == "restart_interval" and not service.instance):
            reason = service.restart_cause or reason
        if state == "restart_interval" and service.instance and service.restart_cause:
            text = f"{state}: started again{when} after {service.restart_cause}"
        else:
            text = f"{state}: {reason}{when}"
        # In a failure's restart interval, name the restart that is coming.
        restart = service.run_count - (0 if state == "restart_interval" and not service.instance else 1)
        if restart > 0:
            text += f"; restart {restart}"
        upcoming = self.upcoming()
        text = f"{text}; {upcoming}" if upcoming else text
        said = readiness.said(f.service.declared) if f.service.instance else ""
        text = f"{text}; {said}" if said else text
        text = f"{text}; {f.reloader.last}" if f.reloader.last else text
        return f"{text}; last out-of-memory kill: {f.oom.last}" if f.oom.last else text

    def upcoming(self) -> str:
        """What the current state waits for, and until when."""
        f = self.facts
        when = {name: log.clock(f.system.wall() + at - f.system.now()) for name, at in f.loop.pending().items()}
        pid = f.service.instance.pid if f.service.instance else None
        script, retry, kill_at = f.foreground.script, f.foreground.retry, when.get(f.stopper.kill_deadline)
        running = f"running {script.name} (killed at {when.get('script')} if still running)" if script else ""
        phrases = {
            "startup_scripts": running, "env_resume": running, "post_shutdown": running,
            "pre_shutdown": running or (f"waiting for the interrupted script's session to end (SIGKILL at "
                                        f"{kill_at})" if kill_at else ""),
            "stop_daemons": "stopping the /etc/service daemons one by one, in reverse order",
            "delay": f"the start goes on at {when.get('state')}",
            "idle": f"the config is read again at {when.get('state')}",
            "restart_interval": f"first check at {when.get('state')}" if pid else f"next start at {when.get('state')}",
            "watch": (f"next check at {when.get('cycle')}" if "cycle" in when else
                      f"waiting for the service (pid {pid}) to exit"),
            "check": f"running {script.name}" if script else
                     (f"{retry[0]} cannot be started ({retry[1]}): trying again at "
                      f"{when.get('script')}" if retry and "script" in when else ""),
            "foreground": f"the service (pid {pid}) runs; fsm-init exits with its status",
            "restart": f"SIGKILL at {kill_at} if it is still there",
            "stopping": f"SIGKILL at {kill_at} if it is still there",
            "gave_up": "srvctl restart tries again",
        }
        return phrases.get(f.state, "")

    def snapshot(self) -> dict:
        f = self.facts
        now, service = f.system.now(), f.service
        # In status-check mode an instance outlives its leader (a start script may
        # daemonise): the pid is shown only while the leader lives.
        running = service.instance if service.leader_alive else None
        return status.snapshot(
            state=f.state, since=now - f.history.since, mode=f.mode.kind, period=f.mode.period,
            target=f.target.directory, service_pid=running.pid if running else None,
            uptime=now - running.started if running else None, run_count=service.run_count,
            failures=service.failures, last_exit=service.last_exit, checks=[r._asdict() for r in service.last_checks],
            healthy=self.health()[0], last_transition=f.history.last_transition, supporting=f.side_services(),
            readiness=readiness.snapshot(self.readiness(), service.declared, f.notifier, now),
            daemons=f.daemons.status(), pid=f.system.getpid(), write_problems=f.writes.status())
