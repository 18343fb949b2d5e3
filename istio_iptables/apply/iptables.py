"""The iptables mode, orchestrated: survey, decide, write, roll back.

Per family: read the dumps of both flavours (cheaply: /proc and a netlink probe say
when a flavour holds nothing) and choose where to write; decide apply / in-sync /
replace / clean by comparing our chains with the plan in order, refusing drift without
--reconcile before anything is written; write each family with one
`iptables-restore --noflush` (or python-iptables); then the ::6 address and TPROXY
routes.  Any failure undoes what this run wrote, and only that (apply/undo.py).

All of it runs under the namespace lock (kernel/nslock.py) taken by run_apply, so the
survey is still true when the write happens: our chains cannot appear in between.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from istio_iptables import logs as log
from istio_iptables.apply import ApplyError
from istio_iptables.apply.final_log import log_final_state
from istio_iptables.apply.undo import Undo
from istio_iptables.kernel import iptables_restore as rb
from istio_iptables.kernel import netlink
from istio_iptables.model import iptables_render
from istio_iptables.model.config import CaptureConfig, RunOptions
from istio_iptables.model.iptables_dump import IptablesState, parse_save
from istio_iptables.model.iptables_plan import BUILTIN_CHAINS_AND_VERDICTS, FamilyPlan, Plan, Rule

if TYPE_CHECKING:
    from istio_iptables.model import iptables_state as state

FLAVOURS = ("legacy", "nft")


class FamilyWork:
    """What one family in one flavour needs: its binary, its state before the run, the
    plan, and the decision."""

    def __init__(self, binary: rb.Binary, before: str, plan: FamilyPlan, resolve: state.Resolver,
                 parsed: IptablesState | None = None,
                 others: dict[str, IptablesState] | None = None) -> None:
        self.family = binary.family
        self.binary = binary
        self.before = before
        self.current = parsed if parsed is not None else parse_save(before)
        self.others = others or {}  # the survey's parsed dumps of the other flavours
        self.plan = plan
        self.resolve = resolve
        self._comparison: state.Comparison | None = None
        self.action = "apply"  # apply | in-sync | replace | clean | none | drift
        self.reason = ""
        self.text = ""
        self.non_hooks: list[tuple[str, str, str]] = []
        self.committed: tuple[str, ...] | None = None  # after a failed write: the tables it committed
        # nf_tables tables and chains just before the write (nft flavour): a failed run
        # deletes the empty ones it created, so `nft list ruleset` is as before.
        self.nft_before: tuple[set[str], set[tuple[str, str]]] | None = None

    def note_nft_objects(self) -> None:
        """Remember the nf_tables tables and chains of this family before writing to it."""
        if self.binary.flavour != "nft":
            return
        if not self.before:
            self.nft_before = (set(), set())  # rb.dump read nothing: netlink showed no table
            return
        tables = netlink.nft_tables(netlink.NFPROTO[self.family])
        chains = netlink.nft_chains(self.family)
        if tables is not None and chains is not None:
            self.nft_before = (set(tables), chains)

    @property
    def comparison(self) -> state.Comparison:
        """The plan set against the survey; built on first use (a fresh apply needs none,
        nor imports iptables_state: ~0.5 M instructions of every pod start)."""
        if self._comparison is None:
            from istio_iptables.model import iptables_state as state

            self._comparison = state.Comparison(self.plan, self.current, self.resolve)
        return self._comparison


def execute_iptables(capture: CaptureConfig, plan: Plan, run: RunOptions) -> None:
    """Apply, re-check or clean up the iptables rules of every planned family."""
    works = survey(plan, _forced_flavour(run), run.cleanup_only)
    if run.backend == "libiptc":
        _refuse_libiptc_on_nft(works)
    native = _native_tables()
    if native and not (run.cleanup_only or run.reconcile):
        raise ApplyError(f"this namespace already holds a --native-nftables capture (inet {', '.join(native)}); "
                         "refusing to add a second capture in iptables. Re-run with --reconcile to replace it, "
                         "or remove it with --native-nftables --cleanup-only; nothing was changed")
    for work in works:
        decide(work, run)
    drifted = [w for w in works if w.action == "drift"]
    if drifted:
        reasons = "; ".join(f"IPv{w.family}: {w.reason}" for w in drifted)
        raise ApplyError(f"rules from an earlier run differ from this plan ({reasons}); "
                         "nothing was changed. Re-run with --reconcile to replace them, "
                         "or --cleanup-only to remove them")
    for work in works:
        log.info("IPv%d: %s via %s%s", work.family, work.action, _backend_name(work, run),
                 f" ({work.reason})" if work.reason else "")
    undo = Undo()
    try:
        write_families(works, run, undo)
        if native:
            from istio_iptables.apply.nftables import remove_native

            log.info("removing the --native-nftables capture (inet %s)", ", ".join(native))
            remove_native(undo)
        if run.cleanup_only:
            from istio_iptables.apply.system import cleanup_system_steps

            cleanup_system_steps(capture)
        elif plan.system_steps():  # none in the usual pod (REDIRECT, no ::6): apply/system.py unimported, ~0.4 M
            from istio_iptables.apply.system import add_system_steps_undoable

            add_system_steps_undoable(plan, undo)
    except Exception as err:
        raise ApplyError(f"{err}; {undo.run()}") from None
    for work in works:
        # A family that held no rules before holds exactly what this run wrote.
        fresh = work.action == "apply" and not work.current.has_rules()
        log_final_state(work.binary, work.plan, work.action, None if work.text else work.before,
                        work.text if fresh else None)


def _native_tables() -> list[str]:
    """Istio's native nftables tables present here.  No inet table at all (a fresh pod,
    any iptables-only pod) is one netlink dump, without importing the nft modules."""
    present = netlink.nft_tables(netlink.NFPROTO_INET)
    if present == []:
        return []
    from istio_iptables.apply.nftables import native_tables

    return native_tables(present)


def check_iptables(plan: Plan, run: RunOptions) -> list[str]:
    """Survey and decide as an apply would, but write nothing: what differs between
    this namespace and the plan (empty when every family holds exactly the plan).
    For the CNI plugin's CHECK."""
    problems: list[str] = []
    for work in survey(plan, _forced_flavour(run), False, quiet=True):
        decide(work, run._replace(cleanup_only=False, reconcile=False, force_apply=False))
        if work.action == "apply" and work.plan.parts:
            problems.append(f"IPv{work.family}: the capture rules are missing")
        elif work.action == "drift":
            problems.append(f"IPv{work.family}: {work.reason}")
    return problems


