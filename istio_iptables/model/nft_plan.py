"""Istio's native nftables mode (`--native-nftables`): the `nft -f` text, rendered purely.

Istio's nftables backend (tools/istio-nftables) writes one `inet` ruleset for IPv4 and
IPv6 together, in three tables named after the iptables tables they replace.  Rules
that match an address come in an `ip` and an `ip6` variant; the `ip6` one is only
written when the pod has IPv6.  The text is one transaction: per table `add table`
(create if missing), `flush table` (drop the rules of an earlier run), the chains that
hold rules, then the rules in the order Istio builds them.

Pure: no I/O.  The rule order mirrors Istio's capture/run.go because nftables, like
iptables, evaluates rules in order, and Istio's golden files pin that order down.
"""

import re
from collections.abc import Sequence

from istio_iptables.model.config import CaptureConfig
from istio_iptables.model.constants import (
    DNS_AGENT_PORT,
    IPV4_INBOUND_PASSTHROUGH,
    IPV6_INBOUND_PASSTHROUGH,
    IPV6_LOOPBACK,
    OUTBOUND_MARK,
)
from istio_iptables.model.hostfacts import HostFacts
from istio_iptables.model.record import Record

FAMILY = "inet"
NAT = "istio-proxy-nat"
MANGLE = "istio-proxy-mangle"
RAW = "istio-proxy-raw"
# In the order Istio writes them.
TABLES = (NAT, MANGLE, RAW)

PREROUTING = "prerouting"
OUTPUT = "output"
INBOUND = "istio-inbound"
OUTPUT_CHAIN = "istio-output"
OUTPUT_DNS = "istio-output-dns"
REDIRECT = "istio-redirect"
IN_REDIRECT = "istio-in-redirect"
DIVERT = "istio-divert"
TPROXY = "istio-tproxy"
DROP = "istio-drop"

COUNTER = "counter"
# Interface names nft reads as a bare word; anything else (a leading digit, '@') is quoted.
# A pattern, compiled by re (and cached) only when an interface is named: compiling it
# at import cost every native apply ~0.3 M instructions.
_BARE_IFACE_RE = r"^[A-Za-z_][A-Za-z0-9_.-]*\*?$"


class Chain(Record):
    """A chain of an Istio table; base chains carry their hook (type, hook, priority)."""

    name: str
    hook: tuple[str, str, int] | None = None

    def declaration(self, table: str) -> str:
        """The `add chain` line.  Priorities are numeric, as Istio writes them
        (dstnat = -100, mangle = -150, raw = -300), which every nft version accepts."""
        line = f"add chain {FAMILY} {table} {self.name}"
        if self.hook is None:
            return line
        kind, hook, priority = self.hook
        return f"{line} {{ type {kind} hook {hook} priority {priority} ; }}"


# Every chain a table may hold, in the order Istio declares them.
TABLE_CHAINS: dict[str, tuple[Chain, ...]] = {
    NAT: (
        Chain(PREROUTING, ("nat", "prerouting", -100)),
        Chain(OUTPUT, ("nat", "output", -100)),
        Chain(INBOUND), Chain(REDIRECT), Chain(IN_REDIRECT), Chain(OUTPUT_CHAIN), Chain(OUTPUT_DNS),
    ),
    MANGLE: (
        Chain(PREROUTING, ("filter", "prerouting", -150)),
        # A route chain: a mark set on output makes the kernel route the packet again.
        Chain(OUTPUT, ("route", "output", -150)),
        Chain(DIVERT), Chain(TPROXY), Chain(INBOUND), Chain(DROP),
    ),
    RAW: (
        Chain(PREROUTING, ("filter", "prerouting", -300)),
        Chain(OUTPUT, ("filter", "output", -300)),
        Chain(INBOUND), Chain(OUTPUT_DNS),
    ),
}


def _jump_target(expr: str) -> str | None:
    """The chain a rule's text jumps to, when it ends with `jump CHAIN`."""
    words = expr.split()
    return words[-1] if len(words) >= 2 and words[-2] == "jump" else None


class NftRule(Record):
    """One rule: appended, or inserted at a 0-based `position` (iptables' -I 1 is nft's index 0)."""

    table: str
    chain: str
    expr: str
    position: int | None = None

    @property
    def jump_target(self) -> str | None:
        """The chain this rule jumps to, when its verdict is a jump."""
        return _jump_target(self.expr)


