"""``fsm-init graph`` against the table it draws, and the committed diagrams.

As in pytransitions' own diagram tests, the pictures are checked by parsing their
nodes and edges out of the source with regular expressions, not by comparing golden
strings: the checks run once per emitter by subclassing (``TestMermaid`` and
``TestDot`` only say how to parse).  Golden files exist only for the drift test:
``diagrams/`` must be what ``scripts/diagrams`` makes from today's table.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from fsm_init.client import graph
from fsm_init.core import control, table
from fsm_init.core.system import listen_unix

from .fakes import FakeSystem, Harness, make_settings

ROOT = Path(__file__).resolve().parents[2]
DIAGRAMS = ROOT / "diagrams"
STATE_NAMES = [name for name, _ in table.STATES]
DESCRIPTIONS = dict(table.STATES)
HAS_DOT = shutil.which("dot") is not None


def transition(trigger, source, dest, conditions=(), unless=()) -> dict:
    """A row of table.TRANSITIONS, written as the table writes its rows."""
    return {"trigger": trigger, "source": source, "dest": dest,
            "conditions": list(conditions), "unless": list(unless)}


def state_names() -> list[str]:
    """The table's states now (some tests draw a table of their own)."""
    return [name for name, _ in table.STATES]


def expanded_rows() -> Counter:
    """Every table row as (source, dest, label), list sources expanded (``stop``: one per STOPPABLE state)."""
    rows = Counter()
    for row in table.TRANSITIONS:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        guards = row["conditions"] + ["!" + g for g in row["unless"]]
        label = row["trigger"] + (f" [{' & '.join(guards)}]" if guards else "")
        rows.update((source, row["dest"], label) for source in sources)
    return rows


def words(text: str) -> str:
    """Text compared across the emitters' escaping (mermaid has no ':' or ';' in a label)."""
    return " ".join(re.split(r"[\s:;,\-]+", text)).strip()


class Parsed:
    """What a picture says: nodes {id: (title, description)}, edges [(source, dest, label, attrs)]."""

    def __init__(self):
        self.nodes: dict[str, list] = {}
        self.edges: list[tuple[str, str, str, dict]] = []
        self.classes: dict[str, set] = {}
        self.initial: list[str] = []
        self.finals: list[str] = []

    def pseudo_sources(self, node_id: str) -> list[str] | None:
        """The states a pseudo-node stands for, read back from its label; None for a state."""
        names = state_names()
        if node_id in names:
            return None
        return graph.sources_of_label(self.nodes[node_id][0], names)

    def expanded_edges(self) -> Counter:
        edges = Counter()
        for source, dest, label, _ in self.edges:
            sources = self.pseudo_sources(source) or [source]
            edges.update((s, dest, label) for s in sources)
        return edges


# -- parsers ------------------------------------------------------------------------------------

MERMAID_STATE = re.compile(r'^    state "(?P<title>[^"]*)" as (?P<id>[a-z0-9_]+)$')
MERMAID_DESCR = re.compile(r"^    (?P<id>[a-z0-9_]+) : (?P<text>[^:;]+)$")
MERMAID_EDGE = re.compile(r"^    (?P<src>[a-z0-9_]+|\[\*\]) --> (?P<dst>[a-z0-9_]+|\[\*\])(?: : (?P<label>[^:;]+))?$")
MERMAID_CLASS = re.compile(r"^    class (?P<ids>[a-z0-9_,]+) (?P<cls>\w+)$")
MERMAID_CLASSDEF = re.compile(r"^    classDef (?P<cls>\w+) (?P<style>[^\n]+)$")
MERMAID_OTHER = re.compile(r"^(stateDiagram-v2|    direction TB|    %% [^\n]*)$")


