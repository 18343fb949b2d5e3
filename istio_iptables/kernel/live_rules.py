"""Read what is really installed in the current network namespace, for
`explain --live`: each family's iptables rules (from whichever backend holds them),
the native nftables tables, the namespace's addresses, and its policy rules and
routes (kernel/live_routing.py; TPROXY needs them to deliver).

Both iptables backends can hold rules at once and the kernel runs both; the walk
evaluates one, so when both hold rules that is said, not hidden.
"""


import socket

from istio_iptables.kernel import iptables_restore as rb
from istio_iptables.kernel import spawn
from istio_iptables.kernel.netlink import interface_addresses
from istio_iptables.model.iptables_dump import IptablesState, parse_save
from istio_iptables.model.nft_plan import TABLES as NATIVE_TABLES
from istio_iptables.model.policy_routing import Routing
from istio_iptables.model.record import Record


class LiveRules(Record):
    texts: dict[int, str]  # family -> -save text evaluated
    sources: dict[int, str]  # family -> the binary that produced it
    notes: tuple[str, ...]
    native_tables: tuple[str, ...]  # our inet tables written by --native-nftables
    native_text: str  # `nft -j list table` of each, one JSON document per line
    native_listing: str  # `nft -a list table` of each: the rules as text, with handles
    addresses: tuple[tuple[str, str], ...]  # (interface, address)
    routing: Routing | None = None  # None: could not be read (the reason is in notes)


def _dump(binary: rb.Binary) -> tuple[str, IptablesState] | None:
    """The flavour's rules as the init path reads them (rb.dump: the cheap probes
    first), with their parse; None when it is not installed, does not work here, or
    holds no rule (empty tables a read-only `iptables-legacy -L` created)."""
    try:
        text = rb.dump(binary)
    except rb.IptablesError:
        return None
    if not text:
        return None
    current = parse_save(text)
    return (text, current) if current.has_rules() else None


def read_family(family: int) -> tuple[str, str, list[str]]:
    """(save text, source, notes) for one family."""
    notes: list[str] = []
    found: list[tuple[str, str, IptablesState]] = []
    for flavour in ("legacy", "nft"):
        binary = rb.Binary(family, flavour)
        dumped = _dump(binary)
        if dumped is not None:
            found.append((dumped[0], binary.save, dumped[1]))
    if not found:
        return "", "no iptables rules", notes
    if len(found) > 1:
        ours = [f for f in found if f[2].has_ours()] or found
        notes.append(f"IPv{family}: both iptables-legacy and iptables-nft hold rules and the kernel runs both; "
                     f"only {ours[0][1]} (the one with ISTIO_ chains) is evaluated")
        return ours[0][0], ours[0][1], notes
    return found[0][0], found[0][1], notes


def read_native() -> tuple[tuple[str, ...], str, str]:
    """Our native nftables tables present now: names, `nft -j` JSON and `nft -a` text."""
    if rb.which("nft") is None:
        return (), "", ""
    present: list[str] = []
    documents: list[str] = []
    listings: list[str] = []
    for table in NATIVE_TABLES:
        done = spawn.run(["nft", "-j", "list", "table", "inet", table], timeout=30)
        if done.returncode == 0:
            present.append(table)
            documents.append(" ".join(done.stdout.split("\n")))
            listings.append(spawn.run(["nft", "-a", "list", "table", "inet", table], timeout=30).stdout)
    return tuple(present), "\n".join(documents), "".join(listings)


def addresses() -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for index, address in interface_addresses():
        try:
            name = socket.if_indextoname(index)
        except OSError:
            name = str(index)
        out.append((name, address))
    return tuple(out)


def read_live() -> LiveRules:
    texts: dict[int, str] = {}
    sources: dict[int, str] = {}
    notes: list[str] = []
    for family in (4, 6):
        text, source, family_notes = read_family(family)
        texts[family], sources[family] = text, source
        notes += family_notes
    native, native_text, native_listing = read_native()
    routing = None
    try:
        from istio_iptables.kernel.live_routing import read_routing

        routing = read_routing()
    except Exception as err:  # pyroute2 missing or netlink refused: say so, explain the rules anyway
        notes.append(f"policy routing (ip rule / ip route) could not be read: {type(err).__name__}: {err}")
    return LiveRules(texts, sources, tuple(notes), native, native_text, native_listing, addresses(), routing)
