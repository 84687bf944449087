import signal

from tests.conftest import needs_pid_namespace

pytestmark = needs_pid_namespace


def test_exit_status_of_a_command_line_service(sandbox):
    run = sandbox.start("--", "sh", "-c", "exit 7")
    assert run.wait() == 7
    assert "exiting with status 7" in run.log


def test_sigterm_stops_a_supervised_service_gracefully(sandbox):
    sandbox.service("web", {"initdelay": 0, "workstart": "./run.sh", "workwatch": 1, "workintvl": 1},
                    run__sh="trap 'echo got-term; exit 0' TERM\nwhile :; do sleep 0.1; done\n",
                    PeriodicST_ok="exit 0\n")
    run = sandbox.start(SRVNAME="web")
    run.wait_state("watch")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    assert "got-term" in run.output