def parse_mermaid(text: str) -> Parsed:
    parsed = Parsed()
    lines = text.splitlines()
    assert lines[0] == "stateDiagram-v2"
    for line in lines:
        if m := MERMAID_STATE.match(line):
            parsed.nodes[m["id"]] = [m["title"], ""]
        elif m := MERMAID_DESCR.match(line):
            node = parsed.nodes[m["id"]]  # declared before its description
            node[1] = (node[1] + " " + m["text"]).strip()
        elif m := MERMAID_EDGE.match(line):
            if m["src"] == "[*]":
                parsed.initial.append(m["dst"])
            elif m["dst"] == "[*]":
                parsed.finals.append(m["src"])
            else:
                parsed.edges.append((m["src"], m["dst"], m["label"], {}))
        elif m := MERMAID_CLASS.match(line):
            for node_id in m["ids"].split(","):
                parsed.classes.setdefault(m["cls"], set()).add(node_id)
        else:
            assert MERMAID_CLASSDEF.match(line) or MERMAID_OTHER.match(line), f"unexpected mermaid line: {line!r}"
    return parsed


DOT_NODE = re.compile(r"^    (?P<id>\w+) \[(?P<attrs>.*)\];$")
DOT_EDGE = re.compile(r"^    (?P<src>\w+) -> (?P<dst>\w+)(?: \[(?P<attrs>.*)\])?;$")
DOT_ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|<.*>)')


def dot_attrs(text: str | None) -> dict:
    attrs = {}
    for key, value in DOT_ATTR.findall(text or ""):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], value[1:-1])
        attrs[key] = value
    return attrs


def parse_dot(text: str) -> Parsed:
    parsed = Parsed()
    lines = text.splitlines()
    assert lines[1] == "digraph fsm_init {" and lines[-1] == "}"
    for line in lines:
        if m := DOT_EDGE.match(line):
            attrs = dot_attrs(m["attrs"])
            if m["src"] == "__start":
                parsed.initial.append(m["dst"])
            elif m["dst"] == "__end":
                parsed.finals.append(m["src"])
            else:
                parsed.edges.append((m["src"], m["dst"], attrs.get("label"), attrs))
        elif (m := DOT_NODE.match(line)) and m["id"] not in ("graph", "node", "edge", "__start", "__end"):
            attrs = dot_attrs(m["attrs"])
            label = attrs["label"]
            if label.startswith("<"):  # a state: <<b>name</b><br/><font ...>description</font>>
                title = re.search(r"<b>(.*?)</b>", label)[1]
                parsed.nodes[m["id"]] = [title, attrs["tooltip"]]
            else:  # a pseudo-node: the sources label, wrapped after "except"
                parsed.nodes[m["id"]] = [label.replace("\n", " "), ""]
            for cls, colours in (("current", graph.CURRENT), ("previous", graph.PREVIOUS)):
                if attrs.get("fillcolor") == colours["fillcolor"]:
                    parsed.classes.setdefault(cls, set()).add(m["id"])
    return parsed


# -- the checks, once per emitter ------------------------------------------------------------------


