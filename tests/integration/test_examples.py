"""The example services srv/web and srv/logship, run as they ship.

Each runs under fsm-init as PID 1 of a fresh PID namespace (``tests/conftest.py``; the
harness also gives it a network namespace of its own, so web's port 8080 and its firewall
stay there) from a copy of srv/.  The services use this machine's tools (bash, jq, flock,
nc, pidof, python3), which ``./scripts/setup`` installs; the image test runs web with the
image's own tools.  Every wait has a deadline and polls for an event.
"""

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from fsm_init.config import workcfg as fsm_config
from fsm_init.config import schema as config_schema
from tests.conftest import ROOT, needs_pid_namespace, wait_for

EXAMPLES = ROOT / "srv"
# What the examples write while they run, should a checkout have run them.
RUNTIME_FILES = shutil.ignore_patterns("service.run.count", "*.Enabled", "*.lock", "logship.cfg", "logs", "inbox",
                                       "outbox", "status.json", ".status.json.*")


@pytest.fixture
def examples(sandbox):
    for tool in ("bash", "jq", "flock", "nc", "pidof", "tail", "iptables"):
        assert shutil.which(tool), f"{tool} is missing: the example services need it (./scripts/setup installs it)"
    for name in ("web", "logship"):
        shutil.copytree(EXAMPLES / name, sandbox.srv / name, ignore=RUNTIME_FILES)
    return sandbox


