"""Reading iptables-save text: tables, their chains, each chain's rules.

The survey of every apply reads one dump per family through this module, and a fresh
pod's dump is empty: comparing with a plan and writing cleanup or rollback text
(iptables_state) is imported only when the namespace holds rules.

-save prints a chain's rules together, so a chain of 10,000 rules is taken as one
slice of the dump (a "stretch") and split into specs only when a caller asks for them;
TableState.check makes sure of the grouping before anything reads the rules.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import groupby
from operator import itemgetter

from istio_iptables.model.constants import OUR_CHAINS

NONE_OURS: frozenset[str] = frozenset()


class TableState:
    """One table of an iptables-save dump: chains in order, and each chain's rules as
    the dump's own text.  -save prints a chain's rules together, so a chain of 10,000
    rules is one slice of the dump (a "stretch"), split into specs only when a caller
    asks for them (rules_in): an identical re-run compares the text of a stretch as a
    whole and never makes a Python object per rule.

    The parser cuts stretches assuming -save's grouping; `check` makes sure of it before
    anything reads the rules (every reader calls it), and re-reads the table line by
    line if a dump interleaves chains."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.chains: list[str] = []
        self._order: list[tuple[str, str]] = []  # (chain, stretch) as the dump printed them
        self._stretches: dict[str, list[str]] = {}  # chain -> its stretches, chains in the order rules came
        self._specs: dict[str, list[str]] = {}
        self._checked = False

    def add_stretch(self, chain: str, text: str) -> None:
        """Rules of `chain` as -save printed them: one or more `-A chain ...` lines."""
        self._order.append((chain, text))
        self._stretches.setdefault(chain, []).append(text)
        self._specs.pop(chain, None)
        self._checked = False

    def check(self, proves: Callable[[str, str], bool] | None = None) -> bool:
        """Make sure every stretch holds its own chain's lines only: one count of lines
        against one count of the chain's prefix (10,000 rules: about 4 M instructions).
        `proves(chain, text)` may vouch for a chain's only stretch instead (the caller
        matched it against lines that all name the chain: the identical re-run's
        comparison, which spares the counts).  A stretch that fails has the table re-read
        line by line.  Returns False when it was re-read (what `proves` said is void)."""
        if self._checked:
            return True
        self._checked = True
        for chain, text in self._order:
            if len(self._stretches[chain]) == 1 and proves is not None and proves(chain, text):
                continue
            if text.count(f"\n-A {chain} ") != text.count("\n"):
                self._reread()
                return False
        return True

    def _reread(self) -> None:
        """Regroup the table's rule lines by the chain each names, in dump order."""
        lines = "\n".join(text for _, text in self._order).split("\n")
        self._order, self._stretches, self._specs = [], {}, {}
        for chain, group in groupby((line for line in lines if line.startswith("-A ")), key=_chain_of_line):
            self.add_stretch(chain, "\n".join(group))
        self._checked = True

    def our_chains(self) -> list[str]:
        ours = OUR_CHAINS.get(self.name, NONE_OURS)
        return [c for c in self.chains if c in ours]

    def rule_chains(self) -> list[str]:
        """The chains holding rules, in the order the dump printed them."""
        self.check()
        return list(self._stretches)

    def rules_in(self, chain: str) -> list[str]:
        self.check()
        specs = self._specs.get(chain)
        if specs is None:
            after_name = slice(len(chain) + 4, None)  # "-A " + chain + " "
            specs = []
            for text in self._stretches.get(chain, ()):
                specs += map(itemgetter(after_name), text.split("\n"))
            self._specs[chain] = specs
        return specs

    def text_of(self, chain: str) -> str | None:
        """A chain's rules as one text of `-A` lines ("" for none); None when the dump
        printed them in more than one stretch."""
        self.check()
        stretches = self._stretches.get(chain)
        if not stretches:
            return ""
        return stretches[0] if len(stretches) == 1 else None

    def has_rules(self) -> bool:
        return bool(self._stretches)

    def is_hook(self, chain: str, spec: str) -> bool:
        """A rule outside our chains whose target is one of our chains."""
        ours = OUR_CHAINS.get(self.name, NONE_OURS)
        return chain not in ours and _target(spec) in ours

    def hooks(self) -> list[tuple[str, str]]:
        ours = OUR_CHAINS.get(self.name, NONE_OURS)
        return [(c, spec) for c in self.rule_chains() if c not in ours for spec in self.rules_in(c)
                if _target(spec) in ours]


