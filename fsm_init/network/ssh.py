"""Step ssh: dropbear as a supporting service when ``sshsrv.enable`` is yes.

``spec`` prepares everything dropbear needs and returns how to run it; the engine's
``Supporting`` starts, watches and restarts it.  Prepared here, every time the
target (re)starts:

* host keys (ed25519, ecdsa, rsa), generated with dropbearkey on the first start and
  kept under ``$FSM_INIT_STATE_DIR/dropbear/`` (given to dropbear with ``-r``);
* the root password: ``sshsrv.rootpwd`` through ``chpasswd`` on stdin (never on a
  command line, never in a log).  Without it (with password logins on and no
  ``sshsrv.authkeys``) a random password is generated and put in
  ``dropbear/root-password`` (mode 0600, root only), never in the log; ``dropbear/rootpwd.json`` (mode 0600) keeps
  a salted digest of what was set and a digest of the shadow entry it produced, so
  chpasswd runs again only when the password or /etc/shadow changed;
* ``sshsrv.authkeys`` as root's ``~/.ssh/authorized_keys`` (0600, directory 0700);
* sftp: dropbear runs the sftp-server compiled into it (Debian: /usr/lib/sftp-server);
  when that path is missing but an OpenSSH sftp-server is installed elsewhere, a copy
  is put there, as imginit's image did.

The fingerprint changes with the port, the password (a digest of it), the keys and
the options, so ``Supporting`` restarts dropbear exactly when one of them changed.
"""

import json
import os
import posixpath
import re

from fsm_init.core import log
from fsm_init.core.settings import Settings
from fsm_init.core.system import SEARCH_PATH, System, Unavailable, find_program, refuse_host_namespace
from fsm_init.network.supporting import Spec, prepare

KEY_TYPES = ("ed25519", "ecdsa", "rsa")
# Where OpenSSH's sftp-server lives on common distributions (Debian, RHEL, Alpine/Arch, imginit).
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                "/usr/lib/ssh/sftp-server", "/usr/libexec/sftp-server", "/usr/lib/sftp-server")
# Debian's build of dropbear; used when the path cannot be read out of the binary.
DEFAULT_SFTP_PATH = "/usr/lib/sftp-server"
AUTHKEYS_HEADER = b"# written by fsm-init from sshsrv.authkeys: edit the config, not this file\n"
PBKDF2_ROUNDS = 100_000
GENERATED_FILE = "root-password"  # the generated root password, mode 0600, in the state dir
# Digests that only need to be compared within this process's lifetime (fingerprints).
_PROCESS_KEY = os.urandom(32)
said_once: set[str] = set()


def enabled(config: dict, has_config: bool) -> bool:
    return has_config and config["sshsrv"]["enable"] == "yes"


def spec(config: dict, system: System, settings: Settings) -> Spec:
    """Prepares what the process needs (and raises Unavailable when it cannot run here);
    the engine's Supporting starts, watches and restarts it."""
    return prepare("dropbear", lambda: _spec(config["sshsrv"], system, settings))


def _spec(ssh: dict, system: System, settings: Settings) -> Spec:
    _refuse_host_root_account(system)
    dropbear = find_program(system, "dropbear")
    if not dropbear:
        raise Unavailable("dropbear is not installed (Debian: dropbear-bin, RHEL/Alpine: dropbear)")
    state = posixpath.join(settings.state_dir, "dropbear")
    system.makedirs(state, 0o700)
    keys = host_keys(system, state)
    sftp = sftp_server(system, dropbear)
    passwords = ssh["password"] == "yes"
    if passwords and ssh["authkeys"] and not ssh["rootpwd"]:
        # Keys and no password of the operator's: a generated one would only be one more
        # way in (and a secret to hand over).
        _note("ssh: sshsrv.authkeys is set and sshsrv.rootpwd is not: password logins are off")
        passwords = False
    password_token = root_password(system, state, ssh["rootpwd"], generate=passwords)
    authorized = authorized_keys(system, ssh["authkeys"])
    system.makedirs(settings.run_dir, 0o755)
    port = ssh["sshport"]
    argv = [dropbear, "-F", "-E", "-p", str(port), "-P", posixpath.join(settings.run_dir, "dropbear.pid"),
            "-I", "600", "-K", "30"]
    for key in keys:
        argv += ["-r", key]
    if not passwords:
        argv.append("-s")
    fingerprint = "\0".join(argv + [f"password:{password_token}", f"authkeys:{authorized}"])
    summary = (f"port {port}, password logins {'on' if passwords else 'off'}, "
               f"{len(ssh['authkeys'])} authorized key(s), sftp {'on' if sftp else 'off'}")
    return Spec(argv, {"PATH": SEARCH_PATH}, fingerprint, summary)


