"""The planner: configuration and host facts in, ordered rules per family and table out.

Pure: no I/O, no kernel.  The order of every rule matches current Istio's capture step
(tools/istio-iptables/pkg/capture), because iptables evaluates rules in order and the
golden files pin that order down.  The plan also carries the non-iptables steps
(TPROXY policy routing, the ::6 loopback address) so a dry run shows all of an apply.
"""

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from istio_iptables.model.config import CaptureConfig
from istio_iptables.model.constants import (
    DNS_AGENT_PORT,
    IPV4_INBOUND_PASSTHROUGH,
    IPV6_INBOUND_PASSTHROUGH,
    IPV6_LOOPBACK,
    ISTIO_DIVERT,
    ISTIO_DROP,
    ISTIO_IN_REDIRECT,
    ISTIO_INBOUND,
    ISTIO_OUTPUT,
    ISTIO_OUTPUT_DNS,
    ISTIO_REDIRECT,
    ISTIO_TPROXY,
    OUTBOUND_MARK,
    TABLE_ORDER,
)
from istio_iptables.model.hostfacts import HostFacts
from istio_iptables.model.record import Record

# Chains iptables owns and verdicts that are not chains: never created with -N.
BUILTIN_CHAINS_AND_VERDICTS = frozenset(
    {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING", "ACCEPT", "RETURN", "DROP"}
)
_new_tuple = tuple.__new__


def _jump_target(words: tuple[str, ...]) -> str | None:
    return words[-1] if len(words) >= 2 and words[-2] == "-j" else None


class Rule(Record):
    """One iptables rule: `-A chain params` or, with a position, `-I chain position params`."""

    table: str
    chain: str
    params: tuple[str, ...]
    position: int | None = None

    @property
    def verb_args(self) -> tuple[str, ...]:
        """The rule as iptables arguments after `-t table`."""
        if self.position is None:
            return ("-A", self.chain, *self.params)
        return ("-I", self.chain, str(self.position), *self.params)

    @property
    def jump_target(self) -> str | None:
        """The chain this rule jumps to when -j is its last option (as Istio reads it)."""
        return _jump_target(self.params)


class RuleRun(Record):
    """Rules alike but for one word, one per value, in order: `-A chain *before value
    *after` (the -x CIDRs' RETURNs, the -i CIDRs' REDIRECTs).  A list of 10,000 CIDRs is
    one RuleRun: the planner, the restore text and the final log's summary handle it
    with C-level joins and slices instead of a Python step and a tuple per rule (about
    9 M instructions per 1,000 rules).  What needs every rule (the comparison on
    re-runs, libiptc, explain, the JSON and command renderings) reads FamilyPlan.rules."""

    table: str
    chain: str
    before: tuple[str, ...]
    values: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def jump_target(self) -> str | None:
        """As Rule.jump_target: the chain jumped to when -j ends the rule."""
        return _jump_target(self.after)

    def rules(self, values: Iterable[str] | None = None) -> list[Rule]:
        """The rules of this run (or of `values`, a slice of its values)."""
        head, tail, table, chain = self.before, self.after, self.table, self.chain
        return [_new_tuple(Rule, (table, chain, (*head, value, *tail), None))
                for value in (self.values if values is None else values)]

    def lines(self, values: Sequence[str] | None = None) -> str:
        """`-A chain ...` lines, one per value (default: all), newline-separated, made by
        one str.join: no Python step per rule."""
        return self._joined(("-A", self.chain, *self.before), self.values if values is None else values)

    def specs(self) -> list[str]:
        """Each rule's spec (what follows `-A chain`), as -save prints nearly all back."""
        return self._joined(self.before, self.values).split("\n") if self.values else []

    def _joined(self, head: tuple[str, ...], values: Sequence[str]) -> str:
        if not values:
            return ""
        start = " ".join((*head, ""))
        end = " ".join(("", *self.after))
        return start + (end + "\n" + start).join(values) + end


_Part = Rule | RuleRun


def expand(parts: Iterable[_Part]) -> list[Rule]:
    """The single rules of plan parts, runs expanded."""
    return [rule for part in parts for rule in (part.rules() if isinstance(part, RuleRun) else (part,))]


def size(part: _Part) -> int:
    """How many rules a part holds."""
    return len(part.values) if isinstance(part, RuleRun) else 1


class FamilyPlan:
    """The rules of one IP family, in the order they are written: single rules and
    runs of rules alike but for one word (RuleRun).  Immutable by convention."""

    __slots__ = ("_rules", "family", "parts")

    def __init__(self, family: int, parts: Iterable[_Part] = ()) -> None:
        self.family = family
        # An empty run holds no rule: it must not make its chain or table appear.
        self.parts: tuple[_Part, ...] = tuple(p for p in parts if not isinstance(p, RuleRun) or p.values)
        self._rules: tuple[Rule, ...] | None = None

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every rule, runs expanded; built on first use (a fresh apply never needs it)."""
        if self._rules is None:
            self._rules = tuple(expand(self.parts))
        return self._rules

    def count(self) -> int:
        """How many rules, without expanding the runs."""
        return sum(map(size, self.parts))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FamilyPlan):
            return NotImplemented
        return self.family == other.family and self.rules == other.rules

    def __hash__(self) -> int:
        return hash((self.family, self.rules))

    def __repr__(self) -> str:
        return f"FamilyPlan({self.family}, {self.parts!r})"

    def chains(self) -> list[tuple[str, str]]:
        """(table, chain) pairs to create, in Istio's order: chains holding rules first,
        then chains only jumped to."""
        parts = self.parts
        holders = dict.fromkeys((p.table, p.chain) for p in parts)
        jumped = dict.fromkeys((p.table, t) for p in parts if (t := p.jump_target) is not None)
        ordered = dict.fromkeys([*holders, *jumped])
        return [pair for pair in ordered if pair[1] not in BUILTIN_CHAINS_AND_VERDICTS]

    def tables(self) -> list[str]:
        present = {p.table for p in self.parts}
        return [t for t in TABLE_ORDER if t in present]


class RouteStep(Record):
    """A policy-routing step TPROXY needs: `ip rule` or `ip route` in one family."""

    kind: str  # "rule" or "route"
    family: int
    table: int
    mark: int | None = None

    def describe(self) -> str:
        ip = "ip -6" if self.family == 6 else "ip -4"
        if self.kind == "rule":
            return f"{ip} rule add fwmark {self.mark} lookup {self.table}"
        return f"{ip} route add local default dev lo table {self.table}"


class AddressStep(Record):
    """An address added to lo (Istio's ::6 inbound passthrough source)."""

    address: str
    device: str = "lo"

    def describe(self) -> str:
        return f"ip -6 addr add {self.address} dev {self.device}"


class Plan(Record):
    """Everything an apply would do, per family, plus routes and addresses."""

    v4: FamilyPlan
    v6: FamilyPlan | None
    routes: tuple[RouteStep, ...] = ()
    addresses: tuple[AddressStep, ...] = ()

    @property
    def families(self) -> list[FamilyPlan]:
        return [self.v4] if self.v6 is None else [self.v4, self.v6]

    def system_steps(self) -> list[AddressStep | RouteStep]:
        """The non-iptables steps, in the order they are applied."""
        return [*self.addresses, *self.routes]


if TYPE_CHECKING:  # a type only: creating a Protocol class costs every run ~0.4 M instructions
    from typing import Protocol

    class _RuleAdder(Protocol):
        def __call__(self, table: str, chain: str, *params: str, position: int | None = None) -> None: ...


class _Builder:
    """Accumulates rules for both families, as Istio's rule builder does."""

    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.v4: list[_Part] = []
        self.v6: list[_Part] = []

    def v4_rule(self, table: str, chain: str, *params: str, position: int | None = None) -> None:
        self.v4.append(Rule(table, chain, params, position))

    def v6_rule(self, table: str, chain: str, *params: str, position: int | None = None) -> None:
        if self.ipv6:
            self.v6.append(Rule(table, chain, params, position))

    def both(self, table: str, chain: str, *params: str, position: int | None = None) -> None:
        self.v4_rule(table, chain, *params, position=position)
        self.v6_rule(table, chain, *params, position=position)

    def run(self, family: int, table: str, chain: str, before: tuple[str, ...], values: tuple[str, ...],
            after: tuple[str, ...]) -> None:
        """One rule per value (a RuleRun): lists of CIDRs run to thousands."""
        if values and (family == 4 or self.ipv6):
            (self.v4 if family == 4 else self.v6).append(RuleRun(table, chain, before, values, after))

    def versioned(self, v4_addr: str, v6_addr: str, table: str, chain: str, *params: str) -> None:
        """A rule that differs per family only in one address, written as `{}`."""
        self.v4_rule(table, chain, *(v4_addr if p == "{}" else p for p in params))
        self.v6_rule(table, chain, *(v6_addr if p == "{}" else p for p in params))


def build_plan(cfg: CaptureConfig, host: HostFacts) -> Plan:
    """Plan the rules for `cfg` on a host with the given facts."""
    b = _Builder(ipv6=host.ipv6)
    redirect_dns = cfg.redirect_dns and (
        cfg.capture_all_dns or bool(host.nameservers_v4) or bool(host.nameservers_v6)
    )
    _exclude_interfaces(b, cfg)
    for iface in cfg.kube_virt_interfaces:
        b.both("nat", "PREROUTING", "-i", iface, "-j", "RETURN", position=1)
    if cfg.drop_invalid:
        b.both("mangle", "PREROUTING", "-m", "conntrack", "--ctstate", "INVALID", "-j", ISTIO_DROP)
        b.both("mangle", ISTIO_DROP, "-j", "DROP")
    b.both("nat", ISTIO_INBOUND, "-p", "tcp", "--dport", str(cfg.inbound_tunnel_port), "-j", "RETURN")
    b.both("nat", ISTIO_REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(cfg.proxy_port))
    b.both("nat", ISTIO_IN_REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(cfg.inbound_capture_port))
    _inbound(b, cfg)
    b.both("nat", "OUTPUT", "-j", ISTIO_OUTPUT)
    for port in cfg.outbound_exclude_ports:
        b.both("nat", ISTIO_OUTPUT, "-p", "tcp", "--dport", str(port), "-j", "RETURN")
        b.both("nat", ISTIO_OUTPUT, "-p", "udp", "--dport", str(port), "-j", "RETURN")
    b.versioned(IPV4_INBOUND_PASSTHROUGH, IPV6_INBOUND_PASSTHROUGH, "nat", ISTIO_OUTPUT,
                "-o", "lo", "-s", "{}", "-j", "RETURN")
    _proxy_owner_rules(b, cfg, redirect_dns)
    _owner_groups(b, cfg)
    if redirect_dns:
        _dns(b, cfg, host)
    b.versioned(cfg.ipv4_loopback_cidr, IPV6_LOOPBACK, "nat", ISTIO_OUTPUT, "-d", "{}", "-j", "RETURN")
    b.run(4, "nat", ISTIO_OUTPUT, ("-d",), cfg.outbound_exclude_cidrs.v4, ("-j", "RETURN"))
    b.run(6, "nat", ISTIO_OUTPUT, ("-d",), cfg.outbound_exclude_cidrs.v6, ("-j", "RETURN"))
    for port in cfg.outbound_ports:
        b.both("nat", ISTIO_OUTPUT, "-p", "tcp", "--dport", str(port), "-j", ISTIO_REDIRECT)
    _outbound_include(b, cfg, 4, b.v4_rule, cfg.outbound_cidrs.v4)
    _outbound_include(b, cfg, 6, b.v6_rule, cfg.outbound_cidrs.v6)
    if cfg.tproxy:
        _tproxy_marks(b, cfg)
    v6 = FamilyPlan(6, b.v6) if host.ipv6 else None
    return Plan(
        v4=FamilyPlan(4, b.v4),
        v6=v6,
        routes=_tproxy_routes(cfg, host),
        addresses=(AddressStep(IPV6_INBOUND_PASSTHROUGH),) if host.ipv6 else (),
    )


def _exclude_interfaces(b: _Builder, cfg: CaptureConfig) -> None:
    """Neither inbound nor outbound traffic of these interfaces is captured."""
    tables = ("nat", "mangle") if cfg.tproxy else ("nat",)
    for table in tables:
        for iface in cfg.exclude_interfaces:
            b.both(table, "PREROUTING", "-i", iface, "-j", "RETURN")
            b.both(table, "OUTPUT", "-o", iface, "-j", "RETURN")


def _inbound(b: _Builder, cfg: CaptureConfig) -> None:
    """Inbound capture: nat REDIRECT to the capture port, or mangle TPROXY."""
    if not cfg.captures_inbound:
        return
    table = "nat"
    if cfg.tproxy:
        table = "mangle"
        mark = str(cfg.tproxy_mark)
        b.both("mangle", ISTIO_DIVERT, "-j", "MARK", "--set-mark", mark)
        b.both("mangle", ISTIO_DIVERT, "-j", "ACCEPT")
        b.versioned(cfg.ipv4_loopback_cidr, IPV6_LOOPBACK, "mangle", ISTIO_TPROXY, "!", "-d", "{}",
                    "-p", "tcp", "-j", "TPROXY", "--tproxy-mark", f"{mark}/0xffffffff",
                    "--on-port", str(cfg.inbound_capture_port))
    b.both(table, "PREROUTING", "-p", "tcp", "-j", ISTIO_INBOUND)
    if cfg.inbound_ports_all:
        for port in cfg.inbound_exclude_ports:
            b.both(table, ISTIO_INBOUND, "-p", "tcp", "--dport", str(port), "-j", "RETURN")
        if cfg.tproxy:
            b.both("mangle", ISTIO_INBOUND, "-p", "tcp", "-m", "conntrack",
                   "--ctstate", "RELATED,ESTABLISHED", "-j", ISTIO_DIVERT)
            b.both("mangle", ISTIO_INBOUND, "-p", "tcp", "-j", ISTIO_TPROXY)
        else:
            b.both("nat", ISTIO_INBOUND, "-p", "tcp", "-j", ISTIO_IN_REDIRECT)
        return
    for port in cfg.inbound_ports:
        dport = ("-p", "tcp", "--dport", str(port))
        if cfg.tproxy:
            b.both("mangle", ISTIO_INBOUND, *dport, "-m", "conntrack",
                   "--ctstate", "RELATED,ESTABLISHED", "-j", ISTIO_DIVERT)
            b.both("mangle", ISTIO_INBOUND, *dport, "-j", ISTIO_TPROXY)
        else:
            b.both("nat", ISTIO_INBOUND, *dport, "-j", ISTIO_IN_REDIRECT)


def _proxy_owner_rules(b: _Builder, cfg: CaptureConfig, redirect_dns: bool) -> None:
    """The proxy's own traffic is never captured, except its calls back to the pod via lo."""
    keep_lo_return = not (cfg.outbound_cidrs.v4_has_loopback or cfg.outbound_cidrs.v6_has_loopback)
    tunnel = str(cfg.inbound_tunnel_port)
    for kind, ids in (("--uid-owner", cfg.proxy_uids), ("--gid-owner", cfg.proxy_gids)):
        for owner in ids:
            # Istio skips port 53 of the lo re-capture only for uids, never for gids.
            if redirect_dns and kind == "--uid-owner":
                ports: tuple[str, ...] = ("-m", "multiport", "!", "--dports", f"53,{tunnel}")
            else:
                ports = ("!", "--dport", tunnel)
            b.versioned(cfg.ipv4_loopback_cidr, IPV6_LOOPBACK, "nat", ISTIO_OUTPUT,
                        "-o", "lo", "!", "-d", "{}", "-p", "tcp", *ports,
                        "-m", "owner", kind, owner, "-j", ISTIO_IN_REDIRECT)
            if keep_lo_return:
                dns_port = ("-p", "tcp", "!", "--dport", "53") if redirect_dns else ()
                b.both("nat", ISTIO_OUTPUT, "-o", "lo", *dns_port,
                       "-m", "owner", "!", kind, owner, "-j", "RETURN")
            b.both("nat", ISTIO_OUTPUT, "-m", "owner", kind, owner, "-j", "RETURN")


def _owner_groups(b: _Builder, cfg: CaptureConfig) -> None:
    """ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]: which groups' traffic is captured at all."""
    groups = cfg.owner_groups
    if groups.capture_all_except:
        for group in groups.values:
            b.both("nat", ISTIO_OUTPUT, "-m", "owner", "--gid-owner", group, "-j", "RETURN")
        return
    none_of: list[str] = []
    for group in groups.values:
        none_of += ["-m", "owner", "!", "--gid-owner", group]
    b.both("nat", ISTIO_OUTPUT, *none_of, "-j", "RETURN")


def _dns(b: _Builder, cfg: CaptureConfig, host: HostFacts) -> None:
    """DNS capture to the agent on 15053, with conntrack zones split per direction."""
    capture_all = cfg.capture_all_dns
    b.both("raw", "OUTPUT", "-j", ISTIO_OUTPUT_DNS)
    if capture_all or host.nameservers_v4:
        b.v4_rule("nat", ISTIO_OUTPUT, "-j", ISTIO_OUTPUT_DNS)
    if capture_all or host.nameservers_v6:
        b.v6_rule("nat", ISTIO_OUTPUT, "-j", ISTIO_OUTPUT_DNS)
    # Istio spells the UDP redirect "--to-port"; iptables accepts both.
    for proto, to_ports in (("tcp", "--to-ports"), ("udp", "--to-port")):
        if capture_all:
            b.both("nat", ISTIO_OUTPUT_DNS, "-p", proto, "--dport", "53",
                   "-j", "REDIRECT", to_ports, DNS_AGENT_PORT)
            continue
        for server in host.nameservers_v4:
            b.v4_rule("nat", ISTIO_OUTPUT_DNS, "-p", proto, "--dport", "53", "-d", f"{server}/32",
                      "-j", "REDIRECT", to_ports, DNS_AGENT_PORT)
        for server in host.nameservers_v6:
            b.v6_rule("nat", ISTIO_OUTPUT_DNS, "-p", proto, "--dport", "53", "-d", f"{server}/128",
                      "-j", "REDIRECT", to_ports, DNS_AGENT_PORT)
    _dns_conntrack_zones(b, cfg, host)


def _dns_conntrack_zones(b: _Builder, cfg: CaptureConfig, host: HostFacts) -> None:
    """Zone 1: proxy <-> upstream resolvers; zone 2: apps <-> the agent.  Keeps UDP
    conntrack entries of the two legs from colliding."""
    for kind, ids in (("--uid-owner", cfg.proxy_uids), ("--gid-owner", cfg.proxy_gids)):
        for owner in ids:
            b.both("raw", ISTIO_OUTPUT_DNS, "-p", "udp", "--dport", "53",
                   "-m", "owner", kind, owner, "-j", "CT", "--zone", "1")
            b.both("raw", ISTIO_OUTPUT_DNS, "-p", "udp", "--sport", DNS_AGENT_PORT,
                   "-m", "owner", kind, owner, "-j", "CT", "--zone", "2")
    if cfg.capture_all_dns:
        b.both("raw", "PREROUTING", "-j", ISTIO_INBOUND)
        b.both("raw", ISTIO_OUTPUT_DNS, "-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2")
        b.both("raw", ISTIO_INBOUND, "-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1")
        return
    for servers, add, bits in ((host.nameservers_v4, b.v4_rule, 32), (host.nameservers_v6, b.v6_rule, 128)):
        if servers:
            add("raw", "PREROUTING", "-j", ISTIO_INBOUND)
        for server in servers:
            add("raw", ISTIO_OUTPUT_DNS, "-p", "udp", "--dport", "53", "-d", f"{server}/{bits}",
                "-j", "CT", "--zone", "2")
            add("raw", ISTIO_INBOUND, "-p", "udp", "--sport", "53", "-s", f"{server}/{bits}",
                "-j", "CT", "--zone", "1")


def _outbound_include(b: _Builder, cfg: CaptureConfig, family: int, add: "_RuleAdder",
                      cidrs: tuple[str, ...]) -> None:
    """-i: capture everything ('*') or only these CIDRs; -k interfaces count as outbound."""
    if cfg.outbound_cidrs.wildcard:
        add("nat", ISTIO_OUTPUT, "-j", ISTIO_REDIRECT)
        for iface in cfg.kube_virt_interfaces:
            add("nat", "PREROUTING", "-i", iface, "-j", ISTIO_REDIRECT, position=1)
        return
    if not cfg.kube_virt_interfaces:  # one rule per CIDR, nothing between them
        b.run(family, "nat", ISTIO_OUTPUT, ("-d",), cidrs, ("-j", ISTIO_REDIRECT))
        return
    for cidr in cidrs:
        for iface in cfg.kube_virt_interfaces:
            add("nat", "PREROUTING", "-i", iface, "-d", cidr, "-j", ISTIO_REDIRECT, position=1)
        add("nat", ISTIO_OUTPUT, "-d", cidr, "-j", ISTIO_REDIRECT)


def _tproxy_marks(b: _Builder, cfg: CaptureConfig) -> None:
    """Marks that make TPROXY'd connections and their replies route via lo, and keep
    proxy -> app traffic from being diverted again."""
    mark = str(cfg.tproxy_mark)
    b.both("mangle", "PREROUTING", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "CONNMARK", "--save-mark")
    b.both("mangle", "OUTPUT", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN")
    for kind, ids in (("--uid-owner", cfg.proxy_uids), ("--gid-owner", cfg.proxy_gids)):
        for owner in ids:
            b.versioned(cfg.ipv4_loopback_cidr, IPV6_LOOPBACK, "mangle", "OUTPUT",
                        "!", "-d", "{}", "-p", "tcp", "-o", "lo", "-m", "owner", kind, owner,
                        "-j", "MARK", "--set-mark", OUTBOUND_MARK)
    b.both("mangle", "OUTPUT", "-p", "tcp", "-m", "connmark", "--mark", mark, "-j", "CONNMARK", "--restore-mark")
    b.both("mangle", ISTIO_INBOUND, "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN", position=1)
    b.v4_rule("mangle", ISTIO_INBOUND, "-p", "tcp", "-s", IPV4_INBOUND_PASSTHROUGH, "-i", "lo", "-j", "RETURN",
              position=2)
    b.v6_rule("mangle", ISTIO_INBOUND, "-p", "tcp", "-s", IPV6_INBOUND_PASSTHROUGH, "-i", "lo", "-j", "RETURN",
              position=2)
    b.both("mangle", ISTIO_INBOUND, "-p", "tcp", "-i", "lo", "-m", "mark", "!", "--mark", OUTBOUND_MARK,
           "-j", "RETURN", position=3)


def _tproxy_routes(cfg: CaptureConfig, host: HostFacts) -> tuple[RouteStep, ...]:
    """TPROXY'd packets carry the mark; this table delivers them locally via lo."""
    if not (cfg.tproxy and cfg.captures_inbound):
        return ()
    families = (4, 6) if host.ipv6 else (4,)
    rules = [RouteStep("rule", f, cfg.tproxy_route_table, cfg.tproxy_mark) for f in families]
    routes = [RouteStep("route", f, cfg.tproxy_route_table) for f in families]
    return (*rules, *routes)


