"""kernel/nft's error reporting, without a kernel: nft's stderr in, a clear NftError out."""

from __future__ import annotations

import pytest

from istio_iptables.kernel import nft, spawn
from istio_iptables.kernel.nft import NftError, apply_nft, cleanup_nft
from istio_iptables.kernel.nft_refusal import Refusal, parse_refusal

TEXT = "add table inet istio-proxy-nat\nflush table inet istio-proxy-nat\nadd rule inet istio-proxy-nat x bogus\n"
STDERR = (
    "/dev/stdin:3:36-40: Error: syntax error, unexpected string\n"
    "add rule inet istio-proxy-nat x bogus\n"
    "                                   ^^^^^\n"
)


def fake_nft(monkeypatch: pytest.MonkeyPatch, done: spawn.Finished, seen: list[tuple[list[str], str | None]]) -> None:
    def run(argv: list[str], stdin: str | None = None, timeout: float = 60.0) -> spawn.Finished:
        seen.append((argv, stdin))
        return done

    monkeypatch.setattr(spawn, "run", run)


def test_parse_refusal_locates_the_line() -> None:
    assert parse_refusal(STDERR) == Refusal("syntax error, unexpected string", 3)
    assert parse_refusal("Error: Could not process rule: Operation not permitted\n") == Refusal(
        "Error: Could not process rule: Operation not permitted", None)
    assert parse_refusal("") == Refusal("no error message", None)


def test_apply_names_the_refused_line(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[str], str | None]] = []
    fake_nft(monkeypatch, spawn.Finished(1, "", STDERR), seen)

    with pytest.raises(NftError) as caught:
        apply_nft(TEXT)

    assert seen == [(["nft", "-f", "-"], TEXT)]
    assert caught.value.line_number == 3
    assert caught.value.line == "add rule inet istio-proxy-nat x bogus"
    assert str(caught.value) == ("nft refused line 3 ('add rule inet istio-proxy-nat x bogus'): "
                                 "syntax error, unexpected string; nothing was changed")


def test_cleanup_deletes_only_our_three_tables_in_one_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[str], str | None]] = []
    fake_nft(monkeypatch, spawn.Finished(0, "", ""), seen)

    cleanup_nft()

    assert seen == [(["nft", "-f", "-"], "".join(
        f"add table inet istio-proxy-{t}\ndelete table inet istio-proxy-{t}\n" for t in ("nat", "mangle", "raw")))]


def test_missing_nft_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nft, "NFT_BINARY", "nft-which-does-not-exist")
    with pytest.raises(NftError, match="not found on PATH"):
        nft.nft_ruleset()


def test_empty_text_runs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[str], str | None]] = []
    fake_nft(monkeypatch, spawn.Finished(0, "", ""), seen)
    apply_nft("")
    assert seen == []
