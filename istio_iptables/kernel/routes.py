"""TPROXY's policy routing through pyroute2: `ip rule add fwmark M lookup T` and
`ip route add local default dev lo table T`, per family, idempotent.

Imported only when a plan has route steps (TPROXY with inbound capture), because
pyroute2 costs ~120 ms of CPU to import under the init container's 100m limit.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from istio_iptables.model.iptables_plan import RouteStep

_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_DEFAULT_DST = {4: "0.0.0.0", 6: "::"}


class RouteError(RuntimeError):
    """A routing step failed; the message names the step and the kernel's words."""


def _exists(ipr: Any, step: RouteStep, lo_index: int) -> bool:
    family = _FAMILY[step.family]
    if step.kind == "rule":
        for rule in ipr.get_rules(family=family):
            if rule.get_attr("FRA_TABLE") == step.table and rule.get_attr("FRA_FWMARK") == step.mark:
                return True
        return False
    for route in ipr.get_routes(family=family, table=step.table):
        if route.get_attr("RTA_TABLE") == step.table and route["dst_len"] == 0 and route["type"] == 2 \
                and route.get_attr("RTA_OIF") == lo_index:
            return True
    return False


def _change(ipr: Any, verb: str, step: RouteStep, lo_index: int) -> None:
    family = _FAMILY[step.family]
    if step.kind == "rule":
        ipr.rule(verb, family=family, table=step.table, fwmark=step.mark)
    else:
        ipr.route(verb, family=family, dst=_DEFAULT_DST[step.family], dst_len=0, type="local",
                  scope="host", table=step.table, oif=lo_index)


def apply_routes(steps: Sequence[RouteStep], added: list[RouteStep]) -> None:
    """Add each missing step, appending it to `added` as soon as it exists, so that a
    failure half-way still tells the rollback what to remove."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        lo_index = ipr.link_lookup(ifname="lo")[0]
        for step in steps:
            if _exists(ipr, step, lo_index):
                continue
            try:
                _change(ipr, "add", step, lo_index)
            except Exception as err:  # pyroute2 raises NetlinkError and friends
                raise RouteError(f"{step.describe()} failed: {err}") from None
            added.append(step)


def remove_routes(steps: Sequence[RouteStep]) -> list[RouteStep]:
    """Remove each present step; returns the ones removed.  Safe to repeat."""
    from pyroute2 import IPRoute

    removed: list[RouteStep] = []
    with IPRoute() as ipr:
        lo_index = ipr.link_lookup(ifname="lo")[0]
        for step in steps:
            if not _exists(ipr, step, lo_index):
                continue
            try:
                _change(ipr, "del", step, lo_index)
            except Exception as err:
                raise RouteError(f"removing ({step.describe()}) failed: {err}") from None
            removed.append(step)
    return removed
