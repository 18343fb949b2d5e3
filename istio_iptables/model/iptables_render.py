"""Renderers: turn a Plan into iptables-restore text, shell commands, or JSON.

The restore text is byte-for-byte what Istio feeds `iptables-restore --noflush`
(tables sorted, `-N` lines first), so the golden files can be compared directly.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from itertools import groupby
from operator import itemgetter
from typing import Any, TypeVar

from istio_iptables.model.iptables_plan import BUILTIN_CHAINS_AND_VERDICTS, FamilyPlan, Plan, Rule

IPTABLES_BY_FAMILY = {4: "iptables", 6: "ip6tables"}
# The final log prints the kernel's `-save` (as Istio does) up to this many rules in a
# family; above it, summary_text: listing 10,000 rules costs iptables-nft-save more
# instructions than the Python interpreter's whole start, and 10,000 log lines bury
# what a reader of `kubectl logs` looks for.  Istio's realistic profiles stay far below.
SUMMARY_ABOVE_RULES = 500
SUMMARY_HEAD, SUMMARY_TAIL = 10, 5  # rules shown at each end of a chain that is summarised
_TABLE_CHAIN = itemgetter(0, 1)  # Rule -> (table, chain)
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def restore_text(family_plan: FamilyPlan) -> str:
    """The iptables-restore input for one family (empty when there are no rules)."""
    tables = family_plan.tables()
    chains = family_plan.chains()
    lines: list[str] = []
    for table in tables:
        lines.append(f"* {table}")
        lines += [f"-N {chain}" for t, chain in chains if t == table]
        lines += _rule_lines(family_plan.rules, table if len(tables) > 1 else None)
        lines.append("COMMIT")
    lines.append("")
    return "\n".join(lines)


def _rule_lines(rules: tuple[Rule, ...], table: str | None) -> list[str]:
    """The lines of one table's rules (all of them when `table` is None): one
    comprehension with the line built inline, because with 10,000 -x CIDRs a function
    call per rule and a filter pass per table were a third of the Python time of an apply."""
    return [f"-A {c} {' '.join(p)}" if n is None else f"-I {c} {n} {' '.join(p)}"
            for t, c, p, n in rules if table is None or t == table]


def _rule_line(rule: Rule) -> str:
    """`-A chain params` or `-I chain position params`, as Istio prints them."""
    if rule.position is None:
        return f"-A {rule.chain} {' '.join(rule.params)}"
    return f"-I {rule.chain} {rule.position} {' '.join(rule.params)}"


def summary_text(family_plan: FamilyPlan) -> str:
    """A large family's rules for the final log: per table, each chain with its rule
    count, then the rules chain by chain (hooks in built-in chains first, as a save
    lists them), all of a chain up to SUMMARY_HEAD + SUMMARY_TAIL rules, else its first
    and last few around one line that says how many are left out."""
    rules = family_plan.rules
    # Runs of consecutive rules of one chain: a 10,000-CIDR plan has about ten.
    runs = runs_by_key(map(_TABLE_CHAIN, rules))
    counts = {key: sum(end - start for start, end in spans) for key, spans in runs.items()}
    shown = SUMMARY_HEAD + SUMMARY_TAIL
    heads = {key: first_of_runs(rules, spans, shown) for key, spans in runs.items()}
    tails = {key: last_of_runs(rules, spans, SUMMARY_TAIL) for key, spans in runs.items() if counts[key] > shown}
    lines: list[str] = []
    for table in family_plan.tables():
        in_table = [key for key in counts if key[0] == table]
        in_table.sort(key=lambda k: k[1] not in BUILTIN_CHAINS_AND_VERDICTS)  # hooks first, else as planned
        lines.append(f"*{table}  (rules per chain: {', '.join(f'{c} {counts[t, c]:,}' for t, c in in_table)})")
        for key in in_table:
            if counts[key] <= shown:
                lines += [_rule_line(r) for r in heads[key]]
                continue
            lines += [_rule_line(r) for r in heads[key][:SUMMARY_HEAD]]
            lines.append(f"# ... {counts[key] - shown:,} more rules of {key[1]} ...")
            lines += [_rule_line(r) for r in tails[key]]
    return "\n".join(lines)


def runs_by_key(keys: Iterable[K]) -> dict[K, list[tuple[int, int]]]:
    """Where each key's runs of consecutive items lie: key -> [(start, end), ...] in
    order.  groupby compares neighbours in C, so there is no Python step per item."""
    runs: dict[K, list[tuple[int, int]]] = {}
    at = 0
    for key, run in groupby(keys):
        length = len(list(run))
        runs.setdefault(key, []).append((at, at + length))
        at += length
    return runs


def first_of_runs(rules: Sequence[T], spans: list[tuple[int, int]], count: int) -> list[T]:
    """The first `count` items of a chain, from its runs (start, end) in plan order."""
    found: list[T] = []
    for start, end in spans:
        found += rules[start:min(end, start + count - len(found))]
        if len(found) == count:
            break
    return found


def last_of_runs(rules: Sequence[T], spans: list[tuple[int, int]], count: int) -> list[T]:
    """The last `count` items of a chain, in plan order."""
    found: list[T] = []
    for start, end in reversed(spans):
        found[:0] = rules[max(start, end - count + len(found)):end]
        if len(found) == count:
            break
    return found


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
