"""srvctl reload: the diff of two effective configs (pure), and the engine applying it on the fake."""

import json
import signal

import pytest

from fsm_init.config import workcfg as config
from fsm_init.core import table
from fsm_init.steps import reload
from fsm_init.compat.daemons import run_digest

from .fakes import FakeSystem, Harness, exited, make_settings

SRV = "/srv/app"


def effective(**values) -> dict:
    from fsm_init.config import schema as config_schema

    document = {"initdelay": 0, "workstart": "./run.sh", "firewall": {"enable": "no"}, **values}
    found, problems = config_schema.validate(document)
    assert not problems, problems
    return found


def steps(changes) -> dict:
    return {c.step: c for c in changes}


# -- the diff ---------------------------------------------------------------------------------


def test_no_change_no_step():
    assert reload.diff(effective(), effective()) == []


def test_a_firewall_port_is_the_firewall_step_only():
    changes = reload.diff(effective(firewall={"tcpportpmt": "8080"}), effective(firewall={"tcpportpmt": "8081"}))
    assert [c.step for c in changes] == ["firewall"]
    assert changes[0].what == 'firewall.tcpportpmt "8080" -> "8081"'
    assert "iptables-restore" in changes[0].action


def test_sshsrv_restarts_dropbear_and_masks_the_password():
    old = effective(sshsrv={"enable": "yes", "rootpwd": "old-secret"})
    new = effective(sshsrv={"enable": "yes", "rootpwd": "new-secret", "sshport": 2222})
    changes = reload.diff(old, new)
    assert [c.step for c in changes] == ["ssh"]
    assert changes[0].what == "sshsrv.rootpwd changed, sshsrv.sshport 8022 -> 2222"
    assert changes[0].action == "restart dropbear"
    assert "secret" not in changes[0].line()


@pytest.mark.parametrize("was, now, action", [("no", "yes", "start dropbear"), ("yes", "no", "stop dropbear"),
                                              ("no", "no", "nothing to run (sshsrv.enable is no)")])
def test_sshsrv_enable(was, now, action):
    changes = reload.diff(effective(sshsrv={"enable": was}), effective(sshsrv={"enable": now, "sshport": 9}))
    assert steps(changes)["ssh"].action == action


def test_inetdail_is_the_pppoe_step():
    changes = reload.diff(effective(), effective(inetdail={"enable": "yes", "dialuser": "u", "dialpswd": "p"}))
    assert [c.step for c in changes] == ["pppoe"]
    assert changes[0].what == 'inetdail.dialpswd changed, inetdail.dialuser "" -> "u", inetdail.enable "no" -> "yes"'
    assert changes[0].action == "start the dial-up (pppd)"


def test_workstart_workuser_and_the_services_own_section_restart_the_service():
    changes = reload.diff(effective(), effective(workstart="./other.sh"))
    assert [(c.step, c.what) for c in changes] == [("service", 'workstart "./run.sh" -> "./other.sh"')]
    assert steps(reload.diff(effective(), effective(workuser="nobody")))["service"]
    changes = reload.diff(effective(app={"level": 1}), effective(app={"level": 2}))
    assert [c.step for c in changes] == ["service"]
    assert "'app'" in changes[0].what and "level" not in changes[0].what  # the service's values are its own


def test_workready_and_workwatchdog_restart_the_service():
    """What the service is given changes (NOTIFY_SOCKET, WATCHDOG_USEC, fd N): a reload that
    said "no change" would leave the old readiness running until some later restart."""
    changes = reload.diff(effective(), effective(workready="notify"))
    assert [(c.step, c.what) for c in changes] == [("service", 'workready "checks" -> "notify"')]
    changes = reload.diff(effective(workready="notify"), effective(workready="notify", workwatchdog=10))
    assert [c.step for c in changes] == ["service"] and "workwatchdog" in changes[0].what


def test_every_key_is_one_steps():
    own = set(config.defaults())
    classified = (set(reload.SERVICE_KEYS) | set(reload.CYCLE_KEYS) | set(reload.LATER_KEYS)
                  | set(reload.NETWORK_SECTIONS))
    assert own <= classified, f"a reload would not see a change of {sorted(own - classified)}"


