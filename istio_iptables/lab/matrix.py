"""The connections `verify` sends for a set of capture flags, and what the flags say
should happen to each.

Pure: it reads the CaptureConfig and the lab's addresses and returns probes.  The
"flags say" column is deliberately a small, separate reading of Istio's flag
meanings (precedence: -o ports, the proxy's owner, loopback and the pod itself,
-c interfaces, DNS, -x, -q, -i), not the planner, so verify checks the plan and
the kernel against the intent as well as against each other.
"""


import ipaddress

from istio_iptables.model.config import CaptureConfig
from istio_iptables.model.record import Record

APP_UID = 1000
SAMPLE_INBOUND_PORT = 8080
SAMPLE_UNCAPTURED_INBOUND_PORT = 9099
SAMPLE_OUTBOUND_PORT = 80
SAMPLE_UDP_PORT = 5353
DNS_PORT = 53
DNS_AGENT_PORT = 15053
# Lab addresses the peer answers for (AnyIP), per family.
OUTSIDE = {4: "198.51.100.10", 6: "2001:db8:2::10"}
OUTSIDE_NET = {4: "198.51.100.0/24", 6: "2001:db8:2::/64"}
NAMESERVER = {4: "198.51.100.53", 6: "2001:db8:2::53"}
# The veth's own networks: never claimed as "outside" by the peer.
LAB_NETWORKS = ("192.0.2.0/24", "2001:db8:1::/64")


class Lab(Record):
    """The lab's addresses as the matrix needs them."""

    pod: dict[int, str]  # family -> the pod's address
    families: tuple[int, ...]
    interface: str = "eth0"


class Probe(Record):
    """One connection to send.  expect_port: where the flags say it lands (None: nowhere);
    expect_local: in the pod (True) or at the peer (False)."""

    label: str
    family: int
    proto: str
    inbound: bool
    dst: str
    dport: int
    uid: int | None
    src: str | None
    expect_port: int
    expect_local: bool
    why: str


def representative(cidr: str, avoid: list[str]) -> str | None:
    """An address inside `cidr` the lab can reach: the lab's outside address when it is
    inside, else the first host, unless that is loopback, multicast, unspecified or one
    of the lab's own networks."""
    net = ipaddress.ip_network(cidr, strict=False)
    outside = OUTSIDE[net.version]
    if ipaddress.ip_address(outside) in net:
        return outside
    host = net.network_address + 1 if net.num_addresses > 2 else net.network_address
    if host.is_loopback or host.is_multicast or host.is_unspecified or host.is_link_local:
        return None
    if any(host in ipaddress.ip_network(a, strict=False) for a in avoid):
        return None
    return str(host)


def anyip_route(cidr: str) -> str | None:
    """The prefix the peer must answer for so that `representative` reaches it (None
    when the outside network already covers it or it is too wide to claim)."""
    net = ipaddress.ip_network(cidr, strict=False)
    if ipaddress.ip_address(OUTSIDE[net.version]) in net or net.prefixlen < (8 if net.version == 4 else 16):
        return None
    return str(net)


def _in(address: str, cidrs: tuple[str, ...]) -> str | None:
    ip = ipaddress.ip_address(address)
    return next((c for c in cidrs if ip in ipaddress.ip_network(c, strict=False)), None)


def _numeric_proxy_uid(cfg: CaptureConfig) -> int | None:
    return next((int(u) for u in cfg.proxy_uids if u.isdigit()), None)


