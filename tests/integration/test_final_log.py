"""What the last log lines of an apply show (apply/final_log.py): the rules written when
the namespace held none before, with no process started to read them back; the kernel's
own listing whenever something else was there, so a reader of `kubectl logs` sees it."""

from __future__ import annotations

from pathlib import Path

import pytest

from istio_iptables.lab.netlab import NetLab

from .conftest import STANDARD, applied
from .test_promises import _real, _shim

pytestmark = pytest.mark.netns
SAVES = ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save")


def _recording(tmp_path: Path, programs: tuple[str, ...]) -> tuple[dict[str, str], Path]:
    """An environment whose PATH records each run of `programs` in the returned file."""
    calls = tmp_path / "calls"
    env: dict[str, str] = {}
    for program in programs:
        env = _shim(tmp_path / "bin", program, f'echo {program} >> {calls}\nexec {_real(program)} "$@"')
    return env, calls


def test_a_fresh_pod_logs_the_rules_written_and_reads_nothing_back(lab: NetLab, tmp_path: Path) -> None:
    env, calls = _recording(tmp_path, SAVES)

    done = applied(lab, *STANDARD, "--ipv6", "off", env=env)

    assert "the namespace held no rules before this run" in done.stderr
    assert "-A ISTIO_OUTPUT -j ISTIO_REDIRECT" in done.stderr.split("held no rules before this run")[1]
    assert not calls.exists(), calls.read_text()


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_another_writers_rule_shows_in_the_final_log(lab: NetLab, tmp_path: Path, backend: str) -> None:
    lab.run("pod", f"iptables-{backend}", "-t", "filter", "-A", "OUTPUT", "-d", "198.51.100.9/32", "-j", "ACCEPT")
    env, calls = _recording(tmp_path, SAVES)

    done = applied(lab, *STANDARD, "--ipv6", "off", env=env)

    final = done.stderr.split(f"final iptables-{backend}-save state (IPv4):")[1]
    assert "-A OUTPUT -d 198.51.100.9/32 -j ACCEPT" in final
    assert "-A ISTIO_OUTPUT -j ISTIO_REDIRECT" in final
    assert calls.read_text().split() == [f"iptables-{backend}-save"] * 2  # the survey, then the read-back


def test_native_mode_logs_what_nft_wrote_in_a_fresh_pod_and_lists_the_ruleset_otherwise(
        lab: NetLab, tmp_path: Path) -> None:
    env, calls = _recording(tmp_path, ("nft",))
    flags = (*STANDARD, "--ipv6", "off", "--native-nftables")

    fresh = applied(lab, *flags, env=env)

    assert "the namespace held no nftables tables before this run" in fresh.stderr
    assert "add rule inet istio-proxy-nat istio-output counter jump istio-redirect" in fresh.stderr
    assert calls.read_text().split() == ["nft"]  # the one `nft -f`
    calls.unlink()
    lab.run("pod", "nft", "add table inet foreign")

    again = applied(lab, *flags, env=env)

    assert "final nft ruleset:" in again.stderr
    assert "table inet foreign" in again.stderr.split("final nft ruleset:")[1]
    assert calls.read_text().split() == ["nft", "nft", "nft"]  # our tables as they were, nft -f, the listing
