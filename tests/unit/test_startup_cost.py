"""What PID 1's start-up costs beyond the interpreter (issue 14): status.json once per
chain of transitions, not once per transition; the probes' imports."""

import json

import pytest

from .fakes import FakeSystem, Harness, ProcessReplaced, exited, make_settings

SRV = "/srv/app"
STATUS = "/run/fsm-init/status.json"
JOURNAL = "/run/fsm-init/journal.jsonl"


def harness(system: FakeSystem, scripts=("run.sh",), **values) -> Harness:
    system.add_dir("/run/fsm-init")
    system.add_dir(SRV)
    system.add_file(f"{SRV}/workcfg.json", json.dumps({"initdelay": 0, "workstart": "./run.sh", **values}))
    for script in scripts:
        system.add_script(f"{SRV}/{script}")
    return Harness(system, make_settings(), {"SRVNAME": "app", "PATH": "/usr/bin:/bin"})


def status_writes(system: FakeSystem) -> int:
    return sum(1 for call in system.calls if call == ("write_atomic", STATUS))


def test_the_boot_chain_writes_status_json_once_with_its_last_state():
    # A rename over the old status.json costs ~1 ms on ext4 or overlayfs: one per
    # transition was a quarter of the start-up.  The journal still has every transition.
    h = harness(FakeSystem())
    try:
        h.begin()
        assert h.state == "foreground"
        transitions = len(h.system.files[JOURNAL].splitlines())
        assert transitions == len(h.states) - 1 >= 10
        assert status_writes(h.system) == 1
        assert json.loads(h.system.files[STATUS])["state"] == "foreground"
        # a later trigger (the service's exit) writes it again, with the new state
        h.exit(h.engine.service.instance.pid, 0)
        assert status_writes(h.system) >= 2
        assert json.loads(h.system.files[STATUS])["state"] == "exited"
    finally:
        h.close()


class ExecRecorder(FakeSystem):
    """Remembers status.json as it is when an exec replaces the process (a real exec
    never comes back to write it)."""

    def execve(self, argv, env, executable=None, blocked=()) -> None:
        self.status_at_exec = json.loads(self.files[STATUS]) if STATUS in self.files else None
        self.journalled_at_exec = json.loads(self.files[JOURNAL].splitlines()[-1])["to"]
        super().execve(argv, env, executable, blocked)


def test_status_json_is_written_before_a_custom_init_replaces_fsm_init():
    h = harness(ExecRecorder(), scripts=("run.sh", "init.sh"))
    try:
        with pytest.raises(ProcessReplaced):
            h.begin()
        # the journal's last entry is the transition before (the exec comes before the
        # transition into custom_init is recorded); status.json says where fsm-init is
        assert h.system.journalled_at_exec == "resolve_target"
        assert h.system.status_at_exec["state"] == "custom_init"
    finally:
        h.close()


def test_status_json_is_written_before_the_service_replaces_fsm_init():
    system = ExecRecorder()
    system.add_dir("/run/fsm-init")
    system.add_dir(SRV)
    system.add_file(f"{SRV}/workcfg.json", json.dumps({"initdelay": 0, "workstart": "./run.sh"}))
    system.add_script(f"{SRV}/run.sh")
    h = Harness(system, make_settings(exec_service=True), {"SRVNAME": "app", "PATH": "/usr/bin:/bin"})
    try:
        with pytest.raises(ProcessReplaced):
            h.begin()
        assert system.journalled_at_exec == "pppoe"
        assert system.status_at_exec["state"] == "start"
    finally:
        h.close()


def test_status_json_says_handover_before_the_thin_reaper_replaces_the_engine(monkeypatch):
    from fsm_init.core import reaper

    seen = []
    system = FakeSystem()
    monkeypatch.setattr(reaper, "hand_over", lambda *_: seen.append(json.loads(system.files[STATUS])["state"]))
    h = harness(system)
    try:
        h.begin()
        h.advance(1)  # FSM_INIT_HANDOVER_AFTER
        assert seen == ["handover"]
    finally:
        h.close()


