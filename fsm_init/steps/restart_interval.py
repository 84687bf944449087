"""Step restart_interval: workintvl seconds after a start before the first check, and
before every restart a failure caused, so a broken service cannot spin the CPU.

Failure restarts back off exponentially: workintvl, 2x, 4x ... up to workbackoff
(default 300 s).  The back-off resets once an instance has stayed healthy for
workstable seconds.  With workretry.max N > 0, the N+1th failure restart within
workretry.window seconds gives up instead (the gave_up state).
"""


def seconds(config: dict) -> int:
    return config["workintvl"]


def backoff(config: dict, failures: int) -> int:
    """The wait before the restart that the failures-th consecutive failure caused."""
    return min(config["workintvl"] * 2 ** max(0, min(failures - 1, 32)),
               max(config["workbackoff"], config["workintvl"]))


def daemon_backoff(config: dict, failures: int) -> int:
    """The wait before restarting an /etc/service daemon's run (/etc/service/NAME/run) after
    its failures-th consecutive exit: runit's fixed 1 s pause, doubled per failure up
    to workbackoff, so a daemon that dies at once cannot spin the CPU either."""
    return backoff({**config, "workintvl": 1}, failures)


def exhausted(config: dict, failure_times: list[float], now: float) -> bool:
    limit = config["workretry"]["max"]
    recent = [t for t in failure_times if now - t < config["workretry"]["window"]]
    return limit > 0 and len(recent) + 1 > limit