class NftRun(Record):
    """Rules alike but for one word, one per value, in order: `add rule ... before value
    after` (the -x and -i CIDRs).  As iptables_plan.RuleRun: 10,000 CIDRs are rendered
    and summarised by joins and slices, with no Python step per rule."""

    table: str
    chain: str
    before: str
    values: tuple[str, ...]
    after: str

    @property
    def jump_target(self) -> str | None:
        return _jump_target(self.after)

    def lines(self, values: Sequence[str] | None = None) -> str:
        """The `add rule` lines of `values` (default: all), newline-separated."""
        values = self.values if values is None else values
        if not values:
            return ""
        start = f"add rule {FAMILY} {self.table} {self.chain} {self.before} "
        end = f" {self.after}"
        return start + (end + "\n" + start).join(values) + end


NftPart = NftRule | NftRun


class _Rules:
    """Accumulates rules in Istio's order; `*6` variants only when the pod has IPv6."""

    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.rules: list[NftPart] = []

    def run(self, table: str, chain: str, before: str, values: tuple[str, ...], after: str, v6: bool = False) -> None:
        """One rule per value (lists of CIDRs run to thousands); `v6`: only with IPv6."""
        if values and (self.ipv6 or not v6):
            self.rules.append(NftRun(table, chain, before, values, after))

    def add(self, table: str, chain: str, *parts: str) -> None:
        self.rules.append(NftRule(table, chain, " ".join(parts)))

    def add6(self, table: str, chain: str, *parts: str) -> None:
        if self.ipv6:
            self.add(table, chain, *parts)

    def insert(self, table: str, chain: str, position: int, *parts: str) -> None:
        self.rules.append(NftRule(table, chain, " ".join(parts), position))

    def insert6(self, table: str, chain: str, position: int, *parts: str) -> None:
        if self.ipv6:
            self.insert(table, chain, position, *parts)


def render_nft(cfg: CaptureConfig, host: HostFacts) -> str:
    """The `nft -f` input Istio's native nftables mode writes for `cfg` on this host."""
    return render_parts(build_nft_rules(cfg, host))


def render_parts(parts: list[NftPart]) -> str:
    """The `nft -f` input for planned rules: per table in Istio's order, its header,
    chains and rules."""
    parts = _nonempty(parts)
    texts = _part_texts(parts)
    lines: list[str] = []
    for table in TABLES:
        held = [i for i, part in enumerate(parts) if part.table == table]
        if not held:  # nothing at all for a table without rules: a REDIRECT-only pod has no mangle or raw
            continue
        lines += [f"add table {FAMILY} {table}", f"flush table {FAMILY} {table}"]
        lines += [chain.declaration(table) for chain in _chains_needed(table, [parts[i] for i in held])]
        lines += [texts[i] for i in held]
    return "".join(line + "\n" for line in lines)


def rule_count(parts: list[NftPart]) -> int:
    return sum(len(p.values) if isinstance(p, NftRun) else 1 for p in parts)


def nft_summary(parts: list[NftPart]) -> str:
    """The written rules for the final log: per table, the rule count per chain, then
    each chain as iptables_render.chain_summary shows it (a run is sliced, not expanded)."""
    from istio_iptables.model.iptables_render import Piece, chain_summary, rule_piece, run_piece

    parts = _nonempty(parts)
    pieces: dict[tuple[str, str], list[Piece]] = {}
    for part, text in zip(parts, _part_texts(parts, runs=False), strict=True):
        piece = run_piece(part.values, part.lines) if isinstance(part, NftRun) else rule_piece(text)
        pieces.setdefault((part.table, part.chain), []).append(piece)
    out: list[str] = []
    for table in TABLES:
        chains = [chain for t, chain in pieces if t == table]
        if not chains:
            continue
        counts = {chain: sum(n for n, _ in pieces[table, chain]) for chain in chains}
        out.append(f"{FAMILY} {table}  (rules per chain: {', '.join(f'{c} {n:,}' for c, n in counts.items())})")
        for chain in chains:
            out += chain_summary(pieces[table, chain], chain)
    return "\n".join(out)


