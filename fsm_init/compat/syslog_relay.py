"""The syslog relay: /dev/log messages into the container log.

Daemons that log through syslog(3) (cron, pppd, dropbear without -E) write
datagrams to /dev/log; in a container nobody reads them and they are lost.  When
fsm-init can create /dev/log and nobody else owns it, it binds a unix datagram
socket there and writes one line per message to its own output::

    syslog[cron.info] CRON[42]: (root) CMD (run-parts /etc/cron.hourly)

Bounded by construction: one preallocated receive buffer (a message is cut at
MAX_MESSAGE bytes), at most PER_EVENT datagrams read per wake-up (the event loop
serves everything else in between), and token buckets on the lines and on the bytes
written (the rest are read and counted, not written).  Lines go through fsm-init's
own non-blocking output (``log.write``): a stalled log reader drops them, it never
blocks PID 1.  The kernel socket buffer is the only
queue; a sender that outruns it blocks in its own send.  Drops and truncations are
reported in one summary line per SUMMARY_EVERY seconds, only when there were some,
so an idle relay never wakes the loop.
"""

import errno
import re
import socket

from fsm_init.core import log
from fsm_init.core.log import escape_bytes

MAX_MESSAGE = 8192
PER_EVENT = 64
RATE = 2000.0  # lines per second written, on average
BURST = 2000  # lines written at once before the rate applies
# And bytes: 2000 lines of 8 KiB a second would be 16 MB of log a second.
BYTE_RATE = 256 * 1024.0  # bytes per second written, on average
BYTE_BURST = 1024 * 1024  # bytes written at once before the byte rate applies
SUMMARY_EVERY = 10.0

FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
              "authpriv", "ftp", "ntp", "security", "console", "solaris-cron",
              "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7")
SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
DEFAULT_PRI = 13  # user.notice, RFC 3164 section 4.3.3

# Patterns, compiled by re's cache at the first message: not at every start of PID 1.
_PRI = rb"<(\d{1,3})>"
# Mmm dd hh:mm:ss (RFC 3164; the day is space-padded), then one space.
_BSD_TIME = rb"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d "
# RFC 5424: VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD [SP MSG]
_RFC5424 = rb"1 (\S+) (\S+) (\S+) (\S+) (\S+) (-|(?:\[(?:[^\]\\]|\\.)*\])+) ?"
# A tag: prog, prog[pid] or prog[pid] ending in ':' (glibc, logger, busybox).
_TAG = rb"([^\s\[\]:]{1,64})(?:\[(\d{1,10})\])?:(?: |$)"
class Message:
    __slots__ = ("facility", "severity", "program", "pid", "text")

    def __init__(self, facility: str, severity: str, program: str, pid: str, text: str) -> None:
        self.facility, self.severity, self.program, self.pid, self.text = facility, severity, program, pid, text

    def __repr__(self) -> str:
        return f"Message({self.facility}.{self.severity} {self.program}[{self.pid}]: {self.text!r})"

    def line(self) -> str:
        who = self.program + (f"[{self.pid}]" if self.pid else "")
        return f"syslog[{self.facility}.{self.severity}] {who + ': ' if who else ''}{self.text}"


# C0, DEL, C1 and the Unicode line and paragraph separators escaped (log.escape, the one
# escaping of fsm-init): a local sender (the socket is 0666) must not split or forge lines.