class GraphChecks:
    fmt = ""

    def render(self, live=None) -> str:
        raise NotImplementedError

    def parse(self, text: str) -> Parsed:
        raise NotImplementedError

    def drawn(self, live=None) -> Parsed:
        return self.parse(self.render(live))

    def test_every_state_is_a_node_with_its_name_and_description(self):
        parsed = self.drawn()
        for name, description in table.STATES:
            assert name in parsed.nodes, f"state {name} is not drawn"
            title, drawn = parsed.nodes[name]
            assert title == name
            assert words(drawn) == words(description), name

    def test_every_table_row_is_an_edge_with_its_trigger_and_guards(self):
        drawn = self.drawn().expanded_edges()
        assert drawn == expanded_rows()  # nothing missing, nothing extra, no duplicates

    def test_stop_is_drawn_once_from_a_pseudo_node_naming_every_stoppable_state(self):
        parsed = self.drawn()
        stops = [e for e in parsed.edges if e[2] == "stop"]
        assert len(stops) == 1
        source, dest, _, _ = stops[0]
        assert dest == "pre_shutdown"
        assert parsed.pseudo_sources(source) == table.STOPPABLE
        assert parsed.nodes[source][0] == "any state except pre_shutdown, stopping, stop_daemons, post_shutdown, teardown, exited"

    def test_guards_and_unless_are_labelled_as_transitions_does(self, monkeypatch):
        monkeypatch.setattr(table, "STATES", [(name, f"state {name}") for name in "abcde"])
        monkeypatch.setattr(table, "TRANSITIONS", [
            transition("go", "a", "b", ["ready"]),
            transition("go", "a", "c", unless=["blocked"]),
            transition("go", "a", "a", ["ready", "late"], ["blocked"]),
            transition("go", "a", "d"),
            transition("back", ["b", "c"], "a"),
            transition("halt", ["a", "b", "c", "d"], "e"),
        ])
        parsed = self.drawn()
        labels = {(s, d): label for s, d, label, _ in parsed.edges}
        assert labels[("a", "b")] == "go [ready]"
        assert labels[("a", "c")] == "go [!blocked]"
        assert labels[("a", "a")] == "go [ready & late & !blocked]"
        assert labels[("a", "d")] == "go"
        # a list source is named the shorter way: the list itself, or what it leaves out
        titles = {label: parsed.nodes[s][0] for s, d, label, _ in parsed.edges if s not in state_names()}
        assert titles == {"back": "any of: b, c", "halt": "any state except e"}
        assert parsed.expanded_edges() == expanded_rows()
        assert parsed.initial == ["a"] and parsed.finals == ["e"]

    def test_the_loops_are_there(self):
        edges = {(s, d) for s, d, _ in self.drawn().expanded_edges()}
        # restart loop, failure path, the fallback to the config, the check cycle
        for cycle in (["restart_interval", "watch", "check", "restart", "restart_interval"],
                      ["start", "restart_interval", "load_config", "firewall", "ssh", "pppoe", "start"],
                      ["watch", "check", "watch"], ["idle", "load_config", "firewall", "ssh", "pppoe", "idle"]):
            assert set(zip(cycle, cycle[1:])) <= edges, cycle

    def test_initial_and_final_states(self):
        parsed = self.drawn()
        assert parsed.initial == ["boot"]
        assert parsed.finals == ["exited"]

    def test_live_marks_the_current_state_the_previous_one_and_the_edge(self):
        parsed = self.drawn({"state": "watch", "last_transition":
                             {"from": "restart_interval", "to": "watch", "trigger": "done"}})
        assert parsed.classes["current"] == {"watch"}
        assert parsed.classes["previous"] == {"restart_interval"}
        last = [e for e in parsed.edges if self.is_last(e)]
        assert [(s, d) for s, d, *_ in last] == [("restart_interval", "watch")]
        assert self.plain_label(last[0]) == "done [has_instance]"
        # still a complete picture of the table
        plain = Counter()
        for (source, dest, label), n in parsed.expanded_edges().items():
            plain[(source, dest, self.plain_label((source, dest, label, {})))] += n
        assert plain == expanded_rows()

    def test_live_through_the_stop_pseudo_node_draws_the_real_edge(self):
        parsed = self.drawn({"state": "pre_shutdown", "last_transition": {"from": "check", "to": "pre_shutdown",
                                                                      "trigger": "stop"}})
        last = [e for e in parsed.edges if self.is_last(e)]
        assert [(s, d) for s, d, *_ in last] == [("check", "pre_shutdown")]
        assert parsed.classes["current"] == {"pre_shutdown"}
        assert parsed.classes["previous"] == {"check"}
        assert len([e for e in parsed.edges if e[2].startswith("stop")]) == 2  # the pseudo-node's edge stays

    def test_live_without_a_last_transition_marks_only_the_state(self):
        parsed = self.drawn({"state": "check"})
        assert parsed.classes["current"] == {"check"}
        assert "previous" not in parsed.classes
        assert not [e for e in parsed.edges if self.is_last(e)]

    def test_live_at_boot_has_no_previous_state(self):
        parsed = self.drawn({"state": "boot", "last_transition": {"from": "", "to": "boot", "trigger": ""}})
        assert parsed.classes["current"] == {"boot"}
        assert "previous" not in parsed.classes

    def test_live_with_a_transition_the_table_lacks_still_marks_both_states(self):
        parsed = self.drawn({"state": "exited", "last_transition": {"from": "boot", "to": "exited", "trigger": "x"}})
        assert parsed.classes == {"current": {"exited"}, "previous": {"boot"}} | (
            {"anystate": {"stop_from_any"}} if self.fmt == "mermaid" else {})
        assert not [e for e in parsed.edges if self.is_last(e)]


