"""What the last log lines of a run show: the rules now in place.

Istio logs the full `iptables-save` output.  This tool logs the kernel's `-save` (in
native mode `nft list ruleset`) whenever the namespace held rules before the run: then
only the kernel can say what is there besides ours.  Two cases need no read-back:

- the namespace held no rules at all before the run (every fresh pod): the one
  transaction the kernel accepted as a whole is then exactly what the tables hold, so
  the log shows that text, saying so.  Reading it back would be one more process at
  every pod start (iptables-nft-save ~1.2 ms of CPU, nft ~3 ms: 12-30 ms of start-up
  under cpu 100m) to print the same rules in the kernel's spelling;
- more than SUMMARY_ABOVE_RULES rules (thousands of `-x` CIDRs): a summary of what was
  written, the rule count per chain, every hook and small chain in full, the first and
  last rules of each big chain.  Reading 10,000 rules back costs iptables-nft-save
  about 170 M instructions (more than the interpreter's whole start with click) and
  gives a reader of `kubectl logs` 10,000 lines to scroll past.

Either way the full list is one `iptables-save` (`nft list ruleset`) away in the pod's
namespace, and the log line says so.
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


def log_final_state(binary: rb.Binary, plan: FamilyPlan, action: str, unchanged: str | None = None,
                    written: str | None = None) -> None:
    """The final state of one family: the kernel's -save, or for a large plan that is
    in place, the summary.  `unchanged`: the survey's dump when this run wrote nothing
    to the family (it is still current, so no second -save is needed); `written`: the
    restore text this run committed when the family held no rules before (it is then
    all there is)."""
    count = plan.count()
    if action in _PLAN_IN_PLACE and count > SUMMARY_ABOVE_RULES:
        log.info("final state (IPv%d): %s rules in place, more than %d, so summarised "
                 "(`%s` in the pod's namespace lists every rule):\n%s", plan.family, f"{count:,}",
                 SUMMARY_ABOVE_RULES, binary.save, summary_text(plan))
        return
    if written is not None and unchanged is None:
        log.info("final state (IPv%d): the namespace held no rules before this run, so it holds exactly the rules "
                 "written (`%s` lists them as the kernel does):\n%s", plan.family, binary.save, written.rstrip())
        return
    final = unchanged if unchanged is not None else rb.save(binary)
    log.info("final %s state (IPv%d):\n%s", binary.save, plan.family, final.rstrip())


def log_final_nft(written: list[NftPart], text: str, ruleset: Callable[[], str] | None) -> None:
    """The final state in native nftables mode: `nft list ruleset` (`ruleset`); the
    `text` the one `nft -f` transaction committed when the namespace held no nf_tables
    table before (`ruleset` None); or for more than SUMMARY_ABOVE_RULES rules, the
    summary of the planned rules `written`."""
    from istio_iptables.model.nft_plan import nft_summary, rule_count

    count = rule_count(written)
    if count > SUMMARY_ABOVE_RULES:
        log.info("final nftables state: %s rules written by one `nft -f` transaction, more than %d, so summarised "
                 "(`nft list ruleset` in the pod's namespace lists every rule):\n%s", f"{count:,}",
                 SUMMARY_ABOVE_RULES, nft_summary(written))
    elif ruleset is None:
        log.info("final nftables state: the namespace held no nftables tables before this run, so it holds exactly "
                 "what its one `nft -f` transaction wrote (`nft list ruleset` lists it as the kernel does):\n%s",
                 text.rstrip())
    else:
        log.info("final nft ruleset:\n%s", ruleset().rstrip())