def test_a_command_line_makes_workstart_no_restart():
    changes = reload.diff(effective(), effective(workstart="./other.sh"), command_line=True)
    assert [c.step for c in changes] == ["later"]


def test_the_cycle_keys_take_effect_without_a_restart():
    changes = reload.diff(effective(workwatch=30, workintvl=5), effective(workwatch=10, workintvl=2, worktimeout=4))
    assert [c.step for c in changes] == ["checks"]
    assert changes[0].what == "workwatch 30 -> 10, worktimeout null -> 4, workintvl 5 -> 2"
    # daemon <-> status-check: in place
    assert [c.step for c in reload.diff(effective(workwatch=0), effective(workwatch=10))] == ["checks"]


def test_into_or_out_of_non_daemon_mode_is_a_new_instance():
    for old, new in ((None, 10), (0, None)):
        changes = reload.diff(effective(workwatch=old), effective(workwatch=new))
        assert [c.step for c in changes] == ["service"], (old, new)


def test_the_other_keys_at_their_next_use():
    changes = reload.diff(effective(), effective(workbackoff=10, workretry={"max": 3}))
    assert [c.step for c in changes] == ["later"]
    assert changes[0].what == "workbackoff 300 -> 10, workretry.max 0 -> 3"


def test_steps_in_boot_order():
    old = effective(workwatch=30)
    new = effective(workwatch=10, workstart="./b.sh", firewall={"tcpportpmt": "1"}, sshsrv={"enable": "yes"},
                    initdelay=5)
    assert [c.step for c in reload.diff(old, new)] == ["firewall", "ssh", "service", "checks", "later"]


def test_daemon_changes():
    changes = reload.daemon_changes({"added": ["a", "b"], "removed": [], "changed": ["c"]})
    assert [c.line() for c in changes] == ["daemons: new service a, b: start them",
                                           "daemons: run changed c: restart it"]


# -- the engine on the fake -----------------------------------------------------------------------


@pytest.fixture
def make():
    made = []

    def factory(workcfg, scripts=("run.sh",), **settings):
        fake = FakeSystem()
        fake.add_dir(SRV)
        fake.add_file(f"{SRV}/workcfg.json", json.dumps(workcfg))
        for script in scripts:
            fake.add_script(f"{SRV}/{script}")
        h = Harness(fake, make_settings(**settings), {"SRVNAME": "app", "PATH": "/usr/bin:/bin"})
        made.append(h)
        return h

    yield factory
    for h in made:
        h.close()


def cfg(**values) -> dict:
    return {"initdelay": 0, "workstart": "./run.sh", "firewall": {"enable": "no"}, **values}


def write(h: Harness, workcfg) -> None:
    h.system.add_file(f"{SRV}/workcfg.json", workcfg if isinstance(workcfg, str) else json.dumps(workcfg))


def in_watch(make, **values) -> Harness:
    h = make(cfg(workwatch=30, workintvl=5, **values), scripts=("run.sh", "PeriodicST-a"))
    h.begin()
    h.advance(5)
    assert h.state == "check"
    h.advance(1)
    h.exit([s.pid for s in h.system.spawns if s.argv == [f"{SRV}/PeriodicST-a"]][-1], exited(0))
    assert h.state == "watch"
    return h


def test_dry_run_changes_nothing_and_says_what_would(make):
    h = in_watch(make)
    assert h.request("reload", dry_run=True) == {
        "ok": True, "changed": False, "message": f"config: {SRV}/workcfg.json read again\nno change: nothing to apply",
        "lines": [f"config: {SRV}/workcfg.json read again", "no change: nothing to apply"]}
    write(h, cfg(workwatch=30, workintvl=5, workstart="./other.sh"))
    reply = h.request("reload", dry_run=True)
    assert reply["ok"] and reply["changed"]
    assert reply["lines"][0] == "would apply 1 change(s):"
    assert reply["lines"][2] == 'service: workstart "./run.sh" -> "./other.sh": restart the service'
    assert h.engine.config["workstart"] == "./run.sh" and h.state == "watch" and h.states.count("start") == 1


