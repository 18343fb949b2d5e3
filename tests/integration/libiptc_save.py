"""Reading legacy tables back through python-iptables, for the libiptc backend's tests.

The backend itself never reads rules this way (the iptables mode reads them with
``iptables-legacy-save``); the tests use it to check that what python-iptables sees
matches what iptables-legacy-save prints.  It runs in the backend's worker, like the
backend's own calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from istio_iptables.kernel.libiptc.common import FAMILY_NAMES, LibiptcError, lib_message
from istio_iptables.kernel.libiptc.loader import load_iptc
from istio_iptables.kernel.libiptc.tables import Tables
from istio_iptables.kernel.libiptc.worker import dispatch


def save(family: int, tables: Sequence[str], *, isolate: bool = True) -> dict[str, dict[str, list[str]]]:
    """Read tables back: {table: {chain: [rule as iptables-save prints it after ``-A CHAIN``]}}.

    Chains are in libiptc order (built-in chains, then user chains by name), as
    ``iptables-save`` lists them.  ``isolate``: see the backend's worker module.
    """
    result: dict[str, dict[str, list[str]]] = dispatch(family, isolate, _save_here, family, list(tables))
    return result


def _save_here(family: int, tables: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    iptc = load_iptc(family)
    result: dict[str, dict[str, list[str]]] = {}
    handles = Tables(iptc, family)
    try:
        for table_name in tables:
            table = handles.get(table_name)
            chains: dict[str, list[str]] = {}
            try:
                for chain in table.chains:
                    rules = []
                    entry = table.first_rule(chain.name)
                    while entry:
                        rules.append(_render(family, handles.rule_cls(entry, chain)))
                        entry = table.next_rule(entry)
                    chains[chain.name] = rules
            except Exception as exc:
                raise LibiptcError(f"{FAMILY_NAMES[family]}: cannot read table {table_name}: {lib_message(exc)}",
                                   table=table_name) from exc
            result[table_name] = chains
    finally:
        handles.discard()
    return result


_PROTOCOL_NAMES: dict[int, str] = {}


def _protocol_name(number: int) -> str | None:
    """The protocol's name as iptables-save prints it: /etc/protocols first (getprotobynumber)."""
    if not _PROTOCOL_NAMES:
        try:
            with open("/etc/protocols", encoding="utf-8", errors="replace") as protocols:
                for line in protocols:
                    fields = line.split("#", 1)[0].split()
                    if len(fields) >= 2 and fields[1].isdigit():
                        _PROTOCOL_NAMES.setdefault(int(fields[1]), fields[0])
        except OSError:
            _PROTOCOL_NAMES[-1] = ""  # remember that there is no file
    return _PROTOCOL_NAMES.get(number)


def _address(value: str) -> str:
    """``"!10.0.0.0/255.0.0.0"`` (python-iptables' form) -> ``"10.0.0.0/8"`` (iptables-save's)."""
    import ipaddress

    addr, _, mask = value.lstrip("!").partition("/")
    try:
        net = ipaddress.ip_network(f"{addr}/{mask}", strict=False)
        return f"{net.network_address}/{net.prefixlen}"
    except ValueError:
        return f"{addr}/{mask}"  # a non-contiguous mask: iptables prints it dotted too


def _saved_options(ext: Any, ip: Any) -> str:
    """The extension's own ``save`` output (what iptables-save prints after ``-m x``/``-j X``)."""
    buf = ext._get_saved_buf(ip)  # python-iptables runs the C save() with stdout on a pipe
    if not buf:
        return ""
    text = buf.decode() if isinstance(buf, bytes) else str(buf)
    return text.strip()


def _render(family: int, rule: Any) -> str:
    """One rule in iptables-save syntax (without the leading ``-A CHAIN``)."""
    parts: list[str] = []
    ip = rule.get_ip()
    zero = {"0.0.0.0/0.0.0.0", "0.0.0.0/0", "::/0"}
    for flag, value in (("-s", rule.src), ("-d", rule.dst)):
        if value.lstrip("!") in zero and not value.startswith("!"):
            continue
        parts += (["!"] if value.startswith("!") else []) + [flag, _address(value)]
    for flag, value in (("-i", rule.in_interface), ("-o", rule.out_interface)):
        if value:
            parts += (["!"] if value.startswith("!") else []) + [flag, value.lstrip("!")]
    proto = rule.protocol
    if ip.proto or proto.startswith("!"):  # iptables-save omits protocol 0 ("all")
        name = _protocol_name(int(ip.proto)) or proto.lstrip("!")
        parts += (["!"] if proto.startswith("!") else []) + ["-p", "all" if name == "ip" else name]
    if family == 4 and ip.flags & 0x01:  # IPT_F_FRAG
        parts += (["!"] if ip.invflags & 0x20 else []) + ["-f"]
    for match in rule.matches:
        parts += ["-m", match.name]
        options = _saved_options(match, ip)
        if options:
            parts.append(options)
    target = rule.target
    if target is not None and target.name:
        parts += ["-g" if target.goto else "-j", target.name]
        options = _saved_options(target, ip)
        if options:
            parts.append(options)
    return " ".join(parts)
