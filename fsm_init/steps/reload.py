"""`srvctl reload [--dry-run]`: read workcfg.json and /etc/service again, apply only what changed.

The configuration is read with the rules of a start (``load_config.ConfigSource``: the
same trust checks, a file holding a secret made private) and validated strictly: a
document with any problem is refused whole and the running configuration is kept, the
problems named as ``fsm-init validate`` names them.  Otherwise ``diff`` compares the
running configuration with the new one, key by key, and sorts each change into the step
that acts on it, in boot order:

  firewall  ``firewall.*``: the rules re-applied in one iptables-restore per family
  ssh       ``sshsrv.*``: dropbear restarted (started, stopped)
  pppoe     ``inetdail.*``: the dial-up restarted (started, stopped)
  service   ``workstart``, ``workuser``, the service's own sections (in its $SRVCFG), a
            switch to or from non-daemon mode (or to daemon mode once the leader has
            exited), a variable of /etc/container_environment (the names only: a value
            may be a password): the service restarted, once
  checks    ``workwatch`` (between daemon and status-check modes), ``worktimeout``,
            ``workintvl``: from the next cycle, without a restart
  later     ``initdelay``, ``workbackoff``, ``workstable``, ``workretry``: at their next use
  daemons   /etc/service: new services started, removed ones stopped, a running one
            whose ./run changed since it started restarted

During the initdelay the boot path applies the network and service changes at its end.
A change that touches nothing else touches nothing else: a new firewall port leaves the
service, dropbear and the daemons running.  A dry run reports the same list and changes
nothing.  The reload and what it changed go to the log and the journal; ``srvctl why``
names the latest one.
"""

import json

from fsm_init.config import workcfg as config
from fsm_init.core import log, status
from fsm_init.core.records import NamedTuple
from fsm_init.core.table import DAEMON, NON_DAEMON, STATUS_CHECK, STOPPABLE
from fsm_init.steps import start

SERVICE_KEYS = ("workstart", "workuser", "workready", "workwatchdog")  # what the service is given
CYCLE_KEYS = ("workwatch", "worktimeout", "workintvl")
LATER_KEYS = ("initdelay", "workbackoff", "workstable", "workretry")
NETWORK_SECTIONS = {"firewall": "firewall", "sshsrv": "ssh", "inetdail": "pppoe"}
STEPS = ("firewall", "ssh", "pppoe", "service", "checks", "later", "daemons")
# Where a reload can be taken: the service's own states once the start-up is done.
# Elsewhere the boot path or a restart is reading the configuration anyway, or fsm-init stops.
RELOADABLE = ("idle", "delay", "restart_interval", "watch", "check", "gave_up", "foreground")
# What the boot path applies after the initdelay: a reload during it does none of it early.
BOOT_STEPS = ("firewall", "ssh", "pppoe", "service")
AT_DELAY_END = "when the initdelay ends"
ACTIONS = {
    "firewall": "re-apply the rules (one iptables-restore per family, atomically)",
    "service": "restart the service",
    "checks": "from the next cycle, without a restart",
    "later": "at its next use, without a restart",
}


class Change(NamedTuple):
    step: str  # one of STEPS
    what: str  # the keys (or daemons) that changed, described
    action: str  # what the reload does about it

    def line(self) -> str:
        return f"{self.step}: {self.what}: {self.action}"


def _shown(value) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _section_changes(old: dict, new: dict, section: str) -> list[str]:
    """Each key of section whose value differs, as "section.key old -> new" (a secret
    only as "section.key changed")."""
    a, b = old.get(section) or {}, new.get(section) or {}
    said = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            path = f"{section}.{key}"
            said.append(f"{path} changed" if path in config.SECRET_KEYS
                        else f"{path} {_shown(a.get(key))} -> {_shown(b.get(key))}")
    return said


def _changed_keys(old: dict, new: dict, keys) -> list[str]:
    said = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            said += _section_changes(old, new, key)
        else:
            said.append(f"{key} {_shown(a)} -> {_shown(b)}")
    return said


def _toggle(old: dict, new: dict, section: str, daemon: str) -> str:
    was, now = (c[section]["enable"] == "yes" for c in (old, new))
    if was and now:
        return f"restart {daemon}"
    if now:
        return f"start {daemon}"
    if was:
        return f"stop {daemon}"
    return f"nothing to run ({section}.enable is no)"


