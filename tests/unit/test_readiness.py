"""workready (checks, notify, fd:N), workwatchdog and notification-fd on the FakeSystem.

The notify socket is a real datagram socket (in tmp_path) that the test sends to; the
fake says which pid sent it (FakeSystem.notify_sender), as SO_PASSCRED would.  The fd:N
pipe is real too: the test writes to a copy of the service's end.
"""

import json
import os
import re
import signal
import socket

import pytest

from fsm_init.config import schema as config_schema
from fsm_init.core import readiness
from fsm_init import engine as engine_module
from fsm_init.core.kill import Group
from fsm_init.core.loop import EventLoop
from fsm_init.core.readiness import Notifier, State
from fsm_init.steps.service import Service
from fsm_init.steps.start import Mode

from . import fakes
from .fakes import FakeSystem, Harness, make_settings

DAEMON_MODE = Mode("daemon", None)
CHECK_MODE = Mode("status-check", 30)
CONFIG = {"workintvl": 5, "workready": "checks"}


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("checks", ("checks", None)), ("notify", ("notify", None)), (" Notify ", ("notify", None)),
    ("fd:3", ("fd", 3)), ("fd:1023", ("fd", 1023)),
    ("fd:2", None), ("fd:0", None), ("fd:1024", None), ("fd:", None), ("fd:x", None), ("ready", None),
    (3, None), (None, None), (True, None),
])
def test_parse_setting(value, expected):
    assert readiness.parse_setting(value) == expected


@pytest.mark.parametrize("text, expected", [("3\n", 3), (" 5 ", 5), ("1", None), ("x", None), ("", None),
                                            ("99999", None)])
def test_parse_notification_fd(text, expected):
    assert readiness.parse_notification_fd(text) == expected


def test_parse_message_takes_assignments_and_ignores_the_rest():
    data = b"READY=1\nSTATUS=serving 3 clients\nnonsense\n=x\nlower=1\nWATCHDOG=1"
    assert readiness.parse_message(data) == {"READY": "1", "STATUS": "serving 3 clients", "WATCHDOG": "1"}
    assert readiness.parse_message(b"STATUS=\xff\x1b[2J") == {"STATUS": "\ufffd\x1b[2J"}


@pytest.mark.parametrize("document, effective, problem", [
    ({"workready": "notify", "workwatchdog": 10}, ("notify", 10), None),
    ({"workready": "FD:4"}, ("fd:4", None), None),
    ({"workready": "bogus"}, ("checks", None), "config key 'workready' = 'bogus': is not \"checks\", \"notify\""),
    ({"workready": "fd:2"}, ("checks", None), "config key 'workready' = 'fd:2'"),
    ({"workready": "notify", "workwatchdog": 0}, ("notify", None), "config key 'workwatchdog' = 0: must be at least 1"),
    ({"workwatchdog": 5}, ("checks", None), "config key 'workwatchdog' = 5: needs workready \"notify\""),
])
def test_config_keys(document, effective, problem):
    config, problems = config_schema.validate(document)
    assert (config["workready"], config["workwatchdog"]) == effective
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].describe().startswith(problem), problems[0].describe()


# -- the state and the service's answer ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def running_service(setting=("notify", None)) -> tuple[Service, Clock]:
    clock = Clock()
    service = Service(clock)
    service.starting()
    service.declared.reset(setting)
    service.started(42, Group(42))
    return service, clock


def test_notify_ready_once_the_service_says_so():
    service, clock = running_service()
    clock.t += 60  # workintvl alone no longer makes it ready
    answer = service.readiness(DAEMON_MODE, CONFIG)
    assert not answer.ready and "READY=1" in answer.reason and answer.since is None
    assert service.declared.apply({"READY": "1", "STATUS": "warming up"}) == ["READY=1: the service says it is ready"]
    clock.t += 2
    answer = service.readiness(DAEMON_MODE, CONFIG)
    assert answer == (True, 160.0, "warming up", "the service said it is ready (READY=1)")
    assert service.health(DAEMON_MODE, CONFIG) == (True, "the service said it is ready (READY=1)")


def test_stopping_and_reloading_are_reflected():
    service, _ = running_service()
    service.declared.apply({"READY": "1"})
    assert service.declared.apply({"RELOADING": "1"}) == ["RELOADING=1: the service says it is reloading"]
    assert service.declared.phase() == "reloading" and service.declared.as_dict()["phase"] == "reloading"
    service.declared.apply({"READY": "1"})
    assert service.declared.phase() == ""
    service.declared.apply({"STOPPING": "1"})
    assert service.readiness(DAEMON_MODE, CONFIG)[:2] == (False, None)
    assert readiness.said(service.declared) == "it said it is stopping"


