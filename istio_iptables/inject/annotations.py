"""The Istio pod annotations that shape capture, and the istio-iptables flags they set.

Shared by `istio-iptables pod` (the injector's view) and the CNI plugin (the Istio CNI
plugin's view).  Each annotation's value is validated with the same model/config.py
validator as the flag it becomes, so a value is refused here exactly when the init
container would refuse it, and the error names the annotation.  On top of that, the
list shapes Istio's injector refuses (pkg/kube/inject/validate.go splits with Go's
strings.Split, so an empty item as in "a,,b" or a trailing comma is an error) are
refused here too.  Pure: no YAML, no I/O.

What this module does not do, because it depends on more than the annotations: the
injector's merging (the status port and 15090,15021 into -d, -x always written, the
Helm values as defaults), which lives in inject/template.py on top of these functions.
"""

from collections.abc import Mapping

from istio_iptables.model import config as c
from istio_iptables.model.config import ConfigError
from istio_iptables.model.record import Record

INJECT = "sidecar.istio.io/inject"
INTERCEPTION_MODE = "sidecar.istio.io/interceptionMode"
INCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/includeOutboundIPRanges"
EXCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
INCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/includeInboundPorts"
EXCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/excludeInboundPorts"
INCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/includeOutboundPorts"
EXCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/excludeOutboundPorts"
KUBEVIRT_INTERFACES = "traffic.sidecar.istio.io/kubevirtInterfaces"
REROUTE_VIRTUAL_INTERFACES = "istio.io/reroute-virtual-interfaces"
EXCLUDE_INTERFACES = "traffic.sidecar.istio.io/excludeInterfaces"
STATUS_PORT = "status.sidecar.istio.io/port"
AGENT_LOG_LEVEL = "sidecar.istio.io/agentLogLevel"
PROXY_CONFIG = "proxy.istio.io/config"
SIDECAR_STATUS = "sidecar.istio.io/status"
INJECT_TEMPLATES = "inject.istio.io/templates"

# Interception modes as the injector spells them (validateInterceptionMode is
# case-sensitive); NONE means no init container and no capture at all.
REDIRECT, TPROXY, NONE = "REDIRECT", "TPROXY", "NONE"
# The spellings of "false" Go's strconv.ParseBool accepts, which the Istio CNI plugin
# uses for sidecar.istio.io/inject.  The injector itself accepts only "false"
# (pkg/kube/inject/inject.go injectRequired: other values fall back to the default).
_PARSEBOOL_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})


class Annotation(Record):
    """One annotation we read: the istio-iptables flag it sets (None when it is not a
    flag of its own) and its meaning in Istio's words."""

    name: str
    flag: str | None
    meaning: str


ANNOTATIONS: dict[str, Annotation] = {a.name: a for a in (
    Annotation(INJECT, None, 'Inject the sidecar ("true") or not ("false"); the label of the same name wins.'),
    Annotation(INTERCEPTION_MODE, "-m",
               "REDIRECT or TPROXY; NONE means no init container and no capture. "
               "Default: the mesh's defaultConfig.interceptionMode."),
    Annotation(INCLUDE_OUTBOUND_IP_RANGES, "-i",
               "Outbound CIDRs to capture, comma list, or '*' for all. Default: values global.proxy.includeIPRanges."),
    Annotation(EXCLUDE_OUTBOUND_IP_RANGES, "-x",
               "Outbound CIDRs never captured. Default: values global.proxy.excludeIPRanges."),
    Annotation(INCLUDE_INBOUND_PORTS, "-b",
               "Inbound ports to capture, comma list, or '*' for all. "
               "Default: values global.proxy.includeInboundPorts."),
    Annotation(EXCLUDE_INBOUND_PORTS, "-d",
               "Inbound ports never captured (with -b '*'); the injector adds 15090, 15021 and the status port."),
    Annotation(INCLUDE_OUTBOUND_PORTS, "-q", "Outbound ports always captured, whatever the destination CIDR."),
    Annotation(EXCLUDE_OUTBOUND_PORTS, "-o", "Outbound ports never captured."),
    Annotation(REROUTE_VIRTUAL_INTERFACES, "-k",
               "Virtual interfaces (e.g. KubeVirt's) whose inbound traffic is treated as outbound."),
    Annotation(KUBEVIRT_INTERFACES, "-k",
               "Deprecated spelling of istio.io/reroute-virtual-interfaces, used only when that is absent."),
    Annotation(EXCLUDE_INTERFACES, "-c", "Interfaces whose traffic is never captured."),
    Annotation(STATUS_PORT, None,
               "The agent's status port (default 15020); the injector adds it to -d. 0 means none."),
    Annotation(INJECT_TEMPLATES, None,
               "The injection templates to apply (default: sidecar); only the sidecar template adds istio-init."),
    Annotation(AGENT_LOG_LEVEL, None, "The agent's log level, passed as --log_output_level (ignored by us)."),
    Annotation(PROXY_CONFIG, None,
               "ProxyConfig overrides (YAML): interceptionMode, and proxyMetadata merged over the mesh's, "
               "which becomes the init container's environment (e.g. ISTIO_META_DNS_CAPTURE)."),
)}


