"""Apply a plan inside the pod's network namespace, all or nothing.

The sequence, per run:
  1. enter the namespace (if asked), read host facts, build the plan;
  2. per family, detect the binary and take one `-save` dump: it tells whether our
     chains are already there, and it is the snapshot a rollback restores;
  3. decide per family: apply (clean state), nothing (already in sync), replace
     (drift with --reconcile, or --force-apply), clean (--cleanup-only); drift without
     --reconcile is refused before anything is written;
  4. write each family with one `iptables-restore --noflush` whose table blocks each
     commit atomically (cleanup and new rules of a table share one block), then the
     ::6 address and the TPROXY routes;
  5. if any step fails, restore the snapshot of every table already written (a restore
     without --noflush replaces exactly those tables), remove the routes and address
     this run added, and report the first error.
"""

from __future__ import annotations

import grp
import pwd
import time

from . import hostfacts, netlink, render, state
from . import logs as log
from .backends import restore as rb
from .config import CaptureConfig, ConfigError, RunOptions
from .plan import IPV6_INBOUND_PASSTHROUGH, FamilyPlan, Plan, RouteStep, Rule, build_plan

EXIT_FAILED = 1
EXIT_VALIDATION = 126


class ApplyError(RuntimeError):
    """The apply failed; the namespace was put back as it was (or the message says not)."""


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


def run_apply(capture: CaptureConfig, run: RunOptions) -> int:
    """Apply (or clean up) and optionally validate; returns the exit status."""
    started = time.monotonic()
    if run.network_namespace:
        from .netns import NetnsError, enter

        try:
            log.info("entering network namespace %s", enter(run.network_namespace))
        except NetnsError as err:
            log.error("%s", err)
            return EXIT_FAILED
    need_dns = capture.redirect_dns and not capture.capture_all_dns
    facts = hostfacts.gather(run.ipv6, capture.dual_stack, need_dns, run.resolv_conf)
    plan = build_plan(capture, facts)
    log.info("host: ipv6=%s nameservers=%s", facts.ipv6, list(facts.nameservers_v4 + facts.nameservers_v6))
    if not run.skip_rule_apply or run.cleanup_only:
        _check_owners_resolve(capture)
        try:
            _execute(capture, plan, run, facts)
        except (ApplyError, rb.IptablesError) as err:
            log.error("%s", err)
            return EXIT_FAILED
        except Exception as err:  # an init container must say why it failed, not dump a traceback
            log.error("unexpected %s: %s", type(err).__name__, err)
            return EXIT_FAILED
    log.info("done in %.0f ms", (time.monotonic() - started) * 1000)
    if run.run_validation and not run.cleanup_only:
        from .validation import validate

        if not validate(capture, run):
            log.error("iptables validation failed: traffic to 127.0.0.6:%d was not captured; "
                      "the workload is not ready for Istio", run.probe_port)
            return EXIT_VALIDATION
        log.info("validation succeeded")
    return 0


def _check_owners_resolve(capture: CaptureConfig) -> None:
    """Names in -u/-g/owner groups must exist here, or iptables fails half-way."""
    for uid in capture.proxy_uids:
        if not uid.isdigit():
            try:
                pwd.getpwnam(uid)
            except KeyError:
                raise ConfigError("-u/--proxy-uid", uid, "no such user in this container") from None
    for gid in (*capture.proxy_gids, *capture.owner_groups.values):
        if not gid.isdigit():
            try:
                grp.getgrnam(gid)
            except KeyError:
                raise ConfigError("-g/--proxy-gid or $ISTIO_OUTBOUND_OWNER_GROUPS", gid,
                                  "no such group in this container") from None


def _execute(capture: CaptureConfig, plan: Plan, run: RunOptions, facts: hostfacts.HostFacts) -> None:
    if run.native_nftables:
        _execute_nft(capture, plan, run, facts)
        return
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
        log.info("final %s state (IPv%d):\n%s", work.binary.save, work.family, rb.save(work.binary).rstrip())