def test_status_check_mode_needs_the_word_and_a_passed_cycle():
    service, clock = running_service(("fd", 3))
    service.checks_done(["a result"], True)
    answer = service.readiness(CHECK_MODE, CONFIG)
    assert not answer.ready and "newline on file descriptor 3" in answer.reason
    clock.t += 5
    assert service.declared.line_written() and not service.declared.line_written()
    answer = service.readiness(CHECK_MODE, CONFIG)
    assert answer.ready and answer.since == 105.0  # the later of the two
    service.checks_done(["a result"], False)
    assert not service.readiness(CHECK_MODE, CONFIG, "PeriodicST-a exited 1").ready


def test_checks_keeps_todays_rule_and_gives_ready_since():
    service, clock = running_service(("checks", None))
    assert not service.readiness(DAEMON_MODE, CONFIG).ready
    clock.t += 5
    assert service.readiness(DAEMON_MODE, CONFIG)[:3] == (True, 105.0, "")
    service.declared.apply({"STATUS": "ignored"})  # nobody listens with workready checks
    assert service.readiness(DAEMON_MODE, CONFIG).status == ""


# -- the notify socket, the pipe and the watchdog ---------------------------------------------------


class Rig:
    def __init__(self, tmp_path, **config) -> None:
        self.system = FakeSystem()
        self.loop = EventLoop(self.system, lambda signum: None, lambda pid, status: None)
        self.state = State(self.system.now)
        self.failures: list[str] = []
        self.notifier = Notifier(self.system, self.loop, str(tmp_path), self.state, self.failures.append)
        self.config = {"workready": "notify", "workwatchdog": None, **config}
        self.sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def start(self) -> tuple[dict, list]:
        env, fds = self.notifier.prepare(self.config)
        self.pid = self.system.spawn(["./run.sh"], env, fds=fds)
        self.notifier.started(self.pid, Group(self.pid))
        return env, fds

    def send(self, data: bytes, pid: object = "service") -> None:
        self.system.notify_sender = self.pid if pid == "service" else pid  # type: ignore[assignment]
        self.sender.sendto(data, self.notifier.path)
        self.loop.poll(1)

    def advance(self, seconds: float) -> None:
        fakes.advance(self, seconds)

    def close(self) -> None:
        self.sender.close()
        self.notifier.close()
        self.loop.close()


@pytest.fixture
def rig(tmp_path):
    made = []

    def factory(**config) -> Rig:
        made.append(Rig(tmp_path, **config))
        return made[-1]
    yield factory
    for r in made:
        r.close()