def parse(data: bytes) -> Message:
    """One datagram as sent by syslog(3), logger or an RFC 5424 client.  Never fails:
    what is not understood stays in the message text."""
    data = data.rstrip(b"\n\x00")
    pri = DEFAULT_PRI
    match = re.match(_PRI, data)
    if match and int(match.group(1)) < len(FACILITIES) * 8:
        pri = int(match.group(1))
        data = data[match.end():]
    facility, severity = FACILITIES[pri >> 3], SEVERITIES[pri & 7]
    program = pid = ""
    match = re.match(_RFC5424, data)
    if match:
        app, procid = match.group(3), match.group(4)
        program = "" if app == b"-" else escape_bytes(app)
        pid = "" if procid == b"-" else escape_bytes(procid)
        data = data[match.end():]
        if data.startswith(b"\xef\xbb\xbf"):  # the BOM RFC 5424 allows before MSG
            data = data[3:]
        return Message(facility, severity, program, pid, escape_bytes(data))
    match = re.match(_BSD_TIME, data)
    if match:
        data = data[match.end():]
    tag = re.match(_TAG, data)
    if tag is None and match:
        # RFC 3164 from the network carries a HOSTNAME before the tag.
        host, _, rest = data.partition(b" ")
        if host and b":" not in host and b"[" not in host:
            tag = re.match(_TAG, rest)
            if tag:
                data = rest
    if tag:
        program, pid = escape_bytes(tag.group(1)), (tag.group(2) or b"").decode()
        data = data[tag.end():]
    return Message(facility, severity, program, pid, escape_bytes(data))


