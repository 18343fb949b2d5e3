"""Self-test of the network-namespace harness in istio_iptables/lab/netlab.py.

No istio-iptables code is involved: these tests prove that the lab itself
routes traffic, records hits, switches identity and reads SO_ORIGINAL_DST, so
later integration tests can trust what it reports.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest

from istio_iptables.lab.netlab import (
    EXTERNAL_IPV4,
    EXTERNAL_IPV6,
    NETNS_DIR,
    PEER_IPV4,
    PEER_IPV6,
    POD_IPV4,
    POD_IPV6,
    CommandError,
    NetLab,
    netns_available,
    netns_required,
)

_AVAILABLE, _REASON = netns_available()
if not _AVAILABLE:
    if netns_required():
        pytest.fail(f"REQUIRE_NETNS=1 but network namespaces are unusable: {_REASON}", pytrace=False)
    pytest.skip(f"network namespaces unavailable: {_REASON}", allow_module_level=True)

pytestmark = pytest.mark.netns


def _need_tool(name: str) -> None:
    if shutil.which(name) is None:
        if netns_required():
            pytest.fail(f"{name} is not installed")
        pytest.skip(f"{name} is not installed")


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab() as netlab:
        yield netlab


def test_peer_to_pod_tcp_without_nat(lab: NetLab) -> None:
    listener = lab.listen("pod", 8080, addr=POD_IPV4)

    result = lab.connect("peer", POD_IPV4, 8080)

    assert result.ok, result
    assert result.reply == b"port=8080\n"
    assert result.landed_port == 8080
    hit = listener.wait_for_hit()
    assert (hit.peer_addr, hit.local_addr, hit.local_port) == (PEER_IPV4, POD_IPV4, 8080)
    assert result.src == (hit.peer_addr, hit.peer_port)
    assert hit.original_dst is None  # nothing tracked: no netfilter rules in the pod
    assert not hit.redirected


def test_pod_to_peer_tcp_ipv4_and_ipv6(lab: NetLab) -> None:
    v4 = lab.listen("peer", 9090)
    v6 = lab.listen("peer", 9090, family=socket.AF_INET6)

    r4 = lab.connect("pod", PEER_IPV4, 9090)
    r6 = lab.connect("pod", PEER_IPV6, 9090)

    assert r4.ok and r4.reply == b"port=9090\n", r4
    assert r6.ok and r6.reply == b"port=9090\n", r6
    hit4, hit6 = v4.wait_for_hit(), v6.wait_for_hit()
    assert (hit4.peer_addr, hit4.local_addr) == (POD_IPV4, PEER_IPV4)
    assert (hit6.peer_addr, hit6.local_addr) == (POD_IPV6, PEER_IPV6)
    assert len(v4.hits) == 1 and len(v6.hits) == 1


def test_outbound_to_external_address_reaches_peer(lab: NetLab) -> None:
    v4 = lab.listen("peer", 80)
    v6 = lab.listen("peer", 80, family=socket.AF_INET6)

    assert lab.connect("pod", EXTERNAL_IPV4, 80).ok
    assert lab.connect("pod", EXTERNAL_IPV6, 80).ok

    assert v4.wait_for_hit().local_addr == EXTERNAL_IPV4
    assert v6.wait_for_hit().local_addr == EXTERNAL_IPV6


def test_client_payload_does_not_reset_the_reply(lab: NetLab) -> None:
    lab.listen("peer", 9090)

    results = [lab.connect("pod", PEER_IPV4, 9090, payload=b"x" * 100_000) for _ in range(5)]

    assert all(r.ok and r.reply == b"port=9090\n" for r in results), results


def test_client_runs_as_given_uid_and_gid(lab: NetLab) -> None:
    listener = lab.listen("peer", 9090)

    as_proxy = lab.connect("pod", PEER_IPV4, 9090, uid=1337, gid=1337)
    as_root = lab.connect("pod", PEER_IPV4, 9090)

    assert as_proxy.ok, as_proxy
    assert (as_proxy.uid, as_proxy.gid) == (1337, 1337)
    assert (as_root.uid, as_root.gid) == (0, 0)
    assert len(listener.wait_for_hits(2)) == 2
    assert os.getuid() == 0  # the test process itself never changed identity


def test_connection_errors_are_reported_not_raised(lab: NetLab) -> None:
    refused = lab.connect("pod", PEER_IPV4, 9)
    assert (refused.ok, refused.connected, refused.error) == (False, False, "refused")

    lab.run("peer", "iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP")
    dropped = lab.connect("pod", PEER_IPV4, 9, timeout=0.5)
    assert (dropped.ok, dropped.error) == (False, "timeout")


def test_udp_exchange(lab: NetLab) -> None:
    v4 = lab.listen("peer", 5353, udp=True)
    v6 = lab.listen("peer", 5353, family=socket.AF_INET6, udp=True)

    assert lab.udp_exchange("pod", PEER_IPV4, 5353, b"hello").reply == b"port=5353\n"
    assert lab.udp_exchange("pod", PEER_IPV6, 5353, b"hello6", uid=1337).reply == b"port=5353\n"
    assert lab.udp_exchange("pod", PEER_IPV4, 5354, b"nobody", timeout=0.3).reply is None

    hit4, hit6 = v4.wait_for_hit(), v6.wait_for_hit()
    assert (hit4.proto, hit4.data, hit4.peer_addr, hit4.local_addr) == ("udp", b"hello", POD_IPV4, PEER_IPV4)
    assert (hit6.data, hit6.peer_addr, hit6.local_addr) == (b"hello6", POD_IPV6, PEER_IPV6)


def test_redirect_in_pod_is_seen_through_so_original_dst(lab: NetLab) -> None:
    _need_tool("iptables-legacy")
    lab.run("pod", "iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "7000",
            "-j", "REDIRECT", "--to-ports", "15001")  # fmt: skip
    outbound = lab.listen("pod", 15001)
    upstream = lab.listen("peer", 7000)

    result = lab.connect("pod", PEER_IPV4, 7000)

    assert result.ok and result.reply == b"port=15001\n", result
    hit = outbound.wait_for_hit()
    assert hit.original_dst == (PEER_IPV4, 7000)
    assert hit.local_addr == "127.0.0.1"  # REDIRECT in OUTPUT rewrites to the loopback address
    assert hit.redirected
    assert upstream.hits == []


def test_ipv6_redirect_is_seen_through_ip6t_so_original_dst(lab: NetLab) -> None:
    _need_tool("ip6tables-legacy")
    lab.run("pod", "ip6tables-legacy", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "7000",
            "-j", "REDIRECT", "--to-ports", "15001")  # fmt: skip
    outbound = lab.listen("pod", 15001, family=socket.AF_INET6)

    result = lab.connect("pod", PEER_IPV6, 7000)

    assert result.landed_port == 15001, result
    hit = outbound.wait_for_hit()
    assert hit.original_dst == (PEER_IPV6, 7000)
    assert hit.local_addr == "::1"


def test_owner_match_sees_the_client_uid(lab: NetLab) -> None:
    _need_tool("iptables-legacy")
    lab.run("pod", "iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "owner",
            "!", "--uid-owner", "1337", "-j", "REDIRECT", "--to-ports", "15001")  # fmt: skip
    outbound = lab.listen("pod", 15001)
    lab.listen("peer", 9090)

    assert lab.connect("pod", PEER_IPV4, 9090).landed_port == 15001
    assert lab.connect("pod", PEER_IPV4, 9090, uid=1337).landed_port == 9090
    assert len(outbound.hits) == 1


def test_conntrack_without_nat_reports_the_local_address(lab: NetLab) -> None:
    """Once a rule makes conntrack track flows, SO_ORIGINAL_DST answers even for un-NATed ones."""
    _need_tool("iptables-legacy")
    lab.run("pod", "iptables-legacy", "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    listener = lab.listen("pod", 8080)

    assert lab.connect("peer", POD_IPV4, 8080).ok

    hit = listener.wait_for_hit()
    assert hit.original_dst == (POD_IPV4, 8080)
    assert not hit.redirected


def test_tproxy_needs_a_transparent_listener(lab: NetLab) -> None:
    _need_tool("iptables-legacy")
    lab.run("pod", "iptables-legacy", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--dport", "9080",
            "-j", "TPROXY", "--on-port", "15006", "--tproxy-mark", "0x1/0x1")  # fmt: skip
    inbound = lab.listen("pod", 15006, transparent=True)

    result = lab.connect("peer", POD_IPV4, 9080)

    assert result.reply == b"port=15006\n", result
    hit = inbound.wait_for_hit()
    assert (hit.local_addr, hit.local_port, hit.peer_addr) == (POD_IPV4, 9080, PEER_IPV4)


def test_run_and_sysctl_happen_inside_the_namespace(lab: NetLab) -> None:
    links = lab.run("pod", "ip", "-o", "link", "show").stdout
    assert "eth0" in links and "lo" in links
    peer_before = lab.sysctl("peer", "net.ipv4.ip_forward")  # new namespaces may inherit the host's value
    flipped = "0" if peer_before == "1" else "1"
    assert lab.sysctl("pod", "net.ipv4.ip_forward", flipped) == flipped
    assert lab.run("pod", "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == flipped
    assert lab.sysctl("peer", "net.ipv4.ip_forward") == peer_before
    with pytest.raises(CommandError, match="exited 3"):
        lab.run("pod", "sh", "-c", "echo oops >&2; exit 3")


def test_ipv4_only_lab_has_no_global_ipv6() -> None:
    with NetLab(ipv6=False) as lab:
        assert lab.pod_ipv6 is None and lab.peer_ipv6 is None
        assert "2001:db8" not in lab.run("pod", "ip", "-6", "addr", "show").stdout
        assert lab.connect("pod", PEER_IPV4, 9).error == "refused"


def test_namespaces_and_threads_are_cleaned_up() -> None:
    own_netns = os.readlink("/proc/thread-self/ns/net")
    with NetLab() as lab:
        listener = lab.listen("pod", 8080)
        udp = lab.listen("pod", 8080, udp=True)
        names = (lab.pod_ns, lab.peer_ns)
        assert all(os.path.exists(os.path.join(NETNS_DIR, name)) for name in names)
    assert not any(os.path.exists(os.path.join(NETNS_DIR, name)) for name in names)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(name in listed for name in names)
    assert not listener.running and not udp.running
    assert os.readlink("/proc/thread-self/ns/net") == own_netns
