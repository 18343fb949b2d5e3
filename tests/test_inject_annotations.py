"""The shared annotation mapping (inject/annotations.py): Istio's meaning of each pod
annotation as istio-iptables flags, and refusals as Istio's injector refuses them
(pkg/kube/inject/validate.go), naming the annotation."""

from __future__ import annotations

import pytest

from istio_iptables.cli.flags import parse_args
from istio_iptables.inject import annotations as a
from istio_iptables.inject.annotations import annotation_flags, injection_disabled
from istio_iptables.model.config import ConfigError

BASE = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
        "-d", "15090,15021,15020"]


@pytest.mark.parametrize(("annotation", "value", "flags"), [
    (a.INTERCEPTION_MODE, "TPROXY", ["-m", "TPROXY"]),
    (a.INTERCEPTION_MODE, "REDIRECT", ["-m", "REDIRECT"]),
    (a.INCLUDE_OUTBOUND_IP_RANGES, "10.96.0.0/12,fd00::/8", ["-i", "10.96.0.0/12,fd00::/8"]),
    (a.INCLUDE_OUTBOUND_IP_RANGES, "*", ["-i", "*"]),
    (a.INCLUDE_OUTBOUND_IP_RANGES, "", ["-i", ""]),
    (a.EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8", ["-x", "10.0.0.0/8"]),
    (a.INCLUDE_INBOUND_PORTS, "8080,9090", ["-b", "8080,9090"]),
    (a.INCLUDE_INBOUND_PORTS, "*", ["-b", "*"]),
    (a.EXCLUDE_INBOUND_PORTS, "8443", ["-d", "8443"]),
    (a.INCLUDE_OUTBOUND_PORTS, "3306", ["-q", "3306"]),
    (a.EXCLUDE_OUTBOUND_PORTS, "5432,6379", ["-o", "5432,6379"]),
    (a.KUBEVIRT_INTERFACES, "net1", ["-k", "net1"]),
    (a.REROUTE_VIRTUAL_INTERFACES, "net1,net2", ["-k", "net1,net2"]),
    (a.EXCLUDE_INTERFACES, "eth1", ["-c", "eth1"]),
    (a.STATUS_PORT, "15999", []),  # merged into -d by the injector, no flag of its own
    (a.INTERCEPTION_MODE, "NONE", []),
])
def test_each_annotation_sets_its_flag(annotation: str, value: str, flags: list[str]) -> None:
    assert annotation_flags({annotation: value}) == flags


def test_flags_follow_the_template_order_and_parse_after_a_base_list() -> None:
    # injection-template.yaml writes -m -i -x -b -d -q -o -k -c in this order.
    annos = {a.EXCLUDE_INTERFACES: "eth1", a.EXCLUDE_OUTBOUND_PORTS: "22", a.INCLUDE_OUTBOUND_PORTS: "3306",
             a.EXCLUDE_INBOUND_PORTS: "8443", a.INCLUDE_INBOUND_PORTS: "8080",
             a.EXCLUDE_OUTBOUND_IP_RANGES: "10.0.0.0/8", a.INCLUDE_OUTBOUND_IP_RANGES: "*",
             a.INTERCEPTION_MODE: "TPROXY", a.KUBEVIRT_INTERFACES: "net1"}
    flags = annotation_flags(annos)
    assert flags[::2] == ["-m", "-i", "-x", "-b", "-d", "-q", "-o", "-k", "-c"]
    capture = parse_args(BASE + flags, {}).capture
    assert capture.mode == "TPROXY" and capture.inbound_ports == (8080,) and capture.outbound_ports == (3306,)
    assert capture.outbound_exclude_cidrs.v4 == ("10.0.0.0/8",) and capture.exclude_interfaces == ("eth1",)


def test_reroute_virtual_interfaces_wins_over_kubevirt_interfaces() -> None:
    # injection-template.yaml: `if isset reroute-virtual-interfaces ... else if isset kubevirtInterfaces`.
    assert annotation_flags({a.KUBEVIRT_INTERFACES: "old0", a.REROUTE_VIRTUAL_INTERFACES: "new0"}) == ["-k", "new0"]


@pytest.mark.parametrize(("annotation", "value"), [
    (a.EXCLUDE_OUTBOUND_IP_RANGES, "*"),                 # ValidateExcludeIPRanges: '*' is no CIDR
    (a.EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33"),
    (a.INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.1"),          # netip.ParsePrefix needs a prefix length
    (a.INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8,"),       # strings.Split keeps the empty item
    (a.INCLUDE_INBOUND_PORTS, "80,http"),
    (a.EXCLUDE_INBOUND_PORTS, "70000"),
    (a.EXCLUDE_INBOUND_PORTS, "*"),
    (a.EXCLUDE_OUTBOUND_PORTS, "1,,2"),
    (a.INCLUDE_OUTBOUND_PORTS, "-1"),
    (a.EXCLUDE_INTERFACES, "eth 0"),
    (a.EXCLUDE_INTERFACES, "a-very-long-interface-name"),
    (a.KUBEVIRT_INTERFACES, "net1,"),
    (a.REROUTE_VIRTUAL_INTERFACES, "net/1"),
    (a.STATUS_PORT, "http"),
    (a.INTERCEPTION_MODE, "tproxy"),                     # validateInterceptionMode is case-sensitive
    (a.INTERCEPTION_MODE, "SOMETHING"),
])
def test_bad_values_are_refused_naming_the_annotation(annotation: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        annotation_flags({annotation: value})
    assert err.value.flag == annotation and err.value.value == value


def test_the_shadowed_kubevirt_annotation_is_still_validated() -> None:
    with pytest.raises(ConfigError) as err:
        annotation_flags({a.KUBEVIRT_INTERFACES: "bad name", a.REROUTE_VIRTUAL_INTERFACES: "net1"})
    assert err.value.flag == a.KUBEVIRT_INTERFACES


def test_status_port_zero_means_none() -> None:
    assert annotation_flags({a.STATUS_PORT: "0"}) == []


@pytest.mark.parametrize("value", ["0", "f", "F", "false", "FALSE", "False"])
def test_inject_false_in_every_parsebool_spelling_disables_capture(value: str) -> None:
    # The Istio CNI plugin: strconv.ParseBool(label or annotation) (cni/pkg/plugin/plugin.go).
    assert injection_disabled({a.INJECT: value}) is not None


@pytest.mark.parametrize("value", ["False", "0", "no", "off"])
def test_the_injector_only_honours_lowercase_false(value: str) -> None:
    # pkg/kube/inject/inject.go injectRequired: "true", "false", else the default policy.
    assert injection_disabled({a.INJECT: value}, webhook=True) is None
    assert injection_disabled({a.INJECT: "false"}, webhook=True) is not None


def test_the_label_wins_over_the_annotation() -> None:
    assert injection_disabled({a.INJECT: "false"}, {a.INJECT: "true"}) is None
    reason = injection_disabled({a.INJECT: "true"}, {a.INJECT: "false"})
    assert reason is not None and "label" in reason


def test_interception_mode_none_disables_capture_and_others_do_not() -> None:
    assert "NONE" in (injection_disabled({a.INTERCEPTION_MODE: "NONE"}) or "")
    assert injection_disabled({a.INTERCEPTION_MODE: "TPROXY", a.INJECT: "true"}) is None
    assert injection_disabled({}) is None
