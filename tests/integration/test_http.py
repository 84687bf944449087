"""FSM_INIT_HTTP for real: fsm-init as PID 1 of a fresh PID and network namespace serves
/livez, /readyz, /status and /metrics on the namespace's loopback while its service runs,
crashes and restarts; hostile clients do not stop srvctl or signals; the thin reaper goes
on answering; 1 000 probes are answered quickly.  The metrics are read back with
prometheus_client's OpenMetrics parser and checked against what the test made happen."""

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.conftest import needs_pid_namespace, wait_for, wait_lines

pytestmark = needs_pid_namespace

PORT = 9000
ADDRESS = f"127.0.0.1:{PORT}"
HOLD = "echo $$ >> pids\nwhile :; do sleep 0.05; done\n"
HOLD_HUP = "trap 'echo hup >> hups' HUP\necho $$ >> pids\nwhile :; do sleep 0.05; done\n"
NO_FIREWALL = {"firewall": {"enable": "no"}}
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def network_of(pid: int):
    """This thread in the network namespace of pid (sockets made meanwhile stay there)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    theirs = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if _libc.setns(theirs, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        _libc.setns(own, 0x40000000)
        os.close(own)
        os.close(theirs)


def connect(run, timeout=5.0) -> socket.socket:
    with network_of(run.pid1):
        sock = socket.socket()
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", PORT))
    return sock


def get(run, path: str) -> tuple[int, dict, str]:
    """One GET over a socket in the namespace: (status, headers, body)."""
    with connect(run) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: fsm-init\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    return int(lines[0].split()[1]), dict(line.split(": ", 1) for line in lines[1:]), body.decode()


def curl(run, path: str) -> subprocess.CompletedProcess:
    """curl in the namespace: -w prints the status code after the body."""
    return subprocess.run(["nsenter", "-t", str(run.pid1), "-n", "curl", "-sS", "-m", "5", "-w", "\n%{http_code}",
                           f"http://{ADDRESS}{path}"], capture_output=True, text=True, timeout=15)


def serving(run) -> bool:
    try:
        return get(run, "/livez")[0] == 200
    except OSError:
        return False


def metrics(text: str) -> dict:
    assert text.endswith("# EOF\n")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(run) -> dict:
    status, headers, body = get(run, "/metrics")
    assert status == 200 and headers["Content-Type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    return metrics(body)


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_every_endpoint_while_the_service_runs_crashes_and_restarts(sandbox):
    d = sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1,
                                **NO_FIREWALL}, run__sh=HOLD)
    run = sandbox.start(SRVNAME="app", FSM_INIT_HTTP=ADDRESS)
    run.wait_log(rf"HTTP probes and metrics on {ADDRESS} \(/livez, /readyz, /status, /metrics\)")
    first = int(wait_lines(d / "pids", 1)[0])
    # running: live, then ready after workintvl
    wait_for(lambda: serving(run), what="/livez")
    result = curl(run, "/livez")
    assert result.stdout == "fsm-init answers (watch)\n\n200", result
    wait_for(lambda: curl(run, "/readyz").stdout.endswith("\n200"), what="/readyz 200")
    assert curl(run, "/readyz").stdout.startswith("the service has run ")
    status = json.loads(curl(run, "/status").stdout.rsplit("\n", 1)[0])
    assert status["state"] == "watch" and status["run_count"] == 1 and status == status | {"healthy": True}
    samples = scrape(run)
    assert value(samples, "fsm_init_state", fsm_init_state="watch") == 1
    assert value(samples, "fsm_init_service_starts_total") == 1
    assert value(samples, "fsm_init_service_ready") == 1 and value(samples, "fsm_init_service_ready_seconds") >= 0
    assert value(samples, "fsm_init_transitions_total", to="start") == 1
    assert curl(run, "/nothing").stdout.endswith("\n404")
    # crash: SIGKILL to the service; not ready until the new instance has run workintvl
    os.kill(run.host_pid(first), signal.SIGKILL)
    status, _, body = wait_for(lambda: (r := get(run, "/readyz"))[0] == 503 and r, what="/readyz 503 after the crash")
    assert body.startswith(("no service instance", "the service has run")), body
    assert get(run, "/livez")[0] == 200  # fsm-init is repairing it: alive
    second = int(wait_lines(d / "pids", 2)[1])
    assert second != first
    samples = scrape(run)
    assert value(samples, "fsm_init_service_restarts_total", cause="exit") == 1
    assert value(samples, "fsm_init_service_starts_total") == 2
    wait_for(lambda: get(run, "/readyz")[0] == 200, what="ready again")
    # srvctl restart: another cause; srvctl metrics prints the same families
    assert run.srvctl("restart").returncode == 0
    wait_lines(d / "pids", 3)
    wait_for(lambda: value(scrape(run), "fsm_init_service_starts_total") == 3, what="the third start")
    samples = scrape(run)
    assert value(samples, "fsm_init_service_restarts_total", cause="request") == 1
    assert value(samples, "fsm_init_service_restarts_total", cause="exit") == 1
    assert value(samples, "fsm_init_service_restarts_total", cause="check") == 0
    assert value(samples, "fsm_init_oom_kills_total", process="service") == 0
    assert value(samples, "fsm_init_transitions_total", to="restart") == 2
    printed = run.srvctl("metrics")
    assert printed.returncode == 0
    assert metrics(printed.stdout).keys() == samples.keys()
    assert value(metrics(printed.stdout), "fsm_init_service_starts_total") == 3
    # stopping: the probes answer until fsm-init is gone
    run.signal(signal.SIGTERM)
    assert run.wait() in (0, 143)
    assert "internal error" not in run.log and "Traceback" not in run.log


def test_checks_and_a_failed_check_in_the_metrics_and_readyz(sandbox):
    d = sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 1, "workintvl": 1,
                                **NO_FIREWALL}, run__sh=HOLD, PeriodicST_ok="[ ! -e sick ]\n")
    run = sandbox.start(SRVNAME="app", FSM_INIT_HTTP=ADDRESS)
    wait_lines(d / "pids", 1)
    wait_for(lambda: serving(run) and get(run, "/readyz")[0] == 200, what="ready")
    samples = scrape(run)
    assert value(samples, "fsm_init_check_runs_total", script="PeriodicST-ok", result="passed") >= 1
    assert value(samples, "fsm_init_check_runs_total", script="PeriodicST-ok", result="failed") == 0
    assert 0 < value(samples, "fsm_init_check_duration_seconds", script="PeriodicST-ok") < 5
    (d / "sick").touch()
    wait_for(lambda: get(run, "/readyz")[0] == 503, what="/readyz 503 after the failed check")
    wait_lines(d / "pids", 2)
    (d / "sick").unlink()
    samples = wait_for(lambda: (s := scrape(run)) and
                       value(s, "fsm_init_service_restarts_total", cause="check") >= 1 and s, what="a check restart")
    assert value(samples, "fsm_init_check_runs_total", script="PeriodicST-ok", result="failed") >= 1
    wait_for(lambda: get(run, "/readyz")[0] == 200, what="ready again")


def test_a_slowloris_client_does_not_stop_srvctl_probes_or_signals(sandbox):
    d = sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1,
                                **NO_FIREWALL}, run__sh=HOLD_HUP)
    run = sandbox.start(SRVNAME="app", FSM_INIT_HTTP=ADDRESS)
    wait_lines(d / "pids", 1)
    wait_for(lambda: serving(run), what="/livez")
    # 50 connections (more than fsm-init keeps), each sending its request a byte at a time
    # and never finishing it
    slow = [connect(run) for _ in range(50)]
    for sock in slow:
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /status HTTP/1.1\r\nX-")
    for _ in range(3):
        for sock in slow:
            with contextlib.suppress(OSError):
                sock.send(b"a")
        started = time.monotonic()
        assert run.srvctl("status", "--json").returncode == 0, run.log
        assert get(run, "/livez")[0] == 200
        assert time.monotonic() - started < 2, "srvctl and a probe waited for the slow clients"
    # a signal still works at once: SIGHUP forwarded to the service, then SIGTERM stops
    run.signal(signal.SIGHUP)
    wait_lines(d / "hups", 1)
    run.signal(signal.SIGTERM)
    assert run.wait(10) in (0, 143)
    for sock in slow:
        sock.close()


def test_the_slow_clients_are_cut_off_at_their_deadline(sandbox):
    d = sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1,
                                **NO_FIREWALL}, run__sh=HOLD)
    run = sandbox.start(SRVNAME="app", FSM_INIT_HTTP=ADDRESS)
    wait_lines(d / "pids", 1)
    wait_for(lambda: serving(run), what="/livez")
    sock = connect(run, timeout=15)
    sock.sendall(b"GET /livez HTTP/1.1\r\n")  # and never the blank line
    started = time.monotonic()
    assert sock.recv(100) == b""  # closed by fsm-init, nothing said
    assert 3 < time.monotonic() - started < 10
    sock.close()


def test_a_thousand_probes_are_answered_quickly(sandbox):
    """The issue asks for a p99 under 5 ms.  Speed is measured in benchmarks, not asserted
    tightly in a test that runs beside others on a shared machine: the figure is printed
    (pytest -s), and the test fails only past 50 ms, which a blocking loop would reach."""
    d = sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1,
                                **NO_FIREWALL}, run__sh=HOLD)
    run = sandbox.start(SRVNAME="app", FSM_INIT_HTTP=ADDRESS)
    wait_lines(d / "pids", 1)
    wait_for(lambda: serving(run), what="/livez")
    with network_of(run.pid1):
        socks = [socket.socket() for _ in range(1000)]
    took = []
    paths = ["/livez", "/readyz", "/metrics", "/status"]
    for n, sock in enumerate(socks):
        started = time.perf_counter()
        with sock:
            sock.connect(("127.0.0.1", PORT))
            sock.sendall(f"GET {paths[n % 4]} HTTP/1.1\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        took.append(time.perf_counter() - started)
        assert data.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 503 ")), data[:100]
    took.sort()
    p50, p99 = took[499] * 1000, took[989] * 1000
    print(f"\n1000 probes: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {took[-1] * 1000:.2f} ms")
    assert p99 < 50, f"p99 {p99:.1f} ms"


def test_the_thin_reaper_goes_on_answering(sandbox):
    d = sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh", "workintvl": 1, **NO_FIREWALL},
                        run__sh=HOLD)
    run = sandbox.start(SRVNAME="app", FSM_INIT_HTTP=ADDRESS, FSM_INIT_HANDOVER_AFTER="0.3")
    wait_lines(d / "pids", 1)
    run.wait_log(r"handing PID duties to the thin reaper")
    wait_for(lambda: serving(run) and json.loads(get(run, "/status")[2])["state"] == "handover",
             what="/status from the thin reaper")
    assert get(run, "/livez") == (200, get(run, "/livez")[1], "fsm-init answers (handover)\n")
    wait_for(lambda: get(run, "/readyz")[0] == 200, what="ready under the thin reaper")
    samples = scrape(run)
    assert value(samples, "fsm_init_state", fsm_init_state="handover") == 1
    assert value(samples, "fsm_init_transitions_total", to="handover") == 1
    assert value(samples, "fsm_init_service_starts_total") == 1
    assert value(metrics(run.srvctl("metrics").stdout), "fsm_init_service_starts_total") == 1
    run.signal(signal.SIGTERM)
    assert run.wait() in (0, 143)


def test_a_bad_value_is_one_error_and_fsm_init_carries_on(sandbox):
    d = sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1,
                                **NO_FIREWALL}, run__sh=HOLD)
    run = sandbox.start(SRVNAME="app", FSM_INIT_HTTP="localhost:9000")
    wait_lines(d / "pids", 1)
    log = run.wait_log(r"FSM_INIT_HTTP")
    assert log.count("FSM_INIT_HTTP='localhost:9000' is not ADDR:PORT") == 1, log
    assert run.srvctl("status").returncode == 0
    assert not serving(run)


def test_daemon_restarts_and_relayed_syslog_messages_are_counted(sandbox):
    sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1,
                            **NO_FIREWALL}, run__sh=HOLD)
    sandbox.etc("service/brief/run", "exec sleep 0.5\n")  # a daemon that dies twice a second
    log_socket = sandbox.root / "devlog"
    run = sandbox.start(SRVNAME="app", FSM_INIT_HTTP=ADDRESS, FSM_INIT_SYSLOG_SOCKET=log_socket,
                        FSM_INIT_SERVICE_DIRECTORY=sandbox.root / ".etc-up/service")
    wait_for(lambda: serving(run), what="/livez")
    wait_for(log_socket.exists, what="the syslog relay's socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        for n in range(3):
            sender.sendto(b"<14>Dec  2 18:00:00 tester[1]: message %d" % n, str(log_socket))
    samples = wait_for(lambda: (s := scrape(run)) and value(s, "fsm_init_syslog_messages_relayed_total") >= 3
                       and value(s, "fsm_init_daemon_restarts_total", daemon="brief") >= 1 and s,
                       what="the relayed messages and a daemon restart in /metrics")
    assert value(samples, "fsm_init_syslog_messages_relayed_total") == 3
    assert value(samples, "fsm_init_syslog_messages_dropped_total") == 0
    assert value(samples, "fsm_init_log_lines_dropped_total") == 0
    run.wait_log(r"tester\[1\]: message 2")
