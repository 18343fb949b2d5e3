"""Explain one connection: walk the rules as netfilter walks the first packet of a
connection, and say where it lands and why.

Pure: rules arrive as parsed tables (model/iptables_match.py), whether they came from
the plan or from the namespace's real `iptables-save`, so both modes share this one
walk.  What the kernel does that matters here:

* Outbound (a socket in the pod): the route is chosen first (`lo` for loopback and
  the pod's own addresses, else the pod's interface), then raw, mangle, nat (new
  connections only), filter OUTPUT, then mangle and nat POSTROUTING.  A REDIRECT in
  nat OUTPUT rewrites the destination to 127.0.0.1 / ::1 and the packet leaves by lo.
* A packet that leaves by `lo` comes back in through raw and mangle PREROUTING with
  `-i lo` and its mark kept; nat PREROUTING is *not* consulted again, because the
  connection's NAT was settled in OUTPUT.  (So the app calling its own pod address is
  decided by ISTIO_OUTPUT's lo rules alone; TPROXY's mangle rules still see it.)
* Inbound: raw, mangle, nat PREROUTING; TPROXY (mangle) hands the connection to the
  listener on --on-port with the original destination kept; REDIRECT (nat) rewrites
  it to the interface's primary address and the capture port; then mangle and
  filter INPUT.
* The first packet is conntrack state NEW; a socket-less packet never matches a
  positive `-m owner` (and always matches a fully negated one), as xt_owner does.

A match the model cannot decide (an unknown module, an owner name, a source address
that was not given) counts as "does not match", and the answer is marked uncertain
with the rule named: it never guesses silently.
"""


import ipaddress
from collections.abc import Iterator, Mapping

from istio_iptables.model.config import CaptureConfig
from istio_iptables.model.constants import FULL_MARK_MASK, ISTIO_IN_REDIRECT, ISTIO_INBOUND, ISTIO_OUTPUT, ISTIO_PREFIX
from istio_iptables.model.iptables_match import Match, ParsedRule, Tables
from istio_iptables.model.policy_routing import Check
from istio_iptables.model.record import Record

# The kernel's default net.ipv4.ip_local_port_range: where a client's source port is.
EPHEMERAL_PORTS = (32768, 60999)
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
OUTBOUND_HOOKS = (("raw", "OUTPUT"), ("mangle", "OUTPUT"), ("nat", "OUTPUT"), ("filter", "OUTPUT"),
                  ("mangle", "POSTROUTING"), ("nat", "POSTROUTING"))
LOOPED_BACK_HOOKS = (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("mangle", "INPUT"), ("filter", "INPUT"))
INBOUND_HOOKS = (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("nat", "PREROUTING"),
                 ("mangle", "INPUT"), ("filter", "INPUT"), ("nat", "INPUT"))
# Targets that change nothing the answer depends on and let the walk go on.
_CONTINUING_TARGETS = frozenset({"LOG", "NFLOG", "TRACE", "AUDIT", "CHECKSUM", "TCPMSS", "NFQUEUE-bypass"})


class Connection(Record):
    """The connection to explain.  `uid`/`gid` are the client's (outbound only);
    `src` None means "the address the kernel would pick" (unknown when the pod's
    addresses are not known)."""

    family: int
    proto: str  # "tcp" or "udp"
    dst: str
    dport: int
    inbound: bool = False
    src: str | None = None
    uid: str | None = None
    gid: str | None = None


class Pod(Record):
    """What the walk needs to know of the pod's network: its own addresses (not lo's
    loopback ones) and its interface."""

    addresses: tuple[str, ...] = ()
    interface: str = "eth0"


class Step(Record):
    """One evaluated rule: matched is True, False, or None (could not be decided)."""

    table: str
    chain: str
    rule: str
    matched: bool | None
    note: str = ""


