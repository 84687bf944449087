"""Step load_config: $SRVCFG on the first start, otherwise ./workcfg.json; validated.

A $SRVCFG that is a JSON object is written, exactly as given, over workcfg.json
(atomically, mode 0600: it may hold passwords).  Anything else is reported and the
existing workcfg.json stays untouched: imginit wrote bad input over a good file.  When
$SRVNAME could not be used and imginit stands in, $SRVCFG (meant for the other service)
serves this start from memory and imginit's own file is left alone.

A workcfg.json that breaks between two starts (a typo while editing it) is reported and
the configuration read before is kept: falling back to the defaults would stop dropbear
and close the firewall's ports, locking out the operator who is fixing the file.
"""

import os

from fsm_init.config import workcfg as config
from fsm_init.core import log, trust
from fsm_init.core.records import NamedTuple
from fsm_init.core.system import System
from fsm_init.steps.resolve_target import Target

FILENAME = "workcfg.json"


class Loaded(NamedTuple):
    config: dict
    has_config: bool
    problems: list  # config.Problem: a key with an invalid value
    errors: list[str]  # a document that could not be used at all

    def say(self) -> None:
        """Step load_config's log lines: each error, then each problem."""
        for message in self.errors:
            log.error(message)
        for problem in self.problems:
            log.warn(problem.describe())


class ConfigSource:
    """Where the config comes from, across the restarts of one fsm-init process."""

    def __init__(self, target: Target, srvcfg: str, system: System, writes=None) -> None:
        from fsm_init.core.writes import FileWrites

        self.target = target
        self.system = system
        self.writes = writes or FileWrites(system.now, system.wall)
        self.unwritten: bytes | None = None  # $SRVCFG not yet written to workcfg.json (a full disk)
        # $SRVCFG is taken once, on the first start; without a directory to write it
        # to, it is kept in memory for the restarts of this process.
        self.pending_srvcfg = srvcfg if target.first_start and srvcfg.strip() else ""
        self.memory: dict | None = None
        self.last_read: dict | None = None  # the last good workcfg.json
        self.said: set[str] = set()  # lines said once per container start, not at every read

    @property
    def path(self) -> str | None:
        return os.path.join(self.target.directory, FILENAME) if self.target.directory else None

    def load(self) -> Loaded:
        errors: list[str] = []
        if self.unwritten is not None and self._write_srvcfg(self.unwritten):
            self.memory = None  # on disk at last: the file is read from now on
        document = self._take_srvcfg(errors)
        if document is None and self.path and self.memory is None:
            document = self._read_file(errors)
        if document is None:
            document = self.memory
        has_config = bool(self.target.directory) or self.memory is not None
        if not has_config:
            return Loaded(config.defaults(), False, [], errors)
        from fsm_init.config import schema as config_schema  # marshmallow: only when a configuration exists

        effective, problems = config_schema.validate(document or {})
        return Loaded(effective, True, problems, errors)

    def _take_srvcfg(self, errors: list[str]) -> dict | None:
        raw, self.pending_srvcfg = self.pending_srvcfg, ""
        if not raw:
            return None
        try:
            # os.environ holds undecodable bytes as surrogate escapes; json would accept them.
            data = raw.encode("utf-8")
        except UnicodeEncodeError:
            data = raw.encode("utf-8", "surrogatepass")
        document, why = config.parse_document(data)
        if document is None:
            errors.append(f"$SRVCFG is {why}: ignored, {self.path or 'the built-in defaults'} kept")
            return None
        directory = self.target.directory
        if self.path is None or directory is None or self.target.fallback:
            self.memory = document
            return document
        if trust.problem(directory, self.system):
            # Root would refuse to read the file back: another user could replace it.
            errors.append(f"$SRVCFG is not written to {self.path}: "
                          f"{trust.problem(directory, self.system)}; "
                          "using it from memory for the restarts of this container start")
            self.memory = document
            return document
        if not self._write_srvcfg(data):
            self.memory = document
        return document

    def _write_srvcfg(self, data: bytes) -> bool:
        """$SRVCFG to workcfg.json; on failure (a full or read-only disk) it serves from
        memory and is written at the next restart that finds room (said once, both ways)."""
        path = self.path
        assert path is not None  # only called with a service directory
        written = self.writes.attempt(path, lambda: self.system.write_atomic(path, data, 0o600),
                                      "$SRVCFG serves from memory")
        self.unwritten = None if written else data
        return written

    def _read_file(self, errors: list[str]) -> dict | None:
        # Checked also when the file is not there: in a directory another user could
        # change, it could appear between this check and the read.
        path = self.path
        assert path is not None  # only called with a service directory
        if not trust.trusted(path, self.system, "take fsm-init's configuration from"):
            return self.last_read
        raw = self.system.read_bytes(path)
        document, why = config.parse_document(raw) if raw is not None else (None, "")
        if document is not None:
            document = self._private(document)
            self.last_read = document
            return document
        problem = f"{path} is {why}" if raw is not None else f"no {path}"
        if self.last_read is not None:
            errors.append(f"{problem}: keeping the configuration read before (fix it, then srvctl restart)")
        else:
            errors.append(f"{problem}: using the built-in defaults")
        return self.last_read

    def reread(self, dry_run: bool) -> tuple[dict | None, str]:
        """workcfg.json read again for `srvctl reload`, under the trust rules of a start:
        (the document, ""), (None, why it cannot be used) or (None, "") when there is no
        file.  Nothing is kept (accept() does that); a dry run does not make a file holding
        a secret private either."""
        path = self.path
        assert path is not None  # only called with a service directory
        why = trust.problem(path, self.system)
        if why:
            return None, f"refusing to take fsm-init's configuration from {path}: another user could change it: {why}"
        raw = self.system.read_bytes(path)
        if raw is None:  # no file: the running configuration stays, as at a restart ("", "")
            return None, "" if self.system.owner_mode(path) is None else f"cannot read {path}"
        document, why = config.parse_document(raw)
        if document is None:
            return None, f"{path} is {why}"
        return (document if dry_run else self._private(document)), ""

    def accept(self, document: dict) -> None:
        """A reload took document: it is the configuration read before from now on."""
        self.last_read = document

    def _private(self, document: dict) -> dict:
        """A file that holds a secret is made 0600, owned by fsm-init's uid (root), so
        that no other user (the workuser) reads it; when that is impossible (a read-only
        file system, a file of another owner) its secrets are refused."""
        secrets = config.secrets_in(document)
        path = self.path
        assert path is not None  # only called for a file read
        found = self.system.owner_mode(path)
        if not secrets or found is None or (found[0] == self.system.euid() and not found[1] & 0o077):
            return document
        names = " and ".join(secrets)
        try:
            self.system.make_private(path)
        except OSError as e:
            self._once(f"cannot make {path} readable by its owner only ({e.strerror}): it holds {names}, "
                       f"which other users can read; {names} refused (make the file 0600 root in the image)", log.error)
            return config.without_secrets(document)
        owner = "root" if self.system.euid() == 0 else f"uid {self.system.euid()}"
        self._once(f"{path} holds {names}: made it mode 0600, owner {owner} (was {found[1] & 0o7777:04o}, "
                   f"owner uid {found[0]})", log.info)
        return document

    def _once(self, message: str, say) -> None:
        if message not in self.said:
            self.said.add(message)
            say(message)