class TestMermaid(GraphChecks):
    fmt = "mermaid"

    def render(self, live=None):
        return graph.mermaid(graph.build(live))

    def parse(self, text):
        return parse_mermaid(text)

    def is_last(self, edge):
        return edge[2].endswith(graph.LAST_MARK)

    def plain_label(self, edge):
        return edge[2].removesuffix(" " + graph.LAST_MARK)

    def test_ids_and_text_follow_mermaids_lexer(self):
        """pytransitions#708: an ID with '-', ' ' or ':' breaks mermaid; text after ':' stops at ':' or ';'."""
        text = self.render({"state": "watch", "last_transition": {"from": "check", "to": "watch",
                                                                  "trigger": "checks_done"}})
        parsed = parse_mermaid(text)  # every line matched one of the statement forms above
        keywords = {"state", "note", "class", "classdef", "direction", "end", "scale", "as", "hide"}
        for node_id in list(parsed.nodes) + [n for e in parsed.edges for n in e[:2]]:
            assert re.fullmatch(r"[a-z0-9_]+", node_id), node_id
            assert node_id not in keywords and not node_id.startswith("default"), node_id
        for line in text.splitlines()[1:]:
            # mermaid's lexer reads any line containing "direction XX" as a direction statement
            if line != "    direction TB":
                assert not re.search(r"direction\s+(tb|bt|rl|lr)", line, re.I), line
            assert line == line.rstrip(), "a trailing blank becomes part of a 'state ... as ID' id"
            assert "#" not in line.partition(" : ")[2], "mermaid reads #...; as an entity"

    def test_an_odd_trigger_from_the_engine_stays_in_its_comment(self):
        text = self.render({"state": "check", "last_transition": {"from": "watch", "to": "check",
                                                                  "trigger": "a\nb: c"}})
        parse_mermaid(text)  # every line still one of the statement forms
        assert "    %% live: state check, last transition watch -> check (a b: c)" in text.splitlines()

    def test_text_with_colons_and_semicolons_is_made_safe(self, monkeypatch):
        monkeypatch.setattr(table, "STATES", [("a", 'one: two; "three"'), ("b", "x")])
        monkeypatch.setattr(table, "TRANSITIONS", [transition("go", "a", "b")])
        parsed = self.drawn()
        assert parsed.nodes["a"][1] == "one - two, \"three\""


