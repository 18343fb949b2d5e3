"""The iptables mode, orchestrated: detect, decide, write, roll back.

Per family: detect the binary and take one `-save` dump (the re-run check and the
rollback snapshot); decide apply / in-sync / replace / clean, refusing drift without
--reconcile before anything is written; write each family with one
`iptables-restore --noflush` (or python-iptables); then the ::6 address and TPROXY
routes.  Any failure restores the snapshot of every table already written.
"""

from __future__ import annotations

from istio_iptables import logs as log
from istio_iptables.apply.errors import ApplyError
from istio_iptables.apply.final_log import log_final_state
from istio_iptables.apply.system import add_system_steps, cleanup_system_steps, undo_system_steps
from istio_iptables.kernel import iptables_restore as rb
from istio_iptables.model import iptables_render as render
from istio_iptables.model import iptables_state as state
from istio_iptables.model.config import CaptureConfig, RunOptions
from istio_iptables.model.iptables_plan import FamilyPlan, Plan, RouteStep, Rule


class FamilyWork:
    """What one family needs: its binary, its state before the run, and the decision."""

    def __init__(self, family: int, binary: rb.Binary, before: str, current: state.IptablesState,
                 plan: FamilyPlan) -> None:
        self.family = family
        self.binary = binary
        self.before = before
        self.current = current
        self.plan = plan
        self.action = "apply"  # apply | in-sync | replace | clean | none | drift
        self.reason = ""
        self.text = ""
        self.removals: list[Rule] = []

    @property
    def tables(self) -> list[str]:
        return [line[1:].strip() for line in self.text.splitlines() if line.startswith("*")]


def execute_iptables(capture: CaptureConfig, plan: Plan, run: RunOptions) -> None:
    """Apply, re-check or clean up the iptables rules of every planned family."""
    forced = "legacy" if run.backend == "libiptc" else run.force_iptables_binary
    works = _survey(plan, run, forced)
    if run.backend == "libiptc":
        _refuse_libiptc_on_nft(works)
    for work in works:
        _decide(work, run)
    drifted = [w for w in works if w.action == "drift"]
    if drifted:
        reasons = "; ".join(f"IPv{w.family}: {w.reason}" for w in drifted)
        raise ApplyError(f"rules from an earlier run differ from this plan ({reasons}); "
                         "nothing was changed. Re-run with --reconcile to replace them, "
                         "or --cleanup-only to remove them")
    for work in works:
        log.info("IPv%d: %s via %s%s", work.family, work.action, _backend_name(work, run),
                 f" ({work.reason})" if work.reason else "")
    _write_all(works, plan, capture, run)
    for work in works:
        log_final_state(work.binary, work.plan, work.action)


def _backend_name(work: FamilyWork, run: RunOptions) -> str:
    return "python-iptables (libiptc, legacy)" if run.backend == "libiptc" else work.binary.restore


def _survey(plan: Plan, run: RunOptions, forced: str) -> list[FamilyWork]:
    """Detect binaries and dump the current rules, once per family."""
    works: list[FamilyWork] = []
    for family_plan in plan.families:
        binary, before = rb.detect(family_plan.family, forced)
        log.info("IPv%d: using %s", family_plan.family, binary.describe())
        works.append(FamilyWork(family_plan.family, binary, before, state.parse_save(before), family_plan))
    if run.cleanup_only and plan.v6 is None:
        # Clean IPv6 too when an earlier run wrote it and ip6tables works here.
        try:
            binary, before = rb.detect(6, forced)
        except rb.IptablesError:
            return works
        current = state.parse_save(before)
        if current.has_istio():
            works.append(FamilyWork(6, binary, before, current, FamilyPlan(6, ())))
    return works


def _refuse_libiptc_on_nft(works: list[FamilyWork]) -> None:
    """python-iptables writes legacy tables only; refuse where iptables-nft holds rules."""
    from istio_iptables.kernel.netlink import nft_has_tables

    for work in works:
        if nft_has_tables(work.family) is False:
            continue  # nf_tables is empty here: nothing to hide rules from
        nft = rb.Binary(work.family, "nft")
        try:
            nft_state = state.parse_save(rb.save(nft))
        except rb.IptablesError:
            continue
        if any(t.rules or t.istio_chains() for t in nft_state.tables.values()):
            raise ApplyError(f"--backend libiptc writes iptables-legacy tables, but this namespace's IPv{work.family} "
                             "rules live in iptables-nft; rules written now would be invisible to "
                             f"{nft.save}. Use --backend restore (the default)")