def expect_outbound(cfg: CaptureConfig, lab: Lab, family: int, proto: str, dst: str, port: int,
                    uid: int, nameservers: dict[int, tuple[str, ...]], src: str | None = None
                    ) -> tuple[int, bool, str]:
    """What the flags say about an outbound connection: (port, lands in the pod, why)."""
    proxy = str(uid) in cfg.proxy_uids or str(uid) in cfg.proxy_gids
    ip = ipaddress.ip_address(dst)
    own = dst == lab.pod.get(family)
    local = ip.is_loopback or own
    if src in ("127.0.0.6", "::6") and local:
        return port, True, "source is the proxy's inbound passthrough address"
    if proxy and own and proto == "tcp" and cfg.tproxy and _tproxy_captures(cfg, port):
        # Whatever nat decided, the proxy's packet to its own pod address comes back
        # through lo marked 1338, and mangle's ISTIO_INBOUND TPROXYs it (unless nat
        # already rewrote it to 127.0.0.1, which lands on the same port).
        return cfg.inbound_capture_port, True, "the proxy's own connection to the pod comes back by lo: TPROXY"
    if port in cfg.outbound_exclude_ports:
        return port, local, f"port {port} is in -o"
    if proxy:
        in_redirect = (proto == "tcp" and own and port != cfg.inbound_tunnel_port
                       and not (cfg.redirect_dns and port == DNS_PORT))
        if in_redirect:
            return cfg.inbound_capture_port, True, "the proxy calling its own pod address goes to inbound"
        return port, local, "the proxy's own traffic passes"
    # Istio's lo RETURN for apps spares port 53 when DNS is captured (either protocol).
    if own and not (cfg.redirect_dns and port == DNS_PORT):
        return port, True, "the app calling its own pod address over lo passes"
    if lab.interface in cfg.exclude_interfaces and not local:
        return port, False, f"interface {lab.interface} is in -c"
    dns = cfg.redirect_dns and port == DNS_PORT and (cfg.capture_all_dns or dst in nameservers.get(family, ()))
    if dns:
        return DNS_AGENT_PORT, True, "DNS is captured by the agent"
    loopback_cidrs = (cfg.ipv4_loopback_cidr,) if family == 4 else ("::1/128",)
    if _in(dst, loopback_cidrs):
        return port, True, "loopback passes"
    excluded = _in(dst, cfg.outbound_exclude_cidrs.v4 if family == 4 else cfg.outbound_exclude_cidrs.v6)
    if excluded:
        return port, local, f"{excluded} is in -x"
    if proto == "udp":
        return port, local, "UDP other than DNS is never captured"
    if port in cfg.outbound_ports:
        return cfg.proxy_port, True, f"port {port} is in -q"
    included = cfg.outbound_cidrs.wildcard or _in(dst, cfg.outbound_cidrs.v4 if family == 4
                                                   else cfg.outbound_cidrs.v6)
    if included:
        return cfg.proxy_port, True, "-i '*'" if cfg.outbound_cidrs.wildcard else f"{included} is in -i"
    return port, local, "not in -i"


def _tproxy_captures(cfg: CaptureConfig, port: int) -> bool:
    """Whether mangle's ISTIO_INBOUND (TPROXY) takes a port: -b '*' minus -d, or -b's list."""
    if cfg.inbound_ports_all:
        return port not in cfg.inbound_exclude_ports
    return port in cfg.inbound_ports


def expect_inbound(cfg: CaptureConfig, lab: Lab, port: int) -> tuple[int, bool, str]:
    if lab.interface in cfg.exclude_interfaces:
        return port, True, f"interface {lab.interface} is in -c"
    if port == cfg.inbound_tunnel_port and not cfg.tproxy:
        # Istio's tunnel-port RETURN sits in nat ISTIO_INBOUND; TPROXY captures in
        # mangle and never consults it, so with TPROXY the tunnel port is captured.
        return port, True, f"port {port} is the tunnel port (-e)"
    if cfg.inbound_ports_all:
        if port in cfg.inbound_exclude_ports:
            return port, True, f"port {port} is in -d"
        return cfg.inbound_capture_port, True, "-b '*'"
    if port in cfg.inbound_ports:
        return cfg.inbound_capture_port, True, f"port {port} is in -b"
    return port, True, "not in -b"


