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
from typing import TYPE_CHECKING

from istio_iptables import logs as log
from istio_iptables.kernel import iptables_restore as rb
from istio_iptables.model.iptables_plan import FamilyPlan

if TYPE_CHECKING:  # the nft model is imported by the native mode only
    from istio_iptables.model.nft_plan import NftPart
from istio_iptables.model.iptables_render import SUMMARY_ABOVE_RULES, summary_text

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


def log_final_nft(written: list[NftPart], ruleset: Callable[[], str]) -> None:
    """The final state in native nftables mode: `nft list ruleset` (`ruleset`), or for
    more than SUMMARY_ABOVE_RULES rules, the summary of the planned rules `written` by
    the `nft -f` transaction (which the kernel committed as a whole)."""
    from istio_iptables.model.nft_plan import nft_summary, rule_count

    count = rule_count(written)
    if count <= SUMMARY_ABOVE_RULES:
        log.info("final nft ruleset:\n%s", ruleset().rstrip())
        return
    log.info("final nftables state: %s rules written by one `nft -f` transaction, more than %d, so summarised "
             "(`nft list ruleset` in the pod's namespace lists every rule):\n%s", f"{count:,}",
             SUMMARY_ABOVE_RULES, nft_summary(written))
