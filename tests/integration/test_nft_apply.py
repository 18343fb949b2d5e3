"""Istio's native nftables mode on a real kernel: apply, re-apply, cleanup, refusal.

The ruleset is rendered here (pure) and applied by `istio_iptables.kernel.nft` running
inside the lab's pod namespace (`ip netns exec`), then real connections prove where
traffic lands, as tests/integration/test_traffic.py does for the iptables mode.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterator

import pytest

from istio_iptables.cli.flags import build_settings
from istio_iptables.lab.netlab import EXTERNAL_IPV4, PEER_IPV4, POD_IPV4, NetLab
from istio_iptables.model.config import CaptureConfig
from istio_iptables.model.hostfacts import HostFacts
from istio_iptables.model.nft_plan import render_nft
from tests.test_nft_golden import CASES, NFT_CASES, capture_config, given_from_args, host_facts

from ..conftest import REPO
from .conftest import APP_UID, STANDARD, require_netns

pytestmark = pytest.mark.netns
# Runs one kernel.nft function in the pod namespace; reports the result or the NftError as JSON.
_RUNNER = """
import json, sys
from istio_iptables.kernel import nft
request = json.loads(sys.stdin.read())
function = getattr(nft, request["function"])
try:
    result = function(*request["args"])
except nft.NftError as err:
    print(json.dumps({"error": str(err), "line_number": err.line_number, "line": err.line, "reason": err.reason}))
else:
    print(json.dumps({"result": result}))
"""
FOREIGN_TABLE = (
    "add table inet foreign\n"
    "add chain inet foreign keep\n"
    "add rule inet foreign keep tcp dport 9999 accept\n"
)


@pytest.fixture
def nft_lab() -> Iterator[NetLab]:
    require_netns()
    if shutil.which("nft") is None:
        pytest.fail("the nft binary is missing (apt-get install -y nftables)", pytrace=False)
    with NetLab() as netlab:
        yield netlab


def standard_config() -> CaptureConfig:
    return build_settings(given_from_args(STANDARD), {}).capture


def call(lab: NetLab, function: str, *args: str) -> dict[str, object]:
    """Call `kernel.nft.<function>(*args)` inside the pod namespace."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    request = json.dumps({"function": function, "args": list(args)})
    done = lab.run("pod", sys.executable, "-c", _RUNNER, input=request, env=env)
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(reply, dict)
    return reply


def apply(lab: NetLab, text: str) -> None:
    reply = call(lab, "apply_nft", text)
    assert "error" not in reply, reply


def ruleset(lab: NetLab) -> str:
    """`nft list ruleset` of the pod with counter values zeroed, for before/after comparisons."""
    reply = call(lab, "nft_ruleset")
    assert isinstance(reply["result"], str)
    return re.sub(r"packets \d+ bytes \d+", "packets 0 bytes 0", reply["result"])


def tables(lab: NetLab) -> list[str]:
    return re.findall(r"^table (\S+ \S+)", ruleset(lab), re.MULTILINE)


def test_standard_profile_inbound_lands_on_15006_with_original_destination(nft_lab: NetLab) -> None:
    inbound = nft_lab.listen("pod", 15006)
    app = nft_lab.listen("pod", 8080)
    apply(nft_lab, render_nft(standard_config(), HostFacts(ipv6=False)))

    result = nft_lab.connect("peer", POD_IPV4, 8080)

    assert result.landed_port == 15006, result
    hit = inbound.wait_for_hit()
    assert hit.original_dst == (POD_IPV4, 8080)
    assert hit.peer_addr == PEER_IPV4
    assert app.hits == []


def test_standard_profile_excluded_inbound_port_reaches_the_app(nft_lab: NetLab) -> None:
    inbound = nft_lab.listen("pod", 15006)
    nft_lab.listen("pod", 15021)
    apply(nft_lab, render_nft(standard_config(), HostFacts(ipv6=False)))

    assert nft_lab.connect("peer", POD_IPV4, 15021).landed_port == 15021
    assert inbound.hits == []


