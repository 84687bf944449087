"""The image under a real Docker engine (and Docker Swarm), as its users run it.

One dockerd (started here when none answers, stopped at the end with the host's iptables,
ip_forward and docker0 put back: see dockerhost.py) and one image built from the checkout
serve the whole module; containers that do not depend on each other run side by side.
With CI=true a Docker that cannot run fails these tests instead of skipping them.
"""

import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration import dockerhost
from tests.integration.dockerhost import Container, docker, out, run

pytestmark = pytest.mark.integration

GRACE = 3  # docker stop --time for the tests that stop containers


@pytest.fixture(scope="module")
def engine():
    engine = dockerhost.Engine()
    engine.up()
    try:
        yield engine
    finally:
        dockerhost.cleanup()
        if out("info", "--format", "{{.Swarm.LocalNodeState}}", check=False) == "active" and Swarm.joined:
            docker("swarm", "leave", "--force", check=False, timeout=60)
        started = engine.proc is not None
        engine.down()
        if started:
            assert not engine.differences(), f"dockerd left the host changed: {engine.differences()}"


BUILDKIT_TAG = "fsm-init-test/buildkit:latest"


@pytest.fixture(scope="module")
def buildkit(engine):
    """A BuildKit build of the checkout, running beside the classic build and the tests."""
    dockerhost.base_image()
    proc, log = dockerhost.start_buildkit_build(BUILDKIT_TAG)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def image(engine, buildkit):
    tag, took = dockerhost.build_image()
    print(f"docker build of the image: {took:.1f}s")
    return tag


def exited(containers: dict, timeout=30) -> dict:
    """name -> exit status of containers that end on their own (waited for together)."""
    return {key: container.wait_exit(timeout) for key, container in containers.items()}


def fsm_lines(logs: str) -> list[str]:
    """fsm-init's warning and error lines, without their time stamps."""
    return [re.sub(r"^\S*\d\d:\d\d:\d\d\S*\s+", "", line) for line in logs.splitlines()
            if re.search(r"\b(warning|error)\b", line)]


def assert_nothing_repeated(container: Container) -> None:
    """What cannot work here is said once at start-up, never again every cycle."""
    logs = container.logs()
    said = fsm_lines(logs)
    # (A failed check cycle is an event of its own, each time it happens.)
    repeated = {line for line in said if said.count(line) > 1 and "check failed" not in line}
    assert not repeated, f"repeated in docker logs {container.name}: {repeated}\n{logs[-3000:]}"


# -- a command line: tini's ground --------------------------------------------------------------

def test_exit_codes_are_the_commands(image):
    containers = {
        0: run(image, health=False, cmd=["true"]),
        3: run(image, health=False, cmd=["sh", "-c", "exit 3"]),
        126: run(image, health=False, cmd=["/etc/hostname"]),
        127: run(image, health=False, cmd=["no-such-command"]),
        137: run(image, health=False, cmd=["sh", "-c", "kill -KILL $$"]),
        143: run(image, health=False, cmd=["sh", "-c", "kill -TERM $$"]),
    }
    codes = exited(containers)
    assert codes == {k: k for k in containers}, {k: (v, containers[k].logs()[-500:]) for k, v in codes.items()}


def test_docker_stop_plain_ignoring_and_at_once(image):
    plain = run(image, health=False, cmd=["sleep", "600"])
    ignoring = run(image, health=False, cmd=["sh", "-c", "trap '' TERM; echo trapped; while :; do sleep 0.2; done"])
    # docker stop right after docker run -d: the TERM must not be lost in PID 1's start-up.
    at_once = run(image, health=False, cmd=["sleep", "600"])
    took_at_once = at_once.stop(GRACE * 3)
    assert at_once.state()["ExitCode"] == 143 and took_at_once < GRACE * 3 - 1, \
        (took_at_once, at_once.state(), at_once.logs())
    wait_for(lambda: plain.processes() and any("sleep 600" in p for p in plain.processes()), what="sleep to run")
    took = plain.stop(GRACE)
    assert plain.state()["ExitCode"] == 143 and took < 2, (took, plain.logs())
    ignoring.wait_log("trapped")
    took = ignoring.stop(GRACE)
    assert ignoring.state()["ExitCode"] == 137 and took >= GRACE, (took, ignoring.logs())


