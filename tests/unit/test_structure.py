"""The shape of the package, read from the source (AST), not from a running program.

* No import cycle between fsm_init's modules, counting the imports inside functions
  (a cycle hidden in a function is still a cycle a reader must hold in their head).
* Tests use fsm_init's public names only: no ``x._name`` attribute, no ``from fsm_init.m
  import _name``.  A test of an internal goes through the public interface it serves.
* The helpers that used to exist in several copies exist once.
"""

import ast
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
