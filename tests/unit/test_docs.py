"""The README is the contract: every environment variable fsm-init reads and every
my_init option it takes is documented there, and `fsm-init --help` names them too."""

import re
from pathlib import Path

from fsm_init import cli

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# Set by fsm-init for itself, not by users: the thin reaper's hand-over state
# (fsm_init/reaper.py) and the PPPoE link hooks' log target (fsm_init/pppoe.py).
INTERNAL = {"FSM_INIT_HANDOVER", "FSM_INIT_LOG_PID"}


def variables_read() -> set[str]:
    found = set()
    for path in (ROOT / "fsm_init").glob("*.py"):
        found |= set(re.findall(r'"((?:FSM_INIT|KILL)_[A-Z_]+|ENV_INIT_DIRECTORY)"', path.read_text()))
    return found - INTERNAL


def test_the_scan_finds_the_variables():
    assert {"FSM_INIT_STOP_GRACE", "KILL_PROCESS_TIMEOUT", "ENV_INIT_DIRECTORY"} <= variables_read()


def test_every_variable_is_in_the_readmes_table_and_in_the_help():
    table = {m for m in re.findall(r"^\| `([A-Z_]+)` \|", README, re.M)}
    assert variables_read() - table == set(), "variables missing from the README's table"
    assert {v for v in variables_read() if v not in cli.USAGE} == set(), "variables missing from fsm-init --help"


def test_every_my_init_option_is_documented():
    for option in [*cli.MY_INIT_OPTIONS, "--quiet", "--enable-insecure-key"]:
        assert f"`{option}`" in README, option
