"""The TPROXY policy-routing check, without a kernel: the pure fib lookup over rules
and routes shaped like a pod's (`ip rule` / `ip route show table all`), and how
explain reports what it finds (--live) or what the plan adds (plan mode)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from istio_iptables.cli.explain import Request, answer_for, render_json, render_text
from istio_iptables.cli.flags import parse_args
from istio_iptables.kernel.live_rules import LiveRules
from istio_iptables.model.explain import Connection
from istio_iptables.model.policy_routing import PolicyRule, Route, Routing, check_tproxy, lookup

from .test_explain import SAVED

MARK, TABLE = 1337, 133
POD4, POD6 = "10.1.2.3", "2001:db8:1::2"
VIP4, VIP6 = "203.0.113.99", "2001:db8:2::99"  # routed to the pod, not its own addresses
ISTIO_RULES = {f: PolicyRule(f, 32000, "lookup", TABLE, fwmark=MARK) for f in (4, 6)}
ISTIO_ROUTES = {4: Route(4, TABLE, "local", "0.0.0.0/0", "lo"), 6: Route(6, TABLE, "local", "::/0", "lo")}


def _pod(*, rules: tuple[int, ...] = (4, 6), routes: tuple[int, ...] = (4, 6),
         extra: tuple[PolicyRule, ...] = ()) -> Routing:
    """A pod's routing; `rules`/`routes`: the families holding Istio's TPROXY rule/route."""
    base = [PolicyRule(f, p, "lookup", t) for f in (4, 6) for p, t in ((0, 255), (32766, 254), (32767, 253))]
    return Routing(
        rules=(*base, *(ISTIO_RULES[f] for f in rules), *extra),
        routes=(Route(4, 255, "local", POD4 + "/32", "eth0"), Route(4, 255, "local", "127.0.0.0/8", "lo"),
                Route(4, 255, "broadcast", "10.1.2.255/32", "eth0"), Route(4, 254, "unicast", "10.1.2.0/24", "eth0"),
                Route(4, 254, "unicast", "0.0.0.0/0", "eth0"),
                Route(6, 255, "local", POD6 + "/128", "eth0"), Route(6, 255, "local", "::1/128", "lo"),
                Route(6, 254, "unicast", "2001:db8:1::/64", "eth0"), Route(6, 254, "unicast", "::/0", "eth0"),
                *(ISTIO_ROUTES[f] for f in routes)),
    )  # fmt: skip


@pytest.mark.parametrize(("family", "dst"), [(4, VIP4), (6, VIP6), (4, POD4), (6, POD6)])
def test_present_rule_and_route_deliver_with_no_problem(family: int, dst: str) -> None:
    check = check_tproxy(_pod(), family, dst, MARK, "eth0", 15006, TABLE)
    assert (check.delivered, check.problem, check.affects) == (True, "", False)
    own = dst in (POD4, POD6)
    assert check.lookup.rule == (PolicyRule(family, 0, "lookup", 255) if own else ISTIO_RULES[family])


def test_missing_rule_a_vip_is_not_delivered_and_the_problem_names_the_command() -> None:
    check = check_tproxy(_pod(rules=(6,)), 4, VIP4, MARK, "eth0", 15006, TABLE)
    assert (check.delivered, check.affects) == (False, True)
    assert check.lookup.route == Route(4, 254, "unicast", "0.0.0.0/0", "eth0")  # out of eth0 via main
    assert "the TPROXY mark 1337 has no `ip -4 rule add fwmark 1337 lookup 133` in IPv4" in check.problem
    assert "will not deliver it to the listener on port 15006" in check.problem
    assert "run istio-iptables again" in check.problem


def test_missing_rule_the_pods_own_address_is_still_delivered_but_the_gap_is_said() -> None:
    check = check_tproxy(_pod(rules=(6,)), 4, POD4, MARK, "eth0", 15006, TABLE)
    assert (check.delivered, check.affects) == (True, False)
    assert "no `ip -4 rule add fwmark 1337 lookup 133`" in check.problem
    assert f"{POD4} is a local address" in check.problem


def test_missing_route_the_rule_is_named_and_the_route_asked_for() -> None:
    check = check_tproxy(_pod(routes=(6,)), 4, VIP4, MARK, "eth0", 15006, TABLE)
    assert (check.delivered, check.affects) == (False, True)
    assert check.lookup.rule == PolicyRule(4, 32766, "lookup", 254)  # table 133 empty: on to main
    assert "32000: from all fwmark 0x539 lookup 133" in check.problem
    assert "has no `ip -4 route add local default dev lo table 133`" in check.problem


def test_wrong_family_ipv4_routing_does_not_deliver_ipv6() -> None:
    routing = _pod(rules=(4,), routes=(4,))
    assert check_tproxy(routing, 4, VIP4, MARK, "eth0", 15006, TABLE).problem == ""
    check = check_tproxy(routing, 6, VIP6, MARK, "eth0", 15006, TABLE)
    assert (check.delivered, check.affects) == (False, True)
    assert "no `ip -6 rule add fwmark 1337 lookup 133` in IPv6" in check.problem


def test_fwmark_mask_other_table_and_rule_actions_follow_the_kernel() -> None:
    # A masked rule selects the mark; a route in another table than -r still delivers.
    masked = PolicyRule(4, 100, "lookup", 200, fwmark=0x539, fwmask=0xFFF)
    routing = _pod(rules=(), routes=(), extra=(masked,))
    routing = routing._replace(routes=(*routing.routes, Route(4, 200, "local", "0.0.0.0/0", "lo")))
    check = check_tproxy(routing, 4, VIP4, 0x1539, "eth0", 15006, TABLE)
    assert (check.delivered, check.problem, check.lookup.rule) == (True, "", masked)
    # A mark the rule does not select, `not`, blackhole before it, iif of another interface.
    assert not lookup(routing, 4, VIP4, 0x538, "eth0").local
    assert not lookup(routing._replace(rules=(*routing.rules[:-1], masked._replace(invert=True))), 4, VIP4,
                      0x539, "eth0").local
    hole = PolicyRule(4, 50, "blackhole", 0, fwmark=0x539)
    assert lookup(routing._replace(rules=(*routing.rules, hole)), 4, VIP4, 0x539, "eth0").outcome.startswith(
        "blackhole")
    iif = masked._replace(iif="eth1")
    assert not lookup(routing._replace(rules=(*routing.rules[:-1], iif)), 4, VIP4, 0x539, "eth0").local


def _live(routing: Routing | None) -> LiveRules:
    return LiveRules({4: SAVED, 6: ""}, {4: "iptables-nft-save", 6: "no iptables rules"}, (), (), "", "",
                     (("eth0", POD4),), routing)


def _request(dst: str) -> Request:
    return Request(Connection(4, "tcp", dst, 8080, True, "10.9.9.9"), (), "eth0", True, "text")


def test_live_answer_carries_the_routing_and_a_missing_rule_makes_it_uncertain() -> None:
    settings = parse_args(["-m", "TPROXY", "-b", "*"], {})
    good, _ = answer_for(settings, _request(VIP4), _live(_pod()))
    assert good.routing is not None and good.routing.problem == "" and not good.uncertain
    assert "routing: mark 0x539 -> 32000: from all fwmark 0x539 lookup 133 -> local default dev lo table 133: " \
           "delivered locally" in render_text(_request(VIP4), good, [])
    bad, notes = answer_for(settings, _request(VIP4), _live(_pod(rules=(6,))))
    assert (bad.verdict, bad.port, bad.uncertain) == ("captured", 15006, True)
    data = json.loads(render_json(bad, notes))
    assert data["routing"]["delivered"] is False and data["routing"]["affects_this_connection"] is True
    assert "no `ip -4 rule add fwmark 1337 lookup 133`" in data["routing"]["problem"]
    text = render_text(_request(VIP4), bad, notes)
    assert "ROUTING: the TPROXY mark 1337 has no" in text
    assert "=> captured by the rules (TPROXY to port 15006), but the kernel's routing does not deliver it" in text
    unread, _ = answer_for(settings, _request(VIP4), _live(None))
    assert unread.uncertain and "policy routing could not be read" in unread.unknowns


def test_live_redirect_mode_has_no_routing_check() -> None:
    settings = parse_args(["-b", "*"], {})
    live = _live(_pod(rules=()))._replace(texts={4: "*nat\n-A PREROUTING -p tcp -j REDIRECT --to-ports 15006\n"
                                                    "COMMIT\n", 6: ""})
    answer, _ = answer_for(settings, _request(POD4), live)
    assert (answer.via, answer.routing) == ("REDIRECT", None)


def test_plan_mode_lists_the_routing_steps_tproxy_needs() -> None:
    settings = parse_args(["-m", "TPROXY", "-b", "*", "--ipv6", "on"], {})
    plan_request = _request(POD4)._replace(live=False)
    answer, notes = answer_for(settings, plan_request)
    assert answer.via == "TPROXY"
    text = render_text(plan_request, answer, notes)
    for step in ("ip -4 rule add fwmark 1337 lookup 133", "ip -6 rule add fwmark 1337 lookup 133",
                 "ip -4 route add local default dev lo table 133", "ip -6 route add local default dev lo table 133"):
        assert step in text
    redirect, notes = answer_for(parse_args(["-b", "*"], {}), plan_request)
    assert redirect.via == "REDIRECT"
    assert not any("policy routing" in n for n in notes)


@given(st.ip_addresses(v=4) | st.ip_addresses(v=6), st.booleans(), st.booleans())
def test_marked_packets_are_delivered_everywhere_with_the_routing_and_only_to_local_addresses_without(
        address: ipaddress.IPv4Address | ipaddress.IPv6Address, rule: bool, route: bool) -> None:
    family = address.version
    routing = _pod(rules=(family,) if rule else (), routes=(family,) if route else ())
    check = check_tproxy(routing, family, str(address), MARK, "eth0", 15006, TABLE)
    local = str(address) in (POD4, POD6) or address.is_loopback  # the fixture: 127.0.0.0/8, ::1
    assert check.delivered == ((rule and route) or local)
    assert (check.problem == "") == (rule and route)
    assert check.affects == (not check.delivered)
