"""Step restart_interval: workintvl seconds after a start before the first check, and
before every restart a failure caused, so a broken service cannot spin the CPU."""


def seconds(config: dict) -> int:
    return config["workintvl"]
