"""Out-of-memory kills named, on the fake system: the cgroup's oom_kill count read at
start and again only when the service or a daemon dies of SIGKILL."""

import json
import signal

import pytest

from fsm_init.core import oom
from fsm_init.client.srvctl import describe_daemon

from .fakes import FakeSystem, Harness, exited, killed, make_settings

EVENTS = "/sys/fs/cgroup/ctr/memory.events"


def events(count: int) -> str:
    return f"low 0\nhigh 0\nmax 12\noom 1\noom_kill {count}\noom_group_kill 0\n"


def v2_system(limit="67108864\n", path="/ctr") -> FakeSystem:
    fake = FakeSystem()
    fake.add_dir("/run/fsm-init")
    fake.add_file("/proc/self/cgroup", f"0::{path}\n")
    fake.add_file(EVENTS, events(2))
    fake.add_file("/sys/fs/cgroup/ctr/memory.max", limit)
    return fake


def app(fake: FakeSystem, workwatch=0) -> Harness:
    fake.add_dir("/srv/app")
    fake.add_file("/srv/app/workcfg.json", json.dumps({"initdelay": 0, "workstart": "./run.sh",
                                                       "workwatch": workwatch, "workintvl": 1}))
    fake.add_script("/srv/app/run.sh")
    return Harness(fake, make_settings(), {"SRVNAME": "app", "PATH": "/bin"})


def reads_of_counter(fake: FakeSystem) -> int:
    return sum(1 for call in fake.calls if call == ("read_bytes", EVENTS))


def test_a_sigkill_with_a_new_oom_kill_is_named_in_the_log_the_journal_and_why(capfd):
    fake = v2_system()
    h = app(fake)
    try:
        h.begin()
        assert reads_of_counter(fake) == 2  # located and the count taken, once, at start
        pid = fake.spawns[-1].pid
        fake.add_file(EVENTS, events(3))
        h.exit(pid, killed(signal.SIGKILL))
        journal = [json.loads(line) for line in fake.files["/run/fsm-init/journal.jsonl"].splitlines()]
        cause = next(e["cause"] for e in journal if e["trigger"] == "service_exit")
        assert "killed by SIGKILL" in cause and "the kernel's out-of-memory killer (memory limit 64 MiB" in cause
        assert "out-of-memory killer" in h.engine.explain.why()
        assert "out-of-memory killer" in h.engine.service.restart_cause
        err = capfd.readouterr().err
        assert "warning: service (pid" in err and "out-of-memory killer (memory limit 64 MiB; oom_kill 3" in err
    finally:
        h.close()


def test_a_sigkill_without_a_new_oom_kill_is_not_called_one():
    fake = v2_system()
    h = app(fake)
    try:
        h.begin()
        h.exit(fake.spawns[-1].pid, killed(signal.SIGKILL))
        assert b"out-of-memory" not in fake.files["/run/fsm-init/journal.jsonl"]
        assert "out-of-memory" not in h.engine.explain.why()
    finally:
        h.close()


def test_other_deaths_never_read_the_cgroup():
    fake = v2_system()
    h = app(fake)
    try:
        h.begin()
        fake.add_file(EVENTS, events(3))
        before = reads_of_counter(fake)
        h.exit(fake.spawns[-1].pid, exited(1))
        h.advance(2)
        h.exit(fake.spawns[-1].pid, killed(signal.SIGTERM))
        assert reads_of_counter(fake) == before
        assert "out-of-memory" not in h.engine.explain.why()
    finally:
        h.close()


def test_a_daemon_killed_for_memory_is_named_in_its_log_line_and_why(capfd):
    fake = v2_system()
    fake.add_dir("/etc/service/hog")
    fake.add_script("/etc/service/hog/run", "exec hog\n")
    h = app(fake, workwatch=30)
    try:
        h.begin()
        daemon = next(s for s in fake.spawns if s.argv[0].endswith("hog/run"))
        fake.add_file(EVENTS, events(5))
        h.exit(daemon.pid, killed(signal.SIGKILL))
        assert "daemon hog (pid" in h.engine.explain.why() and "out-of-memory killer" in h.engine.explain.why()
        [hog] = h.engine.explain.snapshot()["daemons"]
        assert hog["out_of_memory"] and "last exit 137 (out of memory)" in describe_daemon(hog)
        assert "daemon hog (pid" in capfd.readouterr().err
    finally:
        h.close()


@pytest.mark.parametrize("raw, words", [
    (b"67108864\n", "memory limit 64 MiB"), (b"max\n", "no memory limit"),
    (b"9223372036854771712\n", "no memory limit"), (b"1000\n", "memory limit 1000 bytes"),
    (None, "memory limit unknown")])
def test_limits_in_words(raw, words):
    assert oom.describe_limit(raw) == words


def test_cgroup_v1_memory_controller_and_the_container_root_fallback():
    fake = FakeSystem()
    fake.add_file("/proc/self/cgroup", "5:devices:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    # inside a container the cgroup is mounted as the hierarchy's root
    fake.add_file("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    fake.add_file("/sys/fs/cgroup/memory/memory.limit_in_bytes", "134217728\n")
    watch = oom.Watch.start(fake)
    assert watch.counter == "/sys/fs/cgroup/memory/memory.oom_control"
    fake.add_file("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert "memory limit 128 MiB" in watch.killed(killed(signal.SIGKILL))
    assert watch.killed(killed(signal.SIGKILL)) == ""  # counted once


def test_no_cgroup_no_reads_later():
    fake = FakeSystem()
    watch = oom.Watch.start(fake)
    assert watch.counter is None and watch.killed(killed(signal.SIGKILL)) == ""
    state = oom.Watch.from_state(fake, watch.state())
    assert state.counter is None


def test_a_shell_reporting_its_commands_sigkill_as_137_counts_too():
    fake = v2_system()
    watch = oom.Watch.start(fake)
    fake.add_file(EVENTS, events(3))
    assert watch.killed(exited(1)) == "" and watch.killed(killed(signal.SIGTERM)) == ""
    assert "out-of-memory killer" in watch.killed(exited(137))


def test_the_thin_reaper_carries_the_count_and_names_the_kill():
    from fsm_init.core import reaper

    from .fakes import close_loop

    fake = v2_system()
    watch = oom.Watch.start(fake)
    state = {"pid": 100, "by_session": True, "started": 0.0, "target": None, "run_count": 1, "control_fd": None,
             "quiet": False, "supporting": {}, "proof": 5, "last_transition": {}, "oom": watch.state()}
    thin = reaper.Reaper(fake, make_settings(), state)
    try:
        fake.add_file(EVENTS, events(3))
        thin.loop.on_exit(100, killed(signal.SIGKILL))
        assert thin.last_oom.startswith("the service (pid 100), killed by the kernel's out-of-memory killer")
        journal = [json.loads(line) for line in fake.files["/run/fsm-init/journal.jsonl"].splitlines()]
        assert "memory limit 64 MiB" in journal[0]["cause"] and journal[0]["trigger"] == "service_exit"
    finally:
        close_loop(thin.loop)
