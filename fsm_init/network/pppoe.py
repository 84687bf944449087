"""Step pppoe: a PPPoE dial-up (pppd) as a supporting service when ``inetdail.enable`` is yes.

``spec`` checks that the dial-up can run here (pppd, its PPPoE plugin, kernel PPP and
PPPoE support), writes what pppd needs under ``$FSM_INIT_RUN_DIR/pppoe/`` and returns
how to run it; the engine's ``Supporting`` starts, watches and restarts it:

* ``options`` (mode 0600, directory 0700): ``user`` and ``password``, given to pppd
  with ``file``: the password is never on a command line (pppd's ``hide-password``
  keeps it out of its own log);
* ``ip-up`` / ``ip-down``: pppd's hooks (``ip-up-script``), which call back into
  ``fsm_init.network.dial`` for the routes, the peer's DNS servers and the link state;
* pppd runs in the foreground (``nodetach``) with imginit's redial policy: ``persist
  holdoff 5 maxfail 0`` (redial forever, 5 s apart) and ``lcp-echo-failure 6
  lcp-echo-interval 5`` (the link is dead after 6 unanswered echoes 5 s apart).

With ``inetdail.dialintf`` empty the process started is ``python -m fsm_init.network.dial run``:
it probes the candidate interfaces with PPPoE discovery (outside PID 1, so the
probes never hold up the engine) and execs pppd on the first that answers, or exits
with one clear log line, to be tried again when the supporting services are next
checked.
"""

import os
import posixpath
import shlex
import sys

from fsm_init.core import log
from fsm_init.core.settings import Settings
from fsm_init.core.system import SEARCH_PATH, System, Unavailable, find_program
from fsm_init.network.supporting import Spec, prepare

PPP_INTERFACE = "inet0"  # the PPP interface's name, as in imginit
# In preference order: imginit's name (ppp <= 2.4.9), then the name ppp 2.4.9+ builds.
PLUGINS = ("rp-pppoe.so", "pppoe.so")
PLUGIN_DIRS = ("/usr/lib/pppd", "/usr/lib64/pppd", "/usr/local/lib/pppd", "/lib/pppd")
# Redial forever, 5 s apart; the link is dead after 6 unanswered LCP echoes 5 s apart.
REDIAL = ["persist", "holdoff", "5", "maxfail", "0", "lcp-echo-failure", "6", "lcp-echo-interval", "5"]
PPPD_OPTIONS = ["nodetach", *REDIAL, "noauth", "refuse-eap", "hide-password", "noipdefault",
                "nodefaultroute", "usepeerdns", "mtu", "1492", "mru", "1492", "logfd", "2"]
MAX_SECRET = 255  # pppd's MAXSECRETLEN - 1
_PROCESS_KEY = os.urandom(32)

# Run in a short-lived interpreter: PID 1 itself opens no device.  Prints "errno strerror".
KERNEL_PROBE = """\
import os, socket, sys
try:
    os.close(os.open("/dev/ppp", os.O_RDWR))
except OSError as e:
    print("ppp", e.errno, e.strerror); sys.exit(1)
try:
    socket.socket(24, socket.SOCK_STREAM, 0).close()  # AF_PPPOX, PX_PROTO_OE
except OSError as e:
    print("pppoe", e.errno, e.strerror); sys.exit(1)
"""


def enabled(config: dict, has_config: bool) -> bool:
    return has_config and config["inetdail"]["enable"] == "yes"


def spec(config: dict, system: System, settings: Settings) -> Spec:
    """Prepares what the process needs (and raises Unavailable when it cannot run here);
    the engine's Supporting starts, watches and restarts it."""
    return prepare("the PPPoE dial-up", lambda: _spec(config["inetdail"], system, settings))


def _spec(dial: dict, system: System, settings: Settings) -> Spec:
    pppd = find_program(system, "pppd")
    if not pppd:
        raise Unavailable("pppd is not installed (Debian package ppp)")
    plugin = find_plugin(system, pppd)
    if not plugin:
        raise Unavailable(f"pppd's PPPoE plugin ({' or '.join(PLUGINS)}) is not installed")
    problem = kernel_problem(system)
    if problem:
        raise Unavailable(problem)
    user, password, interface = dial["dialuser"], dial["dialpswd"], dial["dialintf"].strip()
    if not user:
        raise Unavailable("inetdail.dialuser is empty: there is no account to dial with")
    for key, value in (("inetdail.dialuser", user), ("inetdail.dialpswd", password)):
        if "\0" in value or len(value.encode()) > MAX_SECRET:
            raise Unavailable(f"{key} is longer than pppd's {MAX_SECRET} bytes or holds a NUL")
    directory = posixpath.join(settings.run_dir, "pppoe")
    system.makedirs(directory, 0o700)
    options = posixpath.join(directory, "options")
    secret = options_file(user, password)
    system.write_atomic(options, secret, 0o600)
    hooks = {}
    for event in ("ip-up", "ip-down"):
        hooks[event] = posixpath.join(directory, event)
        system.write_atomic(hooks[event], hook_script(event, settings, system.getpid()), 0o755)
    flags = "DEFROUTE PATHBACK PEERDNS" if dial["usedefgw"] == "yes" else "PATHBACK"
    argv = [pppd, "file", options, *PPPD_OPTIONS, "ifname", PPP_INTERFACE, "ipparam", flags,
            "ip-up-script", hooks["ip-up"], "ip-down-script", hooks["ip-down"], "plugin", plugin]
    if interface:
        argv.append(f"nic-{interface}")
    else:
        argv = [sys.executable, "-m", "fsm_init.network.dial", "run", "--", *argv]
    import hmac

    fingerprint = "\0".join(argv + [hmac.new(_PROCESS_KEY, secret, "sha256").hexdigest()])
    summary = (f"user {user}, interface {interface or 'detected at each start'}, "
               f"default route {'taken over' if dial['usedefgw'] == 'yes' else 'left alone'}")
    return Spec(argv, {"PATH": SEARCH_PATH, "PYTHONPATH": package_root(),
                       "FSM_INIT_RUN_DIR": settings.run_dir}, fingerprint, summary)


