"""Read the current network namespace's policy rules and routes (both families) for
`explain --live` and `verify`, as model/policy_routing.py's plain tuples.

pyroute2 here: its breadth pays (rules with every selector, routes of every table)
and startup does not count on these paths.  Never imported by the init path.
"""

from __future__ import annotations

import socket
from typing import Any

from istio_iptables.model.policy_routing import ROUTE_TYPES, RULE_ACTIONS, PolicyRule, Route, Routing

_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
_FIB_RULE_INVERT = 0x2


def _prefix(msg: Any, attr: str, length_field: str, family: int) -> str:
    length = msg[length_field]
    address = msg.get_attr(attr)
    if address is None:
        return ("0.0.0.0/0" if family == 4 else "::/0") if length == 0 else ""
    return f"{address}/{length}"


def _rule(msg: Any, family: int) -> PolicyRule:
    fwmark = msg.get_attr("FRA_FWMARK")
    mask = msg.get_attr("FRA_FWMASK")
    table = msg.get_attr("FRA_TABLE") or msg["table"]
    src = _prefix(msg, "FRA_SRC", "src_len", family) if msg["src_len"] else ""
    dst = _prefix(msg, "FRA_DST", "dst_len", family) if msg["dst_len"] else ""
    return PolicyRule(
        family=family, priority=msg.get_attr("FRA_PRIORITY") or 0,
        action=RULE_ACTIONS.get(msg["action"], f"action {msg['action']}"), table=int(table),
        fwmark=int(fwmark) if fwmark is not None else None,
        fwmask=int(mask) if mask is not None else 0xFFFFFFFF,
        src=src, dst=dst, iif=msg.get_attr("FRA_IIFNAME") or "",
        invert=bool(msg["flags"] & _FIB_RULE_INVERT), goto=int(msg.get_attr("FRA_GOTO") or 0),
    )  # fmt: skip


def _route(msg: Any, family: int, names: dict[int, str]) -> Route:
    oif = msg.get_attr("RTA_OIF")
    return Route(family=family, table=int(msg.get_attr("RTA_TABLE") or msg["table"]),
                 kind=ROUTE_TYPES.get(msg["type"], f"type {msg['type']}"),
                 dst=_prefix(msg, "RTA_DST", "dst_len", family),
                 dev=names.get(oif, str(oif)) if oif is not None else "")


def read_routing() -> Routing:
    """Every policy rule and every route of every table, IPv4 and IPv6, of the network
    namespace this thread is in.  A pod holds a few dozen; a host may hold more."""
    from pyroute2 import IPRoute

    rules: list[PolicyRule] = []
    routes: list[Route] = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for family, af in _FAMILIES.items():
            rules += [_rule(msg, family) for msg in ipr.get_rules(family=af)]
            routes += [_route(msg, family, names) for msg in ipr.route("dump", family=af)]
    return Routing(tuple(rules), tuple(routes))
