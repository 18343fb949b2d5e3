"""What the last log lines of an iptables-mode run show: the rules now in place.

Istio logs the full `iptables-save` output.  So does this tool, up to
SUMMARY_ABOVE_RULES rules in a family.  Above that (thousands of `-x` CIDRs) it logs a
summary of what the single restore transaction wrote, which the kernel accepted as a
whole: the rule count per chain, every hook and small chain in full, and the first
and last rules of each big chain.  Reading 10,000 rules back costs iptables-nft-save
about 170 M instructions (more than the interpreter's start with click) and gives a
reader of `kubectl logs` 10,000 lines to scroll past; the full list is one
`iptables-save` away in the pod's namespace.  Native nftables mode follows the same
rule with `nft list ruleset` (about 300 M instructions for 10,000 rules) and the text
its one `nft -f` transaction wrote.
"""

from __future__ import annotations

from collections.abc import Callable

from istio_iptables import logs as log
from istio_iptables.kernel import iptables_restore as rb
from istio_iptables.model.iptables_plan import FamilyPlan
from istio_iptables.model.iptables_render import (
    SUMMARY_ABOVE_RULES,
    SUMMARY_HEAD,
    SUMMARY_TAIL,
    first_of_runs,
    last_of_runs,
    runs_by_key,
    summary_text,
)

# Outcomes after which the planned rules are exactly what is in place.
_PLAN_IN_PLACE = ("apply", "replace", "in-sync")


def log_final_state(binary: rb.Binary, plan: FamilyPlan, action: str, unchanged: str | None = None) -> None:
    """The final state of one family: the kernel's -save, or for a large plan that is
    in place, the summary.  `unchanged`: the survey's dump when this run wrote nothing
    to the family (it is still current, so no second -save is needed)."""
    count = plan.count()
    if action in _PLAN_IN_PLACE and count > SUMMARY_ABOVE_RULES:
        log.info("final state (IPv%d): %s rules in place, more than %d, so summarised "
                 "(`%s` in the pod's namespace lists every rule):\n%s", plan.family, f"{count:,}",
                 SUMMARY_ABOVE_RULES, binary.save, summary_text(plan))
        return
    final = unchanged if unchanged is not None else rb.save(binary)
    log.info("final %s state (IPv%d):\n%s", binary.save, plan.family, final.rstrip())


def log_final_nft(written: str, ruleset: Callable[[], str]) -> None:
    """The final state in native nftables mode: `nft list ruleset` (`ruleset`), or for
    more than SUMMARY_ABOVE_RULES rules, the summary of `written` (the `nft -f` input,
    which the kernel committed as one transaction)."""
    rules = [line for line in written.splitlines() if line.startswith("add rule ")]
    if len(rules) <= SUMMARY_ABOVE_RULES:
        log.info("final nft ruleset:\n%s", ruleset().rstrip())
        return
    log.info("final nftables state: %s rules written by one `nft -f` transaction, more than %d, so summarised "
             "(`nft list ruleset` in the pod's namespace lists every rule):\n%s", f"{len(rules):,}",
             SUMMARY_ABOVE_RULES, nft_summary(rules))


def nft_summary(rules: list[str]) -> str:
    """`add rule inet TABLE CHAIN ...` lines, per table the rule count per chain, then
    each chain's rules: all up to SUMMARY_HEAD + SUMMARY_TAIL, else the first and last."""
    runs = runs_by_key(tuple(line.split(" ", 5)[2:5]) for line in rules)
    shown = SUMMARY_HEAD + SUMMARY_TAIL
    out: list[str] = []
    for table in dict.fromkeys(key[:2] for key in runs):
        chains = [key for key in runs if key[:2] == table]
        counts = {key: sum(end - start for start, end in runs[key]) for key in chains}
        out.append(f"{' '.join(table)}  (rules per chain: {', '.join(f'{k[2]} {n:,}' for k, n in counts.items())})")
        for key in chains:
            if counts[key] <= shown:
                out += first_of_runs(rules, runs[key], shown)
                continue
            out += first_of_runs(rules, runs[key], SUMMARY_HEAD)
            out.append(f"# ... {counts[key] - shown:,} more rules of {key[2]} ...")
            out += last_of_runs(rules, runs[key], SUMMARY_TAIL)
    return "\n".join(out)