def _chain_of_line(line: str) -> str:
    return line[3:].partition(" ")[0]


class IptablesState:
    """A parsed dump: table name -> TableState."""

    def __init__(self) -> None:
        self.tables: dict[str, TableState] = {}

    def has_ours(self) -> bool:
        return any(t.our_chains() for t in self.tables.values())

    def has_rules(self) -> bool:
        return any(t.has_rules() for t in self.tables.values())

    def table(self, name: str) -> TableState:
        return self.tables.get(name) or TableState(name)


def _target(spec: str) -> str:
    words = spec.split()
    for i, word in enumerate(words[:-1]):
        if word in ("-j", "--jump", "-g", "--goto"):
            return words[i + 1]
    return ""


def parse_save(text: str) -> IptablesState:
    """Parse iptables-save output (legacy or nft flavour), walking the text by line
    offsets: a chain's stretch of rules is taken as one slice (_take_stretch)."""
    state = IptablesState()
    current: TableState | None = None
    limit = 0  # where the current table's COMMIT line starts (its "\n"): no stretch crosses it
    at, end = 0, len(text)
    while at < end:
        stop = text.find("\n", at)
        if stop < 0:
            stop = end
        if text.startswith("-A ", at):
            if current is not None:
                stop = _take_stretch(current, text, at, stop, max(limit, stop))
        elif text.startswith("*", at):
            name = text[at + 1:stop].strip()
            current = state.tables.setdefault(name, TableState(name))
            limit = text.find("\nCOMMIT", stop)
            limit = end if limit < 0 else limit
        elif text.startswith(":", at) and current is not None:
            current.chains.append(text[at + 1:stop].split()[0])
        at = stop + 1
    return state


def _take_stretch(table: TableState, text: str, at: int, stop: int, limit: int) -> int:
    """Take the rule line at `at` (ending at `stop`) and the lines after it of the same
    chain as one slice; returns where the slice ends.  -save prints a chain's rules
    together, so the stretch ends at the first line of another chain: found by probing
    lines at doubling then halving distances (about 40 probes for 10,000 rules, where a
    list of lines would cost 12 M instructions).  TableState.check verifies it."""
    name, space, _ = text[at + 3:stop].partition(" ")
    if not space:  # a rule without a spec
        table.add_stretch(name, text[at:stop])
        return stop
    end = _first_line_not(text, f"\n-A {name} ", stop, limit)
    table.add_stretch(name, text[at:end])
    return end


def _first_line_not(text: str, prefix: str, low: int, high: int) -> int:
    """The first line end ("\n") from `low` not followed by `prefix`, assuming those
    followed by it come first; `high` (the table's COMMIT line) bounds it."""
    if not text.startswith(prefix, low):
        return low
    step = 1024
    while True:  # gallop: low is followed by prefix, find a line end that is not
        probe = text.find("\n", low + step, high)
        if probe < 0:
            break
        if not text.startswith(prefix, probe):
            high = probe
            break
        low, step = probe, step * 2
    while True:  # halve: low is followed by prefix, high is not
        probe = text.find("\n", (low + high) // 2, high)
        if probe <= low:
            probe = text.find("\n", low + 1, high)
            if probe < 0:
                return high
        if text.startswith(prefix, probe):
            low = probe
        else:
            high = probe
