"""The shape of the package, read from the source (AST), not from a running program.

* No import cycle between fsm_init's modules, counting the imports inside functions
  (a cycle hidden in a function is still a cycle a reader must hold in their head).
* Tests use fsm_init's public names only: no ``x._name`` attribute, no ``from fsm_init.m
  import _name``.  A test of an internal goes through the public interface it serves.
* The helpers that used to exist in several copies exist once.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "fsm_init"
TESTS = ROOT / "tests"


def module_imports(path: Path) -> set[str]:
    """The fsm_init modules path imports, at any depth (module level or in a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fsm_init."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "fsm_init":
                found.update(f"fsm_init.{a.name}" for a in node.names)
            elif node.module.startswith("fsm_init."):
                found.add(node.module)
    modules = {f"fsm_init.{p.stem}" for p in PACKAGE.glob("*.py")}
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    return {f"fsm_init.{p.stem}": module_imports(p) - {f"fsm_init.{p.stem}"} for p in PACKAGE.glob("*.py")}


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
    source = tmp_path / "m.py"
    source.write_text("import os\nfrom fsm_init import log\n\ndef f():\n    from fsm_init.config import defaults\n")
    assert module_imports(source) == {"fsm_init.log", "fsm_init.config"}


def test_no_import_cycle_between_fsm_init_modules():
    assert cycles(import_graph()) == []


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
            # code run in a subprocess: "from fsm_init import log ... log._outlets"
            found.extend(f"{where}: .{name} in code" for name in re.findall(r"\.(_[A-Za-z]\w*)", node.value)
                         if name in private)
    return found


def test_the_private_name_scan_sees_each_kind_of_use():
    private = {"_fire_due", "_json", "_helper"}
    source = ("from fsm_init.loop import _helper\n"
              "def t(loop, monkeypatch, log):\n"
              "    loop._fire_due()\n"
              "    monkeypatch.setattr(log, '_json', True)\n"
              "    self._fire_due()\n"
              "    run('from fsm_init import log; log._json')\n")
    assert sorted(use.split(": ", 1)[1] for use in private_uses(source, "t.py", private)) == [
        "._fire_due", "._json in code", "import _helper", "setattr _json"]


def test_tests_touch_no_private_name_of_fsm_init():
    private = private_names_defined_in(PACKAGE.glob("*.py"))
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if path == Path(__file__).resolve():
            continue  # this file names private names on purpose, to show what is refused
        found.extend(private_uses(path.read_text(), str(path.relative_to(ROOT)), private))
    assert found == []


def definitions(name: str) -> list[str]:
    """The fsm_init modules that define name at their top level (function, class or variable)."""
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
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
    for node in ast.walk(ast.parse((PACKAGE / module).read_text())):
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
    assert [m.name for m in sorted(PACKAGE.glob("*.py")) if any(
        name == "strftime" for name, _ in calls_in(m.name))] == ["log.py"]


def test_supporting_services_and_daemons_signal_only_through_the_kill_library():
    """One TERM -> grace -> KILL: kill.Stopper.  Neither module signals or times a kill itself."""
    for module in ("supporting.py", "daemons.py"):
        assert [name for name, _ in calls_in(module) if name in ("signal", "kill")] == [], module


def direct_os_calls(module: str) -> set[str]:
    """The os./socket. functions module calls itself, past the System boundary (os.path,
    wait-status decoding and the like are not OS calls)."""
    pure = {"strerror", "WIFSIGNALED", "WIFEXITED", "WEXITSTATUS", "WTERMSIG", "fsencode", "fsdecode", "getenv"}
    return {f"{call.func.value.id}.{call.func.attr}" for call in ast.walk(ast.parse((PACKAGE / module).read_text()))
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
    "control.py",  # request(): the client side (srvctl, fsm-init status); the server is System's
}


def test_the_os_is_called_through_system():
    calling = {p.name for p in PACKAGE.glob("*.py") if direct_os_calls(p.name)}
    assert calling <= OWN_OS_CALLS, sorted(calling - OWN_OS_CALLS)
    assert direct_os_calls("output.py") == set()
    assert direct_os_calls("syslog_relay.py") == set() and direct_os_calls("dial.py") == set()
    assert direct_os_calls("control.py") == {"socket.socket"}  # the client's connection only
