"""Renderers: turn a Plan into iptables-restore text, shell commands, or JSON.

The restore text is byte-for-byte what Istio feeds `iptables-restore --noflush`
(tables sorted, `-N` lines first), so the golden files can be compared directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from istio_iptables.model.iptables_plan import BUILTIN_CHAINS_AND_VERDICTS, FamilyPlan, Plan, Rule, RuleRun

IPTABLES_BY_FAMILY = {4: "iptables", 6: "ip6tables"}
# The final log prints the kernel's `-save` (as Istio does) up to this many rules in a
# family; above it, summary_text: listing 10,000 rules costs iptables-nft-save more
# instructions than the Python interpreter's whole start, and 10,000 log lines bury
# what a reader of `kubectl logs` looks for.  Istio's realistic profiles stay far below.
SUMMARY_ABOVE_RULES = 500
SUMMARY_HEAD, SUMMARY_TAIL = 10, 5  # rules shown at each end of a chain that is summarised


def restore_text(family_plan: FamilyPlan) -> str:
    """The iptables-restore input for one family (empty when there are no rules)."""
    tables = family_plan.tables()
    chains = family_plan.chains()
    lines: list[str] = []
    for table in tables:
        lines.append(f"* {table}")
        lines += [f"-N {chain}" for t, chain in chains if t == table]
        lines += [part.lines() if isinstance(part, RuleRun) else _rule_line(part)
                  for part in family_plan.parts if part.table == table]
        lines.append("COMMIT")
    lines.append("")
    return "\n".join(lines)


def _rule_line(rule: Rule) -> str:
    """`-A chain params` or `-I chain position params`, as Istio prints them."""
    if rule.position is None:
        return f"-A {rule.chain} {' '.join(rule.params)}"
    return f"-I {rule.chain} {rule.position} {' '.join(rule.params)}"


# One rule or one run of a chain, for chain_summary: (how many rules, their lines for a
# slice of them).  A run's lines come from one join over the slice: never expanded.
Piece = tuple[int, Callable[[slice], list[str]]]


def summary_text(family_plan: FamilyPlan) -> str:
    """A large family's rules for the final log: per table, each chain with its rule
    count, then the rules chain by chain (hooks in built-in chains first, as a save
    lists them), each as chain_summary shows it."""
    pieces: dict[tuple[str, str], list[Piece]] = {}
    for part in family_plan.parts:
        piece = run_piece(part.values, part.lines) if isinstance(part, RuleRun) else rule_piece(_rule_line(part))
        pieces.setdefault((part.table, part.chain), []).append(piece)
    counts = {key: sum(n for n, _ in chain) for key, chain in pieces.items()}
    lines: list[str] = []
    for table in family_plan.tables():
        in_table = [key for key in counts if key[0] == table]
        in_table.sort(key=lambda k: k[1] not in BUILTIN_CHAINS_AND_VERDICTS)  # hooks first, else as planned
        lines.append(f"*{table}  (rules per chain: {', '.join(f'{c} {counts[t, c]:,}' for t, c in in_table)})")
        for key in in_table:
            lines += chain_summary(pieces[key], key[1])
    return "\n".join(lines)


def rule_piece(line: str) -> Piece:
    return 1, [line].__getitem__


def run_piece(values: Sequence[str], lines_of: Callable[[Sequence[str]], str]) -> Piece:
    def lines(which: slice) -> list[str]:
        chosen = values[which]
        return lines_of(chosen).split("\n") if chosen else []

    return len(values), lines


def chain_summary(pieces: list[Piece], chain: str) -> list[str]:
    """A chain's lines for the final log (iptables and native nftables alike): all of
    them up to SUMMARY_HEAD + SUMMARY_TAIL rules, else the first and last few around
    one line that says how many are left out."""
    total = sum(n for n, _ in pieces)
    shown = SUMMARY_HEAD + SUMMARY_TAIL
    if total <= shown:
        return [line for _, lines in pieces for line in lines(slice(None))]
    head: list[str] = []
    for _, lines in pieces:
        head += lines(slice(SUMMARY_HEAD - len(head)))
        if len(head) == SUMMARY_HEAD:
            break
    tail: list[str] = []
    for _, lines in reversed(pieces):
        tail[:0] = lines(slice(len(tail) - SUMMARY_TAIL, None))
        if len(tail) == SUMMARY_TAIL:
            break
    return [*head, f"# ... {total - shown:,} more rules of {chain} ...", *tail]


def render_restore(plan: Plan) -> str:
    """Both families' restore input, v4 first, with the non-iptables steps as comments
    (iptables-restore ignores '#' lines, so the output can be piped as it is)."""
    out: list[str] = []
    for family_plan in plan.families:
        binary = IPTABLES_BY_FAMILY[family_plan.family]
        out.append(f"# {binary}-restore --noflush (IPv{family_plan.family})\n")
        out.append(restore_text(family_plan))
    for step in plan.system_steps():
        out.append(f"# {step.describe()}\n")
    return "".join(out)


def command_lines(plan: Plan) -> list[str]:
    """The plan as one iptables/ip command per line, as istio-iptables.sh ran them."""
    import shlex

    lines: list[str] = []
    for family_plan in plan.families:
        binary = IPTABLES_BY_FAMILY[family_plan.family]
        for table, chain in family_plan.chains():
            lines.append(shlex.join([binary, "-t", table, "-N", chain]))
        for rule in family_plan.rules:
            lines.append(shlex.join([binary, "-t", rule.table, *rule.verb_args]))
    lines += [step.describe() for step in plan.system_steps()]
    return lines


def render_commands(plan: Plan) -> str:
    return "".join(line + "\n" for line in command_lines(plan))


def plan_as_dict(plan: Plan) -> dict[str, Any]:
    """A JSON-friendly view: per family, per table, the chains to create and the rules."""
    result: dict[str, Any] = {}
    for family_plan in plan.families:
        tables: dict[str, Any] = {}
        for table in family_plan.tables():
            tables[table] = {
                "chains": [c for t, c in family_plan.chains() if t == table],
                "rules": [_rule_line(r) for r in family_plan.rules if r.table == table],
            }
        result[f"ipv{family_plan.family}"] = tables
    result["routes"] = [
        {"kind": s.kind, "family": s.family, "table": s.table, "mark": s.mark, "command": s.describe()}
        for s in plan.routes
    ]
    result["addresses"] = [{"address": a.address, "device": a.device} for a in plan.addresses]
    return result


def render_json(plan: Plan) -> str:
    import json

    return json.dumps(plan_as_dict(plan), indent=2) + "\n"


RENDERERS = {"restore": render_restore, "commands": render_commands, "json": render_json}