def test_standard_profile_outbound_from_app_uid_lands_on_15001(nft_lab: NetLab) -> None:
    outbound = nft_lab.listen("pod", 15001)
    remote = nft_lab.listen("peer", 80)
    apply(nft_lab, render_nft(standard_config(), HostFacts(ipv6=False)))

    result = nft_lab.connect("pod", EXTERNAL_IPV4, 80, uid=APP_UID, gid=APP_UID)

    assert result.landed_port == 15001, result
    assert outbound.wait_for_hit().original_dst == (EXTERNAL_IPV4, 80)
    assert remote.hits == []


def test_standard_profile_proxy_uid_traffic_goes_out(nft_lab: NetLab) -> None:
    outbound = nft_lab.listen("pod", 15001)
    remote = nft_lab.listen("peer", 80)
    apply(nft_lab, render_nft(standard_config(), HostFacts(ipv6=False)))

    result = nft_lab.connect("pod", EXTERNAL_IPV4, 80, uid=1337, gid=1337)

    assert result.landed_port == 80, result
    assert remote.wait_for_hit().local_addr == EXTERNAL_IPV4
    assert outbound.hits == []


def test_reapplying_is_idempotent(nft_lab: NetLab) -> None:
    text = render_nft(standard_config(), HostFacts(ipv6=False))
    apply(nft_lab, text)
    first = ruleset(nft_lab)
    apply(nft_lab, text)

    assert ruleset(nft_lab) == first
    assert tables(nft_lab) == ["inet istio-proxy-nat"]


def test_reapplying_replaces_the_rules_of_an_earlier_run(nft_lab: NetLab) -> None:
    apply(nft_lab, render_nft(standard_config()._replace(outbound_exclude_ports=(5432,)), HostFacts()))
    assert "tcp dport 5432" in ruleset(nft_lab)
    apply(nft_lab, render_nft(standard_config(), HostFacts()))

    assert "5432" not in ruleset(nft_lab)


def test_cleanup_removes_our_tables_and_leaves_a_foreign_table(nft_lab: NetLab) -> None:
    apply(nft_lab, FOREIGN_TABLE)
    apply(nft_lab, render_nft(standard_config()._replace(mode="TPROXY", redirect_dns=True, capture_all_dns=True),
                              HostFacts()))
    foreign = ruleset(nft_lab).split("table inet istio-proxy-nat")[0]
    assert tables(nft_lab) == ["inet foreign", "inet istio-proxy-nat", "inet istio-proxy-mangle",
                               "inet istio-proxy-raw"]

    assert call(nft_lab, "cleanup_nft") == {"result": None}
    assert tables(nft_lab) == ["inet foreign"]
    assert ruleset(nft_lab) == foreign
    assert call(nft_lab, "cleanup_nft") == {"result": None}  # idempotent: nothing left to delete
    assert tables(nft_lab) == ["inet foreign"]


def test_a_refused_line_is_named_and_nothing_changes(nft_lab: NetLab) -> None:
    apply(nft_lab, render_nft(standard_config(), HostFacts()))
    before = ruleset(nft_lab)
    text = render_nft(standard_config()._replace(outbound_exclude_ports=(5432,)), HostFacts())
    lines = text.splitlines()
    lines.insert(5, "add rule inet istio-proxy-nat istio-output skgid no-such-group-here counter return")

    reply = call(nft_lab, "apply_nft", "\n".join(lines) + "\n")

    assert reply["line_number"] == 6, reply
    assert reply["line"] == lines[5]
    assert "Group does not exist" in str(reply["reason"])
    assert "line 6" in str(reply["error"])
    assert ruleset(nft_lab) == before


def test_every_golden_case_is_accepted_by_nft(nft_lab: NetLab) -> None:
    """Istio's own configurations, applied twice each; group names the host lacks are swapped for gids."""
    for name in NFT_CASES:
        case = CASES[name]
        text = render_nft(capture_config(case), host_facts(case))
        text = re.sub(r"skgid (!= )?(java|ftp)\b", r"skgid \g<1>4242", text)
        apply(nft_lab, text)
        apply(nft_lab, text)
        assert call(nft_lab, "cleanup_nft") == {"result": None}, name