def test_hup_and_usr1_are_forwarded(image):
    container = run(image, health=False, cmd=[
        "sh", "-c", "trap 'echo got HUP' HUP; trap 'echo got USR1' USR1; echo ready; "
                    "while :; do sleep 0.1; done"])
    container.wait_log("ready")
    docker("kill", "--signal", "HUP", container.name)
    container.wait_log("got HUP")
    docker("kill", "--signal", "USR1", container.name)
    container.wait_log("got USR1")
    assert container.state()["Status"] == "running"


def test_orphans_leave_no_zombies(image):
    orphans = ["sh", "-c", "for i in $(seq 20); do (sleep 0.3 &); done; echo spawned; exec sleep 600"]
    # The image as it is: cron runs beside the command, so the engine stays PID 1.
    with_cron = run(image, health=False, cmd=orphans)
    # No /etc/service to watch: the engine hands over to the thin reaper after a second.
    container = run(image, "-e", "FSM_INIT_SERVICE_DIRECTORY=/nonexistent", health=False, cmd=orphans)
    def reaped(each: Container) -> list[str]:
        procs = each.processes()
        return [] if any(p.endswith("sleep 0.3") for p in procs) else procs

    for each in (with_cron, container):
        each.wait_log("spawned")
        procs = wait_for(lambda: reaped(each), 15, "the orphans to be reaped", interval=0.2)  # noqa: B023
        assert not any(p.split()[1].startswith("Z") for p in procs), procs
    assert len(container.processes()) == 2, container.processes()  # the thin reaper and sleep 600
    # Issue 10 point 6: after the hand-over to the thin reaper, PID 1 is still fsm-init to
    # ps, pidof and docker top (its name and its command line).
    # (The thin reaper names itself right after its exec: wait for both names.)
    wait_for(lambda: (p := container.processes()) and p[0].split()[2] == "fsm-init"
             and p[0].split()[3].rsplit("/", 1)[-1] == "fsm-init", 15,
             f"the hand-over to the thin reaper: {container.processes()}", interval=0.2)
    assert out("exec", container.name, "pidof", "fsm-init") == "1"
    assert "fsm-init" in out("top", container.name)


def test_a_misspelled_srvname_is_an_error_line_naming_the_services(image):
    # Issue 10 point 7: ENV SRVNAME=helo (not checked at build time) is said at start-up.
    logs = docker("run", "--rm", "-e", "SRVNAME=helo", image, "true").stderr
    line = next((line for line in logs.splitlines() if "helo" in line), "")
    assert "error" in line and "'web'" in line and "'imginit'" in line, logs


def published(container: Container, port: int) -> int:
    """The host port (on 127.0.0.1) docker published the container's port on."""
    mapping = out("port", container.name, f"{port}/tcp")
    return int(mapping.splitlines()[0].rsplit(":", 1)[1])


def http_get(port: int, host="127.0.0.1", timeout=3.0) -> int:
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=timeout) as answer:
        return answer.status


def test_a_command_runs_as_under_tini_reachable_on_its_published_port(image):
    # Issue 10 point 1: no SRVNAME, so no firewall and no network step, even with NET_ADMIN.
    admin = run(image, "--cap-add", "NET_ADMIN", "-p", "127.0.0.1::8080", health=False,
                cmd=["python3", "-m", "http.server", "8080"])
    plain = run(image, "-p", "127.0.0.1::8080", health=False, cmd=["python3", "-m", "http.server", "8080"])
    for container in (admin, plain):
        port = published(container, 8080)
        assert wait_for(lambda: _answers(port), 20, f"http.server on {port}\n{container.logs()}") == 200
        logs = container.logs()
        assert "firewall" not in logs and not fsm_lines(logs), logs


def _answers(port: int) -> int | None:
    try:
        return http_get(port, timeout=1)
    except OSError:
        return None


