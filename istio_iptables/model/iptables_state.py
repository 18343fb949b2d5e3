"""Reading what is already in the kernel (iptables-save text) and deciding what to do.

Pure functions over text: the backends fetch the text, this module parses it, compares
it with the plan the way Istio does (same ISTIO_ chains, same rule counts, then an
exact kernel-side `-C` check), and writes the restore text that removes our rules and
only ours.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from istio_iptables.model.constants import ISTIO_PREFIX, TABLE_ORDER
from istio_iptables.model.iptables_plan import BUILTIN_CHAINS_AND_VERDICTS, FamilyPlan, Rule


class TableState:
    """One table of an iptables-save dump: chains in order, rules as (chain, spec)."""

    def __init__(self) -> None:
        self.chains: list[str] = []
        self.rules: list[tuple[str, str]] = []

    def istio_chains(self) -> list[str]:
        return [c for c in self.chains if c.startswith(ISTIO_PREFIX)]

    def rules_in(self, chain: str) -> list[str]:
        return [spec for c, spec in self.rules if c == chain]

    def jumps_into_istio(self) -> list[tuple[str, str]]:
        """Rules outside ISTIO_ chains whose target is an ISTIO_ chain: our hooks."""
        return [(c, spec) for c, spec in self.rules
                if not c.startswith(ISTIO_PREFIX) and _target(spec).startswith(ISTIO_PREFIX)]


class IptablesState:
    """A parsed dump: table name -> TableState."""

    def __init__(self) -> None:
        self.tables: dict[str, TableState] = {}

    def has_istio(self) -> bool:
        return any(t.istio_chains() for t in self.tables.values())

    def table(self, name: str) -> TableState:
        return self.tables.get(name, TableState())


def _target(spec: str) -> str:
    words = spec.split()
    for i, word in enumerate(words[:-1]):
        if word in ("-j", "--jump", "-g", "--goto"):
            return words[i + 1]
    return ""


def parse_save(text: str) -> IptablesState:
    """Parse iptables-save output (legacy or nft flavour)."""
    state = IptablesState()
    current: TableState | None = None
    for line in text.splitlines():
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            current = state.tables.setdefault(line[1:].strip(), TableState())
        elif current is None:
            continue
        elif line.startswith(":"):
            current.chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            current.rules.append((chain, rest[0] if rest else ""))
    return state


def structural_differences(plan: FamilyPlan, state: IptablesState) -> list[str]:
    """Why the kernel's ISTIO_ chains differ from the plan (empty: same shape).  Same
    idea as Istio's VerifyIptablesState: chain set and per-chain rule counts; the exact
    rule text is then checked by the kernel with `-C`."""
    diffs: list[str] = []
    planned_chains = {(t, c) for t, c in plan.chains() if c.startswith(ISTIO_PREFIX)}
    present_chains = {(t, c) for t, ts in state.tables.items() for c in ts.istio_chains()}
    for table, chain in sorted(planned_chains - present_chains):
        diffs.append(f"chain {chain} missing from table {table}")
    for table, chain in sorted(present_chains - planned_chains):
        diffs.append(f"chain {chain} in table {table} is not in the plan")
    for table, chain in sorted(planned_chains & present_chains):
        want = sum(1 for r in plan.rules if r.table == table and r.chain == chain)
        have = len(state.table(table).rules_in(chain))
        if want != have:
            diffs.append(f"{table}/{chain} holds {have} rules, the plan has {want}")
    for table in sorted({r.table for r in plan.rules} | set(state.tables)):
        want_hooks = sum(1 for r in plan.rules if r.table == table and _is_hook(r))
        have_hooks = len(state.table(table).jumps_into_istio())
        if want_hooks != have_hooks:
            diffs.append(f"table {table} has {have_hooks} jumps into ISTIO_ chains, the plan has {want_hooks}")
    return diffs


def _is_hook(rule: Rule) -> bool:
    target = rule.jump_target or ""
    return not rule.chain.startswith(ISTIO_PREFIX) and target.startswith(ISTIO_PREFIX)


def builtin_non_hooks(plan: FamilyPlan) -> list[Rule]:
    """Our rules in built-in chains that do not jump into an ISTIO_ chain (interface
    RETURNs, TPROXY marks).  Cleanup can only find these by the plan's flags."""
    return [r for r in plan.rules if r.chain in BUILTIN_CHAINS_AND_VERDICTS and not _is_hook(r)]


def check_text(rules: Iterable[Rule]) -> str:
    """Restore input that asks the kernel whether each rule exists (`-C`)."""
    by_table: dict[str, list[str]] = {}
    for rule in rules:
        by_table.setdefault(rule.table, []).append(" ".join(["-C", rule.chain, *rule.params]))
    return "".join(f"*{t}\n" + "".join(line + "\n" for line in lines) + "COMMIT\n" for t, lines in by_table.items())


def cleanup_lines(state: IptablesState, existing_non_hooks: Sequence[Rule]) -> dict[str, list[str]]:
    """Per table, the restore lines that remove every hook into ISTIO_ chains, the given
    rules of ours in built-in chains, and every ISTIO_ chain.  Foreign rules stay."""
    lines: dict[str, list[str]] = {}
    for name, table in state.tables.items():
        block = [f"-D {chain} {spec}" for chain, spec in table.jumps_into_istio()]
        block += [" ".join(["-D", r.chain, *r.params]) for r in existing_non_hooks if r.table == name]
        block += [f"-F {chain}" for chain in table.istio_chains()]
        block += [f"-X {chain}" for chain in table.istio_chains()]
        if block:
            lines[name] = block
    return lines


def merge_restore(cleanup: dict[str, list[str]], plan_text: str) -> str:
    """One restore input per family: each table's cleanup then its new rules, inside a
    single `*table ... COMMIT` block so the kernel swaps them in one commit."""
    blocks: dict[str, list[str]] = {t: list(lines) for t, lines in cleanup.items()}
    current: str | None = None
    for line in plan_text.splitlines():
        if line.startswith("* ") or line.startswith("*"):
            current = line.lstrip("*").strip()
            blocks.setdefault(current, [])
        elif line == "COMMIT" or not line or line.startswith("#"):
            continue
        elif current is not None:
            blocks[current].append(line)
    names = sorted(blocks, key=lambda t: (TABLE_ORDER.index(t) if t in TABLE_ORDER else len(TABLE_ORDER), t))
    return "".join(f"*{t}\n" + "".join(line + "\n" for line in blocks[t]) + "COMMIT\n"
                   for t in names if blocks[t])


def snapshot_text(save_text: str, tables: Iterable[str]) -> str:
    """The part of a save dump covering `tables`, for a restore without --noflush that
    puts those tables back exactly; a table absent before becomes an empty block."""
    wanted = set(tables)
    out: list[str] = []
    seen: set[str] = set()
    keep = False
    for line in save_text.splitlines():
        if line.startswith("*"):
            name = line[1:].strip()
            keep = name in wanted
            if keep:
                seen.add(name)
        if keep and not line.startswith("#"):
            out.append(line)
            if line == "COMMIT":
                keep = False
    for name in sorted(wanted - seen):
        out += [f"*{name}", "COMMIT"]
    return "".join(line + "\n" for line in out)
