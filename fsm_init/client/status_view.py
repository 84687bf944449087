"""``fsm-init status``: what the running fsm-init is doing, and why.

usage: fsm-init status [--json] [--once] [--interval S]

A client process, never PID 1: it asks the engine over the control socket for its
``status`` snapshot and its ``why`` paragraph, and reads the last transitions from
the journal ($FSM_INIT_RUN_DIR/journal.jsonl).  On a terminal it is a rich live
view, polled every ``--interval`` seconds (0.5) and redrawn only when what it shows
has changed (a new state, a check result, the clock of "for 12s" moving on, the
terminal's size).  ``rich.live.Live`` runs with ``auto_refresh=False``, so there is
no refresh thread: one loop polls, compares and redraws.  Off a terminal, or with
``--json`` or ``--once``, it prints one frame and exits: plain ``key: value`` text,
or JSON (the snapshot plus "why", "history", "running" and "last_seen").

rich is imported only to draw on a terminal; nothing on the engine's path imports
this module (``cli`` dispatches to it only for ``fsm-init status``).

The lifecycle line ("path") is derived from ``fsm_init.core.table``, not written out: a
walk from the initial state along the transitions the engine takes in the course of
the snapshot's mode, each guard assumed as ``ASSUMED`` says, the instance guard
followed as the triggers start and end one.  States the walk passes twice show the
loop ("↺"); a transition back to the step before shows as "⇄" (watch ⇄ check);
a step only sometimes taken (initdelay) is in parentheses; every other state is
listed "off the path".  The current state is marked (▶ and reverse video).

When no engine answers: with a status.json or journal in the run directory, the last
recorded state under a banner "fsm-init is not running (last seen ...)", exit 3;
with neither, one line on stderr, exit 3.  A live view whose engine goes away shows
that banner and keeps polling until the engine is back or Ctrl-C.

Exit codes: 0 the engine answered, 1 a bad answer, 2 usage, 3 no engine answers.
"""

import json
import os
import re
import sys
import time
from collections import namedtuple

from fsm_init.client.srvctl import describe_daemon, describe_readiness
from fsm_init.core import control, journal, table
from fsm_init.core.log import clock, escape
from fsm_init.core.table import DAEMON, NON_DAEMON, STATUS_CHECK  # the modes, named once

USAGE = "usage: fsm-init status [--json] [--once] [--interval S]\n"
HELP = USAGE + """
Show what the running fsm-init is doing and why: state and time in it, mode,
target, the service's pid, uptime, restarts and last exit, health, the supporting
services, the last check results, the last transitions with their causes, srvctl
why's paragraph and the path through the lifecycle with the current state marked.

  --json        one JSON object: the status snapshot plus "why", "history" (the
                journal's last transitions), "running" and "last_seen"
  --once        print one frame and exit (the default off a terminal)
  --interval S  seconds between polls of the live view (default 0.5)

exit status: 0 fsm-init answered, 1 bad answer, 2 usage, 3 fsm-init is not running
"""
OK, FAILED, USAGE_ERROR, NO_ENGINE = 0, 1, 2, 3
INTERVAL = 0.5
TIMEOUT = 2.0  # per request: a stuck engine must not freeze the view for long
SHOWN_TRANSITIONS = 8  # rows of the view (chained transitions share a row)
READ_TRANSITIONS = 60  # journal entries read for them
JSON_HISTORY = 20
SUPPORTING = ("firewall", "ssh", "pppoe")  # shown as "off" when the snapshot has no line


# How the lifecycle path reads the table (kept in step with it by tests/unit/test_status_view.py):
# each guard's value in the normal course: True, False, or None for "either way".
# The mode's guards come from the snapshot, has_instance from the walk itself.
ASSUMED = {
    "delay_due": None,          # the first start only: an optional step
    "has_command": True,        # the path of a service (idle is off the path)
    "checks_passed": None,      # a passing cycle goes back to watch, a failing one restarts
    "operator_request": False,  # srvctl restart is not the normal course
    "retries_exhausted": False,
    "give_up_exits": None,
    "keeps_supervising": None,  # /etc/service daemons or shutdown scripts keep the engine
}
MODE_GUARDS = {"non_daemon": NON_DAEMON, "daemon_mode": DAEMON}
INSTANCE_GUARD = "has_instance"
# Triggers of the normal course (the rest are operator requests, stop and failures to
# spawn), the modes a trigger happens in when not all, and what a trigger does to the
# instance the walk follows.
ON_COURSE = {"begin", "done", "spawned", "settled", "service_exit", "cycle_due", "checks_done", "group_gone"}
OFF_COURSE = {"stop", "restart_request", "spawn_failed", "script_failed"}
TRIGGER_MODES = {"cycle_due": {STATUS_CHECK}, "settled": {NON_DAEMON}}
INSTANCE_EFFECT = {"spawned": True, "group_gone": False}