class Answer(Record):
    captured: bool
    port: int | None
    address: str | None
    verdict: str  # "captured", "passes" or "dropped"
    uncertain: bool
    path: tuple[Step, ...]
    reason: str
    unknowns: tuple[str, ...]
    family: int
    via: str = ""  # REDIRECT, TPROXY or DNAT when captured
    route_mark: int = 0  # the packet's mark when the kernel routes it (after PREROUTING)
    routing: Check | None = None  # --live, TPROXY: the policy routing that must deliver it

    def as_dict(self) -> dict[str, object]:
        return {
            "captured": self.captured, "port": self.port, "address": self.address, "verdict": self.verdict,
            "uncertain": self.uncertain, "reason": self.reason, "unknowns": list(self.unknowns),
            "family": self.family, "via": self.via, "route_mark": self.route_mark,
            **({"routing": self.routing.as_dict()} if self.routing is not None else {}),
            "path": [{"table": s.table, "chain": s.chain, "rule": s.rule, "matched": s.matched,
                      **({"note": s.note} if s.note else {})} for s in self.path],
        }  # fmt: skip


class _Packet:
    """Mutable state of the first packet while it travels the hooks."""

    def __init__(self, conn: Connection, src: str | None) -> None:
        self.conn = conn
        self.dst = conn.dst
        self.dport = conn.dport
        self.src = src
        self.iif = ""
        self.oif = ""
        self.mark = 0
        self.ctmark = 0
        self.zone = 0
        self.untracked = False
        self.dnat = False
        self.tproxy_port: int | None = None
        self.route_mark: int | None = None  # pkt.mark at the routing decision
        self.dropped = ""
        self.owned = not conn.inbound  # has a local socket (for -m owner)


class _Decision(Record):
    """The rule that decided, and the rule that jumped to its chain (for the reason)."""

    table: str
    chain: str
    rule: ParsedRule
    caller: ParsedRule | None
    caller_chain: str


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text.split("%")[0])


def is_loopback(address: str) -> bool:
    return _ip(address).is_loopback


def _in_cidr(address: str, cidr: str) -> bool:
    try:
        return _ip(address) in ipaddress.ip_network(cidr, strict=False)  # a bare address is its own /32 or /128
    except ValueError:
        return False


def _port_ranges(spec: str) -> Iterator[tuple[int, int]]:
    """`80`, `80:90` or a comma list of them (multiport) as (first, last) ranges, one
    at a time (a hit stops the reading)."""
    for item in spec.split(","):
        low, _, high = item.partition(":")
        if low.isdigit():
            yield int(low), int(high or low)


def _port_set_hits(spec: str, port: int) -> bool:
    return any(low <= port <= high for low, high in _port_ranges(spec))


def _ephemeral_hits(spec: str) -> bool | None:
    """Whether a client's ephemeral source port would match `spec`: False when no
    port of the range is listed, True when the whole range is, else unknown."""
    low, high = EPHEMERAL_PORTS
    covered = sum(max(0, min(last, high) - max(first, low) + 1) for first, last in _port_ranges(spec))
    if covered == 0:
        return False
    return True if covered == high - low + 1 else None


def _iface_hits(pattern: str, name: str) -> bool:
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


def _value_mask(spec: str) -> tuple[int, int]:
    """`value[/mask]` as numbers: no mask is all 32 bits."""
    value, _, mask = spec.partition("/")
    return int(value, 0), int(mask, 0) if mask else FULL_MARK_MASK


def _mask_option(opts: Mapping[str, str], name: str) -> int:
    """CONNMARK's --nfmask / --ctmask, or --mask for both; all 32 bits when absent."""
    text = opts.get(name, opts.get("--mask", ""))
    return int(text, 0) if text else FULL_MARK_MASK


def _mark_hits(spec: str, value: int) -> bool:
    want, mask = _value_mask(spec)
    return (value & mask) == want


def _owner_hits(spec: str, have: str | None) -> bool | None:
    if have is None:
        return None
    if spec == have:
        return True
    low, dash, high = spec.partition("-")
    if have.isdigit() and low.isdigit() and (not dash or high.isdigit()):
        return int(low) <= int(have) <= int(high if dash else low)
    return None  # a user or group name: not resolved here


