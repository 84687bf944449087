"""Validation of a workcfg.json document: the marshmallow schema and ``validate``.

Imported only when a configuration exists (marshmallow costs ~80 ms to import).  It
depends on ``config`` (the defaults, ``Problem``), never the other way round.
"""

import contextvars
import re
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, missing

from fsm_init.config.workcfg import Problem, defaults

DEFAULTS = defaults()

# The problems found by the current validation; a ContextVar so that a field can
# report without a back-reference to the schema that owns it.
problems_var: contextvars.ContextVar[list[Problem]] = contextvars.ContextVar("problems")
prefix_var: contextvars.ContextVar[str] = contextvars.ContextVar("prefix", default="")


def _report(key: str, value: Any, default: Any, reason: str, dropped: bool = False) -> None:
    problems_var.get().append(Problem(prefix_var.get() + key, value, default, reason, dropped))


class Lenient:
    """On an invalid value: report it and return the default instead of failing the load."""

    def deserialize(self, value, attr=None, data=None, **kwargs):
        try:
            return super().deserialize(value, attr, data, **kwargs)
        except ValidationError as e:
            default = self.load_default() if callable(self.load_default) else self.load_default
            _report(self.data_key or attr, value, default, "; ".join(_flatten(e.messages)))
            return default


def _flatten(messages) -> list[str]:
    if isinstance(messages, dict):
        return [m for v in messages.values() for m in _flatten(v)]
    if isinstance(messages, list):
        return [m for v in messages for m in _flatten(v)]
    return [str(messages)]


def _integer(value: Any) -> int:
    """JSON numbers and numeric strings ("15", " 8022 "); not booleans, not fractions."""
    if isinstance(value, bool):
        raise ValidationError("is a boolean, not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value.strip()):
        return int(value.strip())
    raise ValidationError("is not an integer")


class Count(Lenient, fields.Field):
    def __init__(self, minimum: int, maximum: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.minimum, self.maximum = minimum, maximum

    def _deserialize(self, value, attr, data, **kwargs):
        number = _integer(value)
        if number < self.minimum:
            raise ValidationError(f"must be at least {self.minimum}")
        if self.maximum is not None and number > self.maximum:
            raise ValidationError(f"must be at most {self.maximum}")
        return number


class WorkWatch(fields.Field):
    """Any non-negative integer selects supervision; every other value means non-daemon mode."""

    def deserialize(self, value, attr=None, data=None, **kwargs):
        if value is None or value is missing:
            return None
        try:
            number = _integer(value)
        except ValidationError as e:
            number, reason = -1, _flatten(e.messages)[0]
        else:
            reason = "is negative"
        if number >= 0:
            return number
        _report("workwatch", value, None, f"{reason}, so the service runs in non-daemon mode")
        return None


class YesNo(Lenient, fields.Field):
    WORDS = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, str) and value.strip().lower() in self.WORDS:
            return self.WORDS[value.strip().lower()]
        raise ValidationError("is not yes or no")


class Text(Lenient, fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise ValidationError("is not a string")
        return value


class Line(Text):
    """A string that becomes one line of a file or an argument (a password through
    chpasswd, a pppd option): a line break would add a line, a NUL would cut it."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if any(c in value for c in "\n\r\0"):
            raise ValidationError("contains a line break or a NUL byte")
        if not _encodable(value, "strict"):
            raise ValidationError("is not valid Unicode (a lone surrogate)")
        return value


def _encodable(text: str, errors: str) -> bool:
    """Whether text can become bytes: a JSON "\\ud800" escape gives a lone surrogate that
    no argument, file line or pipe can take."""
    try:
        text.encode("utf-8", errors)
    except UnicodeEncodeError:
        return False
    return True


class Command(Lenient, fields.Field):
    """A string split like a shell would, or a JSON array that is the exact argv: an
    empty element is an empty argument, only the program (the first) must be named."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and "\0" in value or isinstance(value, list) and any(
                isinstance(v, str) and "\0" in v for v in value):
            # No program can receive it: an argument ends at its first NUL.
            raise ValidationError("contains a NUL byte")
        if not all(_encodable(v, "surrogateescape") for v in (value if isinstance(value, list) else [value])
                   if isinstance(v, str)):
            raise ValidationError("is not valid Unicode (a lone surrogate)")
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value) and value[0]:
            return value
        raise ValidationError("is not a command string or an array of strings whose first element "
                              "(the program) is not empty")


_ACCOUNT = r"(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10})"


class WorkUser(Lenient, fields.Field):
    """"user" or "user:group" (names or numeric ids); "" or null: run as fsm-init's own user.

    Only the form is checked here: whether the user exists is checked when the service
    starts, in the container that runs it."""

    def _deserialize(self, value, attr, data, **kwargs):
        if value is None or value == "":
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            value = str(value)  # a numeric uid written as a JSON number
        if not isinstance(value, str):
            raise ValidationError('is not a string "user" or "user:group"')
        if not re.fullmatch(f"{_ACCOUNT}(?::{_ACCOUNT})?", value.strip()):
            raise ValidationError('is not "user" or "user:group" (names or numeric ids)')
        return value.strip()