Frame = namedtuple("Frame", "status why history running last_seen source now error", defaults=("",))
Step = namedtuple("Step", "state instance optional back")  # back: the previous step is also reached from here
Path = namedtuple("Path", "steps loop_at off")  # loop_at: index the last step returns to, or None


# -- the lifecycle path from the table -----------------------------------------------------


def _row_chance(row: dict, guards: dict) -> str:
    """"never", "maybe" or "always": whether the row's guards pass under ``guards``."""
    values = [guards.get(g) for g in row["conditions"]] + [
        None if guards.get(g) is None else not guards[g] for g in row["unless"]]
    if any(v is False for v in values):
        return "never"
    return "always" if all(v is True for v in values) else "maybe"


def _candidates(state: str, guards: dict, mode: str) -> list[tuple[dict, str]]:
    """The rows the engine may take from ``state`` in the normal course, with their chance."""
    found, decided = [], set()
    for row in table.TRANSITIONS:
        trigger = row["trigger"]
        if row["source"] != state or trigger not in ON_COURSE or trigger in decided:
            continue
        if mode not in TRIGGER_MODES.get(trigger, {mode}):
            continue
        chance = _row_chance(row, guards)
        if chance == "never":
            continue
        found.append((row, chance))
        if chance == "always":  # later rows of this trigger are never tried
            decided.add(trigger)
    return found


def lifecycle(mode: str) -> Path:
    """The path through the table that the engine takes in ``mode``."""
    names = [name for name, _ in table.STATES]
    order = {name: i for i, name in enumerate(names)}
    base = dict(ASSUMED)
    base.update({guard: mode == value for guard, value in MODE_GUARDS.items()})
    state, instance = getattr(table, "INITIAL", names[0]), False
    steps = [Step(state, instance, False, False)]
    seen = {(state, instance): 0}
    loop_at = None
    while True:
        guards = dict(base, **{INSTANCE_GUARD: instance})
        candidates = _candidates(state, guards, mode)
        if not candidates:
            break
        moves = [(row, chance, INSTANCE_EFFECT.get(row["trigger"], instance)) for row, chance in candidates]
        fresh = [m for m in moves if (m[0]["dest"], m[2]) not in seen]
        if len(steps) > 1 and any(row["dest"] == steps[-2].state for row, _, _ in moves):
            steps[-1] = steps[-1]._replace(back=True)
        if not fresh:
            row, _, after = moves[0]
            loop_at = seen.get((row["dest"], after))
            break
        row, chance, instance = min(fresh, key=lambda m: order.get(m[0]["dest"], len(order)))
        state = row["dest"]
        seen[(state, instance)] = len(steps)
        steps.append(Step(state, instance, chance == "maybe" and len(moves) > 1, False))
    on_path = {s.state for s in steps}
    return Path(steps, loop_at, [name for name in names if name not in on_path])


def current_index(path: Path, status: dict) -> int | None:
    """The step of the path the snapshot is in (a state passed twice: by its instance)."""
    state = status.get("state")
    matches = [i for i, s in enumerate(path.steps) if s.state == state]
    if not matches:
        return None
    instance = status.get("service_pid") is not None
    return next((i for i in matches if path.steps[i].instance == instance), matches[0])