def _refuse_host_root_account(system: System) -> None:
    """Every container has a mount namespace of its own: in the machine's initial one
    fsm-init was started on the host, and root's password and keys are the host's."""
    refuse_host_namespace(system, "mnt", "this is the host's own mount namespace (fsm-init started on the host, "
                          "not in a container): fsm-init leaves the host's root password and SSH keys alone")


# -- host keys ---------------------------------------------------------------------------


def host_keys(system: System, state: str) -> list[str]:
    """The host key files, each generated with dropbearkey the first time it is missing."""
    keys = []
    for kind in KEY_TYPES:
        path = posixpath.join(state, f"dropbear_{kind}_host_key")
        if not system.read_bytes(path):
            _generate_key(system, kind, path)
        keys.append(path)
    return keys


def _generate_key(system: System, kind: str, path: str) -> None:
    dropbearkey = find_program(system, "dropbearkey")
    if not dropbearkey:
        raise Unavailable("dropbearkey is not installed: cannot generate the SSH host keys")
    # Generated beside the final name, then put in place in one rename: never half a key.
    new = path + ".new"
    system.remove(new)
    status, out, err = system.run([dropbearkey, "-t", kind, "-f", new], timeout=60.0)
    data = system.read_bytes(new) if status == 0 else None
    system.remove(new)
    if not data:
        raise Unavailable(f"dropbearkey -t {kind} failed (status {status}): {(err or out).strip()[-200:]}")
    system.write_atomic(path, data, 0o600)
    found = re.search(r"Fingerprint: (\S+)", out)
    log.info(f"ssh: generated the {kind} host key {path}" + (f" ({found.group(1)})" if found else ""))


# -- sftp --------------------------------------------------------------------------------


def sftp_server(system: System, dropbear: str) -> bool:
    """True when the sftp-server dropbear runs for sftp is in place (copying one there if needed)."""
    binary = system.read_bytes(dropbear) or b""
    found = re.search(rb"(/[\w./+-]*sftp-server)\0", binary)
    wanted = found.group(1).decode() if found else DEFAULT_SFTP_PATH
    if system.is_executable(wanted):
        return True
    for candidate in SFTP_SERVERS:
        if candidate != wanted and system.is_executable(candidate):
            data = system.read_bytes(candidate)
            if data:
                system.makedirs(posixpath.dirname(wanted), 0o755)
                system.write_atomic(wanted, data, 0o755)
                log.info(f"ssh: dropbear runs {wanted} for sftp: installed a copy of {candidate} there")
                return True
    _note(f"ssh: no sftp-server installed (Debian: openssh-sftp-server): sftp is off ({wanted} is missing)")
    return False


def _note(message: str) -> None:
    """An information line that is worth saying once per process, not on every restart."""
    if message not in said_once:
        said_once.add(message)
        log.info(message)


# -- root password -------------------------------------------------------------------------


def shadow_entry(system: System, user: str = "root") -> str:
    """The password field of user's /etc/shadow line ("" when unreadable)."""
    data = system.read_bytes("/etc/shadow") or b""
    for line in data.decode(errors="replace").splitlines():
        name, _, rest = line.partition(":")
        if name == user:
            return rest.partition(":")[0]
    return ""


