"""Fixtures for tests that apply rules in real network namespaces and send real traffic."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from istio_iptables.lab.netlab import NetLab, netns_available, netns_required

STANDARD = ("-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
            "-d", "15090,15021,15020")
SEED = ("-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "", "-d", "15020")
APP_UID = 1000


def require_netns() -> None:
    """Skip (or, with REQUIRE_NETNS=1 as in CI, fail) when namespaces are unusable."""
    available, reason = netns_available()
    if not available:
        if netns_required():
            pytest.fail(f"REQUIRE_NETNS=1 but network namespaces are unusable: {reason}", pytrace=False)
        pytest.skip(f"needs root and network namespaces: {reason}")


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require_netns()
    with NetLab() as netlab:
        yield netlab


def istio(lab: NetLab, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the tool against the lab's pod namespace, as an init container would."""
    argv = [sys.executable, "-m", "istio_iptables", "--network-namespace", lab.pod_ns_path, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)


def applied(lab: NetLab, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = istio(lab, *args, env=env)
    assert done.returncode == 0, done.stderr
    return done


def saved(lab: NetLab, *, ipv6: bool = False, backend: str = "nft") -> str:
    """The pod's ruleset without comments and counters, for before/after comparisons."""
    text = lab.iptables_save("pod", ipv6=ipv6, backend=backend)
    lines = [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(lines)
