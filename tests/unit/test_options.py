"""my_init's command-line options and environment variables, as fsm-init reads them."""

import signal

import pytest

from fsm_init import cli
from fsm_init.core import reaper
from fsm_init import engine as engine_module
from fsm_init.core import settings as settings_module
from fsm_init.core.settings import Settings


@pytest.fixture
def started(monkeypatch):
    """cli.run up to the Engine: records (settings, command) instead of running PID 1."""
    seen = []

    class Recorder:
        def __init__(self, system, settings, environ, command):
            seen.append((settings, command))

        def run(self):
            return 0

    monkeypatch.setattr(engine_module, "Engine", Recorder)
    # Nothing on this machine: no /run/fsm-init or /var/lib/fsm-init made, os.environ kept.
    monkeypatch.setattr(settings_module, "settle_dirs", lambda settings, system: [])
    monkeypatch.setattr(cli, "undo_locale_coercion", lambda system, environ: None)
    monkeypatch.setattr(reaper, "exit_now", lambda status: seen.append(status))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield seen
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # cli.run blocks PID 1's signals


def test_my_init_options_set_the_settings_and_the_command_follows(started):
    cli.main(["--skip-startup-files", "--skip-runit", "--no-kill-all-on-exit", "--", "cron", "-f"])
    settings, command = started[0]
    assert (settings.skip_startup_files, settings.skip_runit, settings.kill_all_on_exit) == (True, True, False)
    assert command == ["cron", "-f"] and started[1] == 0


def test_without_options_everything_runs(started):
    cli.main([])
    settings, command = started[0]
    assert (settings.skip_startup_files, settings.skip_runit, settings.kill_all_on_exit) == (False, False, True)
    assert command is None


def test_the_insecure_key_option_is_refused_with_a_reason(started, capsys):
    assert cli.main(["--enable-insecure-key"]) == 2
    assert "sshsrv.authkeys" in capsys.readouterr().err and started == []


def test_an_unknown_option_is_a_usage_error(started, capsys):
    assert cli.main(["--skip-everything"]) == 2
    assert "unknown option --skip-everything" in capsys.readouterr().err


def settings_with(monkeypatch, **env) -> Settings:
    for name in ("FSM_INIT_STOP_GRACE", "FSM_INIT_LEFTOVER_GRACE", "KILL_PROCESS_TIMEOUT",
                 "KILL_ALL_PROCESSES_TIMEOUT", "ENV_INIT_DIRECTORY", "FSM_INIT_SERVICE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_kill_timeouts_are_aliases_of_the_stop_graces(monkeypatch):
    s = settings_with(monkeypatch, KILL_PROCESS_TIMEOUT="30", KILL_ALL_PROCESSES_TIMEOUT="12.5")
    assert (s.stop_grace, s.leftover_grace) == (30.0, 12.5)


def test_fsm_inits_own_names_win_over_the_aliases(monkeypatch):
    s = settings_with(monkeypatch, KILL_PROCESS_TIMEOUT="30", FSM_INIT_STOP_GRACE="3",
                      KILL_ALL_PROCESSES_TIMEOUT="30", FSM_INIT_LEFTOVER_GRACE="1")
    assert (s.stop_grace, s.leftover_grace) == (3.0, 1.0)


def test_a_bad_alias_value_is_named_and_the_default_used(monkeypatch, capfd):
    s = settings_with(monkeypatch, KILL_PROCESS_TIMEOUT="soon")
    assert s.stop_grace == 5.0
    assert "KILL_PROCESS_TIMEOUT='soon' is not a number of seconds >= 0; using 5.0" in capfd.readouterr().err


def test_directories_default_to_my_inits_and_move_with_the_environment(monkeypatch):
    s = settings_with(monkeypatch)
    assert (s.init_dir, s.service_dir) == ("/etc/my_init.d", "/etc/service")
    assert (s.pre_shutdown_dir, s.post_shutdown_dir) == ("/etc/my_init.pre_shutdown.d", "/etc/my_init.post_shutdown.d")
    s = settings_with(monkeypatch, ENV_INIT_DIRECTORY="/opt/init.d", FSM_INIT_SERVICE_DIRECTORY="/opt/sv")
    assert (s.init_dir, s.service_dir) == ("/opt/init.d", "/opt/sv")


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_a_grace_that_is_not_a_finite_number_is_refused(monkeypatch, capfd, value):
    s = settings_with(monkeypatch, FSM_INIT_STOP_GRACE=value)
    assert s.stop_grace == 5.0 and "FSM_INIT_STOP_GRACE" in capfd.readouterr().err


def test_locale_coercion_is_undone_only_when_the_exec_had_no_lc_ctype():
    from .fakes import FakeSystem

    fake = FakeSystem()
    fake.add_file("/proc/self/environ", b"PATH=/bin\0HOME=/root\0")
    coerced = {"PATH": "/bin", "HOME": "/root", "LC_CTYPE": "C.UTF-8"}
    cli.undo_locale_coercion(fake, coerced)
    assert coerced == {"PATH": "/bin", "HOME": "/root"}
    fake.add_file("/proc/self/environ", b"PATH=/bin\0LC_CTYPE=C.UTF-8\0")
    given = {"PATH": "/bin", "LC_CTYPE": "C.UTF-8"}
    cli.undo_locale_coercion(fake, given)
    assert given == {"PATH": "/bin", "LC_CTYPE": "C.UTF-8"}
