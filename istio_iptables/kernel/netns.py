"""Entering the pod's network namespace for the whole apply.

Python 3.11 has no os.setns, so this calls libc's setns(2) through _ctypes, the C
half of ctypes: importing ctypes itself costs 7 M instructions (a CNI ADD enters a
namespace for every pod), 5 M more than the one function pointer needed here.
Only the calling thread moves; the processes we start afterwards (iptables-restore)
are forked from it and inherit the namespace.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"
# ioctl(2) on an nsfs file: which kind of namespace it is (Linux 4.11+); ENOTTY elsewhere.
NS_GET_NSTYPE = 0xB703


class NetnsError(RuntimeError):
    """The namespace could not be opened or entered.  `bad_input`: the path is not a
    network namespace at all (a usage error), rather than one that failed."""

    def __init__(self, message: str, *, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


def resolve(spec: str) -> str:
    """A path (/proc/PID/ns/net, /var/run/netns/NAME) or a bare name in /var/run/netns."""
    return spec if spec.startswith("/") else os.path.join(NETNS_RUN_DIR, spec)


def open_netns(spec: str) -> tuple[str, int]:
    """(path, fd) of a network namespace file, checked without blocking: O_NONBLOCK
    keeps a FIFO from hanging the open, and the nsfs ioctl proves the kind."""
    import fcntl

    path = resolve(spec)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as err:
        raise NetnsError(f"cannot open network namespace {path!r}: {err.strerror}") from None
    except ValueError:  # a path the file system cannot encode
        raise NetnsError(f"{path!r} is not a network namespace file", bad_input=True) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NetnsError(f"{path!r} is not a network namespace file", bad_input=True)
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError:
            raise NetnsError(f"{path!r} is not a network namespace file", bad_input=True) from None
        if kind != CLONE_NEWNET:
            raise NetnsError(f"{path!r} is a namespace file, but not a network namespace", bad_input=True)
    except BaseException:
        os.close(fd)
        raise
    return path, fd


def enter(spec: str) -> str:
    """Move this thread into the network namespace `spec`; returns the path used."""
    path, fd = open_netns(spec)
    try:
        if _libc_function("setns")(fd, CLONE_NEWNET) != 0:
            from _ctypes import get_errno

            code = get_errno()
            raise NetnsError(f"cannot enter network namespace {path!r}: {os.strerror(code)}"
                             + (" (needs CAP_SYS_ADMIN)" if code == 1 else ""))
    finally:
        os.close(fd)
    return path


def in_new_netns(work: Callable[[], str]) -> str:
    """`work()`'s result, computed by a child process in a new, empty network namespace
    (unshare(2)): for asking the kernel something, such as how it lists a ruleset,
    without touching the pod's namespace or this process's.  Needs CAP_SYS_ADMIN, as
    entering a namespace does; `work` bounds its own time (spawn's timeouts)."""
    from istio_iptables.kernel.spawn import write_all

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: reports through the pipe, never returns
        status, data = 1, b""
        try:
            os.close(read_end)
            if _libc_function("unshare")(CLONE_NEWNET) != 0:
                from _ctypes import get_errno

                raise NetnsError(f"cannot create a network namespace: {os.strerror(get_errno())}")
            data, status = b"\0" + work().encode(), 0
        except BaseException as err:  # the parent raises it, in words
            data = b"\1" + (str(err) or type(err).__name__).encode()
        finally:
            try:
                write_all(write_end, data)
            finally:
                os._exit(status)
    os.close(write_end)
    with open(read_end, "rb") as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    if data[:1] != b"\0":
        raise NetnsError(data[1:].decode(errors="replace") or "the process in the new namespace died")
    return data[1:].decode()


def _libc_function(name: str) -> Callable[..., int]:
    """A libc function as a C function pointer returning int, errno kept for get_errno."""
    from _ctypes import FUNCFLAG_CDECL, FUNCFLAG_USE_ERRNO, CFuncPtr, dlopen

    class Function(CFuncPtr):  # restype and argtypes default to C int
        _flags_ = FUNCFLAG_CDECL | FUNCFLAG_USE_ERRNO

    class Libc:  # what a CDLL is to a function pointer: a dlopen handle
        _handle = dlopen(None)  # type: ignore[arg-type]  # None: this process (libc is in it)

    return Function((name, Libc))  # type: ignore[arg-type]
