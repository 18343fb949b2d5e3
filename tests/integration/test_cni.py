"""The CNI plugin driven exactly as a runtime drives it: CNI_* environment, the
network configuration on stdin, a fresh process per call, in the lab's pod namespace,
with real connections proving where traffic lands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from istio_iptables.lab.netlab import EXTERNAL_IPV4, PEER_IPV4, POD_IPV4, NetLab

from .conftest import APP_UID, STANDARD, saved

pytestmark = pytest.mark.netns
VERSIONS = ("0.4.0", "1.0.0")
CAPTURE = [*STANDARD, "--ipv6", "off"]
FOREIGN_RULE = ("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN")


class Call:
    """One plugin run: exit status, stdout parsed as JSON (None when empty), stderr."""

    def __init__(self, done: subprocess.CompletedProcess[bytes]) -> None:
        self.returncode = done.returncode
        self.stdout = done.stdout.decode()
        self.stderr = done.stderr.decode()
        self.json: Any = json.loads(self.stdout) if self.stdout.strip() else None

    def __repr__(self) -> str:
        return f"<Call rc={self.returncode} stdout={self.stdout!r} stderr={self.stderr[-2000:]!r}>"


def prev_result(version: str, netns: str) -> dict[str, Any]:
    """What the bridge plugin before us would have returned, in `version`'s shape."""
    ip: dict[str, Any] = {"address": f"{POD_IPV4}/24", "gateway": PEER_IPV4, "interface": 1}
    if version < "1.0.0":
        ip = {"version": "4", **ip}
    return {"cniVersion": version,
            "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
                           {"name": "eth0", "mac": "aa:bb:cc:00:00:02", "sandbox": netns}],
            "ips": [ip], "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}


def config(version: str, netns: str, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": version, "name": "lab", "type": "istio-iptables-cni",
                            "capture": CAPTURE, "prevResult": prev_result(version, netns)}
    conf.update(extra)
    return {k: v for k, v in conf.items() if v is not None}


def cni(command: str, netns: str | None, stdin: dict[str, Any] | bytes, *, args: str = "",
        env: dict[str, str] | None = None) -> Call:
    """Run the plugin as libcni does: a bare environment plus the CNI_* variables."""
    environ = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": "lab-container",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", **(env or {})}
    if netns is not None:
        environ["CNI_NETNS"] = netns
    if args:
        environ["CNI_ARGS"] = args
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    done = subprocess.run([sys.executable, "-m", "istio_iptables.cni"], input=data, capture_output=True,
                          env=environ, timeout=120, check=False)
    return Call(done)


