"""``docker run IMAGE CMD`` with the base image's default srv/imginit present and no
$SRVNAME: the command runs as under tini (no firewall, no network step, no error line)
and gets exactly the environment the container was started with.  A misspelled
$SRVNAME is an error line naming the service directories that exist."""

import json
from pathlib import Path

from tests.conftest import ROOT, Running, needs_pid_namespace

pytestmark = needs_pid_namespace

IMGINIT_CFG = (ROOT / "srv" / "imginit" / "workcfg.json").read_text()
# The environment block sh was given by fsm-init, NUL-separated, as the kernel keeps it.
DUMP_ENV = 'cat /proc/$$/environ > "$0"'


def image_like(sandbox) -> None:
    """The base image's /srv: imginit with its real workcfg.json (firewall on, deny-all)."""
    sandbox.service("imginit", IMGINIT_CFG)
    sandbox.service("web", {"initdelay": 0})


def start_bare(sandbox, *args, **extra) -> Running:
    """fsm-init with no locale variable at all, as in a container from debian:bookworm-slim:
    Python's locale coercion applies."""
    drop = ("LANG", "LC_ALL", "LC_CTYPE", "LANGUAGE", "PYTHONCOERCECLOCALE")
    env = {k: v for k, v in sandbox.env(**extra).items() if k not in drop}
    env["PWD"] = str(sandbox.root)  # as the launcher's shell, which starts there, exports it
    running = Running(sandbox, args, env)
    sandbox.runs.append(running)
    return running, env


def read_environ(path: Path) -> dict:
    items = [item for item in path.read_bytes().split(b"\0") if item]
    return dict(item.decode().split("=", 1) for item in items)


def test_a_command_without_srvname_runs_as_under_tini_with_exactly_its_environment(sandbox):
    image_like(sandbox)
    (sandbox.root / "container_environment").mkdir()
    seen = sandbox.root / "seen-env"
    run, given = start_bare(sandbox, "--", "sh", "-c", DUMP_ENV, str(seen))
    assert run.wait() == 0, run.log
    # tini plus a graceful stop: no firewall, no network step, no error or warning line
    assert "firewall" not in run.log, run.log
    assert "error" not in run.log and "warning" not in run.log, run.log
    assert "as under tini" in run.log
    assert not (sandbox.state_dir / "target").exists()
    # exactly the environment fsm-init was given: no LC_CTYPE from Python's locale
    # coercion, no $SRVCFG the container was not started with
    child = read_environ(seen)
    assert child == given, {k: (given.get(k), child.get(k)) for k in set(child) ^ set(given) |
                            {k for k in child if child.get(k) != given.get(k)}}
    dumped = {p.name for p in (sandbox.root / "container_environment").iterdir()}
    assert "LC_CTYPE" not in dumped and "PATH" in dumped
    assert "LC_CTYPE" not in json.loads((sandbox.root / "container_environment.json").read_text())


def test_with_srvname_the_named_services_config_applies_and_is_in_srvcfg(sandbox):
    sandbox.service("imginit", IMGINIT_CFG)
    sandbox.service("web", {"initdelay": 0, "tag": "web's own"})
    seen = sandbox.root / "seen-env"
    run, given = start_bare(sandbox, "--", "sh", "-c", DUMP_ENV, str(seen), SRVNAME="web")
    assert run.wait() == 0, run.log
    child = read_environ(seen)
    assert json.loads(child.pop("SRVCFG"))["tag"] == "web's own"
    assert child == given
    assert "as under tini" not in run.log


def test_a_misspelled_srvname_is_an_error_naming_the_directories(sandbox):
    image_like(sandbox)
    sandbox.service("we\x1bb", {"initdelay": 0})
    run = sandbox.start("--", "true", SRVNAME="wbe")
    assert run.wait() == 0, run.log
    line = next(line for line in run.log.splitlines() if "'wbe'" in line)
    assert " error: " in line, run.log
    assert "'imginit'" in line and "'web'" in line and r"'we\x1bb'" in line and "\x1b" not in line
    assert "falling back" in line
