"""Entering the pod's network namespace for the whole apply.

Python 3.11 has no os.setns, so this calls libc's setns(2) through ctypes.  Only the
calling thread moves; the processes we start afterwards (iptables-restore) are forked
from it and inherit the namespace.
"""

from __future__ import annotations

import os

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"


class NetnsError(RuntimeError):
    """The namespace could not be opened or entered."""


def resolve(spec: str) -> str:
    """A path (/proc/PID/ns/net, /var/run/netns/NAME) or a bare name in /var/run/netns."""
    return spec if spec.startswith("/") else os.path.join(NETNS_RUN_DIR, spec)


def enter(spec: str) -> str:
    """Move this thread into the network namespace `spec`; returns the path used."""
    import ctypes

    path = resolve(spec)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise NetnsError(f"cannot open network namespace {path!r}: {err.strerror}") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise NetnsError(f"cannot enter network namespace {path!r}: {os.strerror(code)}"
                             + (" (needs CAP_SYS_ADMIN)" if code == 1 else ""))
    finally:
        os.close(fd)
    return path
