"""`verify`'s engine: a scratch pod and peer, the capture applied by the real tool,
a matrix of real connections, and for each one the flags' intent, explain's
prediction (from the plan and from the installed rules) and what the kernel did.

Everything it creates (namespaces, listeners, a temporary resolv.conf) is removed
when `run_verify` returns or raises, including on KeyboardInterrupt.
"""


import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from istio_iptables.cli.explain import Request, answer_for
from istio_iptables.cli.flags import Settings
from istio_iptables.lab import matrix
from istio_iptables.lab.netlab import PEER_IPV4, PEER_IPV6, POD_IPV4, POD_IPV6, NetLab, run_in_netns
from istio_iptables.model.explain import Answer, Connection, is_loopback
from istio_iptables.model.record import Record

if TYPE_CHECKING:
    from istio_iptables.kernel.live_rules import LiveRules


class Row(Record):
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


class Result(Record):
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


def _listen_all(netlab: NetLab, ports: Sequence[int], settings: Settings, families: tuple[int, ...]) -> None:
    """TCP and UDP listeners on every port, in the pod (plus the sidecar's ports) and
    the peer, answering "pod:PORT" or "peer:PORT" so the client knows where it landed."""
    cfg = settings.capture
    pod_ports = set(ports) | {cfg.proxy_port, cfg.inbound_capture_port, matrix.DNS_AGENT_PORT}
    peer_ports = set(ports)
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


class Scratch:
    """A scratch pod+peer with the capture applied: apply once, then check as many
    connections as wanted (`rows`).  A context manager: leaving it removes the
    namespaces, listeners and the temporary resolv.conf, also on KeyboardInterrupt."""

    def __init__(self, settings: Settings, capture_argv: Sequence[str], env: Mapping[str, str],
                 extra_routes: Sequence[str] = ()) -> None:
        self.families = lab_families(settings)
        self.capture_argv = list(capture_argv)
        self.env = dict(env)
        self.extra_routes = list(extra_routes)
        self.settings = settings
        self.nameservers: dict[int, tuple[str, ...]] = {f: (matrix.NAMESERVER[f],) for f in self.families}
        self.netlab = NetLab(ipv6=6 in self.families)
        self.lab = matrix.Lab(pod={4: self.netlab.pod_ipv4, **({6: str(self.netlab.pod_ipv6)}
                                                               if 6 in self.families else {})},
                              families=self.families, interface=self.netlab.pod_if)
        self.resolv = ""
        self.applied = ""
        self.live: LiveRules | None = None

    def __enter__(self) -> "Scratch":
        fd, self.resolv = tempfile.mkstemp(prefix="istio-iptables-verify-", suffix=".resolv.conf")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write("".join(f"nameserver {matrix.NAMESERVER[f]}\n" for f in self.families))
            self.settings = self.settings._replace(run=self.settings.run._replace(resolv_conf=self.resolv))
            self.netlab.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.netlab.close()
        if self.resolv:
            with contextlib.suppress(OSError):
                os.unlink(self.resolv)

    def apply(self, listen_ports: Sequence[int]) -> None:
        """Routes for the CIDRs, listeners, then the real command in the pod namespace."""
        from istio_iptables.kernel.live_rules import read_live

        cfg = self.settings.capture
        cidrs = [*cfg.outbound_exclude_cidrs.v4, *cfg.outbound_cidrs.v4]
        if 6 in self.families:
            cidrs += [*cfg.outbound_exclude_cidrs.v6, *cfg.outbound_cidrs.v6]
        for cidr in [*cidrs, *self.extra_routes]:
            route = matrix.anyip_route(cidr)
            if route is not None and matrix.representative(cidr, list(matrix.LAB_NETWORKS)):
                self.netlab.run("peer", "ip", "route", "replace", "local", route, "dev", "lo")
        _listen_all(self.netlab, listen_ports, self.settings, self.families)
        done = subprocess.run(apply_args(self.capture_argv, self.netlab.pod_ns_path, self.resolv),
                              capture_output=True, text=True, timeout=120, env=self.env, check=False)
        if done.returncode != 0:
            raise VerifyError(f"applying the capture failed (exit {done.returncode}): "
                              f"{' '.join(done.stderr.strip().splitlines()[-1:])}")
        self.applied = done.stderr
        self.live = run_in_netns(self.netlab.pod_ns, read_live, timeout=60)

    def rows(self, probes: Sequence[matrix.Probe]) -> list[Row]:
        """Send the probes for real and put explain's two predictions beside each."""
        observed = _send(self.netlab, probes)
        rows = []
        for probe, (port, local, error) in zip(probes, observed, strict=True):
            plan, _ = answer_for(self.settings, request_for(probe, self.lab, live=False))
            live_answer, _ = answer_for(self.settings, request_for(probe, self.lab, live=True), self.live)
            rows.append(Row(probe, plan, live_answer, port, local, error))
        return rows


def run_verify(settings: Settings, capture_argv: Sequence[str], env: Mapping[str, str],
               progress: Callable[[str], None] = lambda _line: None) -> Result:
    """Build the lab, apply `capture_argv` with `env` through the real command, send
    the matrix and compare.  Raises VerifyError on a failed apply (with the tool's words)."""
    with Scratch(settings, capture_argv, env) as scratch:
        probes = matrix.build_probes(scratch.settings.capture, scratch.lab, scratch.nameservers)
        progress(f"scratch pod {scratch.netlab.pod_ns} (IPv{' and IPv'.join(map(str, scratch.families))}), "
                 f"peer {scratch.netlab.peer_ns}; applying the capture")
        scratch.apply([p.dport for p in probes])
        progress(f"sending {len(probes)} connections")
        return Result(scratch.rows(probes), scratch.applied, scratch.families)


class VerifyError(RuntimeError):
    """The scratch lab could not be built or the capture not applied."""
