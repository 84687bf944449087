"""workcfg.json: parsing, lenient validation (marshmallow) and the effective config.

Every key of imginit's parameter table is validated; a missing or invalid value takes
its default and is reported as a ``Problem`` naming the key, the bad value and the
default.  Unknown keys are kept untouched: services read their own sections.

marshmallow costs ~80 ms to import, so validation lives in ``config_schema``, imported
only when a configuration exists; ``defaults()`` serves the no-configuration fast path.
"""

import json

from fsm_init.core.records import Any, NamedTuple

SECRET_KEYS = frozenset({"sshsrv.rootpwd", "inetdail.dialpswd"})
MASK = "********"


class Problem(NamedTuple):
    key: str
    value: Any
    default: Any
    reason: str
    dropped: bool = False  # a list entry left out, rather than a value replaced by its default

    def _secret(self) -> bool:
        """A secret key, or a section holding one whose value is not an object (an array
        around {"rootpwd": ...}): shown masked, never in a log line."""
        return self.key in SECRET_KEYS or isinstance(self.value, (list, dict)) and \
            any(key.startswith(self.key + ".") for key in SECRET_KEYS)

    def describe(self) -> str:
        shown = MASK if self._secret() else _short(self.value)
        if self.dropped:
            return f"config key '{self.key}': entry {shown} {self.reason}; entry dropped"
        default = MASK if self.key in SECRET_KEYS and self.default else _short(self.default)
        return f"config key '{self.key}' = {shown}: {self.reason}; using {default}"

    def as_dict(self) -> dict:
        return {"key": self.key, "value": MASK if self._secret() else self.value,
                "default": MASK if self.key in SECRET_KEYS and self.default else self.default,
                "reason": self.reason, "dropped": self.dropped}


def _short(value: Any) -> str:
    if value is None:
        return "no value"
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def defaults() -> dict:
    """The built-in effective config, used when there is no configuration at all (a
    fresh copy each call); ``config_schema`` takes its defaults from it too."""
    return {
        "initdelay": 3,
        "workstart": None,
        "workwatch": None,
        "workintvl": 5,
        "worktimeout": None,
        "workbackoff": 300,
        "workstable": 60,
        "workuser": None,
        "workready": "checks",
        "workwatchdog": None,
        "workretry": {"max": 0, "window": 600, "action": "exit"},
        "firewall": {"enable": "yes", "tcpportpmt": "", "udpportpmt": "", "icmppermit": "no",
                     "igmppermit": "no", "grepermit": "no", "esppermit": "no", "ahpermit": "no"},
        "sshsrv": {"enable": "no", "sshport": 8022, "rootpwd": "", "authkeys": [], "password": "yes"},
        "inetdail": {"enable": "no", "dialuser": "", "dialpswd": "", "dialintf": "", "usedefgw": "no"},
    }


def parse_document(raw: bytes | str) -> tuple[dict | None, str]:
    """The JSON object in raw, or None and the reason it is not one."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 ({e.reason} at byte {e.start})"
    if not text.strip():
        return None, "empty"
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as e:
        return None, f"not valid JSON ({str(e)[:100]})"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    return value, ""


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses as inf, which would reach the service as the non-JSON "Infinity".
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value


def masked_text(raw: str) -> str:
    """$SRVCFG as every child of fsm-init may see it: the passwords masked; a text that is
    not a JSON object (which may still hold one) is withheld."""
    document, _ = parse_document(raw)
    return dumps_compact(masked(document)) if document is not None else ""


def dumps_compact(config: dict) -> str:
    # ensure_ascii: a lone surrogate from a "\ud800" escape could not go into the environment.
    return json.dumps(config, separators=(",", ":"), ensure_ascii=True)


def secrets_in(document: dict) -> list[str]:
    """The secret keys (SECRET_KEYS) document gives a value."""
    found = []
    for key in sorted(SECRET_KEYS):
        section, _, name = key.partition(".")
        if isinstance(document.get(section), dict) and document[section].get(name):
            found.append(key)
    return found


def without_secrets(document: dict) -> dict:
    """document with its secret values removed (a refused secret takes its default)."""
    kept = json.loads(json.dumps(document))
    for key in secrets_in(kept):
        section, _, name = key.partition(".")
        del kept[section][name]
    return kept


def masked(config: dict) -> dict:
    shown = json.loads(json.dumps(config))
    for key in SECRET_KEYS:
        section, _, name = key.partition(".")
        if isinstance(shown.get(section), dict) and shown[section].get(name):
            shown[section][name] = MASK
    return shown