def _match(m: Match, pkt: _Packet) -> bool | None:
    """One match against the packet: True, False, or None when it cannot be decided.
    Negation applies to decided results only."""
    result = _raw_match(m, pkt)
    if result is None:
        return None
    return result != m.negated


def _raw_match(m: Match, pkt: _Packet) -> bool | None:
    kind, value = m.kind, m.value
    conn = pkt.conn
    if kind == "proto":
        return value.lower() in (conn.proto, "all", "0", {"tcp": "6", "udp": "17"}[conn.proto])
    if kind in ("src", "dst"):
        address = pkt.src if kind == "src" else pkt.dst
        return None if address is None else _in_cidr(address, value)
    if kind in ("iif", "oif"):
        return _iface_hits(value, pkt.iif if kind == "iif" else pkt.oif)
    if kind in ("dport", "dports"):
        return _port_set_hits(value, pkt.dport)
    if kind in ("sport", "sports"):
        return _ephemeral_hits(value)
    if kind == "ports":
        return True if _port_set_hits(value, pkt.dport) else _ephemeral_hits(value)
    if kind in ("uid", "gid"):
        if not pkt.owned:
            return None  # xt_owner without a socket: handled by the caller
        return _owner_hits(value, conn.uid if kind == "uid" else conn.gid)
    if kind == "mark":
        return _mark_hits(value, pkt.mark)
    if kind == "connmark":
        return _mark_hits(value, pkt.ctmark)
    if kind == "ctstate":
        states = {"UNTRACKED"} if pkt.untracked else {"NEW"} | ({"DNAT"} if pkt.dnat else set())
        return bool(states & set(value.upper().split(",")))
    if kind == "comment":
        return True
    return None


def _rule_matches(rule: ParsedRule, pkt: _Packet) -> tuple[bool | None, list[str]]:
    """All matches of a rule (AND).  Returns the result and the undecidable matches."""
    unknown: list[str] = []
    owner = [m for m in rule.matches if m.kind in ("uid", "gid")]
    # xt_owner on a packet without a local socket: true only when every owner test
    # of the rule is negated.
    if owner and not pkt.owned and not all(m.negated for m in owner):
        return False, []
    for m in rule.matches:
        if m.kind in ("uid", "gid") and not pkt.owned:
            continue
        result = _match(m, pkt)
        if result is False:
            return False, []
        if result is None:
            unknown.append(m.value if m.kind == "unknown" else m.text())
    return (None if unknown else True), unknown


def _xmark(value: int, spec: str, *, xor: bool = True) -> int:
    want, mask = _value_mask(spec)
    kept = value & ~mask & FULL_MARK_MASK
    return kept ^ want if xor else kept | want


