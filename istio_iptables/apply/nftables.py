"""Istio's native nftables mode, orchestrated: one `nft -f` transaction, then the
::6 address and TPROXY routes, with the previous tables put back if those fail.

One capture per namespace: iptables rules of ours (either family, either flavour) are
refused, or with --reconcile removed in the same run; --cleanup-only removes both
modes' rules before the shared routes and ::6 go.
"""

from __future__ import annotations

from istio_iptables import logs as log
from istio_iptables.apply import ApplyError
from istio_iptables.apply.final_log import log_final_nft
from istio_iptables.apply.undo import Undo
from istio_iptables.kernel import netlink
from istio_iptables.kernel.nft import apply_nft, cleanup_nft, istio_tables_text, nft_ruleset
from istio_iptables.model.config import CaptureConfig, RunOptions
from istio_iptables.model.hostfacts import HostFacts
from istio_iptables.model.iptables_plan import Plan
from istio_iptables.model.nft_plan import TABLES, build_nft_rules, cleanup_text, render_parts


def execute_native(capture: CaptureConfig, plan: Plan, run: RunOptions, facts: HostFacts) -> None:
    """Istio's native nftables mode: our three inet tables are deleted and rewritten in
    one `nft -f` transaction, so a re-run (same or other flags) replaces ours and only
    ours; other tables are never touched."""
    from istio_iptables.apply.iptables import iptables_captures, write_families

    works = iptables_captures(plan)
    if works and not (run.cleanup_only or run.reconcile):
        where = ", ".join(f"IPv{w.family} in {w.binary.describe()}" for w in works)
        raise ApplyError(f"this namespace already holds an iptables capture of ours ({where}); refusing to add "
                         "a second capture in nftables. Re-run with --reconcile to replace it, or remove it with "
                         "--cleanup-only (without --native-nftables); nothing was changed")
    for work in works:
        log.info("IPv%d: removing the iptables capture via %s", work.family, work.binary.restore)
    undo = Undo()
    try:
        write_families(works, run, undo)
        if run.cleanup_only:
            remove_native(undo)
            log.info("removed tables %s", ", ".join(f"inet {t}" for t in TABLES))
            from istio_iptables.apply.system import cleanup_system_steps

            cleanup_system_steps(capture)
            return
        _undoable(undo)
        # Nothing in nf_tables yet (a fresh pod): what nft commits is then all there is,
        # and the final log needs no `nft list ruleset` (see apply/final_log.py).
        fresh = not works and netlink.nft_tables(netlink.NFPROTO_ANY) == []
        written = build_nft_rules(capture, facts)
        text = render_parts(written)
        apply_nft(cleanup_text() + text)
        log.info("nft: applied tables %s via nft -f", ", ".join(f"inet {t}" for t in TABLES))
        if plan.system_steps():  # none in the usual pod (REDIRECT, no ::6): apply/system.py unimported, ~0.4 M
            from istio_iptables.apply.system import add_system_steps_undoable

            add_system_steps_undoable(plan, undo)
    except Exception as err:
        raise ApplyError(f"{err}; {undo.run()}") from None
    log_final_nft(written, text, None if fresh else nft_ruleset)


def native_tables(present: list[str] | None) -> list[str]:
    """Istio's native tables among `present`, the inet tables a netlink dump found here
    (None: the kernel would not say, so nft is asked, when it is there)."""
    if present is None:
        from istio_iptables.kernel.iptables_restore import which

        if which("nft") is None:
            return []
        text = istio_tables_text()
        return [t for t in TABLES if f"table inet {t} " in text]
    return [t for t in TABLES if t in present]


def remove_native(undo: Undo) -> None:
    """Delete Istio's native tables in one transaction; the undo puts them back."""
    _undoable(undo)
    cleanup_nft()


def _undoable(undo: Undo) -> None:
    """Before our native tables change: the undo that puts them back as they are now."""
    before = istio_tables_text()
    undo.add(lambda: _put_back(before))


def _put_back(before: str) -> bool:
    """Our native tables as they were (nothing else is named); False when unchanged."""
    if istio_tables_text() == before:
        return False
    apply_nft(cleanup_text() + before)
    return True
