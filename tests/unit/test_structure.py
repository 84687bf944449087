"""The shape of the package, read from the source (AST), not from a running program.

* No import cycle between fsm_init's modules, counting the imports inside functions
  (a cycle hidden in a function is still a cycle a reader must hold in their head).
* The import rules between the sub-packages (``LAYERS``, ``THIRD_PARTY``,
  docs/code-layout.md#import-rules): the core imports no other part, only the client
  uses rich.
* Tests use fsm_init's public names only: no ``x._name`` attribute, no ``from fsm_init.m
  import _name``.  A test of an internal goes through the public interface it serves.
* The helpers that used to exist in several copies exist once.

Modules are found in every sub-package and named by file (``system.py``), so the checks
hold in the flat tree and in the sub-packages alike.
"""

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "fsm_init"
TESTS = ROOT / "tests"


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """fsm_init's modules by dotted name (``fsm_init.core.loop``; a sub-package by its
    ``__init__.py``: ``fsm_init.core``), in every sub-package."""
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def source(name: str) -> Path:
    """The one module file called name (``system.py``), in whichever sub-package it is."""
    paths = [p for p in PACKAGE.rglob(name)]
    assert len(paths) == 1, (name, paths)
    return paths[0]


def module_imports(path: Path, known: set[str]) -> set[str]:
    """The fsm_init modules (of known) path imports, at any depth (module level or in a
    function).  ``from fsm_init.core import log`` imports the module fsm_init.core.log."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fsm_init."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "fsm_init" or node.module.startswith("fsm_init."):
                for alias in node.names:
                    module = f"{node.module}.{alias.name}"
                    found.add(module if module in known else node.module)
    return {m for m in found if m in known}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: module_imports(path, set(modules)) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_sees_a_cycle_hidden_in_a_function(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    # Made-up module names: the check is about the forms of import, whatever the modules are.
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom fsm_init import alpha\n\ndef f():\n    from fsm_init.beta import name\n"
                      "    from fsm_init.part import gamma, delta\n    import fsm_init.other.epsilon\n")
    known = {"fsm_init.alpha", "fsm_init.beta", "fsm_init.part", "fsm_init.part.gamma", "fsm_init.part.delta",
             "fsm_init.other.epsilon"}
    assert module_imports(module, known) == {"fsm_init.alpha", "fsm_init.beta", "fsm_init.part.gamma",
                                             "fsm_init.part.delta", "fsm_init.other.epsilon"}
    assert module_imports(module, known - {"fsm_init.part.delta"}) == {
        "fsm_init.alpha", "fsm_init.beta", "fsm_init.part", "fsm_init.part.gamma", "fsm_init.other.epsilon"}


def test_modules_are_found_in_every_sub_package(tmp_path):
    for name in ("fsm_init/__init__.py", "fsm_init/cli.py", "fsm_init/core/__init__.py", "fsm_init/core/loop.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert sorted(package_modules(tmp_path / "fsm_init")) == [
        "fsm_init", "fsm_init.cli", "fsm_init.core", "fsm_init.core.loop"]


def test_no_import_cycle_between_fsm_init_modules():
    assert cycles(import_graph()) == []


# The import rules between fsm_init's parts (docs/code-layout.md#import-rules): each
# sub-package may import itself and the parts named here, nothing else.  "" is the top
# level, the wiring (engine.py) and the entry points (cli.py, __main__.py).  Rules hold
# by sub-package, so a new module obeys its package's rule without being listed.
LAYERS = {
    "core": set(),  # PID 1's own machinery: standard library (and prctl) only, no other part
    "config": {"core"},  # workcfg.json: its defaults, parsing and schema
    "steps": {"core", "config"},  # the lifecycle steps' work and the runners
    "network": {"core", "config"},  # steps firewall, ssh and pppoe
    "compat": {"core", "config", "steps"},  # baseimage-docker's parts: /etc/service, container env, syslog
    "client": {"core"},  # srvctl, fsm-init status, fsm-init graph: not PID 1
    "": {"core", "config", "steps", "network", "compat"},
}
# Beyond LAYERS: cli.py starts the client tools (``fsm-init status``, ``fsm-init graph``).
ENTRY_POINTS = {"fsm_init.cli": {"client"}}
# The third-party packages (pyproject's dependencies) each part may import.  rich draws
# the status view: the client side only, never the core or PID 1's path; the core stays
# what the thin reaper, setuser and srvctl can load.
THIRD_PARTY = {
    "core": {"prctl", "netifaces"},  # System's (and setuser's prctl), imported in functions
    "config": {"marshmallow"},  # the schema, imported only when a configuration exists
    "steps": set(),
    "network": set(),
    "compat": set(),
    "client": {"rich"},
    "": {"transitions"},  # the engine's state machine
}


def part(module: str) -> str:
    """The sub-package a dotted module name belongs to; "" for the top level."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else ""