class _Walker:
    def __init__(self, tables: Tables, conn: Connection, pod: Pod) -> None:
        self.tables = tables
        self.conn = conn
        self.pod = pod
        self.path: list[Step] = []
        self.unknowns: list[str] = []
        self.decisions: list[_Decision] = []

    def hook(self, pkt: _Packet, table: str, chain: str) -> None:
        """Run one built-in chain of one table; ends at a verdict or the policy."""
        chains = self.tables.get(table)
        if chains is None or chain not in chains:
            return
        stack: list[tuple[str, int, ParsedRule | None]] = []
        current, index, caller = chain, 0, None
        caller_chain = ""
        for _ in range(100_000):  # bounded: a ruleset with a jump loop is refused by the kernel anyway
            rules = chains[current].rules if current in chains else []
            if index < len(rules):
                rule = rules[index]
                index += 1
                matched, unknown = _rule_matches(rule, pkt)
                note = ""
                if unknown:
                    note = "cannot evaluate: " + "; ".join(unknown)
                    self.unknowns.append(f"{table} {current}: {rule.text} ({note})")
                self.path.append(Step(table, current, rule.text, matched, note))
                if matched is not True or rule.target is None:
                    continue
                outcome = self._target(pkt, table, current, rule, chains, caller, caller_chain)
                if outcome == "continue":
                    continue
                if outcome == "jump":
                    if not rule.goto:
                        stack.append((current, index, caller))
                    caller, caller_chain = rule, current
                    current, index = str(rule.target), 0
                    continue
                if outcome != "return":
                    return  # a verdict: this table is done with the packet
            # The end of the chain, or RETURN: back to the caller; in the built-in chain
            # the policy decides.
            if not stack:
                self._policy(pkt, table, chain, chains[chain].policy)
                return
            current, index, caller = stack.pop()
            caller_chain = stack[-1][0] if stack else chain
        self.unknowns.append(f"{table} {chain}: too many rules walked (a loop?)")

    def _policy(self, pkt: _Packet, table: str, chain: str, policy: str) -> None:
        if policy == "DROP":
            pkt.dropped = f"policy DROP of {table} {chain}"
            self.path.append(Step(table, chain, f":{chain} DROP (policy)", True))

    def _target(self, pkt: _Packet, table: str, chain: str, rule: ParsedRule,
                chains: Mapping[str, object], caller: ParsedRule | None, caller_chain: str) -> str:
        target = str(rule.target)
        opts = rule.target_opts
        decision = _Decision(table, chain, rule, caller, caller_chain)
        if target in chains:
            return "jump"
        if target == "RETURN":
            self.decisions.append(decision)
            return "return"
        if target == "ACCEPT":
            self.decisions.append(decision)
            return "verdict"
        if target in ("DROP", "REJECT"):
            self.decisions.append(decision)
            pkt.dropped = f"{target} by {table} {chain}: {rule.text}"
            return "verdict"
        if target == "REDIRECT":
            ports = opts.get("--to-ports") or opts.get("--to-port") or str(pkt.dport)
            pkt.dport = int(ports.split("-")[0].split(":")[0])
            if self.conn.inbound or pkt.iif:
                pkt.dst = self._primary(pkt.iif) or pkt.dst
            else:
                pkt.dst = LOOPBACK[self.conn.family]
                pkt.oif = "lo"
            pkt.dnat = True
            self.decisions.append(decision)
            return "verdict"
        if target == "DNAT":
            dest = opts.get("--to-destination", "")
            self._dnat(pkt, dest)
            self.decisions.append(decision)
            return "verdict"
        if target == "TPROXY":
            pkt.tproxy_port = int(opts.get("--on-port", "0")) or pkt.dport
            if "--tproxy-mark" in opts:
                pkt.mark = _xmark(pkt.mark, opts["--tproxy-mark"])
            self.decisions.append(decision)
            return "verdict"
        if target == "MARK":
            for name, value in opts.items():
                if name == "--set-xmark":
                    pkt.mark = _xmark(pkt.mark, value)
                elif name == "--set-mark":
                    pkt.mark = _xmark(pkt.mark, value, xor=False) if "/" in value else int(value, 0)
                elif name == "--and-mark":
                    pkt.mark &= int(value, 0)
                elif name == "--or-mark":
                    pkt.mark |= int(value, 0)
                elif name == "--xor-mark":
                    pkt.mark ^= int(value, 0)
            return "continue"
        if target == "CONNMARK":
            nfmask, ctmask = _mask_option(opts, "--nfmask"), _mask_option(opts, "--ctmask")
            if "--save-mark" in opts:
                pkt.ctmark = (pkt.ctmark & ~ctmask & FULL_MARK_MASK) ^ (pkt.mark & nfmask)
            elif "--restore-mark" in opts:
                pkt.mark = (pkt.mark & ~nfmask & FULL_MARK_MASK) ^ (pkt.ctmark & ctmask)
            elif "--set-xmark" in opts:
                pkt.ctmark = _xmark(pkt.ctmark, opts["--set-xmark"])
            elif "--set-mark" in opts:
                pkt.ctmark = _xmark(pkt.ctmark, opts["--set-mark"], xor=False)
            return "continue"
        if target == "CT":
            if "--notrack" in opts:
                pkt.untracked = True
            elif "--zone" in opts:
                pkt.zone = int(opts["--zone"].split("-")[0], 0) if opts["--zone"][:1].isdigit() else pkt.zone
            return "continue"
        if target == "NOTRACK":
            pkt.untracked = True
            return "continue"
        if target in ("SNAT", "MASQUERADE"):
            return "verdict"
        if target in _CONTINUING_TARGETS:
            return "continue"
        self.unknowns.append(f"{table} {chain}: {rule.text} (target {target} is not modelled; assumed to continue)")
        self.path[-1] = self.path[-1]._replace(note=f"target {target} is not modelled; assumed to continue")
        return "continue"

    def _primary(self, iif: str) -> str | None:
        """REDIRECT in PREROUTING sends to the incoming interface's first address."""
        family = self.conn.family
        if iif == "lo":
            return LOOPBACK[family]
        return next((a for a in self.pod.addresses if _ip(a).version == family and not is_loopback(a)), None)

    def _dnat(self, pkt: _Packet, dest: str) -> None:
        address, port = dest, ""
        if dest.startswith("["):
            address, _, port = dest[1:].partition("]")
            port = port.lstrip(":")
        elif dest.count(":") == 1:
            address, _, port = dest.partition(":")
        if address:
            pkt.dst = address.split("-")[0]
        if port:
            pkt.dport = int(port.split("-")[0])
        pkt.dnat = True
        if not self.conn.inbound:
            pkt.oif = self.route(pkt.dst)

    def is_local(self, address: str) -> bool:
        return is_loopback(address) or any(_same_address(address, a) for a in self.pod.addresses)

    def route(self, dst: str) -> str:
        return "lo" if self.is_local(dst) else self.pod.interface


