"""Native nftables rules (`nft -j list table inet istio-proxy-*`) as the tables the
explain walk evaluates, so `explain --live` covers `--native-nftables` pods too.

The inet tables hold both families: a rule that matches an `ip` (or `ip6`) header
field only ever applies to IPv4 (or IPv6), so it goes into that family's tables only.
A `tcp dport` match implies the protocol, as nft adds that dependency itself.  Base
chains become the built-in chain of their hook in the table of their priority (raw
-300, mangle -150, nat for type nat, filter 0); other chains keep their name in
Istio's iptables spelling (istio-output -> ISTIO_OUTPUT), so the reasons read the
same in both modes.  An expression this translation does not know becomes an
`unknown` match or a note: never a silent guess.

Pure: the JSON and the `nft -a list` text are read by kernel/live_rules.py.
"""


import json
import re
from typing import Any

from istio_iptables.model.iptables_match import BUILTIN_POLICY_CHAINS, Chain, Match, ParsedRule, Tables

_HANDLE = re.compile(r"^\s*(.*?)\s*# handle (\d+)\s*$")
_COUNTER = re.compile(r"counter packets \d+ bytes \d+")


def _table_of(chain: dict[str, Any]) -> str:
    if chain.get("type") == "nat":
        return "nat"
    prio = chain.get("prio", 0)
    prio = prio if isinstance(prio, int) else 0
    if prio <= -300:
        return "raw"
    if prio <= -150:
        return "mangle"
    return "filter"


def _chain_name(name: str) -> str:
    return name.upper().replace("-", "_")


def _texts(listing: str) -> dict[tuple[str, int], str]:
    """(table, handle) -> the rule as `nft -a list` prints it, counters shortened."""
    out: dict[tuple[str, int], str] = {}
    table = ""
    for line in listing.splitlines():
        head = re.match(r"^table \S+ (\S+)", line)
        if head:
            table = head.group(1)
            continue
        found = _HANDLE.match(line)
        if found and not found.group(1).startswith(("chain ", "table ")) and "{" not in found.group(1):
            out[(table, int(found.group(2)))] = _COUNTER.sub("counter", found.group(1))
    return out


def _value(right: Any) -> tuple[str, bool]:
    """A match's right-hand side as iptables-style text; the flag says it was readable."""
    if isinstance(right, (int, str)):
        return str(right), True
    if isinstance(right, list):
        return ",".join(str(v) for v in right), all(isinstance(v, (int, str)) for v in right)
    if isinstance(right, dict):
        if "set" in right:
            items = right["set"]
            parts = []
            for item in items:
                if isinstance(item, dict) and "range" in item:
                    parts.append(f"{item['range'][0]}:{item['range'][1]}")
                elif isinstance(item, (int, str)):
                    parts.append(str(item))
                else:
                    return json.dumps(right), False
            return ",".join(parts), True
        if "prefix" in right:
            return f"{right['prefix']['addr']}/{right['prefix']['len']}", True
        if "range" in right:
            return f"{right['range'][0]}:{right['range'][1]}", True
    return json.dumps(right), False


_META = {"iifname": "iif", "oifname": "oif", "skuid": "uid", "skgid": "gid", "mark": "mark"}
_PAYLOAD = {"saddr": "src", "daddr": "dst", "sport": "sport", "dport": "dport"}


def _match(expr: dict[str, Any]) -> tuple[list[Match], int | None]:
    """One nft match as Match objects, and the family it implies (None: both)."""
    left, right, op = expr.get("left"), expr.get("right"), expr.get("op", "==")
    negated = op == "!="
    text, readable = _value(right)
    unknown = [Match("unknown", f"nft match {json.dumps(expr, sort_keys=True)}")]
    if not readable or op not in ("==", "!=", "in") or not isinstance(left, dict):
        return unknown, None
    if "meta" in left:
        key = left["meta"].get("key")
        if key == "l4proto":
            return [Match("proto", text, negated)], None
        if key == "nfproto":
            return [], 4 if text == "ipv4" else 6 if text == "ipv6" else None
        if key in _META:
            return [Match(_META[key], text, negated)], None
        return unknown, None
    if "ct" in left:
        key = left["ct"].get("key")
        if key == "state":
            return [Match("ctstate", text.upper(), negated)], None
        if key == "mark":
            return [Match("connmark", text, negated)], None
        return unknown, None
    if "payload" in left:
        proto, field = left["payload"].get("protocol"), left["payload"].get("field")
        if proto in ("ip", "ip6") and field in ("saddr", "daddr"):
            return [Match(_PAYLOAD[field], text, negated)], 4 if proto == "ip" else 6
        if proto in ("tcp", "udp") and field in ("sport", "dport"):
            kind = _PAYLOAD[field] + ("s" if "," in text else "")
            return [Match("proto", proto), Match(kind, text, negated)], None
    return unknown, None


