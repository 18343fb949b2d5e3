"""Network-namespace test lab for proving where real traffic lands.

This module is test support for ``istio-iptables``.  It builds a tiny two-host
network out of Linux network namespaces so that integration tests can apply
iptables rules inside a "pod" namespace and then observe, with real TCP and
UDP traffic, which socket a connection actually reaches::

    +--------------------- pod ----------------------+      +------ peer -------+
    | lo                                             |      | lo                |
    | eth0  192.0.2.2/24     2001:db8:1::2/64        |<---->| eth0 192.0.2.1/24 |
    | default via 192.0.2.1 / 2001:db8:1::1          | veth |  2001:db8:1::1/64 |
    +------------------------------------------------+      +-------------------+

The peer additionally owns the whole of ``198.51.100.0/24`` and
``2001:db8:2::/64`` through "AnyIP" local routes, so an "outbound" connection
from the pod to e.g. ``198.51.100.10`` that is *not* redirected by iptables
terminates on a wildcard listener in the peer instead of vanishing.  All
addresses are documentation ranges and no namespace has any link to the
outside world, so traffic never leaves the lab.

Typical use::

    with NetLab() as lab:
        lab.run("pod", "iptables-legacy", "-t", "nat", "-A", "OUTPUT", ...)
        envoy = lab.listen("pod", 15001)
        result = lab.connect("pod", "192.0.2.1", 7000)
        assert result.reply == b"port=15001\\n"
        assert envoy.wait_for_hit().original_dst == ("192.0.2.1", 7000)

Everything here needs root (``CAP_SYS_ADMIN`` and ``CAP_NET_ADMIN``);
``netns_available()`` reports whether the current process can use it.

Implementation notes:

* Sockets are created in a short-lived helper thread that has called
  ``setns(2)`` on the namespace.  On Linux ``setns(CLONE_NEWNET)`` only changes
  the *calling thread*; a socket keeps the namespace it was created in for its
  whole life, so the main test thread never changes namespace.
* Clients run as separate processes (``ip netns exec NS python -c ...``) so
  that they can drop to another uid/gid (needed for ``-m owner`` rules)
  without affecting the test process.
* Only the Python standard library is used.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

__all__ = [
    "EXTERNAL_IPV4",
    "EXTERNAL_IPV4_NET",
    "EXTERNAL_IPV6",
    "EXTERNAL_IPV6_NET",
    "NETNS_DIR",
    "PEER_IPV4",
    "PEER_IPV6",
    "POD_IPV4",
    "POD_IPV6",
    "CommandError",
    "ConnectResult",
    "Hit",
    "Listener",
    "NetLab",
    "NetLabError",
    "UdpResult",
    "cleanup_stale_namespaces",
    "netns_available",
    "netns_required",
    "original_dst",
    "run_in_netns",
]

T = TypeVar("T")

#: Directory where ``ip netns add`` bind-mounts named namespaces.
NETNS_DIR = "/var/run/netns"

#: Pod side of the veth pair (IPv4).
POD_IPV4 = "192.0.2.2"
#: Peer side of the veth pair (IPv4); the pod's IPv4 default gateway.
PEER_IPV4 = "192.0.2.1"
#: Pod side of the veth pair (IPv6).
POD_IPV6 = "2001:db8:1::2"
#: Peer side of the veth pair (IPv6); the pod's IPv6 default gateway.
PEER_IPV6 = "2001:db8:1::1"
#: IPv4 prefix the peer treats as local (AnyIP), i.e. "the internet".
EXTERNAL_IPV4_NET = "198.51.100.0/24"
#: A convenient "external" IPv4 destination inside :data:`EXTERNAL_IPV4_NET`.
EXTERNAL_IPV4 = "198.51.100.10"
#: IPv6 prefix the peer treats as local (AnyIP).
EXTERNAL_IPV6_NET = "2001:db8:2::/64"
#: A convenient "external" IPv6 destination inside :data:`EXTERNAL_IPV6_NET`.
EXTERNAL_IPV6 = "2001:db8:2::10"

# Linux constants that Python's socket module does not (reliably) export.
CLONE_NEWNET = 0x40000000
SOL_IP = 0
SOL_IPV6 = 41
SO_ORIGINAL_DST = 80  # SOL_IP, <linux/netfilter_ipv4.h>
IP6T_SO_ORIGINAL_DST = 80  # SOL_IPV6, <linux/netfilter_ipv6/ip6_tables.h>
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
IP_RECVORIGDSTADDR = 20  # also the cmsg type IP_ORIGDSTADDR
IPV6_RECVORIGDSTADDR = 74  # also the cmsg type IPV6_ORIGDSTADDR

#: How often blocking server loops wake up to check whether to stop.
_POLL_INTERVAL = 0.1
#: Upper bound for a single server-side send to a client.
_SERVER_IO_TIMEOUT = 2.0
#: How long a TCP server waits for the client to close after replying.
_DRAIN_TIMEOUT = 1.0
#: Extra wall-clock allowance for a client subprocess beyond its own timeout.
_CLIENT_GRACE = 10.0

_NAME_PREFIX = "iit"

Address = tuple[str, int]


class NetLabError(RuntimeError):
    """Raised when the lab cannot be built or used."""


class CommandError(NetLabError):
    """A command run by the lab exited non-zero; carries its full output."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        """Record the failed command and its output."""
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command {self.argv!r} exited {returncode}\n"
            f"--- stdout ---\n{stdout.rstrip()}\n--- stderr ---\n{stderr.rstrip()}"
        )


# ---------------------------------------------------------------------------
# setns helpers
# ---------------------------------------------------------------------------

_libc: ctypes.CDLL | None = None
_libc_lock = threading.Lock()


def _get_libc() -> ctypes.CDLL:
    """Load libc once, with errno support, and declare ``setns``."""
    global _libc
    with _libc_lock:
        if _libc is None:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.setns.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.setns.restype = ctypes.c_int
            _libc = lib
        return _libc


def _ns_path(ns: str) -> str:
    """Return the filesystem path of a namespace given its name or a path."""
    return ns if ns.startswith("/") else os.path.join(NETNS_DIR, ns)


def _setns_current_thread(ns: str) -> None:
    """Move the *calling thread* into network namespace ``ns`` (name or path)."""
    libc = _get_libc()
    fd = os.open(_ns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({_ns_path(ns)}): {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(ns: str, fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Call ``fn()`` in a throw-away thread that has joined namespace ``ns``.

    ``ns`` is a namespace name (``/var/run/netns/<name>``) or an absolute path.
    The return value (or exception) of ``fn`` is passed back to the caller.
    Sockets created by ``fn`` stay in ``ns`` even after the thread is gone,
    which is how listeners are made.  Paths under ``/proc/sys/net`` opened by
    ``fn`` also refer to ``ns``; ``/proc/self/net`` does *not* (it follows the
    thread-group leader), use ``/proc/thread-self/net`` instead.
    """
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            _setns_current_thread(ns)
            outcome["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"netlab-setns-{os.path.basename(ns)}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise NetLabError(f"run_in_netns({ns!r}) did not finish within {timeout}s")
    if "error" in outcome:
        error = outcome["error"]
        assert isinstance(error, BaseException)
        raise error
    return cast(T, outcome["value"])


# ---------------------------------------------------------------------------
# sockaddr parsing
# ---------------------------------------------------------------------------


def _parse_sockaddr(raw: bytes) -> Address | None:
    """Decode a raw ``struct sockaddr_in``/``sockaddr_in6`` into ``(addr, port)``."""
    if len(raw) < 2:
        return None
    (family,) = struct.unpack_from("=H", raw, 0)  # sa_family is host byte order
    if family == socket.AF_INET and len(raw) >= 8:
        (port,) = struct.unpack_from("!H", raw, 2)
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        (port,) = struct.unpack_from("!H", raw, 2)
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return None


def original_dst(sock: socket.socket) -> Address | None:
    """Return the pre-NAT destination of an accepted TCP socket, if any.

    Uses ``SO_ORIGINAL_DST`` (IPv4) or ``IP6T_SO_ORIGINAL_DST`` (IPv6).  The
    kernel answers from the connection-tracking table, so this is ``None``
    when conntrack is not tracking the connection.  Conntrack is switched on
    per namespace only by rules that need it (REDIRECT, DNAT, ``-m conntrack``,
    ``-m state`` ...); a nat table holding only ACCEPT rules does not.  When
    conntrack *is* active but no NAT happened, the kernel returns the socket's
    own local address; see :attr:`Hit.redirected`.
    """
    local = sock.getsockname()
    host = str(local[0])
    if sock.family == socket.AF_INET6 and not host.startswith("::ffff:"):
        level, opt = SOL_IPV6, IP6T_SO_ORIGINAL_DST
    else:
        level, opt = SOL_IP, SO_ORIGINAL_DST
    try:
        raw = sock.getsockopt(level, opt, 128)
    except OSError:
        return None
    return _parse_sockaddr(raw)


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One connection (TCP) or datagram (UDP) received by a :class:`Listener`.

    Attributes:
        listen_port: The port the listener is bound to.
        peer_addr: Source address of the connection/datagram as seen by the server.
        peer_port: Source port as seen by the server.
        local_addr: Local address of the accepted socket (TCP) or the packet's
            destination address (UDP, via ``IP_RECVORIGDSTADDR``).  With TPROXY
            this is the original destination; with REDIRECT it is the
            rewritten one (e.g. ``127.0.0.1``).
        original_dst: ``SO_ORIGINAL_DST`` result for TCP, ``None`` when the
            option failed (connection not tracked) and always ``None`` for UDP.
        local_port: Local port counterpart of ``local_addr``.
        proto: ``"tcp"`` or ``"udp"``.
        data: The datagram payload (UDP); empty for TCP.
    """

    listen_port: int
    peer_addr: str
    peer_port: int
    local_addr: str
    original_dst: Address | None
    local_port: int = 0
    proto: str = "tcp"
    data: bytes = b""

    @property
    def redirected(self) -> bool:
        """True when conntrack reports a destination other than the local one."""
        return self.original_dst is not None and self.original_dst != (self.local_addr, self.local_port)


@dataclass(frozen=True)
class ConnectResult:
    """Outcome of :meth:`NetLab.connect`.

    Attributes:
        ok: Connected and read the server's reply up to EOF without error.
        reply: Bytes the server sent (``b"port=N\\n"`` for default listeners).
        error: ``None`` on success, otherwise ``"refused"``, ``"timeout"``
            (connect timed out), ``"read-timeout"``, ``"reset"``,
            ``"unreachable"`` or ``"<ERRNO>: <message>"``.
        connected: Whether the TCP handshake completed.
        uid: Real uid the client process had when it connected.
        gid: Real gid the client process had when it connected.
        src: The client's local ``(addr, port)`` once connected.
    """

    ok: bool
    reply: bytes
    error: str | None
    connected: bool
    uid: int
    gid: int
    src: Address | None = None

    @property
    def landed_port(self) -> int | None:
        """Port parsed from a default ``port=N`` reply, else ``None``."""
        text = self.reply.decode("ascii", "replace").strip()
        if text.startswith("port="):
            try:
                return int(text[5:].split()[0])
            except (ValueError, IndexError):
                return None
        return None


@dataclass(frozen=True)
class UdpResult:
    """Outcome of :meth:`NetLab.udp_exchange`.

    Attributes:
        reply: The first datagram received back, or ``None`` on timeout/error.
        sender: Source ``(addr, port)`` of the reply.
        error: ``None``, ``"timeout"`` or ``"<ERRNO>: <message>"``.
        uid: Real uid of the client process.
        gid: Real gid of the client process.
        src: The client's local ``(addr, port)`` after sending.
    """

    reply: bytes | None
    sender: Address | None
    error: str | None
    uid: int
    gid: int
    src: Address | None = None


# ---------------------------------------------------------------------------
# Listener
# ---------------------------------------------------------------------------


@dataclass
class _ListenerState:
    """Mutable, lock-protected bookkeeping shared with the server thread."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    hits: list[Hit] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Listener:
    """A TCP or UDP server socket living in a namespace, served by a daemon thread.

    Create it with :meth:`NetLab.listen`.  Every accepted TCP connection is
    recorded as a :class:`Hit` (before the reply is sent, so a client that got
    a reply can rely on the hit being visible), answered with the reply bytes
    (default ``b"port=<listen_port>\\n"``) and closed.  Every UDP datagram is
    recorded and answered with the same bytes.
    """

    def __init__(
        self,
        ns: str,
        sock: socket.socket,
        *,
        udp: bool,
        transparent: bool,
        reply: bytes | None,
    ) -> None:
        """Take ownership of a bound (and, for TCP, listening) socket and serve it."""
        self.ns = ns
        self.family = socket.AddressFamily(sock.family)
        bound = sock.getsockname()
        self.addr: str = str(bound[0])
        self.port: int = int(bound[1])
        self.udp = udp
        self.transparent = transparent
        self.reply = reply if reply is not None else f"port={self.port}\n".encode()
        self._sock = sock
        self._state = _ListenerState()
        self._stop = threading.Event()
        sock.settimeout(_POLL_INTERVAL)
        proto = "udp" if udp else "tcp"
        self._thread = threading.Thread(
            target=self._serve_udp if udp else self._serve_tcp,
            name=f"netlab-{proto}-{ns}-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def __repr__(self) -> str:
        """Short description for test failure messages."""
        proto = "udp" if self.udp else "tcp"
        return f"<Listener {proto} {self.ns} [{self.addr}]:{self.port} hits={len(self.hits)}>"

    # -- public API ---------------------------------------------------------

    @property
    def hits(self) -> list[Hit]:
        """A snapshot copy of the hits recorded so far (thread-safe)."""
        with self._state.cond:
            return list(self._state.hits)

    @property
    def errors(self) -> list[str]:
        """Errors the server thread swallowed while serving (for debugging)."""
        with self._state.cond:
            return list(self._state.errors)

    def wait_for_hits(self, count: int, timeout: float = 3.0) -> list[Hit]:
        """Block until at least ``count`` hits exist; return them all.

        Raises:
            TimeoutError: fewer than ``count`` hits arrived within ``timeout``.
        """
        with self._state.cond:
            if not self._state.cond.wait_for(lambda: len(self._state.hits) >= count, timeout):
                raise TimeoutError(f"{self!r}: expected {count} hit(s) within {timeout}s")
            return list(self._state.hits)

    def wait_for_hit(self, timeout: float = 3.0) -> Hit:
        """Block until the first hit exists and return it.

        Raises:
            TimeoutError: nothing arrived within ``timeout``.
        """
        return self.wait_for_hits(1, timeout)[0]

    @property
    def running(self) -> bool:
        """Whether the server thread is still alive."""
        return self._thread.is_alive()

    def clear(self) -> None:
        """Forget all recorded hits and errors."""
        with self._state.cond:
            self._state.hits.clear()
            self._state.errors.clear()

    def request_stop(self) -> None:
        """Ask the server thread to finish at its next poll, without waiting: a lab
        with dozens of listeners stops them all at once, then joins each."""
        self._stop.set()

    def close(self) -> None:
        """Stop the server thread and close the socket (idempotent, bounded)."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        with contextlib.suppress(OSError):
            self._sock.close()

    # -- server loops -------------------------------------------------------

    def _record(self, hit: Hit) -> None:
        with self._state.cond:
            self._state.hits.append(hit)
            self._state.cond.notify_all()

    def _record_error(self, message: str) -> None:
        with self._state.cond:
            self._state.errors.append(message)

    def _serve_tcp(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    conn, peer = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError as exc:
                    if not self._stop.is_set():
                        self._record_error(f"accept: {exc}")
                    return
                with conn:
                    try:
                        conn.settimeout(_SERVER_IO_TIMEOUT)
                        local = conn.getsockname()
                        self._record(
                            Hit(
                                listen_port=self.port,
                                peer_addr=str(peer[0]),
                                peer_port=int(peer[1]),
                                local_addr=str(local[0]),
                                original_dst=original_dst(conn),
                                local_port=int(local[1]),
                                proto="tcp",
                            )
                        )
                        conn.sendall(self.reply)
                        conn.shutdown(socket.SHUT_WR)
                        _drain(conn)
                    except OSError as exc:
                        self._record_error(f"serve {peer!r}: {exc}")
        finally:
            self._sock.close()

    def _serve_udp(self) -> None:
        cmsg_space = socket.CMSG_SPACE(64)
        try:
            while not self._stop.is_set():
                try:
                    data, ancdata, _flags, sender = self._sock.recvmsg(65535, cmsg_space)
                except TimeoutError:
                    continue
                except OSError as exc:
                    if not self._stop.is_set():
                        self._record_error(f"recvmsg: {exc}")
                    return
                dst: Address | None = None
                for level, ctype, cdata in ancdata:
                    if (level, ctype) in ((SOL_IP, IP_RECVORIGDSTADDR), (SOL_IPV6, IPV6_RECVORIGDSTADDR)):
                        dst = _parse_sockaddr(cdata)
                local_addr, local_port = dst if dst is not None else (self.addr, self.port)
                self._record(
                    Hit(
                        listen_port=self.port,
                        peer_addr=str(sender[0]),
                        peer_port=int(sender[1]),
                        local_addr=local_addr,
                        original_dst=None,
                        local_port=local_port,
                        proto="udp",
                        data=data,
                    )
                )
                try:
                    self._sock.sendto(self.reply, sender)
                except OSError as exc:
                    self._record_error(f"sendto {sender!r}: {exc}")
        finally:
            self._sock.close()


def _drain(conn: socket.socket) -> None:
    """Read and discard until the client closes (bounded), so close() sends FIN, not RST.

    Closing a socket with unread data makes Linux answer with a reset, which
    can destroy the reply before the client has read it.
    """
    conn.settimeout(_DRAIN_TIMEOUT)
    with contextlib.suppress(OSError):
        while conn.recv(65536):
            pass


def _make_server_socket(
    family: socket.AddressFamily,
    addr: str,
    port: int,
    *,
    udp: bool,
    transparent: bool,
    v6only: bool,
) -> socket.socket:
    """Create, configure and bind a server socket in the current thread's netns."""
    sock = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(SOL_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        if transparent:
            if family == socket.AF_INET6:
                sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(SOL_IP, IP_TRANSPARENT, 1)
        if udp:
            if family == socket.AF_INET6:
                sock.setsockopt(SOL_IPV6, IPV6_RECVORIGDSTADDR, 1)
                if not v6only:
                    sock.setsockopt(SOL_IP, IP_RECVORIGDSTADDR, 1)
            else:
                sock.setsockopt(SOL_IP, IP_RECVORIGDSTADDR, 1)
        bind_addr = addr or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        sock.bind((bind_addr, port))
        if not udp:
            sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


# ---------------------------------------------------------------------------
# Client subprocess
# ---------------------------------------------------------------------------

# Runs inside the namespace via ``ip netns exec``.  Reads one JSON object on stdin
# and prints one JSON object.  Identity is dropped *before* any socket exists.
_CLIENT_SCRIPT = r"""
import errno, json, os, socket, sys

def classify(exc, connected):
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "read-timeout" if connected else "timeout"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if isinstance(exc, OSError) and exc.errno is not None:
        return "%s: %s" % (errno.errorcode.get(exc.errno, exc.errno), exc.strerror)
    return "%s: %s" % (type(exc).__name__, exc)

def main():
    p = json.loads(sys.stdin.read())
    out = {"ok": False, "connected": False, "reply": "", "error": None,
           "sender": None, "src": None}
    if p["uid"] is not None or p["gid"] is not None:
        os.setgroups([])
    if p["gid"] is not None:
        os.setgid(p["gid"])
    if p["uid"] is not None:
        os.setuid(p["uid"])
    out["uid"], out["gid"] = os.getuid(), os.getgid()
    if (p["uid"] is not None and (os.getuid(), os.geteuid()) != (p["uid"], p["uid"])) or (
        p["gid"] is not None and (os.getgid(), os.getegid()) != (p["gid"], p["gid"])
    ):
        out["error"] = "identity mismatch"
        print(json.dumps(out))
        return
    if "batch" in p:
        results = []
        for item in p["batch"]:
            one = dict(out)
            exchange({**p, **item}, one)
            results.append(one)
        print(json.dumps(results))
        return
    exchange(p, out)
    print(json.dumps(out))

def exchange(p, out):
    family = socket.AF_INET6 if ":" in p["dst"] else socket.AF_INET
    udp = p["mode"] == "udp"
    s = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.settimeout(p["timeout"])
    try:
        if p["src"] is not None:
            s.bind((p["src"], 0))
        if udp:
            s.sendto(bytes.fromhex(p["payload"]), (p["dst"], p["port"]))
            out["src"] = list(s.getsockname()[:2])
            data, sender = s.recvfrom(65535)
            out["reply"], out["sender"], out["ok"] = data.hex(), list(sender[:2]), True
        else:
            s.connect((p["dst"], p["port"]))
            out["connected"] = True
            out["src"] = list(s.getsockname()[:2])
            if p["payload"]:
                s.sendall(bytes.fromhex(p["payload"]))
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            out["reply"], out["ok"] = b"".join(chunks).hex(), True
    except Exception as exc:
        out["error"] = classify(exc, out["connected"])
    finally:
        s.close()

main()
"""


def _client_identity(out: dict[str, object]) -> tuple[str | None, int, int, tuple[str, int] | None]:
    """(error, uid, gid, source address) from a client report, common to TCP and UDP."""
    error = None if out["error"] is None else str(out["error"])
    return error, int(str(out["uid"])), int(str(out["gid"])), _as_address(out["src"])


def _as_address(value: object) -> Address | None:
    """Convert a JSON ``[addr, port]`` list back into a tuple."""
    if isinstance(value, list) and len(value) == 2:
        return str(value[0]), int(value[1])
    return None


# ---------------------------------------------------------------------------
# Availability
# ---------------------------------------------------------------------------

_availability: tuple[bool, str] | None = None


def netns_available() -> tuple[bool, str]:
    """Tell whether this process can build a :class:`NetLab`.

    Returns ``(True, "")`` when running as root with ``ip`` available and a
    probe namespace can be added and deleted; otherwise ``(False, reason)``
    with a human-readable reason suitable for ``pytest.skip``.  The answer is
    cached for the life of the process.
    """
    global _availability
    if _availability is not None:
        return _availability
    _availability = _probe_netns()
    return _availability


def _probe_netns() -> tuple[bool, str]:
    if sys.platform != "linux":
        return False, f"network namespaces need Linux (platform is {sys.platform})"
    if os.geteuid() != 0:
        return False, f"network namespaces need root (euid is {os.geteuid()})"
    if shutil.which("ip") is None:
        return False, "the 'ip' command (iproute2) is not installed"
    name = f"{_NAME_PREFIX}-probe-{os.getpid()}-{secrets.token_hex(3)}"
    add = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if add.returncode != 0:
        return False, f"'ip netns add' failed: {add.stderr.strip() or add.returncode}"
    try:
        probe = subprocess.run(
            ["ip", "-n", name, "link", "set", "lo", "up"], capture_output=True, text=True, check=False
        )
        if probe.returncode != 0:
            return False, f"cannot configure a new namespace: {probe.stderr.strip()}"
        try:
            run_in_netns(name, lambda: None)
        except OSError as exc:
            return False, f"setns() into a namespace failed: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return True, ""


def netns_required() -> bool:
    """True when ``REQUIRE_NETNS=1``: tests must fail, not skip, without netns."""
    return os.environ.get("REQUIRE_NETNS", "").strip() in {"1", "true", "yes"}


def cleanup_stale_namespaces(prefix: str = _NAME_PREFIX) -> list[str]:
    """Delete lab namespaces left behind by test processes that no longer exist.

    Lab namespaces are named ``<prefix>-<role>-<pid>-<hex>``; only those whose
    creating pid is no longer running are removed, so concurrent test runs are
    left alone.  Returns the names deleted.
    """
    removed: list[str] = []
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return removed
    for name in names:
        parts = name.split("-")
        if len(parts) != 4 or parts[0] != prefix or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        done = subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        if done.returncode == 0:
            removed.append(name)
    return removed


# ---------------------------------------------------------------------------
# NetLab
# ---------------------------------------------------------------------------


class NetLab:
    """Two network namespaces ("pod" and "peer") joined by a veth pair.

    Use as a context manager (or call :meth:`start` / :meth:`close`).  Every
    method that takes ``ns`` accepts the literal aliases ``"pod"`` and
    ``"peer"`` as well as a namespace name.

    Attributes:
        pod_ns: Name of the pod namespace (``iit-pod-<pid>-<hex>``).
        peer_ns: Name of the peer namespace (``iit-peer-<pid>-<hex>``).
        pod_ns_path: ``/var/run/netns/<pod_ns>``.
        peer_ns_path: ``/var/run/netns/<peer_ns>``.
        pod_if: Interface name of the pod's veth end (``eth0``).
        peer_if: Interface name of the peer's veth end (``eth0``).
        pod_ipv4: ``192.0.2.2``.
        peer_ipv4: ``192.0.2.1``.
        pod_ipv6: ``2001:db8:1::2`` or ``None`` for an IPv4-only lab.
        peer_ipv6: ``2001:db8:1::1`` or ``None`` for an IPv4-only lab.
        ipv6: Whether IPv6 addresses and routes were configured.
        external_ipv4: An address the peer answers for (``198.51.100.10``),
            or ``None`` when ``peer_anyip`` is off.
        external_ipv6: Likewise for IPv6 (``2001:db8:2::10``).
    """

    def __init__(self, *, ipv6: bool = True, peer_anyip: bool = True, prefix: str = _NAME_PREFIX) -> None:
        """Choose names and addresses; nothing is created until :meth:`start`.

        Args:
            ipv6: Configure IPv6 addresses and a default route.  When False the
                pod has only IPv4 on ``eth0`` (``::1`` on ``lo`` still exists).
            peer_anyip: Make the peer accept traffic for
                :data:`EXTERNAL_IPV4_NET` / :data:`EXTERNAL_IPV6_NET`.
            prefix: Name prefix for the namespaces (no dashes).
        """
        if "-" in prefix or not prefix:
            raise ValueError("prefix must be non-empty and contain no '-'")
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.pod_ns = f"{prefix}-pod-{token}"
        self.peer_ns = f"{prefix}-peer-{token}"
        self.pod_ns_path = os.path.join(NETNS_DIR, self.pod_ns)
        self.peer_ns_path = os.path.join(NETNS_DIR, self.peer_ns)
        self.pod_if = "eth0"
        self.peer_if = "eth0"
        self.ipv6 = ipv6
        self.pod_ipv4 = POD_IPV4
        self.peer_ipv4 = PEER_IPV4
        self.pod_ipv6: str | None = POD_IPV6 if ipv6 else None
        self.peer_ipv6: str | None = PEER_IPV6 if ipv6 else None
        self.peer_anyip = peer_anyip
        self.external_ipv4: str | None = EXTERNAL_IPV4 if peer_anyip else None
        self.external_ipv6: str | None = EXTERNAL_IPV6 if peer_anyip and ipv6 else None
        self._listeners: list[Listener] = []
        self._created: list[str] = []
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        """Show the namespace names."""
        return f"<NetLab pod={self.pod_ns} peer={self.peer_ns}>"

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> NetLab:
        """Build the lab and return it."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Tear the lab down, whatever happened inside the ``with`` block."""
        self.close()

    def start(self) -> NetLab:
        """Create namespaces, veth pair, addresses and routes.

        On any failure everything created so far is removed before the error
        propagates.
        """
        if self._started:
            raise NetLabError("NetLab.start() called twice")
        self._started = True
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _ip(self, *args: str) -> None:
        self._host_cmd(["ip", *args])

    def _host_cmd(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
        if done.returncode != 0:
            raise CommandError(argv, done.returncode, done.stdout, done.stderr)
        return done

    def _build(self) -> None:
        pod, peer = self.pod_ns, self.peer_ns
        for ns in (pod, peer):
            self._ip("netns", "add", ns)
            self._created.append(ns)
        # New interfaces copy net.ipv6.conf.default.*: disable DAD before the
        # veth exists so link-local addresses are not "tentative" either.
        for ns in (pod, peer):
            self.sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")
            self.sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")
            self.sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "0")
        self._ip("-n", pod, "link", "add", self.pod_if, "type", "veth", "peer", "name", self.peer_if, "netns", peer)
        for ns, ifname, v4, v6 in (
            (pod, self.pod_if, self.pod_ipv4, self.pod_ipv6),
            (peer, self.peer_if, self.peer_ipv4, self.peer_ipv6),
        ):
            self._ip("-n", ns, "link", "set", "lo", "up")
            self._ip("-n", ns, "addr", "add", f"{v4}/24", "dev", ifname)
            if v6 is not None:
                self._ip("-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
            self._ip("-n", ns, "link", "set", ifname, "up")
        self._ip("-n", pod, "route", "add", "default", "via", self.peer_ipv4, "dev", self.pod_if)
        if self.peer_ipv6 is not None:
            self._ip("-n", pod, "-6", "route", "add", "default", "via", self.peer_ipv6, "dev", self.pod_if)
        if self.peer_anyip:
            self._ip("-n", peer, "route", "add", "local", EXTERNAL_IPV4_NET, "dev", "lo")
            if self.ipv6:
                self._ip("-n", peer, "-6", "route", "add", "local", EXTERNAL_IPV6_NET, "dev", "lo")

    def close(self) -> None:
        """Close every listener and delete both namespaces (idempotent).

        Deletion errors are ignored so that teardown never masks a test
        failure; :func:`cleanup_stale_namespaces` can mop up afterwards.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.request_stop()
        for listener in listeners:
            with contextlib.suppress(Exception):  # best-effort teardown
                listener.close()
        for ns in reversed(self._created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=30)
        self._created.clear()
        atexit.unregister(self.close)

    # -- helpers ------------------------------------------------------------

    def ns(self, ns: str) -> str:
        """Resolve the aliases ``"pod"``/``"peer"`` to real namespace names."""
        if ns == "pod":
            return self.pod_ns
        if ns == "peer":
            return self.peer_ns
        return ns

    def _check_open(self) -> None:
        if not self._started or self._closed:
            raise NetLabError(f"{self!r} is not running (use it inside 'with NetLab() as lab:')")

    def run(
        self,
        ns: str,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside namespace ``ns`` (``ip netns exec``), capturing text output.

        Raises:
            CommandError: ``check`` is true and the command exited non-zero
                (the message includes stdout and stderr).
        """
        full = ["ip", "netns", "exec", self.ns(ns), *argv]
        done = subprocess.run(full, capture_output=True, text=True, check=False, input=input, timeout=timeout, env=env)
        if check and done.returncode != 0:
            raise CommandError(full, done.returncode, done.stdout, done.stderr)
        return done

    def sysctl(self, ns: str, key: str, value: str | None = None) -> str:
        """Read, or write then read back, a ``net.*`` sysctl inside ``ns``.

        ``key`` uses dotted form, e.g. ``net.ipv4.conf.all.route_localnet``.
        """
        path = "/proc/sys/" + key.replace(".", "/")

        def access() -> str:
            if value is not None:
                with open(path, "w", encoding="ascii") as fh:
                    fh.write(value)
            with open(path, encoding="ascii") as fh:
                return fh.read().strip()

        return run_in_netns(self.ns(ns), access)

    def iptables_save(self, ns: str, *, ipv6: bool = False, backend: str = "legacy") -> str:
        """Return ``ip[6]tables-<backend>-save`` output for ``ns`` (debugging aid)."""
        tool = f"{'ip6tables' if ipv6 else 'iptables'}-{backend}-save"
        return self.run(ns, tool).stdout

    # -- servers ------------------------------------------------------------

    def listen(
        self,
        ns: str,
        port: int,
        family: socket.AddressFamily = socket.AF_INET,
        addr: str = "",
        transparent: bool = False,
        udp: bool = False,
        *,
        v6only: bool = True,
        reply: bytes | None = None,
    ) -> Listener:
        """Start a TCP (or UDP) server in ``ns`` and return its :class:`Listener`.

        Args:
            ns: Namespace name or ``"pod"``/``"peer"``.
            port: Port to bind; ``0`` picks a free one (see ``Listener.port``).
            family: ``socket.AF_INET`` or ``socket.AF_INET6``.
            addr: Address to bind; empty means the wildcard of ``family``.
            transparent: Set ``IP_TRANSPARENT``/``IPV6_TRANSPARENT`` before
                binding, as a TPROXY target must.
            udp: Serve UDP datagrams instead of TCP connections.
            v6only: For AF_INET6, set ``IPV6_V6ONLY`` (default) so an IPv4
                listener on the same port can coexist.
            reply: Bytes to answer with (default ``b"port=<port>\\n"``).

        The listener is closed automatically when the lab closes.
        """
        self._check_open()
        real_ns = self.ns(ns)
        sock = run_in_netns(
            real_ns,
            lambda: _make_server_socket(
                socket.AddressFamily(family), addr, port, udp=udp, transparent=transparent, v6only=v6only
            ),
        )
        listener = Listener(real_ns, sock, udp=udp, transparent=transparent, reply=reply)
        with self._lock:
            self._listeners.append(listener)
        return listener

    # -- clients ------------------------------------------------------------

    def _client(self, ns: str, params: dict[str, object], timeout: float) -> dict[str, object]:
        argv = ["ip", "netns", "exec", self.ns(ns), sys.executable, "-I", "-S", "-c", _CLIENT_SCRIPT]
        request = json.dumps(params)
        try:
            done = subprocess.run(
                argv, input=request, capture_output=True, text=True, check=False, timeout=timeout + _CLIENT_GRACE
            )
        except subprocess.TimeoutExpired as exc:
            raise NetLabError(f"client in {ns} hung past {timeout + _CLIENT_GRACE}s: {request[:200]}") from exc
        if done.returncode != 0 or not done.stdout.strip():
            raise CommandError([*argv[:4], "<client>", request[:200]], done.returncode, done.stdout, done.stderr)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert isinstance(result, dict)
        return result

    def connect(
        self,
        ns: str,
        dst_addr: str,
        dst_port: int,
        uid: int | None = None,
        gid: int | None = None,
        timeout: float = 3.0,
        src_addr: str | None = None,
        *,
        payload: bytes = b"",
    ) -> ConnectResult:
        """Open a TCP connection from inside ``ns`` and read the reply to EOF.

        The client is a separate process (``ip netns exec`` + Python) that
        drops supplementary groups and switches to ``gid`` then ``uid``
        (each left as root when ``None``) *before* creating its socket, so
        iptables ``-m owner`` matches see that identity.  ``src_addr``
        binds the client's source address.  ``payload`` is sent after
        connecting (default listeners ignore it).  Connection failures are
        reported in :attr:`ConnectResult.error`, never raised.
        """
        out = self._client_call(ns, "tcp", dst_addr, dst_port, uid, gid, timeout, src_addr, payload)
        error, real_uid, real_gid, src = _client_identity(out)
        return ConnectResult(
            ok=bool(out["ok"]),
            reply=bytes.fromhex(str(out["reply"])),
            error=error,
            connected=bool(out["connected"]),
            uid=real_uid,
            gid=real_gid,
            src=src,
        )

    def udp_exchange(
        self,
        ns: str,
        dst: str,
        port: int,
        payload: bytes = b"ping",
        uid: int | None = None,
        gid: int | None = None,
        timeout: float = 2.0,
        src_addr: str | None = None,
    ) -> UdpResult:
        """Send one UDP datagram from inside ``ns`` and wait for one reply.

        Identity handling is the same as :meth:`connect`.  The client socket
        is unconnected, so a reply from any source address is accepted
        (and reported in :attr:`UdpResult.sender`).
        """
        out = self._client_call(ns, "udp", dst, port, uid, gid, timeout, src_addr, payload)
        error, real_uid, real_gid, src = _client_identity(out)
        return UdpResult(
            reply=bytes.fromhex(str(out["reply"])) if out["ok"] else None,
            sender=_as_address(out["sender"]),
            error=error,
            uid=real_uid,
            gid=real_gid,
            src=src,
        )

    def _client_call(
        self,
        ns: str,
        mode: str,
        dst: str,
        port: int,
        uid: int | None,
        gid: int | None,
        timeout: float,
        src: str | None,
        payload: bytes,
    ) -> dict[str, object]:
        """Run one client exchange (``mode`` tcp or udp) in ``ns``; returns its report."""
        self._check_open()
        params: dict[str, object] = {
            "mode": mode, "dst": dst, "port": port, "uid": uid, "gid": gid,
            "timeout": timeout, "src": src, "payload": payload.hex(),
        }  # fmt: skip
        return self._client(ns, params, timeout)

    def exchange_batch(
        self,
        ns: str,
        items: Sequence[tuple[str, str, int, str | None]],
        uid: int | None = None,
        gid: int | None = None,
        timeout: float = 2.0,
    ) -> list[tuple[bytes | None, str | None]]:
        """Many exchanges from one client process with one identity: each item is
        (``"tcp"``/``"udp"``, dst, port, source address or None); each result is
        (reply or None, error or None).  One process instead of one per connection
        keeps a matrix of hundreds of connections fast."""
        self._check_open()
        params: dict[str, object] = {
            "uid": uid, "gid": gid, "timeout": timeout, "payload": "",
            "batch": [{"mode": m, "dst": d, "port": p, "src": s} for m, d, p, s in items],
        }  # fmt: skip
        argv = ["ip", "netns", "exec", self.ns(ns), sys.executable, "-I", "-S", "-c", _CLIENT_SCRIPT]
        limit = timeout * max(1, len(items)) + _CLIENT_GRACE
        done = subprocess.run(argv, input=json.dumps(params), capture_output=True, text=True, check=False,
                              timeout=limit)
        if done.returncode != 0 or not done.stdout.strip():
            raise CommandError([*argv[:4], "<batch client>"], done.returncode, done.stdout, done.stderr)
        results = json.loads(done.stdout.strip().splitlines()[-1])
        if isinstance(results, dict):  # identity could not be taken
            raise NetLabError(f"batch client in {ns}: {results.get('error')}")
        return [(bytes.fromhex(r["reply"]) if r["ok"] else None, r["error"]) for r in results]