def test_the_environment_is_dockers_plus_only_documented_additions(image):
    # Issue 10 point 4: what docker set, unchanged, and nothing else but what the README
    # documents.
    args = ["--rm", "--hostname", "envtest", "-e", "GREETING=hello world"]
    docker_set = docker("run", *args, "--entrypoint", "env", image).stdout
    child = docker("run", *args, image, "env").stdout
    as_dict = lambda text: dict(line.split("=", 1) for line in text.splitlines() if "=" in line)  # noqa: E731
    expected, got = as_dict(docker_set), as_dict(child)
    assert {k: got.get(k) for k in expected} == expected, (expected, got)
    assert set(got) - set(expected) <= DOCUMENTED_ADDITIONS, set(got) - set(expected)
    dumped = docker("run", *args, image, "ls", "/etc/container_environment").stdout.split()
    assert set(dumped) <= set(expected) | DOCUMENTED_ADDITIONS, dumped


# What fsm-init adds to a command's environment (README, "Environment"): nothing.
DOCUMENTED_ADDITIONS: set[str] = set()


def test_buildkit_builds_the_dockerfile_without_a_registry(image, buildkit):
    # Issue 10 point 5: a `# syntax=` directive makes BuildKit fetch its frontend from a
    # registry, and an offline build fails at once.  (BuildKit keeps a cache of its own:
    # the first build takes minutes, so it runs in the background from the module's start.)
    assert not re.search(r"^#\s*syntax\s*=", (dockerhost.ROOT / "Dockerfile").read_text(), re.M | re.I)
    proc, log = buildkit
    try:
        status = proc.wait(1800)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the BuildKit build is still running:\n{log.read_text(errors='replace')[-3000:]}")
    assert status == 0, log.read_text(errors="replace")[-3000:]
    assert out("run", "--rm", "--entrypoint", "fsm-init", BUILDKIT_TAG, "--version").startswith("fsm-init ")


# -- the example service and application images -------------------------------------------------

def test_the_web_example_is_healthy_firewalled_and_stops_within_the_grace(image):
    # The example as shipped, but a first check after 5 s, not 2: on a loaded 2-core machine
    # its shipper (bash, jq, flock) can take longer than 2 s to hold its lock.
    workcfg = {**json.loads((dockerhost.ROOT / "srv/web/workcfg.json").read_text()), "workintvl": 5}
    container = run(image, "--cap-add", "NET_ADMIN", "-e", "SRVNAME=web", "-e", "FSM_INIT_STOP_GRACE=5",
                    "-e", f"SRVCFG={json.dumps(workcfg)}", "-p", "127.0.0.1::8080", "--hostname", "web-test")
    container.wait_health()
    assert http_get(published(container, 8080)) == 200
    status = container.status()
    assert status["mode"] == "status-check" and status["target"] == "/srv/web", status
    assert {c["name"] for c in status["checks"]} >= {"PeriodicST-http", "PeriodicST-logship"}, status
    processes = container.processes()
    assert processes[0].split()[0] == "1" and "fsm-init" in processes[0], processes
    assert any("web-httpd" in p for p in processes) and any("logship-shipper" in p for p in processes), processes
    assert out("exec", container.name, "hostname") == "web-test"
    wait_for(lambda: container.exec("test", "-s", "/srv/web/htdocs/status.json").returncode == 0,
             what="PeriodicMT-publish to write status.json")
    # Another port, listened on inside, is filtered from outside the container's namespace.
    container.exec("sh", "-c", "python3 -m http.server 8081 >/dev/null 2>&1 &", check=True)
    wait_for(lambda: container.exec("nc", "-z", "127.0.0.1", "8081").returncode == 0, what="8081 inside")
    address = container.inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
    assert _connects(address, 8080)
    assert not _connects(address, 8081), "port 8081 is open from the host"
    assert "firewall applied: tcp 8080" in container.logs()
    # docker stop: web-httpd (python) does not handle SIGTERM, so 143, well within the grace.
    took = container.stop(10)
    assert container.state()["ExitCode"] == 143 and took < 5, (took, container.logs()[-2000:])


def daemon_state(container: Container, name: str) -> dict | None:
    status = container.status()
    return next((d for d in (status or {}).get("daemons", []) if d["name"] == name), None)


