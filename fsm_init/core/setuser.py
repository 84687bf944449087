"""setuser: run a command as another user (my_init's /sbin/setuser).

    setuser USER COMMAND [ARGS...]
    setuser [--group GROUP] [--executable PATH] USER -- COMMAND [ARGS...]

USER is a name or a numeric uid; either way it must be in the passwd database.
setuser sets no_new_privs so that neither the command nor anything it runs can gain
privileges (set-uid binaries, file capabilities), sets the supplementary groups
(initgroups), then the gid, then the uid, sets HOME, USER, LOGNAME and UID to the user's
(the rest of the environment is kept), and execs COMMAND (searched on PATH).  Everything
it imports is imported while it is still root: fsm-init may be installed where USER
cannot read (a virtualenv under /root).

Signal dispositions: setuser is a wrapper, so what it inherited is passed on (`nohup
setuser USER CMD` keeps SIGHUP ignored); only SIGPIPE and SIGXFSZ, which CPython itself
ignores at start-up, are put back to the default.  fsm-init starts every child with all
dispositions at the default, so under fsm-init the command starts clean.
``--group`` makes GROUP the primary group instead of the user's own (``workuser``
"user:group"); ``--executable`` execs PATH with COMMAND as argv (fsm-init's DoNothing).

Exit status: COMMAND's own (setuser execs it, keeping the pid); 127 when COMMAND is not
found, 126 when it cannot be executed, 1 when setuser cannot become USER (unknown
user or group, not permitted, no_new_privs unavailable), 2 for a usage error.

It runs before every Periodic script when ``workuser`` is set, so it imports the
standard library and python-prctl only: no typing, no other fsm_init module.
"""

import _signal  # the C module: signal.py costs an enum import
import errno
import os
import sys

USAGE = "usage: setuser [--group GROUP] [--executable PATH] USER [--] COMMAND [ARGS...]\n"
EXIT_IDENTITY, EXIT_USAGE, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 1, 2, 126, 127
ENV_SET = ("HOME", "USER", "LOGNAME", "UID")


class Failure(Exception):
    """setuser cannot do what was asked: the message, and setuser's exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Request:
    __slots__ = ("user", "group", "executable", "command")

    def __init__(self, user, group, executable, command) -> None:
        self.user, self.group, self.executable, self.command = user, group, executable, command


class Identity:
    __slots__ = ("name", "uid", "gid", "home")

    def __init__(self, name: str, uid: int, gid: int, home: str) -> None:
        self.name, self.uid, self.gid, self.home = name, uid, gid, home

    def __repr__(self) -> str:
        return f"Identity({self.name!r}, uid={self.uid}, gid={self.gid}, home={self.home!r})"


def parse(args: list[str]) -> Request:
    """The command line after the program name; Failure(status 2) on a usage error."""
    group = executable = None
    args = list(args)
    while args and args[0].startswith("-"):
        option = args.pop(0)
        if option == "--":
            break
        name, eq, value = option.partition("=")
        if name not in ("--group", "--executable"):
            raise Failure(f"unknown option {option!r}", EXIT_USAGE)
        if not eq:
            if not args:
                raise Failure(f"{name} needs a value", EXIT_USAGE)
            value = args.pop(0)
        if not value:
            raise Failure(f"{name} needs a non-empty value", EXIT_USAGE)
        if name == "--group":
            group = value
        else:
            executable = value
    if not args or not args[0]:
        raise Failure("no USER given", EXIT_USAGE)
    user, command = args[0], args[1:]
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise Failure("no COMMAND given", EXIT_USAGE)
    return Request(user, group, executable, command)


def resolve(user: str, group: str | None = None) -> Identity:
    """USER (name or uid, in the passwd database) and the primary group to use.

    A group may be a name (in the group database) or any numeric gid.  Raises
    Failure(status 1) with a message naming what is unknown.
    """
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        entry = None
        if user.isdigit():
            try:
                entry = pwd.getpwuid(int(user))
            except (KeyError, OverflowError):
                pass
    if entry is None:
        raise Failure(f"unknown user {user!r} (not in the passwd database)", EXIT_IDENTITY)
    gid = entry.pw_gid if group is None else _group_id(group)
    return Identity(entry.pw_name, entry.pw_uid, gid, entry.pw_dir)


def _group_id(group: str) -> int:
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        pass
    if group.isdigit() and int(group) < 2**32 - 1:
        return int(group)
    raise Failure(f"unknown group {group!r} (not in the group database)", EXIT_IDENTITY)


def environment(env: "dict | os._Environ[str]", identity: Identity) -> dict:
    """env with the user's HOME, USER, LOGNAME and UID; everything else kept."""
    changed = dict(env)
    changed.update(HOME=identity.home, USER=identity.name, LOGNAME=identity.name, UID=str(identity.uid))
    return changed