def _decide(work: FamilyWork, run: RunOptions) -> None:
    residue = work.current.has_istio()
    if run.cleanup_only:
        work.removals = _existing_non_hooks(work)
        work.action = "clean" if residue or work.removals else "none"
    elif not residue:
        work.action = "apply"
    else:
        diffs = state.structural_differences(work.plan, work.current)
        if not diffs and not rb.check(work.binary, state.check_text(work.plan.rules)):
            diffs = ["a rule differs from the plan"]
        if diffs:
            work.reason = "; ".join(diffs[:3])
            work.action = "replace" if run.reconcile else "drift"
        else:
            work.action = "replace" if run.force_apply else "in-sync"
            work.reason = "already in place" if work.action == "in-sync" else "--force-apply"
    if work.action == "replace":
        work.removals = _existing_non_hooks(work)
    if work.action in ("replace", "clean"):
        new_rules = render.restore_text(work.plan) if work.action == "replace" else ""
        work.text = state.merge_restore(state.cleanup_lines(work.current, work.removals), new_rules)
    elif work.action == "apply":
        work.text = render.restore_text(work.plan)


def _existing_non_hooks(work: FamilyWork) -> list[Rule]:
    """Our rules in built-in chains that are present now (checked by the kernel)."""
    candidates = state.builtin_non_hooks(work.plan)
    if not candidates or rb.check(work.binary, state.check_text(candidates)):
        return candidates
    return [r for r in candidates if rb.check(work.binary, state.check_text([r]))]


def _write_all(works: list[FamilyWork], plan: Plan, capture: CaptureConfig, run: RunOptions) -> None:
    written: list[FamilyWork] = []
    added_routes: list[RouteStep] = []
    added_address = False
    try:
        # IPv6 first: it is the family that fails in the field (#53147), and failing
        # before IPv4 is written leaves nothing to roll back.
        for work in sorted(works, key=lambda w: -w.family):
            if work.text:
                written.append(work)
                _write_family(work, run)
        if run.cleanup_only:
            cleanup_system_steps(capture)
            return
        added_address = add_system_steps(plan, added_routes)
    except Exception as err:
        failure = _rollback(written, added_routes, added_address)
        raise ApplyError(f"{err}; {failure}") from None


def _write_family(work: FamilyWork, run: RunOptions) -> None:
    if run.backend != "libiptc":
        rb.restore(work.binary, work.text, what=f"the IPv{work.family} {work.action}")
        return
    from istio_iptables.kernel import libiptc

    if work.action in ("replace", "clean"):
        hooks = [Rule(t, c, tuple(spec.split())) for t, ts in work.current.tables.items()
                 for c, spec in ts.jumps_into_istio()]
        chains = [(t, c) for t, ts in work.current.tables.items() for c in ts.istio_chains()]
        libiptc.delete_rules(work.family, [*hooks, *work.removals], chains)
    if work.action in ("replace", "apply"):
        libiptc.apply_rules(work.family, work.plan.chains(), work.plan.rules)


def _rollback(written: list[FamilyWork], routes: list[RouteStep], address: bool) -> str:
    """Put back what this run changed; returns a sentence for the error message."""
    problems: list[str] = []
    changed = bool(routes) or address
    for work in written:
        if _unchanged(work):
            continue
        changed = True
        try:
            rb.restore(work.binary, state.snapshot_text(work.before, work.tables), noflush=False,
                       what="the rollback")
            _drop_new_nft_tables(work)
        except rb.IptablesError as err:
            problems.append(str(err))
    problems += undo_system_steps(routes, address)
    if problems:
        return "ROLLBACK INCOMPLETE: " + "; ".join(problems)
    if not changed:
        return "nothing was changed (the namespace is as it was before this run)"
    return "the namespace was restored to its state before this run"


def _drop_new_nft_tables(work: FamilyWork) -> None:
    """iptables-nft creates a table on first use and no iptables command deletes one:
    after the snapshot is back, delete (with nft, when installed) the tables this run
    created, so that the ruleset is as it was down to the table list."""
    if work.binary.flavour != "nft" or rb.which("nft") is None:
        return
    from istio_iptables.kernel.spawn import run

    family = "ip" if work.family == 4 else "ip6"
    for table in work.tables:
        if table not in work.current.tables:
            run(["nft", "delete", "table", family, table], timeout=30)


def _unchanged(work: FamilyWork) -> bool:
    """Whether the tables this run tried to write still hold what they held before
    (e.g. the restore was refused outright): then there is nothing to roll back."""
    try:
        now = rb.save(work.binary)
    except rb.IptablesError:
        return False
    return _comparable(now, work.tables) == _comparable(work.before, work.tables)


def _comparable(save_text: str, tables: list[str]) -> str:
    """A table subset of a dump without comments and packet counters."""
    text = state.snapshot_text(save_text, tables)
    return "\n".join(line.split(" [")[0] if line.startswith(":") else line for line in text.splitlines())