def cleanup_text(tables: tuple[str, ...] = TABLES) -> str:
    """A transaction deleting our tables whether or not they exist: `add table` first
    makes the `delete table` valid on a clean host (Istio's --cleanup-only does the same)."""
    lines: list[str] = []
    for table in tables:
        lines += [f"add table {FAMILY} {table}", f"delete table {FAMILY} {table}"]
    return "".join(line + "\n" for line in lines)


def _chains_needed(table: str, rules: list[NftPart]) -> list[Chain]:
    """Chains holding rules, in Istio's declaration order.  A chain that is only jumped
    to is declared too (empty): Istio omits it, and nft then refuses the whole
    transaction; this can only happen with IPv6 off and IPv6-only nameservers."""
    used = {r.chain for r in rules} | {t for r in rules if (t := r.jump_target) is not None}
    return [chain for chain in TABLE_CHAINS[table] if chain.name in used]


def _nonempty(parts: list[NftPart]) -> list[NftPart]:
    """Without empty runs: they hold no rule, so they must not make a table appear."""
    return [p for p in parts if not isinstance(p, NftRun) or p.values]


def _part_texts(parts: list[NftPart], runs: bool = True) -> list[str]:
    """Each part's `add rule` / `insert rule` line (a run: its lines, or "" without
    `runs`, for a caller that slices runs itself).  nft cannot insert into an empty
    chain, nor at an index past the chain's end, so such inserts become appends, as
    Istio does."""
    count: dict[tuple[str, str], int] = {}
    texts: list[str] = []
    for part in parts:
        key = (part.table, part.chain)
        held = count.get(key, 0)
        if isinstance(part, NftRun):
            texts.append(part.lines() if runs else "")
            count[key] = held + len(part.values)
            continue
        where = f"{FAMILY} {part.table} {part.chain}"
        if part.position is None or held == 0 or part.position >= held:
            texts.append(f"add rule {where} {part.expr}")
        else:
            texts.append(f"insert rule {where} index {part.position} {part.expr}")
        count[key] = held + 1
    return texts


def iface(name: str) -> str:
    """An interface name as nft reads it.  iptables' trailing '+' wildcard is nft's '*'
    (Istio passes 'eth+' through and nft refuses the whole transaction); names nft would
    misparse unquoted (e.g. '1eth', 'a@b') are quoted.  Plain names stay bare, as Istio
    writes them."""
    if name.endswith("+"):
        name = name[:-1] + "*"
    return name if re.match(_BARE_IFACE_RE, name) else f'"{name}"'


def build_nft_rules(cfg: CaptureConfig, host: HostFacts) -> list[NftPart]:
    """Every rule of all three tables, in the order Istio adds them."""
    r = _Rules(host.ipv6)
    redirect_dns = cfg.redirect_dns and (
        cfg.capture_all_dns or bool(host.nameservers_v4) or bool(host.nameservers_v6)
    )
    _exclude_interfaces(r, cfg)
    for name in cfg.kube_virt_interfaces:
        r.insert(NAT, PREROUTING, 0, "iifname", iface(name), COUNTER, "return")
    if cfg.drop_invalid:
        r.add(MANGLE, PREROUTING, "meta l4proto tcp ct state invalid", COUNTER, "jump", DROP)
        r.add(MANGLE, DROP, COUNTER, "drop")
    r.add(NAT, INBOUND, "meta l4proto tcp tcp dport", str(cfg.inbound_tunnel_port), COUNTER, "return")
    r.add(NAT, REDIRECT, "meta l4proto tcp", COUNTER, f"redirect to :{cfg.proxy_port}")
    r.add(NAT, IN_REDIRECT, "meta l4proto tcp", COUNTER, f"redirect to :{cfg.inbound_capture_port}")
    _inbound(r, cfg)
    r.add(NAT, OUTPUT, COUNTER, "jump", OUTPUT_CHAIN)
    for port in cfg.outbound_exclude_ports:
        r.add(NAT, OUTPUT_CHAIN, "tcp dport", str(port), COUNTER, "return")
        r.add(NAT, OUTPUT_CHAIN, "udp dport", str(port), COUNTER, "return")
    r.add(NAT, OUTPUT_CHAIN, "oifname lo ip saddr", IPV4_INBOUND_PASSTHROUGH, COUNTER, "return")
    r.add6(NAT, OUTPUT_CHAIN, "oifname lo ip6 saddr", IPV6_INBOUND_PASSTHROUGH, COUNTER, "return")
    _proxy_owner(r, cfg, "skuid", cfg.proxy_uids, redirect_dns)
    _proxy_owner(r, cfg, "skgid", cfg.proxy_gids, redirect_dns)
    _owner_groups(r, cfg)
    if redirect_dns:
        _dns(r, cfg, host)
    r.add(NAT, OUTPUT_CHAIN, "ip daddr", cfg.ipv4_loopback_cidr, COUNTER, "return")
    r.add6(NAT, OUTPUT_CHAIN, "ip6 daddr", IPV6_LOOPBACK, COUNTER, "return")
    r.run(NAT, OUTPUT_CHAIN, "ip daddr", cfg.outbound_exclude_cidrs.v4, f"{COUNTER} return")
    r.run(NAT, OUTPUT_CHAIN, "ip6 daddr", cfg.outbound_exclude_cidrs.v6, f"{COUNTER} return", v6=True)
    for port in cfg.outbound_ports:
        r.add(NAT, OUTPUT_CHAIN, "tcp dport", str(port), COUNTER, "jump", REDIRECT)
    _outbound_include(r, cfg)
    if cfg.tproxy:
        _tproxy_marks(r, cfg)
    return r.rules