def _forced_flavour(run: RunOptions) -> str:
    """The flavour the flags force ('' for Istio's detection): libiptc writes legacy."""
    return "legacy" if run.backend == "libiptc" else run.force_iptables_binary


def _backend_name(work: FamilyWork, run: RunOptions) -> str:
    return "python-iptables (libiptc, legacy)" if run.backend == "libiptc" else work.binary.restore


def owner_resolver() -> state.Resolver:
    """Owner names to the ids iptables-save prints (the names were checked to exist)."""
    def resolve(option: str, name: str) -> str:
        import grp
        import pwd

        try:
            if option == "--uid-owner":
                return str(pwd.getpwnam(name).pw_uid)
            return str(grp.getgrnam(name).gr_gid)
        except KeyError:
            return name

    return resolve


def survey(plan: Plan, forced: str, cleanup_only: bool, quiet: bool = False) -> list[FamilyWork]:
    """Per family, where to write (or, for cleanup, every flavour holding ours), with
    the one dump that serves the decision, the comparison and the rollback."""
    resolve = owner_resolver()
    works: list[FamilyWork] = []
    for family_plan in plan.families:
        works += _survey_family(family_plan, forced, cleanup_only, resolve, quiet)
    if cleanup_only and plan.v6 is None:
        # Clean IPv6 too when an earlier run wrote it and ip6tables works here.
        try:
            found = _survey_family(FamilyPlan(6, ()), forced, True, resolve, True)
        except rb.IptablesError:
            found = []
        works += [w for w in found if w.current.has_ours()]
    return works