def find_plugin(system: System, pppd: str) -> str | None:
    """The PPPoE plugin built for this pppd (a plugin for another version refuses to load)."""
    status, out, err = system.run([pppd, "--version"])
    words = (out + err).split()
    version = words[words.index("version") + 1] if "version" in words[:-1] else None
    for base in PLUGIN_DIRS:
        versions = [version] if version else system.list_dir(base)
        for found in versions:
            directory = posixpath.join(base, found)
            present = system.list_dir(directory)
            for name in PLUGINS:
                if name in present:
                    return posixpath.join(directory, name)
    return None


def kernel_problem(system: System) -> str | None:
    """Why the kernel cannot carry a PPP link here, or None.

    No /dev/ppp (or one that cannot be opened) makes the step unavailable.  A kernel
    without the pppoe module is only warned about: pppd's plugin may still get it
    loaded, and otherwise says so in the log on each attempt.
    """
    import errno

    status, out, _ = system.run([sys.executable, "-I", "-S", "-c", KERNEL_PROBE])
    if status != 1 or not out.strip():
        return None  # the probe itself could not run: let pppd find out
    what, number, reason = (out.strip().split(" ", 2) + ["", ""])[:3]
    code = int(number) if number.isdigit() else 0
    if what == "pppoe":
        _warn_once(f"pppoe: the kernel seems to have no PPPoE support (an AF_PPPOX socket gives: {reason}); "
                   "pppd will fail until the pppoe module is loaded on the host")
        return None
    if code == errno.ENOENT:
        return "there is no /dev/ppp: give the container the device (docker run --device /dev/ppp)"
    if code in (errno.ENXIO, errno.ENODEV):
        return (f"the kernel has no PPP support: opening /dev/ppp gives {reason!r}; "
                "load the ppp_generic and pppoe modules on the host")
    if code in (errno.EPERM, errno.EACCES):
        return f"not allowed to open /dev/ppp ({reason}): use --device /dev/ppp and --cap-add NET_ADMIN"
    return f"cannot open /dev/ppp: {reason}"


said_once: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in said_once:
        said_once.add(message)
        log.warn(message)


def option_word(value: str) -> str:
    """value as one word of a pppd options file: quoted, with \\ and " escaped and
    control characters as 3-digit octal escapes (pppd's getword reads them back)."""
    out = []
    for char in value:
        if char in '\\"':
            out.append("\\" + char)
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def options_file(user: str, password: str) -> bytes:
    return ("# written by fsm-init from inetdail: the account pppd dials with\n"
            f"user {option_word(user)}\npassword {option_word(password)}\n").encode()


def package_root() -> str:
    """The directory fsm_init is imported from, for the helper processes' PYTHONPATH."""
    return posixpath.dirname(posixpath.abspath(sys.modules["fsm_init"].__path__[0]))


def hook_script(event: str, settings: Settings, log_pid: int) -> bytes:
    """pppd's ip-up/ip-down hook: back into fsm_init.network.dial (which puts its lines in the log
    of process log_pid, fsm-init: pppd runs its scripts with every stream on /dev/null)."""
    return (
        "#!/bin/sh\n"
        f"# written by fsm-init: pppd runs this when the PPPoE link {'comes up' if event == 'ip-up' else 'goes down'}\n"
        f"PATH={SEARCH_PATH} PYTHONPATH={shlex.quote(package_root())} "
        f"FSM_INIT_RUN_DIR={shlex.quote(settings.run_dir)} FSM_INIT_LOG_PID={int(log_pid)} "
        f"exec {shlex.quote(sys.executable)} -m fsm_init.network.dial {event} \"$@\"\n"
    ).encode()


def describe(system: System, settings: Settings) -> str:
    """The link for srvctl status: interface, state, local and peer address once up."""
    from fsm_init.network import dial

    return dial.describe(system, settings.run_dir)