def shipped_config(name: str, **changes) -> dict:
    config = json.loads((EXAMPLES / name / "workcfg.json").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            config.setdefault(section, {})[field] = value
        else:
            config[key] = value
    return config


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/status").read_text().split("PPid:")[1].split()[0])
    except (OSError, IndexError):
        return 0


def named(run, name: str) -> list[int]:
    """Host pids of the namespace's processes whose argv[0] is name (as `pidof name` sees
    them), less the short-lived forks of such a process (a shell's subshell before it execs)."""
    found = [pid for pid in run.namespace_pids() if cmdline(pid)[:1] == [name]]
    return [pid for pid in found if parent(pid) not in found]


def healthy(run, *checks: str):
    """The status once the service runs and the latest cycle ran and passed every named check."""
    def passed():
        result = run.srvctl("status", "--json")
        if result.returncode != 0:
            return None
        status = json.loads(result.stdout)
        ran = {c["name"]: c["exit"] for c in status["checks"]}
        if status["state"] == "watch" and status["service_pid"] and all(ran.get(c) == 0 for c in checks):
            return status
        return None
    return wait_for(passed, 20, f"checks {checks} to pass\n--- log:\n{run.log}", interval=0.1)


def in_netns(run, *argv) -> subprocess.CompletedProcess:
    """Run argv in the service's network namespace (the only network the tests touch)."""
    return subprocess.run(["nsenter", "-t", str(run.pid1), "-n", *argv], capture_output=True, text=True, timeout=15)


def batches(outbox: Path) -> list[str]:
    """Every line shipped into outbox (and its forwarded/), in batch order."""
    files = sorted(outbox.glob("batch-*.log")) + sorted(outbox.glob("forwarded/batch-*.log"))
    return [line for f in sorted(files, key=lambda p: p.name) for line in f.read_text().splitlines()]


# -- web: status-check mode ------------------------------------------------------------------

@needs_pid_namespace
def test_web_serves_checks_publishes_ships_its_log_and_is_restarted_when_killed(examples):
    web = examples.srv / "web"
    run = examples.start(SRVNAME="web")
    status = healthy(run, "PeriodicST-http", "PeriodicST-logship")
    assert status["mode"] == "status-check" and status["period"] == 5, status
    assert run.srvctl("health").returncode == 0
    # The daemon runs under its own name, with the shipper of its access log beside it.
    [httpd] = named(run, "web-httpd")
    assert named(run, "logship-shipper"), run.log
    page = in_netns(run, "python3", "-c", "import urllib.request as u; "
                    "print(u.urlopen('http://127.0.0.1:8080/', timeout=5).read().decode())")
    assert "<h1>web</h1>" in page.stdout, page
    # PeriodicMT-publish ran after a healthy cycle (it guards its re-entry with flock).
    published = wait_for(lambda: (web / "htdocs/status.json").exists() and
                         json.loads((web / "htdocs/status.json").read_text()), what=f"status.json\n{run.log}")
    assert published["healthy"] is True and published["cycle"] >= 1 and published["period"] == 5, published
    # logship (wired in by web-start.sh) ships the access log: the checks' own requests.
    wait_for(lambda: any('"GET / HTTP/1.0" 200' in line for line in batches(web / "logs/outbox")),
             what=f"a shipped access-log batch\n{run.log}")

    # A failure: the daemon dies; the next PeriodicST-http fails and fsm-init restarts web.
    os.kill(httpd, signal.SIGKILL)
    run.wait_log(r"check failed: PeriodicST-http exited 1", timeout=15)
    restarted = wait_for(lambda: [p for p in named(run, "web-httpd") if p != httpd], 20,
                         f"a new web-httpd\n{run.log}", interval=0.1)
    status = healthy(run, "PeriodicST-http", "PeriodicST-logship")
    assert status["restarts"] >= 1 and named(run, "web-httpd") == restarted, status
    assert len(named(run, "logship-shipper")) >= 1, "the restart stopped the shipper and did not start it again"
    assert "web-httpd is not running" in run.log + run.output


# -- web: readiness it declares (workready "fd:3") ---------------------------------------------

# python3 as web-start.sh finds it first on its PATH, in /usr/local/bin of the namespace's own
# mount namespace (an overlay the launcher mounts; the machine's is untouched): the real
# python3, under the name web-start.sh gave it (#! loses argv[0]), once the test lets it.
PYTHON_AFTER_GATE = """#!/bin/bash
for _ in $(seq 600); do
    [ -e {gate} ] && exec -a web-httpd {python} "$@"
    sleep 0.05
done
exit 1
"""
OVER_USR_LOCAL_BIN = 'mount -t overlay overlay -o "lowerdir=$0:/usr/local/bin" /usr/local/bin && exec "$@"'


def holders(run, target: str) -> list[int]:
    """Host pids of the namespace's processes with target (e.g. "pipe:[123]") open."""
    found = []
    for pid in run.namespace_pids():
        try:
            names = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if target in names:
            found.append(pid)
    return found


@needs_pid_namespace
def test_web_is_ready_once_its_server_listens_and_says_so_on_fd_3(examples):
    shims, gate = examples.root / "shims", examples.root / "listen"
    shims.mkdir()
    python = shutil.which("python3", path="/usr/sbin:/usr/bin:/sbin:/bin")
    (shims / "python3").write_text(PYTHON_AFTER_GATE.format(gate=gate, python=python))
    (shims / "python3").chmod(0o755)
    # The shipped config (workready "fd:3"), with a first check after 5 s, not 2: the test
    # looks at the instance before its server runs, and a failed check would restart it.
    run = examples.start(SRVNAME="web", SRVCFG=json.dumps(shipped_config("web", workintvl=5)),
                         launcher=("sh", "-c", OVER_USR_LOCAL_BIN, str(shims)))

    # Before the server listens: web-start.sh has exec'd web-httpd.py with fd 3, the pipe
    # fsm-init reads; not ready, and srvctl health says what it waits for.
    def held_back():
        return next((p for p in run.namespace_pids() if cmdline(p)[1:2] == ["/usr/local/bin/python3"]), None)
    waiting = wait_for(held_back, what=f"web-start.sh to exec python3\n{run.log}")
    assert cmdline(waiting)[2:5] == ["-u", "./web-httpd.py", "3"], cmdline(waiting)
    pipe = os.readlink(f"/proc/{waiting}/fd/3")
    assert pipe.startswith("pipe:["), pipe
    readiness = run.status()["readiness"]
    assert (readiness["workready"], readiness["notified"], readiness["ready"]) == ("fd:3", False, False), readiness
    answer = run.srvctl("health")
    assert answer.returncode == 1 and "waiting for a newline on file descriptor 3" in answer.stdout, answer
    assert ":8080 " not in in_netns(run, "ss", "-ltn").stdout
    # Its helpers (logship, the tee of the request log) closed their copies: only the
    # server-to-be and fsm-init (the read end) hold the pipe.
    wait_for(lambda: sorted(holders(run, pipe)) == sorted([run.pid1, waiting]), 10,
             f"the helpers to close fd 3: {holders(run, pipe)} ({run.pid1}, {waiting})")

    # The server starts: once it listens it says so, and after a passed check it is ready.
    gate.touch()
    notified = wait_for(lambda: run.status()["readiness"]["notified"], 10, f"the newline on fd 3\n{run.log}")
    assert notified and ":8080 " in in_netns(run, "ss", "-ltn").stdout
    wait_for(lambda: run.srvctl("health").returncode == 0, 20, f"srvctl health 0\n{run.log}", interval=0.1)
    status = run.status()
    readiness = status["readiness"]
    assert (readiness["workready"], readiness["notified"], readiness["ready"]) == ("fd:3", True, True), status
    assert {c["name"]: c["exit"] for c in status["checks"]}.get("PeriodicST-http") == 0, status
    assert "workready fd:3: the service says it is ready" in run.log
    # Nobody holds the pipe any more: fsm-init closed its end at the newline, the server its own.
    [httpd] = named(run, "web-httpd")
    assert cmdline(httpd)[1:4] == ["-u", "./web-httpd.py", "3"], cmdline(httpd)
    wait_for(lambda: holders(run, pipe) == [], 5, f"fd 3 closed: {holders(run, pipe)}")


@needs_pid_namespace
def test_web_without_workready_fd_runs_http_server_as_before(examples):
    config = shipped_config("web")
    del config["workready"]
    run = examples.start(SRVNAME="web", SRVCFG=json.dumps(config))
    status = healthy(run, "PeriodicST-http")
    assert status["readiness"]["workready"] == "checks" and status["readiness"]["ready"] is True, status
    [httpd] = named(run, "web-httpd")
    assert cmdline(httpd)[1:4] == ["-u", "-m", "http.server"], cmdline(httpd)


# -- logship: daemon mode ----------------------------------------------------------------------

@needs_pid_namespace
def test_logship_ships_lines_refuses_a_second_instance_and_is_restarted_when_killed(examples):
    logship = examples.srv / "logship"
    inbox, outbox = logship / "inbox/app.log", logship / "outbox"
    inbox.parent.mkdir()
    inbox.write_text("".join(f"before start {n}\n" for n in range(3)))
    run = examples.start(SRVNAME="logship")
    status = run.wait_state("watch")
    assert status["mode"] == "daemon", status
    wait_for(lambda: batches(outbox) == [f"before start {n}" for n in range(3)], what=f"3 lines shipped\n{run.log}")
    [shipper] = wait_for(lambda: [p for p in named(run, "logship-shipper")], what="logship-shipper")
    with inbox.open("a") as f:
        f.write("while running\n")
    wait_for(lambda: batches(outbox)[-1:] == ["while running"], what=f"the appended line\n{run.log}")

    # The flock -n guard: a second shipper for the same directory does not start.
    second = subprocess.run(["timeout", "10", str(logship / "logship-start.sh")], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "SRVCFG": json.dumps(shipped_config("logship"))})
    assert second.returncode == 75 and "another shipper holds" in second.stderr, second
    # Its Periodic check agrees that the shipper runs.
    assert subprocess.run([str(logship / "PeriodicST-shipper")], capture_output=True).returncode == 0

    # A failure: the shipper is killed; daemon mode starts it again after workintvl, and it
    # goes on from the saved offset: nothing lost, nothing shipped twice.
    os.kill(shipper, signal.SIGKILL)
    run.wait_log(r"service \(pid \d+\) was killed by SIGKILL", timeout=10)
    wait_for(lambda: [p for p in named(run, "logship-shipper") if p != shipper], 15,
             f"a new logship-shipper\n{run.log}", interval=0.1)
    with inbox.open("a") as f:
        f.write("after the restart\n")
    expected = [f"before start {n}" for n in range(3)] + ["while running", "after the restart"]
    wait_for(lambda: batches(outbox) == expected, what=f"every line once\n{batches(outbox)}\n{run.log}")
    assert run.status()["restarts"] >= 1


