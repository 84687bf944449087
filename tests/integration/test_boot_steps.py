"""The boot path, for real: target, init.sh, EnvResume-*, config intake and validation,
workstart, idle, and the network steps.  fsm-init runs as PID 1 of a fresh PID namespace.
"""

import json
import os
import re
import signal
import stat
import time
from pathlib import Path

import pytest

from tests.conftest import count_file, lines, needs_pid_namespace, wait_for, wait_lines
from tests.integration.nsbox import launcher, netns  # noqa: F401  (ssh may change root's password: contained)

pytestmark = needs_pid_namespace

# A service that records its $SRVCFG (one line per run) and exits 0.
SHOW_CFG = "printf '%s\\n' \"$SRVCFG\" >> seen\n"
HOLD = "echo $$ >> pids\nwhile [ ! -e release ]; do sleep 0.05; done\n"
NO_FIREWALL = {"enable": "no"}


def ns_cmdlines(run) -> dict[int, list[str]]:
    """Namespace pid -> argv of every live (non-zombie) process in run's namespace."""
    found = {}
    for host in run.namespace_pids():
        try:
            nspid = next(int(line.split()[-1]) for line in Path(f"/proc/{host}/status").read_text().splitlines()
                         if line.startswith("NSpid:"))
            found[nspid] = Path(f"/proc/{host}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
        except (OSError, StopIteration):
            pass
    return found


def seen_configs(directory: Path) -> list[dict]:
    return [json.loads(line) for line in lines(directory / "seen")]


# -- target resolution -------------------------------------------------------------------------


def test_srvname_and_srvcfg_are_honoured_on_the_first_start_only(sandbox):
    web = sandbox.service("web", {"initdelay": 0, "workstart": "./run.sh", "tag": "image"}, run__sh=SHOW_CFG)
    other = sandbox.service("other", {"initdelay": 0, "workstart": "./run.sh"}, run__sh="touch ran\n")
    srvcfg = '{"initdelay": 1, "workstart": "./run.sh", "tag": "env"}'
    first = sandbox.start(SRVNAME="web", SRVCFG=srvcfg)
    assert first.wait() == 0
    assert (sandbox.state_dir / "target").read_text() == "web\n"
    assert (web / "workcfg.json").read_text() == srvcfg
    assert seen_configs(web)[0]["tag"] == "env"
    assert "initdelay: waiting 1s" in first.log
    assert re.search(r"target service web in \S+/srv/web \(first start\)", first.log), first.log

    second = sandbox.start(SRVNAME="other", SRVCFG='{"initdelay": 0, "workstart": "./run.sh", "tag": "second"}')
    assert second.wait() == 0
    assert [c["tag"] for c in seen_configs(web)] == ["env", "env"]
    assert not (other / "ran").exists()
    assert (web / "workcfg.json").read_text() == srvcfg
    assert (sandbox.state_dir / "target").read_text() == "web\n"
    assert "restart: $SRVNAME and $SRVCFG are not read again" in second.log
    assert "initdelay" not in second.log  # the first start only


@pytest.mark.parametrize("name, why", [
    ("..", "is not a directory name"),
    (".", "is not a directory name"),
    ("a/b", "is not a directory name"),
    ("missing", "has no directory"),
])
def test_an_unusable_srvname_falls_back_to_imginit_and_is_not_remembered(sandbox, name, why):
    (sandbox.srv / "a" / "b").mkdir(parents=True)  # 'a/b' exists, and is still refused
    imginit = sandbox.service("imginit", {"initdelay": 0, "workstart": "./run.sh"}, run__sh="touch ran\n")
    run = sandbox.start(SRVNAME=name)
    assert run.wait() == 0
    assert (imginit / "ran").exists()
    assert f"SRVNAME {name!r} {why}" in run.log
    assert "falling back for this start (not remembered)" in run.log
    assert not (sandbox.state_dir / "target").exists()


def test_a_missing_srvname_is_tried_again_on_the_next_start(sandbox):
    sandbox.service("imginit", {"initdelay": 0, "workstart": "./run.sh"}, run__sh="touch ran\n")
    assert sandbox.start(SRVNAME="late").wait() == 0
    late = sandbox.service("late", {"initdelay": 0, "workstart": "./run.sh"}, run__sh="touch ran\n")
    run = sandbox.start(SRVNAME="late")
    assert run.wait() == 0
    assert (late / "ran").exists()
    assert (sandbox.state_dir / "target").read_text() == "late\n"


def test_no_imginit_either_runs_with_built_in_defaults_and_no_delay(sandbox):
    started = time.monotonic()
    run = sandbox.start("--", "sh", "-c", "printf '%s\\n' \"$SRVCFG\"; exit 4", SRVNAME="missing")
    assert run.wait() == 4
    assert time.monotonic() - started < 2.5, "the built-in initdelay (3s) must not apply without a config"
    assert "running with built-in defaults" in run.log
    assert "initdelay" not in run.log
    assert "firewall" not in run.log
    # no $SRVCFG the container was not started with
    assert run.output == "\n"
    assert not (sandbox.state_dir / "target").exists()


def test_no_directory_and_no_command_is_idle(sandbox):
    run = sandbox.start(FSM_INIT_IDLE_WAIT=600)
    status = run.wait_state("idle", timeout=2.5)
    assert status["target"] is None
    assert status["supporting"] == {}
    assert "initdelay" not in run.log


# -- init.sh -------------------------------------------------------------------------------------


def test_an_executable_init_sh_takes_over_as_pid_1_with_the_environment(sandbox):
    web = sandbox.service(
        "web", '{"initdelay": 0, "workstart": "./run.sh"}\n',
        init__sh="echo \"init pid=$$ foo=$FOO srvname=$SRVNAME\"\n"
                 "echo \"srvcfg=$SRVCFG\"\n"
                 "while [ ! -e release ]; do sleep 0.05; done\n"
                 "exit 6\n",
        run__sh="touch service-ran\n", EnvResume_a="touch env-ran\n")
    run = sandbox.start(SRVNAME="web", SRVCFG='{"tag": "env"}', FOO="bar baz")
    wait_for(lambda: "init pid=" in run.output, what=f"init.sh's output\n--- log:\n{run.log}")
    assert "init pid=1 foo=bar baz srvname=web" in run.output
    assert 'srvcfg={"tag": "env"}' in run.output
    assert "init.sh" in Path(f"/proc/{run.pid1}/cmdline").read_bytes().decode()
    assert re.search(r"custom init \S+/web/init\.sh takes over", run.log), run.log
    (web / "release").touch()
    assert run.wait() == 6
    # It took over before EnvResume-*, the $SRVCFG intake and the service.
    assert not (web / "env-ran").exists() and not (web / "service-ran").exists()
    assert (web / "workcfg.json").read_text() == '{"initdelay": 0, "workstart": "./run.sh"}\n'
    assert (sandbox.state_dir / "target").read_text() == "web\n"


def test_a_non_executable_init_sh_is_ignored(sandbox):
    web = sandbox.service("web", {"initdelay": 0, "workstart": "./run.sh"}, run__sh="touch service-ran\n")
    (web / "init.sh").write_text("#!/bin/sh\nexit 9\n")
    (web / "init.sh").chmod(0o644)
    run = sandbox.start(SRVNAME="web")
    assert run.wait() == 0
    assert (web / "service-ran").exists()
    assert "custom init" not in run.log


# -- EnvResume-* ---------------------------------------------------------------------------------


def test_env_resume_scripts_run_in_order_once_in_the_foreground_before_the_service(sandbox):
    d = sandbox.service(
        "app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0, "workintvl": 1},
        EnvResume_b="echo b-start >> order\nsleep 0.3\necho b-end >> order\nexit 3\n",
        EnvResume_a="echo a-start >> order\nsleep 0.3\necho a-end >> order\n",
        EnvResume_c="echo c >> order\n",
        run__sh="echo service >> order\n[ $(grep -c service order) -ge 2 ] && exec sleep 1000\nexit 0\n")
    (d / "EnvResume-d").write_text("#!/bin/sh\necho d >> order\n")  # not executable: skipped
    run = sandbox.start(SRVNAME="app")
    wait_for(lambda: count_file(d).startswith("RestartCount: 2\n"), what=f"a restart\n--- log:\n{run.log}")
    wait_for(lambda: lines(d / "order").count("service") == 2, what="the second run")
    assert lines(d / "order") == ["a-start", "a-end", "b-start", "b-end", "c", "service", "service"]
    assert re.search(r"error: \S*/EnvResume-b exited with status 3; carrying on", run.log)


def test_a_stop_during_env_resume_runs_no_further_script_and_no_service(sandbox):
    d = sandbox.service(
        "app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0},
        # A child that outlives the TERM keeps the leftover sweep waiting while
        # EnvResume-a itself exits: that exit must not start EnvResume-b.
        EnvResume_a="(trap '' TERM; touch child-ready; exec sleep 60) &\n"
                    "trap 'sleep 0.3; echo a-term >> order; exit 0' TERM\n"
                    "echo a >> order\nwhile :; do sleep 0.05; done\n",
        EnvResume_b="echo b >> order\n",
        run__sh="echo service >> order\nexec sleep 1000\n")
    run = sandbox.start(SRVNAME="app", FSM_INIT_LEFTOVER_GRACE=2)
    wait_lines(d / "order", 1)
    wait_for((d / "child-ready").exists, what="the child to ignore TERM")  # the stop TERMs the script's session at once
    run.signal(signal.SIGTERM)
    assert run.wait() == 143  # stopped by SIGTERM before any service ran: 128 + 15
    assert lines(d / "order") == ["a", "a-term"], lines(d / "order")
    assert "outlived the grace time" in run.log


# -- $SRVCFG ----------------------------------------------------------------------------------------

IMAGE_CFG = '{\n  "initdelay": 0,\n    "workstart": "./run.sh"  ,"tag": "image"}\n'


@pytest.mark.parametrize("srvcfg, why", [
    ("workwatch=1", "not valid JSON"),
    ('[{"workstart": "./run.sh"}]', "a JSON list, not an object"),
    ('{"initdelay": 0} junk', "not valid JSON"),
    ('{"initdelay": 0}{"workwatch": 0}', "not valid JSON"),
    ('"just a string"', "a JSON str, not an object"),
], ids=["not-json", "array", "trailing-garbage", "two-objects", "string"])
def test_a_bad_srvcfg_is_reported_and_workcfg_json_is_untouched(sandbox, srvcfg, why):
    d = sandbox.service("app", IMAGE_CFG, run__sh=SHOW_CFG)
    (d / "workcfg.json").chmod(0o640)
    before = (d / "workcfg.json").read_bytes()
    run = sandbox.start(SRVNAME="app", SRVCFG=srvcfg)
    assert run.wait() == 0
    assert re.search(r"error: \$SRVCFG is " + re.escape(why) + r".*ignored, \S+/workcfg\.json kept", run.log), run.log
    assert (d / "workcfg.json").read_bytes() == before
    assert stat.S_IMODE(os.stat(d / "workcfg.json").st_mode) == 0o640
    assert seen_configs(d)[0]["tag"] == "image"


def test_a_good_srvcfg_is_written_exactly_as_given_mode_0600(sandbox):
    d = sandbox.service("app", IMAGE_CFG, run__sh=SHOW_CFG)
    (d / "workcfg.json").chmod(0o644)
    srvcfg = '{ "initdelay":0,\n  "workstart" : "./run.sh", "z": [1,2],  "tag": "env \u00e9" }'
    run = sandbox.start(SRVNAME="app", SRVCFG=srvcfg)
    assert run.wait() == 0
    assert (d / "workcfg.json").read_bytes() == srvcfg.encode()
    assert stat.S_IMODE(os.stat(d / "workcfg.json").st_mode) == 0o600
    assert seen_configs(d)[0]["tag"] == "env \u00e9"
    assert "$SRVCFG" not in run.log


def test_srvcfg_creates_a_missing_workcfg_json(sandbox):
    d = sandbox.service("app", None, run__sh=SHOW_CFG)
    srvcfg = '{"initdelay": 0, "workstart": "./run.sh"}'
    assert sandbox.start(SRVNAME="app", SRVCFG=srvcfg).wait() == 0
    assert (d / "workcfg.json").read_text() == srvcfg
    assert stat.S_IMODE(os.stat(d / "workcfg.json").st_mode) == 0o600


# -- workcfg.json validation -----------------------------------------------------------------------


def test_an_invalid_workcfg_json_is_reported_and_the_defaults_apply(sandbox):
    raw = '{"initdelay": 0, "workstart": "./run.sh",'
    d = sandbox.service("app", raw, run__sh=HOLD)
    run = sandbox.start(SRVNAME="app", FSM_INIT_IDLE_WAIT=600)
    run.wait_log(r"error: \S+/workcfg\.json is not valid JSON \(.*\): using the built-in defaults")
    # The defaults: initdelay 3 on a first start, then no workstart, so idle.
    run.wait_state("delay")
    assert run.srvctl("restart").returncode == 0
    status = run.wait_state("idle")
    assert status["mode"] == "non-daemon"
    assert (d / "workcfg.json").read_text() == raw
    assert not (d / "pids").exists()


def test_invalid_values_are_reported_with_key_value_and_default(sandbox):
    d = sandbox.service("app", {"initdelay": "abc", "workintvl": 0, "workwatch": 0, "workstart": "./run.sh",
                                "firewall": {"enable": "maybe"}, "sshsrv": {"sshport": 70000}},
                        run__sh=SHOW_CFG + HOLD)
    run = sandbox.start(SRVNAME="app")
    run.wait_log(r"initdelay: waiting 3s")
    log = run.log
    assert "config key 'initdelay' = 'abc': is not an integer; using 3" in log
    assert "config key 'workintvl' = 0: must be at least 1; using 5" in log
    assert "config key 'firewall.enable' = 'maybe': is not yes or no; using 'yes'" in log
    assert "config key 'sshsrv.sshport' = 70000: must be at most 65535; using 8022" in log
    assert run.srvctl("restart").returncode == 0  # cut the 3s initdelay short
    cfg = json.loads(wait_lines(d / "seen", 1)[0])
    assert (cfg["initdelay"], cfg["workintvl"], cfg["firewall"]["enable"], cfg["sshsrv"]["sshport"]) == (3, 5, "yes", 8022)
    assert run.wait_state("watch")["mode"] == "daemon"


def test_numbers_given_as_strings_are_accepted(sandbox):
    d = sandbox.service("app", {"initdelay": "0", "workwatch": "1", "workintvl": "1", "worktimeout": " 2 ",
                                "workstart": "./run.sh", "firewall": NO_FIREWALL, "sshsrv": {"sshport": "2222"}},
                        run__sh=SHOW_CFG + HOLD)
    run = sandbox.start(SRVNAME="app")
    cfg = json.loads(wait_lines(d / "seen", 1)[0])
    assert (cfg["initdelay"], cfg["workwatch"], cfg["workintvl"], cfg["worktimeout"]) == (0, 1, 1, 2)
    assert cfg["sshsrv"]["sshport"] == 2222
    status = run.status()
    assert status["mode"] == "status-check" and status["period"] == 1
    assert "config key" not in run.log
    assert "initdelay" not in run.log


def test_yes_no_flags_in_any_case(sandbox, netns):
    d = sandbox.service("app", {"initdelay": 0, "workwatch": 0, "workstart": "./run.sh",
                                "firewall": {"enable": "NO", "icmppermit": "Yes", "grepermit": " no "},
                                "sshsrv": {"enable": "YES"}, "inetdail": {"enable": "yEs", "usedefgw": "No"}},
                        run__sh=SHOW_CFG + HOLD)
    # sshsrv enabled: dropbear and chpasswd run, so only inside a network and mount namespace of its own.
    run = sandbox.start(launcher=launcher(sandbox, netns()), SRVNAME="app")
    cfg = json.loads(wait_lines(d / "seen", 1)[0])
    assert cfg["firewall"]["enable"] == "no" and cfg["firewall"]["icmppermit"] == "yes"
    assert cfg["firewall"]["grepermit"] == "no"
    assert cfg["sshsrv"]["enable"] == "yes" and cfg["inetdail"]["enable"] == "yes"
    assert cfg["inetdail"]["usedefgw"] == "no"
    assert "config key" not in run.log
    supporting = run.wait_state("watch")["supporting"]
    assert set(supporting) == {"ssh", "pppoe"}, supporting


def test_the_effective_config_reaches_the_service_as_compact_srvcfg_with_unknown_keys(sandbox):
    workcfg = {"initdelay": 0, "workstart": "./run.sh", "firewall": {"enable": "no", "custom": "kept"},
               "myapp": {"list": [1, "two", {"x": None}], "flag": True}}
    d = sandbox.service("app", workcfg, run__sh=SHOW_CFG)
    assert sandbox.start(SRVNAME="app").wait() == 0
    raw = lines(d / "seen")[0]
    cfg = json.loads(raw)
    assert raw == json.dumps(cfg, separators=(",", ":")), "not compact JSON"
    assert cfg["myapp"] == workcfg["myapp"]
    assert cfg["firewall"]["custom"] == "kept" and cfg["firewall"]["tcpportpmt"] == ""
    assert cfg["workstart"] == "./run.sh" and cfg["workwatch"] is None
    assert cfg["workintvl"] == 5 and cfg["sshsrv"]["sshport"] == 8022  # defaults filled in


# -- workstart ----------------------------------------------------------------------------------------

ARGS = "for a in \"$@\"; do printf '[%s]\\n' \"$a\"; done > args.out\n"


@pytest.mark.parametrize("workstart, expected", [
    (["./args.sh", "one arg", "$HOME", "*", "it's"], ["[one arg]", "[$HOME]", "[*]", "[it's]"]),
    ("./args.sh 'one arg' two", ["[one arg]", "[two]"]),
], ids=["array", "string"])
def test_workstart_argv(sandbox, workstart, expected):
    d = sandbox.service("app", {"initdelay": 0, "workstart": workstart}, args__sh=ARGS)
    assert sandbox.start(SRVNAME="app").wait() == 0
    assert lines(d / "args.out") == expected


@pytest.mark.parametrize("workstart", ["./noexec.sh", "./missing.sh", "no-such-program-fsm-init"])
def test_a_non_executable_workstart_becomes_do_nothing_600(sandbox, workstart):
    d = sandbox.service("app", {"initdelay": 0, "workstart": workstart})
    (d / "noexec.sh").write_text("#!/bin/sh\nexit 0\n")
    (d / "noexec.sh").chmod(0o644)
    run = sandbox.start(SRVNAME="app", FSM_INIT_HANDOVER_AFTER=0)
    run.wait_log(re.escape(f"the service {workstart.split()[0]!r} is not an executable file; "
                           'running "DoNothing 600" instead'))
    status = run.wait_state("foreground")
    assert status["service_pid"] is not None
    argv = wait_for(lambda: ns_cmdlines(run).get(status["service_pid"]), what="the DoNothing process")
    assert argv == ["DoNothing", "600"]
    assert run.srvctl("stop").returncode == 0
    assert run.wait() == 0


def test_a_missing_workstart_is_the_idle_state(sandbox):
    d = sandbox.service("app", {"initdelay": 0, "firewall": NO_FIREWALL}, run__sh=HOLD)
    run = sandbox.start(SRVNAME="app", FSM_INIT_IDLE_WAIT=600)
    status = run.wait_state("idle")
    assert status["service_pid"] is None
    assert count_file(d) == "RestartCount: 1\nInternal-Delay( 600 )\n"
    assert "no workstart configured: reading the config again in 600s" in run.log


def test_idle_reads_the_config_again_after_the_wait(sandbox):
    d = sandbox.service("app", {"initdelay": 0, "firewall": NO_FIREWALL}, run__sh=HOLD)
    run = sandbox.start(SRVNAME="app", FSM_INIT_IDLE_WAIT=0.5)
    run.wait_state("idle")
    (d / "workcfg.json").write_text(json.dumps({"initdelay": 0, "workstart": "./run.sh", "workwatch": 0}))
    wait_lines(d / "pids", 1, timeout=5)
    assert re.fullmatch(r"RestartCount: \d+\nWith-Daemoned\( Delay: 5 \)\n", count_file(d)), count_file(d)


# -- network steps ------------------------------------------------------------------------------------

NETWORK = {"initdelay": 0, "workstart": "./run.sh", "sshsrv": {"enable": "yes"}, "inetdail": {"enable": "yes"}}


@pytest.mark.parametrize("workcfg, env, state", [
    (dict(NETWORK, workwatch=0), {}, "watch"),
    (NETWORK, {"FSM_INIT_HANDOVER_AFTER": "0"}, "foreground"),
    (NETWORK, {}, "handover"),
], ids=["daemon", "non-daemon-foreground", "non-daemon-handover"])
def test_enabled_network_steps_are_reported_unavailable_and_the_service_starts(sandbox, netns, workcfg, env, state):
    d = sandbox.service("app", workcfg, run__sh=HOLD)
    # The ssh step really runs dropbear and chpasswd: only inside namespaces of the test's own.
    run = sandbox.start(launcher=launcher(sandbox, netns(), "--ppp=nodriver"), SRVNAME="app", **env)
    wait_lines(d / "pids", 1)
    log = run.log
    assert "error: pppoe unavailable: the kernel has no PPP support: opening /dev/ppp gives" in log
    supporting = run.wait_state(state)["supporting"]
    assert set(supporting) == {"firewall", "ssh", "pppoe"}, supporting
    assert supporting["ssh"].startswith("running, pid ") or supporting["ssh"].startswith("unavailable: dropbear"), supporting
    assert supporting["pppoe"].startswith("unavailable: the kernel has no PPP support"), supporting
    text = run.srvctl("status").stdout
    assert re.search(r"^pppoe:\s+unavailable: ", text, re.M), text


def test_disabled_network_steps_are_not_listed(sandbox):
    d = sandbox.service("app", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 0,
                                "firewall": NO_FIREWALL}, run__sh=HOLD)
    run = sandbox.start(SRVNAME="app")
    wait_lines(d / "pids", 1)
    assert run.wait_state("watch")["supporting"] == {}
    assert "not available" not in run.log


def test_a_command_line_runs_in_the_directory_fsm_init_was_started_in(sandbox):
    """`docker run IMAGE ./app.py` with WORKDIR /app: as under tini, not in /srv/imginit."""
    sandbox.service("imginit", {"initdelay": 0})
    (sandbox.root / "hello.sh").write_text("#!/bin/sh\npwd > where\n")
    (sandbox.root / "hello.sh").chmod(0o755)
    run = sandbox.start("--", "./hello.sh")
    assert run.wait() == 0, run.log
    assert (sandbox.root / "where").read_text().strip() == str(sandbox.root)