def _same_address(a: str, b: str) -> bool:
    try:
        return _ip(a) == _ip(b)
    except ValueError:
        return False


def default_source(conn: Connection, pod: Pod) -> str | None:
    """The source address the kernel picks: the destination itself when it is local,
    else the pod's first address of the family (None when not known)."""
    if conn.src is not None:
        return conn.src
    if conn.inbound:
        return None
    if is_loopback(conn.dst):
        return LOOPBACK[conn.family]
    if any(_same_address(conn.dst, a) for a in pod.addresses):
        return conn.dst
    return next((a for a in pod.addresses if _ip(a).version == conn.family and not is_loopback(a)), None)


def explain(tables_by_family: dict[int, Tables], conn: Connection, pod: Pod,
            cfg: CaptureConfig | None = None) -> Answer:
    """Walk the rules of the connection's family and say where it lands."""
    tables = tables_by_family.get(conn.family, {})
    walker = _Walker(tables, conn, pod)
    pkt = _Packet(conn, default_source(conn, pod))
    if conn.inbound:
        pkt.iif = pod.interface
        hooks: tuple[tuple[str, str], ...] = INBOUND_HOOKS
        for table, chain in hooks:
            if pkt.dropped:
                break
            if chain == "INPUT" and pkt.route_mark is None:
                pkt.route_mark = pkt.mark  # PREROUTING is over: the kernel routes by this mark
            if table == "nat" and pkt.untracked:
                continue
            walker.hook(pkt, table, chain)
    else:
        pkt.oif = walker.route(pkt.dst)
        for table, chain in OUTBOUND_HOOKS:
            if pkt.dropped:
                break
            if table == "nat" and pkt.untracked:
                continue
            walker.hook(pkt, table, chain)
        if not pkt.dropped and pkt.oif == "lo":
            # Back in through lo: NAT is settled, mangle/raw still see it.
            pkt.iif, pkt.oif, pkt.owned = "lo", "", False
            for table, chain in LOOPED_BACK_HOOKS:
                if chain == "INPUT" and pkt.route_mark is None:
                    pkt.route_mark = pkt.mark
                if pkt.dropped or (pkt.tproxy_port is not None and chain == "INPUT"):
                    break
                walker.hook(pkt, table, chain)
    return _answer(walker, pkt, tables, cfg)