@needs_pid_namespace
def test_logship_in_status_check_mode_runs_its_periodic_scripts(examples):
    # The same directory supervised by checks (workwatch 2): fsm-init itself runs
    # PeriodicST-shipper every cycle and PeriodicMT-prune after each healthy one.
    logship = examples.srv / "logship"
    outbox = logship / "outbox"
    outbox.mkdir()
    for n in range(5):
        (outbox / f"batch-20000101T00000{n}-1-{n:06d}.log").write_text(f"old {n}\n")
    config = shipped_config("logship", workwatch=2, workintvl=1, logship__keep=2)
    run = examples.start(SRVNAME="logship", SRVCFG=json.dumps(config))
    healthy(run, "PeriodicST-shipper")
    wait_for(lambda: len(list(outbox.glob("batch-2000*.log"))) == 2, what=f"PeriodicMT-prune to keep 2\n{run.log}")
    assert sorted(p.name for p in outbox.glob("batch-2000*.log"))[0].startswith("batch-20000101T000003")
    # Killing the shipper fails the next check, and fsm-init restarts the service.
    [shipper] = named(run, "logship-shipper")
    os.kill(shipper, signal.SIGKILL)
    run.wait_log(r"check failed: PeriodicST-shipper exited 1")
    wait_for(lambda: [p for p in named(run, "logship-shipper") if p != shipper], 15,
             f"a new logship-shipper\n{run.log}", interval=0.1)
    healthy(run, "PeriodicST-shipper")