def _survey_family(plan: FamilyPlan, forced: str, cleanup_only: bool, resolve: state.Resolver,
                   quiet: bool = False) -> list[FamilyWork]:
    """Our own chains decide first: a re-run goes to the flavour that holds them.  Else
    Istio's rule: legacy when it holds rules (not merely empty tables, which a read-only
    `iptables-legacy -L` creates), else nft when it works, else plain `iptables`."""
    family = plan.family
    dumps: dict[str, str] = {}
    for flavour in FLAVOURS:
        text = rb.dump(rb.Binary(family, flavour))
        if text is not None:
            dumps[flavour] = text
    parsed = {f: parse_save(text) for f, text in dumps.items()}
    holders = [f for f, current in parsed.items() if current.has_ours()]
    if forced:
        binary = rb.Binary(family, forced)
        rb.require(binary)
        others = [f for f in holders if f != forced]
        if others and not cleanup_only:
            raise ApplyError(f"IPv{family} rules of an earlier run are in iptables-{others[0]}; "
                             f"--force-iptables-binary {forced} would add a second capture. Remove them with "
                             f"--cleanup-only --force-iptables-binary {others[0]} first; nothing was changed")
        chosen = [forced] + (others if cleanup_only else [])
    elif len(holders) > 1 and not cleanup_only:
        base = "iptables" if family == 4 else "ip6tables"
        raise ApplyError(f"IPv{family} rules of ours are in both {base}-legacy and {base}-nft: two captures. "
                         "Remove both with --cleanup-only, then apply again; nothing was changed")
    elif holders:
        chosen = holders
    elif "legacy" in parsed and parsed["legacy"].has_rules():
        chosen = ["legacy"]
    elif "nft" in dumps:
        chosen = ["nft"]
    else:
        chosen = [""]
    works = []
    for flavour in chosen:
        binary = rb.Binary(family, flavour)
        text = dumps.get(flavour)
        if text is None:
            rb.require(binary)
            text = rb.save(binary)
        if not quiet:
            log.info("IPv%d: using %s", family, binary.describe())
        elsewhere = {f: current for f, current in parsed.items() if f != flavour}
        works.append(FamilyWork(binary, text, plan, resolve, parsed.get(flavour), elsewhere))
    return works


def _refuse_libiptc_on_nft(works: list[FamilyWork]) -> None:
    """python-iptables writes legacy tables only; refuse where iptables-nft holds rules
    (as the survey read them)."""
    for work in works:
        nft = work.others.get("nft")
        if nft is not None and nft.has_rules():
            raise ApplyError(f"--backend libiptc writes iptables-legacy tables, but this namespace's IPv{work.family} "
                             "rules live in iptables-nft; rules written now would be invisible to "
                             f"{rb.Binary(work.family, 'nft').save}. Use --backend restore (the default)")


def decide(work: FamilyWork, run: RunOptions) -> None:
    """What to do with one family: the in-order comparison replaces a kernel-side check."""
    ours = work.current.has_ours()
    if run.cleanup_only:
        prepare_cleanup(work)
        return
    if not ours:
        work.action = "apply"
    else:
        diffs = work.comparison.differences()
        if diffs:
            work.reason = "; ".join(diffs[:3])
            work.action = "replace" if run.reconcile else "drift"
        else:
            work.action = "replace" if run.force_apply else "in-sync"
            work.reason = "already in place" if work.action == "in-sync" else "--force-apply"
    if work.action == "replace":
        work.non_hooks = work.comparison.non_hooks_present()
        work.text = _cleanup_then(work, iptables_render.restore_text(work.plan))
    elif work.action == "apply":
        work.text = iptables_render.restore_text(work.plan)


def prepare_cleanup(work: FamilyWork) -> None:
    """Remove every hook and chain of ours, and the plan's rules in built-in chains."""
    work.non_hooks = work.comparison.non_hooks_present()
    work.action = "clean" if work.current.has_ours() or work.non_hooks else "none"
    if work.action == "clean":
        work.text = _cleanup_then(work, "")


