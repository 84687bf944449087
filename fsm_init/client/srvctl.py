"""``srvctl``: steer the running fsm-init over its control socket.

Exit codes: 0 done, 1 refused or failed, 2 usage, 3 no engine listening; ``reload
--dry-run``: 0 nothing would change, 1 something would (or the configuration is refused).
Standard library only, so a Docker HEALTHCHECK or a probe answers fast: ``health`` and
``live`` import not even ``json`` and ``socket`` (fsm_init.client.probe).
"""

import sys

from fsm_init.core.log import clock, escape

USAGE = """\
usage: srvctl restart|stop|status|why|health|live [--json]
       srvctl metrics                     the OpenMetrics text of GET /metrics
       srvctl restart|stop|start NAME     one /etc/service daemon
       srvctl rescan                      read /etc/service again: start new, stop removed
       srvctl reload [--dry-run]          read workcfg.json and /etc/service again, apply
                                          only what changed (--dry-run: exit 1 if anything would)
       srvctl history [-n N] [--json]
"""
VERBS = ("restart", "stop", "status", "why", "health", "live", "history", "rescan", "reload", "metrics")
DAEMON_VERBS = ("restart", "stop", "start")
PROBES = ("health", "live")  # what Docker and Kubernetes run every few seconds: fsm_init.client.probe
DONE, REFUSED, USAGE_ERROR, NO_ENGINE = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    words = [a for a in args if a != "--json"]
    count = 20
    if words[:1] == ["history"] and len(words) == 3 and words[1] == "-n" and words[2].isdigit():
        count, words = int(words[2]), words[:1]
    fields: dict = {}
    if words[:1] == ["reload"] and words[1:] == ["--dry-run"]:
        fields["dry_run"] = True
        words = words[:1]
    if len(words) == 2 and words[0] in DAEMON_VERBS:
        fields["name"] = words.pop()
    if len(words) != 1 or words[0] not in (DAEMON_VERBS if "name" in fields else VERBS):
        sys.stderr.write(USAGE)
        return USAGE_ERROR
    from fsm_init.core.settings import Settings

    settings = Settings()
    if words[0] == "history":
        return history(settings.run_dir, count, as_json)
    path = settings.control_socket
    try:
        if words[0] in PROBES and not as_json:
            from fsm_init.client import probe

            reply = probe.ask(path, words[0])
        else:
            from fsm_init.core import control

            reply = control.request(path, words[0], **fields)
    except (OSError, ValueError) as e:
        sys.stderr.write(f"srvctl: no fsm-init answers on {path} ({getattr(e, 'strerror', None) or e})\n")
        return NO_ENGINE
    if "metrics" in reply:
        # Label values (check and daemon names) come escaped by metrics.label_value.
        sys.stdout.write(reply["metrics"])
    elif as_json:
        import json  # here only: a probe's answer is shown without it

        print(json.dumps(reply.get("status", reply), indent=2))
    elif "status" in reply:
        print(format_status(reply["status"]))
    elif "lines" in reply:  # reload: one line per change, each escaped
        print("\n".join(escape(str(line)) for line in reply["lines"]))
    else:
        # A check's output, a file name or a name from the network may be in the answer:
        # shown escaped, never raw (the same escaping as fsm-init's own log lines).
        print(escape(str(reply.get("message", ""))))
    if fields.get("dry_run"):  # as diff: 0 nothing would change, 1 something would (or refused)
        return DONE if reply.get("ok") and not reply.get("changed") else REFUSED
    return DONE if reply.get("ok") else REFUSED


def history(run_dir: str, count: int, as_json: bool) -> int:
    """The journal's last entries; read from the file, so it works after fsm-init is gone."""
    import json

    from fsm_init.core import journal

    entries = journal.read(run_dir, count)
    if not entries:
        sys.stderr.write(f"srvctl: no journal in {run_dir}\n")
        return REFUSED
    for e in entries:
        if as_json:
            print(json.dumps(e))
            continue
        guards = " ".join(f"{g}={'yes' if v else 'no'}" for g, v in e.get("guards", {}).items())
        when = clock(e["time"])
        line = f"{when} {e['from'] or '-'} -> {e['to']} ({e['trigger']}{' ' + guards if guards else ''})"
        cause = e.get("cause") or ""
        stop = e.get("stop")  # on the way to exited: where the stop's time went (budget.py)
        if isinstance(stop, dict) and stop.get("line"):
            cause = f"{cause}; {stop['line']}" if cause else stop["line"]
        print(escape(line + (f": {cause}" if cause else "")))
    return DONE


def format_status(status: dict) -> str:
    lines = [
        f"state:      {status['state']}"
        + (f" (for {status['since']:.0f}s)" if status.get("since") is not None else ""),
        f"mode:       {status['mode']}" + (f", checks every {status['period']}s" if status.get("period") else ""),
        f"target:     {status['target'] or '(none: built-in defaults)'}",
        "service:    " + (f"pid {status['service_pid']}, up {status['uptime']:.0f}s"
                           if status.get("service_pid") else "not running"),
        f"restarts:   {status['restarts']}",
        f"last exit:  {'-' if status['last_exit'] is None else status['last_exit']}",
    ]
    ready = describe_readiness(status.get("readiness"))
    if ready:
        lines.append(f"ready:      {ready}")
    for name, text in status.get("supporting", {}).items():
        lines.append(f"{name + ':':<11} {text}")
    for daemon in status.get("daemons", []):
        lines.append(f"{'daemon:':<11} {daemon['name']}: {describe_daemon(daemon)}")
    for check in status.get("checks", []):
        result = "timed out" if check["exit"] is None else f"exit {check['exit']}"
        lines.append(f"check:      {check['name']}: {result} in {check['duration']:.2f}s")
    if status.get("log_dropped"):
        lines.append(f"log:        {status['log_dropped']} line(s) dropped while the log reader stalled")
    for path, problem in status.get("write_problems", {}).items():
        lines.append(f"cannot write: {path}: {problem}")
    # Names of checks and daemons, a PPPoE access concentrator's name: escaped, line by line.
    return "\n".join(escape(line) for line in lines)


def describe_readiness(readiness: dict | None) -> str:
    """The status snapshot's readiness (workready notify or fd:N), as srvctl and the status
    view show it: "" for workready checks (the health line says it all)."""
    if not readiness or readiness.get("workready", "checks") == "checks":
        return ""
    text = ("yes" if readiness.get("ready") else "no") + f" (workready {readiness['workready']}"
    if readiness.get("phase"):
        text += f", {readiness['phase']}"
    text += ")"
    if readiness.get("status"):
        text += f"; STATUS: {readiness['status']}"
    return text


def describe_daemon(daemon: dict) -> str:
    """One /etc/service daemon of the status snapshot, as srvctl and the status view show it."""
    if daemon["state"] == "running":
        text = f"running, pid {daemon['pid']}, up {daemon['uptime']:.0f}s"
    else:
        text = daemon["state"] + (" (down file)" if daemon.get("down_file") and daemon["state"] == "down" else "")
    if daemon.get("ready") is not None and daemon["state"] == "running":
        text += ", ready" if daemon["ready"] else ", not ready yet (notification-fd)"
    if daemon.get("removed"):
        text += " (its directory was removed)"
    if daemon.get("last_exit") is not None:
        text += f", last exit {daemon['last_exit']}" + (" (out of memory)" if daemon.get("out_of_memory") else "")
    return text + (f", restarts {daemon['restarts']}" if daemon.get("restarts") else "")


if __name__ == "__main__":
    sys.exit(main())
