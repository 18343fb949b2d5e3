"""`istio-iptables verify` end to end: a real scratch lab, real connections, exit 0
when flags, explain and the kernel agree, and nothing left behind, also on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from .conftest import require_netns

pytestmark = pytest.mark.netns


def _namespaces_of(pid: int) -> list[str]:
    try:
        names = os.listdir("/var/run/netns")
    except FileNotFoundError:
        return []
    return [n for n in names if f"-{pid}-" in n]


def test_verify_dual_stack_tproxy_dns_agrees_and_cleans_up() -> None:
    require_netns()
    argv = [sys.executable, "-m", "istio_iptables", "verify", "-m", "TPROXY", "-i", "*",
            "-x", "10.96.0.0/12,2001:db8:3::/48", "-b", "*", "-d", "15090,15021,15020", "-q", "3306", "-o", "25",
            "--redirect-dns", "--dual-stack", "--output", "json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err + out
    report = json.loads(out)
    assert report["ok"] and report["families"] == [4, 6]
    rows = report["connections"]
    assert len(rows) >= 30
    landed = {r["connection"]: r["kernel"]["port"] for r in rows}
    assert landed["app v4 -> outside"] == 15001
    assert landed["app v6 -> 10.96.0.1 (-x 10.96.0.0/12)".replace("v6", "v4")] == 80
    assert landed["app v4 dns udp -> 198.51.100.53"] == 15053
    assert landed["peer v6 -> pod:8080"] == 15006
    assert landed["peer v4 -> pod:15020"] == 15020
    assert all(r["agree"] for r in rows)
    # The live check read the scratch pod's TPROXY routing (not this host's), both families.
    routing = {r["family"]: r["live"]["routing"] for r in rows if r["connection"].endswith("-> pod:8080")}
    for family in (4, 6):
        # (the priority is the kernel's choice for a rule added without one, as `ip rule add` does)
        priority, _, rest = routing[family]["installed"].partition(": ")
        assert priority.isdigit() and rest.startswith("from all fwmark 0x539 lookup 133 -> local default"), routing
        assert routing[family]["problem"] == ""
    assert _namespaces_of(proc.pid) == []


def test_verify_text_table_and_exit_status() -> None:
    require_netns()
    done = subprocess.run([sys.executable, "-m", "istio_iptables", "verify", "-i", "*", "-b", "*", "-d", "15020"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "connection" in done.stdout.splitlines()[0] and "kernel" in done.stdout.splitlines()[0]
    assert "peer v4 -> pod:8080" in done.stdout and "DIFFERS" not in done.stdout
    assert done.stdout.rstrip().endswith("connections agree")


def test_verify_refuses_bad_flags_before_building_anything() -> None:
    done = subprocess.run([sys.executable, "-m", "istio_iptables", "verify", "-x", "*"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "-x" in done.stderr


def test_verify_interrupted_removes_the_scratch_namespaces() -> None:
    require_netns()
    argv = [sys.executable, "-m", "istio_iptables", "verify", "-i", "*", "-b", "*", "--dual-stack"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()  # "scratch pod ... ; applying the capture": the lab exists now
    assert "scratch pod" in first, first
    assert _namespaces_of(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert _namespaces_of(proc.pid) == []
