"""The service instance, its restart policy and its health, alone: no engine, no loop,
a clock the test moves (as tests/unit/test_daemons.py tests the daemons)."""

from fsm_init.config import workcfg as config
from fsm_init.steps import start
from fsm_init.steps.service import Service
from fsm_init.core.kill import Group


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(**values):
    clock = Clock()
    conf = {**config.defaults(), **values}
    return Service(clock), clock, conf


def run(service: Service, pid: int = 10) -> None:
    service.starting()
    service.started(pid, Group(pid))


def test_a_start_counts_the_run_and_clears_a_pending_restart_request():
    service, _, _ = make()
    service.restart_requested = True
    run(service)
    assert service.run_count == 1 and not service.restart_requested
    assert service.instance.pid == 10 and service.leader_alive


def test_only_the_living_leader_s_exit_is_the_service_s():
    service, _, _ = make()
    run(service, 10)
    assert not service.leader_exited(11, 3)
    assert service.leader_exited(10, 3) and service.last_exit == 3 and not service.leader_alive
    assert not service.leader_exited(10, 5)  # reaped once: the pid may be reused
    assert service.last_exit == 3 and service.instance is not None
    service.gone()
    assert service.instance is None


def test_failure_restarts_back_off_up_to_workbackoff():
    service, _, conf = make(workintvl=5, workbackoff=30)
    assert [service.failed(conf) for _ in range(5)] == [5, 10, 20, 30, 30]
    assert service.failures == 5


def test_the_retry_window_forgets_old_failures_and_gives_up_on_the_max_plus_first():
    service, clock, conf = make(workretry={"max": 2, "window": 60, "action": "stay"})
    service.failed(conf)
    clock.t += 61
    service.failed(conf)
    assert service.failure_times == [clock.t] and not service.retries_exhausted(conf)
    service.failed(conf)
    assert service.retries_exhausted(conf)


def test_stable_reset_counts_from_the_start_or_the_first_passed_check_cycle():
    service, clock, conf = make(workstable=60)
    run(service)
    service.failures = 3
    clock.t += 59
    assert not service.reset_if_stable(conf, status_check=False) and service.failures == 3
    clock.t += 1
    assert not service.reset_if_stable(conf, status_check=True)  # no cycle passed yet
    service.checks_done([], passed=True)
    clock.t += 60
    assert service.reset_if_stable(conf, status_check=True) and service.failures == 0


def test_giving_up_with_exit_never_reports_success():
    service, _, conf = make(workretry={"max": 1, "window": 60, "action": "exit"})
    run(service)
    service.leader_exited(10, 0)
    service.failed(conf)
    cause, action = service.give_up(conf)
    assert cause == "2 failure restarts within 60s (workretry.max 1)" and service.gave_up_reason == cause
    assert action == "exiting with status 1 (the last instance's own status was 0)"
    assert service.exit_status() == 1 and service.failures == 0 and service.failure_times == []


def test_exit_status_an_operator_stop_is_0():
    service, _, _ = make()
    run(service)
    service.leader_exited(10, 143)
    assert service.exit_status() == 143
    service.stop_requested = True
    assert service.exit_status() == 0


def test_health_needs_workintvl_or_a_passed_check_cycle_of_this_instance():
    service, clock, conf = make(workintvl=5)
    plain, checked = start.Mode(start.DAEMON, None), start.Mode(start.STATUS_CHECK, 30)
    assert service.health(plain, conf) == (False, "no service instance")
    run(service)
    clock.t += 2
    assert service.health(plain, conf)[0] is False
    clock.t += 3
    assert service.health(plain, conf) == (True, "the service has run 5s")
    assert service.health(checked, conf) == (False, "no check cycle of this instance has passed yet")
    service.checks_done(["a result"], passed=False)
    assert service.health(checked, conf, "PeriodicST-a exited with status 1") == (
        False, "check failed: PeriodicST-a exited with status 1")
    service.checks_done(["a result"], passed=True)
    assert service.health(checked, conf)[0] is True
    run(service, 11)  # a new instance proves itself again
    assert service.health(checked, conf)[0] is False and service.healthy_since is None
