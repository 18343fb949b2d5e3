"""Rule-for-rule parity with Istio's own golden files (tests/testdata/istio-golden)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from istio_iptables.cli.main import main

from .conftest import TESTDATA

GOLDEN = TESTDATA / "istio-golden"
# Read at import: without the data, collection fails loudly instead of every case skipping.
CASES: dict[str, dict[str, object]] = json.loads((GOLDEN / "cases.json").read_text())["cases"]
IPTABLES_CASES = sorted(name for name in CASES if (GOLDEN / "iptables" / f"{name}.golden").exists())


def golden_restore_lines(name: str) -> list[str]:
    """The iptables-restore input Istio recorded: every line but the -save probes."""
    lines = (GOLDEN / "iptables" / f"{name}.golden").read_text().splitlines()
    return [line for line in lines if line not in ("iptables-save", "ip6tables-save")]


def test_reference_is_present() -> None:
    assert len(IPTABLES_CASES) == 27, f"expected 27 golden cases under {GOLDEN}"


def test_every_golden_file_has_its_inputs() -> None:
    """A golden file without a cases.json entry would be silently left out of the parity run."""
    goldens = {p.name.removesuffix(".golden") for p in GOLDEN.glob("*/*.golden")}
    assert goldens - set(CASES) == set()


def test_istio_1_3_reference_is_present() -> None:
    """The upgrade test (tests/integration) replays these; without root it cannot run, so
    their presence is checked here too."""
    old = TESTDATA / "istio-1.3-golden"
    cases = json.loads((old / "cases.json").read_text())["cases"]
    assert len(cases) == 8
    assert {p.name.removesuffix("_golden.txt") for p in old.glob("*_golden.txt")} == set(cases)


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


def test_every_chain_istio_creates_is_one_we_call_ours() -> None:
    """OUR_CHAINS decides what a cleanup removes and what a re-run compares: every chain
    Istio's golden outputs create must be in it, in the table it is created in."""
    from istio_iptables.model.constants import OUR_CHAINS

    created: set[tuple[str, str]] = set()
    for name in IPTABLES_CASES:
        table = ""
        for line in golden_restore_lines(name):
            if line.startswith("*"):
                table = line[1:].strip()
            elif line.startswith("-N "):
                created.add((table, line.split()[1]))
    assert {"nat", "mangle", "raw"} <= {table for table, _ in created}  # the goldens do cover every table
    assert {(table, chain) for table, chain in created if chain not in OUR_CHAINS.get(table, ())} == set()