def test_workstart_restarts_the_service_once(make):
    h = in_watch(make)
    first = h.engine.service.instance.pid
    write(h, cfg(workwatch=30, workintvl=5, workstart="./run.sh --new"))
    reply = h.request("reload")
    assert reply["ok"] and reply["changed"] and reply["lines"][0] == "applied 1 change(s):"
    assert h.system.signals_to(first) == [signal.SIGTERM]
    h.exit(first, exited(0))
    assert h.states.count("start") == 2 and h.engine.service.instance.pid != first
    assert h.engine.config["workstart"] == "./run.sh --new"
    assert "srvctl reload: workstart" in h.engine.service.restart_cause
    assert "last reload at" in h.engine.explain.why()


def test_workwatch_retimes_the_next_cycle_without_a_restart(make):
    h = in_watch(make)
    began = h.engine.checks.begun
    assert h.deadline("cycle") == pytest.approx(began + 30)
    write(h, cfg(workwatch=10, workintvl=5))
    reply = h.request("reload")
    assert reply["lines"][2] == "checks: workwatch 30 -> 10: from the next cycle, without a restart"
    assert h.deadline("cycle") == pytest.approx(began + 10)
    assert h.states.count("start") == 1 and h.state == "watch" and h.engine.mode.period == 10


def test_daemon_mode_turned_status_check_checks_one_period_later_and_back(make):
    h = make(cfg(workwatch=0, workintvl=1), scripts=("run.sh", "PeriodicST-a"))
    h.begin()
    h.advance(1)
    assert h.state == "watch" and h.deadline("cycle") is None
    write(h, cfg(workwatch=7, workintvl=1))
    assert h.request("reload")["lines"][2] == "checks: workwatch 0 -> 7: from the next cycle, without a restart"
    assert h.deadline("cycle") == pytest.approx(h.system.now() + 7)
    h.advance(7)
    assert h.state == "check" and h.states.count("start") == 1
    h.advance(1)
    h.exit([s.pid for s in h.system.spawns if s.argv == [f"{SRV}/PeriodicST-a"]][-1], exited(0))
    write(h, cfg(workwatch=0, workintvl=1))
    h.request("reload")
    assert h.state == "watch" and h.deadline("cycle") is None and h.engine.mode.kind == "daemon"
    h.exit(h.engine.service.instance.pid, exited(1))
    assert h.states[-2:] == ["restart", "restart_interval"]  # daemon mode again: its exit restarts it


def test_a_file_with_problems_is_refused_whole(make):
    h = in_watch(make)
    write(h, cfg(workwatch=10, workintvl="soon"))
    reply = h.request("reload")
    assert reply["ok"] is False and reply["changed"] is False
    assert reply["lines"] == ["configuration refused, the running one is kept:",
                              "problem: config key 'workintvl' = 'soon': is not an integer; using 5"]
    assert h.engine.config["workwatch"] == 30 and h.deadline("cycle") is not None
    write(h, "{not json")
    reply = h.request("reload", dry_run=True)
    assert reply["ok"] is False and reply["lines"][1].startswith(f"error: {SRV}/workcfg.json is not valid JSON")


def test_refused_while_stopping(make):
    h = in_watch(make)
    h.request("stop")
    assert h.state in table.STOP_PATH
    reply = h.request("reload")
    assert reply["ok"] is False and reply["message"] == f"cannot reload during {h.state}: fsm-init is stopping"


def test_firewall_change_applies_only_the_firewall(make, monkeypatch):
    h = in_watch(make)
    calls = []
    monkeypatch.setattr(h.engine.network, "apply_firewall", lambda c, has: calls.append(c["firewall"]["tcpportpmt"]))
    monkeypatch.setattr(h.engine.network, "apply", lambda *a: calls.append(a))
    write(h, cfg(workwatch=30, workintvl=5, firewall={"enable": "no", "tcpportpmt": "80"}))
    h.request("reload")
    assert calls == ["80"] and h.states.count("start") == 1


