"""Step delay: initdelay seconds before the network steps, on the container's first start only.

It gives an operator time to attach more networks to a fresh container
(``docker network connect``) before the firewall and the dial-up look at them.
"""


def seconds(config: dict, first_start: bool, has_config: bool) -> int:
    return config["initdelay"] if first_start and has_config else 0