def rule_breaks(graph: dict[str, set[str]], part_of=part) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        mine = part_of(module)
        if mine not in LAYERS:
            found.append(f"{module}: sub-package {mine!r} has no rule in LAYERS")
            continue
        allowed = LAYERS[mine] | ENTRY_POINTS.get(module, set()) | {mine}
        found.extend(f"{module} imports {other}" for other in sorted(imported) if part_of(other) not in allowed)
    return found


def third_party_imports(path: Path) -> set[str]:
    """The top-level names of the packages path imports that are neither the standard
    library nor fsm_init."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name != "fsm_init"}


def moved() -> bool:
    return any((PACKAGE / name / "__init__.py").is_file() for name in LAYERS if name)


def test_the_rule_check_sees_a_forbidden_import():
    def part_of(module):
        return module.split(".")[1] if module.count(".") > 1 else ""

    graph = {"fsm_init.core.loop": {"fsm_init.core.log"}, "fsm_init.steps.start": {"fsm_init.core.loop"},
             "fsm_init.core.log": {"fsm_init.steps.start"}, "fsm_init.cli": {"fsm_init.client.graph"},
             "fsm_init.engine": {"fsm_init.client.graph", "fsm_init.compat.daemons"},
             "fsm_init.extras.x": set()}
    assert rule_breaks(graph, part_of) == [
        "fsm_init.core.log imports fsm_init.steps.start",
        "fsm_init.engine imports fsm_init.client.graph",
        "fsm_init.extras.x: sub-package 'extras' has no rule in LAYERS"]


@pytest.mark.skipif(not moved(), reason="flat tree: the rules hold once fsm_init/ is split into sub-packages")
def test_sub_packages_import_only_what_their_rule_allows():
    assert rule_breaks(import_graph()) == []
    third_party = [f"{name} imports {package}" for name, path in sorted(package_modules().items())
                   for package in sorted(third_party_imports(path) - THIRD_PARTY.get(part(name), set()))]
    assert third_party == []
    # Every sub-package says what belongs in it and its rule, in its __init__ docstring;
    # the __init__ imports nothing (the thin reaper and ``python -m fsm_init.core.setuser`` load it first).
    for name in LAYERS:
        if name:
            init = ast.parse((PACKAGE / name / "__init__.py").read_text())
            assert ast.get_docstring(init) and all(isinstance(n, ast.Expr) for n in init.body), name


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_names_defined_in(paths) -> set[str]:
    """Every leading-underscore name the files define: functions, classes, attributes
    assigned (``self._x = ...``) and module-level or local variables."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = node.name
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                name = node.attr
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                name = node.id
            else:
                continue
            if _private(name):
                names.add(name)
    return names


def private_uses(source: str, filename: str, private: set[str]) -> list[str]:
    """Where source (a test) touches one of fsm_init's private names: ``x._name`` (not on
    its own ``self``/``cls``), ``from fsm_init... import _name``, ``setattr(x, "_name", ...)``
    and its kin (monkeypatch's too), and the name inside a string of code it runs."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and node.attr in private:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{where}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fsm_init"):
            found.extend(f"{where}: import {a.name}" for a in node.names if _private(a.name))
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
            called = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if called in ("setattr", "getattr", "delattr", "hasattr") and len(node.args) >= 2:
                name = node.args[1]
                if isinstance(name, ast.Constant) and isinstance(name.value, str) and name.value in private:
                    found.append(f"{where}: {called} {name.value}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "fsm_init" in node.value:
            # code run in a subprocess: "from fsm_init.core import log ... log._outlets"
            found.extend(f"{where}: .{name} in code" for name in re.findall(r"\.(_[A-Za-z]\w*)", node.value)
                         if name in private)
    return found


def test_the_private_name_scan_sees_each_kind_of_use():
    private = {"_fire_due", "_json", "_helper"}
    source = ("from fsm_init.core.loop import _helper\n"
              "def t(loop, monkeypatch, log):\n"
              "    loop._fire_due()\n"
              "    monkeypatch.setattr(log, '_json', True)\n"
              "    self._fire_due()\n"
              "    run('from fsm_init.core import log; log._json')\n")
    assert sorted(use.split(": ", 1)[1] for use in private_uses(source, "t.py", private)) == [
        "._fire_due", "._json in code", "import _helper", "setattr _json"]


def test_tests_touch_no_private_name_of_fsm_init():
    private = private_names_defined_in(PACKAGE.rglob("*.py"))
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if path == Path(__file__).resolve():
            continue  # this file names private names on purpose, to show what is refused
        found.extend(private_uses(path.read_text(), str(path.relative_to(ROOT)), private))
    assert found == []


def definitions(name: str) -> list[str]:
    """The fsm_init modules that define name at their top level (function, class or variable)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else [
                t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)] + [
                e.id for t in getattr(node, "targets", []) if isinstance(t, ast.Tuple)
                for e in t.elts if isinstance(e, ast.Name)]
            if name in names:
                found.append(path.name)
    return found