def injection_disabled(annotations: Mapping[str, str], labels: Mapping[str, str] | None = None, *,
                       webhook: bool = False) -> str | None:
    """Why nothing is captured for this pod, in words, or None when it is captured.

    sidecar.istio.io/inject is read from the label when present, else the annotation
    (both Istio readers do).  By default "false" has every spelling Go's ParseBool
    accepts (0, f, F, false, FALSE, False), as the Istio CNI plugin reads it; with
    `webhook=True` only "false" counts, as the injector reads it (any other value falls
    back to the namespace's default, i.e. injection)."""
    source = "label" if labels is not None and INJECT in labels else "annotation"
    value = (labels or {}).get(INJECT) if source == "label" else annotations.get(INJECT)
    if value is not None and (value == "false" if webhook else value in _PARSEBOOL_FALSE):
        return f"{INJECT} {source} is {value!r}: no sidecar, no capture"
    if annotations.get(INTERCEPTION_MODE) == NONE:
        return f"{INTERCEPTION_MODE} is NONE: no init container, no capture"
    return None


def annotation_flags(annotations: Mapping[str, str]) -> list[str]:
    """The istio-iptables flags these annotations set, in the order Istio's injection
    template writes them, to be appended after a base flag list (later flags win).

    Every annotation we know is validated, including those that set no flag of their
    own (status port); a bad value raises ConfigError naming the annotation.  Call
    injection_disabled first: interception mode NONE sets no flag here."""
    _validate_status_port(annotations)
    flags: list[str] = []
    mode = annotations.get(INTERCEPTION_MODE)
    if mode is not None:
        if mode not in (REDIRECT, TPROXY, NONE):
            raise ConfigError(INTERCEPTION_MODE, mode, "expected REDIRECT, TPROXY or NONE (upper case)")
        if mode != NONE:
            flags += ["-m", mode]
    for name, check in _VALUE_CHECKS:
        value = annotations.get(name)
        if value is not None:
            check(name, value)
            flags += [_flag(name), value]
    virt = REROUTE_VIRTUAL_INTERFACES if REROUTE_VIRTUAL_INTERFACES in annotations else KUBEVIRT_INTERFACES
    for name in (virt, EXCLUDE_INTERFACES):
        value = annotations.get(name)
        if value is not None:
            _check_interfaces(name, value)
            flags += [_flag(name), value]
    if virt == REROUTE_VIRTUAL_INTERFACES and KUBEVIRT_INTERFACES in annotations:
        _check_interfaces(KUBEVIRT_INTERFACES, annotations[KUBEVIRT_INTERFACES])  # the injector validates both
    return flags


def _flag(name: str) -> str:
    flag = ANNOTATIONS[name].flag
    assert flag is not None, name
    return flag


def _check_items(name: str, value: str) -> None:
    """Go's strings.Split keeps empty items, and the injector refuses them."""
    if value.strip() and any(not item.strip() for item in value.split(",")):
        raise ConfigError(name, value, "empty item in the comma list")


def _check_include_cidrs(name: str, value: str) -> None:
    if value != "*":
        _check_items(name, value)
    c.parse_cidrs(name, value, allow_wildcard=True)


def _check_exclude_cidrs(name: str, value: str) -> None:
    _check_items(name, value)
    c.parse_cidrs(name, value, allow_wildcard=False)


def _check_include_ports(name: str, value: str) -> None:
    if value.strip() != "*":
        _check_items(name, value)
    c.parse_port_list(name, value, allow_wildcard=True)


def _check_ports(name: str, value: str) -> None:
    _check_items(name, value)
    c.parse_port_list(name, value)


def _check_interfaces(name: str, value: str) -> None:
    _check_items(name, value)
    c.parse_interfaces(name, value)


def _validate_status_port(annotations: Mapping[str, str]) -> None:
    value = annotations.get(STATUS_PORT)
    if value is not None and value.strip() != "0":  # 0: no status port (excludeInboundPort)
        c.parse_port(STATUS_PORT, value)


# Template order (injection-template.yaml): -i -x -b -d -q -o, then -k and -c.
_VALUE_CHECKS = (
    (INCLUDE_OUTBOUND_IP_RANGES, _check_include_cidrs),
    (EXCLUDE_OUTBOUND_IP_RANGES, _check_exclude_cidrs),
    (INCLUDE_INBOUND_PORTS, _check_include_ports),
    (EXCLUDE_INBOUND_PORTS, _check_ports),
    (INCLUDE_OUTBOUND_PORTS, _check_ports),
    (EXCLUDE_OUTBOUND_PORTS, _check_ports),
)
