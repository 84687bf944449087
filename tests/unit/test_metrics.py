"""The metrics (`srvctl metrics`, GET /metrics): counted by the engine's hooks on the fake
system, rendered in the OpenMetrics text format, and read back with the reference parser
(prometheus_client's, a test dependency only)."""

import json
import signal

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from fsm_init.core import metrics, reaper
from fsm_init.core.table import STATES

from .fakes import FakeSystem, Harness, close_loop, exited, killed, make_settings

SRV = "/srv/app"


def parsed(text: str) -> dict:
    """{(sample name, frozenset of labels): value}; the parser refuses anything not OpenMetrics."""
    assert text.endswith("# EOF\n")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def families(text: str) -> dict:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def app(workcfg: dict, scripts=("run.sh",), fake=None) -> Harness:
    fake = fake or FakeSystem()
    fake.add_dir(SRV)
    fake.add_file(f"{SRV}/workcfg.json", json.dumps({"initdelay": 0, "workstart": "./run.sh", **workcfg}))
    for script in scripts:
        fake.add_script(f"{SRV}/{script}")
    return Harness(fake, make_settings(), {"SRVNAME": "app", "PATH": "/bin"})


def script_pid(h: Harness, name: str) -> int:
    return [s.pid for s in h.system.spawns if s.argv == [f"{SRV}/{name}"]][-1]


def test_every_counter_exists_from_the_start_at_zero():
    text = metrics.Metrics().render("boot", None)
    samples = parsed(text)
    assert all(name.startswith("fsm_init_") for name, _ in samples)
    assert families(text) == {
        "fsm_init_state": "stateset", "fsm_init_transitions": "counter", "fsm_init_service_starts": "counter",
        "fsm_init_service_restarts": "counter", "fsm_init_service_ready": "gauge",
        "fsm_init_service_ready_seconds": "gauge", "fsm_init_check_runs": "counter",
        "fsm_init_check_duration_seconds": "gauge", "fsm_init_daemon_restarts": "counter",
        "fsm_init_oom_kills": "counter", "fsm_init_syslog_messages_relayed": "counter",
        "fsm_init_syslog_messages_dropped": "counter", "fsm_init_log_lines_dropped": "counter"}
    assert value(samples, "fsm_init_service_starts_total") == 0
    for cause in metrics.RESTART_CAUSES:
        assert value(samples, "fsm_init_service_restarts_total", cause=cause) == 0
    for process in ("service", "daemon"):
        assert value(samples, "fsm_init_oom_kills_total", process=process) == 0
    for name, _ in STATES:
        assert value(samples, "fsm_init_transitions_total", to=name) == 0
        assert value(samples, "fsm_init_state", fsm_init_state=name) == (name == "boot")
    for name in ("syslog_messages_relayed", "syslog_messages_dropped", "log_lines_dropped"):
        assert value(samples, f"fsm_init_{name}_total") == 0
    assert value(samples, "fsm_init_service_ready") == 0 and value(samples, "fsm_init_service_ready_seconds") == 0


def test_a_status_check_run_counts_starts_checks_restarts_and_readiness():
    h = app({"workwatch": 30, "workintvl": 5}, scripts=("run.sh", "PeriodicST-a", "PeriodicST-b"))
    try:
        h.begin()
        h.advance(5)  # workintvl: the first cycle
        h.advance(0.25)
        h.exit(script_pid(h, "PeriodicST-a"), exited(0))
        h.advance(0.5)
        h.exit(script_pid(h, "PeriodicST-b"), exited(0))
        assert h.state == "watch"
        h.advance(10)
        samples = parsed(h.engine.explain.metrics_text())
        assert value(samples, "fsm_init_state", fsm_init_state="watch") == 1
        assert value(samples, "fsm_init_service_starts_total") == 1
        assert value(samples, "fsm_init_check_runs_total", script="PeriodicST-a", result="passed") == 1
        assert value(samples, "fsm_init_check_runs_total", script="PeriodicST-a", result="failed") == 0
        assert value(samples, "fsm_init_check_duration_seconds", script="PeriodicST-a") == 0.25
        assert value(samples, "fsm_init_check_duration_seconds", script="PeriodicST-b") == 0.5
        assert value(samples, "fsm_init_service_ready") == 1
        assert value(samples, "fsm_init_service_ready_seconds") == 10  # since the passed cycle ended
        assert value(samples, "fsm_init_transitions_total", to="check") == 1
        # the next cycle fails: the check restart
        h.advance(30 - 10 - 0.75)
        assert h.state == "check"
        h.exit(script_pid(h, "PeriodicST-a"), exited(3))
        h.advance(5)  # the back-off, then a new instance
        samples = parsed(h.engine.explain.metrics_text())
        assert value(samples, "fsm_init_service_starts_total") == 2
        assert value(samples, "fsm_init_service_restarts_total", cause="check") == 1
        assert value(samples, "fsm_init_check_runs_total", script="PeriodicST-a", result="failed") == 1
        assert value(samples, "fsm_init_service_ready") == 0
        assert value(samples, "fsm_init_transitions_total", to="restart") == 1
        # srvctl restart
        assert h.request("restart")["ok"]
        h.advance(1)
        samples = parsed(h.engine.explain.metrics_text())
        assert value(samples, "fsm_init_service_restarts_total", cause="request") == 1
        assert value(samples, "fsm_init_service_starts_total") == 3
        assert value(samples, "fsm_init_transitions_total", to="start") == 3
    finally:
        h.close()


