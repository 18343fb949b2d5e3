"""Istio's native nftables mode, orchestrated: one `nft -f` transaction, then the
::6 address and TPROXY routes, with the previous tables put back if those fail."""

from __future__ import annotations

from istio_iptables import logs as log
from istio_iptables.apply.errors import ApplyError
from istio_iptables.apply.final_log import log_final_nft
from istio_iptables.apply.system import add_system_steps, cleanup_system_steps, undo_system_steps
from istio_iptables.kernel.nft import NftError, apply_nft, cleanup_nft, istio_tables_text, nft_ruleset
from istio_iptables.model.config import CaptureConfig, RunOptions
from istio_iptables.model.hostfacts import HostFacts
from istio_iptables.model.iptables_plan import Plan, RouteStep
from istio_iptables.model.nft_plan import TABLES, cleanup_text, render_nft


def execute_native(capture: CaptureConfig, plan: Plan, run: RunOptions, facts: HostFacts) -> None:
    """Istio's native nftables mode: our three inet tables are deleted and rewritten in
    one `nft -f` transaction, so a re-run (same or other flags) replaces ours and only
    ours; other tables are never touched."""
    try:
        if run.cleanup_only:
            cleanup_nft()
        else:
            before = istio_tables_text()
            written = render_nft(capture, facts)
            apply_nft(cleanup_text() + written)
    except NftError as err:
        raise ApplyError(f"{err}; nft commits all or nothing, so nothing was changed") from None
    if run.cleanup_only:
        log.info("removed tables %s", ", ".join(f"inet {t}" for t in TABLES))
        cleanup_system_steps(capture)
        return
    log.info("nft: applied tables %s via nft -f", ", ".join(f"inet {t}" for t in TABLES))
    added_routes: list[RouteStep] = []
    try:
        add_system_steps(plan, added_routes)
    except Exception as err:
        problems: list[str] = []
        try:
            apply_nft(cleanup_text() + before)
        except Exception as undo:
            problems.append(str(undo))
        problems += undo_system_steps(added_routes, False)
        outcome = ("ROLLBACK INCOMPLETE: " + "; ".join(problems)) if problems else \
            "the namespace was restored to its state before this run"
        raise ApplyError(f"{err}; {outcome}") from None
    log_final_nft(written, nft_ruleset)
