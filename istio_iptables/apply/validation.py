"""Istio's --run-validation probe: prove capture works before the app starts.

Listen where captured traffic lands (127.0.0.1 on the inbound capture and proxy
ports), dial 127.0.0.6:<probe port> as the proxy uid, and accept when a connection
arrives whose SO_ORIGINAL_DST is the probe port.  The dial runs in a forked child so
that setuid never touches this process; it switches identity only when it must and
may (see probe_identity).
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  (the setuid child may not be able to import codecs)
import os
import pwd
import select
import socket
import struct
import time

from istio_iptables import logs as log
from istio_iptables.model.config import CaptureConfig, RunOptions, is_number
from istio_iptables.model.constants import IPV4_INBOUND_PASSTHROUGH_ADDRESS

SO_ORIGINAL_DST = 80
# capability numbers (linux/capability.h): may the probe switch to the proxy's identity?
CAP_SETGID = 6
CAP_SETUID = 7


def original_dst_port(conn: socket.socket) -> int | None:
    """The pre-NAT destination port of an accepted IPv4 connection, if NAT touched it."""
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port: int = struct.unpack_from("!H", raw, 2)[0]
    return port


def _uid(owner: str) -> int:
    return int(owner) if is_number(owner) else pwd.getpwnam(owner).pw_uid


def _gid(owner: str) -> int:
    import grp

    return int(owner) if is_number(owner) else grp.getgrnam(owner).gr_gid


def _effective_capabilities() -> int:
    """This process's effective capability set (CapEff of /proc/self/status); 0 if unreadable."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def probe_identity(uid: int, gid: int) -> tuple[int, int] | None:
    """The (uid, gid) the probe must switch to, or None to dial as this process is.

    Istio's istio-validation container already runs as the proxy (uid/gid 1337) with
    every capability dropped: it cannot call setgroups/setuid, and need not.  An
    istio-init running as root switches to the proxy uid, as the proxy's own traffic
    is what the rules treat specially.  Without CAP_SETUID/CAP_SETGID there is no
    switching: the probe dials as it is, and the verdict says what that identity sees.
    """
    if os.geteuid() == uid and os.getegid() == gid:
        return None
    needed = (1 << CAP_SETGID) | (1 << CAP_SETUID)
    if _effective_capabilities() & needed != needed:
        log.info("validation: running as uid %d gid %d without CAP_SETUID/CAP_SETGID; "
                 "probing as this identity, not as the proxy's uid %d", os.geteuid(), os.getegid(), uid)
        return None
    return uid, gid


def _dial_as(identity: tuple[int, int] | None, port: int) -> None:
    """Fork, switch to `identity` if given, connect once; the parent waits for the child."""
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            if identity is not None:
                os.setgroups([])
                os.setgid(identity[1])
                os.setuid(identity[0])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect((IPV4_INBOUND_PASSTHROUGH_ADDRESS, port))
                code = 0
        except OSError:
            code = 1
        finally:
            os._exit(code)
    os.waitpid(pid, 0)


def validate(capture: CaptureConfig, run: RunOptions) -> bool:
    """True once a probe connection is seen redirected with the probe port intact."""
    identity = probe_identity(_uid(capture.proxy_uids[0]), _gid(capture.proxy_gids[0]))
    listeners = []
    try:
        for port in dict.fromkeys((capture.inbound_capture_port, capture.proxy_port)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(8)
            listeners.append(sock)
        deadline = time.monotonic() + run.probe_timeout
        while time.monotonic() < deadline:
            _dial_as(identity, run.probe_port)
            ready, _, _ = select.select(listeners, [], [], min(1.0, max(0.0, deadline - time.monotonic())))
            for sock in ready:
                conn, _ = sock.accept()
                with conn:
                    if original_dst_port(conn) == run.probe_port:
                        return True
            log.info("validation: probe to %s:%d not captured yet", IPV4_INBOUND_PASSTHROUGH_ADDRESS, run.probe_port)
        return False
    except OSError as err:
        log.error("validation could not run: %s", err)
        return False
    finally:
        for sock in listeners:
            sock.close()