class TestDot(GraphChecks):
    fmt = "dot"

    def render(self, live=None):
        return graph.dot(graph.build(live))

    def parse(self, text):
        return parse_dot(text)

    def is_last(self, edge):
        return edge[3].get("color") == graph.LAST_EDGE["color"]

    def plain_label(self, edge):
        return edge[2]

    def test_fallbacks_are_dashed(self):
        dashed = {(s, d, label) for s, d, label, attrs in self.drawn().edges if attrs.get("style") == "dashed"}
        fallbacks = set()
        for row in table.TRANSITIONS:
            earlier = table.TRANSITIONS[:table.TRANSITIONS.index(row)]
            if (isinstance(row["source"], str) and not row["conditions"] and not row["unless"]
                    and any(r["trigger"] == row["trigger"] and r["source"] == row["source"]
                            and (r["conditions"] or r["unless"]) for r in earlier)):
                fallbacks.add((row["source"], row["dest"], row["trigger"]))
        assert dashed == fallbacks
        assert ("load_config", "firewall", "done") in dashed and ("check", "restart", "checks_done") in dashed

    def test_text_is_escaped(self, monkeypatch):
        monkeypatch.setattr(table, "STATES", [("a", 'say "hi" <b>&</b> \\ back'), ("b", "x")])
        monkeypatch.setattr(table, "TRANSITIONS", [transition("go", "a", "b")])
        text = self.render()
        assert parse_dot(text).nodes["a"][1] == 'say "hi" <b>&</b> \\ back'
        assert "&lt;b&gt;&amp;&lt;/b&gt;" in text

    @pytest.mark.skipif(not HAS_DOT, reason="Graphviz's dot is not installed (scripts/setup installs graphviz)")
    def test_dot_accepts_it(self):
        odd = {"state": "check", "last_transition": {"from": "watch", "to": "check", "trigger": 'a "b"\nc\\'}}
        for live in (None, odd, {"state": "stopping", "last_transition": {"from": "watch", "to": "stopping",
                                                                          "trigger": "stop"}}):
            result = subprocess.run(["dot", "-Tsvg"], input=self.render(live), capture_output=True, text=True)
            assert result.returncode == 0 and not result.stderr, result.stderr
            titles = set(re.findall(r"<title>(.*?)</title>", result.stdout))
            assert set(STATE_NAMES) <= titles


def test_a_real_engine_snapshot_is_drawn(monkeypatch):
    """The snapshot the engine really answers (not a hand-written one) marks the state and the edge."""
    from fsm_init import engine as engine_module

    monkeypatch.setattr(engine_module.ControlServer, "listen", staticmethod(lambda *args: None))
    fake = FakeSystem()
    fake.add_dir("/srv/app")
    fake.add_file("/srv/app/workcfg.json", json.dumps({"initdelay": 0, "workstart": "./run.sh",
                                                       "workwatch": 30, "workintvl": 5}))
    fake.add_script("/srv/app/run.sh")
    h = Harness(fake, make_settings(), {"SRVNAME": "app", "PATH": "/usr/bin:/bin"})
    try:
        h.begin()
        assert h.state == "restart_interval"
        monkeypatch.setattr(control, "request", lambda path, verb, timeout=10.0: h.engine.verbs.handle({"verb": verb}))
        status, code, _ = graph.ask_engine()
    finally:
        h.close()
    assert code == graph.OK
    parsed = parse_mermaid(graph.mermaid(graph.build(status)))
    assert parsed.classes["current"] == {"restart_interval"}
    if status.get("last_transition"):  # the engine reports it since the journal came
        assert parsed.classes["previous"] == {"start"}
        assert [e[:2] for e in parsed.edges if e[2].endswith(graph.LAST_MARK)] == [("start", "restart_interval")]


# -- the command ------------------------------------------------------------------------------------


@pytest.fixture
def engine_answers(monkeypatch):
    """control.request answers as an engine would; the requests are recorded."""
    asked = []

    def answer(status):
        def request(path, verb, timeout=10.0):
            asked.append((path, verb))
            return {"ok": True, "status": status}
        monkeypatch.setattr(control, "request", request)
        return asked
    return answer


def test_mermaid_to_stdout_by_default(capsys):
    assert graph.main([]) == 0
    assert capsys.readouterr().out == graph.mermaid(graph.build())


def test_dot_to_stdout(capsys):
    assert graph.main(["--format", "dot"]) == 0
    assert capsys.readouterr().out == graph.dot(graph.build())


@pytest.mark.parametrize("name, fmt", [("x.mmd", "mermaid"), ("x.dot", "dot"), ("x.gv", "dot"), ("x.txt", "mermaid")])
def test_output_file_is_written_atomically_in_the_format_of_its_extension(tmp_path, name, fmt):
    target = tmp_path / name
    target.write_text("old contents")
    assert graph.main(["-o", str(target)]) == 0
    expected = graph.mermaid(graph.build()) if fmt == "mermaid" else graph.dot(graph.build())
    assert target.read_text() == expected
    assert os.listdir(tmp_path) == [name]  # no temporary file left behind
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_explicit_format_wins_over_the_extension(tmp_path):
    target = tmp_path / "x.svg"
    assert graph.main(["--format=dot", f"--output={target}"]) == 0
    assert target.read_text().startswith("// ")