def test_a_daemon_mode_exit_and_an_oom_kill_are_told_apart():
    from .test_oom import EVENTS, events, v2_system

    fake = v2_system()
    h = app({"workwatch": 0, "workintvl": 1}, fake=fake)
    try:
        h.begin()
        h.exit(fake.spawns[-1].pid, exited(1))
        h.advance(5)
        fake.add_file(EVENTS, events(3))
        h.exit(fake.spawns[-1].pid, killed(signal.SIGKILL))
        h.advance(10)
        samples = parsed(h.engine.explain.metrics_text())
        assert value(samples, "fsm_init_service_restarts_total", cause="exit") == 1
        assert value(samples, "fsm_init_service_restarts_total", cause="oom") == 1
        assert value(samples, "fsm_init_oom_kills_total", process="service") == 1
        assert value(samples, "fsm_init_oom_kills_total", process="daemon") == 0
        assert value(samples, "fsm_init_service_starts_total") == 3
        # the journal records the kill with the memory limit
        journal = [json.loads(line) for line in fake.files["/run/fsm-init/journal.jsonl"].splitlines()]
        assert any("out-of-memory killer (memory limit 64 MiB" in e["cause"] for e in journal)
    finally:
        h.close()


def test_an_oom_kill_that_ended_no_transition_is_not_the_next_instance_s_cause():
    """The instance being stopped for srvctl restart dies of the OOM killer (its exit is no
    transition: the engine is in restart already); the next instance's plain exit is "exit"."""
    m = metrics.Metrics()
    m.transition("pppoe", "start", "done")
    m.transition("watch", "restart", "restart_request")
    m.oom_kill("service")  # while it is stopped: service_exit is no transition in restart
    m.transition("pppoe", "start", "done")
    m.transition("watch", "restart", "service_exit")
    m.transition("pppoe", "start", "done")
    assert m.restarts["request"] == 1 and m.restarts["exit"] == 1 and m.restarts["oom"] == 0
    assert m.oom_kills["service"] == 1


def test_a_spawn_failure_is_a_restart_cause():
    fake = FakeSystem()
    h = app({"workwatch": 0, "workintvl": 1}, fake=fake)
    try:
        fake.fail("spawn", OSError(11, "Resource temporarily unavailable"))
        h.begin()
        fake.faults.clear()
        h.advance(10)
        samples = parsed(h.engine.explain.metrics_text())
        assert value(samples, "fsm_init_service_restarts_total", cause="spawn") == 1
    finally:
        h.close()


def test_daemon_restarts_by_daemon_and_hostile_names_escaped():
    text = metrics.Metrics().render("watch", 3.0, [{"name": 'we"b\\\n\x1b', "restarts": 4}], (7, 2))
    assert "\x1b" not in text
    samples = parsed(text)
    assert value(samples, "fsm_init_daemon_restarts_total", daemon='we"b\\\n\ufffd') == 4
    assert value(samples, "fsm_init_syslog_messages_relayed_total") == 7
    assert value(samples, "fsm_init_syslog_messages_dropped_total") == 2
    assert value(samples, "fsm_init_service_ready_seconds") == 3


def test_a_name_that_is_not_utf8_is_still_valid_text():
    """A daemon directory or check script named with bytes that are not UTF-8 (os.listdir's
    surrogate escapes): the exposition must still encode (GET /metrics would answer 500)."""
    m = metrics.Metrics()
    m.checks_done([type("R", (), {"name": "PeriodicST-\udcff", "exit": 0, "duration": 0.5})()])
    text = m.render("watch", None, [{"name": "web\udcfe", "restarts": 1}])
    samples = parsed(text.encode().decode())
    assert value(samples, "fsm_init_daemon_restarts_total", daemon="web\ufffd") == 1
    assert value(samples, "fsm_init_check_runs_total", script="PeriodicST-\ufffd", result="passed") == 1


def test_srvctl_metrics_is_answered_on_the_control_socket():
    h = app({"workwatch": 0, "workintvl": 1})
    try:
        h.begin()
        reply = h.engine.verbs.handle({"verb": "metrics"})
        assert reply["ok"] and value(parsed(reply["metrics"]), "fsm_init_service_starts_total") == 1
    finally:
        h.close()


def test_the_thin_reaper_carries_the_counts_on():
    h = app({"workwatch": 0, "workintvl": 1})
    try:
        h.begin()
        h.exit(h.system.spawns[-1].pid, exited(1))
        h.advance(5)
        carried = json.loads(json.dumps(h.engine.metrics.state((5, 1))))
    finally:
        h.close()
    fake = FakeSystem()
    state = {"pid": 100, "by_session": True, "started": 0.0, "target": None, "run_count": 2, "control_fd": None,
             "quiet": False, "supporting": {}, "proof": 5, "last_transition": {}, "metrics": carried}
    thin = reaper.Reaper(fake, make_settings(), state)
    try:
        fake.clock = 7.0
        samples = parsed(thin.metrics_text())
        assert value(samples, "fsm_init_service_starts_total") == 2
        assert value(samples, "fsm_init_service_restarts_total", cause="exit") == 1
        assert value(samples, "fsm_init_syslog_messages_relayed_total") == 5
        assert value(samples, "fsm_init_service_ready_seconds") == 2  # proof 5 s, 7 s after the start
        thin.loop.on_exit(100, exited(0))
        samples = parsed(thin.metrics_text())
        assert value(samples, "fsm_init_transitions_total", to="teardown") == 1
        assert value(samples, "fsm_init_service_ready") == 0
    finally:
        close_loop(thin.loop)


def test_every_metric_and_endpoint_is_documented():
    from pathlib import Path

    from fsm_init.core import http_probes

    page = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    samples = parsed(metrics.Metrics().render("boot", None, [{"name": "d", "restarts": 0}]))
    names = {name for name, _ in samples} | {"fsm_init_check_runs_total", "fsm_init_check_duration_seconds"}
    for name in names:
        assert f"| `{name}` |" in page, name
    for path in http_probes.PATHS:
        assert f"| `{path}` |" in page, path
