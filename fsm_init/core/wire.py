"""One request over the control socket, on a socket already made: the wire format that
``control.request`` (srvctl, ``fsm-init status``) and ``client.probe`` (srvctl health and
live) share.  No imports: the probes make their socket with ``_socket``, not ``socket``."""


def exchange(sock, path: str, line: bytes, timeout: float) -> bytes:
    """Connect sock to path, send one request line and read the answer up to its newline
    (or the end); sock is the caller's to close.  OSError when no engine listens."""
    sock.settimeout(timeout)
    sock.connect(path)
    sock.sendall(line)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