def _answer(walker: _Walker, pkt: _Packet, tables: Tables, cfg: CaptureConfig | None) -> Answer:
    conn = walker.conn
    unknowns = tuple(walker.unknowns)
    path = tuple(walker.path)
    if pkt.dropped:
        return Answer(False, None, None, "dropped", bool(unknowns), path, f"dropped: {pkt.dropped}", unknowns,
                      conn.family)
    if pkt.tproxy_port is not None:
        port, address, captured, via = pkt.tproxy_port, pkt.dst, True, "TPROXY"
    else:
        port, address, captured = pkt.dport, pkt.dst, pkt.dnat
        via = next((str(d.rule.target) for d in walker.decisions if d.rule.target in ("REDIRECT", "DNAT")), "")
    if conn.inbound and not captured and not walker.is_local(pkt.dst) and walker.pod.addresses:
        reason = f"{pkt.dst} is not one of the pod's addresses: not delivered to the pod"
        return Answer(False, None, None, "dropped", bool(unknowns), path, reason, unknowns, conn.family)
    verdict = "captured" if captured else "passes"
    if not tables:
        reason = (f"no IPv{conn.family} rules at all (ip6tables rules are written only when the pod has IPv6): "
                  "passes" if conn.family == 6 else "no IPv4 rules at all: passes")
    else:
        reason = _reason(walker, pkt, cfg, captured)
    route_mark = pkt.mark if pkt.route_mark is None else pkt.route_mark
    return Answer(captured, port, address, verdict, bool(unknowns), path, reason, unknowns, conn.family, via,
                  route_mark)


def _reason(walker: _Walker, pkt: _Packet, cfg: CaptureConfig | None, captured: bool) -> str:
    """One line in words: the rule that decided, read with Istio's meaning of its chain."""
    conn = walker.conn
    tail = f": captured to {pkt.tproxy_port or pkt.dport}" if captured else ": passes"
    decisive = _decisive(walker.decisions, captured, conn.inbound)
    if decisive is None:
        if conn.inbound:
            return f"no rule captures inbound port {conn.dport} (not in -b, or -b is empty){tail}"
        return f"no rule captures {conn.dst}:{conn.dport} (not in -i or -q){tail}"
    words = _words(decisive, conn, cfg)
    return f"{words}{tail}" if words else f"`{decisive.rule.text}` matched{tail}"


def _decisive(decisions: list[_Decision], captured: bool, inbound: bool) -> _Decision | None:
    if captured:
        return next((d for d in decisions if d.rule.target in ("REDIRECT", "TPROXY", "DNAT")), None)
    tables = ("nat", "mangle") if inbound else ("nat",)
    chains = ("PREROUTING",) if inbound else ("OUTPUT",)
    for d in decisions:
        if d.table in tables and (d.chain.startswith(ISTIO_PREFIX) or d.chain in chains):
            return d
    return None


def _istio_rule(d: _Decision) -> bool:
    """Whether a rule is shaped like one of Istio's: in an ISTIO_ chain, a jump into
    one, or a built-in chain's interface RETURN (-c, -k).  Anything else in the live
    rules is someone else's, and the reason says so instead of naming a flag."""
    rule = d.rule
    if d.chain.startswith(ISTIO_PREFIX) or str(rule.target).startswith(ISTIO_PREFIX):
        return True
    kinds = {m.kind for m in rule.matches} - {"comment"}
    return rule.target == "RETURN" and bool(kinds) and kinds <= {"iif", "oif"}


def _first(rule: ParsedRule, kind: str, *, negated: bool | None = False) -> Match | None:
    return next((m for m in rule.matches if m.kind == kind and (negated is None or m.negated == negated)), None)