def test_unwritable_output_is_one_line_and_exit_1(tmp_path, capsys):
    assert graph.main(["-o", str(tmp_path / "missing" / "x.mmd")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err


@pytest.mark.parametrize("args", [["--format", "jpg"], ["--format"], ["-o"], ["--frobnicate"], ["extra"],
                                  ["--live=yes"]])
def test_usage_errors_exit_2(args, capsys):
    assert graph.main(args) == 2
    assert "usage: fsm-init graph" in capsys.readouterr().err


def test_help(capsys):
    assert graph.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fsm-init graph") and "--live" in out and "any state except" in out


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz's dot is not installed (scripts/setup installs graphviz)")
@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("png", b"\x89PNG")])
def test_images_with_dot(tmp_path, fmt, magic):
    target = tmp_path / f"x.{fmt}"
    assert graph.main(["-o", str(target)]) == 0
    data = target.read_bytes()
    assert data.startswith(magic)
    if fmt == "svg":
        assert b"Generated by graphviz" not in data  # no version in the committed file
        assert b"<title>stop_from_any</title>" in data


@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_images_without_dot_say_so_in_one_line(monkeypatch, capsys, tmp_path, fmt):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    target = tmp_path / f"x.{fmt}"
    assert graph.main(["--format", fmt, "-o", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "needs Graphviz's dot, which is not installed" in err
    assert not target.exists() and os.listdir(tmp_path) == []


def test_dot_failing_is_one_line_and_exit_1(monkeypatch, capsys, tmp_path):
    fake_dot = tmp_path / "dot"
    fake_dot.write_text("#!/bin/sh\necho 'Error: something broke' >&2\nexit 3\n")
    fake_dot.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert graph.main(["--format", "svg"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "status 3" in err and "something broke" in err


def test_png_is_not_written_to_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert graph.main(["--format", "png"]) == 2
    assert "use -o FILE" in capsys.readouterr().err


def test_live_asks_the_engine_on_its_control_socket(engine_answers, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FSM_INIT_RUN_DIR", str(tmp_path))
    asked = engine_answers({"state": "check", "last_transition": {"from": "watch", "to": "check",
                                                                  "trigger": "cycle_due"}})
    assert graph.main(["--live"]) == 0
    assert asked == [(str(tmp_path / "control.sock"), "status")]
    out = capsys.readouterr().out
    assert "    class check current" in out and "    class watch previous" in out
    assert "    watch --> check : cycle_due (last transition)" in out


def test_live_dot(engine_answers, capsys):
    engine_answers({"state": "check", "last_transition": {"from": "watch", "to": "check", "trigger": "cycle_due"}})
    assert graph.main(["--live", "--format", "dot"]) == 0
    parsed = parse_dot(capsys.readouterr().out)
    assert parsed.classes == {"current": {"check"}, "previous": {"watch"}}
    assert [e[:3] for e in parsed.edges if e[3].get("color") == graph.LAST_EDGE["color"]] == [
        ("watch", "check", "cycle_due")]


def test_live_with_an_unknown_state_warns_and_draws(engine_answers, capsys):
    engine_answers({"state": "no_such_state"})
    assert graph.main(["--live"]) == 0
    captured = capsys.readouterr()
    assert "'no_such_state', which this table does not have" in captured.err
    assert "%% live: state no_such_state" in captured.out
    assert "no_such_state" not in parse_mermaid(captured.out).nodes
    assert "class " not in captured.out.replace("class stop_from_any anystate", "")


def test_live_with_no_engine_exits_3_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FSM_INIT_RUN_DIR", str(tmp_path))  # nothing listens there
    assert graph.main(["--live"]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"fsm-init graph: no fsm-init answers on {tmp_path}/control.sock (No such file or directory)\n"


@pytest.mark.parametrize("reply", [{"ok": False, "message": "nope"}, {"ok": True, "status": {}}, ["not", "a", "dict"]])
def test_live_with_a_bad_answer_exits_1(monkeypatch, capsys, reply):
    monkeypatch.setattr(control, "request", lambda path, verb, timeout=10.0: reply)
    assert graph.main(["--live"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_live_through_a_real_socket(monkeypatch, tmp_path, capsys):
    """No monkeypatching of control: a listener that answers one status request as the engine does."""
    monkeypatch.setenv("FSM_INIT_RUN_DIR", str(tmp_path))
    listener = listen_unix(str(tmp_path / "control.sock"))
    listener.setblocking(True)
    listener.settimeout(10)
    requests = []

    def serve():
        conn, _ = listener.accept()
        with conn:
            requests.append(json.loads(conn.makefile().readline()))
            conn.sendall(json.dumps({"ok": True, "status": {"state": "restart", "last_transition": {
                "from": "check", "to": "restart", "trigger": "checks_done"}}}).encode() + b"\n")

    server = threading.Thread(target=serve)
    server.start()
    try:
        assert graph.main(["--live"]) == 0
    finally:
        server.join(10)
        listener.close()
    assert requests == [{"verb": "status"}]
    out = capsys.readouterr().out
    assert "    check --> restart : checks_done (last transition)" in out
    assert "    class restart current" in out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- the committed diagrams ------------------------------------------------------------------------


@pytest.mark.parametrize("name, render", [("fsm-init.mmd", lambda: graph.mermaid(graph.build())),
                                          ("fsm-init.dot", lambda: graph.dot(graph.build()))])
def test_committed_diagram_is_current(name, render):
    committed = DIAGRAMS / name
    assert committed.exists(), f"diagrams/{name} is missing: run scripts/diagrams"
    assert committed.read_text() == render(), f"diagrams/{name} differs from the table: run scripts/diagrams"


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz's dot is not installed: cannot render diagrams/fsm-init.svg "
                                        "to compare (scripts/setup installs graphviz)")
def test_committed_svg_is_current():
    committed = DIAGRAMS / "fsm-init.svg"
    assert committed.exists(), "diagrams/fsm-init.svg is missing: run scripts/diagrams"
    assert committed.read_bytes() == graph.render(graph.dot(graph.build()), "svg"), (
        "diagrams/fsm-init.svg differs from what dot renders from the table today: run scripts/diagrams")


def test_readme_embeds_the_committed_mermaid_when_it_shows_one():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```mermaid\n(.*?)```", readme, re.S)
    if not blocks:
        pytest.skip("the README has no mermaid block yet")
    assert (DIAGRAMS / "fsm-init.mmd").read_text() in blocks, "README's mermaid differs from diagrams/fsm-init.mmd"


def test_scripts_diagrams_uses_the_graph_command():
    script = (ROOT / "scripts" / "diagrams").read_text()
    assert "-m fsm_init graph" in script
    assert os.access(ROOT / "scripts" / "diagrams", os.X_OK)


# -- import budget -----------------------------------------------------------------------------------


def run_python(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", f"import sys, json\nsys.path.insert(0, {str(ROOT)!r})\n{code}"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_engines_boot_path_does_not_import_graph():
    found = run_python("""
import fsm_init.cli, fsm_init.engine
from fsm_init.engine import Engine
from fsm_init.core.settings import Settings
from fsm_init.core.system import System
Engine(System(), Settings(), {})
print(json.dumps(sorted(sys.modules)))
""")
    assert "fsm_init.engine" in found
    assert "fsm_init.client.graph" not in found


def test_graph_needs_neither_transitions_nor_asyncio():
    found = run_python("""
import io, contextlib
from fsm_init import cli
with contextlib.redirect_stdout(io.StringIO()):
    cli.main(["graph", "--format", "dot"])
    cli.main(["graph"])
print(json.dumps(sorted(sys.modules)))
""")
    assert "fsm_init.client.graph" in found
    assert [m for m in found if m.split(".")[0] in ("transitions", "asyncio", "graphviz", "pygraphviz", "rich")] == []
