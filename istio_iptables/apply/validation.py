"""Istio's --run-validation probe: prove capture works before the app starts.

Listen where captured traffic lands (127.0.0.1 on the inbound capture and proxy
ports), dial 127.0.0.6:<probe port> as the proxy uid, and accept when a connection
arrives whose SO_ORIGINAL_DST is the probe port.  The dial runs in a forked child so
that setuid never touches this process.
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
from istio_iptables.model.config import CaptureConfig, RunOptions
from istio_iptables.model.constants import IPV4_INBOUND_PASSTHROUGH_ADDRESS

SO_ORIGINAL_DST = 80


def original_dst_port(conn: socket.socket) -> int | None:
    """The pre-NAT destination port of an accepted IPv4 connection, if NAT touched it."""
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port: int = struct.unpack_from("!H", raw, 2)[0]
    return port


def _uid(owner: str) -> int:
    return int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid


def _dial_as(uid: int, gid: int, port: int) -> None:
    """Fork, drop to uid/gid, connect once; the parent waits for the child."""
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
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
    uid = _uid(capture.proxy_uids[0])
    gid = int(capture.proxy_gids[0]) if capture.proxy_gids[0].isdigit() else uid
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
            _dial_as(uid, gid, run.probe_port)
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
