"""Import budget, in the manner of click's tests/test_imports.py.

Each check runs in a fresh interpreter (``sys.executable -c``) and reads sys.modules:
PID 1's start-up path must not drag in heavy or needless packages, and the thin
reaper and srvctl must stay within the standard library.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PRELUDE = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
before = set(sys.modules)
def report(**extra):
    print(json.dumps({{"before": sorted(before), "after": sorted(sys.modules), **extra}}))
"""

# The engine's path: nothing for diagrams, rich output or asyncio.
ENGINE_FORBIDDEN = ("rich", "asyncio", "graphviz", "pygraphviz", "transitions.extensions")
# The thin reaper and srvctl: standard library only, and not even typing.
LIGHT_FORBIDDEN = ("transitions", "marshmallow", "rich", "typing")


def run(code: str, *flags: str, env=None) -> dict:
    """Run code after PRELUDE in a new interpreter; it must call report()."""
    result = subprocess.run([sys.executable, *flags, "-c", PRELUDE + code], capture_output=True, text=True,
                            timeout=60, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def loaded(modules, names) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def not_stdlib(modules) -> list[str]:
    return sorted(m for m in modules
                  if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "fsm_init")


def test_cli_and_engine_import_no_extras():
    found = run("""
import fsm_init.cli
import fsm_init.engine
from fsm_init.engine import Engine
from fsm_init.core.settings import Settings
from fsm_init.core.system import System
Engine(System(), Settings(), {})
report()
""")
    assert loaded(found["after"], ENGINE_FORBIDDEN) == []
    assert "transitions" in found["after"]  # the check itself sees what it should


def test_engine_path_does_not_import_marshmallow_without_a_config():
    found = run("""
import fsm_init.cli, fsm_init.engine
from fsm_init.engine import Engine
from fsm_init.core.settings import Settings
from fsm_init.core.system import System
Engine(System(), Settings(), {})
report()
""")
    assert loaded(found["after"], ("marshmallow", "fsm_init.config.schema")) == []


@pytest.mark.parametrize("flags", [("-I", "-S"), ("-I",)], ids=["as-exec-ed", "with-site"])
def test_thin_reaper_stays_in_the_standard_library(flags):
    found = run("import fsm_init.core.reaper\nreport()", *flags)
    assert loaded(found["before"], LIGHT_FORBIDDEN) == []
    assert loaded(found["after"], LIGHT_FORBIDDEN) == []
    assert not_stdlib(set(found["after"]) - set(found["before"])) == []


@pytest.mark.parametrize("flags", [("-I", "-S"), ("-I",)], ids=["as-exec-ed", "with-site"])
def test_the_thin_reapers_http_probes_and_metrics_stay_in_the_standard_library(flags):
    found = run("""
import fsm_init.core.reaper, fsm_init.core.http_probes, fsm_init.core.metrics
fsm_init.core.http_probes.parse_address("127.0.0.1:9000")
fsm_init.core.metrics.Metrics().render("handover", None)
report()
""", *flags)
    assert loaded(found["after"], LIGHT_FORBIDDEN) == []
    assert not_stdlib(set(found["after"]) - set(found["before"])) == []


def test_srvctl_with_a_bad_verb_stays_in_the_standard_library():
    found = run("""
import io, contextlib
import fsm_init.client.srvctl
with contextlib.redirect_stderr(io.StringIO()):
    code = fsm_init.client.srvctl.main(["frobnicate"])
report(code=code)
""", "-I", "-S")
    assert found["code"] == 2
    assert loaded(found["after"], LIGHT_FORBIDDEN) == []
    assert not_stdlib(set(found["after"]) - set(found["before"])) == []


def test_srvctl_status_without_an_engine_stays_in_the_standard_library(tmp_path):
    found = run("""
import io, contextlib
import fsm_init.client.srvctl
with contextlib.redirect_stderr(io.StringIO()):
    code = fsm_init.client.srvctl.main(["status", "--json"])
report(code=code)
""", "-I", "-S", env={"FSM_INIT_RUN_DIR": str(tmp_path)})
    assert found["code"] == 3  # nobody listens
    assert "fsm_init.core.control" in found["after"]
    assert loaded(found["after"], LIGHT_FORBIDDEN) == []
    assert not_stdlib(set(found["after"]) - set(found["before"])) == []


def test_config_imports_marshmallow_only_to_validate():
    found = run("""
import fsm_init.config.workcfg as config
config.defaults()
config.parse_document(b'{"initdelay": 1}')
config.masked(config.defaults())
config.dumps_compact(config.defaults())
lazy = "marshmallow" in sys.modules
import fsm_init.config.schema as config_schema
config_schema.validate({"initdelay": 1})
report(lazy=lazy)
""")
    assert found["lazy"] is False
    assert "marshmallow" in found["after"]


def test_engine_path_does_not_import_typing():
    # typing is the largest single module on the start-up path: fsm_init.core.records gives the
    # NamedTuple class syntax without it (issue 14).
    found = run("""
import fsm_init.cli, fsm_init.engine, fsm_init.core.reaper
from fsm_init.engine import Engine
from fsm_init.core.settings import Settings
from fsm_init.core.system import System
Engine(System(), Settings(), {})
report()
""", "-I")
    assert loaded(found["after"], ("typing",)) == []
    assert "transitions" in found["after"]
