"""``fsm-init status``: the rich view, plain text, JSON, no engine, the live loop, import cost.

The engine is faked two ways: ``control.request`` monkeypatched (most tests), and a
real unix socket server in a thread that answers ``status`` and ``why`` as the
engine does (the subprocess tests, where nothing can be monkeypatched).  The journal
is a real journal.jsonl in a temporary run directory.  The rich view is printed to a
``Console(record=True, width=100)`` and read back with ``export_text``.
"""

import io
import json
import os
import pty
import re
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fsm_init import cli
from fsm_init.client import srvctl, status_view
from fsm_init.core import control, table
from fsm_init.client.status_view import Frame
from fsm_init.core.system import listen_unix

ROOT = Path(__file__).resolve().parents[2]
NOW = time.time()
STATE_NAMES = [name for name, _ in table.STATES]


def clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def snapshot(**changes) -> dict:
    """A status-check engine stopping its instance after a failed check (as Engine.snapshot)."""
    status = {
        "state": "restart", "since": 1.4, "mode": "status-check", "period": 5, "target": "/srv/web",
        "service_pid": 4242, "uptime": 83.2, "run_count": 3, "restarts": 2, "failures": 1, "last_exit": 1,
        "checks": [
            {"name": "PeriodicST-db", "exit": 0, "duration": 0.05, "at": NOW - 3, "output": ""},
            {"name": "PeriodicST-http", "exit": 7, "duration": 1.25, "at": NOW - 2,
             "output": "curl: (7) Failed to connect to 127.0.0.1 port 8080: Connection refused"},
        ],
        "healthy": False,
        "last_transition": {"time": NOW - 1.4, "from": "check", "to": "restart", "trigger": "checks_done",
                            "guards": {"checks_passed": False},
                            "cause": "check failed: PeriodicST-http exited 7 after 1.25s", "restarts": 2},
        "supporting": {"firewall": "unavailable: iptables not found (install iptables); inbound traffic is "
                                   "not filtered",
                       "ssh": "running, pid 31, up 80s; port 2222, password logins off"},
        "pid": 1,
    }
    status.update(changes)
    return status


WHY = ("restart: check failed: PeriodicST-http exited 7 after 1.25s (output: curl: (7) Failed to connect) "
       f"at {clock(NOW - 1.4)}; restart 2; SIGKILL at {clock(NOW + 3.6)} if it is still there")


def journal_entries() -> list[dict]:
    t = NOW - 40

    def e(offset, source, dest, trigger, cause="", guards=None, restarts=1):
        return {"time": t + offset, "from": source, "to": dest, "trigger": trigger, "guards": guards or {},
                "cause": cause, "restarts": restarts}

    return [
        e(0, "watch", "check", "cycle_due", "check cycle 3 due"),
        e(1, "check", "restart", "checks_done", "check failed: PeriodicST-http exited 7 after 1.00s",
          {"checks_passed": False}),
        e(2, "restart", "restart_interval", "group_gone", "the service's session is gone",
          {"operator_request": False, "retries_exhausted": False}),
        e(4, "restart_interval", "load_config", "done", "workintvl 2s elapsed", {"has_instance": False}),
        e(4, "load_config", "firewall", "done", "", {"delay_due": False}),
        e(4, "firewall", "ssh", "done"),
        e(4, "ssh", "pppoe", "done"),
        e(4, "pppoe", "start", "done", "", {"has_command": True}),
        e(4, "start", "restart_interval", "spawned", "", {"non_daemon": False, "daemon_mode": False}, 2),
        e(6, "restart_interval", "watch", "done", "workintvl 2s elapsed", {"has_instance": True}, 2),
        e(38, "watch", "check", "cycle_due", "check cycle 1 due", restarts=2),
        e(38.6, "check", "restart", "checks_done", "check failed: PeriodicST-http exited 7 after 1.25s",
          {"checks_passed": False}, 2),
    ]


