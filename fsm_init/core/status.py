"""What fsm-init says about itself, for the engine and the thin reaper alike.

The snapshot (`srvctl status`, and each journal line), the journal's transition entry,
and the answers to control requests are built here, once: the engine and the thin reaper
(``reaper.Reaper``) supply the facts and their own verbs' work.  Standard library only,
and not even typing: the thin reaper imports it (tests/unit/test_imports.py).
"""

from fsm_init.core import log


def transition(wall, source, dest, trigger, guards, cause, run_count):
    """The journal's entry for a transition taken (and `srvctl status`'s last_transition)."""
    return {"time": round(wall, 3), "from": source, "to": dest, "trigger": trigger, "guards": guards,
            "cause": cause, "restarts": max(0, run_count - 1)}


def snapshot(*, state, since, mode, period, target, service_pid, uptime, run_count, failures, last_exit, checks,
             healthy, last_transition, supporting, daemons, pid, write_problems, readiness=None):
    """`srvctl status` and the journal's snapshot: one shape, whoever is PID 1.
    service_pid and uptime: None unless the instance's leader lives."""
    return {
        "state": state,
        "since": round(since, 3),
        "mode": mode,
        "period": period,
        "target": target,
        "service_pid": service_pid,
        "uptime": None if uptime is None else round(uptime, 3),
        "run_count": run_count,
        "restarts": max(0, run_count - 1),
        "failures": failures,
        "last_exit": last_exit,
        "checks": checks,
        "healthy": healthy,
        # who says the service is ready (workready), and what it said: readiness.snapshot
        "readiness": readiness,
        "last_transition": last_transition,
        "supporting": supporting,
        "daemons": daemons,
        "pid": pid,
        "log_dropped": log.dropped(),
        # files fsm-init cannot write (a full or read-only disk): path -> the problem
        "write_problems": write_problems,
    }


def answer(supervisor, request):
    """The reply to one control request.  supervisor (the engine or the thin reaper) has
    snapshot(), why(), health(), metrics_text(), request_daemon(verb, name), request_live(),
    request_restart(), request_stop(), request_rescan(), request_reload(dry_run) and
    refused(verb); health and the request_ ones return (ok, message), request_reload the
    whole reply (with its "lines" and whether anything "changed")."""
    verb = request.get("verb")
    if "name" in request:  # one /etc/service daemon
        ok, message = supervisor.request_daemon(verb, request["name"])
    elif verb == "status":
        return {"ok": True, "status": supervisor.snapshot()}
    elif verb == "metrics":
        return {"ok": True, "metrics": supervisor.metrics_text()}
    elif verb == "why":
        ok, message = True, supervisor.why()
    elif verb == "health":
        ok, message = supervisor.health()
    elif verb == "reload":
        return supervisor.request_reload(request.get("dry_run") is True)
    elif verb in ("live", "restart", "stop", "rescan"):
        ok, message = getattr(supervisor, "request_" + verb)()
    else:
        ok, message = False, supervisor.refused(verb)
    return {"ok": ok, "message": message}