def _exclude_interfaces(r: _Rules, cfg: CaptureConfig) -> None:
    """Neither inbound nor outbound traffic of these interfaces is captured; with
    TPROXY the mangle hooks must skip them too."""
    tables = (NAT, MANGLE) if cfg.tproxy else (NAT,)
    for table in tables:
        for name in cfg.exclude_interfaces:
            r.add(table, PREROUTING, "iifname", iface(name), COUNTER, "return")
            r.add(table, OUTPUT, "oifname", iface(name), COUNTER, "return")


def _inbound(r: _Rules, cfg: CaptureConfig) -> None:
    """Inbound capture: nat redirect to the capture port, or mangle TPROXY."""
    if not cfg.captures_inbound:
        return
    if cfg.tproxy:
        _inbound_tproxy(r, cfg)
        return
    r.add(NAT, PREROUTING, "meta l4proto tcp", COUNTER, "jump", INBOUND)
    if cfg.inbound_ports_all:
        for port in cfg.inbound_exclude_ports:
            r.add(NAT, INBOUND, "meta l4proto tcp tcp dport", str(port), COUNTER, "return")
        r.add(NAT, INBOUND, "meta l4proto tcp", COUNTER, "jump", IN_REDIRECT)
        return
    for port in cfg.inbound_ports:
        r.add(NAT, INBOUND, "meta l4proto tcp tcp dport", str(port), COUNTER, "jump", IN_REDIRECT)


def _inbound_tproxy(r: _Rules, cfg: CaptureConfig) -> None:
    """TPROXY keeps the client's address: new connections go to the capture port with
    the mark (routed locally via the mark's table); established ones only get the mark."""
    mark = str(cfg.tproxy_mark)
    port = str(cfg.inbound_capture_port)
    r.add(MANGLE, DIVERT, COUNTER, "meta mark set", mark)
    r.add(MANGLE, DIVERT, COUNTER, "accept")
    r.add(MANGLE, TPROXY, "meta l4proto tcp ip daddr !=", cfg.ipv4_loopback_cidr,
          f"tproxy ip to :{port} meta mark set {mark}", COUNTER, "accept")
    r.add6(MANGLE, TPROXY, "meta l4proto tcp ip6 daddr !=", IPV6_LOOPBACK,
           f"tproxy ip6 to :{port} meta mark set {mark}", COUNTER, "accept")
    r.add(MANGLE, PREROUTING, "meta l4proto tcp", COUNTER, "jump", INBOUND)
    established = "meta l4proto tcp ct state related,established"
    if cfg.inbound_ports_all:
        for excluded in cfg.inbound_exclude_ports:
            r.add(MANGLE, INBOUND, "meta l4proto tcp tcp dport", str(excluded), COUNTER, "return")
        r.add(MANGLE, INBOUND, established, COUNTER, "jump", DIVERT)
        r.add(MANGLE, INBOUND, "meta l4proto tcp", COUNTER, "jump", TPROXY)
        return
    for included in cfg.inbound_ports:
        r.add(MANGLE, INBOUND, established, "tcp dport", str(included), COUNTER, "jump", DIVERT)
        r.add(MANGLE, INBOUND, "meta l4proto tcp tcp dport", str(included), COUNTER, "jump", TPROXY)