def _execute_nft(capture: CaptureConfig, plan: Plan, run: RunOptions, facts: hostfacts.HostFacts) -> None:
    """Istio's native nftables mode: our three inet tables are deleted and rewritten in
    one `nft -f` transaction, so a re-run (same or other flags) replaces ours and only
    ours; other tables are never touched."""
    from .nft import TABLES, cleanup_text, render_nft
    from .nft_apply import NftError, apply_nft, cleanup_nft, nft_ruleset

    try:
        if run.cleanup_only:
            cleanup_nft()
        else:
            before = _nft_tables_text(TABLES)
            apply_nft(cleanup_text() + render_nft(capture, facts))
    except NftError as err:
        raise ApplyError(f"{err}; nft commits all or nothing, so nothing was changed") from None
    if run.cleanup_only:
        log.info("removed tables %s", ", ".join(f"inet {t}" for t in TABLES))
        _cleanup_routes(capture)
        return
    log.info("nft: applied tables %s via nft -f", ", ".join(f"inet {t}" for t in TABLES))
    added_routes: list[RouteStep] = []
    try:
        _add_system_steps(plan, added_routes)
    except Exception as err:
        from .routes import remove_routes

        problems: list[str] = []
        try:
            apply_nft(cleanup_text() + before)
        except Exception as undo:
            problems.append(str(undo))
        try:
            remove_routes(added_routes)
        except Exception as undo:
            problems.append(str(undo))
        outcome = ("ROLLBACK INCOMPLETE: " + "; ".join(problems)) if problems else \
            "the namespace was restored to its state before this run"
        raise ApplyError(f"{err}; {outcome}") from None
    log.info("final nft ruleset:\n%s", nft_ruleset().rstrip())


def _nft_tables_text(tables: tuple[str, ...]) -> str:
    """`nft list table` of each of our tables that exists now (valid `nft -f` input)."""
    from .spawn import run

    parts = []
    for table in tables:
        done = run(["nft", "list", "table", "inet", table], timeout=30)
        if done.returncode == 0:
            parts.append(done.stdout)
    return "".join(parts)


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
    for work in works:
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
            _cleanup_routes(capture)
            return
        added_address = _add_system_steps(plan, added_routes)
    except Exception as err:
        failure = _rollback(written, added_routes, added_address)
        raise ApplyError(f"{err}; {failure}") from None


def _add_system_steps(plan: Plan, added_routes: list[RouteStep]) -> bool:
    """The ::6 address and the TPROXY routes; returns whether the address was added
    (`added_routes` collects the routes as they are added)."""
    added_address = False
    if plan.addresses:
        added_address = netlink.add_ipv6_address(plan.addresses[0].address.split("/")[0])
    if plan.routes:
        from .routes import apply_routes

        try:
            apply_routes(plan.routes, added_routes)
        except Exception:
            if added_address:
                netlink.delete_ipv6_address(plan.addresses[0].address.split("/")[0])
            raise
    return added_address


def _write_family(work: FamilyWork, run: RunOptions) -> None:
    if run.backend != "libiptc":
        rb.restore(work.binary, work.text, what=f"the IPv{work.family} {work.action}")
        return
    from .backends import libiptc

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
        except rb.IptablesError as err:
            problems.append(str(err))
    if routes:
        from .routes import remove_routes

        try:
            remove_routes(routes)
        except Exception as err:
            problems.append(str(err))
    if address:
        try:
            netlink.delete_ipv6_address(IPV6_INBOUND_PASSTHROUGH.split("/")[0])
        except OSError as err:
            problems.append(str(err))
    if problems:
        return "ROLLBACK INCOMPLETE: " + "; ".join(problems)
    if not changed:
        return "nothing was changed (the namespace is as it was before this run)"
    return "the namespace was restored to its state before this run"


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


def _cleanup_routes(capture: CaptureConfig) -> None:
    """Remove the TPROXY routes for this mark/table (any mode) and the ::6 address."""
    steps = [RouteStep("rule", f, capture.tproxy_route_table, capture.tproxy_mark) for f in (4, 6)]
    steps += [RouteStep("route", f, capture.tproxy_route_table) for f in (4, 6)]
    from .routes import remove_routes

    for step in remove_routes(steps):
        log.info("removed: %s", step.describe())
    try:
        if netlink.delete_ipv6_address(IPV6_INBOUND_PASSTHROUGH.split("/")[0]):
            log.info("removed ::6/128 from lo")
    except OSError as err:
        raise ApplyError(f"removing ::6/128 from lo failed: {err}") from None