def calls_in(module: str) -> list[tuple[str, list]]:
    """(the called attribute or function name, its arguments) of every call in the module."""
    found = []
    for node in ast.walk(ast.parse(source(module).read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            found.append((name, node.args))
    return found


def test_the_shared_helpers_exist_once():
    assert definitions("write_atomic") == ["system.py"]
    assert definitions("find_program") == ["system.py"]
    assert definitions("SEARCH_PATH") == ["system.py"]
    assert definitions("NON_DAEMON") == ["table.py"] and definitions("STATUS_CHECK") == ["table.py"]
    # Clock times for people: log.clock is the one formatter.
    assert [m.name for m in sorted(PACKAGE.rglob("*.py")) if m.name != "__init__.py" and any(
        name == "strftime" for name, _ in calls_in(m.name))] == ["log.py"]
    # The mode names are written once, in table.py; the thin reaper and the rest import them.
    assert [m.name for m in sorted(PACKAGE.rglob("*.py")) if {"non-daemon", "status-check"} & {
        node.value for node in ast.walk(ast.parse(m.read_text())) if isinstance(node, ast.Constant)}] == ["table.py"]


def test_supporting_services_and_daemons_signal_only_through_the_kill_library():
    """One TERM -> grace -> KILL: kill.Stopper.  Neither module signals or times a kill itself."""
    for module in ("supporting.py", "daemons.py"):
        assert [name for name, _ in calls_in(module) if name in ("signal", "kill")] == [], module


def direct_os_calls(module: str) -> set[str]:
    """The os./socket. functions module calls itself, past the System boundary (os.path,
    wait-status decoding and the like are not OS calls)."""
    pure = {"strerror", "WIFSIGNALED", "WIFEXITED", "WEXITSTATUS", "WTERMSIG", "fsencode", "fsdecode", "getenv"}
    return {f"{call.func.value.id}.{call.func.attr}" for call in ast.walk(ast.parse(source(module).read_text()))
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name) and call.func.value.id in ("os", "socket")
            and call.func.attr not in pure}


# The modules that call os/socket themselves, and why.  Everything else (the engine, the
# steps, the kill library, check output) goes through System, which the unit tests fake.
OWN_OS_CALLS = {
    "system.py",  # the boundary itself
    "loop.py",  # the signal wake-up pipe
    "log.py",  # fsm-init's own non-blocking output, usable before any System exists
    "cli.py", "settings.py",  # start-up before the engine: stdio, the run and state directories
    "reaper.py",  # os._exit and the inherited control socket of the thin reaper
    "setuser.py",  # a helper run as a process of its own, exec'd after its work
    "graph.py", "status_view.py",  # client tools, not PID 1
    "pppoe.py", "ssh.py",  # os.urandom for in-process keys
    "private_dirs.py",  # the run directory's rule: System's, and srvctl's without System's imports
    "control.py",  # request(): the client side (srvctl, fsm-init status); the server is System's
}


def test_the_os_is_called_through_system():
    calling = {p.name for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" and direct_os_calls(p.name)}
    assert calling <= OWN_OS_CALLS, sorted(calling - OWN_OS_CALLS)
    assert direct_os_calls("output.py") == set()
    assert direct_os_calls("syslog_relay.py") == set() and direct_os_calls("dial.py") == set()
    assert direct_os_calls("control.py") == {"socket.socket"}  # the client's connection only