@needs_pid_namespace
def test_logship_forwards_batches_to_a_tcp_listener(examples):
    # forward: "127.0.0.1:PORT" inside the service's own network namespace; a listener
    # there (nc -l, started in that namespace) receives the batches.
    logship = examples.srv / "logship"
    inbox, received = logship / "inbox/app.log", examples.root / "received.log"
    config = shipped_config("logship", logship__forward="127.0.0.1:5140")
    run = examples.start(SRVNAME="logship", SRVCFG=json.dumps(config))
    run.wait_state("watch")
    listener = subprocess.Popen(["nsenter", "-t", str(run.pid1), "-n", "sh", "-c",
                                 f"while :; do nc -l 127.0.0.1 5140 >> {received}; done"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: "127.0.0.1:5140" in in_netns(run, "ss", "-ltn").stdout, what="the listener")
        inbox.parent.mkdir(exist_ok=True)
        inbox.write_text("to the collector 1\nto the collector 2\n")
        wait_for(lambda: received.exists() and received.read_text().splitlines() ==
                 ["to the collector 1", "to the collector 2"], what=f"the forwarded batch\n{run.log}")
        wait_for(lambda: list((logship / "outbox/forwarded").glob("batch-*.log")), what="the batch moved to forwarded/")
    finally:
        os.killpg(listener.pid, signal.SIGKILL)
        listener.wait(5)


# -- the configurations the examples ship ------------------------------------------------------

def keys(mapping: dict, prefix="") -> set[str]:
    found = set()
    for key, value in mapping.items():
        found.add(prefix + key)
        if isinstance(value, dict):
            found |= keys(value, f"{prefix}{key}.")
    return found


def test_imginit_workcfg_shows_every_key_with_its_default():
    shipped = json.loads((EXAMPLES / "imginit/workcfg.json").read_text())
    defaults = fsm_config.defaults()
    assert keys(shipped) == keys(defaults)
    effective, problems = config_schema.validate(shipped)
    assert not problems
    # The default target's one choice: no initial delay, so `docker run IMAGE CMD` starts
    # CMD at once, non-daemon, like tini; with no CMD the container idles.
    differs = {k for k in defaults if effective[k] != defaults[k]}
    assert differs == {"initdelay"}, differs
    assert (shipped["initdelay"], shipped["workstart"], shipped["workwatch"]) == (0, None, None)


@pytest.mark.parametrize("name", ["imginit", "demo", "web", "logship"])
def test_every_shipped_service_config_validates(name):
    effective, problems = config_schema.validate(json.loads((EXAMPLES / name / "workcfg.json").read_text()))
    assert not problems, [p.describe() for p in problems]
    for script in (EXAMPLES / name).glob("Periodic*"):
        assert os.access(script, os.X_OK), f"{script} is not executable: fsm-init would skip it"


def test_the_kubernetes_example_probes_over_http_and_stops_within_its_grace_period():
    from fsm_init.core.http_probes import parse_address

    text = (ROOT / "examples/kubernetes.yaml").read_text()
    probe = lambda kind: re.search(kind + r":\s+httpGet:\s+path: (\S+)\s+port: (\S+)", text).groups()  # noqa: E731
    assert probe("readinessProbe") == ("/readyz", "fsm-init")
    assert probe("livenessProbe") == ("/livez", "fsm-init")
    address = re.search(r"- name: FSM_INIT_HTTP\s+value: \"(\S+)\"", text).group(1)
    port = re.search(r"- name: fsm-init\s+containerPort: (\d+)", text).group(1)
    assert parse_address(address)[1] == int(port)
    env = dict(re.findall(r"- name: (FSM_INIT_\w+)\s+value: \"(\d+)\"", text))
    grace = int(re.search(r"terminationGracePeriodSeconds: (\d+)", text).group(1))
    # The stop budget a little under the kubelet's SIGKILL (issue 16): 28 of 30 s.
    assert grace - 3 <= int(env["FSM_INIT_STOP_BUDGET"]) < grace
    srvname = re.search(r"- name: SRVNAME\s+value: (\S+)", text).group(1)
    assert (EXAMPLES / srvname).is_dir()
    # The ConfigMap's workcfg.json (passed as $SRVCFG) is a valid config for that service.
    block = re.search(r"workcfg.json: \|\n((?:    .*\n)+)", text).group(1)
    workcfg = json.loads(block)
    assert not config_schema.validate(workcfg)[1]
    shipped = json.loads((EXAMPLES / srvname / "workcfg.json").read_text())
    assert workcfg["workstart"] == shipped["workstart"]
    # Ready when web-httpd says it listens (a newline on its fd 3) and a check cycle passed.
    assert workcfg["workready"] == shipped["workready"] == "fd:3"


def test_the_compose_example_configs_are_valid():
    text = (ROOT / "examples/docker-compose.yml").read_text()
    for srvname in re.findall(r"SRVNAME: (\w+)", text):
        assert (EXAMPLES / srvname).is_dir(), srvname
    folded = re.findall(r"SRVCFG: >-\n((?:        .*\n)+)", text)
    quoted = re.findall(r"SRVCFG: '(.*)'", text)
    assert folded and quoted
    for raw in folded + quoted:
        assert not config_schema.validate(json.loads(raw))[1], raw
    # Each container's stop budget a little under its stop_grace_period (issue 16).
    blocks = re.split(r"\n  (?=\w+:\n)", text.split("\nservices:\n")[1].split("\nvolumes:\n")[0])
    assert len(blocks) == 3
    # web passes no SRVCFG: its own workcfg.json, which declares readiness on fd 3.
    [web] = [block for block in blocks if "SRVNAME: web" in block]
    assert not re.search(r"^ +SRVCFG:", web, re.M) and '"workready": "fd:3"' in web
    assert json.loads((EXAMPLES / "web/workcfg.json").read_text())["workready"] == "fd:3"
    for block in blocks:
        period = int(re.search(r"stop_grace_period: (\d+)s", block).group(1))
        assert period - 2 <= int(re.search(r'FSM_INIT_STOP_BUDGET: "(\d+)"', block).group(1)) < period, block
