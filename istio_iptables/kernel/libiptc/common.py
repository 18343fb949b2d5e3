"""What every part of the libiptc backend shares: its error, the rule shape, messages."""

from __future__ import annotations

import re
from typing import Any, Protocol

FAMILY_NAMES = {4: "iptables-legacy", 6: "ip6tables-legacy"}


class RuleLike(Protocol):
    """What this backend needs of a planned rule (istio_iptables.model.iptables_plan.Rule fits)."""

    @property
    def table(self) -> str: ...

    @property
    def chain(self) -> str: ...

    @property
    def params(self) -> tuple[str, ...]: ...

    @property
    def position(self) -> int | None: ...


class LibiptcError(Exception):
    """A rule, chain or table could not be written (or read) through libiptc.

    ``table``, ``chain`` and ``rule`` name what failed when it was one rule.
    """

    def __init__(self, message: str, *, table: str | None = None, chain: str | None = None,
                 rule: str | None = None) -> None:
        super().__init__(message)
        self.table = table
        self.chain = chain
        self.rule = rule


def log() -> Any:
    """The backend's logger; logging is imported on first use only (start-up cost)."""
    import logging

    return logging.getLogger("istio_iptables.kernel.libiptc")


def lib_message(exc: BaseException) -> str:
    """python-iptables' message with its bytes reprs (``b'Invalid argument'``) unwrapped."""
    return re.sub(r"""\bb(['"])(.*?)\1""", r"\2", str(exc)) or type(exc).__name__


def check_family(family: int) -> None:
    if family not in FAMILY_NAMES:
        raise ValueError(f"family must be 4 or 6, not {family!r}")


def _quote(token: str) -> str:
    if token and not re.search(r"[\s'\"\\]", token):
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rule_text(rule: RuleLike) -> str:
    """The rule as an iptables command line after ``-t TABLE``: ``-A CHAIN ...`` or ``-I CHAIN N ...``."""
    head = [f"-A {rule.chain}"] if rule.position is None else [f"-I {rule.chain} {rule.position}"]
    return " ".join(head + [_quote(p) for p in rule.params])