def path_lines(status: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(label, [(text, kind)])]: kind is "state", "current", "sep" or "note"."""
    path = lifecycle(status.get("mode") or STATUS_CHECK)
    current = current_index(path, status)
    split = path.loop_at if path.loop_at is not None else len(path.steps)
    lines = []

    def parts(indices):
        out = []
        for n, i in enumerate(indices):
            step = path.steps[i]
            if n:
                out.append((" ⇄ " if step.back else " › ", "sep"))
            name = f"({step.state})" if step.optional else step.state
            out.append((name, "current" if i == current else "state"))
        return out

    if split:
        lines.append(("path", parts(list(range(split)))))
    if path.loop_at is not None:
        loop = parts(list(range(split, len(path.steps))))
        loop.append((f" ↺ back to {path.steps[path.loop_at].state}", "note"))
        lines.append(("loop", loop))
    off = []
    for n, name in enumerate(path.off):
        if n:
            off.append((" · ", "sep"))
        off.append((name, "current" if name == status.get("state") else "state"))
    if off:
        lines.append(("off path", off))
    return lines


# -- getting a frame ------------------------------------------------------------------------


class BadAnswer(Exception):
    pass


class JournalCache:
    """journal.read, again only when journal.jsonl (or its rotation) changed."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.entries: list[dict] = []

    def read(self, run_dir: str, limit: int) -> list[dict]:
        key = tuple(_stamp(os.path.join(run_dir, name)) for name in (journal.JOURNAL, journal.JOURNAL + ".1"))
        key += (run_dir, limit)
        if key != self.key:
            self.key, self.entries = key, journal.read(run_dir, limit)
        return self.entries


