"""Entering the pod's network namespace for the whole apply.

Python 3.11 has no os.setns, so this calls libc's setns(2) through _ctypes, the C
half of ctypes: importing ctypes itself costs 7 M instructions (a CNI ADD enters a
namespace for every pod), 5 M more than the one function pointer needed here.
Only the calling thread moves; the processes we start afterwards (iptables-restore)
are forked from it and inherit the namespace.
"""

from __future__ import annotations

import os
from collections.abc import Callable

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"


class NetnsError(RuntimeError):
    """The namespace could not be opened or entered."""


def resolve(spec: str) -> str:
    """A path (/proc/PID/ns/net, /var/run/netns/NAME) or a bare name in /var/run/netns."""
    return spec if spec.startswith("/") else os.path.join(NETNS_RUN_DIR, spec)


def enter(spec: str) -> str:
    """Move this thread into the network namespace `spec`; returns the path used."""
    path = resolve(spec)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise NetnsError(f"cannot open network namespace {path!r}: {err.strerror}") from None
    try:
        if _setns()(fd, CLONE_NEWNET) != 0:
            from _ctypes import get_errno

            code = get_errno()
            raise NetnsError(f"cannot enter network namespace {path!r}: {os.strerror(code)}"
                             + (" (needs CAP_SYS_ADMIN)" if code == 1 else ""))
    finally:
        os.close(fd)
    return path


def _setns() -> Callable[[int, int], int]:
    """libc's setns as a C function pointer: int (int, int), errno kept for get_errno."""
    from _ctypes import FUNCFLAG_CDECL, FUNCFLAG_USE_ERRNO, CFuncPtr, dlopen

    class Function(CFuncPtr):  # restype and argtypes default to C int
        _flags_ = FUNCFLAG_CDECL | FUNCFLAG_USE_ERRNO

    class Libc:  # what a CDLL is to a function pointer: a dlopen handle
        _handle = dlopen(None)  # type: ignore[arg-type]  # None: this process (libc is in it)

    return Function(("setns", Libc))  # type: ignore[arg-type]