def _words(d: _Decision, conn: Connection, cfg: CaptureConfig | None) -> str:
    """Istio's meaning of the rule that decided, in words."""
    rule = d.rule
    target = rule.target
    if target in ("REDIRECT", "TPROXY", "DNAT"):
        if rule.matches and _first(rule, "dport") and "DNS" in d.chain:
            return f"DNS to {conn.dst}:53 is captured by the agent"
        jumped = d.caller if d.caller is not None else rule
        return _capture_words(jumped, d.caller_chain or d.chain, conn, cfg)
    if not _istio_rule(d):
        return f"`{rule.text}` in {d.table} {d.chain}, not one of Istio's rules, matched"
    owner_uid, owner_gid = _first(rule, "uid", negated=None), _first(rule, "gid", negated=None)
    oif_lo = any(m.kind == "oif" and m.value == "lo" and not m.negated for m in rule.matches)
    src = _first(rule, "src")
    if src is not None and oif_lo:
        return f"source {src.value.split('/')[0]} is the proxy's inbound passthrough address"
    owner = owner_uid or owner_gid
    if owner is not None and oif_lo and owner.negated:
        return (f"uid {conn.uid} is not the proxy and the connection stays inside the pod (lo): "
                "the app calling itself is not captured")
    if owner_uid is not None and not owner_uid.negated:
        proxy = cfg is None or owner_uid.value in cfg.proxy_uids
        return f"uid {conn.uid} is the proxy" if proxy else f"uid {conn.uid} matches --uid-owner {owner_uid.value}"
    if owner_gid is not None and not owner_gid.negated:
        if cfg is None or owner_gid.value in cfg.proxy_gids:
            return f"gid {conn.gid} is the proxy's group"
        return f"gid {conn.gid} is in ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"
    if owner_gid is not None:
        return f"gid {conn.gid} is not in ISTIO_OUTBOUND_OWNER_GROUPS"
    dst = _first(rule, "dst")
    if dst is not None:
        if is_loopback(dst.value.split("/")[0]):
            return f"{conn.dst} is loopback ({dst.value})"
        return f"{dst.value} is in -x"
    dport = _first(rule, "dport")
    if dport is not None:
        if conn.inbound:
            if cfg is not None and int(dport.value) == cfg.inbound_tunnel_port:
                return f"port {dport.value} is the HBONE tunnel port (-e)"
            return f"port {dport.value} is in -d"
        return f"port {dport.value} is in -o"
    for kind, flag in (("iif", "-c or -k"), ("oif", "-c")):
        m = _first(rule, kind)
        if m is not None:
            if cfg is not None and kind == "iif" and m.value in cfg.kube_virt_interfaces:
                flag = "-k"
            elif cfg is not None:
                flag = "-c"
            return f"interface {m.value} is in {flag}"
    if _first(rule, "mark") is not None or _first(rule, "mark", negated=True) is not None:
        return f"mark rule `{rule.text}` (TPROXY bookkeeping)"
    return ""


def _capture_words(rule: ParsedRule, chain: str, conn: Connection, cfg: CaptureConfig | None) -> str:
    """Why the jump into the redirect chain happened."""
    if not conn.inbound and chain in (ISTIO_INBOUND, "PREROUTING"):
        return (f"the connection to the pod's own address {conn.dst} comes back in through lo"
                + (" with the proxy's mark" if conn.uid is not None else "") + " and is captured as inbound")
    if rule.target == ISTIO_IN_REDIRECT and chain == ISTIO_OUTPUT:
        return (f"uid {conn.uid} (the proxy) calls the pod's own address {conn.dst} over lo: "
                "sent to the inbound listener")
    dst, dport, iif = _first(rule, "dst"), _first(rule, "dport"), _first(rule, "iif")
    if iif is not None:
        return f"interface {iif.value} is in -k (its traffic counts as outbound)"
    if conn.inbound:
        if dport is not None:
            return f"port {dport.value} is in -b"
        return "-b '*' captures every inbound port not in -d"
    if dst is not None:
        return f"{conn.dst} is in -i {dst.value}"
    if dport is not None:
        return f"port {dport.value} is in -q"
    return "-i '*' captures every outbound destination not excluded"
