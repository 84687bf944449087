"""The real System boundary's own guarantees, on temporary files (no PID 1 needed)."""

import os
import signal
import stat

from fsm_init.core.system import System, describe_exit, signal_name

from .fakes import close_loop


def test_write_atomic_writes_the_file_with_its_mode_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "service.run.count"
    System().write_atomic(str(path), b"RestartCount: 1\n", 0o640)
    assert path.read_bytes() == b"RestartCount: 1\n" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["service.run.count"]


def test_write_atomic_follows_no_link_planted_in_the_directory(tmp_path):
    """A workuser may write to its service directory: root's write must not land elsewhere."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's file")
    victim.chmod(0o600)
    directory = tmp_path / "srv"
    directory.mkdir()
    os.symlink(victim, directory / f".service.run.count.{os.getpid()}.tmp")  # a predictable name
    os.symlink(victim, directory / "service.run.count")  # and the file itself
    System().write_atomic(str(directory / "service.run.count"), b"RestartCount: 2\n", 0o644)
    assert victim.read_bytes() == b"root's file" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    written = directory / "service.run.count"
    assert not written.is_symlink() and written.read_bytes() == b"RestartCount: 2\n"


def test_a_fifo_in_the_directory_cannot_block_the_write(tmp_path):
    os.mkfifo(tmp_path / f".count.{os.getpid()}.tmp")
    System().write_atomic(str(tmp_path / "count"), b"x", durable=False)
    assert (tmp_path / "count").read_bytes() == b"x"


def test_real_time_signals_have_a_name_too():
    assert signal_name(signal.SIGTERM) == "SIGTERM" and signal_name(40) == "signal 40"
    assert describe_exit(40) == "was killed by signal 40 (status 168)"
    assert describe_exit(3 << 8) == "exited with status 3"


def test_spawn_in_a_directory_runs_there_and_leaves_ours_alone(tmp_path):
    here = os.getcwd()
    pid = System().spawn(["sh", "-c", f"pwd > {tmp_path}/where"], dict(os.environ), cwd=str(tmp_path))
    _, status = os.waitpid(pid, 0)
    assert status == 0 and (tmp_path / "where").read_text().strip() == str(tmp_path)
    assert os.getcwd() == here


def test_a_deadline_a_month_away_is_waited_for_a_day_at_a_time():
    """epoll raises OverflowError for a time-out past ~24.8 days (workwatch 2592000)."""
    from fsm_init.core.loop import MAX_WAIT, EventLoop

    loop = EventLoop(System(), lambda signum: None, lambda pid, status: None)
    waits = []

    def select(timeout):
        waits.append(timeout)
        loop.stop()
        return []

    try:
        loop.call_later("cycle", 30 * 86400, lambda: None)
        loop.selector.select = select
        loop.run()
    finally:
        close_loop(loop)
    assert waits == [MAX_WAIT] and MAX_WAIT <= 86400


def test_run_passes_input_and_returns_status_stdout_and_stderr():
    status, out, err = System().run(["sh", "-c", "cat; echo oops >&2; exit 3"], input=b"x" * 300000)
    assert (status, len(out), err) == (3, 300000, "oops\n")


def test_run_reports_a_missing_program_as_127_and_a_time_out_as_124():
    assert System().run(["no-such-program-anywhere"])[0] == 127
    status, _, err = System().run(["sleep", "10"], timeout=0.2)
    assert (status, err) == (124, "sleep timed out after 0.2s")


def test_spawned_children_start_with_every_signal_at_its_default():
    """Even with this process ignoring and blocking signals (glibc's posix_spawn would
    leave its internal 32 and 33 ignored: the spawn sets every bit itself)."""
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGALRM, signal.SIGTTOU, 40)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, 41])
    try:
        status, out, _ = System().run(["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert (status, out) == (0, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n")


def test_the_os_posix_spawn_fall_back_still_runs_in_the_directory_with_the_redirections(tmp_path):
    """Where libc cannot be called directly (no ctypes): os.posix_spawn, which resets every
    signal but glibc's internal 32 and 33."""
    from fsm_init.core import system

    read, write = os.pipe2(os.O_CLOEXEC)
    try:
        pid = system.os_spawn("sh", ["sh", "-c", "pwd; grep ^SigBlk /proc/self/status"], dict(os.environ),
                               [(write, 1)], True, str(tmp_path))
    finally:
        os.close(write)
    with os.fdopen(read) as pipe:
        out = pipe.read()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert out == f"{tmp_path}\nSigBlk:\t0000000000000000\n" and os.getcwd() != str(tmp_path)
