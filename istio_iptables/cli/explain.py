"""`istio-iptables explain`: where one connection lands, and why, rule by rule.

A thin layer: the capture flags go through the one parser (cli/flags), the rules come
from the one planner rendered as restore text (or, with --live, from the namespace's
`iptables-save`), one rule-text parser reads both, and the pure walk in
model/explain.py decides.  Never on the init path.
"""


import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click

from istio_iptables.cli.flags import Settings, add_options, build_settings, help_option, normalize_argv, with_pod_flags
from istio_iptables.model.config import ConfigError
from istio_iptables.model.explain import Answer, Connection, Pod, explain
from istio_iptables.model.iptables_match import Tables
from istio_iptables.model.record import Record

if TYPE_CHECKING:
    from istio_iptables.kernel.live_rules import LiveRules

PROG = "istio-iptables explain"
EXIT_USAGE = 2
DEFAULT_APP_UID = "1000"
# Explain's own options; the capture flags' --output (dry-run format) is replaced by ours.
OWN_EXCLUDED = ("output", "dry_run")


class Request(Record):
    """The connection asked about, validated."""

    conn: Connection
    pod_ips: tuple[str, ...]
    interface: str
    live: bool
    output: str


def parse_to(flag: str, text: str) -> tuple[int, str, int]:
    """`ADDR:PORT` or `[ADDR]:PORT` -> (family, address, port)."""
    import ipaddress

    value = text.strip()
    if value.startswith("["):
        address, sep, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if not sep or not rest.startswith(":"):
            raise ConfigError(flag, text, "expected [IPv6]:PORT, e.g. [2001:db8::1]:443")
    else:
        if value.count(":") > 1:
            raise ConfigError(flag, text, "write IPv6 as [ADDR]:PORT, e.g. [2001:db8::1]:443")
        address, _, port = value.rpartition(":")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(flag, text, "expected ADDR:PORT with an IP address, e.g. 10.96.0.10:443") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(flag, text, "the port must be 1-65535")
    return ip.version, str(ip), int(port)


