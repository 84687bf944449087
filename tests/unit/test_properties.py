"""Properties of ConfigSource.load(): whatever workcfg.json or $SRVCFG holds, fsm-init gets
a complete, valid, JSON-serialisable effective config and never loses a good workcfg.json."""

import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fsm_init.config import workcfg as config
from fsm_init.steps import load_config, start
from fsm_init.steps.resolve_target import Target

from .fakes import FakeSystem

SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
PATH = "/srv/app/workcfg.json"
GOOD = {"initdelay": 0, "workstart": "./run.sh", "workwatch": 30, "mine": {"k": [1, 2]}}
GOOD_RAW = json.dumps(GOOD).encode()
YES_NO = {"yes", "no"}

# -- strategies ---------------------------------------------------------------------------------



def json_trees(infinity: bool):
    """JSON values; with infinity, json.dumps of them may hold Infinity (not JSON)."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=infinity) \
        | st.text(max_size=12)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12)


any_values = json_trees(infinity=True)
json_values = json_trees(infinity=False)

numeric_strings = st.from_regex(r"\A\s?[-+]{0,2}[0-9\u00b2\u0663]{1,20}\s?\Z", fullmatch=True)
numbers = st.integers(-5, 70000) | numeric_strings | st.floats(allow_nan=False, allow_infinity=False) | st.booleans()
words = st.sampled_from(["yes", "no", "YES", "No", " true ", "FALSE", "on", "", "y"]) | st.booleans()
port_entry = (st.integers(-1, 70000).map(str) | st.tuples(st.integers(0, 70000), st.integers(0, 70000)).map(
    lambda t: f"{t[0]}:{t[1]}") | st.text(max_size=4))
port_lists = st.lists(port_entry, max_size=5).map(",".join) | st.integers(-5, 70000)
commands = st.text(max_size=20) | st.lists(st.text(max_size=6), max_size=3)
texts = st.text(max_size=10)


def section(**fields):
    return st.fixed_dictionaries({}, optional={k: v | json_values for k, v in fields.items()}) | json_values


known_documents = st.fixed_dictionaries({}, optional={
    "initdelay": numbers | json_values, "workstart": commands | json_values,
    "workwatch": numbers | json_values, "workintvl": numbers | json_values,
    "worktimeout": numbers | json_values,
    "firewall": section(enable=words, tcpportpmt=port_lists, udpportpmt=port_lists, icmppermit=words,
                        igmppermit=words, grepermit=words, esppermit=words, ahpermit=words),
    "sshsrv": section(enable=words, sshport=numbers, rootpwd=texts, authkeys=st.lists(texts, max_size=3) | texts,
                      password=words),
    "inetdail": section(enable=words, dialuser=texts, dialpswd=texts, dialintf=texts, usedefgw=words),
    "unknown": json_values,
})

documents = known_documents | st.dictionaries(st.text(max_size=10), json_values, max_size=5)


def dumped(value) -> bytes:
    return json.dumps(value).encode()


# A JSON object whose text holds arbitrary bytes inside a string (an environment
# variable is bytes; Python hands it over decoded with surrogateescape).
byte_strings = st.binary(max_size=8).map(lambda junk: b'{"workstart": "./run.sh", "note": "' + junk + b'"}')

raw_inputs = documents.map(dumped) | any_values.map(dumped) | st.binary(max_size=64) | byte_strings


# -- checks -------------------------------------------------------------------------------------


def _strict(name):
    raise ValueError(f"{name} is not JSON")


def _port_list_ok(text: str) -> bool:
    for entry in filter(None, text.split(",")):
        low, _, high = entry.partition(":")
        high = high or low
        if not (low.isdecimal() and high.isdecimal() and 1 <= int(low) <= int(high) <= 65535):
            return False
    return True


def assert_effective(cfg: dict) -> None:
    def count(value, minimum, maximum=None):
        return type(value) is int and value >= minimum and (maximum is None or value <= maximum)

    assert count(cfg["initdelay"], 0)
    assert count(cfg["workintvl"], 1)
    assert cfg["workwatch"] is None or count(cfg["workwatch"], 0)
    assert cfg["worktimeout"] is None or count(cfg["worktimeout"], 1)
    workstart = cfg["workstart"]
    assert workstart is None or (isinstance(workstart, str) and workstart.strip() and "\0" not in workstart) or (
        isinstance(workstart, list) and workstart and workstart[0]  # only the program must not be empty
        and all(isinstance(a, str) and "\0" not in a for a in workstart))
    firewall, ssh, dial = cfg["firewall"], cfg["sshsrv"], cfg["inetdail"]
    assert isinstance(firewall, dict) and isinstance(ssh, dict) and isinstance(dial, dict)
    for key in ("enable", "icmppermit", "igmppermit", "grepermit", "esppermit", "ahpermit"):
        assert firewall[key] in YES_NO
    for key in ("tcpportpmt", "udpportpmt"):
        assert isinstance(firewall[key], str) and _port_list_ok(firewall[key]), firewall[key]
    assert ssh["enable"] in YES_NO and ssh["password"] in YES_NO
    assert count(ssh["sshport"], 1, 65535)
    assert isinstance(ssh["rootpwd"], str)
    assert isinstance(ssh["authkeys"], list) and all(isinstance(k, str) for k in ssh["authkeys"])
    assert dial["enable"] in YES_NO and dial["usedefgw"] in YES_NO
    for key in ("dialuser", "dialpswd", "dialintf"):
        assert isinstance(dial[key], str)
    # What the service receives as $SRVCFG: strict JSON that reads back as the same config.
    text = config.dumps_compact(cfg)
    assert json.loads(text, parse_constant=_strict) == cfg
    start.mode(cfg)


def fresh(file: bytes | None = GOOD_RAW):
    fake = FakeSystem()
    fake.add_dir("/srv/app")
    if file is not None:
        fake.add_file(PATH, file)
    return fake


def load(fake, srvcfg="", first_start=True):
    loaded = load_config.ConfigSource(Target("app", "/srv/app", first_start), srvcfg, fake).load()
    assert loaded.has_config
    assert_effective(loaded.config)
    for problem in loaded.problems:
        text = problem.describe()
        if problem.key in config.SECRET_KEYS:
            assert config.MASK in text
    return loaded


# -- properties ---------------------------------------------------------------------------------


@SETTINGS
@given(raw=raw_inputs)
@example(raw=b'{"initdelay": "--5"}')
@example(raw=b'{"sshsrv": {"sshport": "\xc2\xb2"}}')
@example(raw=b'{"x": 1e400}')
def test_any_workcfg_json_gives_a_valid_effective_config(raw):
    loaded = load(fresh(raw))
    document, _ = config.parse_document(raw)
    if document is None:
        assert loaded.config == config.defaults() and loaded.errors
    else:
        for key, value in document.items():  # unknown keys are passed on untouched
            if key not in config.defaults():
                assert loaded.config[key] == value


@SETTINGS
@given(document=documents)
@example(document={"workwatch": "--0", "firewall": {"tcpportpmt": "22,\u00b2"}})
def test_every_key_is_validated(document):
    """Objects built from the real key names: the validation paths, not just the parser."""
    loaded = load(fresh(dumped(document)))
    assert not loaded.errors
    for problem in loaded.problems:
        top = problem.key.partition(".")[0]
        assert top in document


@SETTINGS
@given(raw=raw_inputs)
@example(raw=b'{"workstart": "./run.sh", "note": "\xff"}')
def test_srvcfg_never_replaces_a_good_workcfg_json_with_something_else(raw):
    srvcfg = raw.decode("utf-8", "surrogateescape")  # how os.environ holds it
    fake = fresh()
    first = load(fake, srvcfg)
    written = fake.files[PATH]
    if written != GOOD_RAW:
        # Replaced: only by a JSON object, which the next start reads back as it was used.
        document, why = config.parse_document(written)
        assert document is not None, f"workcfg.json replaced by input that is {why}"
        restart = load(fake, srvcfg, first_start=False)
        assert not restart.errors and restart.config == first.config
        assert fake.modes[PATH] == 0o600
    else:
        assert load(fake, first_start=False).config == first.config


@SETTINGS
@given(document=documents)
@example(document={"initdelay": "--0"})
def test_valid_srvcfg_is_written_exactly_as_given(document):
    raw = json.dumps(document, indent=1)
    fake = fresh()
    loaded = load(fake, raw)
    assert fake.files[PATH] == raw.encode() and fake.modes[PATH] == 0o600
    assert load(fake, first_start=False).config == loaded.config


@SETTINGS
@given(raw=raw_inputs)
def test_srvcfg_on_a_restart_is_ignored(raw):
    fake = fresh()
    loaded = load(fake, raw.decode("utf-8", "surrogateescape"), first_start=False)
    assert fake.writes == [] and loaded.config["mine"] == GOOD["mine"]
