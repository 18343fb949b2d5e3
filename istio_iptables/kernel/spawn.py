"""Run a short-lived program with stdin text and captured output, cheaply.

The standard library's subprocess costs ~5 ms of CPU just to import (selectors,
signal, threading...), which is 10% of what istio-init may spend at pod start.  The
iptables binaries need much less: stdin and both outputs go through memfd files
(no pipes, so no deadlock however large the ruleset), the child is started with
posix_spawn, and a pidfd gives the timeout.
"""

import os

from istio_iptables.model.record import Record


class Finished(Record):
    """What a program did: its exit status (negative: killed by that signal) and output."""

    returncode: int
    stdout: str
    stderr: str


class SpawnTimeout(RuntimeError):
    """The program did not exit in time and was killed."""


def _memfd(name: str, data: bytes = b"") -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    if data:
        write_all(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    return fd


def write_all(fd: int, data: bytes) -> None:
    """Every byte of `data` to `fd` (a pipe or a memfd may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_all(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _wait(pid: int, timeout: float) -> int:
    """Wait for `pid` at most `timeout` seconds; returns its wait status."""
    import select

    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # kernel < 5.3, or a seccomp profile without pidfd_open
        return _wait_polling(pid, timeout)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(int(timeout * 1000)):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise SpawnTimeout(f"killed after {timeout:g}s")
    finally:
        os.close(pidfd)
    return os.waitpid(pid, 0)[1]


def _wait_polling(pid: int, timeout: float) -> int:
    """The fallback: poll waitpid with short sleeps."""
    import time

    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise SpawnTimeout(f"killed after {timeout:g}s")
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def run(argv: list[str], stdin: str | None = None, timeout: float = 60.0) -> Finished:
    """Run `argv` (searched on PATH); raises FileNotFoundError when it does not exist."""
    fds = [_memfd("stdin", (stdin or "").encode()), _memfd("stdout"), _memfd("stderr")]
    try:
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)]
        # environb: the same variables as os.environ, but handed over without decoding and
        # re-encoding each one in Python (~0.1 M instructions per program started).
        pid = os.posix_spawnp(argv[0], argv, os.environb, file_actions=actions)
        status = _wait(pid, timeout)
        return Finished(os.waitstatus_to_exitcode(status), _read_all(fds[1]), _read_all(fds[2]))
    finally:
        for fd in fds:
            os.close(fd)