def _digest(password: str, salt: bytes) -> str:
    import hashlib

    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ROUNDS).hex()


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def root_password(system: System, state: str, configured: str, generate: bool) -> str:
    """Sets root's password as configured (or generated) when needed; returns a token for
    the fingerprint that changes when the password does (never the password itself)."""
    import secrets
    path = posixpath.join(state, "rootpwd.json")
    handed = posixpath.join(state, GENERATED_FILE)
    try:
        recorded = json.loads(system.read_bytes(path) or b"{}")
    except ValueError:
        recorded = {}
    if not isinstance(recorded, dict):
        recorded = {}
    shadow = _sha(shadow_entry(system))
    if configured:
        salt = bytes.fromhex(recorded.get("salt", "")) if recorded.get("source") == "config" else b""
        if salt and recorded.get("digest") == _digest(configured, salt) and recorded.get("shadow") == shadow:
            return _keyed("config", configured)
        _chpasswd(system, configured, "sshsrv.rootpwd")
        salt = secrets.token_bytes(16)
        _record(system, path, {"source": "config", "salt": salt.hex(), "digest": _digest(configured, salt),
                               "shadow": _sha(shadow_entry(system))})
        log.info("ssh: root password set from sshsrv.rootpwd")
        system.remove(handed)  # a generated password no longer in force
        return _keyed("config", configured)
    if not generate:
        return "none"
    if recorded.get("source") == "generated" and recorded.get("shadow") == shadow:
        _note(f"ssh: root keeps the password generated on an earlier start (in {handed}, readable by root only)")
        return "generated:" + shadow
    password = secrets.token_urlsafe(15)
    _chpasswd(system, password, "the generated password")
    shadow = _sha(shadow_entry(system))
    _record(system, path, {"source": "generated", "shadow": shadow})
    # Never in the log (a log is read by many: docker logs, a log shipper): in a file
    # only root reads, for `docker exec CONTAINER cat` it.
    system.write_atomic(handed, password.encode() + b"\n", 0o600)
    log.warn(f"ssh: sshsrv.rootpwd is not set: root's password is now a generated one, in {handed} "
             "(mode 0600, root only; set sshsrv.rootpwd or sshsrv.authkeys)")
    return "generated:" + shadow


def _keyed(kind: str, password: str) -> str:
    import hmac

    return f"{kind}:" + hmac.new(_PROCESS_KEY, password.encode(), "sha256").hexdigest()


def _chpasswd(system: System, password: str, what: str) -> None:
    if any(c in password for c in "\n\r\0"):
        raise Unavailable(f"{what} contains a line break or NUL, which chpasswd cannot take")
    chpasswd = find_program(system, "chpasswd")
    if not chpasswd:
        raise Unavailable("chpasswd is not installed (package passwd): cannot set root's password")
    status, out, err = system.run([chpasswd], input=f"root:{password}\n".encode())
    if status != 0:
        message = (err or out).replace(password, "********").strip()[-200:]
        raise Unavailable(f"chpasswd could not set root's password (status {status}): {message}")


def _record(system: System, path: str, record: dict) -> None:
    system.write_atomic(path, json.dumps(record).encode() + b"\n", 0o600)


# -- authorized keys ------------------------------------------------------------------------


def root_home(system: System) -> str:
    data = system.read_bytes("/etc/passwd") or b""
    for line in data.decode(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[0] == "root" and fields[5].startswith("/"):
            return fields[5]
    return "/root"


def authorized_keys(system: System, keys: list[str]) -> str:
    """Writes root's authorized_keys from the config; returns a digest of what is in force.

    With no keys configured, a file fsm-init wrote earlier is removed and any other
    authorized_keys (an operator's own, a mounted one) is left alone.
    """
    directory = posixpath.join(root_home(system), ".ssh")
    path = posixpath.join(directory, "authorized_keys")
    if not keys:
        current = system.read_bytes(path)
        if current is not None and current.startswith(AUTHKEYS_HEADER):
            system.remove(path)
            log.info(f"ssh: sshsrv.authkeys is empty: removed {path}")
        return "none"
    import hashlib

    data = AUTHKEYS_HEADER + "".join(f"{key}\n" for key in keys).encode()
    system.makedirs(directory, 0o700)
    if system.read_bytes(path) != data:
        system.write_atomic(path, data, 0o600)
        log.info(f"ssh: wrote {len(keys)} key(s) from sshsrv.authkeys to {path}")
    return hashlib.sha256(data).hexdigest()