def _proxy_owner(r: _Rules, cfg: CaptureConfig, key: str, owners: tuple[str, ...], redirect_dns: bool) -> None:
    """The proxy's own traffic (`key` is skuid or skgid) is never captured, except its
    calls back to the pod over lo, which go to the inbound port.  With DNS capture, port
    53 is left out of the lo rules (only for uids in the re-capture, as Istio does)."""
    keep_lo_return = not (cfg.outbound_cidrs.v4_has_loopback or cfg.outbound_cidrs.v6_has_loopback)
    tunnel = str(cfg.inbound_tunnel_port)
    dports = f"{{ 53, {tunnel} }}" if redirect_dns and key == "skuid" else tunnel
    for owner in owners:
        recapture = ("tcp dport !=", dports, key, owner, COUNTER, "jump", IN_REDIRECT)
        r.add(NAT, OUTPUT_CHAIN, "oifname lo meta l4proto tcp ip daddr !=", cfg.ipv4_loopback_cidr, *recapture)
        r.add6(NAT, OUTPUT_CHAIN, "oifname lo meta l4proto tcp ip6 daddr !=", IPV6_LOOPBACK, *recapture)
        if keep_lo_return:
            not_dns = ("meta l4proto tcp tcp dport != 53",) if redirect_dns else ()
            r.add(NAT, OUTPUT_CHAIN, "oifname lo", *not_dns, key, "!=", owner, COUNTER, "return")
        r.add(NAT, OUTPUT_CHAIN, key, owner, COUNTER, "return")


def _owner_groups(r: _Rules, cfg: CaptureConfig) -> None:
    """ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]: which groups' traffic is captured at all."""
    groups = cfg.owner_groups
    if groups.capture_all_except:
        for group in groups.values:
            r.add(NAT, OUTPUT_CHAIN, "skgid", group, COUNTER, "return")
        return
    none_of = [f"skgid != {group}" for group in groups.values]
    r.add(NAT, OUTPUT_CHAIN, *none_of, COUNTER, "return")


def _dns(r: _Rules, cfg: CaptureConfig, host: HostFacts) -> None:
    """DNS capture to the agent on 15053: all port-53 traffic, or only that to the
    nameservers of resolv.conf (so local DNS proxies do not loop through the agent)."""
    r.add(RAW, OUTPUT, COUNTER, "jump", OUTPUT_DNS)
    r.add(NAT, OUTPUT_CHAIN, COUNTER, "jump", OUTPUT_DNS)
    to_agent = (COUNTER, f"redirect to :{DNS_AGENT_PORT}")
    if cfg.capture_all_dns:
        r.add(NAT, OUTPUT_DNS, "meta l4proto tcp tcp dport 53", *to_agent)
        r.add(NAT, OUTPUT_DNS, "udp dport 53", *to_agent)
    else:
        for proto in ("tcp", "udp"):
            for server in host.nameservers_v4:
                r.add(NAT, OUTPUT_DNS, f"ip daddr {server}/32 {proto} dport 53", *to_agent)
            for server in host.nameservers_v6:
                r.add6(NAT, OUTPUT_DNS, f"ip6 daddr {server}/128 {proto} dport 53", *to_agent)
    _dns_conntrack_zones(r, cfg, host)


def _dns_conntrack_zones(r: _Rules, cfg: CaptureConfig, host: HostFacts) -> None:
    """Zone 1: proxy <-> upstream resolvers; zone 2: apps <-> the agent.  Keeps the UDP
    conntrack entries of the two legs from colliding."""
    for key, owners in (("skuid", cfg.proxy_uids), ("skgid", cfg.proxy_gids)):
        for owner in owners:
            r.add(RAW, OUTPUT_DNS, "udp dport 53 meta", key, owner, COUNTER, "ct zone set 1")
            r.add(RAW, OUTPUT_DNS, f"udp sport {DNS_AGENT_PORT} meta", key, owner, COUNTER, "ct zone set 2")
    if cfg.capture_all_dns:
        r.add(RAW, PREROUTING, COUNTER, "jump", INBOUND)
        r.add(RAW, OUTPUT_DNS, "udp dport 53", COUNTER, "ct zone set 2")
        r.add(RAW, INBOUND, "udp sport 53", COUNTER, "ct zone set 1")
        return
    if host.nameservers_v4 or host.nameservers_v6:
        r.add(RAW, PREROUTING, COUNTER, "jump", INBOUND)
    for server in host.nameservers_v4:
        r.add(RAW, OUTPUT_DNS, f"udp dport 53 ip daddr {server}/32", COUNTER, "ct zone set 2")
        r.add(RAW, INBOUND, f"udp sport 53 ip saddr {server}/32", COUNTER, "ct zone set 1")
    for server in host.nameservers_v6:
        r.add6(RAW, OUTPUT_DNS, f"udp dport 53 ip6 daddr {server}/128", COUNTER, "ct zone set 2")
        r.add6(RAW, INBOUND, f"udp sport 53 ip6 saddr {server}/128", COUNTER, "ct zone set 1")


