"""Does the kernel deliver a TPROXY'd packet to the local listener?  A pure policy-
routing lookup over rules and routes read from a namespace (kernel/live_routing.py).

TPROXY only assigns the socket; after mangle PREROUTING the kernel still routes the
packet, by its mark.  Istio adds `ip rule fwmark M lookup T` and `ip route local
default dev lo table T` so that every marked packet routes to the local stack.  When
the destination is one of the pod's own addresses the `local` table (priority 0)
already delivers it, so the missing routing only bites for other destinations (a
VIP or any address routed to the pod): that is what the lab showed, and what the
answer says (tests/integration/test_explain_routing.py proves both cases).

The lookup is the kernel's, simplified to what a pod holds: rules in priority order,
selectors fwmark/mask, iif, from/to prefixes and `not`; actions lookup, goto, nop,
blackhole, unreachable, prohibit; in a table the longest-prefix route, `throw`
going on to the next rule.
"""


import ipaddress

from istio_iptables.model.constants import FULL_MARK_MASK
from istio_iptables.model.record import Record

# Values of rtnetlink we keep as words (linux/fib_rules.h, linux/rtnetlink.h).
RT_TABLE_LOCAL = 255
RULE_ACTIONS = {1: "lookup", 2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
               7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat"}
_ANY = {4: "0.0.0.0/0", 6: "::/0"}


class PolicyRule(Record):
    """One `ip rule`.  `src`/`dst` are prefixes ("0.0.0.0/0" for all); `fwmark` None
    when the rule has no fwmark selector."""

    family: int
    priority: int
    action: str  # lookup, goto, nop, blackhole, unreachable, prohibit
    table: int
    fwmark: int | None = None
    fwmask: int = FULL_MARK_MASK
    src: str = ""
    dst: str = ""
    iif: str = ""
    invert: bool = False
    goto: int = 0

    def text(self) -> str:
        """As `ip rule` prints it."""
        parts = [f"{self.priority}:", "not" if self.invert else "", f"from {self.src or 'all'}"]
        if self.dst:
            parts.append(f"to {self.dst}")
        if self.fwmark is not None:
            parts.append(f"fwmark {self.fwmark:#x}" + (f"/{self.fwmask:#x}" if self.fwmask != FULL_MARK_MASK else ""))
        if self.iif:
            parts.append(f"iif {self.iif}")
        parts.append({"lookup": f"lookup {_table_name(self.table)}", "goto": f"goto {self.goto}"}
                     .get(self.action, self.action))
        return " ".join(p for p in parts if p)


class Route(Record):
    """One route of one table; `dst` is a prefix ("::/0" for default)."""

    family: int
    table: int
    kind: str  # unicast, local, throw, blackhole, ...
    dst: str
    dev: str = ""

    def text(self) -> str:
        dst = "default" if self.dst == _ANY[self.family] else self.dst
        return " ".join(p for p in (self.kind, dst, f"dev {self.dev}" if self.dev else "",
                                    f"table {_table_name(self.table)}") if p)


class Routing(Record):
    """A namespace's policy rules and the routes of every table, both families."""

    rules: tuple[PolicyRule, ...] = ()
    routes: tuple[Route, ...] = ()


class Lookup(Record):
    """Where the kernel routes a packet: `local` is delivery to this namespace's
    stack (a TPROXY socket); `rule`/`route` are the ones that decided."""

    local: bool
    rule: PolicyRule | None
    route: Route | None
    outcome: str  # e.g. "local via lo", "unicast via eth0", "no route"


class Check(Record):
    """The routing a TPROXY'd connection needs, checked against what is installed.
    `problem` is empty when the marked packet is delivered by the routing TPROXY needs."""

    family: int
    mark: int
    table: int
    delivered: bool
    lookup: Lookup
    problem: str
    affects: bool  # the problem changes this connection's landing (not just other ones)
    installed: str = ""  # the rule and route that route the mark locally, as `ip` prints them

    def as_dict(self) -> dict[str, object]:
        return {
            "family": self.family, "mark": self.mark, "table": self.table, "delivered": self.delivered,
            "rule": self.lookup.rule.text() if self.lookup.rule else None,
            "route": self.lookup.route.text() if self.lookup.route else None,
            "outcome": self.lookup.outcome, "problem": self.problem, "affects_this_connection": self.affects,
            "installed": self.installed,
        }  # fmt: skip


def _table_name(table: int) -> str:
    return {255: "local", 254: "main", 253: "default"}.get(table, str(table))


def _net(prefix: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(prefix, strict=False)


def _covers(prefix: str, address: str) -> bool:
    return not prefix or ipaddress.ip_address(address) in _net(prefix)


def _selects(rule: PolicyRule, dst: str, mark: int, iif: str, src: str | None) -> bool:
    hit = True
    if rule.fwmark is not None:
        hit = (mark & rule.fwmask) == rule.fwmark
    if hit and rule.iif:
        hit = rule.iif == iif
    if hit and rule.dst:
        hit = _covers(rule.dst, dst)
    if hit and rule.src and _net(rule.src).prefixlen:
        hit = src is not None and _covers(rule.src, src)  # an unknown source: the selector does not match
    return hit != rule.invert


def _route_in(routing: Routing, family: int, table: int, dst: str) -> Route | None:
    """The longest-prefix route for dst in one table (broadcast/multicast ignored)."""
    best: Route | None = None
    for route in routing.routes:
        if route.family != family or route.table != table or route.kind in ("broadcast", "multicast"):
            continue
        if _covers(route.dst, dst) and (best is None or _net(route.dst).prefixlen > _net(best.dst).prefixlen):
            best = route
    return best


def lookup(routing: Routing, family: int, dst: str, mark: int, iif: str, src: str | None = None) -> Lookup:
    """The kernel's fib lookup for a packet arriving on `iif` with `mark`."""
    rules = sorted((r for r in routing.rules if r.family == family), key=lambda r: r.priority)
    goto_from = -1
    for rule in rules:
        if rule.priority < goto_from or not _selects(rule, dst, mark, iif, src):
            continue
        if rule.action in ("blackhole", "unreachable", "prohibit"):
            return Lookup(False, rule, None, f"{rule.action} (ip rule)")
        if rule.action == "goto":
            goto_from = rule.goto
            continue
        if rule.action != "lookup":
            continue
        route = _route_in(routing, family, rule.table, dst)
        if route is None or route.kind == "throw":
            continue
        if route.kind == "local":
            return Lookup(True, rule, route, "delivered locally")
        if route.kind == "unicast":
            return Lookup(False, rule, route, f"sent out of {route.dev or '?'}, not delivered locally")
        return Lookup(False, rule, route, f"{route.kind}, not delivered locally")
    return Lookup(False, None, None, "no route, not delivered")


def _has_tproxy_route(routing: Routing, family: int, table: int) -> bool:
    return any(r.family == family and r.table == table and r.kind == "local" and r.dst == _ANY[family]
               for r in routing.routes)


def check_tproxy(routing: Routing, family: int, dst: str, mark: int, iif: str, port: int | None,
                 table: int, src: str | None = None) -> Check:
    """Whether a TPROXY'd packet (mark already set) reaches the listener on `port`.

    Two questions: is *this* packet delivered (the full lookup), and does the routing
    TPROXY needs exist (a rule selecting `mark` whose table holds a local default
    route)?  Missing routing that does not change this connection (its destination
    is a local address) is still reported, with `affects` False."""
    result = lookup(routing, family, dst, mark, iif, src)
    ip = "ip -6" if family == 6 else "ip -4"
    marked = [r for r in routing.rules if r.family == family and r.fwmark is not None and r.action == "lookup"
              and (mark & r.fwmask) == r.fwmark and not r.invert]
    need = ""
    routed = [r for r in marked if _has_tproxy_route(routing, family, r.table)]
    installed = ""
    if routed:
        installed = f"{routed[0].text()} -> " + Route(family, routed[0].table, "local", _ANY[family], "lo").text()
    if not marked:
        need = f"has no `{ip} rule add fwmark {mark} lookup {table}`"
    elif not routed:
        have = marked[0].table
        need = (f"has `{ip} rule` {marked[0].text()} but table {_table_name(have)} has no "
                f"`{ip} route add local default dev lo table {have}`")
    fix = "run istio-iptables again (or check the CNI plugin)"
    to = f"the listener on port {port}" if port else "the TPROXY listener"
    if not result.local:
        problem = (f"the TPROXY mark {mark} {need or 'is routed elsewhere'} in IPv{family}: the kernel will "
                   f"not deliver it to {to} (it routes: {result.outcome}); {fix}")
        return Check(family, mark, table, False, result, problem, True, installed)
    if need:
        problem = (f"the TPROXY mark {mark} {need} in IPv{family}; this connection is still delivered "
                   f"because {dst} is a local address ({result.route.text() if result.route else 'local'}), "
                   f"but TPROXY'd connections to other destinations would not be; {fix}")
        return Check(family, mark, table, True, result, problem, False, installed)
    return Check(family, mark, table, True, result, "", False, installed)