def diff(old: dict, new: dict, command_line: bool = False, leader_gone: bool = False) -> list[Change]:
    """The changes from the running effective config old to new, one per step, in boot order.
    command_line: fsm-init was given a command, which runs instead of workstart.
    leader_gone: the instance runs on without its leader (status-check mode allows that)."""
    changes = []
    for section, step in NETWORK_SECTIONS.items():
        said = _section_changes(old, new, section)
        if said:
            action = ACTIONS["firewall"] if step == "firewall" else \
                _toggle(old, new, section, "dropbear" if step == "ssh" else "the dial-up (pppd)")
            changes.append(Change(step, ", ".join(said), action))
    own = set(config.defaults())
    service = [k for k in SERVICE_KEYS if not (command_line and k == "workstart")]
    later = list(LATER_KEYS) + (["workstart"] if command_line else [])
    checks = list(CYCLE_KEYS)
    modes = start.mode(old).kind, start.mode(new).kind
    gone = modes == (STATUS_CHECK, DAEMON) and leader_gone  # daemon mode would wait for an exit that has been
    if modes[0] != modes[1] and NON_DAEMON in modes or gone:
        checks.remove("workwatch")  # into or out of non-daemon mode: a new instance
        service.append("workwatch")
    said = _changed_keys(old, new, service)
    if gone:
        said = [f"{s} (daemon mode, and the service's leader has exited: nothing to watch)"
                if s.startswith("workwatch ") else s for s in said]
    said += [f"the service's own section {k!r} (its $SRVCFG)" for k in sorted((set(old) | set(new)) - own)
             if old.get(k) != new.get(k)]
    if said:
        changes.append(Change("service", ", ".join(said), ACTIONS["service"]))
    for step, keys in (("checks", checks), ("later", later)):
        said = _changed_keys(old, new, keys)
        if said:
            changes.append(Change(step, ", ".join(said), ACTIONS[step]))
    return changes


def daemon_changes(plan: dict[str, list[str]]) -> list[Change]:
    """Daemons.reload_plan() as changes: one line per kind."""
    actions = {"added": "start it", "removed": "stop it", "changed": "restart it"}
    words = {"added": "new service", "removed": "removed service", "changed": "run changed"}
    return [Change("daemons", f"{words[kind]} {', '.join(names)}", actions[kind].replace(
        "it", "them") if len(names) > 1 else actions[kind])
        for kind, names in plan.items() if names and kind in actions]


def with_environment(changes: list[Change], names: list[str], directory: str) -> list[Change]:
    """changes with the container environment's changed variables (names only: a value may
    be a password) in the service step: the service restarted, once, with the new one."""
    if not names:
        return changes
    what = f"environment {', '.join(names)} changed ({directory})"
    service = [c for c in changes if c.step == "service"]
    if service:
        return [c._replace(what=f"{c.what}, {what}") if c.step == "service" else c for c in changes]
    changed = changes + [Change("service", what, ACTIONS["service"])]
    return sorted(changed, key=lambda c: STEPS.index(c.step))


