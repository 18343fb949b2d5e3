"""Placeholder: native nftables tables are reported, not evaluated (see below)."""

from __future__ import annotations

from istio_iptables.model.iptables_match import Tables


def tables_from_nft_json(text: str) -> tuple[dict[int, Tables], list[str]]:
    """Native nftables rules as tables the walk can evaluate, and what could not be read."""
    return {}, ["native nftables rules are not evaluated yet"] if text else []