def test_notify_socket_in_the_environment_and_messages_taken(rig, tmp_path):
    r = rig()
    env, fds = r.start()
    assert env == {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")} and fds == []
    r.send(b"STATUS=loading\n")
    assert r.state.status_text == "loading" and not r.state.notified
    r.send(b"READY=1")
    assert r.state.notified and r.notifier.status()["taken"] == 2


def test_a_child_of_the_service_in_its_session_is_heard(rig):
    r = rig()
    r.start()
    child = r.system._new_pid()
    r.system.procs[child] = r.system.procs[r.pid]._replace(pid=child, ppid=r.pid)
    r.send(b"READY=1", pid=child)
    assert r.state.notified


def test_a_sender_outside_the_service_is_refused_and_said_once(rig, capfd):
    r = rig()
    r.start()
    stranger = r.system.spawn(["./other"], {})  # a session of its own
    for _ in range(5):
        r.send(b"READY=1\nSTATUS=forged", pid=stranger)
    r.send(b"READY=1", pid=None)  # no credentials at all
    r.send(b"READY=1", pid=99999)  # gone
    assert not r.state.notified and r.state.status_text == ""
    assert r.notifier.refused == 7
    r.advance(readiness.SUMMARY_EVERY)
    err = capfd.readouterr().err
    assert err.count("refused (not sent by the service's processes)") == 1, err
    assert "7 refused" in err


def test_the_socket_is_bounded(rig):
    r = rig()
    r.start()
    r.system.notify_sender = r.pid
    r.sender.setblocking(False)
    sent = 0
    while sent < readiness.BURST + 50:  # the clock stands still: no token comes back
        try:
            r.sender.sendto(b"STATUS=x", r.notifier.path)
            sent += 1
        except BlockingIOError:
            r.loop.poll(0)
    for _ in range(40):
        r.loop.poll(0)
    assert r.notifier.taken == readiness.BURST and r.notifier.dropped == 50
    r.advance(1)
    r.sender.sendto(b"STATUS=" + b"y" * 10000, r.notifier.path)  # cut at MAX_MESSAGE, at no cost
    r.loop.poll(1)
    assert r.state.status_text == "y" * readiness.MAX_STATUS


def test_a_stranger_flooding_the_socket_cannot_starve_the_service(rig):
    """Another user's process floods the socket (its datagrams all refused): the service's
    own READY=1 and WATCHDOG=1 still get through, so the flood cannot fire the watchdog."""
    r = rig(workwatchdog=10)
    r.start()
    stranger = r.system.spawn(["./other"], {})
    r.system.notify_sender = stranger
    r.sender.setblocking(False)
    for _ in range(readiness.BURST * 2):  # the clock stands still: no token comes back
        try:
            r.sender.sendto(b"WATCHDOG=trigger", r.notifier.path)
        except BlockingIOError:
            pass
        r.loop.poll(0)
    assert r.notifier.taken == 0 and r.notifier.refused + r.notifier.dropped == readiness.BURST * 2
    r.send(b"READY=1\nWATCHDOG=1")
    assert r.state.notified and r.state.last_watchdog is not None and r.failures == []


def test_nothing_is_heard_once_the_instance_is_gone(rig):
    r = rig()
    r.start()
    r.notifier.end()
    r.send(b"READY=1")
    assert not r.state.notified and r.notifier.refused == 1


def test_watchdog_missed_is_a_failure_with_its_cause(rig):
    r = rig(workwatchdog=10)
    env, _ = r.start()
    assert env["WATCHDOG_USEC"] == "10000000"
    r.advance(8)
    r.send(b"WATCHDOG=1")
    r.advance(8)
    assert r.failures == []  # re-armed at 8 s: due at 18 s
    r.advance(2)
    assert r.failures == ["watchdog: no WATCHDOG=1 from the service within workwatchdog 10s"]
    r.advance(60)
    assert len(r.failures) == 1  # one failure, not one per period


def test_watchdog_none_since_the_start_and_trigger(rig):
    r = rig(workwatchdog=3)
    r.start()
    r.advance(3)
    assert r.failures == ["watchdog: no WATCHDOG=1 from the service within workwatchdog 3s (none since its start)"]
    r.start()
    r.send(b"WATCHDOG=trigger")
    assert r.failures[-1] == "the service sent WATCHDOG=trigger"


def test_no_watchdog_without_the_key(rig):
    r = rig()
    env, _ = r.start()
    assert "WATCHDOG_USEC" not in env
    r.advance(3600)
    assert r.failures == [] and r.loop.pending() == {}


def test_fd_pipe_newline_makes_ready_and_eof_does_not(rig):
    r = rig(workready="fd:3")
    env, fds = r.notifier.prepare(r.config)
    assert env == {} and [number for _, number in fds] == [3]
    child_copy = r.system.child_ends.pop(3)  # what the service holds as its fd 3
    r.pid = r.system.spawn(["./run.sh"], env, fds=fds)
    r.notifier.started(r.pid, Group(r.pid))
    assert r.system.spawns[-1].fds == tuple(fds)
    os.write(child_copy, b"ready")
    r.loop.poll(0)
    assert not r.state.notified
    os.write(child_copy, b"\n")
    r.loop.poll(1)
    assert r.state.notified and r.notifier.pipe.read_fd is None  # the pipe is done with
    os.close(child_copy)

    env, fds = r.notifier.prepare(r.config)  # the next instance closes its fd 3 unsaid
    r.notifier.started(r.system.spawn(["./run.sh"], env, fds=fds), Group(r.pid))
    os.close(r.system.child_ends.pop(3))
    r.loop.poll(0)
    assert not r.state.notified and r.notifier.pipe.read_fd is None


def test_pipe_for_child_never_hands_over_the_number_itself():
    from fsm_init.core.system import System

    read_end, write_end = System().pipe_for_child(1023)
    try:
        assert write_end != 1023
        read_end2, write_end2 = System().pipe_for_child(3)
        assert write_end2 > 3
        for fd in (read_end2, write_end2):
            os.close(fd)
    finally:
        for fd in (read_end, write_end):
            os.close(fd)


# -- the engine -----------------------------------------------------------------------------------


@pytest.fixture
def engine_for(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module.ControlServer, "listen", staticmethod(lambda *args: None))
    made = []

    def factory(**workcfg) -> Harness:
        fake = FakeSystem()
        fake.add_dir("/srv/app")
        fake.add_file("/srv/app/workcfg.json", json.dumps({"initdelay": 0, "workstart": "./run.sh", **workcfg}))
        fake.add_script("/srv/app/run.sh")
        harness = Harness(fake, make_settings(run_dir=str(tmp_path)), {"SRVNAME": "app", "PATH": "/bin"})
        made.append(harness)
        return harness
    yield factory
    for harness in made:
        harness.engine.notifier.close()
        harness.close()


def send(h: Harness, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        h.system.notify_sender = h.engine.service.instance.pid
        sender.sendto(data, h.engine.notifier.path)
    h.engine.loop.poll(1)
    h.pump()


def test_engine_health_status_and_why_follow_the_notifications(engine_for):
    h = engine_for(workwatch=0, workready="notify")
    h.begin()
    assert h.state == "watch" and "NOTIFY_SOCKET" in h.system.spawns[-1].env
    h.advance(30)
    assert h.request("health") == {"ok": False, "message": "waiting for READY=1 on NOTIFY_SOCKET (workready notify)"}
    send(h, b"READY=1\nSTATUS=serving")
    assert h.request("health")["ok"] is True
    status = h.request("status")["status"]
    assert status["readiness"] | {"socket": None} == {
        "workready": "notify", "notified": True, "status": "serving", "phase": None, "ready": True,
        "reason": "the service said it is ready (READY=1)", "ready_for": 0.0, "socket": None}
    assert "the service says: serving" in h.request("why")["message"]


def test_engine_restarts_a_service_whose_watchdog_stops(engine_for):
    h = engine_for(workwatch=0, workready="notify", workwatchdog=5, workintvl=1)
    h.begin()
    first = h.engine.service.instance.pid
    send(h, b"READY=1")
    h.advance(4)
    send(h, b"WATCHDOG=1")
    h.advance(4)
    assert h.state == "watch"
    h.advance(1.5)  # the fake service dies of the restart's SIGTERM at once
    assert h.states[-2:] == ["restart", "restart_interval"] and (first, signal.SIGTERM) in h.system.kills
    assert h.engine.service.restart_cause == "watchdog: no WATCHDOG=1 from the service within workwatchdog 5s"
    assert h.request("why")["message"].startswith(
        "restart_interval: watchdog: no WATCHDOG=1 from the service within workwatchdog 5s")
    h.advance(1)
    assert h.state == "watch" and h.engine.service.instance.pid != first
    assert h.engine.service.failures == 1  # a failure restart, with the back-off
    # the metrics name the watchdog, not srvctl restart (the trigger the engine fires)
    assert 'fsm_init_service_restarts_total{cause="watchdog"} 1\n' in h.engine.metrics.render("watch", None)
    assert 'fsm_init_service_restarts_total{cause="request"} 0\n' in h.engine.metrics.render("watch", None)


def test_engine_keeps_the_engine_for_a_declared_readiness(engine_for):
    h = engine_for(workready="notify")  # non-daemon mode: the thin reaper would hear nothing
    h.begin()
    assert h.state == "foreground" and h.engine.keeps_supervising()


def test_the_socket_goes_when_workready_no_longer_asks_for_it(rig, tmp_path):
    r = rig()
    r.start()
    assert (tmp_path / "notify.sock").exists() and r.notifier.needs_engine
    r.config["workready"] = "checks"
    env, fds = r.start()
    assert env == {} and fds == [] and not (tmp_path / "notify.sock").exists() and not r.notifier.needs_engine


def test_a_workuser_service_gets_an_abstract_socket(rig, tmp_path):
    r = rig(workuser="nobody")
    env, _ = r.start()
    assert re.fullmatch(r"@fsm-init-notify-[0-9a-f]{16}", env["NOTIFY_SOCKET"]), env
    assert not (tmp_path / "notify.sock").exists()  # the 0700 run directory would keep it out
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        r.system.notify_sender = r.pid
        sender.sendto(b"READY=1", "\0" + env["NOTIFY_SOCKET"][1:])
    r.loop.poll(1)
    assert r.state.notified
    r.config["workuser"] = None  # back to the file in the run directory
    env, _ = r.start()
    assert env["NOTIFY_SOCKET"] == str(tmp_path / "notify.sock") and (tmp_path / "notify.sock").exists()


def test_the_real_socket_gives_the_senders_pid_and_keeps_no_descriptor_sent_to_it(tmp_path):
    """SCM_CREDENTIALS from the kernel; descriptors a sender attaches (sd_pid_notify_with_fds)
    find no room in the ancillary buffer: the kernel closes them, PID 1 never holds them."""
    import array

    from fsm_init.core.system import System

    system = System()
    path = str(tmp_path / "notify.sock")
    sock = system.notify_socket(path)
    assert os.stat(path).st_mode & 0o777 == 0o666
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            before = len(os.listdir("/proc/self/fd"))
            sent = [os.open("/dev/null", os.O_RDONLY) for _ in range(5)]
            sender.sendmsg([b"FDSTORE=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", sent))], 0, path)
            for fd in sent:
                os.close(fd)
            buffer = bytearray(readiness.MAX_MESSAGE)
            assert system.receive_credentials(sock, buffer) == (9, os.getpid())
            assert len(os.listdir("/proc/self/fd")) == before
            with pytest.raises(BlockingIOError):
                system.receive_credentials(sock, buffer)
        assert system.process_of(os.getpid()).sid == os.getsid(0)
        assert system.process_of(2 ** 22 + 1) is None
    finally:
        sock.close()
