"""What nft's error output says: the line of our input it refused, and why.

Only a failed nft run reads it, so kernel/nft.py imports this module then: at import
the Refusal class and the pattern would cost every native nftables apply ~0.5 M
instructions (valgrind), for nothing when nft succeeds.
"""

import re

from istio_iptables.model.record import Record

# nft locates errors as "<file>:<line>:<first column>-<last column>: Error: <reason>".
_ERROR_RE = r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<cols>[\d-]+): Error: (?P<reason>.*)$"


class Refusal(Record):
    """The first error nft reported: its reason and, if located, the line number."""

    reason: str
    line_number: int | None


def parse_refusal(stderr: str) -> Refusal:
    """The first located error of nft's stderr, or its first line when none is located."""
    match = re.search(_ERROR_RE, stderr, re.MULTILINE)
    if match is None:
        return Refusal(first_line(stderr), None)
    return Refusal(match.group("reason").strip(), int(match.group("line")))


def first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else "no error message"