def become(identity: Identity) -> None:
    """Supplementary groups, gid, uid, in that order (after setuid there is no way back).

    Not root: only "becoming" oneself works (a non-root container whose workuser is its
    own user); anything else is a clear Failure rather than half a switch.
    """
    if os.geteuid() != 0:
        if identity.uid == os.geteuid() == os.getuid() and identity.gid == os.getegid() == os.getgid():
            return
        raise Failure(f"cannot become user {identity.name!r} (uid {identity.uid}, gid {identity.gid}): "
                      f"setuser runs as uid {os.geteuid()}, not root", EXIT_IDENTITY)
    try:
        os.initgroups(identity.name, identity.gid)
        os.setgid(identity.gid)
        os.setuid(identity.uid)
    except OSError as e:
        raise Failure(f"cannot become user {identity.name!r} (uid {identity.uid}, gid {identity.gid}): "
                      f"{e.strerror}", EXIT_IDENTITY) from None
    if os.getuid() != identity.uid or os.geteuid() != identity.uid or os.getgid() != identity.gid:
        raise Failure(f"switching to user {identity.name!r} did not take effect", EXIT_IDENTITY)


def set_no_new_privs() -> None:
    """no_new_privs (irreversible, inherited by every descendant): execve never grants
    privileges again, whatever set-uid bit or file capability the program has.  Set
    before the identity changes (it does not restrict setuid, only execve): python-prctl
    or ctypes is imported while setuser can still read wherever it was installed."""
    try:
        import prctl
    except ImportError:
        prctl = None
    try:
        if prctl is not None:
            prctl.set_no_new_privs(1)
        else:  # python-prctl missing: the same call through libc
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(38, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
                error = ctypes.get_errno()
                raise OSError(error, os.strerror(error))
    except OSError as e:
        raise Failure(f"cannot set no_new_privs: {e.strerror}", EXIT_IDENTITY) from None


def execute(command: list[str], env: dict, executable: str | None = None) -> None:
    """exec, with the signal dispositions CPython changed put back to the defaults
    (an ignored SIGPIPE would survive the exec and break the command's pipes).

    PATH is searched as a shell does: a directory the user cannot search is skipped, so
    a missing command is 127 even when PATH holds root's private directories."""
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(_signal, name):
            _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
    program = executable or command[0]
    if "/" in program:
        candidates = [program]
    else:
        path = env.get("PATH", os.defpath)
        candidates = [os.path.join(d or ".", program) for d in path.split(os.pathsep)]
    error = None
    for candidate in candidates:
        try:
            os.execve(candidate, command, env)
        except OSError as e:
            if len(candidates) > 1 and (e.errno in (errno.ENOENT, errno.ENOTDIR) or not os.path.exists(candidate)):
                continue  # not in this directory, or a directory the user cannot search
            error = error or e
    if error is None:
        raise Failure(f"cannot execute {program}: command not found", EXIT_NOT_FOUND)
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        raise Failure(f"cannot execute {program}: {error.strerror}", EXIT_NOT_FOUND)
    raise Failure(f"cannot execute {program}: {error.strerror}", EXIT_NOT_EXECUTABLE)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 0
    try:
        request = parse(args)
        identity = resolve(request.user, request.group)
        set_no_new_privs()
        become(identity)
        execute(request.command, environment(os.environ, identity), request.executable)
    except Failure as e:
        sys.stderr.write(f"setuser: {e}\n")
        if e.status == EXIT_USAGE:
            sys.stderr.write(USAGE)
        return e.status
    return EXIT_IDENTITY  # not reached: execute() replaced this process or raised


if __name__ == "__main__":
    sys.exit(main())
