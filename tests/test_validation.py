"""Who the validation probe dials as (the real probe runs in tests/integration/test_edges.py)."""

from __future__ import annotations

import os

import pytest

from istio_iptables.apply import validation


def test_the_probe_keeps_its_identity_when_it_already_is_the_proxy() -> None:
    assert validation.probe_identity(os.geteuid(), os.getegid()) is None


def test_the_probe_switches_only_with_both_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    other = (os.geteuid() + 1337, os.getegid() + 1337)
    both = (1 << validation.CAP_SETUID) | (1 << validation.CAP_SETGID)
    monkeypatch.setattr(validation, "_effective_capabilities", lambda: both)
    assert validation.probe_identity(*other) == other
    for caps in (0, 1 << validation.CAP_SETUID, 1 << validation.CAP_SETGID):
        monkeypatch.setattr(validation, "_effective_capabilities", lambda caps=caps: caps)
        assert validation.probe_identity(*other) is None


def test_capabilities_are_read_from_proc() -> None:
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(ln for ln in status if ln.startswith("CapEff:"))
    assert validation._effective_capabilities() == int(line.split()[1], 16)
