"""`make demo`: the tool doing its job in a scratch pod namespace.

Builds a pod and a peer namespace joined by a veth pair, applies the standard
injected profile with `istio-iptables --network-namespace`, prints the ruleset, and
shows where real connections land; then removes the namespaces.  Needs root.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from istio_iptables.lab.netlab import EXTERNAL_IPV4, POD_IPV4, NetLab, netns_available

STANDARD = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
            "-d", "15090,15021,15020"]


def main() -> int:
    ok, reason = netns_available()
    if not ok:
        print(f"demo needs root and network namespaces: {reason}", file=sys.stderr)
        return 1
    with NetLab(ipv6=False) as lab:
        outbound = lab.listen("pod", 15001)
        inbound = lab.listen("pod", 15006)
        lab.listen("pod", 15090)
        lab.listen("peer", 80)
        argv = [sys.executable, "-m", "istio_iptables", "--network-namespace", lab.pod_ns_path, *STANDARD]
        print("$ istio-iptables", " ".join(repr(a) if a in ("", "*") else a for a in STANDARD))
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        print(done.stderr.rstrip())
        if done.returncode != 0:
            return done.returncode
        print("\nWhere real connections land:")
        checks = [
            ("app (uid 1000) -> 198.51.100.10:80", "pod", EXTERNAL_IPV4, 80, 1000),
            ("proxy (uid 1337) -> 198.51.100.10:80", "pod", EXTERNAL_IPV4, 80, 1337),
            ("peer -> pod 192.0.2.2:8080", "peer", POD_IPV4, 8080, None),
            ("peer -> pod 192.0.2.2:15090 (excluded)", "peer", POD_IPV4, 15090, None),
        ]
        for label, ns, dst, port, uid in checks:
            result = lab.connect(ns, dst, port, uid=uid, gid=uid)
            landed = result.landed_port
            where = {15001: "sidecar outbound 15001", 15006: "sidecar inbound 15006"}.get(
                landed or 0, f"port {landed} directly" if landed else f"nowhere ({result.error})")
            print(f"  {label:42s} -> {where}")
        for name, listener in (("15001", outbound), ("15006", inbound)):
            for hit in listener.hits:
                print(f"  listener {name} saw {hit.peer_addr}:{hit.peer_port}, SO_ORIGINAL_DST={hit.original_dst}")
        subprocess.run([*argv[:5], "--cleanup-only", "--ipv6", "off"], capture_output=True, check=True)
        print("\ncleanup done; namespaces removed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
