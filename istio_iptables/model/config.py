"""Configuration model: parse and validate istio-init's inputs, without touching the host.

Every value arrives as the raw string Istio would see (from a flag or an environment
variable) and leaves as a typed, frozen value.  Validation is stricter than Istio's
(which passes most strings straight to iptables and fails half-way through an apply):
anything iptables would reject is rejected here, before anything is touched, with a
`ConfigError` that names the flag and the value.
"""

import _socket
import re
from collections.abc import Sequence

from istio_iptables.model.constants import (
    INBOUND_CAPTURE_PORT,
    INBOUND_TUNNEL_PORT,
    IPV4_LOOPBACK_CIDR,
    PROBE_PORT,
    PROXY_PORT,
    PROXY_UID,
    TPROXY_MARK,
    TPROXY_ROUTE_TABLE,
)
from istio_iptables.model.record import Record

REDIRECT = "REDIRECT"
TPROXY = "TPROXY"

# Kernel interface names: 1-15 bytes, no '/', ':' or whitespace.  We also refuse
# shell and iptables metacharacters; '+' is iptables' trailing wildcard (eth+).
_IFACE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,14}$|^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,13}\+$"
# POSIX portable user/group names, as useradd accepts them.
_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$"
# Route tables 0 (unspec) and 253-255 (default, main, local) belong to the kernel.
_RESERVED_ROUTE_TABLES = frozenset({0, 253, 254, 255})
# ASCII digits only ([0-9], not \d): Go's strconv and time.ParseDuration read nothing
# else, while Python's \d, int(), float() and str.isdigit() also take '²', '٣',
# '1_000', 'nan' and 'inf'.
_DURATION_PATTERN = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)"
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
TRUE_WORDS = frozenset({"1", "t", "T", "true", "TRUE", "True"})
FALSE_WORDS = frozenset({"0", "f", "F", "false", "FALSE", "False"})
MAX_OWNER_GROUPS_INCLUDE = 64


class ConfigError(ValueError):
    """A bad input value: names the flag (and env variable) and the value."""

    def __init__(self, flag: str, value: str, reason: str) -> None:
        self.flag = flag
        self.value = value
        self.reason = reason
        super().__init__(f"invalid value {value!r} for {flag}: {reason}")


class Cidrs(Record):
    """An address list as Istio splits it: a wildcard, or IPv4 and IPv6 CIDRs kept in order."""

    wildcard: bool = False
    v4: tuple[str, ...] = ()
    v6: tuple[str, ...] = ()

    @property
    def v4_has_loopback(self) -> bool:
        return any(c.startswith("127.") for c in self.v4)  # canonical text: 127.0.0.0/8

    @property
    def v6_has_loopback(self) -> bool:
        return any(c.split("/")[0] == "::1" for c in self.v6)


class OwnerGroups(Record):
    """Istio's owner-group filter: capture all groups except `values`, or only `values`."""

    capture_all_except: bool = True
    values: tuple[str, ...] = ()