def _stamp(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def take(settings, limit: int = READ_TRANSITIONS, cache: JournalCache | None = None) -> Frame:
    """A frame from the engine, or the last recorded one (running False; status {}: nothing recorded)."""
    read = (cache or JournalCache()).read
    path = settings.control_socket
    try:
        reply = control.request(path, "status", timeout=TIMEOUT)
    except (OSError, ValueError) as e:
        frame = recorded(settings.run_dir, read(settings.run_dir, limit))
        error = f"no fsm-init answers on {path} ({getattr(e, 'strerror', None) or e})"
        return frame._replace(error=error) if frame else Frame({}, "", [], False, None, path, time.time(), error)
    status = reply.get("status") if isinstance(reply, dict) else None
    if not isinstance(status, dict) or not isinstance(status.get("state"), str):
        raise BadAnswer(f"the engine on {path} answered without a state: {reply!r:.200}")
    try:
        answer = control.request(path, "why", timeout=TIMEOUT)
        why = answer.get("message", "") if isinstance(answer, dict) else ""
    except (OSError, ValueError):
        why = ""
    return Frame(status, why, read(settings.run_dir, limit), True, None, path, time.time())


def recorded(run_dir: str, history: list[dict]) -> Frame | None:
    """The last state fsm-init recorded in ``run_dir`` (status.json, else the journal), or None."""
    status_path = os.path.join(run_dir, journal.STATUS)
    status = None
    try:
        with open(status_path, "rb") as f:
            status = json.loads(f.read())
    except (OSError, ValueError):
        pass
    if not isinstance(status, dict) or not isinstance(status.get("state"), str):
        status = None
        if not history:
            return None
        last = history[-1]
        status = {"state": last.get("to"), "last_transition": last, "restarts": last.get("restarts")}
        status_path = os.path.join(run_dir, journal.JOURNAL)
    stamps = [s for s in (_stamp(os.path.join(run_dir, n)) for n in (journal.STATUS, journal.JOURNAL)) if s]
    last_seen = max(s[0] for s in stamps) / 1e9 if stamps else None
    last = status.get("last_transition") or {}
    why = f"{status['state']}: {last.get('cause') or 'from ' + str(last.get('from') or 'boot')}"
    if last.get("time"):
        why += f" at {clock(last['time'])}"
    return Frame(status, why + " (as last recorded)", history, False, last_seen, status_path, time.time())


# -- plain text and JSON ---------------------------------------------------------------------


def span(seconds) -> str:
    """12s, 4m 05s, 2h 03m, 3d 04h."""
    try:
        s = max(0, int(seconds))
    except (TypeError, ValueError, OverflowError):
        return "?"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def banner(frame: Frame) -> str:
    if frame.running:
        return ""
    # A timeout is an engine too busy or stuck to answer, not one that is gone.
    head = "fsm-init does not answer" if "timed out" in frame.error else "fsm-init is not running"
    if frame.last_seen is None:
        return f"{head}: {frame.error or 'nothing is recorded'}"
    return (f"{head} (last seen {clock(frame.last_seen)}, "
            f"{span(frame.now - frame.last_seen)} ago): the last recorded state, from {frame.source}")


def facts(frame: Frame) -> list[tuple[str, str, str]]:
    """(label, text, tone) for the head of the view; tone: "", "good", "warn", "bad", "dim"."""
    s = frame.status
    last = s.get("last_transition") or {}
    state = str(s.get("state"))
    if frame.running and s.get("since") is not None:
        when = f"for {span(s['since'])}"
    elif frame.running and last.get("time"):
        when = f"for {span(frame.now - last['time'])}"
    else:
        when = f"since {clock(last['time'])}" if last.get("time") else ""
    healthy = s.get("healthy")
    state_tone = "bad" if state in _finals() or state == "gave_up" else ("good" if healthy else "warn")
    mode = str(s.get("mode") or "?") + (f", checks every {s['period']}s" if s.get("period") else "")
    pid = s.get("service_pid")
    service = (f"pid {pid}" + (f", up {span(s['uptime'])}" if s.get("uptime") is not None else "")) if pid \
        else "not running"
    restarts = str(s.get("restarts", "?"))
    if s.get("failures"):
        restarts += f" ({s['failures']} failure{'s' if s['failures'] != 1 else ''} since a stable run)"
    last_exit = s.get("last_exit")
    ready = describe_readiness(s.get("readiness"))
    return [
        ("state", f"{state} {when}".strip(), state_tone),
        ("mode", mode, ""),
        ("service", service, "" if pid else "warn"),
        ("target", s.get("target") or "(none: built-in defaults)", "" if s.get("target") else "dim"),
        ("restarts", restarts, "warn" if s.get("restarts") else ""),
        ("last exit", "-" if last_exit is None else str(last_exit), "bad" if last_exit else ""),
        ("health", "?" if healthy is None else ("healthy" if healthy else "not healthy"),
         "dim" if healthy is None else ("good" if healthy else "warn")),
        *([("ready", ready, "good" if s["readiness"].get("ready") else "warn")] if ready else []),
        ("fsm-init", f"pid {s['pid']}" if s.get("pid") is not None else "?", "dim"),
    ]


def _finals() -> set:
    sources = {s for row in table.TRANSITIONS
               for s in (row["source"] if isinstance(row["source"], (list, tuple)) else [row["source"]])}
    return {name for name, _ in table.STATES if name not in sources}


def supporting(status: dict) -> list[tuple[str, str, str]]:
    texts = dict(status.get("supporting") or {})
    names = list(SUPPORTING) + [n for n in texts if n not in SUPPORTING]
    out = []
    for name in names:
        text = texts.get(name)
        if text is None:
            out.append((name, "off", "dim"))
        else:
            text = str(text)
            tone = "bad" if text.startswith("unavailable") else ("dim" if text == "disabled" else
                                                                 "warn" if text.startswith("not running") else "good")
            out.append((name, text, tone))
    for daemon in status.get("daemons") or []:
        tone = "good" if daemon.get("state") == "running" else "dim" if daemon.get("state") == "down" else "warn"
        out.append((f"daemon {daemon.get('name')}", describe_daemon(daemon), tone))
    if status.get("log_dropped"):
        out.append(("log", f"{status['log_dropped']} line(s) dropped while the log reader stalled", "warn"))
    for path, problem in (status.get("write_problems") or {}).items():  # a full or read-only disk
        out.append(("cannot write", f"{path}: {problem}", "bad"))
    return out


def check_result(check: dict) -> tuple[str, bool]:
    code = check.get("exit")
    if code is None:
        return "timed out", False
    return ("ok", True) if code == 0 else (f"exit {code}", False)


def transition_rows(history: list[dict], limit: int = SHOWN_TRANSITIONS) -> list[tuple[str, str, list, str]]:
    """The journal as rows (time, "from → to", triggers, cause), newest first.

    triggers: [(trigger, guards, count)].  A transition without a cause that goes on
    from where the row before it ended joins that row ("load_config → firewall → ssh →
    pppoe → start"), so the causes (a failed check, an exit, srvctl restart) stay on
    screen through a restart's long way round.
    """
    rows: list[list] = []
    for entry in history:
        row = rows[-1] if rows else None
        trigger, guards = str(entry.get("trigger") or ""), dict(entry.get("guards") or {})
        if row and not entry.get("cause") and entry.get("from") == row[1][-1]:
            row[1].append(entry.get("to"))
            last = row[2][-1]  # the chain's own guards are left to srvctl history
            if last[0] == trigger and not last[1]:
                last[2] += 1
            else:
                row[2].append([trigger, {}, 1])
            continue
        rows.append([clock(entry.get("time")), [entry.get("from") or "-", entry.get("to")],
                     [[trigger, guards, 1]], str(entry.get("cause") or "")])
    rows = _fold_repeats(rows)
    return [(when, " → ".join(str(s) for s in states), [tuple(t) for t in triggers], cause)
            for when, states, triggers, cause in reversed(rows[-limit:] if limit else rows)]


def _row_key(row: list):
    """Rows that differ only in numbers (check cycle 38 due, 39, 40) are the same."""
    return (tuple(row[1]), repr(row[2]), re.sub(r"\d+", "#", row[3]))


def _fold_repeats(rows: list[list]) -> list[list]:
    """A run of the same row, or the same two rows (watch → check, check → watch, cycle
    after cycle), folds into one row: "watch → check → watch", "every check passed
    (×12 since 10:40:05)".  The steady state takes one line and the last failure stays in view."""
    out, i = [], 0
    while i < len(rows):
        for period in (1, 2):
            block = rows[i:i + period]
            keys = [_row_key(r) for r in block]
            n = 1
            while len(rows[i + n * period:i + (n + 1) * period]) == period and \
                    [_row_key(r) for r in rows[i + n * period:i + (n + 1) * period]] == keys:
                n += 1
            if len(block) == period and n >= 2:
                last = rows[i + (n - 1) * period:i + n * period]
                states = list(block[0][1])
                for r in block[1:]:
                    states += r[1][1:] if r[1][0] == states[-1] else r[1]
                triggers = [t for r in block for t in r[2]]
                out.append([last[0][0], states, triggers, f"{last[-1][3]} (×{n} since {block[0][0]})".lstrip()])
                i += n * period
                break
        else:
            out.append(rows[i])
            i += 1
    return out


def describe_triggers(triggers: list, yes: str = "=yes", no: str = "=no", times: str = "x") -> str:
    """"checks_done checks_passed=no", "done x4, spawned non_daemon=no daemon_mode=no"."""
    return ", ".join(name + (f" {times}{count}" if count > 1 else "")
                     + "".join(f" {g}{yes if v else no}" for g, v in guards.items())
                     for name, guards, count in triggers)


PLAIN_SEPARATORS = ((" › ", " > "), (" ⇄ ", " <> "), (" · ", ", "), (" ↺ back to ", " > back to "))


def _escaped(value):
    """Every string in a snapshot, a journal entry or srvctl why's text with its control
    characters escaped (log.escape): a check's output, a file name, a daemon's name or a
    PPPoE access concentrator's name from the network must not reach the terminal raw."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escaped(v) for v in value]
    return value


def shown(frame: Frame) -> Frame:
    """The frame as the plain and rich views show it (--json keeps it as it is: JSON escapes)."""
    return frame._replace(status=_escaped(frame.status), why=_escaped(frame.why), history=_escaped(frame.history),
                          error=_escaped(frame.error), source=_escaped(frame.source))


def plain(frame: Frame) -> str:
    frame = shown(frame)
    lines = []
    if not frame.running:
        lines.append(banner(frame))
    if not frame.status:
        return "\n".join(lines) + "\n"
    for label, text, _ in facts(frame):
        lines.append(f"{label + ':':<11} {text}")
    for name, text, _ in supporting(frame.status):
        lines.append(f"{name + ':':<11} {text}")
    for check in frame.status.get("checks") or []:
        result, passed = check_result(check)
        line = (f"check:      {check.get('name')}: {result} in {check.get('duration', 0):.2f}s "
                f"at {clock(check.get('at'))}")
        lines.append(line + (f": {check['output']}" if check.get("output") and not passed else ""))
    lines.append(f"why:        {frame.why or '-'}")
    for label, parts in path_lines(frame.status):
        text = "".join(f"[{t}]" if kind == "current" else t for t, kind in parts)
        for fancy, ascii_ in PLAIN_SEPARATORS:
            text = text.replace(fancy, ascii_)
        lines.append(f"{label + ':':<11} {text}")
    if frame.history:
        lines.append("transitions (newest first):")
        for when, move, triggers, cause in transition_rows(frame.history):
            lines.append(f"  {when} {move.replace('→', '->')} ({describe_triggers(triggers)})"
                         + (f": {cause}" if cause else ""))
    return "\n".join(lines) + "\n"


def as_json(frame: Frame) -> str:
    return json.dumps(dict(frame.status, why=frame.why, history=frame.history, running=frame.running,
                           last_seen=frame.last_seen), indent=2)


# -- the rich view ---------------------------------------------------------------------------

TONES = {"good": "green", "warn": "yellow", "bad": "bold red", "dim": "dim", "": ""}


def render(frame: Frame):
    """The rich renderable of one frame (tests print it to a Console(record=True))."""
    from rich import box
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    # Escaped, and every text from the snapshot handed to rich as Text, never as a str
    # rich would read markup in ("[reverse]", "[link=...]" in a check's or daemon's name).
    frame = shown(frame)
    parts: list = []
    if not frame.running:
        parts.append(Panel(Text(banner(frame), style="bold red"), border_style="red", box=box.HEAVY))
    if not frame.status:
        return Group(*parts)

    head = Table.grid(padding=(0, 2))
    for _ in range(2):
        head.add_column(style="bold cyan", no_wrap=True)
        head.add_column()
    rows = facts(frame)
    if len(rows) % 2:  # an odd fact (the ready line) gets an empty neighbour, not dropped
        rows.append(("", "", ""))
    for left, right in zip(rows[::2], rows[1::2], strict=False):
        head.add_row(Text(left[0]), Text(left[1], style=TONES[left[2]]), Text(right[0]),
                     Text(right[1], style=TONES[right[2]]))
    services = Table.grid(padding=(0, 2))
    services.add_column(style="bold cyan", no_wrap=True, min_width=max(len(label) for label, _, _ in rows[::2]))
    services.add_column(ratio=1)
    for name, text, tone in supporting(frame.status):
        services.add_row(Text(name), Text(text, style=TONES[tone]))
    title = "fsm-init status" + ("" if frame.running else " (not running)")
    parts.append(Panel(Group(head, services), title=f"[bold]{title}[/]", title_align="left",
                       border_style="cyan" if frame.running else "red"))

    parts.append(Panel(Text(frame.why or "-"), title="why", title_align="left", border_style="blue"))

    path = Table.grid(padding=(0, 1))
    path.add_column(style="dim", no_wrap=True)
    path.add_column()
    styles = {"current": "bold reverse", "state": "", "sep": "dim", "note": "dim italic"}
    for label, line in path_lines(frame.status):
        units: list = []
        for piece, kind in line:
            # A line breaks only before " › ", " · " or the loop's note: never inside "watch ⇄ check".
            if not units or (kind in ("sep", "note") and piece != " ⇄ "):
                units.append(Text())
            units[-1].append("▶" + piece if kind == "current" else piece, style=styles[kind])
        path.add_row(Text(label), _Flow(units))
    parts.append(Panel(path, title="lifecycle", title_align="left", border_style="blue"))

    checks = frame.status.get("checks") or []
    if checks:
        table_ = Table(box=box.SIMPLE_HEAD, expand=True, title="last check cycle", title_justify="left",
                       title_style="bold")
        table_.add_column("check", no_wrap=True)
        table_.add_column("result", no_wrap=True)
        table_.add_column("took", justify="right", no_wrap=True)
        table_.add_column("at", no_wrap=True)
        table_.add_column("output", ratio=1)
        for check in checks:
            result, passed = check_result(check)
            table_.add_row(Text(str(check.get("name"))), Text(result, style="green" if passed else "bold red"),
                           Text(f"{check.get('duration', 0):.2f}s"), Text(clock(check.get("at"))),
                           Text("" if passed else str(check.get("output") or ""), style="red"))
        parts.append(table_)
    elif frame.status.get("mode") == STATUS_CHECK:
        parts.append(Text("no check results of this instance yet", style="dim"))

    if frame.history:
        moves = Table(box=box.SIMPLE_HEAD, expand=True, title="last transitions (newest first)",
                      title_justify="left", title_style="bold")
        moves.add_column("time", no_wrap=True)
        moves.add_column("transition", ratio=2)
        moves.add_column("cause  (trigger and guards)", ratio=3)
        for when, move, triggers, cause in transition_rows(frame.history):
            why = Text(cause)
            why.append(("  " if cause else "") + describe_triggers(triggers, " ✓", " ✗", "×"), style="dim")
            moves.add_row(Text(when), Text(move), why)
        parts.append(moves)
    else:
        parts.append(Text("no transitions in the journal", style="dim"))
    return Group(*parts)


class _Flow:
    """Text units laid out left to right, a new line only between units (rich renderable)."""

    def __init__(self, units: list) -> None:
        self.units = units

    def __rich_measure__(self, console, options):
        from rich.measure import Measurement

        widths = [u.cell_len for u in self.units] or [0]
        return Measurement(max(widths), sum(widths))

    def __rich_console__(self, console, options):
        from rich.text import Text

        line, lines = Text(), []
        for unit in self.units:
            if line.cell_len and line.cell_len + unit.cell_len > options.max_width:
                lines.append(line)
                # The separator starting the next line: keep its mark, not its space.
                unit = unit[len(unit.plain) - len(unit.plain.lstrip()):]
                line = Text()
            line.append_text(unit)
        lines.append(line)
        yield from lines


# -- the command ------------------------------------------------------------------------------


def parse(args: list[str]) -> tuple[dict | None, str]:
    options = {"json": False, "once": False, "interval": INTERVAL, "help": False}
    args = list(args)
    while args:
        arg = args.pop(0)
        name, has_value, value = arg.partition("=") if arg.startswith("--") else (arg, False, "")
        if name in ("-h", "--help") and not has_value:
            options["help"] = True
        elif name in ("--json", "--once") and not has_value:
            options[name[2:]] = True
        elif name == "--interval":
            if not has_value:
                if not args:
                    return None, "--interval needs a number of seconds"
                value = args.pop(0)
            try:
                options["interval"] = float(value)
            except ValueError:
                return None, f"--interval {value!r} is not a number of seconds"
            if not 0.05 <= options["interval"] <= 3600:
                return None, "--interval must be between 0.05 and 3600 seconds"
        else:
            return None, f"unknown argument {arg}"
    return options, ""


def main(args: list[str]) -> int:
    """``fsm-init status`` (cli.main ends it quietly when the reader goes away: ``| head``)."""
    options, problem = parse(args)
    if options is None:
        sys.stderr.write(f"fsm-init status: {problem}\n{USAGE}")
        return USAGE_ERROR
    if options["help"]:
        sys.stdout.write(HELP)
        return OK
    from fsm_init.core.settings import Settings

    settings = Settings()
    cache = JournalCache()
    limit = JSON_HISTORY if options["json"] else READ_TRANSITIONS
    try:
        frame = take(settings, limit, cache)
    except BadAnswer as e:
        sys.stderr.write(f"fsm-init status: {e}\n")
        return FAILED
    if not frame.status:
        sys.stderr.write(f"fsm-init status: {frame.error}, and nothing is recorded in {settings.run_dir}\n")
        return NO_ENGINE
    code = OK if frame.running else NO_ENGINE
    if options["json"]:
        print(as_json(frame))
        return code
    if not sys.stdout.isatty():
        sys.stdout.write(plain(frame))
        return code
    from rich.console import Console

    console = Console()
    if options["once"] or not frame.running:
        console.print(render(frame))
        return code
    return watch(settings, options["interval"], console, frame, cache)


def fingerprint(frame: Frame, size) -> str:
    """What the view shows, as text: the live view redraws only when this changes."""
    return plain(frame) + repr(tuple(size))


def watch(settings, interval: float, console, frame: Frame, cache: JournalCache,
          sleep=time.sleep, polls: int | None = None) -> int:
    """The live view: poll, compare, redraw; until Ctrl-C (or ``polls`` polls, for tests)."""
    import signal

    from rich.live import Live

    def stop(signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop) if polls is None else None
    shown = fingerprint(frame, console.size)
    try:
        with Live(render(frame), console=console, auto_refresh=False, transient=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            while polls is None or polls > 0:
                polls = None if polls is None else polls - 1
                sleep(interval)
                try:
                    frame = take(settings, READ_TRANSITIONS, cache)
                except BadAnswer as e:
                    frame = Frame({}, "", [], False, None, settings.control_socket, time.time(), str(e))
                now = fingerprint(frame, console.size)
                if now != shown:
                    live.update(render(frame), refresh=True)
                    shown = now
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return OK if frame.running else NO_ENGINE