class PortList(Lenient, fields.Field):
    """A multiport list such as "80:86,125,8080"; invalid entries are reported and dropped."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValidationError("is not a port list such as \"80:86,125,8080\"")
        kept = []
        for entry in (e.strip() for e in value.split(",")):
            if not entry:
                continue
            if _port_range(entry):
                # iptables reads 010 as octal (port 8): the number, without its leading zeros.
                kept.append(":".join(str(int(part)) for part in entry.split(":")))
            else:
                _report(self.data_key or attr, entry, None, "is not a port or a port range", dropped=True)
        return ",".join(kept)


def _port_range(entry: str) -> bool:
    low, _, high = entry.partition(":")
    high = high or low
    if not (re.fullmatch(r"[0-9]{1,5}", low) and re.fullmatch(r"[0-9]{1,5}", high)):
        return False
    return 1 <= int(low) <= int(high) <= 65535


class AuthKeys(Lenient, fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
            raise ValidationError("is not a public key or a list of them")
        kept = []
        for key in (k.strip() for k in value):
            if any(c in key for c in "\n\r\0"):
                # One entry is one line of authorized_keys: a line break would add a key.
                _report(self.data_key or attr, key, None, "contains a line break or a NUL byte", dropped=True)
            elif key:
                kept.append(key)
        return kept


class Section(Lenient, fields.Nested):
    """A nested section; problems inside it are named "section.key"."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError("is not a JSON object")
        token = prefix_var.set(f"{self.data_key or attr}.")
        try:
            return super()._deserialize(value, attr, data, **kwargs)
        finally:
            prefix_var.reset(token)


def _d(section: str, key: str):
    return DEFAULTS[section][key]


class FirewallSchema(Schema):
    class Meta:
        unknown = INCLUDE

    enable = YesNo(load_default=_d("firewall", "enable"))
    tcpportpmt = PortList(load_default="")
    udpportpmt = PortList(load_default="")
    icmppermit = YesNo(load_default="no")
    igmppermit = YesNo(load_default="no")
    grepermit = YesNo(load_default="no")
    esppermit = YesNo(load_default="no")
    ahpermit = YesNo(load_default="no")


class SshSchema(Schema):
    class Meta:
        unknown = INCLUDE

    enable = YesNo(load_default="no")
    sshport = Count(1, 65535, load_default=_d("sshsrv", "sshport"))
    rootpwd = Line(load_default="")
    authkeys = AuthKeys(load_default=list)
    password = YesNo(load_default="yes")


class DialSchema(Schema):
    class Meta:
        unknown = INCLUDE

    enable = YesNo(load_default="no")
    dialuser = Line(load_default="")
    dialpswd = Line(load_default="")
    dialintf = Line(load_default="")
    usedefgw = YesNo(load_default="no")


class GiveUpAction(Lenient, fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and value.strip().lower() in ("exit", "stay"):
            return value.strip().lower()
        raise ValidationError('is not "exit" or "stay"')


class WorkReady(Lenient, fields.Field):
    """checks, notify or fd:N (3 to 1023): who says the service is ready (readiness.py)."""

    def _deserialize(self, value, attr, data, **kwargs):
        from fsm_init.core import readiness

        setting = readiness.parse_setting(value)
        if setting is None:
            raise ValidationError(f'is not "checks", "notify" or "fd:N" (N from 3 to {readiness.MAX_FD})')
        kind, number = setting
        return kind if number is None else f"fd:{number}"


class RetrySchema(Schema):
    class Meta:
        unknown = INCLUDE

    max = Count(0, load_default=DEFAULTS["workretry"]["max"])
    window = Count(1, load_default=DEFAULTS["workretry"]["window"])
    action = GiveUpAction(load_default=DEFAULTS["workretry"]["action"])


class WorkcfgSchema(Schema):
    class Meta:
        unknown = INCLUDE

    initdelay = Count(0, load_default=DEFAULTS["initdelay"])
    workstart = Command(load_default=None)
    workwatch = WorkWatch()
    workintvl = Count(1, load_default=DEFAULTS["workintvl"])
    worktimeout = Count(1, load_default=None)
    workbackoff = Count(1, load_default=DEFAULTS["workbackoff"])
    workstable = Count(1, load_default=DEFAULTS["workstable"])
    workuser = WorkUser(load_default=None)
    workready = WorkReady(load_default=DEFAULTS["workready"])
    workwatchdog = Count(1, 86400, load_default=None)
    workretry = Section(RetrySchema, load_default=lambda: RetrySchema().load({}))
    firewall = Section(FirewallSchema, load_default=lambda: FirewallSchema().load({}))
    sshsrv = Section(SshSchema, load_default=lambda: SshSchema().load({}))
    inetdail = Section(DialSchema, load_default=lambda: DialSchema().load({}))


def validate(document: dict) -> tuple[dict, list[Problem]]:
    """The effective config for a JSON object, and every problem found in it."""
    found: list[Problem] = []
    token = problems_var.set(found)
    try:
        effective = WorkcfgSchema().load(document)
        if effective["workwatchdog"] is not None and effective["workready"] != "notify":
            # The keep-alives come on NOTIFY_SOCKET: without it every instance would be restarted.
            _report("workwatchdog", effective["workwatchdog"], None,
                    f"needs workready \"notify\" (workready is {effective['workready']!r})")
            effective["workwatchdog"] = None
    finally:
        problems_var.reset(token)
    return effective, found
