"""Renderers: turn a Plan into iptables-restore text, shell commands, or JSON.

The restore text is byte-for-byte what Istio feeds `iptables-restore --noflush`
(tables sorted, `-N` lines first), so the golden files can be compared directly.
"""

from __future__ import annotations

from typing import Any

from istio_iptables.model.iptables_plan import FamilyPlan, Plan, Rule

IPTABLES_BY_FAMILY = {4: "iptables", 6: "ip6tables"}


def restore_text(family_plan: FamilyPlan) -> str:
    """The iptables-restore input for one family (empty when there are no rules)."""
    lines: list[str] = []
    chains = family_plan.chains()
    for table in family_plan.tables():
        lines.append(f"* {table}")
        lines += [f"-N {chain}" for t, chain in chains if t == table]
        lines += [_rule_line(rule) for rule in family_plan.rules if rule.table == table]
        lines.append("COMMIT")
    lines.append("")
    return "\n".join(lines)


def _rule_line(rule: Rule) -> str:
    """`-A chain params` or `-I chain position params`, as Istio prints them."""
    if rule.position is None:
        return f"-A {rule.chain} {' '.join(rule.params)}"
    return f"-I {rule.chain} {rule.position} {' '.join(rule.params)}"


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
