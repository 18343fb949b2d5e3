"""Shared test helpers: Istio's parity data in tests/testdata, and a clean tool environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Istio's golden files and their inputs, copied into the repo (see testdata/NOTICE;
# scripts/refresh_goldens.py refreshes them).  Part of every checkout: a test that
# finds them missing fails rather than skips.
TESTDATA = REPO / "tests" / "testdata"
# Every environment variable the tool reads, so a developer's shell cannot leak into a test.
TOOL_ENV_PREFIXES = ("ISTIO_", "ENVOY_", "INBOUND_", "PROXY_", "KUBE_", "DRY_RUN", "REDIRECT_DNS",
                     "CAPTURE_ALL_DNS", "DROP_INVALID", "INVALID_DROP", "DUAL_STACK", "NETWORK_NAMESPACE",
                     "RUN_VALIDATION", "IPTABLES_PROBE_PORT", "PROBE_TIMEOUT", "SKIP_RULE_APPLY", "RECONCILE",
                     "CLEANUP_ONLY", "FORCE_APPLY", "NATIVE_NFTABLES", "FORCE_IPTABLES_BINARY", "CNI_MODE")


def modules_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds once it has run `code`: what the import
    guards check (whatever `code` prints itself comes before the marker)."""
    script = f"{code}\nimport sys\nprint('--modules--', *sys.modules, sep='\\n')\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return done.stdout.rpartition("--modules--\n")[2].split()


@pytest.fixture(autouse=True)
def clean_tool_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(TOOL_ENV_PREFIXES):
            monkeypatch.delenv(name)
    yield
