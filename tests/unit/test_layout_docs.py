"""The layout the docs describe is the tree: README's "How the code is laid out" and
docs/code-layout.md name only modules that exist, describe every sub-package, and state
the import rules that tests/unit/test_structure.py checks (``LAYERS``)."""

import re
from pathlib import Path

from .test_structure import LAYERS, THIRD_PARTY

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "fsm_init"
README = (ROOT / "README.md").read_text()
LAYOUT = (ROOT / "docs" / "code-layout.md").read_text()


def sub_packages() -> set[str]:
    return {p.parent.name for p in PACKAGE.glob("*/__init__.py")}


def readme_layout() -> str:
    return README.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]


def test_every_module_the_docs_name_exists():
    named = set(re.findall(r"fsm_init/[\w/]+\.py", LAYOUT + readme_layout()))
    assert named and sorted(p for p in named if not (ROOT / p).is_file()) == []
    # A module named by file only (`custom_init.py`) exists in some sub-package.
    files = {p.name for p in PACKAGE.rglob("*.py")}
    bare = set(re.findall(r"`(\w+\.py)`", LAYOUT)) | set(re.findall(r"(?<![/\w])(\w+\.py)\b", readme_layout()))
    assert sorted(bare - files) == []


def test_every_sub_package_is_described_with_its_rule():
    packages = sub_packages()
    assert packages == {name for name in LAYERS if name}
    for name in packages:
        assert f"fsm_init/{name}/" in readme_layout(), name
        assert f"## `{name}/`" in LAYOUT, name
    # The import-rules table of docs/code-layout.md is LAYERS, row by row.
    # The import-rules table of docs/code-layout.md is LAYERS, row by row, and names the
    # third-party packages THIRD_PARTY allows each part.
    table, packages = {}, {}
    for name, rule, third in re.findall(r"^\| `(\w+)/` \| ([^|]*) \| ([^|]*) \|", LAYOUT, re.M):
        table[name] = set(re.findall(r"`(\w+)`", rule))
        packages[name] = third
    assert table == {name: rule for name, rule in LAYERS.items() if name}
    assert [f"{name}: {package}" for name, allowed in THIRD_PARTY.items() if name
            for package in sorted(allowed) if package not in packages[name]] == []
    top = re.search(r"^\| top level .*$", LAYOUT, re.M)
    assert top and all(package in top.group() for package in THIRD_PARTY[""])