def both_families(lab: NetLab) -> tuple[str, str]:
    return saved(lab), saved(lab, ipv6=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_add_captures_real_connections_and_prints_prev_result(lab: NetLab, version: str) -> None:
    outbound, inbound = lab.listen("pod", 15001), lab.listen("pod", 15006)
    remote = lab.listen("peer", 80)

    add = cni("ADD", lab.pod_ns_path, config(version, lab.pod_ns_path))

    assert add.returncode == 0, add
    assert add.json == prev_result(version, lab.pod_ns_path)
    app = lab.connect("pod", EXTERNAL_IPV4, 80, uid=APP_UID, gid=APP_UID)
    assert app.landed_port == 15001, app
    assert outbound.wait_for_hit().original_dst == (EXTERNAL_IPV4, 80)
    proxy = lab.connect("pod", EXTERNAL_IPV4, 80, uid=1337, gid=1337)
    assert proxy.landed_port == 80, proxy
    assert remote.wait_for_hit() is not None
    peer = lab.connect("peer", POD_IPV4, 8080)
    assert peer.landed_port == 15006, peer
    assert inbound.wait_for_hit().original_dst == (POD_IPV4, 8080)


def test_add_converts_prev_result_to_the_config_version(lab: NetLab) -> None:
    conf = config("0.4.0", lab.pod_ns_path, prevResult=prev_result("1.0.0", lab.pod_ns_path))
    conf["prevResult"]["interfaces"][1]["mtu"] = 1500  # a 1.1.0 field 0.4.0 does not have

    add = cni("ADD", lab.pod_ns_path, conf)

    assert add.returncode == 0, add
    assert add.json["cniVersion"] == "0.4.0"
    assert add.json["ips"] == [{"version": "4", "address": f"{POD_IPV4}/24", "gateway": PEER_IPV4, "interface": 1}]
    assert add.json["interfaces"][1] == {"name": "eth0", "mac": "aa:bb:cc:00:00:02", "sandbox": lab.pod_ns_path}


def test_add_without_prev_result_prints_an_empty_result(lab: NetLab) -> None:
    add = cni("ADD", lab.pod_ns_path, config("1.0.0", lab.pod_ns_path, prevResult=None))
    assert add.returncode == 0, add
    assert add.json == {"cniVersion": "1.0.0"}


@pytest.mark.parametrize("version", VERSIONS)
def test_retried_add_is_a_noop(lab: NetLab, version: str) -> None:
    conf = config(version, lab.pod_ns_path)
    assert cni("ADD", lab.pod_ns_path, conf).returncode == 0
    after_first = both_families(lab)

    again = cni("ADD", lab.pod_ns_path, conf)

    assert again.returncode == 0, again
    assert again.json == prev_result(version, lab.pod_ns_path)
    assert "in-sync" in again.stderr
    assert both_families(lab) == after_first


TAMPERING = {
    "a rule added": ("-t", "nat", "-I", "ISTIO_OUTPUT", "1", "-p", "tcp", "--dport", "7", "-j", "RETURN"),
    "a rule changed": ("-t", "nat", "-R", "ISTIO_REDIRECT", "1", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15002"),
    "a jump removed": ("-t", "nat", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT"),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("tamper", sorted(TAMPERING))
def test_check_passes_in_sync_and_fails_after_tampering(lab: NetLab, version: str, tamper: str) -> None:
    conf = config(version, lab.pod_ns_path)
    assert cni("ADD", lab.pod_ns_path, conf).returncode == 0
    check = cni("CHECK", lab.pod_ns_path, conf)
    assert (check.returncode, check.stdout) == (0, ""), check

    lab.run("pod", "iptables-nft", *TAMPERING[tamper])
    tampered = both_families(lab)
    drifted = cni("CHECK", lab.pod_ns_path, conf)

    assert drifted.returncode == 1, drifted
    assert drifted.json["code"] == 101
    assert drifted.json["cniVersion"] == version
    assert drifted.json["details"].startswith("IPv4: ")
    assert both_families(lab) == tampered  # CHECK writes nothing


def test_check_fails_when_the_rules_are_gone(lab: NetLab) -> None:
    conf = config("1.0.0", lab.pod_ns_path)
    assert cni("ADD", lab.pod_ns_path, conf).returncode == 0
    lab.run("pod", "iptables-nft", "-t", "nat", "-F")
    lab.run("pod", "iptables-nft", "-t", "nat", "-X")

    check = cni("CHECK", lab.pod_ns_path, conf)

    assert check.returncode == 1 and check.json["code"] == 101, check
    assert "missing" in check.json["details"]


def test_check_fails_when_tproxy_policy_routing_is_gone(lab: NetLab) -> None:
    """TPROXY's rules are useless without `ip rule fwmark 1337 lookup 133`: CHECK says so."""
    conf = annotated("1.0.0", lab.pod_ns_path, {"sidecar.istio.io/interceptionMode": "TPROXY"})
    assert cni("ADD", lab.pod_ns_path, conf).returncode == 0
    assert cni("CHECK", lab.pod_ns_path, conf).returncode == 0
    lab.run("pod", "ip", "-4", "rule", "del", "fwmark", "1337", "lookup", "133")

    check = cni("CHECK", lab.pod_ns_path, conf)

    assert check.returncode == 1 and check.json["code"] == 101, check
    assert "missing: ip -4 rule add fwmark 1337 lookup 133" in check.json["details"]


NFT_TAMPERING = {
    "a rule added": (("insert", "rule", "inet", "istio-proxy-nat", "istio-output", "tcp", "dport", "7", "return"),
                     "unexpected 'tcp dport 7 return'"),
    "a chain's rules removed": (("flush", "chain", "inet", "istio-proxy-nat", "istio-redirect"),
                                "missing 'meta l4proto tcp counter redirect to :15001'"),
    "a chain of ours added": (("add", "chain", "inet", "istio-proxy-nat", "istio-extra"),
                              "unexpected 'chain istio-extra {'"),
    "a table not in the plan": (("add", "table", "inet", "istio-proxy-mangle"),
                                "nftables table inet istio-proxy-mangle is not in the plan"),
}


@pytest.mark.parametrize("tamper", sorted(NFT_TAMPERING))
def test_native_check_compares_every_rule_with_the_plan_as_the_kernel_lists_it(lab: NetLab, tamper: str) -> None:
    """Native CHECK applies the plan in a scratch namespace and compares the listings
    line by line: traffic (counters) is no drift; an added, removed or foreign line is."""
    conf = config("1.0.0", lab.pod_ns_path, capture=[*CAPTURE, "--native-nftables"])
    outbound = lab.listen("pod", 15001)
    assert cni("ADD", lab.pod_ns_path, conf).returncode == 0
    assert lab.connect("pod", EXTERNAL_IPV4, 80, uid=APP_UID, gid=APP_UID).landed_port == 15001
    assert outbound.wait_for_hit() is not None
    assert "packets 0 " not in lab.run("pod", "nft", "list", "chain", "inet", "istio-proxy-nat", "output").stdout
    check = cni("CHECK", lab.pod_ns_path, conf)
    assert (check.returncode, check.stdout) == (0, ""), check

    command, expected = NFT_TAMPERING[tamper]
    lab.run("pod", "nft", *command)
    tampered = lab.run("pod", "nft", "list", "ruleset").stdout
    drifted = cni("CHECK", lab.pod_ns_path, conf)

    assert drifted.returncode == 1 and drifted.json["code"] == 101, drifted
    assert expected in drifted.json["details"], drifted.json
    assert lab.run("pod", "nft", "list", "ruleset").stdout == tampered  # CHECK writes nothing


def test_native_nftables_mode_add_check_del(lab: NetLab) -> None:
    conf = config("1.0.0", lab.pod_ns_path, capture=[*CAPTURE, "--native-nftables"])
    outbound = lab.listen("pod", 15001)

    assert cni("ADD", lab.pod_ns_path, conf).returncode == 0
    assert lab.connect("pod", EXTERNAL_IPV4, 80, uid=APP_UID, gid=APP_UID).landed_port == 15001
    assert outbound.wait_for_hit().original_dst == (EXTERNAL_IPV4, 80)
    assert cni("CHECK", lab.pod_ns_path, conf).returncode == 0
    lab.run("pod", "nft", "delete", "table", "inet", "istio-proxy-nat")
    drifted = cni("CHECK", lab.pod_ns_path, conf)
    assert drifted.returncode == 1 and "istio-proxy-nat is missing" in drifted.json["details"], drifted
    assert cni("DEL", lab.pod_ns_path, conf).returncode == 0
    assert "istio-proxy" not in lab.run("pod", "nft", "list", "ruleset").stdout


@pytest.mark.parametrize("version", VERSIONS)
def test_del_restores_the_namespace_and_del_twice_succeeds(lab: NetLab, version: str) -> None:
    lab.run("pod", "iptables-nft", *FOREIGN_RULE)
    before = both_families(lab)
    conf = config(version, lab.pod_ns_path)
    assert cni("ADD", lab.pod_ns_path, conf).returncode == 0
    assert both_families(lab) != before

    first = cni("DEL", lab.pod_ns_path, conf)
    second = cni("DEL", lab.pod_ns_path, conf)

    assert (first.returncode, first.stdout) == (0, ""), first
    assert (second.returncode, second.stdout) == (0, ""), second
    assert both_families(lab) == before


def test_del_with_a_config_it_cannot_read_still_removes_the_capture(lab: NetLab) -> None:
    lab.run("pod", "iptables-nft", *FOREIGN_RULE)
    before = both_families(lab)
    assert cni("ADD", lab.pod_ns_path, config("1.0.0", lab.pod_ns_path)).returncode == 0

    done = cni("DEL", lab.pod_ns_path, annotated("1.0.0", lab.pod_ns_path, {
        "traffic.sidecar.istio.io/excludeOutboundPorts": "eighty"}))

    assert (done.returncode, done.stdout) == (0, ""), done
    assert "DEL with the default flags" in done.stderr
    assert both_families(lab) == before


def test_del_after_the_namespace_is_gone_succeeds(lab: NetLab) -> None:
    conf = config("1.0.0", "/var/run/netns/iit-cni-gone")
    gone = cni("DEL", "/var/run/netns/iit-cni-gone", conf)
    no_netns = cni("DEL", None, conf)
    assert (gone.returncode, gone.stdout) == (0, ""), gone
    assert (no_netns.returncode, no_netns.stdout) == (0, ""), no_netns


def test_del_with_a_bind_mount_whose_namespace_is_gone(lab: NetLab, tmp_path: Path) -> None:
    stale = tmp_path / "netns"  # what is left of /run/netns/X after umount: a plain file
    stale.write_text("")
    done = cni("DEL", str(stale), config("1.0.0", str(stale)))
    assert (done.returncode, done.stdout) == (0, ""), done


def test_del_of_a_pod_that_was_passed_through_touches_nothing(lab: NetLab) -> None:
    conf = config("1.0.0", lab.pod_ns_path, excludeNamespaces=["kube-system"])
    lab.run("pod", "iptables-nft", *FOREIGN_RULE)
    lab.run("pod", "iptables-nft", "-t", "nat", "-N", "ISTIO_OUTPUT")  # not ours: this pod was never captured
    before = both_families(lab)

    skipped = cni("DEL", lab.pod_ns_path, conf, args="K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=x")

    assert (skipped.returncode, skipped.stdout) == (0, ""), skipped
    assert both_families(lab) == before


def annotated(version: str, netns: str, annotations: dict[str, str]) -> dict[str, Any]:
    return config(version, netns, runtimeConfig={"io.kubernetes.cri.pod-annotations": annotations})


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("annotation", [("sidecar.istio.io/inject", "false"),
                                        ("sidecar.istio.io/interceptionMode", "NONE")])
def test_no_capture_annotations_pass_through_with_nothing_written(lab: NetLab, version: str,
                                                                  annotation: tuple[str, str]) -> None:
    before = both_families(lab)
    conf = annotated(version, lab.pod_ns_path, dict([annotation]))

    add = cni("ADD", lab.pod_ns_path, conf)

    assert add.returncode == 0, add
    assert add.json == prev_result(version, lab.pod_ns_path)
    assert both_families(lab) == before
    assert cni("CHECK", lab.pod_ns_path, conf).returncode == 0
    assert cni("DEL", lab.pod_ns_path, conf).returncode == 0
    assert both_families(lab) == before


@pytest.mark.parametrize("version", VERSIONS)
def test_traffic_annotations_override_the_conflist_flags(lab: NetLab, version: str) -> None:
    outbound, inbound = lab.listen("pod", 15001), lab.listen("pod", 15006)
    remote = lab.listen("peer", 80)
    app = lab.listen("pod", 8080)
    conf = annotated(version, lab.pod_ns_path, {"traffic.sidecar.istio.io/excludeOutboundPorts": "80",
                                                "traffic.sidecar.istio.io/excludeInboundPorts": "8080"})

    add = cni("ADD", lab.pod_ns_path, conf)

    assert add.returncode == 0, add
    assert lab.connect("pod", EXTERNAL_IPV4, 80, uid=APP_UID, gid=APP_UID).landed_port == 80
    assert remote.wait_for_hit() is not None
    assert lab.connect("pod", EXTERNAL_IPV4, 81, uid=APP_UID, gid=APP_UID).landed_port == 15001
    assert outbound.wait_for_hit().original_dst == (EXTERNAL_IPV4, 81)
    assert lab.connect("peer", POD_IPV4, 8080).landed_port == 8080
    assert app.wait_for_hit() is not None
    assert lab.connect("peer", POD_IPV4, 9090).landed_port == 15006
    assert inbound.wait_for_hit().original_dst == (POD_IPV4, 9090)
    metrics = lab.listen("pod", 15090)  # the agent's ports stay excluded, as in Istio's CNI plugin
    assert lab.connect("peer", POD_IPV4, 15090).landed_port == 15090
    assert metrics.wait_for_hit() is not None
    assert cni("CHECK", lab.pod_ns_path, conf).returncode == 0
    # Without the annotations the same namespace no longer matches the plan.
    assert cni("CHECK", lab.pod_ns_path, config(version, lab.pod_ns_path)).json["code"] == 101


def test_interception_mode_annotation_selects_tproxy_and_del_removes_its_routes(lab: NetLab) -> None:
    conf = annotated("1.0.0", lab.pod_ns_path, {"sidecar.istio.io/interceptionMode": "TPROXY"})

    add = cni("ADD", lab.pod_ns_path, conf)

    assert add.returncode == 0, add
    assert "-j TPROXY" in saved(lab)
    assert "lookup 133" in lab.run("pod", "ip", "rule").stdout
    assert cni("CHECK", lab.pod_ns_path, conf).returncode == 0
    assert cni("DEL", lab.pod_ns_path, conf).returncode == 0
    assert "ISTIO" not in saved(lab)
    assert "lookup 133" not in lab.run("pod", "ip", "rule").stdout


def test_excluded_namespace_passes_through(lab: NetLab) -> None:
    before = both_families(lab)
    conf = config("1.0.0", lab.pod_ns_path, excludeNamespaces=["kube-system"])
    add = cni("ADD", lab.pod_ns_path, conf, args="K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns")
    assert add.returncode == 0, add
    assert both_families(lab) == before
    other = cni("ADD", lab.pod_ns_path, conf, args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=app")
    assert other.returncode == 0, other
    assert both_families(lab) != before


def test_capture_env_is_the_only_environment_the_flags_see(lab: NetLab) -> None:
    conf = config("1.0.0", lab.pod_ns_path, capture=[], captureEnv={"ISTIO_SERVICE_CIDR": "*",
                                                                   "ENVOY_PORT": "15001"})
    add = cni("ADD", lab.pod_ns_path, conf, env={"ISTIO_SERVICE_CIDR": "10.0.0.0/8", "ENVOY_PORT": "1"})
    assert add.returncode == 0, add
    assert "-A ISTIO_OUTPUT -j ISTIO_REDIRECT" in saved(lab)  # '*': from captureEnv, not the node


def test_log_file_takes_the_log_and_stdout_stays_the_result(lab: NetLab, tmp_path: Path) -> None:
    log = tmp_path / "cni.log"
    add = cni("ADD", lab.pod_ns_path, config("1.0.0", lab.pod_ns_path, logFile=str(log)))
    assert add.returncode == 0, add
    assert add.json == prev_result("1.0.0", lab.pod_ns_path)
    assert "CNI ADD container=lab-container" in log.read_text()
    assert "iptables-nft-save" in log.read_text()
    assert "INFO" not in add.stderr


# --- errors: the spec's error object on stdout, exit 1, the namespace as before ------------------

ERRORS: dict[str, tuple[dict[str, Any], int, str]] = {
    # name: (changes to the ADD call, code, words the error must contain)
    "bad flag value": ({"capture": ["-p", "notaport"]}, 7, "'notaport' for -p/--envoy-port"),
    "unknown flag": ({"capture": ["--no-such-flag"]}, 7, "--no-such-flag"),
    "capture not a list": ({"capture": "-p 15001"}, 7, "expected a JSON list"),
    "runtime-owned flag": ({"capture": [*CAPTURE, "--network-namespace", "/proc/1/ns/net"]}, 7,
                           "--network-namespace"),
    "unsupported version": ({"cniVersion": "0.2.0"}, 1, "0.2.0"),
    "future version": ({"cniVersion": "2.0.0"}, 1, "2.0.0"),
    "bad annotation": ({"runtimeConfig": {"io.kubernetes.cri.pod-annotations": {
        "traffic.sidecar.istio.io/excludeOutboundPorts": "eighty"}}}, 7,
        "traffic.sidecar.istio.io/excludeOutboundPorts"),
    "annotations not strings": ({"runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"a": 1}}}, 7,
                                "io.kubernetes.cri.pod-annotations"),
    "missing netns": ({"netns": "/var/run/netns/iit-cni-no-such"}, 3, "/var/run/netns/iit-cni-no-such"),
    "netns not a namespace": ({"netns": "/proc/version"}, 3, "/proc/version"),
    "no CNI_NETNS": ({"netns": None}, 4, "CNI_NETNS"),
    "stdin not JSON": ({"stdin": b"{not json"}, 6, "not JSON"),
    "stdin not an object": ({"stdin": b"[1, 2]"}, 6, "not a JSON object"),
    "bad CNI_ARGS": ({"args": "K8S_POD_NAMESPACE"}, 4, "CNI_ARGS"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_are_reported_as_the_spec_says_and_touch_nothing(lab: NetLab, case: str) -> None:
    change, code, words = ERRORS[case]
    change = dict(change)
    lab.run("pod", "iptables-nft", *FOREIGN_RULE)
    before = both_families(lab)
    netns = change.pop("netns", lab.pod_ns_path)
    stdin = change.pop("stdin", None)
    args = change.pop("args", "")
    conf = config("1.0.0", lab.pod_ns_path, **change)

    done = cni("ADD", netns, stdin if stdin is not None else conf, args=args)

    assert done.returncode == 1, done
    assert set(done.json) == {"cniVersion", "code", "msg", "details"}
    assert done.json["code"] == code, done
    assert words in done.json["msg"] + " " + done.json["details"], done
    assert "Traceback" not in done.stderr
    assert both_families(lab) == before


def test_kernel_refusal_is_rolled_back_and_reported(lab: NetLab) -> None:
    lab.run("pod", "iptables-nft", *FOREIGN_RULE)
    lab.run("pod", "ip6tables-nft", *FOREIGN_RULE)
    before = both_families(lab)
    lab.sysctl("pod", "net.ipv6.conf.lo.disable_ipv6", "1")  # the kernel refuses ::6 on lo

    done = cni("ADD", lab.pod_ns_path, config("1.0.0", lab.pod_ns_path, capture=[*STANDARD, "--dual-stack"]))

    assert done.returncode == 1, done
    assert done.json["code"] == 100
    assert "restored to its state before this run" in done.json["details"]
    assert both_families(lab) == before


@pytest.mark.parametrize(("command", "version", "change", "code"), [
    ("CHECK", "0.3.1", {}, 1),
    ("CHECK", "1.0.0", {"prevResult": None}, 7),
    ("STATUS", "1.0.0", {}, 1),
    ("GC", "0.4.0", {}, 1),
    ("NOPE", "1.0.0", {}, 4),
])
def test_commands_the_version_does_not_have_are_refused(lab: NetLab, command: str, version: str,
                                                        change: dict[str, Any], code: int) -> None:
    done = cni(command, lab.pod_ns_path, config(version, lab.pod_ns_path, **change))
    assert done.returncode == 1, done
    assert done.json["code"] == code, done


def test_status_gc_and_version_of_1_1_0(lab: NetLab) -> None:
    conf = config("1.1.0", lab.pod_ns_path)
    add = cni("ADD", lab.pod_ns_path, conf)
    assert add.returncode == 0 and add.json == prev_result("1.1.0", lab.pod_ns_path), add
    assert cni("CHECK", lab.pod_ns_path, conf).returncode == 0

    status = cni("STATUS", None, {"cniVersion": "1.1.0", "name": "lab", "type": "istio-iptables-cni",
                                  "capture": CAPTURE})
    gc = cni("GC", None, {"cniVersion": "1.1.0", "name": "lab", "type": "istio-iptables-cni", "capture": CAPTURE,
                          "cni.dev/valid-attachments": [{"containerID": "x", "ifname": "eth0"}]})
    version = cni("VERSION", None, {"cniVersion": "1.1.0"})
    unavailable = cni("STATUS", None, {"cniVersion": "1.1.0", "name": "lab", "capture": ["-p", "x"]})

    assert (status.returncode, status.stdout) == (0, ""), status
    assert (gc.returncode, gc.stdout) == (0, ""), gc
    assert version.json == {"cniVersion": "1.1.0",
                            "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    assert unavailable.returncode == 1 and unavailable.json["code"] == 50, unavailable
    assert "-p/--envoy-port" in unavailable.json["details"]
