"""web-httpd: ``python3 -m http.server`` that says when it listens (s6's readiness protocol).

    python3 web-httpd.py FD [http.server's arguments]

Runs http.server's own command line, exactly as ``python3 -m http.server ARGS`` does, and
once its socket listens (from then on a client that connects is queued and answered)
writes one newline to file descriptor FD and closes it.  fsm-init, told ``"workready":
"fd:FD"``, reads that newline: the instance is ready when it said so and, in status-check
mode, its latest check cycle passed.  Closing FD matters: fsm-init's end of the pipe sees
the end of file only once every copy is closed, and a process that never writes must not
hold it open for ever.  web-start.sh runs this only when FD is open; otherwise it runs
http.server itself, as before.
"""

import os
import runpy
import socketserver
import sys


def say_ready(fd: int) -> None:
    """The newline on fd, then fd closed (a broken pipe is no reason to stop serving)."""
    try:
        os.write(fd, b"\n")
    except OSError as e:
        print(f"web-httpd: cannot say ready on file descriptor {fd}: {e.strerror}", file=sys.stderr)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def main() -> None:
    if len(sys.argv) < 2 or not sys.argv[1].isdigit() or int(sys.argv[1]) < 3:
        sys.exit("usage: web-httpd.py FD [http.server's arguments]  (FD: 3 or more)")
    fd = int(sys.argv[1])
    del sys.argv[1]
    try:
        os.set_inheritable(fd, False)  # not passed on (http.server --cgi runs children)
    except OSError as e:
        print(f"web-httpd: file descriptor {fd}: {e.strerror}; serving without saying ready", file=sys.stderr)
        runpy.run_module("http.server", run_name="__main__", alter_sys=True)
        return
    listen = socketserver.TCPServer.server_activate
    said = False

    def server_activate(server: socketserver.TCPServer) -> None:
        nonlocal said
        listen(server)  # listen(): connections are accepted into the backlog from now on
        if not said:  # once: after the close, the number may be another file's
            said = True
            say_ready(fd)

    socketserver.TCPServer.server_activate = server_activate  # type: ignore[method-assign, assignment]
    runpy.run_module("http.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