def test_a_step_that_cannot_be_done_here_is_named_and_fails_the_reload(make):
    h = in_watch(make)
    write(h, cfg(workwatch=30, workintvl=5, firewall={"enable": "yes", "tcpportpmt": "80"}))
    reply = h.request("reload")
    assert reply["ok"] is False and reply["changed"] is True
    assert reply["lines"][-1].startswith("firewall: unavailable: ")
    assert h.engine.config["firewall"]["tcpportpmt"] == "80"  # taken: the next restart tries again
    assert reply["lines"][-1] in h.engine.explain.why()


def test_inetdail_redials_only_the_dial_up(make, monkeypatch):
    h = in_watch(make)
    calls = []
    monkeypatch.setattr(h.engine.network, "apply_firewall", lambda *a: calls.append("firewall"))
    monkeypatch.setattr(h.engine.network, "apply", lambda step, c, has: calls.append((step, c["inetdail"]["dialuser"])))
    write(h, cfg(workwatch=30, workintvl=5, inetdail={"enable": "yes", "dialuser": "isp", "dialpswd": "pw"}))
    assert h.request("reload")["ok"]
    assert calls == [("pppoe", "isp")] and h.states.count("start") == 1


def test_a_new_worktimeout_holds_from_the_next_check(make):
    h = in_watch(make)
    write(h, cfg(workwatch=30, workintvl=5, worktimeout=2))
    h.request("reload")
    assert h.state == "watch" and h.states.count("start") == 1
    h.advance(30 - 1)  # the next cycle, 30 s after the first one began
    assert h.state == "check"
    assert h.deadline("script") == pytest.approx(h.system.now() + 2)


def test_no_workcfg_keeps_the_running_configuration_and_reloads_the_daemons(make):
    h = make(cfg(workwatch=0), service_dir="/etc/service")
    h.begin()
    del h.system.files[f"{SRV}/workcfg.json"]
    h.system.add_script("/etc/service/new/run", "exec sleep 1000\n")
    reply = h.request("reload")
    assert reply["ok"] and reply["lines"] == ["applied 1 change(s):", f"config: no {SRV}/workcfg.json: the running "
                                              "configuration is kept", "daemons: new service new: start it"]
    assert h.engine.daemons.services["new"].pid is not None and h.engine.config["workwatch"] == 0


def test_a_changed_daemon_run_restarts_that_daemon_only(make):
    h = make(cfg(workwatch=0), service_dir="/etc/service")
    for name in ("a", "b"):
        h.system.add_script(f"/etc/service/{name}/run", "exec sleep 1000\n")
    h.begin()
    pids = {d.name: d.pid for d in h.engine.daemons.services.values()}
    assert h.engine.daemons.services["a"].digest == run_digest(h.system, "/etc/service/a/run")
    h.system.add_script("/etc/service/a/run", "exec sleep 2000\n")
    h.system.add_script("/etc/service/c/run", "exec sleep 1000\n")
    reply = h.request("reload", dry_run=True)
    assert reply["lines"][2:] == ["daemons: new service c: start it", "daemons: run changed a: restart it"]
    assert "c" not in h.engine.daemons.services
    h.request("reload")
    assert h.system.signals_to(pids["a"]) == [signal.SIGTERM] and h.system.signals_to(pids["b"]) == []
    assert h.engine.daemons.services["c"].pid is not None


def test_secrets_never_in_the_reply(make):
    h = in_watch(make)
    write(h, cfg(workwatch=30, workintvl=5, sshsrv={"enable": "no", "rootpwd": "hunter2-secret"}))
    reply = h.request("reload", dry_run=True)
    assert "hunter2" not in json.dumps(reply) and "sshsrv.rootpwd changed" in reply["message"]
    assert config.MASK not in reply["message"]


# -- srvctl reload: the request sent, the exit codes, the lines escaped --------------------------------


@pytest.mark.parametrize("args, reply, code", [
    (["reload"], {"ok": True, "changed": True}, 0),
    (["reload"], {"ok": False, "changed": False}, 1),
    (["reload", "--dry-run"], {"ok": True, "changed": False}, 0),
    (["reload", "--dry-run"], {"ok": True, "changed": True}, 1),
    (["reload", "--dry-run"], {"ok": False, "changed": False}, 1),
])
def test_srvctl_reload_exit_codes(monkeypatch, capsys, args, reply, code):
    from fsm_init.client import srvctl

    sent = []

    def request(path, verb, **fields):
        sent.append((verb, fields))
        return dict(reply, message="x", lines=["one", "two \x1b[2K"])
    monkeypatch.setattr("fsm_init.core.control.request", request)
    assert srvctl.main(args) == code
    assert sent == [("reload", {"dry_run": True} if "--dry-run" in args else {})]
    assert capsys.readouterr().out == "one\ntwo \\x1b[2K\n"


