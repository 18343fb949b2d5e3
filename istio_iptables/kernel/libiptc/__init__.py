"""iptables-legacy backend without iptables binaries: planned rules written with python-iptables.

Instead of feeding text to ``iptables-legacy-restore``, each rule's argv (``-p tcp
--dport 15008 -j RETURN`` ...) is converted into an ``iptc.Rule`` / ``iptc.Rule6``
and inserted into an in-memory libiptc handle of its table.  Nothing reaches the
kernel until every rule of every table has been converted and inserted; only then
is each touched table committed.  Any failure before that discards the handles, so
the kernel is left exactly as it was.  (The kernel can still refuse a table at
commit time; tables committed before it are then reverted.)

API: :func:`apply_rules`, :func:`delete_rules`, :class:`LibiptcError`; rules are
anything shaped like :class:`RuleLike` (``istio_iptables.model.iptables_plan.Rule``).
Importing this package never imports python-iptables: that happens in the worker.

Modules, one concern each:

* ``common``  -- the error, the rule protocol, messages.
* ``loader``  -- importing python-iptables cheaply (no ldconfig, no setuptools, no
  modprobe, no subprocess/socket/ctypes.util imports), one family per process.
* ``convert`` -- an iptables argv into a python-iptables rule, iptables' way.
* ``tables``  -- libiptc handles of one family and the xtables lock.
* ``worker``  -- each call in a forked process (libxtables serves one family per process).
* ``write``   -- apply_rules / delete_rules: all or nothing, and best-effort cleanup.
"""

from typing import Any

from istio_iptables.kernel.libiptc.common import LibiptcError, RuleLike, rule_text

__all__ = ["LibiptcError", "RuleLike", "apply_rules", "delete_rules", "prepare_environment", "rule_text"]
# Where the rest of the API lives; imported on first use, so that the calling process
# imports only common, write and worker (loader, convert and tables run in the worker).
_LAZY = {"apply_rules": "write", "delete_rules": "write", "prepare_environment": "loader"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
