"""Host facts the planner needs, gathered in one place so a dry run can override them.

Istio reads two things from the pod: whether to write IPv6 rules (from the pod's
addresses) and which nameservers to capture (from /etc/resolv.conf).  Reading the
addresses uses one raw netlink dump from the standard library, so the common path
never imports pyroute2.
"""

import _socket
import os
import stat

from istio_iptables import logs as log
from istio_iptables.model.constants import PROXY_UID
from istio_iptables.model.record import Record


class HostFactsError(RuntimeError):
    """The host could not be read (e.g. resolv.conf missing when DNS capture needs it)."""


class HostFacts(Record):
    """What the planner needs to know about the pod's network namespace."""

    ipv6: bool = False
    nameservers_v4: tuple[str, ...] = ()
    nameservers_v6: tuple[str, ...] = ()


_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_V6_LOOPBACK = b"\x00" * 15 + b"\x01"


def _packed(text: str) -> tuple[int, bytes]:
    """(4 or 6, packed address), or (0, b'') when `text` is not an IP address."""
    for family, version in ((_socket.AF_INET, 4), (_socket.AF_INET6, 6)):
        try:
            return version, _socket.inet_pton(family, text)
        except (OSError, ValueError):  # ValueError: an embedded NUL
            continue
    return 0, b""


def _loopback_or_link_local(version: int, packed: bytes) -> bool:
    """127/8 and 169.254/16; ::1 and fe80::/10: the addresses Istio skips."""
    if version == 4:
        return packed[0] == 127 or packed[:2] == b"\xa9\xfe"
    return packed == _V6_LOOPBACK or (packed[0] == 0xFE and packed[1] & 0xC0 == 0x80)


def ipv6_from_addresses(addresses: list[str], dual_stack: bool) -> bool:
    """Istio's rule: IPv6 when the first usable (not loopback, not link-local) address
    is IPv6; with dual stack, when any usable address is IPv6."""
    usable = []
    for text in addresses:
        version, packed = _packed(text)
        if version == 6 and packed[:12] == _V4_MAPPED_PREFIX:
            version, packed = 4, packed[12:]
        if version and not _loopback_or_link_local(version, packed):
            usable.append(version == 6)
    if not usable:
        log.warning("no usable (non-loopback, non-link-local) address found; assuming IPv4 only")
        return False
    return any(usable) if dual_stack else usable[0]


def detect_ipv6(dual_stack: bool) -> bool:
    """Decide IPv6 for the current network namespace."""
    # The one place the model asks the kernel; imported here so the rest of model/
    # stays importable (and testable) without it.
    from istio_iptables.kernel.netlink import interface_addresses

    return ipv6_from_addresses([addr for _, addr in interface_addresses()], dual_stack)


def read_nameservers(path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The nameserver lines of a resolv.conf, split into IPv4 and IPv6, kept as written.
    Entries that are not IP addresses are ignored, as Istio ignores them."""
    try:
        # O_NONBLOCK: a FIFO given as --resolv-conf must not hang the pod's start.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except (OSError, ValueError) as err:
        raise HostFactsError(f"cannot read resolv.conf {path!r}: {getattr(err, 'strerror', None) or err}") from None
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise HostFactsError(f"cannot read resolv.conf {path!r}: not a regular file")
        try:
            lines = handle.read().splitlines()
        except OSError as err:
            raise HostFactsError(f"cannot read resolv.conf {path!r}: {err.strerror}") from None
    v4: list[str] = []
    v6: list[str] = []
    for raw in lines:
        try:  # a resolver skips a line it cannot parse; a nameserver is ASCII anyway
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            log.debug("ignoring a resolv.conf line that is not ASCII: %r", raw)
            continue
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        version, _ = _packed(fields[1])
        if not version:
            log.debug("ignoring nameserver %r: not an IP address", fields[1])
            continue
        (v4 if version == 4 else v6).append(fields[1])
    return tuple(v4), tuple(v6)


def default_proxy_uid(envoy_user: str | None) -> str:
    """Istio's default for -u: the uid of $ENVOY_USER (istio-proxy), else 1337."""
    import pwd  # only when -u is not given (0.1 M instructions at every start otherwise)

    try:
        return str(pwd.getpwnam(envoy_user or "istio-proxy").pw_uid)
    except KeyError:
        return PROXY_UID


def gather(ipv6: str, dual_stack: bool, need_dns: bool, resolv_conf: str,
           nameservers: tuple[tuple[str, ...], tuple[str, ...]] | None = None) -> HostFacts:
    """Collect the facts: `ipv6` is 'auto', 'on' or 'off'; nameservers only when DNS
    capture needs them (Istio does not read resolv.conf otherwise), unless already
    read (`nameservers`, as read_nameservers returns them)."""
    enable_v6 = detect_ipv6(dual_stack) if ipv6 == "auto" else ipv6 == "on"
    servers: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    if nameservers is not None:
        servers = nameservers
    elif need_dns:
        servers = read_nameservers(resolv_conf)
    return HostFacts(ipv6=enable_v6, nameservers_v4=servers[0], nameservers_v6=servers[1])
