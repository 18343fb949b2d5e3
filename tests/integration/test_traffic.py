"""Where real connections land after the tool applied its rules in a pod namespace.

Each test builds a pod and a peer namespace joined by a veth pair (istio_iptables/lab/netlab.py),
applies the tool with real flags, and proves with TCP/UDP connections which listener
receives the traffic and what SO_ORIGINAL_DST says.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from istio_iptables.lab.netlab import EXTERNAL_IPV4, EXTERNAL_IPV6, PEER_IPV4, POD_IPV4, POD_IPV6, NetLab

from .conftest import APP_UID, SEED, STANDARD, applied

pytestmark = pytest.mark.netns
OTHER_EXTERNAL_IPV4 = "198.51.100.200"


def _nft_rules(lab: NetLab) -> str:
    """The pod's nft ruleset without packet counters."""
    return re.sub(r"counter packets \d+ bytes \d+", "counter", lab.run("pod", "nft", "list", "ruleset").stdout)


def _proxy(lab: NetLab, family: socket.AddressFamily = socket.AF_INET) -> tuple[object, object]:
    """Stand-in sidecar: listeners on the outbound (15001) and inbound (15006) ports."""
    return lab.listen("pod", 15001, family=family), lab.listen("pod", 15006, family=family)


def test_standard_profile_inbound_lands_on_15006_with_original_port(lab: NetLab) -> None:
    _, inbound = _proxy(lab)
    app = lab.listen("pod", 8080)
    applied(lab, *STANDARD, "--ipv6", "off")

    result = lab.connect("peer", POD_IPV4, 8080)

    assert result.landed_port == 15006, result
    hit = inbound.wait_for_hit()  # type: ignore[attr-defined]
    assert hit.original_dst == (POD_IPV4, 8080)
    assert hit.peer_addr == PEER_IPV4
    assert app.hits == []


@pytest.mark.parametrize("port", [15090, 15021, 15020])
def test_standard_profile_excluded_inbound_ports_reach_the_app(lab: NetLab, port: int) -> None:
    _, inbound = _proxy(lab)
    app = lab.listen("pod", port)
    applied(lab, *STANDARD, "--ipv6", "off")

    result = lab.connect("peer", POD_IPV4, port)

    assert result.landed_port == port, result
    assert not app.wait_for_hit().redirected
    assert inbound.hits == []  # type: ignore[attr-defined]


def test_standard_profile_outbound_from_app_uid_lands_on_15001(lab: NetLab) -> None:
    outbound, _ = _proxy(lab)
    remote = lab.listen("peer", 80)
    applied(lab, *STANDARD, "--ipv6", "off")

    result = lab.connect("pod", EXTERNAL_IPV4, 80, uid=APP_UID, gid=APP_UID)

    assert result.landed_port == 15001, result
    assert outbound.wait_for_hit().original_dst == (EXTERNAL_IPV4, 80)  # type: ignore[attr-defined]
    assert remote.hits == []


def test_standard_profile_proxy_uid_traffic_goes_out(lab: NetLab) -> None:
    outbound, _ = _proxy(lab)
    remote = lab.listen("peer", 80)
    applied(lab, *STANDARD, "--ipv6", "off")

    result = lab.connect("pod", EXTERNAL_IPV4, 80, uid=1337, gid=1337)

    assert result.landed_port == 80, result
    assert remote.wait_for_hit().local_addr == EXTERNAL_IPV4
    assert outbound.hits == []  # type: ignore[attr-defined]


def test_standard_profile_leaves_localhost_alone(lab: NetLab) -> None:
    outbound, inbound = _proxy(lab)
    app = lab.listen("pod", 8080, addr="127.0.0.1")
    applied(lab, *STANDARD, "--ipv6", "off")

    result = lab.connect("pod", "127.0.0.1", 8080, uid=APP_UID, gid=APP_UID)

    assert result.landed_port == 8080, result
    assert not app.wait_for_hit().redirected
    assert outbound.hits == [] and inbound.hits == []  # type: ignore[attr-defined]


def test_seed_arguments_capture_outbound_but_not_inbound(lab: NetLab) -> None:
    outbound, inbound = _proxy(lab)
    app = lab.listen("pod", 8080)
    applied(lab, *SEED, "--ipv6", "off")

    assert lab.connect("pod", EXTERNAL_IPV4, 443, uid=APP_UID).landed_port == 15001
    assert outbound.wait_for_hit().original_dst == (EXTERNAL_IPV4, 443)  # type: ignore[attr-defined]
    assert lab.connect("peer", POD_IPV4, 8080).landed_port == 8080
    assert not app.wait_for_hit().redirected
    assert inbound.hits == []  # type: ignore[attr-defined]


def test_include_cidr_captures_only_that_range(lab: NetLab) -> None:
    _proxy(lab)
    lab.listen("peer", 80)
    applied(lab, "-i", "198.51.100.0/25", "--ipv6", "off")

    assert lab.connect("pod", EXTERNAL_IPV4, 80, uid=APP_UID).landed_port == 15001
    assert lab.connect("pod", OTHER_EXTERNAL_IPV4, 80, uid=APP_UID).landed_port == 80


