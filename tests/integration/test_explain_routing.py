"""`explain --live` reads TPROXY's policy routing from the pod, and is right about it.

TPROXY assigns the listener's socket, but the kernel still routes the packet by its
mark afterwards.  With Istio's `ip rule fwmark 1337 lookup 133` gone, a connection
to the pod's own address is still delivered (the `local` table decides first), one
to an address merely routed to the pod (a VIP) is not: explain must say both, and
real connections prove it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from istio_iptables.lab.netlab import POD_IPV4, POD_IPV6, NetLab

from .conftest import applied

pytestmark = pytest.mark.netns

VIP4 = "203.0.113.99"  # not the pod's: the peer routes it to the pod
VIP6 = "2001:db8:2::99"


def _explain(lab: NetLab, to: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "istio_iptables", "explain", "--live", "--network-namespace", lab.pod_ns_path,
            "--inbound", "--to", to, "--output", "json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_missing_tproxy_ip_rule_is_reported_and_the_kernel_agrees(lab: NetLab) -> None:
    inbound = lab.listen("pod", 15006, transparent=True)
    lab.listen("pod", 8080)
    applied(lab, "-m", "TPROXY", "-b", "*", "--ipv6", "on")
    lab.run("peer", "ip", "route", "add", f"{VIP4}/32", "via", POD_IPV4)

    for to in (f"{VIP4}:8080", f"{POD_IPV4}:8080", f"[{VIP6}]:8080", f"[{POD_IPV6}]:8080"):
        whole = _explain(lab, to)
        assert (whole["verdict"], whole["port"], whole["uncertain"]) == ("captured", 15006, False), to
        assert whole["routing"]["delivered"] is True and whole["routing"]["problem"] == "", to
    assert _explain(lab, f"{VIP4}:8080")["routing"]["rule"].endswith("fwmark 0x539 lookup 133")
    assert lab.connect("peer", VIP4, 8080).landed_port == 15006
    assert inbound.wait_for_hit().local_addr == VIP4

    lab.run("pod", "ip", "rule", "del", "fwmark", "1337", "lookup", "133")  # IPv4 only

    vip = _explain(lab, f"{VIP4}:8080")
    assert (vip["verdict"], vip["uncertain"]) == ("captured", True)  # the rules still capture it ...
    assert vip["routing"]["delivered"] is False  # ... the routing does not deliver it
    assert "the TPROXY mark 1337 has no `ip -4 rule add fwmark 1337 lookup 133` in IPv4" in vip["routing"]["problem"]
    result = lab.connect("peer", VIP4, 8080)
    assert not result.connected, result  # the kernel agrees: never delivered to 15006

    own = _explain(lab, f"{POD_IPV4}:8080")
    assert (own["uncertain"], own["routing"]["delivered"], own["routing"]["affects_this_connection"]) == (
        False, True, False)
    assert "is a local address" in own["routing"]["problem"]
    assert lab.connect("peer", POD_IPV4, 8080).landed_port == 15006  # delivered by the local table

    v6 = _explain(lab, f"[{VIP6}]:8080")  # the other family's routing is untouched
    assert v6["routing"]["problem"] == "" and v6["routing"]["delivered"] is True
