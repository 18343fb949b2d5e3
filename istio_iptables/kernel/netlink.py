"""The rtnetlink calls the init path needs, from the standard library.

Reading the pod's addresses (for Istio's IPv6 decision), adding Istio's ::6 address to
lo and TPROXY's `ip rule`/`ip route` steps (routes.py, over `request` and `dump`
here) would otherwise cost a pyroute2 import: 150-200 ms of CPU and 33 MiB, which
under the init container's 100m limit is 1.5-2 s of pod start (see `make bench`).
pyroute2 stays for the veth lab, where its breadth pays and startup does not count.
"""

from __future__ import annotations

import _socket as socket  # the C module: skips socket.py's import cost
import _struct as struct  # the C module: struct.py only re-exports it (~0.35 M instructions)
import errno
import os

RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_F_NODAD = 0x02
RT_SCOPE_HOST = 254


class NetlinkError(OSError):
    """The kernel answered a netlink request with an error."""


def _open(protocol: int = socket.NETLINK_ROUTE) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    try:
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    offset = 0
    while offset + 16 <= len(data):
        length, msg_type = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        out.append((msg_type, data[offset + 16: offset + length]))
        offset += (length + 3) & ~3
    return out


def attributes(payload: bytes, offset: int) -> dict[int, bytes]:
    """A message's attributes (type -> raw value) from `offset`, past its fixed header."""
    attrs: dict[int, bytes] = {}
    while offset + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, offset)
        if length < 4:
            break
        attrs[kind] = payload[offset + 4: offset + length]
        offset += (length + 3) & ~3
    return attrs


def interface_addresses() -> list[tuple[int, str]]:
    """(ifindex, address) of every address in this network namespace, ordered as Go's
    net.InterfaceAddrs reports them: by interface, IPv4 before IPv6."""
    found: list[tuple[int, str]] = []
    for payload in dump(RTM_GETADDR, struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0)):
        family, _, _, _, index = struct.unpack_from("=BBBBI", payload, 0)
        attrs = attributes(payload, 8)
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if raw is not None and family in (socket.AF_INET, socket.AF_INET6):
            found.append((index, socket.inet_ntop(family, raw)))
    return sorted(found, key=lambda item: item[0])


def _words(code: int) -> str:
    return f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"


def request(kind: int, flags: int, body: bytes) -> None:
    """Send one rtnetlink request and wait for its acknowledgement; NetlinkError(errno)
    when the kernel refuses it."""
    header = struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, 1, 0)
    sock = _open()
    try:
        sock.send(header + body)
        while True:
            for msg_type, payload in _messages(sock.recv(65536)):
                if msg_type == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload, 0)[0]
                    if code:
                        raise NetlinkError(code, _words(code))
                    return
    finally:
        sock.close()


def dump(kind: int, body: bytes) -> list[bytes]:
    """The payload of every message a dump request (RTM_GET*) answers with."""
    header = struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    return [payload for _, payload in _dump(socket.NETLINK_ROUTE, header + body)]


def _dump(protocol: int, message: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of every message the kernel answers a dump request with, up to
    NLMSG_DONE; NetlinkError(errno) when it refuses."""
    sock = _open(protocol)
    try:
        sock.send(message)
        found: list[tuple[int, bytes]] = []
        while True:
            for msg_type, payload in _messages(sock.recv(65536)):
                if msg_type == NLMSG_DONE:
                    return found
                if msg_type == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload, 0)[0]
                    raise NetlinkError(code, _words(code))
                found.append((msg_type, payload))
    finally:
        sock.close()


def _address_request(kind: int, flags: int, address: str, prefixlen: int, device: str) -> None:
    index = socket.if_nametoindex(device)
    packed = socket.inet_pton(socket.AF_INET6, address)
    attr = struct.pack("=HH", 4 + len(packed), IFA_LOCAL) + packed
    attr += struct.pack("=HH", 4 + len(packed), IFA_ADDRESS) + packed
    body = struct.pack("=BBBBI", socket.AF_INET6, prefixlen, IFA_F_NODAD, RT_SCOPE_HOST, index) + attr
    try:
        request(kind, flags, body)
    except NetlinkError as err:
        raise NetlinkError(err.errno, f"{err.strerror}: {address}/{prefixlen} dev {device}") from None


def add_ipv6_address(address: str, prefixlen: int = 128, device: str = "lo") -> bool:
    """Add an IPv6 address; False when it was already there (so rollback leaves it)."""
    try:
        _address_request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, address, prefixlen, device)
    except NetlinkError as err:
        if err.errno == errno.EEXIST:
            return False
        raise
    return True


def delete_ipv6_address(address: str, prefixlen: int = 128, device: str = "lo") -> bool:
    """Remove an IPv6 address; False when it was not there."""
    try:
        _address_request(RTM_DELADDR, 0, address, prefixlen, device)
    except NetlinkError as err:
        if err.errno in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
            return False
        raise
    return True


NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFT_MSG_NEWCHAIN = 3
NFT_MSG_GETCHAIN = 4
NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_NAME = 3
NFPROTO = {4: 2, 6: 10}
NFPROTO_INET = 1
NFPROTO_ANY = 0  # NFPROTO_UNSPEC: a dump of every family's tables


def _nft_dump(nfproto: int, get: int, new: int, keys: tuple[int, ...]) -> list[tuple[str, ...]] | None:
    """One nf_tables dump (tables or chains of a protocol family): the string attributes
    `keys` of every object; None when the kernel will not say (no nf_tables, no privilege)."""
    message = struct.pack("=IHHII", 20, (NFNL_SUBSYS_NFTABLES << 8) | get, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    try:
        answers = _dump(NETLINK_NETFILTER, message + struct.pack("=BBH", nfproto, 0, 0))
    except OSError:
        return None
    return [tuple(attrs.get(k, b"").rstrip(b"\0").decode("ascii", "replace") for k in keys)
            for kind, payload in answers if kind & 0xFF == new for attrs in (attributes(payload, 4),)]


def nft_tables(nfproto: int) -> list[str] | None:
    """Names of the nf_tables tables of one protocol family (NFPROTO_INET for Istio's
    native tables); None when the kernel will not say."""
    found = _nft_dump(nfproto, NFT_MSG_GETTABLE, NFT_MSG_NEWTABLE, (NFTA_TABLE_NAME,))
    return None if found is None else [name for (name,) in found]


def nft_chains(family: int) -> set[tuple[str, str]] | None:
    """(table, chain) of every nf_tables chain of an IP family (what iptables-nft made),
    including empty base chains that iptables-nft-save does not tell apart; None when
    the kernel will not say.  A failed run compares this with the survey's answer to
    delete exactly the chains and tables it created."""
    found = _nft_dump(NFPROTO[family], NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN, (NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME))
    return None if found is None else {(table, chain) for table, chain in found}


def nft_has_tables(family: int) -> bool | None:
    """Whether nf_tables holds any table of this IP family in this namespace; None when
    the kernel will not say (no nf_tables, no privilege).  In a fresh pod the answer is
    no, and the `iptables-nft-save` process that would print nothing can be skipped."""
    tables = nft_tables(NFPROTO[family])
    return None if tables is None else bool(tables)