def test_cron_runs_jobs_with_the_container_environment_and_logs_their_output(image):
    # baseimage-docker runs cron beside every container; its users drop jobs into /etc/cron.d.
    container = run(image, "-e", "GREETING=hello from docker run", health=False, cmd=["sleep", "600"])
    disabled = run(image, "-e", "DISABLE_CRON=1", health=False, cmd=["sleep", "600"])
    as_user = run(image, "--user", "1000:1000", health=False, cmd=["sleep", "600"])
    wait_for(lambda: (daemon_state(container, "cron") or {}).get("state") == "running",
             what="cron running", interval=0.2)
    container.exec("sh", "-c", "cat > /etc/cron.d/fsm-test <<'EOF'\n"
                   '* * * * * root echo "root job: GREETING=$GREETING"\n'
                   '* * * * * nobody echo "nobody job: GREETING=$GREETING, uid $(id -u)"\n'
                   "EOF\nchmod 644 /etc/cron.d/fsm-test", check=True)
    # DISABLE_CRON: the daemon is known and down; under --user cron says once why it cannot
    # run (it needs root) and stays down (exit 125) instead of a restart loop.
    down = wait_for(lambda: (daemon_state(disabled, "cron") or {}).get("state") == "down"
                    and daemon_state(disabled, "cron"), what="cron known and down", interval=0.2)
    assert down["pid"] is None and "DISABLE_CRON is set: cron is not started" in disabled.logs()
    assert not any("/usr/sbin/cron" in p for p in disabled.processes())
    as_user.wait_log(r"cron: not started: it needs root, and the container runs as uid 1000")
    as_user.wait_log(r"daemon cron \(pid \d+\) exited with status 125; stay down")
    # cron reads its tables and runs jobs at minute boundaries: at most a minute, once in the suite.
    output = re.compile(r"cron-job: (root|nobody) job: ")  # not cron's own "CMD (echo ...)" lines
    logs = wait_for(lambda: len(set(output.findall(log := container.logs()))) == 2 and log, timeout=125,
                    what="the jobs' output in the container log", interval=0.5)
    assert "cron-job: root job: GREETING=hello from docker run\n" in logs, logs
    assert "cron-job: nobody job: GREETING=hello from docker run, uid 65534\n" in logs, logs
    assert "X-Cron-Env" not in logs, logs  # the mail headers list the job's environment: dropped
    assert daemon_state(container, "cron")["restarts"] == 0
    assert as_user.logs().count("cron: not started") == 1 and daemon_state(as_user, "cron")["state"] == "down"


