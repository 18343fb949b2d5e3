"""Rule-for-rule parity with Istio's own golden files (../shared/reference/istio-golden)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from istio_iptables.cli.main import main

from .conftest import REFERENCE

GOLDEN = REFERENCE / "istio-golden"
CASES: dict[str, dict[str, object]] = (
    json.loads((GOLDEN / "cases.json").read_text())["cases"] if (GOLDEN / "cases.json").exists() else {}
)
IPTABLES_CASES = sorted(name for name in CASES if (GOLDEN / "iptables" / f"{name}.golden").exists())


def golden_restore_lines(name: str) -> list[str]:
    """The iptables-restore input Istio recorded: every line but the -save probes."""
    lines = (GOLDEN / "iptables" / f"{name}.golden").read_text().splitlines()
    return [line for line in lines if line not in ("iptables-save", "ip6tables-save")]


def test_reference_is_present() -> None:
    assert len(IPTABLES_CASES) == 27, f"expected 27 golden cases under {GOLDEN}"


@pytest.mark.parametrize("name", IPTABLES_CASES)
def test_dry_run_matches_istio_golden(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    host = case["host"]
    assert isinstance(host, dict)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("".join(f"nameserver {s}\n" for s in host["nameservers_v4"] + host["nameservers_v6"]))
    env = case["env"]
    assert isinstance(env, dict)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = list(case["args"])  # type: ignore[call-overload]
    argv = ["--dry-run", "--ipv6", "on" if host["ipv6"] else "off", "--resolv-conf", str(resolv), *args]

    assert main(argv) == 0
    out = capsys.readouterr().out
    ours = [line for line in out.splitlines() if not line.startswith("#")]
    assert ours == golden_restore_lines(name)