@pytest.mark.parametrize("args", [["reload", "--now"], ["reload", "app"], ["reload", "--dry-run", "x"]])
def test_srvctl_reload_usage(args, capsys):
    from fsm_init.client import srvctl

    assert srvctl.main(args) == srvctl.USAGE_ERROR
    assert "srvctl reload [--dry-run]" in capsys.readouterr().err


def test_the_thin_reaper_refuses_a_reload():
    from fsm_init.core import reaper, status

    reply = status.answer(reaper.Reaper.__new__(reaper.Reaper), {"verb": "reload", "dry_run": True})
    assert reply["ok"] is False and "restart the container" in reply["message"]


# -- review: what a reload must not leave half done ------------------------------------------------


def test_status_check_turned_daemon_after_the_leader_exited_restarts_the_service(make):
    # In status-check mode the leader may exit (a start script that daemonised) and the
    # checks watch on; daemon mode watches the leader's exit, which has been: without a
    # restart fsm-init would sit in watch for ever with nothing to watch.
    h = in_watch(make)
    first = h.engine.service.instance.pid
    h.exit(first, exited(0))
    assert h.state == "watch" and not h.engine.service.leader_alive
    write(h, cfg(workwatch=0, workintvl=5))
    reply = h.request("reload", dry_run=True)
    assert reply["lines"][2] == ("service: workwatch 30 -> 0 (daemon mode, and the service's leader has exited: "
                                 "nothing to watch): restart the service")
    reply = h.request("reload")
    assert reply["ok"] and h.states.count("restart") == 1
    h.advance(11)
    assert h.states.count("start") == 2 and h.engine.mode.kind == "daemon" and h.engine.service.leader_alive


def test_a_mode_switch_not_applied_in_non_daemon_mode_keeps_the_mode(make):
    h = make(cfg())  # no workwatch: non-daemon
    h.begin()
    assert h.state == "foreground"
    write(h, cfg(workwatch=10))
    reply = h.request("reload")
    assert reply["lines"][2].startswith("service: workwatch null -> 10: not applied")
    # The instance running is still the non-daemon one: no status-check health, no checks.
    assert h.engine.mode.kind == "non-daemon" and h.engine.explain.snapshot()["mode"] == "non-daemon"
    assert h.state == "foreground" and h.deadline("cycle") is None


def test_an_ipv6_firewall_left_unchanged_fails_the_reload(make):
    from fsm_init.network import firewall
    from fsm_init.network import iptables_rules as rules

    from .test_firewall import Netfilter

    h = make(cfg(workwatch=30, workintvl=5, firewall={"enable": "yes", "tcpportpmt": "80"}))
    Netfilter(rules.IPV4).install(h.system)
    h.system.add_file(firewall.IF_INET6, "00000000000000000000000000000001 01 80 10 80       lo\n")
    h.begin()  # no ip6tables here: IPv6 not filtered from the start
    write(h, cfg(workwatch=30, workintvl=5, firewall={"enable": "yes", "tcpportpmt": "81"}))
    reply = h.request("reload")
    assert reply["ok"] is False and reply["changed"] is True
    assert reply["lines"][-1].startswith("firewall: IPv6 not applied: IPv6 inbound traffic is not filtered: "
                                         "ip6tables-save not found (install iptables)")
    assert reply["lines"][-1] in h.engine.explain.why()
    write(h, cfg(workwatch=30, workintvl=5, firewall={"enable": "no", "tcpportpmt": "81"}))
    reply = h.request("reload")  # withdrawn: no stale IPv6 line
    assert reply["ok"] is True and not any("IPv6" in line for line in reply["lines"]), reply


