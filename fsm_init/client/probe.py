"""``srvctl health`` and ``srvctl live``: the probes Docker's HEALTHCHECK and Kubernetes
run every few seconds, each as a whole new process.

One request over the control socket with the interpreter's own C modules only
(``_socket``, ``_json``): the ``socket`` and ``json`` packages would pull in ``enum``
and ``re``, several milliseconds on top of the interpreter's start for every probe
(docs/benchmark.md).  The same wire format as ``control.request`` (``core.wire``).
"""


class _Context:
    """What ``_json.make_scanner`` reads from json's decoder: plain JSON, no hooks."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity: what json.loads gives


def decode(text: str):
    """json.loads(text) for a complete document; ValueError when it is not one."""
    import _json

    text = text.strip(" \t\r\n")
    try:
        value, end = _json.make_scanner(_Context())(text, 0)  # type: ignore[arg-type]  # duck-typed in C
    except StopIteration:
        raise ValueError("not a JSON document") from None
    if end != len(text):
        raise ValueError("text after the JSON document")
    return value


def ask(path: str, verb: str, timeout: float = 10.0) -> dict:
    """control.request(path, verb): raises OSError when no engine listens, ValueError on a
    reply that is not JSON."""
    import _json
    import _socket

    from fsm_init.core.wire import exchange

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        data = exchange(sock, path, b'{"verb": ' + _json.encode_basestring_ascii(verb).encode() + b"}\n", timeout)
    finally:
        sock.close()
    reply = decode(data.decode())
    if not isinstance(reply, dict):
        raise ValueError("the reply is not a JSON object")
    return reply