# -- the probes: srvctl health / live --------------------------------------------------------------

REPLIES = ['{"ok": true, "message": "healthy: state watch"}\n',
           '{"ok": false, "message": "unhealthy: \\u00e9t\\u00e9 \\"quoted\\" \\\\ \\n", "n": -1.5e3, "i": 12}\n',
           '{"ok": true, "status": {"state": "watch", "checks": [], "daemons": [{"pid": null}], "x": NaN}}',
           '{"nested": [[], {}, [1, [2, [3]]]], "u": "\u2028 \U0001f600"}']


@pytest.mark.parametrize("text", REPLIES)
def test_the_probes_decoder_reads_what_json_reads(text):
    from fsm_init.client import probe

    got, want = probe.decode(text), json.loads(text)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


@pytest.mark.parametrize("text", ["", "{", '{"ok": true} x', '{"ok": tru}', "\xff"])
def test_the_probes_decoder_refuses_what_json_refuses(text):
    from fsm_init.client import probe

    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        probe.decode(text)


def test_a_probe_asks_over_the_control_socket_as_control_request_does(tmp_path):
    import socket
    import threading

    from fsm_init.client import probe

    path = str(tmp_path / "control.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    received = []

    def serve():
        conn, _ = server.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                data += conn.recv(4096)
            received.append(json.loads(data))
            conn.sendall(b'{"ok": true, "message": "alive"}\n')

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert probe.ask(path, "live", timeout=10) == {"ok": True, "message": "alive"}
    finally:
        thread.join(10)
        server.close()
    assert received == [{"verb": "live"}]
    with pytest.raises(OSError):
        probe.ask(str(tmp_path / "nobody.sock"), "health")


def test_srvctl_health_and_live_import_neither_json_nor_socket(tmp_path):
    # What Docker's HEALTHCHECK and a Kubernetes probe pay at every run: json pulls in re,
    # socket pulls in enum; the probe needs neither.  `status` still uses them.
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = f"""
import sys
sys.path.insert(0, {str(root)!r})
before = set(sys.modules)
from fsm_init.client import srvctl
import io
sys.stderr = io.StringIO()
code = srvctl.main(sys.argv[1:])
new = sorted(set(sys.modules) - before)
sys.stderr = sys.__stderr__
print(code, " ".join(new))
"""
    heavy = {"json", "re", "socket", "enum", "typing", "selectors", "contextlib", "signal", "fsm_init.core.control",
             "fsm_init.core.system"}
    given = dict(os.environ, FSM_INIT_RUN_DIR=str(tmp_path))
    # without FSM_INIT_RUN_DIR (the image: Docker's HEALTHCHECK), srvctl looks for the run
    # directory the way fsm-init chose it (settings.locate_run_dir): light too
    located = {k: v for k, v in os.environ.items() if k != "FSM_INIT_RUN_DIR"}
    for verb, expect_heavy, env in (("health", False, given), ("live", False, given), ("health", False, located),
                                    ("status", True, given)):
        out = subprocess.run([sys.executable, "-I", "-S", "-c", code, verb], capture_output=True, text=True,
                             env=env, timeout=60)
        code_, _, modules = out.stdout.strip().partition(" ")
        assert code_ == "3", out  # nobody listens
        assert bool(heavy & set(modules.split())) is expect_heavy, (verb, modules)


PIP_23 = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from fsm_init.{module} import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""
PIP_26 = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
if __name__ == '__main__':
    from fsm_init.{module} import main
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


@pytest.mark.parametrize("template", [PIP_23, PIP_26], ids=["pip-23", "pip-26"])
def test_image_install_launchers_drop_pips_import_re(tmp_path, template):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, module in (("fsm-init", "cli"), ("srvctl", "client.srvctl"), ("setuser", "core.setuser")):
        script = venv / "bin" / name
        script.write_text(template.format(python=sys.executable, module=module))
        script.chmod(0o755)
    subprocess.run([str(root / "scripts" / "image-install"), "launchers"], check=True, capture_output=True,
                   env=dict(os.environ, FSM_INIT_VENV=str(venv)))
    srvctl = (venv / "bin" / "srvctl").read_text()
    assert srvctl == f"#!{sys.executable}\nimport sys\nfrom fsm_init.client.srvctl import main\nsys.exit(main())\n"
    assert "from fsm_init.cli import main" in (venv / "bin" / "fsm-init").read_text()
    env = dict(os.environ, PYTHONPATH=str(root))
    usage = subprocess.run([str(venv / "bin" / "srvctl")], capture_output=True, text=True, env=env, timeout=60)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: srvctl")
    version = subprocess.run([str(venv / "bin" / "fsm-init"), "--version"], capture_output=True, text=True,
                             env=env, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("fsm-init ")


# -- fsm_init.core.records: NamedTuple without typing ------------------------------------------------------


def test_records_named_tuple_is_typings_at_run_time():
    import typing

    from fsm_init.core.records import NamedTuple

    class Ours(NamedTuple):
        """A check's result."""
        name: str
        exit: int | None
        output: str = ""
        extra: tuple = ()

        @property
        def passed(self) -> bool:
            return self.exit == 0

        def describe(self) -> str:
            return f"{self.name}: {self.exit}"

    class Theirs(typing.NamedTuple):
        """A check's result."""
        name: str
        exit: int | None
        output: str = ""
        extra: tuple = ()

    ours, theirs = Ours("a", 0), Theirs("a", 0)
    assert tuple(ours) == tuple(theirs) == ("a", 0, "", ())
    assert Ours._fields == Theirs._fields and Ours._field_defaults == Theirs._field_defaults
    assert ours.passed and not Ours("b", 1).passed and ours.describe() == "a: 0"
    assert ours._replace(exit=3) == Ours("a", 3) and ours._asdict() == theirs._asdict()
    assert Ours.__doc__ == "A check's result." and Ours.__name__ == "Ours" and Ours.__module__ == __name__
    assert "test_records_named_tuple_is_typings_at_run_time.<locals>.Ours" == Ours.__qualname__
    assert Ours.__annotations__ == Theirs.__annotations__
    assert repr(ours) == "Ours(name='a', exit=0, output='', extra=())"
    assert isinstance(ours, tuple) and hash(ours) == hash(tuple(ours))
    with pytest.raises(AttributeError):
        ours.name = "x"  # immutable as a tuple
    with pytest.raises(TypeError):
        Ours("only a name")


def test_records_named_tuple_refuses_a_field_without_default_after_one_with():
    from fsm_init.core.records import NamedTuple

    with pytest.raises(TypeError):
        class Bad(NamedTuple):
            a: int = 0
            b: int


# -- the thin reaper: the service is signalled before status.json is rewritten ---------------------


def test_the_thin_reaper_signals_the_service_before_it_rewrites_status_json():
    import signal

    from fsm_init.core import reaper

    from .fakes import close_loop

    fake = FakeSystem()
    fake.add_dir("/run/fsm-init")
    service = fake.add_process(ppid=1, sid=None)
    state = {"pid": service, "by_session": True, "started": 0.0, "target": None, "run_count": 1,
             "control_fd": None, "quiet": False, "supporting": {}, "proof": 5, "last_transition": {}}
    thin = reaper.Reaper(fake, make_settings(), state)
    try:
        thin.loop.on_signal(signal.SIGTERM)
        kills = [i for i, call in enumerate(fake.calls) if call[0] == "kill"]
        writes = [i for i, call in enumerate(fake.calls) if call == ("write_atomic", STATUS)]
        assert kills and writes and writes[0] > kills[0], fake.calls
        journalled = [json.loads(line)["to"] for line in fake.files[JOURNAL].splitlines()]
        assert journalled[0] == "stopping"
        assert json.loads(fake.files[STATUS])["state"] == journalled[-1]
    finally:
        close_loop(thin.loop)


# -- status-check mode at speed: no fsync per cycle ----------------------------------------------------


class DurableRecorder(FakeSystem):
    def __init__(self) -> None:
        super().__init__()
        self.count_writes: list[bool] = []

    def write_atomic(self, path, data, mode=0o644, durable=True, gid=None) -> None:
        if path.endswith("/service.run.count"):
            self.count_writes.append(durable)
        super().write_atomic(path, data, mode, durable, gid)


def test_check_cycles_rewrite_service_run_count_without_fsyncs():
    # Two fsyncs per cycle kept PID 1 blocked on the disk ~3 ms (up to 10) every cycle at
    # workwatch 1; the restart count, written once per start, stays durable.
    system = DurableRecorder()
    h = harness(system, scripts=("run.sh", "PeriodicST-a"), workwatch=1, workintvl=1)
    try:
        h.begin()
        assert system.count_writes == [True]  # the start
        for _ in range(3):
            h.advance(1)
            assert h.state == "check", h.states
            script = [s.pid for s in system.spawns if s.argv == [f"{SRV}/PeriodicST-a"]][-1]
            h.advance(0.1)
            h.exit(script, exited(0))
            assert h.state == "watch", h.states
        assert system.count_writes == [True, False, False, False]
    finally:
        h.close()


def test_the_proc_scan_reads_each_stat_with_three_system_calls(monkeypatch):
    # A stop scans /proc several times per daemon (100 daemons: thousands of reads):
    # open() adds fstat, ioctl and two lseeks to each.  Reading this machine's /proc is
    # harmless; nothing is signalled.
    import builtins
    import os

    from fsm_init.core.system import System

    real_open = builtins.open

    def no_buffered_proc(path, *args, **kwargs):
        assert not str(path).startswith("/proc/"), f"buffered open of {path}"
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_buffered_proc)
    found = {p.pid: p for p in System().processes()}
    me = found[os.getpid()]
    assert (me.ppid, me.pgid, me.sid) == (os.getppid(), os.getpgid(0), os.getsid(0))


def test_sigterm_reaches_the_service_before_the_engine_touches_the_journal():
    import signal

    h = harness(FakeSystem())
    try:
        h.begin()
        assert h.state == "foreground"
        h.system.calls.clear()
        h.signal(signal.SIGTERM)
        calls = h.system.calls
        kills = [i for i, call in enumerate(calls) if call[0] == "kill"]
        files = [i for i, call in enumerate(calls) if call[0] in ("append_line", "write_atomic")]
        assert kills and files and kills[0] < files[0], calls
        # and the CPU is given up right after the signal: the service's TERM handler, woken
        # on this CPU, runs before the stop's bookkeeping (half a millisecond in the benchmark)
        yields = calls.index(("yield_cpu",))
        assert kills[0] < yields < files[0], calls
        entries = [json.loads(line) for line in h.system.files[JOURNAL].splitlines()]
        assert ["pre_shutdown", "stopping"] == [e["to"] for e in entries if e["to"] in ("pre_shutdown", "stopping")]
    finally:
        h.close()


def test_the_loop_freezes_what_the_start_up_made_for_the_garbage_collector():
    # A full collection walking the imports and marshmallow's schema could fall on a
    # signal's path (milliseconds); frozen, they are never walked again.
    import gc

    from fsm_init.core.loop import EventLoop

    from .fakes import close_loop

    loop = EventLoop(FakeSystem(), lambda signum: None, lambda pid, status: None)
    try:
        gc.unfreeze()
        loop.stop()
        loop.run()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        close_loop(loop)