class Reloader:
    """The engine's `srvctl reload`: reads, compares and applies through the engine's steps."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.last = ""  # the latest reload, for `srvctl why`

    def request(self, dry_run: bool) -> dict:
        engine = self.engine
        verb = "srvctl reload" + (" --dry-run" if dry_run else "")
        if engine.state not in RELOADABLE:
            return self._reply(False, [f"cannot reload during {engine.state}: " + (
                "fsm-init is stopping" if engine.state not in STOPPABLE else
                "the start-up or a restart is under way, and it reads the configuration anyway; try again")])
        notes, document, new = self._read(dry_run)
        if isinstance(notes, Refusal):
            if not dry_run:
                log.error(f"{verb}: configuration refused, the running one is kept: " + "; ".join(notes.lines))
                self._journal(f"{verb} refused: " + "; ".join(notes.lines))
            return self._reply(False, ["configuration refused, the running one is kept:", *notes.lines])
        gone = engine.service.instance is not None and not engine.service.leader_alive
        changes = diff(engine.config, new, engine.command_line is not None, gone) if new is not None else []
        environ, found, names, why = engine.container_env.reread(engine.environ)
        if why:
            notes = notes + [f"environment: {why}"]
        changes = with_environment(changes, names, engine.container_env.directory)
        plan = engine.daemons.reload_plan()
        changes += daemon_changes(plan)
        changes = self._adjust(changes)
        notes += [f"daemons: {line}" for line in plan.get("unread", [])]
        lines = notes + [c.line() for c in changes]
        if not changes:
            return self._reply(True, lines + ["no change: nothing to apply"], changed=False)
        if dry_run:
            return self._reply(True, [f"would apply {len(changes)} change(s):", *lines], changed=True)
        if found is not None and names:
            engine.environ = engine.daemons.environ = environ  # the daemons: at their next start
            engine.container_env.accept(environ, found)
        failed = self._apply(changes, new, document, plan)
        summary = "; ".join(c.line() for c in changes)
        self.last = f"last reload at {log.clock(engine.system.wall())} applied {summary}" + \
            "".join(f"; {line}" for line in failed)
        return self._reply(not failed, [f"applied {len(changes)} change(s):", *lines, *failed], changed=True)

    @staticmethod
    def _reply(ok: bool, lines: list[str], changed: bool = False) -> dict:
        return {"ok": ok, "message": "\n".join(lines), "lines": lines, "changed": changed}

    def _read(self, dry_run: bool):
        """(notes, the document, the new effective config), or a Refusal."""
        engine = self.engine
        source = engine.source
        if not engine.has_config or source is None or source.path is None:
            return ["config: no service directory, so no workcfg.json to read"], None, None
        if source.memory is not None:
            return [f"config: {source.path} is not read: $SRVCFG serves from memory for this container start"], \
                None, None
        document, error = source.reread(dry_run)
        if document is None and not error:
            return [f"config: no {source.path}: the running configuration is kept"], None, None
        if document is None:
            return Refusal([f"error: {error}"]), None, None
        from fsm_init.config import schema as config_schema

        effective, problems = config_schema.validate(document)
        if problems:
            return Refusal([f"problem: {p.describe()}" for p in problems]), None, None
        return [f"config: {source.path} read again"], document, effective

    def _adjust(self, changes: list[Change]) -> list[Change]:
        """What the service can have now: fsm-init restarts no non-daemon service."""
        engine = self.engine
        adjusted = []
        for change in changes:
            if change.step in BOOT_STEPS and engine.state == "delay":
                change = change._replace(action=AT_DELAY_END)  # nothing of it runs yet: the boot path applies it
            elif change.step == "service" and engine.state == "foreground":
                change = change._replace(action="not applied: the service runs in non-daemon mode and fsm-init "
                                                "does not restart it (restart the container)")
            adjusted.append(change)
        return adjusted

    def _apply(self, changes: list[Change], new: dict | None, document: dict | None, plan: dict) -> list[str]:
        """Each change by its step; returns a line for each step that cannot be done here."""
        engine = self.engine
        failed = []
        steps = {c.step for c in changes if c.action != AT_DELAY_END}
        for change in changes:
            log.info(f"srvctl reload: {change.line()}")
        if new is not None and document is not None:
            old_period = engine.mode.period
            engine.config = new
            if engine.state != "foreground":  # there the instance keeps its non-daemon mode (_adjust)
                engine.mode = start.mode(new)
            engine.source.accept(document)
            if "firewall" in steps:
                engine.network.apply_firewall(new, engine.has_config)
            for step in ("ssh", "pppoe"):
                if step in steps:
                    engine.network.apply(step, new, engine.has_config)
            failed = [f"{step}: unavailable: {engine.network.unavailable[step]}"
                      for step in ("firewall", "ssh", "pppoe") if step in steps and step in engine.network.unavailable]
            if "firewall" in steps:  # IPv4 applied, IPv6 not: its rules in force are the old ones
                failed += [f"firewall: IPv6 not applied: {p}" for p in engine.network.firewall.problems]
            if "checks" in steps:
                self._retime(old_period)
        if "daemons" in steps:
            engine.daemons.reload(plan["changed"])
        # Journalled before the restart it may set off, which comes after it there.
        self._journal("srvctl reload: " + "; ".join([c.line() for c in changes] + failed))
        if "service" in steps and engine.state != "foreground" and engine.may_restart_request():
            engine.service.restart_requested = True
            engine.fire("restart_request", "srvctl reload: " + next(c.what for c in changes if c.step == "service"))
        return failed

    def _retime(self, old_period: int | None) -> None:
        """A new workwatch: the next cycle at the new period (daemon mode: no more cycles)."""
        engine = self.engine
        if engine.mode.period == old_period:
            return
        if engine.mode.kind == STATUS_CHECK:
            engine.checks.rebase(engine.mode.period)
        if engine.state == "watch":
            engine.loop.cancel("cycle")
            engine.supervise.watch()

    def _journal(self, cause: str) -> None:
        engine = self.engine
        entry = status.transition(engine.system.wall(), engine.state, engine.state, "reload", {}, cause,
                                  engine.service.run_count)
        engine.history.journal.record(entry, engine.explain.snapshot)


class Refusal(NamedTuple):
    lines: list[str]