def _connects(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


HELLO = {
    "hello.sh": '#!/bin/bash\n'
                'echo "hello from $SRVNAME"\n'
                '# HOG=yes: the first run takes more memory than the container may have.\n'
                'if [ "${HOG:-}" = yes ] && [ ! -e /tmp/hogged ]; then\n'
                '    touch /tmp/hogged\n'
                '    exec -a hello-app python3 -c "b = bytearray(b\'x\') * (512 << 20)"\n'
                'fi\n'
                'exec -a hello-app sleep 600\n',
    "PeriodicST-alive": "#!/bin/sh\npidof hello-app >/dev/null\n",
}
HELLO_CFG = {"initdelay": 0, "workstart": "./hello.sh", "workwatch": 2, "workintvl": 1,
             "firewall": {"enable": "yes", "tcpportpmt": "8080"}}


def app_context(path: Path, base: str, name: str, workcfg: dict, scripts=None) -> Path:
    """A build context for `FROM fsm-init` + srv/NAME."""
    service = path / "srv" / name
    service.mkdir(parents=True)
    (service / "workcfg.json").write_text(json.dumps(workcfg))
    for script, text in (scripts or HELLO).items():
        (service / script).write_text(text)
        (service / script).chmod(0o755)
    (path / "Dockerfile").write_text(f"FROM {base}\n")
    return path


@pytest.fixture(scope="module")
def hello(image, tmp_path_factory):
    """An application image: FROM fsm-init, srv/hello, --build-arg SRVNAME=hello."""
    context = app_context(tmp_path_factory.mktemp("hello"), image, "hello", HELLO_CFG)
    tag = "fsm-init-test/hello:latest"
    dockerhost.build(context, tag, "SRVNAME=hello")
    assert "SRVNAME=hello" in out("image", "inspect", "-f", "{{json .Config.Env}}", tag)
    return tag


def test_an_onbuild_application_is_healthy_and_recovers_a_killed_app(hello):
    container = run(hello, "--cap-add", "NET_ADMIN")
    container.wait_health()
    status = container.status()
    assert status["target"] == "/srv/hello" and status["mode"] == "status-check", status
    first = status["service_pid"]
    container.exec("pkill", "-KILL", "-f", "hello-app", check=True)
    wait_for(lambda: (s := container.status()) and s["service_pid"] not in (None, first) and s["state"] == "watch"
             and s["checks"] and all(c["exit"] == 0 for c in s["checks"]), 30,
             f"the app to be restarted\n{container.logs()}", interval=0.2)
    container.wait_health()
    assert container.logs().count("hello from hello") == 2
    # docker logs: the service's output, fsm-init's own lines, and a syslog message.
    container.exec("logger", "-t", "tagged", "a message through /dev/log", check=True)
    logs = container.wait_log("a message through /dev/log")
    assert "hello from hello" in logs and "fsm-init" in logs, logs


def test_onbuild_refuses_an_invalid_config_or_a_missing_service(image, tmp_path):
    broken = app_context(tmp_path / "broken", image, "broken", {"workstart": "./hello.sh", "workintvl": 0})
    result = dockerhost.build(broken, "fsm-init-test/broken:latest", "SRVNAME=broken", check=False)
    assert result.returncode != 0, result.stdout
    said = result.stdout + result.stderr
    assert "broken/workcfg.json" in said and "workintvl" in said, said
    missing = dockerhost.build(broken, "fsm-init-test/broken:latest", "SRVNAME=nosuch", check=False)
    assert missing.returncode != 0 and "no /srv/nosuch" in missing.stdout + missing.stderr, missing
    dockerhost.build(broken, "fsm-init-test/broken:latest", "SRVNAME=broken", "FSM_INIT_VALIDATE=warn")


def test_the_image_has_my_inits_layout_and_dumps_the_container_environment(image):
    script = ("stat -c '%n %a %G' /etc/container_environment /etc/container_environment.sh "
              "/etc/container_environment/GREETING; . /etc/container_environment.sh; echo \"greeting=$GREETING\"; "
              "ls -d /etc/my_init.d /etc/my_init.pre_shutdown.d /etc/my_init.post_shutdown.d /etc/service")
    lines = docker("run", "--rm", "-e", "GREETING=it's here", image, "sh", "-c", script).stdout.splitlines()
    assert lines[:3] == ["/etc/container_environment 750 docker_env",
                         "/etc/container_environment.sh 640 docker_env",
                         "/etc/container_environment/GREETING 640 docker_env"], lines
    assert "greeting=it's here" in lines
    assert sorted(lines[-4:]) == ["/etc/my_init.d", "/etc/my_init.post_shutdown.d", "/etc/my_init.pre_shutdown.d",
                                  "/etc/service"]


def test_the_image_is_described_and_built_from_an_allow_listed_context(image):
    config = json.loads(out("image", "inspect", "-f", "{{json .Config}}", image))
    for key in ("title", "description", "version", "revision", "created", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}" in config["Labels"], key
    assert config["Entrypoint"][-2:] == ["fsm-init", "--"] and not config["Cmd"], config
    assert config["StopSignal"] == "SIGTERM" and config["WorkingDir"] == "/srv"
    assert config["Healthcheck"]["Test"] == ["CMD", "srvctl", "health"], config["Healthcheck"]
    # Nothing but what the COPY lines name reaches the image (.dockerignore is an allow-list).
    listing = docker("run", "--rm", "--entrypoint", "sh", image, "-c",
                     "ls -a /srv/web; find /opt/fsm-init -name tests -o -name .git | head -3").stdout.split()
    assert not {"logs", "service.run.count", ".gitignore", ".git", "tests"} & set(listing), listing


def test_the_image_holds_what_services_rely_on_and_nothing_of_the_builder(image):
    script = ("dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n'; echo ---; "
              "find / -xdev -type f \\( -perm -4000 -o -perm -2000 \\); echo ---; "
              "for c in fsm-init srvctl setuser DoNothing dropbear pppd pppoe iptables ipset nc sqlite3 sshpass "
              "inotifywait killall fuser unzip ip ps pidof flock jq logger; do command -v $c || echo missing $c; done; "
              "echo ---; /opt/fsm-init/bin/python -c 'import prctl, netifaces, fsm_init; print(\"ok\")'; "
              "ls /opt/fsm-init/bin | grep -c '^pip' || true; "
              "for s in imginit demo web logship; do fsm-init validate /srv/$s/workcfg.json >/dev/null || echo invalid $s; done")
    packages, setid, commands, rest = docker("run", "--rm", "--entrypoint", "sh", image, "-c", script).stdout.split("---\n")
    installed = {line.split()[0] for line in packages.splitlines() if line.split()[1:] == ["ii"]}
    assert {"python3", "iptables", "dropbear-bin", "ppp", "pppoe", "iproute2", "procps", "jq", "libcap2"} <= installed
    assert not {"gcc", "libcap-dev", "python3-dev", "python3-venv"} & installed
    assert setid == "", setid
    assert "missing" not in commands, commands
    assert rest.split() == ["ok", "0"], rest


# -- hardened settings --------------------------------------------------------------------------

HARDENED = {
    "user": ["--user", "1000:1000"],
    # ... and a $SRVCFG that cannot be written over workcfg.json: used from memory.
    "read-only": ["--read-only", "-e", "SRVCFG=" + json.dumps(HELLO_CFG)],
    "read-only-tmpfs": ["--read-only", "--tmpfs", "/run", "--tmpfs", "/tmp"],
    "cap-drop-all": ["--cap-drop", "ALL"],
    "no-new-privileges": ["--security-opt", "no-new-privileges", "--cap-add", "NET_ADMIN"],
    "init": ["--init", "--cap-add", "NET_ADMIN"],
    "pids-limit": ["--pids-limit", "50", "--cap-add", "NET_ADMIN"],
    "memory": ["--memory", "64m", "--memory-swap", "64m", "-e", "HOG=yes", "--cap-add", "NET_ADMIN"],
}


@pytest.fixture(scope="module")
def hardened(hello):
    """Every hardened container at once (they start in parallel)."""
    return {key: run(hello, *args) for key, args in HARDENED.items()}


@pytest.mark.parametrize("setting", list(HARDENED))
def test_hardened_container_is_healthy(hardened, setting):
    container = hardened[setting]
    container.wait_health(timeout=60)
    if setting == "pids-limit":
        # Fork failures: the container's processes at the limit for a few seconds.
        forks = container.exec("sh", "-c", "for i in $(seq 60); do sleep 4 & done; wait", timeout=30)
        assert "fork" in forks.stderr.lower() or "resource temporarily unavailable" in forks.stderr.lower(), forks
        # Recovered: a check cycle of the (perhaps restarted) service passed again.
        wait_for(lambda: container.exec("srvctl", "health").returncode == 0, 60,
                 f"a passed check cycle after the fork failures\n{container.logs()[-3000:]}", interval=0.5)
        assert out("exec", container.name, "cat", "/proc/1/comm") in ("fsm-init", "python3")
    if setting == "memory":
        logs = container.wait_log(r"out-of-memory", timeout=30)
        assert "64" in [line for line in logs.splitlines() if "out-of-memory" in line][0], logs
        why = container.exec("srvctl", "why").stdout
        assert "out-of-memory" in why, why
    # At least a few check cycles later, nothing was said twice.
    wait_for(lambda: len(json.loads(container.inspect("{{json .State.Health.Log}}"))) >= 5, 30,
             "five health checks")
    assert_nothing_repeated(container)
    if setting == "cap-drop-all":
        assert container.logs().count("no NET_ADMIN capability") == 1, container.logs()
    if setting == "read-only":
        assert container.logs().count("$SRVCFG serves from memory") == 1, container.logs()


# -- Docker Swarm -------------------------------------------------------------------------------

class Swarm:
    joined = False


@pytest.fixture(scope="module")
def swarm(engine):
    state = out("info", "--format", "{{.Swarm.LocalNodeState}}")
    if state != "active":
        result = docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377",
                        check=False, timeout=60)
        if result.returncode != 0:
            dockerhost.unavailable(f"docker swarm init failed: {result.stderr}")
        Swarm.joined = True
    yield
    for service in out("service", "ls", "-q", "--filter", f"label={dockerhost.LABEL}", check=False).split():
        docker("service", "rm", service, check=False)