def write_run_dir(run_dir: Path, entries=None, status=None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if entries is not None:
        (run_dir / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    if status is not None:
        (run_dir / "status.json").write_text(json.dumps(status) + "\n")


def frame(status=None, why=WHY, history=None, running=True) -> Frame:
    return Frame(snapshot() if status is None else status, why,
                 journal_entries() if history is None else history, running, None, "control.sock", NOW)


def rich_text(renderable, width=100) -> str:
    from rich.console import Console

    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def line_with(text: str, needle: str) -> str:
    found = [line for line in text.splitlines() if needle in line]
    assert found, f"no line with {needle!r} in:\n{text}"
    return found[0]


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    directory = tmp_path / "run"
    directory.mkdir()
    monkeypatch.setenv("FSM_INIT_RUN_DIR", str(directory))
    return directory


@pytest.fixture
def engine(monkeypatch, run_dir):
    """control.request answering as an engine would; returns the list of requests."""
    answers = {"status": {"ok": True, "status": snapshot()}, "why": {"ok": True, "message": WHY}}
    asked = []

    def request(path, verb, timeout=10.0):
        asked.append((path, verb))
        return answers[verb]

    monkeypatch.setattr(control, "request", request)
    write_run_dir(run_dir, journal_entries())
    return asked


# -- the rich view ---------------------------------------------------------------------------------


def test_rich_view_shows_everything_a_person_needs():
    text = rich_text(status_view.render(frame()))
    assert "fsm-init status" in text
    assert "restart for 1s" in line_with(text, "state ")
    assert "status-check, checks every 5s" in text
    assert "pid 4242, up 1m 23s" in line_with(text, "service ")
    assert "/srv/web" in text
    assert "2 (1 failure since a stable run)" in line_with(text, "restarts ")
    assert line_with(text, "last exit").split("last exit")[1].split()[0] == "1"
    assert "not healthy" in line_with(text, "health ")
    # each supporting service, the unavailable one with its reason
    assert "unavailable: iptables not found (install iptables)" in line_with(text, "firewall ")
    assert "running, pid 31, up 80s; port 2222" in line_with(text, "ssh ")
    assert "off" in line_with(text, "pppoe ")
    # the last check results with durations, and the failing one's output
    assert "ok" in line_with(text, "PeriodicST-db") and "0.05s" in line_with(text, "PeriodicST-db")
    http = line_with(text, "PeriodicST-http   exit 7")
    assert "1.25s" in http and clock(NOW - 2) in http and "curl: (7) Failed to connect" in http
    # srvctl why's paragraph
    assert "restart: check failed: PeriodicST-http exited 7" in text and "restart 2; SIGKILL at" in text


def table_rows(text: str, title: str) -> list[str]:
    """The rows of a rich table under ``title``, wrapped cells joined (one string a row)."""
    rows = []
    for line in text.split(title)[1].splitlines():
        if re.match(r"\s{2}\d\d:\d\d:\d\d\s", line):
            rows.append(line)
        elif rows and line.strip():
            rows[-1] += " " + line
    return [" ".join(row.split()) for row in rows]


def test_rich_view_transitions_with_causes_newest_first():
    rows = table_rows(rich_text(status_view.render(frame()), width=220), "last transitions (newest first)")
    assert rows[0] == (f"{clock(NOW - 40 + 38.6)} check → restart check failed: PeriodicST-http exited 7 after "
                       "1.25s checks_done checks_passed ✗")
    assert rows[1].endswith("watch → check check cycle 1 due cycle_due")
    # a restart's long way round shares one row with its cause
    assert rows[3].startswith(f"{clock(NOW - 40 + 4)} restart_interval → load_config → firewall → ssh → pppoe")
    assert "workintvl 2s elapsed done has_instance ✗, done ×4, spawned" in rows[3]
    assert rows[4].endswith("restart → restart_interval the service's session is gone group_gone "
                            "operator_request ✗ retries_exhausted ✗")
    assert len(rows) == 7


def test_healthy_cycles_fold_into_one_row_and_the_failure_stays_in_view():
    t = NOW - 100
    history = journal_entries()[:2]  # ... check -> restart (a failure)
    for n in range(12):
        history += [{"time": t + 5 * n, "from": "watch", "to": "check", "trigger": "cycle_due", "guards": {},
                     "cause": f"check cycle {n + 1} due"},
                    {"time": t + 5 * n + 0.1, "from": "check", "to": "watch", "trigger": "checks_done",
                     "guards": {"checks_passed": True}, "cause": "every check passed"}]
    rows = status_view.transition_rows(history)
    assert rows[0] == (clock(t + 55), "watch → check → watch",
                       [("cycle_due", {}, 1), ("checks_done", {"checks_passed": True}, 1)],
                       f"every check passed (×12 since {clock(t)})")
    assert rows[1][1:] == ("check → restart", [("checks_done", {"checks_passed": False}, 1)],
                           "check failed: PeriodicST-http exited 7 after 1.00s")
    assert len(rows) == 3
    text = status_view.plain(frame(history=history))
    assert (f"  {clock(t + 55)} watch -> check -> watch (cycle_due, checks_done checks_passed=yes): "
            f"every check passed (×12 since {clock(t)})\n") in text


def test_rich_view_marks_the_current_state_on_the_path():
    text = rich_text(status_view.render(frame()))
    path = text.split("lifecycle")[1]
    assert "▶restart" in path
    assert path.count("▶") == 1
    assert "boot › startup_scripts › resolve_target › custom_init" in path
    assert "watch ⇄ check" in path and "↺ back to load_config" in path


def test_current_state_is_highlighted_with_a_style():
    from rich.console import Console

    console = Console(record=True, width=100, file=io.StringIO(), force_terminal=True, color_system="standard")
    console.print(status_view.render(frame()))
    styled = console.export_text(styles=True)
    assert "\x1b[1;7m▶restart\x1b[0m" in styled  # bold reverse
    assert "\x1b[1;31munavailable: iptables" in styled  # unavailable in bold red


def test_rich_view_of_a_healthy_daemon_without_checks_or_supporting_services():
    status = snapshot(state="watch", mode="daemon", period=None, checks=[], supporting={}, failures=0,
                      restarts=0, last_exit=None, healthy=True)
    text = rich_text(status_view.render(frame(status, why="watch: waiting for the service (pid 4242) to exit")))
    assert "healthy" in line_with(text, "health ") and "not healthy" not in text
    for name in ("firewall", "ssh", "pppoe"):
        assert line_with(text, f"{name} ").split(name)[1].strip().startswith("off")
    assert "last check cycle" not in text
    assert "▶watch" in text and "check" in line_with(text, "off path")


def test_rich_view_fits_narrow_terminals():
    text = rich_text(status_view.render(frame()), width=60)
    assert max(len(line) for line in text.splitlines()) <= 60
    assert "▶restart" in text


# -- the path through the lifecycle ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["status-check", "daemon", "non-daemon"])
def test_path_covers_every_state_once_on_or_off_it(mode):
    path = status_view.lifecycle(mode)
    on = [s.state for s in path.steps]
    assert on[0] == STATE_NAMES[0]
    assert set(on) | set(path.off) == set(STATE_NAMES)
    assert not set(on) & set(path.off)
    # every step is a row of the table
    rows = {(row["source"], row["dest"]) for row in table.TRANSITIONS if isinstance(row["source"], str)}
    assert all((a.state, b.state) in rows for a, b in zip(path.steps, path.steps[1:]))


def test_path_per_mode():
    def names(mode):
        path = status_view.lifecycle(mode)
        return [s.state for s in path.steps], path.steps[path.loop_at].state if path.loop_at is not None else None

    check, back = names("status-check")
    assert check[check.index("start"):] == ["start", "restart_interval", "watch", "check", "restart",
                                            "restart_interval"]
    assert back == "load_config"
    daemon, back = names("daemon")
    assert daemon[daemon.index("start"):] == ["start", "watch", "restart", "restart_interval"]
    assert back == "load_config"
    non_daemon, back = names("non-daemon")
    assert non_daemon[non_daemon.index("start"):] == ["start", "foreground", "handover", "teardown", "exited"]
    assert back is None
    steps = status_view.lifecycle("status-check").steps
    assert [s.state for s in steps if s.optional] == ["delay"]
    assert [s.state for s in steps if s.back] == ["check"]


def test_restart_interval_is_marked_where_the_instance_says():
    path = status_view.lifecycle("status-check")
    first, second = [i for i, s in enumerate(path.steps) if s.state == "restart_interval"]
    assert status_view.current_index(path, {"state": "restart_interval", "service_pid": 7}) == first
    assert status_view.current_index(path, {"state": "restart_interval", "service_pid": None}) == second
    assert status_view.current_index(path, {"state": "no_such_state"}) is None


def test_the_path_knows_every_trigger_and_guard_of_the_table():
    """Drift guard: a new trigger or guard must be placed in the path's vocabulary."""
    triggers = {row["trigger"] for row in table.TRANSITIONS}
    assert triggers <= status_view.ON_COURSE | status_view.OFF_COURSE
    known = set(status_view.ASSUMED) | set(status_view.MODE_GUARDS) | {status_view.INSTANCE_GUARD}
    assert set(table.GUARDS) <= known


def test_the_path_is_derived_from_the_table(monkeypatch):
    """A state added to the table's boot path shows on the view's path, in its place."""
    states = list(table.STATES)
    states.insert(STATE_NAMES.index("load_config"), ("mount", "mount the volumes"))
    rows = [dict(row) for row in table.TRANSITIONS]
    for row in rows:
        if row["source"] == "daemons" and row["dest"] == "load_config":
            row["dest"] = "mount"
    rows.append({"trigger": "done", "source": "mount", "dest": "load_config", "conditions": [], "unless": []})
    monkeypatch.setattr(table, "STATES", states)
    monkeypatch.setattr(table, "TRANSITIONS", rows)
    text = rich_text(status_view.render(frame(snapshot(state="mount", service_pid=None))))
    assert "daemons › ▶mount" in text


def test_etc_service_daemons_are_listed_with_their_state_pid_and_uptime():
    daemons = [{"name": "cron", "state": "running", "pid": 12, "uptime": 30.4, "last_exit": None, "restarts": 0,
                "down_file": False},
               {"name": "memcached", "state": "backoff", "pid": None, "uptime": None, "last_exit": 1, "restarts": 3,
                "down_file": False},
               {"name": "spare", "state": "down", "pid": None, "uptime": None, "last_exit": None, "restarts": 0,
                "down_file": True}]
    text = rich_text(status_view.render(frame(snapshot(daemons=daemons))))
    assert "daemon cron       running, pid 12, up 30s" in text
    assert "daemon memcached  backoff, last exit 1, restarts 3" in text
    assert "daemon spare      down (down file)" in text
    plain = srvctl.format_status(snapshot(daemons=daemons))
    assert "daemon:     cron: running, pid 12, up 30s\n" in plain + "\n"


def test_declared_readiness_and_status_text_are_shown():
    said = {"workready": "notify", "notified": True, "status": "serving 3 clients", "phase": "reloading",
            "ready": True, "reason": "the service said it is ready (READY=1)", "ready_for": 12.0}
    status = snapshot(readiness=said)
    text = rich_text(status_view.render(frame(status)))
    assert "ready      yes (workready notify, reloading);" in text and "STATUS: serving 3 clients" in text
    assert re.search(r"│ fsm-init +pid 1 ", text)  # no fact dropped for the odd one
    assert "ready:      yes (workready notify, reloading); STATUS: serving 3 clients\n" in \
        status_view.plain(frame(status))
    assert "\nready:      yes (workready notify, reloading); STATUS: serving 3 clients\n" in \
        srvctl.format_status(status) + "\n"
    # workready checks (and the thin reaper, which has no readiness): no ready line at all.
    for quiet in (dict(said, workready="checks"), None):
        assert "ready:" not in srvctl.format_status(snapshot(readiness=quiet))
        assert "ready:" not in status_view.plain(frame(snapshot(readiness=quiet)))


def test_a_daemon_with_notification_fd_says_whether_it_is_ready():
    daemon = {"name": "web", "state": "running", "pid": 12, "uptime": 3.0, "last_exit": None, "restarts": 0,
              "down_file": False, "ready": False}
    assert srvctl.describe_daemon(daemon) == "running, pid 12, up 3s, not ready yet (notification-fd)"
    assert srvctl.describe_daemon(dict(daemon, ready=True)) == "running, pid 12, up 3s, ready"
    assert srvctl.describe_daemon(dict(daemon, ready=None)) == "running, pid 12, up 3s"


# -- plain text and JSON -------------------------------------------------------------------------------


def test_plain_text_off_a_terminal(engine, run_dir, capsys):
    assert cli.main(["status"]) == 0  # capsys: stdout is not a terminal
    out = capsys.readouterr().out
    assert "\x1b[" not in out and "╭" not in out
    assert out.startswith("state:      restart for 1s\n")
    assert "service:    pid 4242, up 1m 23s\n" in out
    assert "restarts:   2 (1 failure since a stable run)\n" in out
    assert "last exit:  1\n" in out
    assert "firewall:   unavailable: iptables not found" in out
    assert "pppoe:      off\n" in out
    assert (f"check:      PeriodicST-http: exit 7 in 1.25s at {clock(NOW - 2)}: curl: (7) Failed to connect"
            in out)
    assert f"why:        {WHY}\n" in out
    assert "> [restart] >" in line_with(out, "loop:")
    assert "watch <> check" in out
    assert "  " + clock(NOW - 40 + 38.6) + " check -> restart (checks_done checks_passed=no): check failed" in out
    assert engine == [(str(run_dir / "control.sock"), "status"), (str(run_dir / "control.sock"), "why")]


def test_json_is_the_snapshot_with_why_and_history(engine, capsys):
    assert status_view.main(["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {k: data[k] for k in snapshot()} == json.loads(json.dumps(snapshot()))
    assert data["why"] == WHY
    assert data["history"] == journal_entries()
    assert data["running"] is True and data["last_seen"] is None


def test_json_history_is_bounded(engine, run_dir, capsys):
    entries = journal_entries() * 5
    write_run_dir(run_dir, entries)
    assert status_view.main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["history"] == entries[-status_view.JSON_HISTORY:]


def test_once_on_a_terminal_prints_one_rich_frame(engine, monkeypatch, capsys):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "100")
    assert status_view.main(["--once"]) == 0
    out = capsys.readouterr().out
    assert "fsm-init status" in out and "▶restart" in out and "╭" in out


# -- no engine -------------------------------------------------------------------------------------------


def test_no_engine_and_nothing_recorded_is_one_line_and_exit_3(run_dir, capsys):
    assert cli.main(["status"]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"fsm-init status: no fsm-init answers on {run_dir}/control.sock "
                            f"(No such file or directory), and nothing is recorded in {run_dir}\n")


@pytest.mark.parametrize("flags", [[], ["--json"], ["--once"]])
def test_no_engine_with_nothing_recorded_exits_3_whatever_the_flags(run_dir, capsys, flags):
    assert status_view.main(flags) == 3
    assert capsys.readouterr().err.count("\n") == 1


def test_no_engine_shows_the_last_recorded_state_under_a_banner(run_dir, capsys):
    recorded = snapshot(state="exited", service_pid=None, uptime=None, since=0.0)
    write_run_dir(run_dir, journal_entries(), recorded)
    seen = time.time() - 90
    os.utime(run_dir / "status.json", (seen, seen))
    os.utime(run_dir / "journal.jsonl", (seen - 5, seen - 5))
    assert status_view.main([]) == 3
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"fsm-init is not running (last seen {clock(seen)}, 1m 3")
    assert f"from {run_dir}/status.json" in out.splitlines()[0]
    assert "state:      exited since" in out
    assert "unavailable: iptables not found" in out
    assert "check -> restart" in out


def test_no_engine_banner_in_the_rich_view(run_dir):
    write_run_dir(run_dir, journal_entries(), snapshot(state="gave_up", service_pid=None))
    recorded = status_view.recorded(str(run_dir), journal_entries())
    text = rich_text(status_view.render(recorded))
    assert text.splitlines()[1].lstrip("┃ ").startswith("fsm-init is not running (last seen ")
    assert "fsm-init status (not running)" in text
    assert "▶gave_up" in text
    assert "gave_up: check failed: PeriodicST-http exited 7 after 1.25s" in text  # the recorded cause


def test_no_engine_json_says_not_running(run_dir, capsys):
    write_run_dir(run_dir, journal_entries(), snapshot(state="exited"))
    assert status_view.main(["--json"]) == 3
    data = json.loads(capsys.readouterr().out)
    assert data["running"] is False and data["state"] == "exited" and data["last_seen"] > NOW - 60
    assert data["history"] == journal_entries()


def test_no_engine_and_only_a_journal(run_dir, capsys):
    write_run_dir(run_dir, journal_entries())
    assert status_view.main([]) == 3
    out = capsys.readouterr().out
    assert "fsm-init is not running (last seen" in out and "journal.jsonl" in out.splitlines()[0]
    assert out.splitlines()[1].startswith("state:      restart since ")


def test_an_engine_that_does_not_answer_in_time_is_not_called_gone(run_dir, monkeypatch, capsys):
    write_run_dir(run_dir, journal_entries(), snapshot())

    def slow(path, verb, timeout=10.0):
        raise TimeoutError("timed out")

    monkeypatch.setattr(control, "request", slow)
    assert status_view.main([]) == 3
    assert capsys.readouterr().out.startswith("fsm-init does not answer (last seen ")


def test_a_bad_answer_is_one_line_and_exit_1(monkeypatch, run_dir, capsys):
    monkeypatch.setattr(control, "request", lambda path, verb, timeout=10.0: {"ok": True, "status": {}})
    assert status_view.main([]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "without a state" in captured.err


@pytest.mark.parametrize("args", [["--frobnicate"], ["--interval"], ["--interval", "soon"], ["--interval", "0"],
                                  ["--json=yes"]])
def test_usage_errors_exit_2(args, capsys):
    assert status_view.main(args) == 2
    assert "usage: fsm-init status" in capsys.readouterr().err


def test_help(capsys):
    assert cli.main(["status", "--help"]) == 0
    assert capsys.readouterr().out.startswith(status_view.USAGE)
    cli.main(["--help"])
    assert "fsm-init status [--json] [--once] [--interval S]" in capsys.readouterr().out


# -- the live loop ---------------------------------------------------------------------------------------


def test_live_view_redraws_only_when_something_changed(engine, monkeypatch, run_dir):
    from rich.console import Console

    states = iter(["restart", "restart", "restart", "restart_interval", "restart_interval", "load_config"])
    drawn = []
    real_render = status_view.render

    def request(path, verb, timeout=10.0):
        if verb == "why":
            return {"ok": True, "message": "why"}
        return {"ok": True, "status": snapshot(state=next(states), since=0.2, uptime=83.0)}

    monkeypatch.setattr(control, "request", request)
    monkeypatch.setattr(status_view, "render", lambda f: drawn.append(f.status["state"]) or real_render(f))
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, force_interactive=True, width=100, color_system=None)
    settings = type("S", (), {"control_socket": str(run_dir / "control.sock"), "run_dir": str(run_dir)})()
    first = status_view.take(settings)
    naps = []
    code = status_view.watch(settings, 0.5, console, first, status_view.JournalCache(),
                             sleep=naps.append, polls=5)
    assert code == 0
    assert naps == [0.5] * 5
    assert drawn == ["restart", "restart_interval", "load_config"]
    assert "▶load_config" in out.getvalue()


def test_live_view_shows_the_banner_when_the_engine_goes_away(engine, monkeypatch, run_dir):
    from rich.console import Console

    write_run_dir(run_dir, journal_entries(), snapshot(state="exited"))
    settings = type("S", (), {"control_socket": str(run_dir / "control.sock"), "run_dir": str(run_dir)})()
    first = status_view.take(settings)

    def gone(path, verb, timeout=10.0):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(control, "request", gone)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, force_interactive=True, width=100, color_system=None)
    code = status_view.watch(settings, 0.5, console, first, status_view.JournalCache(), sleep=lambda s: None,
                             polls=2)
    assert code == 3
    assert "fsm-init is not running (last seen" in out.getvalue() and "▶exited" in out.getvalue()


def test_the_journal_is_read_again_only_when_it_changed(run_dir, monkeypatch):
    write_run_dir(run_dir, journal_entries())
    reads = []
    real = status_view.journal.read
    monkeypatch.setattr(status_view.journal, "read", lambda d, n: reads.append(n) or real(d, n))
    cache = status_view.JournalCache()
    assert cache.read(str(run_dir), 10) == journal_entries()[-10:]
    assert cache.read(str(run_dir), 10) == journal_entries()[-10:]
    assert len(reads) == 1
    with open(run_dir / "journal.jsonl", "a") as f:
        f.write(json.dumps({"time": NOW, "from": "restart", "to": "restart_interval", "trigger": "group_gone"}) + "\n")
    assert cache.read(str(run_dir), 10)[-1]["to"] == "restart_interval"
    assert len(reads) == 2


# -- through a real socket, in other processes -------------------------------------------------------------


class FakeEngine:
    """A unix socket server in a thread answering one JSON line per connection, as the engine."""

    def __init__(self, run_dir: Path, answers: dict) -> None:
        self.answers, self.requests = answers, []
        self.listener = listen_unix(str(run_dir / "control.sock"))
        self.listener.setblocking(True)
        self.listener.settimeout(0.1)
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                conn.settimeout(5)
                request = json.loads(conn.makefile().readline())
                self.requests.append(request)
                conn.sendall(json.dumps(self.answers[request["verb"]]).encode() + b"\n")

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def real_engine(run_dir):
    write_run_dir(run_dir, journal_entries())
    fake = FakeEngine(run_dir, {"status": {"ok": True, "status": snapshot()}, "why": {"ok": True, "message": WHY}})
    yield fake
    fake.close()


def child_env(run_dir: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSM_INIT_", "COLUMNS", "LINES"))}
    env.update(FSM_INIT_RUN_DIR=str(run_dir), PYTHONPATH=str(ROOT), **extra)
    return env


def test_status_once_in_another_process_through_the_socket(real_engine, run_dir):
    result = subprocess.run([sys.executable, "-m", "fsm_init", "status", "--once"], capture_output=True, text=True,
                            timeout=30, env=child_env(run_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("state:      restart for 1s\n")
    assert "curl: (7) Failed to connect" in result.stdout
    assert real_engine.requests == [{"verb": "status"}, {"verb": "why"}]


def test_status_on_a_pseudo_terminal_draws_the_rich_view(real_engine, run_dir):
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    proc = subprocess.Popen([sys.executable, "-m", "fsm_init", "status", "--once"], stdin=slave, stdout=slave,
                            stderr=subprocess.PIPE, env=child_env(run_dir, TERM="xterm-256color", COLUMNS="100"))
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None and not select.select([master], [], [], 0.2)[0]:
            break
    os.close(master)
    assert proc.wait(10) == 0, proc.stderr.read()
    text = out.decode()
    assert "\x1b[" in text  # colours on a terminal
    assert "fsm-init status" in text and "▶restart" in text and "╭" in text
    assert "unavailable: iptables not found" in text


IMPORTS = """
import json, sys
sys.path.insert(0, {root!r})
{code}
print(json.dumps(sorted(sys.modules)))
"""


def modules_after(code: str, env=None) -> list[str]:
    result = subprocess.run([sys.executable, "-c", IMPORTS.format(root=str(ROOT), code=code)], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_engine_imports_neither_rich_nor_the_status_view():
    found = modules_after("""
import fsm_init.cli, fsm_init.engine
from fsm_init.engine import Engine
from fsm_init.core.settings import Settings
from fsm_init.core.system import System
Engine(System(), Settings(), {})
""")
    assert "fsm_init.engine" in found
    assert [m for m in found if m == "rich" or m.startswith("rich.") or m == "fsm_init.client.status_view"] == []


def test_plain_and_json_status_do_not_import_rich(real_engine, run_dir):
    for flags in ([], ["--json"]):
        found = modules_after(f"""
import contextlib, io
import fsm_init.cli
with contextlib.redirect_stdout(io.StringIO()):
    assert fsm_init.cli.main(["status", *{flags!r}]) == 0
""", env=child_env(run_dir))
        assert "fsm_init.client.status_view" in found
        assert [m for m in found if m == "rich" or m.startswith("rich.")] == []