def _rule(exprs: list[dict[str, Any]], text: str) -> tuple[ParsedRule, int | None, list[str]]:
    matches: list[Match] = []
    family: int | None = None
    target: str | None = None
    goto = False
    opts: dict[str, str] = {}
    notes: list[str] = []
    for expr in exprs:
        kind, body = next(iter(expr.items()))
        if kind == "match":
            found, implied = _match(body)
            matches += found
            family = implied or family
        elif kind == "counter":
            continue
        elif kind in ("return", "accept", "drop"):
            target = target if target == "TPROXY" else kind.upper()
        elif kind in ("jump", "goto"):
            target, goto = _chain_name(body["target"]), kind == "goto"
        elif kind == "redirect":
            target = "REDIRECT"
            if isinstance(body, dict) and "port" in body:
                opts["--to-ports"] = str(body["port"])
        elif kind == "tproxy":
            target = "TPROXY"
            opts["--on-port"] = str(body.get("port", 0))
        elif kind == "mangle" and isinstance(body, dict):
            key, value = body.get("key", {}), body.get("value")
            if key == {"meta": {"key": "mark"}} and isinstance(value, int):
                if target == "TPROXY":
                    opts["--tproxy-mark"] = f"{value}/0xffffffff"
                else:
                    target, opts = target or "MARK", {**opts, "--set-mark": str(value)}
            elif key == {"meta": {"key": "mark"}} and value == {"ct": {"key": "mark"}}:
                target, opts = "CONNMARK", {"--restore-mark": ""}
            elif key == {"ct": {"key": "mark"}} and value == {"meta": {"key": "mark"}}:
                target, opts = "CONNMARK", {"--save-mark": ""}
            elif key == {"ct": {"key": "zone"}} and isinstance(value, int):
                target, opts = "CT", {"--zone": str(value)}
            else:
                notes.append(f"statement not evaluated: {json.dumps(expr, sort_keys=True)}")
        else:
            notes.append(f"statement not evaluated: {json.dumps(expr, sort_keys=True)}")
            matches.append(Match("unknown", f"nft statement {kind}"))
    return ParsedRule(tuple(matches), target, opts, goto, text), family, notes


def tables_from_nft_json(document: str, listing: str = "") -> tuple[dict[int, Tables], list[str]]:
    """`nft -j list table ...` output(s) (one JSON document per line or concatenated
    into one list) as per-family tables, plus notes on what was not evaluated."""
    texts = _texts(listing)
    objects: list[dict[str, Any]] = []
    for line in document.splitlines():
        if line.strip():
            objects += json.loads(line).get("nftables", [])
    result: dict[int, Tables] = {4: {}, 6: {}}
    names: dict[tuple[str, str], tuple[str, str]] = {}  # (nft table, nft chain) -> (table, chain)
    notes: list[str] = []
    for obj in objects:
        chain = obj.get("chain")
        if chain is None:
            continue
        if "hook" in chain:
            table, name = _table_of(chain), chain["hook"].upper()
            policy = str(chain.get("policy", "accept")).upper()
            if name not in BUILTIN_POLICY_CHAINS:
                notes.append(f"chain {chain['name']} on hook {chain['hook']} is not evaluated")
                continue
        else:
            table, name, policy = "", _chain_name(chain["name"]), "-"
        names[(chain["table"], chain["name"])] = (table, name)
        for family in (4, 6):
            if table:
                result[family].setdefault(table, {})[name] = Chain(policy, [])
    # Regular chains live in the table of the base chains of their nft table.
    base_table = {nft_table: table for (nft_table, _), (table, _) in names.items() if table}
    for (nft_table, nft_chain), (table, name) in list(names.items()):
        if not table:
            names[(nft_table, nft_chain)] = (base_table.get(nft_table, "filter"), name)
            for family in (4, 6):
                result[family].setdefault(names[(nft_table, nft_chain)][0], {})[name] = Chain("-", [])
    for obj in objects:
        rule = obj.get("rule")
        if rule is None or (rule["table"], rule["chain"]) not in names:
            continue
        table, name = names[(rule["table"], rule["chain"])]
        text = texts.get((rule["table"], rule.get("handle", -1)), "") or json.dumps(rule["expr"])
        parsed, only, rule_notes = _rule(rule["expr"], f"[{rule['table']} {rule['chain']}] {text}")
        notes += rule_notes
        for fam in (4, 6):
            if only in (None, fam):
                result[fam][table][name].rules.append(parsed)
    return result, notes
