"""Renderers: turn a Plan into iptables-restore text, shell commands, or JSON.

The restore text is byte-for-byte what Istio feeds `iptables-restore --noflush`
(tables sorted, `-N` lines first), so the golden files can be compared directly.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from itertools import groupby
from typing import Any, TypeVar

from istio_iptables.model.iptables_plan import BUILTIN_CHAINS_AND_VERDICTS, FamilyPlan, Plan, Rule, RuleRun

IPTABLES_BY_FAMILY = {4: "iptables", 6: "ip6tables"}
# The final log prints the kernel's `-save` (as Istio does) up to this many rules in a
# family; above it, summary_text: listing 10,000 rules costs iptables-nft-save more
# instructions than the Python interpreter's whole start, and 10,000 log lines bury
# what a reader of `kubectl logs` looks for.  Istio's realistic profiles stay far below.
SUMMARY_ABOVE_RULES = 500
SUMMARY_HEAD, SUMMARY_TAIL = 10, 5  # rules shown at each end of a chain that is summarised
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


def _part_lines(part: Rule | RuleRun, values: slice = slice(None)) -> list[str]:
    """The lines of one rule, or of `values` (a slice) of a run."""
    if isinstance(part, RuleRun):
        return part.lines(part.values[values]).split("\n") if part.values[values] else []
    return [_rule_line(part)][values]


def summary_text(family_plan: FamilyPlan) -> str:
    """A large family's rules for the final log: per table, each chain with its rule
    count, then the rules chain by chain (hooks in built-in chains first, as a save
    lists them), all of a chain up to SUMMARY_HEAD + SUMMARY_TAIL rules, else its first
    and last few around one line that says how many are left out.  Works on the plan's
    parts: a run of 10,000 rules is sliced, never expanded."""
    by_chain: dict[tuple[str, str], list[Rule | RuleRun]] = {}
    for part in family_plan.parts:
        by_chain.setdefault((part.table, part.chain), []).append(part)
    counts = {key: sum(len(p.values) if isinstance(p, RuleRun) else 1 for p in parts)
              for key, parts in by_chain.items()}
    shown = SUMMARY_HEAD + SUMMARY_TAIL
    lines: list[str] = []
    for table in family_plan.tables():
        in_table = [key for key in counts if key[0] == table]
        in_table.sort(key=lambda k: k[1] not in BUILTIN_CHAINS_AND_VERDICTS)  # hooks first, else as planned
        lines.append(f"*{table}  (rules per chain: {', '.join(f'{c} {counts[t, c]:,}' for t, c in in_table)})")
        for key in in_table:
            parts = by_chain[key]
            if counts[key] <= shown:
                lines += [line for part in parts for line in _part_lines(part)]
                continue
            lines += _first_lines(parts, SUMMARY_HEAD)
            lines.append(f"# ... {counts[key] - shown:,} more rules of {key[1]} ...")
            lines += _last_lines(parts, SUMMARY_TAIL)
    return "\n".join(lines)


def _first_lines(parts: list[Rule | RuleRun], count: int) -> list[str]:
    found: list[str] = []
    for part in parts:
        found += _part_lines(part, slice(count - len(found)))
        if len(found) == count:
            break
    return found


def _last_lines(parts: list[Rule | RuleRun], count: int) -> list[str]:
    found: list[str] = []
    for part in reversed(parts):
        found[:0] = _part_lines(part, slice(len(found) - count, None))
        if len(found) == count:
            break
    return found


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