class CaptureConfig(Record):
    """Everything that decides which rules are planned.  Ports are ints, lists keep order."""

    proxy_port: int = PROXY_PORT
    inbound_capture_port: int = INBOUND_CAPTURE_PORT
    inbound_tunnel_port: int = INBOUND_TUNNEL_PORT
    proxy_uids: tuple[str, ...] = (PROXY_UID,)
    proxy_gids: tuple[str, ...] = (PROXY_UID,)
    mode: str = REDIRECT
    tproxy_mark: int = TPROXY_MARK
    tproxy_route_table: int = TPROXY_ROUTE_TABLE
    inbound_ports_all: bool = False
    inbound_ports: tuple[int, ...] = ()
    inbound_exclude_ports: tuple[int, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    outbound_cidrs: Cidrs = Cidrs()
    outbound_exclude_cidrs: Cidrs = Cidrs()
    outbound_ports: tuple[int, ...] = ()
    outbound_exclude_ports: tuple[int, ...] = ()
    kube_virt_interfaces: tuple[str, ...] = ()
    redirect_dns: bool = False
    capture_all_dns: bool = False
    drop_invalid: bool = False
    dual_stack: bool = False
    owner_groups: OwnerGroups = OwnerGroups()
    ipv4_loopback_cidr: str = IPV4_LOOPBACK_CIDR

    @property
    def captures_inbound(self) -> bool:
        return self.inbound_ports_all or bool(self.inbound_ports)

    @property
    def tproxy(self) -> bool:
        return self.mode == TPROXY

    @property
    def needs_nameservers(self) -> bool:
        """DNS capture limited to resolv.conf's servers (Istio reads the file only then)."""
        return self.redirect_dns and not self.capture_all_dns


class RunOptions(Record):
    """How to run: everything that does not change which rules are planned."""

    dry_run: bool = False
    cleanup_only: bool = False
    reconcile: bool = False
    force_apply: bool = False
    skip_rule_apply: bool = False
    run_validation: bool = False
    probe_port: int = PROBE_PORT
    probe_timeout: float = 5.0
    network_namespace: str = ""
    force_iptables_binary: str = ""
    native_nftables: bool = False
    backend: str = "restore"
    ipv6: str = "auto"
    resolv_conf: str = "/etc/resolv.conf"
    output: str = "restore"
    log_format: str = "text"


def is_number(text: str) -> bool:
    """ASCII decimal digits only, as Go's strconv reads them (str.isdigit also takes
    '²' and '٣', which int() then reads as 2 and 3, or refuses with a traceback)."""
    return text.isascii() and text.isdigit()


def split_list(raw: str) -> list[str]:
    """Split a comma list the way Istio does: empty items (trailing commas) vanish."""
    return [item for item in map(str.strip, raw.split(",")) if item]


def parse_port(flag: str, raw: str) -> int:
    """A single TCP/UDP port, 1-65535."""
    text = raw.strip()
    if not is_number(text) or len(text) > 5:
        raise ConfigError(flag, raw, "expected a port number 1-65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ConfigError(flag, raw, "port out of range 1-65535")
    return port


def parse_port_list(flag: str, raw: str, *, allow_wildcard: bool = False) -> tuple[bool, tuple[int, ...]]:
    """A comma list of ports, or '*' where Istio allows it.  Returns (wildcard, ports)."""
    if raw.strip() == "*":
        if not allow_wildcard:
            raise ConfigError(flag, raw, "'*' is not allowed here; give a comma list of ports")
        return True, ()
    ports = []
    for item in split_list(raw):
        if item == "*":
            raise ConfigError(flag, raw, "'*' must be the whole value, not one item of a list")
        try:
            ports.append(parse_port(flag, item))
        except ConfigError:
            raise ConfigError(flag, raw, f"{item!r} is not a port number 1-65535") from None
    return False, tuple(ports)


def parse_cidrs(flag: str, raw: str, *, allow_wildcard: bool) -> Cidrs:
    """A comma list of CIDRs (v4 and v6 mixed), or '*'.  Host bits are kept as written,
    as Istio's netip.ParsePrefix does; a bare address without a prefix length is refused."""
    if raw.strip() == "*":
        if not allow_wildcard:
            raise ConfigError(flag, raw, "'*' is not allowed here; give a comma list of CIDRs")
        return Cidrs(wildcard=True)
    bulk = _bulk_v4(raw)
    if bulk is not None:
        return Cidrs(wildcard=False, v4=bulk)  # every item already canonical IPv4
    items = split_list(raw)
    v4: list[str] = []
    v6: list[str] = []
    for item in items:
        if "/" not in item:
            raise ConfigError(flag, raw, f"{item!r} is not a CIDR (expected ADDRESS/PREFIX, e.g. 10.0.0.0/8)")
        version, text = _normalize_cidr(item)
        if not version:
            raise ConfigError(flag, raw, f"{item!r} is not a valid IPv4 or IPv6 CIDR")
        (v4 if version == 4 else v6).append(text)
    return Cidrs(wildcard=False, v4=tuple(v4), v6=tuple(v6))


_BULK_CIDRS = 64  # from this many CIDRs on, a list of plain IPv4 CIDRs is checked in C-level passes
_DIGITS = str.maketrans("", "", "0123456789")


def _bulk_v4(raw: str) -> tuple[str, ...] | None:
    """A long list of IPv4 CIDRs each written as inet_ntop prints it, checked with no
    Python step per item (10,000 CIDRs: about 19 M instructions, against 38 M item by
    item): dropping the digits must leave `.../` per item and the commas between them,
    so the list splits into four octets and a prefix per item, and every octet must be
    one of "0".."255" and every prefix one of "0".."32" (what inet_pton and the per-item
    path accept: no leading zeros, no empty part).  None for anything else (IPv6,
    spaces, empty items, a typo): the per-item path, which names a bad item."""
    if raw.count(",") < _BULK_CIDRS:
        return None
    items = raw.split(",")
    if raw.translate(_DIGITS) != (".../," * len(items))[:-1]:
        return None
    numbers = raw.replace("/", ".").replace(",", ".").split(".")
    prefixes = numbers[4::5]
    del numbers[4::5]
    # The canonical spellings, made here: the usual short lists never need them.
    if set(prefixes) <= set(map(str, range(33))) and set(numbers) <= set(map(str, range(256))):
        return tuple(items)
    return None


def _normalize_cidr(item: str) -> tuple[int, str]:
    """(4 or 6, canonical 'address/prefix'), or (0, '') when invalid.  inet_pton is ~15x
    cheaper than ipaddress, which matters with thousands of -x CIDRs."""
    address, _, prefix = item.partition("/")
    if not is_number(prefix) or len(prefix) > 3:
        return 0, ""
    length = int(prefix)
    try:
        if ":" not in address:
            # inet_pton takes only canonical dotted quads (no leading zeros, four
            # parts), so an accepted IPv4 address is already as inet_ntop would print it.
            _socket.inet_pton(_socket.AF_INET, address)
            return (4, f"{address}/{length}") if length <= 32 else (0, "")
        if length > 128:
            return 0, ""
        return 6, f"{_socket.inet_ntop(_socket.AF_INET6, _socket.inet_pton(_socket.AF_INET6, address))}/{length}"
    except OSError:
        return 0, ""


def parse_interfaces(flag: str, raw: str) -> tuple[str, ...]:
    """Interface names as the kernel allows them (plus iptables' trailing '+')."""
    names = split_list(raw)
    for name in names:
        if name in {".", ".."} or not re.match(_IFACE_PATTERN, name):
            raise ConfigError(flag, raw, f"{name!r} is not a valid interface name")
    return tuple(names)


def parse_owner_list(flag: str, raw: str) -> tuple[str, ...]:
    """uids/gids or user/group names; names are passed to iptables as Istio does."""
    items = split_list(raw)
    for item in items:
        if is_number(item):
            if len(item) > 10 or int(item) > 0xFFFFFFFE:
                raise ConfigError(flag, raw, f"{item!r} is out of range for a uid/gid")
        elif not re.match(_NAME_PATTERN, item):
            raise ConfigError(flag, raw, f"{item!r} is neither a number nor a valid user/group name")
    return tuple(str(int(i)) if is_number(i) else i for i in items)


def parse_mode(flag: str, raw: str) -> str:
    """REDIRECT or TPROXY (any case); empty means Istio's default, REDIRECT."""
    mode = raw.strip().upper() or REDIRECT
    if mode not in {REDIRECT, TPROXY}:
        raise ConfigError(flag, raw, "expected REDIRECT or TPROXY")
    return mode


def parse_uint(flag: str, raw: str, *, low: int, high: int) -> int:
    """An integer in [low, high], decimal or 0x-hex (fwmarks are often written in hex)."""
    text = raw.strip()
    hexa = text[:2] in ("0x", "0X")
    digits = text[2:] if hexa else text
    if not digits.isascii() or not (digits.isalnum() if hexa else digits.isdigit()) or len(digits) > 20:
        raise ConfigError(flag, raw, f"expected an integer {low}-{high}")
    try:
        value = int(digits, 16 if hexa else 10)
    except ValueError:
        raise ConfigError(flag, raw, f"expected an integer {low}-{high}") from None
    if not low <= value <= high:
        raise ConfigError(flag, raw, f"out of range {low}-{high}")
    return value


def parse_route_table(flag: str, raw: str) -> int:
    table = parse_uint(flag, raw, low=1, high=0xFFFFFFFF)
    if table in _RESERVED_ROUTE_TABLES:
        raise ConfigError(flag, raw, "tables 253-255 are the kernel's default/main/local tables")
    return table


def parse_bool(flag: str, raw: str) -> bool:
    """Booleans from the environment, with Go's strconv.ParseBool spelling."""
    text = raw.strip()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS or text == "":
        return False
    raise ConfigError(flag, raw, "expected true or false")


def parse_duration(flag: str, raw: str) -> float:
    """A Go duration ('5s', '500ms', '1m30s') or plain seconds; returns seconds."""
    text = raw.strip()
    plain = text[:-1] if text.endswith("s") else text
    if plain and plain.isascii() and plain.replace(".", "", 1).isdigit():
        seconds = float(plain)  # "5" or the common "5s", without compiling the regex
    else:
        pos = 0
        seconds = 0.0
        for match in re.finditer(_DURATION_PATTERN, text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ConfigError(flag, raw, "expected a duration such as 5s or 500ms")
    if seconds <= 0 or seconds > 86400:
        raise ConfigError(flag, raw, "duration must be between 0 and 24h")
    return seconds


def parse_loopback_cidr(flag: str, raw: str) -> str:
    """ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: an IPv4 loopback CIDR with a /8-/32 mask."""
    version, text = _normalize_cidr(raw.strip())
    if version != 4 or not text.startswith("127."):
        raise ConfigError(flag, raw, "expected an IPv4 loopback CIDR such as 127.0.0.1/32")
    if not 8 <= int(text.split("/")[1]) <= 32:
        raise ConfigError(flag, raw, "the mask must be between /8 and /32")
    return text


def parse_owner_groups(include_flag: str, include: str, exclude_flag: str, exclude: str) -> OwnerGroups:
    """ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]: exclusions only apply when include is '*'."""
    if include.strip() == "*":
        return OwnerGroups(capture_all_except=True, values=parse_owner_list(exclude_flag, exclude))
    values = parse_owner_list(include_flag, include)
    if len(values) > MAX_OWNER_GROUPS_INCLUDE:
        raise ConfigError(include_flag, include, f"at most {MAX_OWNER_GROUPS_INCLUDE} groups may be listed")
    return OwnerGroups(capture_all_except=False, values=values)


def require_distinct_ports(named_ports: Sequence[tuple[str, int]]) -> None:
    """The proxy's own ports must differ, or redirected traffic would loop."""
    seen: dict[int, str] = {}
    for flag, port in named_ports:
        if port in seen:
            raise ConfigError(flag, str(port), f"the same port is already used by {seen[port]}")
        seen[port] = flag
