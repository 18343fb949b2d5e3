"""The steps outside iptables: Istio's ::6 address on lo and TPROXY's policy routing.

Shared by the iptables and the native nftables modes, which both add these after
their rules and must take them back when a later step fails.
"""

from __future__ import annotations

from istio_iptables import logs as log
from istio_iptables.apply import ApplyError
from istio_iptables.apply.undo import Undo
from istio_iptables.kernel import netlink
from istio_iptables.model.config import CaptureConfig
from istio_iptables.model.constants import IPV6_INBOUND_PASSTHROUGH, IPV6_INBOUND_PASSTHROUGH_ADDRESS
from istio_iptables.model.iptables_plan import Plan, RouteStep


def add_system_steps_undoable(plan: Plan, undo: Undo) -> None:
    """The ::6 address and the TPROXY routes, with their inverse registered first: it
    removes exactly the routes and the address this run added, whichever step fails."""
    added_routes: list[RouteStep] = []  # filled by apply_routes as each route lands
    added_address = [False]

    def inverse() -> bool:
        problems = undo_system_steps(added_routes, added_address[0])
        if problems:
            raise ApplyError("; ".join(problems))
        return bool(added_routes) or added_address[0]

    undo.add(inverse)
    if plan.addresses:
        added_address[0] = netlink.add_ipv6_address(IPV6_INBOUND_PASSTHROUGH_ADDRESS)
    if plan.routes:
        from istio_iptables.kernel.routes import apply_routes

        apply_routes(plan.routes, added_routes)


def undo_system_steps(routes: list[RouteStep], address: bool) -> list[str]:
    """Remove these routes and (if `address`) ::6; returns the problems (empty: all undone)."""
    problems: list[str] = []
    if routes:
        from istio_iptables.kernel.routes import remove_routes

        try:
            remove_routes(routes)
        except Exception as err:
            problems.append(str(err))
    if address:
        try:
            netlink.delete_ipv6_address(IPV6_INBOUND_PASSTHROUGH_ADDRESS)
        except OSError as err:
            problems.append(str(err))
    return problems


def cleanup_system_steps(capture: CaptureConfig) -> None:
    """Remove the TPROXY routes for this mark/table (any mode) and the ::6 address."""
    steps = [RouteStep("rule", f, capture.tproxy_route_table, capture.tproxy_mark) for f in (4, 6)]
    steps += [RouteStep("route", f, capture.tproxy_route_table) for f in (4, 6)]
    from istio_iptables.kernel.routes import remove_routes

    for step in remove_routes(steps):
        log.info("removed: %s", step.describe())
    try:
        if netlink.delete_ipv6_address(IPV6_INBOUND_PASSTHROUGH_ADDRESS):
            log.info("removed %s from lo", IPV6_INBOUND_PASSTHROUGH)
    except OSError as err:
        raise ApplyError(f"removing {IPV6_INBOUND_PASSTHROUGH} from lo failed: {err}") from None