def test_a_daemon_run_another_user_could_change_is_not_read(make):
    h = make(cfg(workwatch=0), service_dir="/etc/service")
    h.system.add_script("/etc/service/a/run", "exec sleep 1000\n")
    h.begin()
    pid = h.engine.daemons.services["a"].pid
    h.system.dir_modes["/etc/service/a"] = 0o777  # a workuser could put a FIFO there: PID 1 would block reading it
    h.system.add_script("/etc/service/a/run", "exec sleep 2000\n")
    h.system.calls.clear()
    reply = h.request("reload")
    assert ("read_bytes", "/etc/service/a/run") not in h.system.calls
    assert reply["lines"][1].startswith("daemons: a: /etc/service/a/run is not read, another user could change it: "
                                        "/etc/service/a is writable by")
    assert reply["lines"][-1] == "no change: nothing to apply"
    assert h.system.signals_to(pid) == []


def test_a_reload_during_the_initdelay_applies_at_its_end(make, monkeypatch):
    # Nothing of the network side or the service runs yet: the boot path applies the new
    # configuration when the initdelay ends; the reload neither cuts it short nor starts
    # dropbear or the firewall before it.
    h = make(cfg(initdelay=10, workwatch=0))
    h.begin()
    assert h.state == "delay"
    due = h.deadline("state")
    calls = []
    monkeypatch.setattr(h.engine.network, "apply_firewall", lambda c, has: calls.append(c["firewall"]["tcpportpmt"]))
    monkeypatch.setattr(h.engine.network, "apply", lambda step, c, has: calls.append(
        c["firewall"]["tcpportpmt"] if step == "firewall" else step))
    write(h, cfg(initdelay=10, workwatch=0, workstart="./run.sh --new", firewall={"enable": "no", "tcpportpmt": "80"},
                 sshsrv={"enable": "yes"}))
    reply = h.request("reload")
    assert reply["ok"] and reply["lines"][2:] == [
        'firewall: firewall.tcpportpmt "" -> "80": when the initdelay ends',
        'ssh: sshsrv.enable "no" -> "yes": when the initdelay ends',
        'service: workstart "./run.sh" -> "./run.sh --new": when the initdelay ends']
    assert h.state == "delay" and h.deadline("state") == due and calls == [] and h.system.spawns == []
    h.advance(10)
    assert calls == ["80", "ssh", "pppoe"] and h.state == "watch"
    assert h.system.spawns[-1].argv[-1] == "--new" and h.states.count("start") == 1


# -- the environment the service gets: /etc/container_environment -----------------------------------

ENV_DIR = "/etc/container_environment"


def with_env_dir(make, environ_extra=None) -> Harness:
    h = make(cfg(workwatch=0, workintvl=5))
    h.system.add_dir(ENV_DIR)
    h.system.add_file(f"{ENV_DIR}/FOO", "one\n")
    h.system.add_file(f"{ENV_DIR}/GONE", "x")
    h.engine.environ.update(environ_extra or {})
    h.begin()
    assert h.state == "watch"
    return h


def test_an_untouched_container_environment_is_no_change(make):
    # fsm-init itself dumps its environment there at the start (a value ending in a newline
    # reads back without it): only what changed since counts, or every reload would restart.
    h = with_env_dir(make, {"TRAILING": "text\n"})
    assert h.system.files[f"{ENV_DIR}/TRAILING"] == b"text\n"
    reply = h.request("reload", dry_run=True)
    assert reply["changed"] is False, reply


def test_a_changed_container_environment_restarts_the_service_with_it(make):
    h = with_env_dir(make)
    first = h.engine.service.instance.pid
    assert h.system.spawns[-1].env["FOO"] == "one"
    h.system.add_file(f"{ENV_DIR}/FOO", "two-secret\n")
    h.system.add_file(f"{ENV_DIR}/NEW", "3")
    del h.system.files[f"{ENV_DIR}/GONE"]
    reply = h.request("reload", dry_run=True)
    assert reply["lines"][2:] == [f"service: environment FOO, GONE, NEW changed ({ENV_DIR}): restart the service"]
    assert "two-secret" not in json.dumps(reply)  # names only: a value may be a password
    assert h.engine.environ["FOO"] == "one" and h.system.signals_to(first) == []
    reply = h.request("reload")
    assert reply["ok"] and reply["lines"][0] == "applied 1 change(s):"
    assert h.system.signals_to(first) == [signal.SIGTERM]
    h.exit(first, exited(0))
    env = h.system.spawns[-1].env
    assert env["FOO"] == "two-secret" and env["NEW"] == "3" and "GONE" not in env and h.states.count("start") == 2
    assert h.request("reload", dry_run=True)["changed"] is False  # taken: the new baseline
    assert "NEW" in h.engine.explain.why() and "two-secret" not in h.engine.explain.why()


