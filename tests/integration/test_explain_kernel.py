"""explain against the kernel: hypothesis draws capture flag sets and, for each, many
connections; the capture is applied once per flag set in a scratch pod, every
connection is sent for real, and explain's landing port (from the plan and from the
installed rules, --live) must be where the kernel delivered it.  The flags' own
reading (lab/matrix.py) must agree too.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from istio_iptables.cli.flags import parse_args
from istio_iptables.cli.verify import capture_argv
from istio_iptables.lab import matrix
from istio_iptables.lab.verify_run import Row, Scratch

from .conftest import require_netns

pytestmark = pytest.mark.netns

CIDRS_V4 = ("198.51.100.0/25", "198.51.100.128/25", "198.51.100.10/32", "203.0.113.0/24", "10.0.0.0/8",
            "10.96.0.0/12")
CIDRS_V6 = ("2001:db8:2::/64", "2001:db8:2::/124", "2001:db8:3::/48")
# Destinations the peer answers for (routes added below), the pod itself, loopback.
OUTBOUND_V4 = ("198.51.100.10", "198.51.100.200", "203.0.113.7", "10.96.0.10", "10.1.0.1", "198.51.100.53",
               "192.0.2.2", "127.0.0.1")
OUTBOUND_V6 = ("2001:db8:2::10", "2001:db8:2::a00", "2001:db8:3::7", "2001:db8:2::53", "2001:db8:1::2", "::1")
EXTRA_ROUTES = ("203.0.113.0/24", "10.0.0.0/8", "2001:db8:3::/48")
OUTBOUND_PORTS = (80, 443, 3306, 25, 53, 5353)
INBOUND_PORTS = (8080, 9090, 15020, 15008, 15090)
EXAMPLES = int(os.environ.get("EXPLAIN_KERNEL_EXAMPLES", "20"))
CONNECTIONS_PER_FLAG_SET = 30


def _ports(pool: tuple[int, ...]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pool), unique=True, max_size=2).map(lambda ps: ",".join(map(str, ps)))


def _cidrs(min_size: int = 0) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(CIDRS_V4 + CIDRS_V6), unique=True, min_size=min_size, max_size=3).map(",".join)


FLAG_SETS = st.fixed_dictionaries({
    "mode": st.sampled_from(["REDIRECT", "TPROXY"]),
    "redirect_dns": st.booleans(),
    "capture_all_dns": st.booleans(),
    "dual_stack": st.booleans(),
    "outbound_cidrs": st.one_of(st.just("*"), _cidrs(min_size=1)),
    "outbound_exclude_cidrs": _cidrs(),
    "inbound_ports": st.one_of(st.just("*"), _ports((8080, 9090, 15020))),
    "inbound_exclude_ports": _ports((15020, 15090)),
    "outbound_ports": _ports((3306, 443)),
    "outbound_exclude_ports": _ports((25, 443)),
    "exclude_interfaces": st.sampled_from(["", "", "", "eth0", "eth9"]),
    "native_nftables": st.booleans(),
    "force_iptables_binary": st.sampled_from(["", "", "legacy"]),  # --live reads iptables-legacy-save then
})  # fmt: skip


def _argv(flags: dict[str, object]) -> list[str]:
    return capture_argv({k: (v if v is not False else None) for k, v in flags.items()})


def _connection(scratch: Scratch) -> st.SearchStrategy[matrix.Probe]:
    """One connection: inbound from the peer to a pod port, or outbound from the app
    or the proxy (sometimes from the 127.0.0.6 / ::6 passthrough source)."""
    family = st.sampled_from(scratch.families)
    inbound = st.builds(lambda f, port: _inbound(scratch, f, port), family, st.sampled_from(INBOUND_PORTS))
    outbound = family.flatmap(lambda f: st.builds(
        lambda proto, uid, dst, port, passthrough: _outbound(scratch, f, proto, uid, dst, port, passthrough),
        st.sampled_from(["tcp", "tcp", "udp"]), st.sampled_from([1000, 1337]),
        st.sampled_from(OUTBOUND_V4 if f == 4 else OUTBOUND_V6), st.sampled_from((*OUTBOUND_PORTS, 8080)),
        st.booleans()))
    return st.one_of(inbound, outbound, outbound)


def _inbound(scratch: Scratch, family: int, port: int) -> matrix.Probe:
    want, local, why = matrix.expect_inbound(scratch.settings.capture, scratch.lab, port)
    return matrix.Probe(f"in v{family} :{port}", family, "tcp", True, scratch.lab.pod[family], port, None, None,
                        want, local, why)


def _outbound(scratch: Scratch, family: int, proto: str, uid: int, dst: str, port: int,
              passthrough: bool) -> matrix.Probe:
    src = None
    if passthrough and uid == 1337 and dst == scratch.lab.pod[family] and proto == "tcp":
        src = "127.0.0.6" if family == 4 else "::6"
    want, local, why = matrix.expect_outbound(scratch.settings.capture, scratch.lab, family, proto, dst, port, uid,
                                              scratch.nameservers, src)
    return matrix.Probe(f"uid {uid} {proto} -> {dst}:{port}{' from ' + src if src else ''}", family, proto, False,
                        dst, port, uid, src, want, local, why)


def _describe(row: Row) -> str:
    return (f"{row.probe.label}: kernel {row.kernel_landing} ({row.kernel_error}), plan {row.plan_landing} "
            f"[{row.plan.reason}], live {row.live_landing} [{row.live.reason}], flags "
            f"{(row.probe.expect_port, row.probe.expect_local)} [{row.probe.why}]")


TOTAL = {"connections": 0}


# No shrinking: each example is a namespace pair and ~30 real connections; the
# failure message lists every disagreeing connection with both explanations.
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(flags=FLAG_SETS, data=st.data())
def test_explain_predicts_where_the_kernel_lands_each_connection(flags: dict[str, object], data: st.DataObject) -> None:
    require_netns()
    argv = _argv(flags)
    settings_ = parse_args(argv, {})
    with Scratch(settings_, argv, {"PATH": os.environ["PATH"]}, extra_routes=EXTRA_ROUTES) as scratch:
        probes = data.draw(st.lists(_connection(scratch), min_size=CONNECTIONS_PER_FLAG_SET,
                                    max_size=CONNECTIONS_PER_FLAG_SET, unique=True), label="connections")
        scratch.apply(sorted({*OUTBOUND_PORTS, *INBOUND_PORTS}))
        rows = scratch.rows(probes)
    TOTAL["connections"] += len(rows)
    wrong = [_describe(r) for r in rows if r.plan_landing != r.kernel_landing or r.live_landing != r.kernel_landing]
    assert not wrong, f"flags {' '.join(argv)}:\n" + "\n".join(wrong)
    assert not [r for r in rows if r.plan.uncertain or r.live.uncertain]
    intent = [_describe(r) for r in rows if (r.probe.expect_port, r.probe.expect_local) != r.kernel_landing]
    assert not intent, f"flags {' '.join(argv)}:\n" + "\n".join(intent)


def test_enough_connections_were_checked() -> None:
    """The property test above must have sent several hundred real connections."""
    if TOTAL["connections"] == 0:
        pytest.skip("run together with the property test")
    print(f"explain vs kernel: {TOTAL['connections']} connections over {EXAMPLES} flag sets")
    assert TOTAL["connections"] >= EXAMPLES * CONNECTIONS_PER_FLAG_SET
