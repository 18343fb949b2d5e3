"""What the last log lines of an iptables-mode run show: the rules now in place.

Istio logs the full `iptables-save` output.  So does this tool, up to
SUMMARY_ABOVE_RULES rules in a family.  Above that (thousands of `-x` CIDRs) it logs a
summary of what the single restore transaction wrote, which the kernel accepted as a
whole: the rule count per chain, every hook and small chain in full, and the first
and last rules of each big chain.  Reading 10,000 rules back costs iptables-nft-save
about 170 M instructions (more than the interpreter's start with click) and gives a
reader of `kubectl logs` 10,000 lines to scroll past; the full list is one
`iptables-save` away in the pod's namespace.
"""

from __future__ import annotations

from istio_iptables import logs as log
from istio_iptables.kernel import iptables_restore as rb
from istio_iptables.model.iptables_plan import FamilyPlan
from istio_iptables.model.iptables_render import SUMMARY_ABOVE_RULES, summary_text

# Outcomes after which the planned rules are exactly what is in place.
_PLAN_IN_PLACE = ("apply", "replace", "in-sync")


def log_final_state(binary: rb.Binary, plan: FamilyPlan, action: str) -> None:
    """The final state of one family: the kernel's -save, or for a large plan that is
    in place, the summary."""
    if action in _PLAN_IN_PLACE and len(plan.rules) > SUMMARY_ABOVE_RULES:
        log.info("final state (IPv%d): %s rules in place, more than %d, so summarised "
                 "(`%s` in the pod's namespace lists every rule):\n%s", plan.family, f"{len(plan.rules):,}",
                 SUMMARY_ABOVE_RULES, binary.save, summary_text(plan))
        return
    log.info("final %s state (IPv%d):\n%s", binary.save, plan.family, rb.save(binary).rstrip())