def test_a_container_environment_another_user_could_change_is_not_read(make):
    h = with_env_dir(make)
    h.system.dir_modes[ENV_DIR] = 0o777
    h.system.add_file(f"{ENV_DIR}/LD_PRELOAD", "/tmp/evil.so")
    h.system.calls.clear()
    reply = h.request("reload")
    assert ("read_bytes", f"{ENV_DIR}/LD_PRELOAD") not in h.system.calls
    assert reply["changed"] is False and any(line.startswith(f"environment: {ENV_DIR} is not read, another user "
                                                             "could change it") for line in reply["lines"])
    assert "LD_PRELOAD" not in h.engine.environ


def test_a_stop_during_the_dropbear_restart_a_reload_began_does_not_start_it_again(make, monkeypatch):
    from fsm_init.network import ssh
    from fsm_init.network.supporting import Spec

    monkeypatch.setattr(ssh, "spec", lambda c, system, settings: Spec(
        ["/usr/sbin/dropbear", "-p", str(c["sshsrv"]["sshport"])], {}, str(c["sshsrv"]["sshport"]), "port"))
    h = in_watch(make, sshsrv={"enable": "yes", "sshport": 2201})
    old = h.engine.network.supporters["ssh"].pid
    assert old is not None
    h.system.stubborn(old)  # it takes its time over the TERM
    write(h, cfg(workwatch=30, workintvl=5, sshsrv={"enable": "yes", "sshport": 2202}))
    assert h.request("reload")["ok"]
    assert h.system.signals_to(old) == [signal.SIGTERM]
    h.request("stop")
    h.exit(old, exited(143))  # its TERM came: the restart would start the new one now
    assert [s for s in h.system.spawns if s.argv[0] == "/usr/sbin/dropbear"][-1].pid == old


def test_a_large_daemon_run_is_not_read_whole_on_the_event_loop(make):
    # A run that is a big program (a symlink to a server binary): its size and time tell a
    # change; reading and hashing it at each start would hold PID 1 up.
    from fsm_init.compat import daemons

    h = make(cfg(workwatch=0), service_dir="/etc/service")
    big = "#!/bin/sh\n" + "#" * (daemons.DIGEST_LIMIT + 1)
    h.system.add_file("/etc/service/big/run", big, 0o755)
    h.system.add_script("/etc/service/small/run", "exec sleep 1000\n")
    h.begin()
    assert ("read_bytes", "/etc/service/big/run") not in h.system.calls
    assert ("read_bytes", "/etc/service/small/run") in h.system.calls  # a script: by content
    assert h.request("reload", dry_run=True)["changed"] is False
    h.system.add_file("/etc/service/big/run", big + "#", 0o755)
    assert h.request("reload", dry_run=True)["lines"][-1] == "daemons: run changed big: restart it"
    assert ("read_bytes", "/etc/service/big/run") not in h.system.calls


def test_the_real_file_identity(tmp_path):
    from fsm_init.core.system import System

    system = System.__new__(System)  # file_identity needs no set-up
    path = tmp_path / "run"
    path.write_bytes(b"#!/bin/sh\n")
    first = system.file_identity(str(path))
    assert first is not None and first[1] == 10
    link = tmp_path / "link"
    link.symlink_to(path)
    assert system.file_identity(str(link)) == first  # a link followed: what runs
    path.write_bytes(b"#!/bin/sh\nexit 1\n")
    assert system.file_identity(str(path)) != first
    assert system.file_identity(str(tmp_path / "none")) is None
