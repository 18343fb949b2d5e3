"""The inverse operations of one run, taken back in reverse order when a later step fails.

Each write registers its own inverse *before* it starts (a write can fail half-way:
iptables-legacy-restore commits table by table).  An inverse acts on exactly what this
run wrote, never by restoring a snapshot of a whole table, so a rule another process
added meanwhile survives the rollback.
"""

from __future__ import annotations

from collections.abc import Callable

# An inverse returns whether it had anything to undo.
Inverse = Callable[[], bool]


class Undo:
    def __init__(self) -> None:
        self._steps: list[Inverse] = []

    def add(self, inverse: Inverse) -> None:
        self._steps.append(inverse)

    def run(self) -> str:
        """Run every inverse, newest first; returns a sentence for the error message."""
        problems: list[str] = []
        changed = False
        for inverse in reversed(self._steps):
            try:
                changed = inverse() or changed
            except Exception as err:  # keep undoing the rest; the message lists what failed
                problems.append(str(err))
        self._steps.clear()
        if problems:
            return "ROLLBACK INCOMPLETE: " + "; ".join(problems)
        if not changed:
            return "nothing was changed (the namespace is as it was before this run)"
        return "the namespace was restored to its state before this run"
