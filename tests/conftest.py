"""Shared test helpers: Istio's parity data in tests/testdata, and a clean tool environment."""

from __future__ import annotations

import os
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


@pytest.fixture(autouse=True)
def clean_tool_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(TOOL_ENV_PREFIXES):
            monkeypatch.delenv(name)
    yield