class SyslogRelay:
    def __init__(self, loop, path: str = "/dev/log", out: int | None = None,
                 rate: float = RATE, burst: int = BURST, summary_every: float = SUMMARY_EVERY,
                 json_lines: bool | None = None, byte_rate: float = BYTE_RATE,
                 byte_burst: int = BYTE_BURST) -> None:
        self.loop, self.system, self.path = loop, loop.system, path
        self.out = out  # None: fsm-init's stderr, through log.write (never blocking)
        self.rate, self.burst, self.summary_every = rate, burst, summary_every
        self.byte_rate, self.byte_burst = byte_rate, byte_burst
        self.json_lines = log._json if json_lines is None else json_lines
        self.sock: socket.socket | None = None
        self.off = "not started"
        self.tried = False  # start() was called: status() is worth showing
        self.relayed = self.dropped = self.truncated = 0
        self._dropped = self._dropped_bytes = self._truncated = 0  # since the last summary
        self.tokens = float(burst)
        self.byte_tokens = float(byte_burst)
        self.refilled = loop.system.now()
        self._buffer = bytearray(MAX_MESSAGE)
        self._view = memoryview(self._buffer)

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> bool:
        """Listen on path when nobody else does; one line says why not otherwise."""
        if self.sock is not None:
            return True
        self.tried = True
        owner = self._owner()
        if owner:
            self.off = f"{self.path} {owner}: left alone"
            log.info(f"syslog relay off: {self.off}")
            return False
        try:
            sock = self.system.bind_datagram(self.path, 0o666)  # every user's daemons may log
        except OSError as e:
            self.off = f"cannot create {self.path}: {e.strerror}"
            log.info(f"syslog relay off: {self.off}")
            return False
        self.sock, self.off = sock, ""
        self._identity = self._identity_of(self.path)
        self.loop.watch(sock, self._readable)
        log.info(f"syslog relay: listening on {self.path}")
        return True

    def _owner(self) -> str:
        """Why path is not ours to take ("" when it is free or a stale socket, removed)."""
        try:
            found = self.system.socket_file(self.path)
        except OSError as e:
            return f"cannot be checked ({e.strerror})"
        if found is None:
            return ""
        if not found[2]:
            return "exists and is not a socket"
        try:
            self.system.probe_datagram(self.path)
        except ConnectionRefusedError:
            pass  # nobody listens: a stale socket, ours to replace
        except OSError as e:
            if e.errno != errno.EPROTOTYPE:  # a stream socket (syslog-ng can listen so): owned
                return f"cannot be checked ({e.strerror})"
            return "is owned by another process (a stream socket)"
        else:
            return "is owned by another process"
        try:
            self.system.remove_socket(self.path)
        except OSError as e:
            return f"is a stale socket that cannot be removed ({e.strerror})"
        log.info(f"syslog relay: replacing the stale socket {self.path}")
        return ""

    def close(self) -> None:
        """Stop listening; remove the socket file if it is still the one bound here."""
        if self.sock is None:
            return
        self.loop.unwatch(self.sock)
        self.loop.cancel("syslog-summary")
        self._summary()
        self.sock.close()
        self.sock = None
        self.off = "closed"
        if self._identity_of(self.path) == self._identity:
            try:
                self.system.remove_socket(self.path)
            except OSError:
                pass

    def _identity_of(self, path: str):
        try:
            found = self.system.socket_file(path)
        except OSError:
            return None
        return found[:2] if found else None

    def status(self) -> str:
        """One line for srvctl status."""
        counts = f"{self.relayed} relayed"
        if self.dropped:
            counts += f", {self.dropped} dropped"
        if self.truncated:
            counts += f", {self.truncated} truncated"
        if self.sock is None:
            return f"off: {self.off}" + (f" ({counts})" if self.relayed or self.dropped else "")
        return f"listening on {self.path}; {counts}"

    # -- the event ---------------------------------------------------------------------------

    def _readable(self) -> None:
        if self.sock is None:
            return
        lines = []
        now = self.loop.system.now()
        self.tokens = min(float(self.burst), self.tokens + (now - self.refilled) * self.rate)
        self.byte_tokens = min(float(self.byte_burst), self.byte_tokens + (now - self.refilled) * self.byte_rate)
        self.refilled = now
        for _ in range(PER_EVENT):
            try:
                size = self.sock.recv_into(self._view, MAX_MESSAGE, socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if self.tokens < 1:
                self._count_drop()
                continue
            kept = min(size, MAX_MESSAGE)
            if self.byte_tokens < kept:
                self._count_drop(by_bytes=True)
                continue
            self.tokens -= 1
            self.byte_tokens -= kept
            if size > MAX_MESSAGE:
                self.truncated += 1
                self._truncated += 1
                self._summary_soon()
            message = parse(bytes(self._view[:kept]))
            lines.append(self._format(message, size > MAX_MESSAGE))
        if lines and self.out is None:
            for line in lines:
                if log.write(2, line.encode("utf-8", "replace")):
                    self.relayed += 1
                else:
                    self._count_drop()
        elif lines:
            self._write("".join(lines).encode("utf-8", "replace"), len(lines))

    def _format(self, message: Message, truncated: bool) -> str:
        if self.json_lines:
            import json
            import time

            return json.dumps({"time": round(time.time(), 3), "program": message.program or "syslog",
                               "pid": message.pid or None, "facility": message.facility,
                               "severity": message.severity, "message": message.text,
                               "source": "syslog", "truncated": truncated or None}) + "\n"
        return message.line() + (" [truncated]" if truncated else "") + "\n"

    def _write(self, data: bytes, count: int) -> None:
        assert self.out is not None  # only called with an output of its own
        view = memoryview(data)
        try:
            while view:
                view = view[self.system.write(self.out, view):]
        except OSError:
            # The output cannot take more now (a non-blocking pipe is full, or it is gone):
            # what was not written is dropped, never queued here.
            left = view.tobytes().count(b"\n")
            count -= left
            for _ in range(left):
                self._count_drop()
        self.relayed += count

    def _count_drop(self, by_bytes: bool = False) -> None:
        self.dropped += 1
        if by_bytes:
            self._dropped_bytes += 1
        else:
            self._dropped += 1
        self._summary_soon()

    def _summary_soon(self) -> None:
        if self.loop.due("syslog-summary") is None:
            self.loop.call_later("syslog-summary", self.summary_every, self._summary)

    def _summary(self) -> None:
        parts = []
        if self._dropped:
            parts.append(f"{self._dropped} messages dropped (more than {self.rate:g} a second)")
        if self._dropped_bytes:
            parts.append(f"{self._dropped_bytes} messages dropped (more than {self.byte_rate / 1024:g} KiB a second)")
        if self._truncated:
            parts.append(f"{self._truncated} messages cut at {MAX_MESSAGE} bytes")
        self._dropped = self._dropped_bytes = self._truncated = 0
        if parts:
            log.warn(f"syslog relay: {', '.join(parts)} in the last {self.summary_every:g}s")