def service_tasks(name: str) -> list[dict]:
    ids = out("service", "ps", "-q", "--no-trunc", name).split()
    return [json.loads(line) for line in out("inspect", "--format", "{{json .}}", *ids).splitlines()] if ids else []


def running_tasks(name: str) -> list[dict]:
    return [t for t in service_tasks(name) if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]


def task_healthy(task: dict) -> bool:
    container = task["Status"].get("ContainerStatus", {}).get("ContainerID")
    if not container:
        return False
    result = docker("inspect", "-f", "{{.State.Health.Status}}", container, check=False)
    return result.stdout.strip() == "healthy"


def describe(tasks: list[dict]) -> list[str]:
    return [f"{t['ID'][:8]} slot {t.get('Slot')} {t['DesiredState']}/{t['Status']['State']} "
            f"env {t['Spec']['ContainerSpec'].get('Env', [])} {t['Status'].get('Err', '')}" for t in tasks]


def update_state(name: str) -> str:
    return out("service", "inspect", "-f", "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}", name)


def test_swarm_rolling_updates_rollback_and_rm(hello, swarm):
    name = "fsm-hello"
    docker("service", "create", "--name", name, "--label", f"{dockerhost.LABEL}=1", "--replicas", "2",
           "--cap-add", "NET_ADMIN",
           # Retries and a time-out generous enough that a loaded machine does not make a
           # healthy replica look unhealthy (swarm would replace it), and an update monitor
           # longer than the start period plus the retries: a broken replica must be seen
           # unhealthy while swarm still watches it; and a delay as long before the next
           # replica, since swarm goes on to it once the first runs, monitored or not.
           "--health-cmd", "srvctl health", "--health-interval", "1s", "--health-retries", "5",
           "--health-timeout", "10s", "--health-start-period", "5s", "--stop-grace-period", "5s",
           "--update-parallelism", "1", "--update-delay", "25s", "--update-monitor", "20s",
           "--update-failure-action", "rollback", "--update-order", "stop-first",
           "--rollback-parallelism", "1", "--rollback-monitor", "2s",
           "--publish", "mode=host,target=8080", "--detach", hello, timeout=120)

    def all_healthy():
        tasks = running_tasks(name)
        return len(tasks) == 2 and all(task_healthy(t) for t in tasks) and tasks
    wait_for(all_healthy, 90, f"2 healthy replicas: {service_tasks(name)}", interval=0.5)
    # A rolling update that stays healthy.
    docker("service", "update", "--detach", "--env-add", "GREETING=one", name, timeout=60)
    wait_for(lambda: update_state(name) == "completed", 120, f"the update to complete: {update_state(name)}",
             interval=0.5)
    healthy = wait_for(all_healthy, 60, "2 healthy replicas after the update", interval=0.5)
    before = {t["ID"] for t in healthy}
    # An update to a broken configuration (the app's check never passes): rolled back after
    # the first replica, the other one untouched.
    docker("service", "update", "--detach", "--env-add", "SRVCFG=" + json.dumps(
        {**HELLO_CFG, "workstart": "./no-such-script.sh"}), name, timeout=60)
    wait_for(lambda: update_state(name) == "rollback_completed", 180,
             f"the rollback: {update_state(name)} {service_tasks(name)}", interval=0.5)
    after = wait_for(all_healthy, 60, "2 healthy replicas after the rollback", interval=0.5)
    assert len(before & {t["ID"] for t in after}) == 1, "\n".join([str(before), *describe(service_tasks(name))])
    # docker service rm: every task stopped by its TERM (143), within the grace period.
    containers = [t["Status"]["ContainerStatus"]["ContainerID"] for t in after]
    since = str(int(time.time()) - 1)
    started = time.monotonic()
    docker("service", "rm", name)

    def died():
        events = docker("events", "--since", since, "--until", str(int(time.time()) + 1), "--filter", "event=die",
                        "--format", "{{json .}}", timeout=30).stdout.splitlines()
        found = {json.loads(e)["id"]: json.loads(e)["Actor"]["Attributes"].get("exitCode") for e in events}
        return all(c in found for c in containers) and found
    found = wait_for(died, 30, "the tasks to stop", interval=0.5)
    took = time.monotonic() - started
    assert all(found[c] == "143" for c in containers), found
    assert took < 5 + 3, took