def _cleanup_then(work: FamilyWork, plan_text: str) -> str:
    """One restore input: the removal of our rules the survey found (work.non_hooks
    included), then `plan_text`, each table in one commit."""
    from istio_iptables.model import iptables_state as state

    return state.merge_restore(state.cleanup_lines(work.current, work.non_hooks), plan_text)


def iptables_captures(plan: Plan) -> list[FamilyWork]:
    """Every family and flavour holding chains of ours, prepared for cleanup: what the
    native nftables mode refuses, replaces (--reconcile) or cleans.  Without iptables
    binaries there can be no such capture."""
    try:
        works = [w for w in survey(plan, "", True, quiet=True) if w.current.has_ours()]
    except rb.IptablesError:
        return []
    for work in works:
        prepare_cleanup(work)
    return works


def write_families(works: list[FamilyWork], run: RunOptions, undo: Undo) -> None:
    """Write every family that has something to write, IPv6 first: it is the family
    that fails in the field (istio/istio#53147), and failing first leaves nothing to roll back."""
    for work in sorted(works, key=lambda w: -w.family):
        if work.text:
            work.note_nft_objects()
            undo.add(lambda work=work: _roll_back(work))  # type: ignore[misc]
            try:
                _write_family(work, run)
            except rb.IptablesError as err:
                work.committed = err.committed
                raise


def _write_family(work: FamilyWork, run: RunOptions) -> None:
    if run.backend != "libiptc":
        rb.restore(work.binary, work.text, what=f"the IPv{work.family} {work.action}")
        return
    from istio_iptables.kernel import libiptc

    if work.action in ("replace", "clean"):
        hooks = [Rule(t, c, tuple(spec.split())) for t, ts in work.current.tables.items()
                 for c, spec in ts.hooks()]
        found = [Rule(t, c, tuple(spec.split())) for t, c, spec in work.non_hooks]
        chains = [(t, c) for t, ts in work.current.tables.items() for c in ts.our_chains()]
        libiptc.delete_rules(work.family, [*hooks, *found], chains)
    if work.action in ("replace", "apply"):
        libiptc.apply_rules(work.family, work.plan.chains(), work.plan.rules)


def _roll_back(work: FamilyWork) -> bool:
    """Put our part of this family back as the survey saw it, by inverse operations on
    what differs now (see state.rollback_text), in the tables this run may have written;
    returns whether anything had changed."""
    if work.committed == ():
        return False  # the restore failed before any commit: nothing of this family was written
    from istio_iptables.model import iptables_state as state

    now = parse_save(rb.save(work.binary))
    text = state.rollback_text(work.plan, work.current, now, work.resolve, work.committed)
    if text:
        rb.restore(work.binary, text, what="the rollback")
    dropped = _drop_created_nft_objects(work) if work.nft_before is not None else False
    return bool(text) or dropped


def _drop_created_nft_objects(work: FamilyWork) -> bool:
    """iptables-nft creates tables and base chains on first use, and no iptables
    command deletes them: delete (with nft, when installed) the ones this run created
    that hold no rule, so `nft list ruleset` is as it was."""
    assert work.nft_before is not None
    tables_before, chains_before = work.nft_before
    tables_now = netlink.nft_tables(netlink.NFPROTO[work.family])
    chains_now = netlink.nft_chains(work.family)
    if tables_now is None or chains_now is None or rb.which("nft") is None:
        return False
    new_chains = chains_now - chains_before
    new_tables = set(tables_now) - tables_before
    if not new_chains and not new_tables:
        return False
    saved = parse_save(rb.save(work.binary))
    doomed = {(t, c) for t, c in new_chains
              if c in BUILTIN_CHAINS_AND_VERDICTS and not saved.table(t).rules_in(c)}
    family = "ip" if work.family == 4 else "ip6"
    lines = [f"delete chain {family} {t} {c}" for t, c in sorted(doomed)]
    lines += [f"delete table {family} {t}" for t in sorted(new_tables)
              if all((tt, c) in doomed for tt, c in chains_now if tt == t)]
    if not lines:
        return False
    from istio_iptables.kernel.nft import apply_nft

    apply_nft("".join(line + "\n" for line in lines))
    return True