def parse_address(flag: str, text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ConfigError(flag, text, "expected an IP address") from None


def parse_owner(flag: str, text: str) -> str:
    value = text.strip()
    if not value.isdigit() or int(value) > 0xFFFFFFFE:
        raise ConfigError(flag, text, "expected a numeric uid/gid")
    return str(int(value))


def build_request(own: Mapping[str, Any]) -> Request:
    """Explain's own options into a Request (ConfigError names the flag)."""
    if not own.get("to"):
        raise ConfigError("--to", "", "required: the connection's destination ADDR:PORT ([ADDR]:PORT for IPv6)")
    family, address, port = parse_to("--to", own["to"])
    pod_ips: list[str] = []
    for item in own.get("pod_ip") or ():
        pod_ips += [parse_address("--pod-ip", part) for part in item.split(",") if part.strip()]
    source = parse_address("--from", own["source"]) if own.get("source") else None
    if source is not None and (":" in source) != (family == 6):
        raise ConfigError("--from", own["source"], f"not the same IP family as --to {own['to']}")
    uid = parse_owner("--uid", own["uid"]) if own.get("uid") else DEFAULT_APP_UID
    gid = parse_owner("--gid", own["gid"]) if own.get("gid") else uid
    interface = own.get("interface") or "eth0"
    from istio_iptables.model.config import parse_interfaces

    parse_interfaces("--interface", interface)
    inbound = bool(own.get("inbound"))
    conn = Connection(family=family, proto="udp" if own.get("udp") else "tcp", dst=address, dport=port,
                      inbound=inbound, src=source, uid=None if inbound else uid, gid=None if inbound else gid)
    return Request(conn, tuple(pod_ips), interface, bool(own.get("live")), own.get("output") or "text")


def settings_from(given: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """The capture settings, through the one parser."""
    return build_settings(given, env)


def plan_tables(settings: Settings, request: Request) -> tuple[dict[int, Tables], Pod, list[str], list[str]]:
    """The plan's rules, read back through the same parser --live uses, and the
    policy-routing steps the plan adds (`ip rule` / `ip route`, TPROXY only)."""
    from istio_iptables.model import hostfacts
    from istio_iptables.model.constants import IPV6_INBOUND_PASSTHROUGH
    from istio_iptables.model.iptables_match import parse_tables
    from istio_iptables.model.iptables_plan import build_plan
    from istio_iptables.model.iptables_render import restore_text

    capture, run = settings.capture, settings.run
    notes: list[str] = []
    addresses = list(request.pod_ips)
    if request.conn.inbound and not addresses:
        addresses = [request.conn.dst]  # an inbound connection is addressed to the pod
    if run.ipv6 != "auto":
        ipv6 = run.ipv6 == "on"
    elif addresses:
        ipv6 = hostfacts.ipv6_from_addresses(addresses, capture.dual_stack)
    else:
        ipv6 = False
        notes.append("no --pod-ip: assuming an IPv4-only pod whose own addresses are unknown, so only loopback "
                     "counts as the pod itself (give --pod-ip; --ipv6 on for IPv6 rules)")
    servers: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    if capture.needs_nameservers:
        servers = hostfacts.read_nameservers(run.resolv_conf)
    facts = hostfacts.HostFacts(ipv6=ipv6, nameservers_v4=servers[0], nameservers_v6=servers[1])
    if run.native_nftables:
        notes.append("--native-nftables writes the same rules as nft tables; explained with their iptables form")
    plan = build_plan(capture, facts)
    tables = {fp.family: parse_tables(restore_text(fp)) for fp in plan.families}
    if plan.v6 is not None:
        addresses.append(IPV6_INBOUND_PASSTHROUGH.split("/")[0])
    routes = [step.describe() for step in plan.routes]
    return tables, Pod(tuple(addresses), request.interface), notes, routes


def live_tables(request: Request, live: "LiveRules | None" = None) -> tuple[dict[int, Tables], Pod, list[str], bool]:
    """The namespace's installed rules and addresses (read now unless given); the flag
    says whether something installed could not be evaluated."""
    from istio_iptables.model.iptables_match import parse_tables

    if live is None:
        from istio_iptables.kernel.live_rules import read_live

        live = read_live()
    notes = list(live.notes)
    tables = {family: parse_tables(text) for family, text in live.texts.items() if text}
    for family in (4, 6):
        notes.append(f"IPv{family} rules: {live.sources[family]}")
    uncertain = False
    if live.native_tables:
        from istio_iptables.model.nft_explain import tables_from_nft_json

        native, unsupported = tables_from_nft_json(live.native_text, live.native_listing)
        for family, extra in native.items():
            merged = tables.setdefault(family, {})
            for name, chains in extra.items():
                into = merged.setdefault(name, {})
                for chain, content in chains.items():
                    if into.get(chain) and into[chain].rules and content.rules:
                        uncertain = True
                        notes.append(f"IPv{family} {name} {chain}: both iptables and native nftables hold rules; "
                                     "only the native ones are evaluated")
                    into[chain] = content
        notes.append("native nftables tables " + ", ".join(live.native_tables) + " evaluated "
                     "(chains shown with their iptables names)")
        if unsupported:
            uncertain = True
            notes += unsupported
    own = [address for name, address in live.addresses if name != "lo" and not address.startswith("fe80")]
    own += [address for name, address in live.addresses if name == "lo" and address not in ("127.0.0.1", "::1")]
    own += [a for a in request.pod_ips if a not in own]
    interface = request.interface
    first = next((name for name, address in live.addresses if name != "lo"), None)
    if first is not None and interface == "eth0":
        interface = first
    return tables, Pod(tuple(own), interface), notes, uncertain


def answer_for(settings: Settings, request: Request, live: "LiveRules | None" = None) -> tuple[Answer, list[str]]:
    """The one entry `explain` and `verify` share (`live`: rules already read, e.g. by
    verify inside its scratch namespace)."""
    uncertain = False
    routes: list[str] = []
    if request.live:
        if live is None:
            from istio_iptables.kernel.live_rules import read_live

            live = read_live()
        tables, pod, notes, uncertain = live_tables(request, live)
    else:
        tables, pod, notes, routes = plan_tables(settings, request)
    answer = explain(tables, request.conn, pod, settings.capture)
    if uncertain and not answer.uncertain:
        answer = answer._replace(uncertain=True)
    if answer.via == "TPROXY" and answer.verdict == "captured":
        if live is not None:
            answer = with_routing(answer, request, pod, live, settings.capture.tproxy_route_table)
        elif routes:
            notes.append("TPROXY delivers only with the policy routing the plan also adds: " + "; ".join(routes)
                         + " (without it, TPROXY'd connections to destinations that are not the pod's own "
                         "addresses are not delivered)")
    return answer, notes


def with_routing(answer: Answer, request: Request, pod: Pod, live: "LiveRules", table: int) -> Answer:
    """--live, TPROXY: check the policy routing that must deliver the marked packet.
    A problem that changes this connection's landing makes the answer uncertain."""
    from istio_iptables.model.policy_routing import check_tproxy

    if live.routing is None:
        return answer._replace(uncertain=True, unknowns=(*answer.unknowns, "policy routing could not be read"))
    conn = request.conn
    iif = pod.interface if conn.inbound else "lo"
    check = check_tproxy(live.routing, conn.family, answer.address or conn.dst, answer.route_mark, iif,
                         answer.port, table, conn.src)
    if check.affects:
        return answer._replace(routing=check, uncertain=True, unknowns=(*answer.unknowns, check.problem))
    return answer._replace(routing=check)


def render_text(request: Request, answer: Answer, notes: list[str]) -> str:
    conn = request.conn
    who = f"from {conn.src}" if conn.src else ""
    if conn.inbound:
        head = f"inbound {conn.proto} to the pod's {_hostport(conn.dst, conn.dport)} {who}".rstrip()
    else:
        head = (f"outbound {conn.proto} to {_hostport(conn.dst, conn.dport)} by uid {conn.uid} gid {conn.gid}"
                f" {who}").rstrip()
    lines = [f"{head}   [{'live rules' if request.live else 'plan'}, IPv{conn.family}]"]
    width = max((len(f"{s.table} {s.chain}") for s in answer.path), default=0)
    for step in answer.path:
        mark = {True: "match", False: "  -  ", None: "  ?  "}[step.matched]
        where = f"{step.table} {step.chain}".ljust(width)
        lines.append(f"  {mark}  {where}  {step.rule}" + (f"   <- {step.note}" if step.note else ""))
    if answer.verdict == "dropped":
        lines.append("=> dropped")
    elif answer.routing is not None and not answer.routing.delivered:
        lines.append(f"=> captured by the rules (TPROXY to port {answer.port}), but the kernel's routing does not "
                     "deliver it: see ROUTING")
    elif answer.via == "TPROXY":
        lines.append(f"=> captured: lands on the listener on port {answer.port} (TPROXY keeps the destination "
                     f"{_hostport(answer.address or '?', conn.dport)})")
    elif answer.captured:
        lines.append(f"=> captured ({answer.via}): lands on {_hostport(answer.address or '?', answer.port or 0)}")
    else:
        lines.append(f"=> passes: lands on {_hostport(answer.address or '?', answer.port or 0)}")
    lines.append(f"   {answer.reason}")
    if answer.routing is not None:
        check = answer.routing
        used = " -> ".join(x.text() for x in (check.lookup.rule, check.lookup.route) if x is not None)
        lines.append(f"   routing: mark {check.mark:#x} -> {used or 'no ip rule'}: {check.lookup.outcome}")
        if check.problem:
            lines.append(f"   ROUTING: {check.problem}")
    unknowns = [u for u in answer.unknowns if answer.routing is None or u != answer.routing.problem]
    if answer.uncertain and (unknowns or answer.routing is None or not answer.routing.problem):
        lines.append("   UNCERTAIN: " + "; ".join(unknowns or ("see notes",)))
    lines += [f"   note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def render_json(answer: Answer, notes: list[str]) -> str:
    import json

    return json.dumps({**answer.as_dict(), "notes": notes}, indent=2) + "\n"


def own_options(func: Any) -> Any:
    """Explain's options (also verify's, which shares the capture flags)."""
    for decl in reversed((
        click.option("--to", "to", metavar="ADDR:PORT",
                     help="The connection's destination; IPv6 as [ADDR]:PORT. Outbound: where the app dials. "
                          "--inbound: the pod's address and port the client dials."),
        click.option("--inbound", is_flag=True, help="A connection arriving at the pod (default: outbound)."),
        click.option("--from", "source", metavar="ADDR",
                     help="Source address (inbound: the client; outbound: a bound source, e.g. 127.0.0.6)."),
        click.option("--uid", metavar="N", help=f"Outbound: uid of the process that connects [default: "
                     f"{DEFAULT_APP_UID}, an app; the proxy is -u]."),
        click.option("--gid", metavar="N", help="Outbound: its gid [default: the uid]."),
        click.option("--udp", is_flag=True, help="UDP instead of TCP (e.g. DNS to port 53)."),
        click.option("--pod-ip", "pod_ip", multiple=True, metavar="ADDR",
                     help="One of the pod's addresses (repeatable). Decides IPv6 (unless --ipv6) and which "
                          "destinations are the pod itself (they leave by lo)."),
        click.option("--interface", metavar="NAME", help="The pod's interface [default: eth0]."),
        click.option("--live", is_flag=True,
                     help="Explain the rules installed in this network namespace (iptables legacy or nft, or "
                          "native nftables) with its own addresses, instead of the plan; for TPROXY also check "
                          "its ip rules and routes deliver the marked packet. Needs root."),
        click.option("--output", "output", type=click.Choice(["text", "json"]), default="text",
                     help="text (the path, rule by rule) or json."),
    )):
        func = decl(func)
    return func


def capture_flags(func: Any) -> Any:
    """Every capture and host-fact flag of the main command (after our own options
    in --help), except the ones explain defines itself."""
    return add_options(func, exclude=OWN_EXCLUDED)



def make_command(result: dict[str, Any]) -> click.Command:
    @click.command(name=PROG, add_help_option=False, context_settings={"max_content_width": 110})
    @own_options
    @help_option
    @capture_flags
    def command(**values: Any) -> None:
        """Explain where one connection lands under the capture rules, and why: every
        rule netfilter evaluates for its first packet (raw, mangle, nat, filter; jumps,
        RETURN, REDIRECT, TPROXY, marks), whether it matched, where the connection
        ends (the sidecar port, or the original destination) and a one-line reason.

        Takes every capture flag of istio-iptables (and its environment). Without
        --live it explains the plan those flags produce: no root, no kernel.

        \b
        Examples:
          istio-iptables explain -i '*' -x 10.96.0.0/12 --to 10.96.0.10:443
          istio-iptables explain -b '*' -d 15020 --inbound --to 10.1.2.3:15020
          istio-iptables explain --redirect-dns --udp --to 10.96.0.10:53 --pod-ip 10.1.2.3
          istio-iptables explain --live --network-namespace /proc/PID/ns/net --to 10.0.0.1:80 --output json"""
        result.update(values)

    return command


def parse(argv: Sequence[str], env: Mapping[str, str]) -> tuple[Settings, Request] | int:
    """argv -> (settings, request), or an exit status (help printed, or bad input
    reported in one line)."""
    values: dict[str, Any] = {}
    try:
        argv, env = with_pod_flags(argv, env)
        make_command(values).main(args=normalize_argv(argv), prog_name=PROG, standalone_mode=False)
        if not values:
            return 0  # --help
        own_names = ("to", "inbound", "source", "uid", "gid", "udp", "pod_ip", "interface", "live", "output")
        own = {k: values.pop(k) for k in own_names}
        request = build_request(own)
        return settings_from(values, env), request
    except ConfigError as err:
        return usage_error(str(err))
    except click.exceptions.NoSuchOption as err:
        return usage_error(f"unknown flag {err.option_name!r}")
    except click.UsageError as err:
        return usage_error(err.format_message())


def usage_error(message: str, prog: str = PROG) -> int:
    sys.stderr.write(f"{prog}: error: {' '.join(message.split())}\n")
    return EXIT_USAGE


def main(argv: Sequence[str]) -> int:
    from istio_iptables.model.hostfacts import HostFactsError

    parsed = parse(argv, os.environ)
    if isinstance(parsed, int):
        return parsed
    settings, request = parsed
    try:
        if request.live and settings.run.network_namespace:
            from istio_iptables.kernel.netns import enter

            enter(settings.run.network_namespace)  # --live --network-namespace: read that pod's rules
        answer, notes = answer_for(settings, request)
    except HostFactsError as err:
        return usage_error(str(err))
    except Exception as err:  # reading live rules: say what failed, no traceback
        sys.stderr.write(f"{PROG}: error: {type(err).__name__}: {err}\n")
        return 1
    out = render_json(answer, notes) if request.output == "json" else render_text(request, answer, notes)
    sys.stdout.write(out)
    return 0
