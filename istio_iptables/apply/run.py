"""Apply a plan inside the pod's network namespace: the entry point of a real run.

Enter the namespace (if asked), read the host facts, build the plan, check that
named owners exist, then hand over to the iptables mode (apply/iptables.py) or the
native nftables mode (apply/nftables.py), and finally run Istio's validation probe if asked.
Every failure becomes one log line and an exit status; nothing escapes as a traceback.
"""

from __future__ import annotations

import time

from istio_iptables import logs as log
from istio_iptables.apply import ApplyError
from istio_iptables.kernel import iptables_restore
from istio_iptables.model import hostfacts
from istio_iptables.model.config import CaptureConfig, ConfigError, RunOptions, is_number
from istio_iptables.model.constants import IPV4_INBOUND_PASSTHROUGH_ADDRESS
from istio_iptables.model.iptables_plan import build_plan

EXIT_FAILED = 1
EXIT_VALIDATION = 126


def run_apply(capture: CaptureConfig, run: RunOptions) -> int:
    """Apply (or clean up) and optionally validate; returns the exit status."""
    started = time.monotonic()
    if not run.skip_rule_apply or run.cleanup_only or run.run_validation:
        _check_owners_resolve(capture)  # bad input: one line, before anything is logged or touched
    need_dns = capture.needs_nameservers
    # resolv.conf is a file of this mount namespace, not of the network namespace: read
    # (and refused, if it is not a readable regular file) before anything is entered or logged.
    nameservers = hostfacts.read_nameservers(run.resolv_conf) if need_dns else None
    if run.network_namespace:
        from istio_iptables.kernel.netns import NetnsError, enter

        try:
            log.info("entering network namespace %s", enter(run.network_namespace))
        except NetnsError as err:
            if err.bad_input:  # not a namespace file: a usage error, exit 2, nothing touched
                raise ConfigError("--network-namespace", run.network_namespace, str(err)) from None
            log.error("%s", err)
            return EXIT_FAILED
    facts = hostfacts.gather(run.ipv6, capture.dual_stack, need_dns, run.resolv_conf, nameservers)
    plan = build_plan(capture, facts)
    log.info("host: ipv6=%s nameservers=%s", facts.ipv6, list(facts.nameservers_v4 + facts.nameservers_v6))
    if not run.skip_rule_apply or run.cleanup_only:
        from istio_iptables.kernel import nslock

        try:
            lock = nslock.acquire()  # from the survey to the last write; see kernel/nslock.py
        except (nslock.LockTimeout, OSError) as err:
            log.error("%s", err)
            return EXIT_FAILED
        try:
            if run.native_nftables:
                from istio_iptables.apply.nftables import execute_native

                execute_native(capture, plan, run, facts)
            else:
                from istio_iptables.apply.iptables import execute_iptables

                execute_iptables(capture, plan, run)
        except (ApplyError, iptables_restore.IptablesError) as err:
            log.error("%s", err)
            return EXIT_FAILED
        except Exception as err:  # an init container must say why it failed, not dump a traceback
            log.error("unexpected %s: %s", type(err).__name__, err)
            return EXIT_FAILED
        finally:
            lock.release()
    log.info("done in %.0f ms", (time.monotonic() - started) * 1000)
    if run.run_validation and not run.cleanup_only:
        from istio_iptables.apply.validation import validate

        if not validate(capture, run):
            log.error("iptables validation failed: traffic to %s:%d was not captured; "
                      "the workload is not ready for Istio", IPV4_INBOUND_PASSTHROUGH_ADDRESS, run.probe_port)
            return EXIT_VALIDATION
        log.info("validation succeeded")
    return 0


def _check_owners_resolve(capture: CaptureConfig) -> None:
    """Names in -u/-g/owner groups must exist here, or iptables fails half-way."""
    for uid in capture.proxy_uids:
        if not is_number(uid):
            import pwd  # only for names: numeric ids (the usual -u 1337) need no lookup

            try:
                pwd.getpwnam(uid)
            except KeyError:
                raise ConfigError("-u/--proxy-uid", uid, "no such user in this container") from None
    for gid in (*capture.proxy_gids, *capture.owner_groups.values):
        if not is_number(gid):
            import grp  # only for names (~0.3 M instructions to import)

            try:
                grp.getgrnam(gid)
            except KeyError:
                raise ConfigError("-g/--proxy-gid or $ISTIO_OUTBOUND_OWNER_GROUPS", gid,
                                  "no such group in this container") from None