def build_probes(cfg: CaptureConfig, lab: Lab, nameservers: dict[int, tuple[str, ...]]) -> list[Probe]:
    """The matrix: app and proxy outbound, each -i/-x CIDR, each -q/-o port, inbound on
    captured and excluded ports and the tunnel port, loopback, the pod itself, DNS when
    enabled, per family."""
    probes: list[Probe] = []
    proxy_uid = _numeric_proxy_uid(cfg)
    avoid = list(LAB_NETWORKS)

    def out(label: str, family: int, proto: str, dst: str, port: int, uid: int, src: str | None = None) -> None:
        port_, local, why = expect_outbound(cfg, lab, family, proto, dst, port, uid, nameservers, src)
        probes.append(Probe(label, family, proto, False, dst, port, uid, src, port_, local, why))

    for family in lab.families:
        fam = f"v{family}"
        outside, pod = OUTSIDE[family], lab.pod[family]
        out(f"app {fam} -> outside", family, "tcp", outside, SAMPLE_OUTBOUND_PORT, APP_UID)
        if proxy_uid is not None:
            out(f"proxy {fam} -> outside", family, "tcp", outside, SAMPLE_OUTBOUND_PORT, proxy_uid)
            out(f"proxy {fam} -> pod itself", family, "tcp", pod, SAMPLE_INBOUND_PORT, proxy_uid)
            passthrough = "127.0.0.6" if family == 4 else "::6"
            out(f"proxy {fam} from {passthrough} -> pod", family, "tcp", pod, SAMPLE_INBOUND_PORT, proxy_uid,
                passthrough)
        out(f"app {fam} -> pod itself", family, "tcp", pod, SAMPLE_INBOUND_PORT, APP_UID)
        out(f"app {fam} -> loopback", family, "tcp", "127.0.0.1" if family == 4 else "::1", SAMPLE_INBOUND_PORT,
            APP_UID)
        out(f"app {fam} udp -> outside", family, "udp", outside, SAMPLE_UDP_PORT, APP_UID)
        cidrs = cfg.outbound_exclude_cidrs, cfg.outbound_cidrs
        for flag, group in zip(("-x", "-i"), cidrs, strict=True):
            for cidr in group.v4 if family == 4 else group.v6:
                address = representative(cidr, avoid)
                if address is not None:
                    out(f"app {fam} -> {address} ({flag} {cidr})", family, "tcp", address, SAMPLE_OUTBOUND_PORT,
                        APP_UID)
        for flag, ports in (("-q", cfg.outbound_ports), ("-o", cfg.outbound_exclude_ports)):
            for port in ports:
                out(f"app {fam} -> outside:{port} ({flag})", family, "tcp", outside, port, APP_UID)
        if proxy_uid is not None:
            for port in cfg.outbound_exclude_ports:  # with TPROXY, -o does not spare these
                out(f"proxy {fam} -> pod itself:{port} (-o)", family, "tcp", pod, port, proxy_uid)
        if cfg.redirect_dns:
            server = (nameservers.get(family) or (NAMESERVER[family],))[0]
            out(f"app {fam} dns udp -> {server}", family, "udp", server, DNS_PORT, APP_UID)
            out(f"app {fam} dns tcp -> {server}", family, "tcp", server, DNS_PORT, APP_UID)
            if proxy_uid is not None:
                out(f"proxy {fam} dns udp -> {server}", family, "udp", server, DNS_PORT, proxy_uid)
        inbound_ports = [SAMPLE_INBOUND_PORT, cfg.inbound_tunnel_port, *cfg.inbound_exclude_ports,
                         *cfg.inbound_ports]
        if not cfg.inbound_ports_all:
            inbound_ports.append(SAMPLE_UNCAPTURED_INBOUND_PORT)
        for port in dict.fromkeys(inbound_ports):
            if port in (cfg.proxy_port, cfg.inbound_capture_port):
                continue
            port_, local, why = expect_inbound(cfg, lab, port)
            probes.append(Probe(f"peer {fam} -> pod:{port}", family, "tcp", True, pod, port, None, None,
                                port_, local, why))
    return probes
