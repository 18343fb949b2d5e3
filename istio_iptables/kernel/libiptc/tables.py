"""libiptc handles of one address family, and the xtables lock around their use.

python-iptables takes no xtables lock; :func:`xtables_lock` takes ``/run/xtables.lock``
(or ``$XTABLES_LOCKFILE``) like iptables-legacy does, so concurrent iptables
invocations cannot interleave with a commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from typing import Any

from istio_iptables.kernel.libiptc.common import FAMILY_NAMES, LibiptcError, lib_message, log

#: How long to wait for the xtables lock held by another iptables user, in seconds.
XTABLES_LOCK_WAIT = 30.0
_DEFAULT_LOCKFILE = "/run/xtables.lock"

_RULE_CLASSES: dict[int, Any] = {}


def _scoped_tables(rule: Any) -> list[Any]:
    scoped = getattr(rule, "_lookup_tables", None)
    if scoped is not None:
        return list(scoped)
    chain = getattr(rule, "chain", None)
    return [chain.table] if chain is not None else []


def table_classes(iptc: Any, family: int) -> tuple[Any, Any]:
    """(Table class, Rule class) of a family.

    The Rule class is a subclass whose ``tables`` (where python-iptables looks up
    whether a target name is a chain) is only the rule's own table.  The stock
    property opens every table of the family, which makes the kernel instantiate
    filter/security/... in the namespace as a side effect, and would treat a chain
    of another table as a valid jump.
    """
    cls = _RULE_CLASSES.get(family)
    if cls is None:
        base = iptc.Rule if family == 4 else iptc.Rule6
        cls = type(f"Scoped{base.__name__}", (base,), {"tables": property(_scoped_tables)})
        _RULE_CLASSES[family] = cls
    return (iptc.Table if family == 4 else iptc.Table6), cls


@contextlib.contextmanager
def xtables_lock() -> Iterator[None]:
    """Hold the xtables lock (flock on /run/xtables.lock) as iptables-legacy does."""
    path = os.environ.get("XTABLES_LOCKFILE") or _DEFAULT_LOCKFILE
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        log().debug("xtables lock %s unavailable (%s); continuing without it", path, exc)
        fd = -1
    try:
        if fd >= 0:
            deadline = time.monotonic() + XTABLES_LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LibiptcError(
                            f"another app is holding the xtables lock {path}; gave up after "
                            f"{XTABLES_LOCK_WAIT:g}s"
                        ) from None
                    time.sleep(0.05)
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # releases the flock


class Tables:
    """Non-autocommit libiptc handles of one family, refreshed on first use."""

    def __init__(self, iptc: Any, family: int) -> None:
        self.iptc = iptc
        self.family = family
        self.table_cls, self.rule_cls = table_classes(iptc, family)
        self.handles: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        handle = self.handles.get(name)
        if handle is None:
            try:
                handle = self.table_cls(name, autocommit=False)
                # Tables are cached per process by python-iptables: drop any stale state.
                handle.autocommit = False
                handle.refresh()
            except Exception as exc:
                raise LibiptcError(
                    f"{FAMILY_NAMES[self.family]}: cannot open table {name!r}: {lib_message(exc)}", table=name
                ) from exc
            self.handles[name] = handle
        return handle

    def discard(self) -> None:
        """Throw away every uncommitted change (autocommit is off, so refresh drops them)."""
        for name, handle in self.handles.items():
            try:
                handle.autocommit = False
                handle.refresh()
            except Exception as exc:  # pragma: no cover - only if the kernel goes away
                log().warning("could not reset %s table %s: %s", FAMILY_NAMES[self.family], name, exc)
