"""Out-of-memory kills named, for real: the test makes a memory cgroup of its own with a
small limit, puts the namespace's PID 1 in it before fsm-init starts, and runs a service
that allocates past the limit; the kernel's OOM killer kills it with SIGKILL, and the log
line, the journal and ``srvctl why`` must say so and give the limit.  cgroup v2 when its
memory controller is enabled, otherwise cgroup v1 (the memory hierarchy)."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import needs_pid_namespace, wait_for

pytestmark = needs_pid_namespace

V2 = Path("/sys/fs/cgroup")
V1 = Path("/sys/fs/cgroup/memory")
LIMIT = 64 << 20
HOG = f"{sys.executable} -c 'data = b\"x\" * ({LIMIT} * 3); print(len(data))'"
NO_FIREWALL = {"firewall": {"enable": "no"}}


def _cgroup_root() -> tuple[Path, str] | None:
    try:
        if "memory" in (V2 / "cgroup.controllers").read_text().split() and \
                "memory" in (V2 / "cgroup.subtree_control").read_text().split():
            return V2, "v2"
    except OSError:
        pass
    if (V1 / "memory.oom_control").exists():
        return V1, "v1"
    return None


@pytest.fixture
def memory_cgroup():
    """A memory cgroup limited to LIMIT (no swap), removed afterwards."""
    found = _cgroup_root()
    if found is None or not os.access(found[0], os.W_OK):
        pytest.skip("no writable memory cgroup (v2 memory controller or v1 memory hierarchy)")
    root, kind = found
    path = root / f"fsm-init-test-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir()
    try:
        if kind == "v2":
            (path / "memory.max").write_text(str(LIMIT))
            if (path / "memory.swap.max").exists():
                (path / "memory.swap.max").write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(LIMIT))
            if (path / "memory.memsw.limit_in_bytes").exists():
                (path / "memory.memsw.limit_in_bytes").write_text(str(LIMIT))
        yield path
    finally:
        # The test's own fsm-init and its children (the sandbox fixture may not have
        # killed them yet): PID 1 of the namespace first, then whatever is left.
        def empty() -> bool:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return not pids
        wait_for(empty, 10, f"{path} to empty")
        path.rmdir()


def _start_in(sandbox, cgroup: Path, **env):
    """fsm-init as PID 1, in cgroup from its first instruction (the launcher joins it, then execs)."""
    join = ("sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "join")
    return sandbox.start(launcher=join, SRVNAME="hog", **env)


def test_a_service_killed_for_memory_is_named_in_log_journal_and_why(sandbox, memory_cgroup):
    sandbox.service("hog", {"initdelay": 0, "workstart": "./hog.sh", "workwatch": 0, "workintvl": 60,
                            **NO_FIREWALL}, hog__sh=f"exec {HOG}\n")
    run = _start_in(sandbox, memory_cgroup)
    log = run.wait_log(r"out-of-memory killer", timeout=30)
    line = next(line for line in log.splitlines() if "out-of-memory killer" in line)
    assert "warning: service (pid" in line and "was killed by SIGKILL (status 137)" in line, line
    assert "memory limit 64 MiB" in line, line
    why = wait_for(lambda: (r := run.srvctl("why")).returncode == 0 and r.stdout, what="srvctl why")
    assert "out-of-memory killer" in why and "memory limit 64 MiB" in why, why
    journal = [json.loads(x) for x in (sandbox.run_dir / "journal.jsonl").read_text().splitlines()]
    causes = [e["cause"] for e in journal if e["trigger"] == "service_exit"]
    assert any("out-of-memory killer (memory limit 64 MiB" in cause for cause in causes), causes
    # counted in the metrics (the restart it causes, cause="oom", comes after the back-off:
    # tests/unit/test_metrics.py)
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    text = run.srvctl("metrics").stdout
    counted = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert counted[("fsm_init_oom_kills_total", (("process", "service"),))] >= 1
    assert counted[("fsm_init_oom_kills_total", (("process", "daemon"),))] == 0


def test_the_thin_reaper_names_an_out_of_memory_kill_too(sandbox, memory_cgroup):
    sandbox.service("hog", {"initdelay": 0, "workstart": "./hog.sh", **NO_FIREWALL},
                    hog__sh=f"while [ ! -e go ]; do sleep 0.05; done\n{HOG}\n")
    run = _start_in(sandbox, memory_cgroup, FSM_INIT_HANDOVER_AFTER="0.2")
    run.wait_state("handover")
    (sandbox.srv / "hog" / "go").touch()
    assert run.wait(30) == 137
    line = next((line for line in run.log.splitlines() if "out-of-memory killer" in line), "")
    assert "fsm-init[handover] warning: service (pid" in line and "memory limit 64 MiB" in line, run.log
    journal = [json.loads(x) for x in (sandbox.run_dir / "journal.jsonl").read_text().splitlines()]
    assert any("out-of-memory killer" in e["cause"] for e in journal if e["trigger"] == "service_exit"), journal
