"""`verify`'s engine: a scratch pod and peer, the capture applied by the real tool,
a matrix of real connections, and for each one the flags' intent, explain's
prediction (from the plan and from the installed rules) and what the kernel did.

Everything it creates (namespaces, listeners, a temporary resolv.conf) is removed
when `run_verify` returns or raises, including on KeyboardInterrupt.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from istio_iptables.cli.explain import Request, answer_for
from istio_iptables.cli.flags import Settings
from istio_iptables.lab import matrix
from istio_iptables.lab.netlab import PEER_IPV4, PEER_IPV6, POD_IPV4, POD_IPV6, NetLab, run_in_netns
from istio_iptables.model.explain import Answer, Connection, is_loopback


class Row(NamedTuple):
    probe: matrix.Probe
    plan: Answer
    live: Answer
    kernel_port: int | None
    kernel_local: bool | None
    kernel_error: str | None

    @property
    def agree(self) -> bool:
        """Flags, plan, live rules and the kernel all say the same."""
        want = (self.probe.expect_port, self.probe.expect_local)
        return all(got == want for got in (self.plan_landing, self.live_landing, self.kernel_landing))

    @property
    def kernel_landing(self) -> tuple[int | None, bool | None]:
        return self.kernel_port, self.kernel_local

    @property
    def plan_landing(self) -> tuple[int | None, bool | None]:
        return landing(self.plan, self.probe)

    @property
    def live_landing(self) -> tuple[int | None, bool | None]:
        return landing(self.live, self.probe)


class Result(NamedTuple):
    rows: list[Row]
    applied: str  # the tool's log of the apply
    lab_families: tuple[int, ...]


def landing(answer: Answer, probe: matrix.Probe) -> tuple[int | None, bool | None]:
    """Where explain says it lands: (port, in the pod?)."""
    if answer.port is None or answer.address is None:
        return None, None
    if answer.captured or probe.inbound:
        return answer.port, True
    return answer.port, is_loopback(answer.address) or answer.address in (POD_IPV4, POD_IPV6, "::6")


def lab_families(settings: Settings) -> tuple[int, ...]:
    """IPv6 in the lab when the plan would write IPv6 rules for a dual-stack pod."""
    run, cfg = settings.run, settings.capture
    ipv6 = run.ipv6 == "on" or (run.ipv6 == "auto" and cfg.dual_stack)
    return (4, 6) if ipv6 else (4,)


def request_for(probe: matrix.Probe, lab: matrix.Lab, live: bool) -> Request:
    uid = None if probe.uid is None else str(probe.uid)
    conn = Connection(probe.family, probe.proto, probe.dst, probe.dport, probe.inbound,
                      probe.src if probe.src else ((PEER_IPV4 if probe.family == 4 else PEER_IPV6)
                                                   if probe.inbound else None), uid, uid)
    return Request(conn, tuple(lab.pod[f] for f in lab.families), lab.interface, live, "json")


def _listen_all(netlab: NetLab, probes: Sequence[matrix.Probe], settings: Settings,
                families: tuple[int, ...]) -> None:
    cfg = settings.capture
    pod_ports = {p.dport for p in probes} | {cfg.proxy_port, cfg.inbound_capture_port, matrix.DNS_AGENT_PORT}
    peer_ports = {p.dport for p in probes if not p.inbound}
    for family in families:
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        for port in sorted(pod_ports):
            transparent = cfg.tproxy and port == cfg.inbound_capture_port
            netlab.listen("pod", port, family=af, transparent=transparent, reply=f"pod:{port}\n".encode())
            netlab.listen("pod", port, family=af, udp=True, reply=f"pod:{port}\n".encode())
        for port in sorted(peer_ports):
            netlab.listen("peer", port, family=af, reply=f"peer:{port}\n".encode())
            netlab.listen("peer", port, family=af, udp=True, reply=f"peer:{port}\n".encode())


def _send(netlab: NetLab, probes: Sequence[matrix.Probe]) -> list[tuple[int | None, bool | None, str | None]]:
    """All probes, batched per (namespace, uid): one client process per batch."""
    results: list[tuple[int | None, bool | None, str | None]] = [(None, None, None)] * len(probes)
    groups: dict[tuple[str, int | None], list[int]] = {}
    for index, probe in enumerate(probes):
        groups.setdefault(("peer" if probe.inbound else "pod", probe.uid), []).append(index)
    for (ns, uid), indexes in groups.items():
        items = [(probes[i].proto, probes[i].dst, probes[i].dport, probes[i].src) for i in indexes]
        for index, (reply, error) in zip(indexes, netlab.exchange_batch(ns, items, uid=uid, gid=uid), strict=True):
            text = (reply or b"").decode("ascii", "replace").strip()
            where, _, port = text.partition(":")
            if where in ("pod", "peer") and port.isdigit():
                results[index] = (int(port), where == "pod", None)
            else:
                results[index] = (None, None, error or f"unexpected reply {text!r}")
    return results


def apply_args(settings_argv: Sequence[str], pod_ns_path: str, resolv: str) -> list[str]:
    return [sys.executable, "-m", "istio_iptables", "--network-namespace", pod_ns_path, *settings_argv,
            "--resolv-conf", resolv]


def run_verify(settings: Settings, capture_argv: Sequence[str], env: Mapping[str, str],
               progress: Callable[[str], None] = lambda _line: None) -> Result:
    """Build the lab, apply `capture_argv` with `env` through the real command, send
    the matrix and compare.  Raises on a failed apply (with the tool's words)."""
    from istio_iptables.kernel.live_rules import read_live

    families = lab_families(settings)
    fd, resolv = tempfile.mkstemp(prefix="istio-iptables-verify-", suffix=".resolv.conf")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write("".join(f"nameserver {matrix.NAMESERVER[f]}\n" for f in families))
        settings = settings._replace(run=settings.run._replace(resolv_conf=resolv))
        nameservers = {f: (matrix.NAMESERVER[f],) for f in families}
        with NetLab(ipv6=6 in families) as netlab:
            lab = matrix.Lab(pod={4: netlab.pod_ipv4, **({6: str(netlab.pod_ipv6)} if 6 in families else {})},
                             families=families, interface=netlab.pod_if)
            probes = matrix.build_probes(settings.capture, lab, nameservers)
            for cidr in (*settings.capture.outbound_exclude_cidrs.v4, *settings.capture.outbound_cidrs.v4,
                         *(settings.capture.outbound_exclude_cidrs.v6 + settings.capture.outbound_cidrs.v6
                           if 6 in families else ())):
                route = matrix.anyip_route(cidr)
                if route is not None and matrix.representative(cidr, ["192.0.2.0/24", "2001:db8:1::/64"]):
                    netlab.run("peer", "ip", "route", "replace", "local", route, "dev", "lo")
            _listen_all(netlab, probes, settings, families)
            progress(f"scratch pod {netlab.pod_ns} (IPv{' and IPv'.join(map(str, families))}), "
                     f"peer {netlab.peer_ns}; applying the capture")
            done = subprocess.run(apply_args(capture_argv, netlab.pod_ns_path, resolv), capture_output=True,
                                  text=True, timeout=120, env=dict(env), check=False)
            if done.returncode != 0:
                raise VerifyError(f"applying the capture failed (exit {done.returncode}): "
                                  f"{done.stderr.strip().splitlines()[-1:] or ''}")
            live = run_in_netns(netlab.pod_ns, read_live, timeout=60)
            progress(f"sending {len(probes)} connections")
            observed = _send(netlab, probes)
            rows = []
            for probe, (port, local, error) in zip(probes, observed, strict=True):
                plan, _ = answer_for(settings, request_for(probe, lab, live=False))
                live_answer, _ = answer_for(settings, request_for(probe, lab, live=True), live)
                rows.append(Row(probe, plan, live_answer, port, local, error))
            return Result(rows, done.stderr, families)
    finally:
        os.unlink(resolv)


class VerifyError(RuntimeError):
    """The scratch lab could not be built or the capture not applied."""
