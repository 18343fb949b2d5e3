"""Line-for-line parity with Istio's native nftables golden files (tests/testdata/istio-golden/nftables).

Each case's flags and environment go through the CLI's own validation (`build_settings`),
and its host facts (IPv6, nameservers) are given directly, as Istio's tests give them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pytest

from istio_iptables.cli.flags import OPTIONS, build_settings
from istio_iptables.model.config import CaptureConfig
from istio_iptables.model.hostfacts import HostFacts
from istio_iptables.model.nft_plan import iface, render_nft

from .conftest import TESTDATA

GOLDEN = TESTDATA / "istio-golden"
# Read at import: without the data, collection fails loudly instead of every case skipping.
CASES: dict[str, dict[str, object]] = json.loads((GOLDEN / "cases.json").read_text())["cases"]
NFT_CASES = sorted(name for name in CASES if (GOLDEN / "nftables" / f"{name}.golden").exists())


def given_from_args(args: Sequence[str]) -> dict[str, object]:
    """istio-iptables flags (short or long) to the CLI's raw values by option dest."""
    by_flag = {flag: opt for opt in OPTIONS for flag in (opt.long, opt.short) if flag}
    given: dict[str, object] = {}
    rest = list(args)
    while rest:
        opt = by_flag[rest.pop(0)]
        given[opt.dest] = True if opt.is_flag else rest.pop(0)
    return given


def capture_config(case: Mapping[str, object]) -> CaptureConfig:
    args, env = case["args"], case["env"]
    assert isinstance(args, list) and isinstance(env, dict)
    return build_settings(given_from_args(args), env).capture


def host_facts(case: Mapping[str, object]) -> HostFacts:
    host = case["host"]
    assert isinstance(host, dict)
    return HostFacts(ipv6=bool(host["ipv6"]), nameservers_v4=tuple(host["nameservers_v4"]),
                     nameservers_v6=tuple(host["nameservers_v6"]))


def test_reference_is_present() -> None:
    assert len(NFT_CASES) == 28, f"expected 28 nftables golden cases under {GOLDEN}"


@pytest.mark.parametrize("name", NFT_CASES)
def test_render_matches_istio_nftables_golden(name: str) -> None:
    case = CASES[name]
    ours = render_nft(capture_config(case), host_facts(case)).splitlines()
    assert ours == (GOLDEN / "nftables" / f"{name}.golden").read_text().splitlines()


def test_render_ends_with_a_newline_and_has_no_blank_lines() -> None:
    text = render_nft(CaptureConfig(), HostFacts())
    assert text.endswith("\n")
    assert "" not in text.splitlines()


def test_ipv6_off_with_only_ipv6_nameservers_declares_every_jumped_to_chain() -> None:
    """Istio would jump to chains it never declares here (nft refuses that); we declare them empty."""
    cfg = CaptureConfig(redirect_dns=True)
    lines = render_nft(cfg, HostFacts(ipv6=False, nameservers_v6=("fd00::53",))).splitlines()
    assert "add rule inet istio-proxy-nat istio-output counter jump istio-output-dns" in lines
    assert "add chain inet istio-proxy-nat istio-output-dns" in lines
    assert "add chain inet istio-proxy-raw istio-inbound" in lines
    assert not any("ip6" in line for line in lines)


@pytest.mark.parametrize(("name", "written"), [
    ("eth0", "eth0"), ("not-istio-nic", "not-istio-nic"), ("eth0.100", "eth0.100"),
    ("eth+", "eth*"), ("1eth", '"1eth"'), ("veth@if2", '"veth@if2"'), ("1eth+", '"1eth*"'),
])
def test_interface_names_are_written_as_nft_reads_them(name: str, written: str) -> None:
    """iptables' 'eth+' wildcard is nft's 'eth*'; names nft would misparse are quoted."""
    assert iface(name) == written
    lines = render_nft(CaptureConfig(exclude_interfaces=(name,)), HostFacts()).splitlines()
    assert f"add rule inet istio-proxy-nat prerouting iifname {written} counter return" in lines
