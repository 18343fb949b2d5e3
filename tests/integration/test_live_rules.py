"""What `explain --live` and verify read (kernel/live_rules.py, through the init path's
own kernel/iptables_restore.dump), from a thread that alone entered the namespace, as
verify reads its scratch pod: the legacy probe must see that thread's namespace, not
the process's, and of two flavours holding rules the one with our chains is read."""

from __future__ import annotations

import pytest

from istio_iptables.kernel import iptables_restore as rb
from istio_iptables.kernel.live_rules import read_live
from istio_iptables.lab.netlab import NetLab, run_in_netns

pytestmark = pytest.mark.netns


def _kernel_says_legacy_tables(lab: NetLab, ns: str) -> bool:
    """The truth, from a process that entered the namespace whole."""
    done = lab.run(ns, "sh", "-c", "cat /proc/net/ip_tables_names 2>/dev/null || true")
    return bool(done.stdout.strip())


def test_the_legacy_probe_reads_the_calling_threads_namespace(lab: NetLab) -> None:
    lab.run("pod", "iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.1/32", "-j", "RETURN")
    assert (_kernel_says_legacy_tables(lab, "pod"), _kernel_says_legacy_tables(lab, "peer")) == (True, False)
    assert run_in_netns(lab.pod_ns, lambda: rb.legacy_has_tables(4), timeout=30) is True
    assert run_in_netns(lab.peer_ns, lambda: rb.legacy_has_tables(4), timeout=30) is False
    live = run_in_netns(lab.pod_ns, read_live, timeout=60)
    assert live.sources[4] == "iptables-legacy-save"
    assert "-A OUTPUT -d 192.0.2.1/32 -j RETURN" in live.texts[4]


def test_of_two_flavours_with_rules_the_one_with_our_chains_is_read(lab: NetLab) -> None:
    """A foreign legacy rule that merely mentions ISTIO_ does not make it ours."""
    lab.run("pod", "iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-m", "comment", "--comment", "ISTIO_NOTE",
            "-j", "RETURN")
    lab.run("pod", "iptables-nft", "-t", "nat", "-N", "ISTIO_OUTPUT")
    lab.run("pod", "iptables-nft", "-t", "nat", "-A", "OUTPUT", "-j", "ISTIO_OUTPUT")
    live = run_in_netns(lab.pod_ns, read_live, timeout=60)
    assert live.sources[4] == "iptables-nft-save"
    assert "-A OUTPUT -j ISTIO_OUTPUT" in live.texts[4]
    assert any("both iptables-legacy and iptables-nft hold rules" in note for note in live.notes)