def test_exclude_cidr_is_never_captured(lab: NetLab) -> None:
    _proxy(lab)
    lab.listen("peer", 80)
    applied(lab, "-i", "*", "-x", f"{EXTERNAL_IPV4}/32", "--ipv6", "off")

    assert lab.connect("pod", EXTERNAL_IPV4, 80, uid=APP_UID).landed_port == 80
    assert lab.connect("pod", OTHER_EXTERNAL_IPV4, 80, uid=APP_UID).landed_port == 15001


def test_inbound_port_list_captures_only_listed_ports(lab: NetLab) -> None:
    _proxy(lab)
    lab.listen("pod", 8080)
    lab.listen("pod", 9090)
    applied(lab, "-b", "8080", "--ipv6", "off")

    assert lab.connect("peer", POD_IPV4, 8080).landed_port == 15006
    assert lab.connect("peer", POD_IPV4, 9090).landed_port == 9090


def test_outbound_port_exclude_and_include(lab: NetLab) -> None:
    _proxy(lab)
    lab.listen("peer", 5432)
    lab.listen("peer", 6379)
    applied(lab, "-i", "*", "-o", "5432", "--ipv6", "off")
    assert lab.connect("pod", EXTERNAL_IPV4, 5432, uid=APP_UID).landed_port == 5432
    assert lab.connect("pod", EXTERNAL_IPV4, 6379, uid=APP_UID).landed_port == 15001

    applied(lab, "-i", "", "-q", "6379", "--ipv6", "off", "--reconcile")
    assert lab.connect("pod", EXTERNAL_IPV4, 6379, uid=APP_UID).landed_port == 15001
    assert lab.connect("pod", EXTERNAL_IPV4, 5432, uid=APP_UID).landed_port == 5432


def test_dual_stack_captures_ipv6_both_ways(lab: NetLab) -> None:
    outbound6, inbound6 = _proxy(lab, socket.AF_INET6)
    _proxy(lab)
    lab.listen("pod", 8080, family=socket.AF_INET6)
    applied(lab, *STANDARD, "--dual-stack")

    assert lab.connect("peer", POD_IPV6, 8080).landed_port == 15006
    assert inbound6.wait_for_hit().original_dst == (POD_IPV6, 8080)  # type: ignore[attr-defined]
    assert lab.connect("pod", EXTERNAL_IPV6, 80, uid=APP_UID).landed_port == 15001
    assert outbound6.wait_for_hit().original_dst == (EXTERNAL_IPV6, 80)  # type: ignore[attr-defined]
    addrs = lab.run("pod", "ip", "-6", "addr", "show", "dev", "lo").stdout
    assert "::6/128" in addrs


def test_tproxy_listener_sees_real_client_and_original_destination(lab: NetLab) -> None:
    inbound = lab.listen("pod", 15006, transparent=True)
    lab.listen("pod", 8080)
    applied(lab, "-m", "TPROXY", "-b", "*", "--ipv6", "off")

    result = lab.connect("peer", POD_IPV4, 8080)

    assert result.landed_port == 15006, result
    hit = inbound.wait_for_hit()
    assert (hit.local_addr, hit.local_port) == (POD_IPV4, 8080)
    assert hit.peer_addr == PEER_IPV4
    rules = lab.run("pod", "ip", "rule").stdout
    assert "fwmark 0x539 lookup 133" in rules
    assert "local default dev lo" in lab.run("pod", "ip", "route", "show", "table", "133").stdout


def test_redirect_dns_sends_udp_queries_to_the_agent(lab: NetLab, tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {EXTERNAL_IPV4}\n")
    agent = lab.listen("pod", 15053, udp=True)
    upstream = lab.listen("peer", 53, udp=True)
    applied(lab, "--redirect-dns", "--resolv-conf", str(resolv), "--ipv6", "off")

    reply = lab.udp_exchange("pod", EXTERNAL_IPV4, 53, b"query", uid=APP_UID).reply

    assert reply is not None
    assert agent.wait_for_hit().data == b"query"
    assert upstream.hits == []


def test_native_nftables_mode_captures_and_cleans_up(lab: NetLab) -> None:
    _, inbound = _proxy(lab)
    lab.listen("pod", 8080)
    lab.listen("peer", 80)
    applied(lab, *STANDARD, "--ipv6", "off", "--native-nftables")

    assert lab.connect("peer", POD_IPV4, 8080).landed_port == 15006
    assert inbound.wait_for_hit().original_dst == (POD_IPV4, 8080)  # type: ignore[attr-defined]
    assert lab.connect("pod", EXTERNAL_IPV4, 80, uid=APP_UID).landed_port == 15001
    assert lab.connect("pod", EXTERNAL_IPV4, 80, uid=1337).landed_port == 80
    ruleset = _nft_rules(lab)
    applied(lab, *STANDARD, "--ipv6", "off", "--native-nftables")  # a restart replaces, same ruleset
    assert _nft_rules(lab) == ruleset

    applied(lab, "--native-nftables", "--cleanup-only", "--ipv6", "off")
    assert "istio-proxy" not in lab.run("pod", "nft", "list", "ruleset").stdout
    assert lab.connect("pod", EXTERNAL_IPV4, 80, uid=APP_UID).landed_port == 80
