"""Does the namespace hold exactly the planned capture?  Surveys and decides as an
apply would, and writes nothing: the CNI plugin's CHECK, and anything else that must
answer "drifted or not" without changing the namespace."""

from istio_iptables.model import hostfacts
from istio_iptables.model.config import CaptureConfig, RunOptions


def differences(capture: CaptureConfig, run: RunOptions) -> list[str]:
    """What differs between the current namespace and the plan, in words (empty: in
    sync).  iptables mode compares every family's rules in order (apply/iptables);
    native nftables mode checks that our tables exist (their rules are not compared);
    both check the ::6 address and TPROXY's policy routing when the plan adds them."""
    from istio_iptables.model.iptables_plan import build_plan

    facts = hostfacts.gather(run.ipv6, capture.dual_stack, capture.needs_nameservers, run.resolv_conf)
    plan = build_plan(capture, facts)
    if run.native_nftables:
        problems = _missing_nft_tables(capture, facts)
    else:
        from istio_iptables.apply.iptables import check_iptables

        problems = check_iptables(plan, run)
    if plan.routes:
        from istio_iptables.kernel.routes import missing_routes

        problems += [f"missing: {step.describe()}" for step in missing_routes(plan.routes)]
    if plan.addresses:
        from istio_iptables.kernel.netlink import interface_addresses
        from istio_iptables.model.constants import IPV6_INBOUND_PASSTHROUGH, IPV6_INBOUND_PASSTHROUGH_ADDRESS

        if IPV6_INBOUND_PASSTHROUGH_ADDRESS not in {address for _, address in interface_addresses()}:
            problems.append(f"{IPV6_INBOUND_PASSTHROUGH} is missing on lo")
    return problems


def _missing_nft_tables(capture: CaptureConfig, facts: hostfacts.HostFacts) -> list[str]:
    """Istio's native tables the plan writes that this namespace lacks (one netlink dump)."""
    from istio_iptables.apply.nftables import native_tables
    from istio_iptables.kernel import netlink
    from istio_iptables.model.nft_plan import build_nft_rules

    planned = {part.table for part in build_nft_rules(capture, facts)}
    missing = planned - set(native_tables(netlink.nft_tables(netlink.NFPROTO_INET)))
    return [f"nftables table inet {name} is missing" for name in sorted(missing)]
