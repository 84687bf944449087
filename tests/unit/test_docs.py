"""The docs are the contract. The README introduces and leads to `docs/`, one page per
topic; every environment variable fsm-init reads, every `workcfg.json` key, every srvctl
verb and every my_init option it takes is documented on its page (the variables also in
`fsm-init --help`), and every link between the pages leads somewhere."""

import re
from pathlib import Path

from fsm_init import cli
from fsm_init.client import srvctl
from fsm_init.config import workcfg as config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
# Set by fsm-init for itself, not by users: the thin reaper's hand-over state
# (fsm_init/core/reaper.py) and the PPPoE link hooks' log target (fsm_init/network/pppoe.py).
INTERNAL = {"FSM_INIT_HANDOVER", "FSM_INIT_LOG_PID"}


def page(name: str) -> str:
    return (DOCS / name).read_text()


def variables_read() -> set[str]:
    found = set()
    for path in (ROOT / "fsm_init").rglob("*.py"):
        found |= set(re.findall(r'"((?:FSM_INIT|KILL)_[A-Z_]+|ENV_INIT_DIRECTORY)"', path.read_text()))
    return found - INTERNAL


def config_keys(table: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in table.items():
        keys |= config_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


def documented_config_keys(text: str) -> set[str]:
    """The keys in the first cells of the configuration table: `sshsrv.sshport`, or a row
    `firewall.igmppermit`, `grepermit` naming more keys of one section."""
    keys = set()
    for cell in re.findall(r"^\| (`[a-z][^|]*`) \|", text, re.M):
        section = ""
        for key in re.findall(r"`([a-z.]+)`", cell):
            if "." in key:
                section = key.split(".")[0] + "."
                keys.add(key)
            else:
                keys.add(section + key)
    return keys


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in target]


def test_the_scan_finds_the_variables():
    assert {"FSM_INIT_STOP_GRACE", "KILL_PROCESS_TIMEOUT", "ENV_INIT_DIRECTORY"} <= variables_read()


def test_every_variable_is_in_the_environment_page_and_in_the_help():
    table = set(re.findall(r"^\| `([A-Z_]+)` \|", page("environment.md"), re.M))
    assert variables_read() - table == set(), "variables missing from docs/environment.md's table"
    assert {v for v in variables_read() if v not in cli.USAGE} == set(), "variables missing from fsm-init --help"


def test_every_config_key_is_in_the_configuration_page():
    keys = config_keys(config.defaults())
    assert {"initdelay", "workretry.window", "firewall.grepermit", "inetdail.dialpswd"} <= keys
    documented = documented_config_keys(page("configuration.md"))
    assert keys - documented == set(), "keys missing from docs/configuration.md's table"
    assert documented - keys == set(), "docs/configuration.md's table names keys fsm-init does not have"


def test_every_srvctl_verb_has_its_entry_on_the_srvctl_page():
    text = page("srvctl.md")
    entries = re.findall(r"^\* (.*?) —", text, re.M)
    for verb in srvctl.VERBS:
        assert any(re.search(rf"`{verb}(?: [^`]*)?`", entry) for entry in entries), f"srvctl {verb}"
    for verb in srvctl.DAEMON_VERBS:
        assert any(f"`{verb} NAME`" in entry for entry in entries), f"srvctl {verb} NAME"


def test_every_my_init_option_is_documented():
    text = page("baseimage-docker.md")
    for option in [*cli.MY_INIT_OPTIONS, "--quiet", "--enable-insecure-key"]:
        assert f"`{option}`" in text, option


def test_the_readme_leads_to_every_docs_page():
    pages = {path.name for path in DOCS.glob("*.md")}
    assert {"configuration.md", "environment.md", "srvctl.md", "baseimage-docker.md", "imginit.md",
            "security.md", "hardened-containers.md", "benchmark.md", "code-layout.md"} <= pages
    linked = {target.split("#")[0].removeprefix("docs/") for target in links(ROOT / "README.md")}
    assert pages - linked == set(), "docs pages the README does not lead to"


def test_every_link_between_the_pages_resolves():
    for source in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in links(source):
            file, _, anchor = target.partition("#")
            path = (source.parent / file).resolve() if file else source
            assert path.exists(), f"{source.relative_to(ROOT)}: link to {target}: no such file"
            if anchor:
                assert anchor in anchors(path), f"{source.relative_to(ROOT)}: link to {target}: no such heading"


def test_the_readme_is_an_introduction_with_the_two_commands():
    assert len(README.splitlines()) < 300
    for command in ("./scripts/demo     # the main job", "./scripts/test     # the whole test suite"):
        assert command in README
    assert "exec ./scripts/test" in (ROOT / ".ci" / "run").read_text()
    assert README.count("```mermaid") == 1