def _outbound_include(r: _Rules, cfg: CaptureConfig) -> None:
    """-i: capture everything ('*') or only these CIDRs; traffic arriving on -k
    interfaces is treated as outbound and redirected too."""
    cidrs = cfg.outbound_cidrs
    if cidrs.wildcard:
        r.add(NAT, OUTPUT_CHAIN, COUNTER, "jump", REDIRECT)
        for name in cfg.kube_virt_interfaces:
            r.insert(NAT, PREROUTING, 0, "iifname", iface(name), COUNTER, "jump", REDIRECT)
        return
    if not cfg.kube_virt_interfaces:  # one rule per CIDR, nothing between them
        r.run(NAT, OUTPUT_CHAIN, "ip daddr", cidrs.v4, f"{COUNTER} jump {REDIRECT}")
        r.run(NAT, OUTPUT_CHAIN, "ip6 daddr", cidrs.v6, f"{COUNTER} jump {REDIRECT}", v6=True)
        return
    for cidr in cidrs.v4:
        for name in cfg.kube_virt_interfaces:
            r.insert(NAT, PREROUTING, 0, "iifname", iface(name), "ip daddr", cidr, COUNTER, "jump", REDIRECT)
        r.add(NAT, OUTPUT_CHAIN, "ip daddr", cidr, COUNTER, "jump", REDIRECT)
    for cidr in cidrs.v6:
        for name in cfg.kube_virt_interfaces:
            r.insert6(NAT, PREROUTING, 0, "iifname", iface(name), "ip6 daddr", cidr, COUNTER, "jump", REDIRECT)
        r.add6(NAT, OUTPUT_CHAIN, "ip6 daddr", cidr, COUNTER, "jump", REDIRECT)


def _tproxy_marks(r: _Rules, cfg: CaptureConfig) -> None:
    """Marks that make TPROXY'd connections and their replies route via lo, and keep
    proxy -> app traffic from being diverted again."""
    mark = str(cfg.tproxy_mark)
    r.add(MANGLE, PREROUTING, "meta l4proto tcp mark", mark, COUNTER, "ct mark set mark")
    r.add(MANGLE, OUTPUT, "oifname lo meta l4proto tcp mark", mark, COUNTER, "return")
    for key, owners in (("skuid", cfg.proxy_uids), ("skgid", cfg.proxy_gids)):
        for owner in owners:
            tail = (key, owner, COUNTER, "meta mark set", OUTBOUND_MARK)
            r.add(MANGLE, OUTPUT, "oifname lo meta l4proto tcp ip daddr !=", cfg.ipv4_loopback_cidr, *tail)
            r.add6(MANGLE, OUTPUT, "oifname lo meta l4proto tcp ip6 daddr !=", IPV6_LOOPBACK, *tail)
    r.add(MANGLE, OUTPUT, "meta l4proto tcp ct mark", mark, COUNTER, "meta mark set ct mark")
    r.insert(MANGLE, INBOUND, 0, "meta l4proto tcp mark", mark, COUNTER, "return")
    r.insert(MANGLE, INBOUND, 1, "iifname lo meta l4proto tcp ip saddr", IPV4_INBOUND_PASSTHROUGH, COUNTER, "return")
    r.insert6(MANGLE, INBOUND, 1, "iifname lo meta l4proto tcp ip6 saddr", IPV6_INBOUND_PASSTHROUGH,
              COUNTER, "return")
    r.insert(MANGLE, INBOUND, 2, "iifname lo meta l4proto tcp mark !=", OUTBOUND_MARK, COUNTER, "return")
