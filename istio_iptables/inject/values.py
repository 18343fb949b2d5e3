"""The injector's two configuration inputs: its Helm values and the mesh config.

Both arrive as parsed YAML/JSON documents in any of the shapes people have at hand, and
leave as the few fields the injection template reads, with Istio's chart defaults
(manifests/charts/istio-control/istio-discovery/values.yaml) and mesh defaults
(pkg/config/mesh: proxyListenPort 15001, proxyInboundListenPort 15006,
interceptionMode REDIRECT) where a field or the whole file is absent.  Pure: no I/O.

Values are read with the template's own semantics: Go templates print a value with
fmt.Sprint and test it with Go truthiness (`{{ if .Values.global.logAsJson }}`), so
both are reproduced here (`go_str`, `go_truthy`) rather than Python's str/bool.
"""

from collections.abc import Mapping
from typing import Any

from istio_iptables.inject.annotations import NONE, REDIRECT, TPROXY
from istio_iptables.model.config import ConfigError
from istio_iptables.model.record import Record


class InjectorValues(Record):
    """The Helm values the injection template reads for istio-init, as Go would print them.
    Empty outbound port lists mean "not set": the template writes -q/-o only when the
    annotation is present or the value is not empty."""

    include_ip_ranges: str = "*"
    exclude_ip_ranges: str = ""
    include_inbound_ports: str = "*"
    exclude_inbound_ports: str = ""
    include_outbound_ports: str = ""
    exclude_outbound_ports: str = ""
    status_port: str = "15020"
    log_level: str = "default:info"
    log_as_json: bool = False
    force_apply_iptables: bool = False
    native_nftables: bool = False
    cni_enabled: bool = False


class MeshDefaults(Record):
    """The mesh config fields the template reads: listener ports and defaultConfig."""

    proxy_listen_port: str = "15001"
    proxy_inbound_listen_port: str = "15006"
    interception_mode: str = REDIRECT
    proxy_metadata: tuple[tuple[str, str], ...] = ()


# protojson accepts an enum by name or by number (meshconfig.ProxyConfig_InboundInterceptionMode).
_MODE_NUMBERS = {0: REDIRECT, 1: TPROXY, 2: NONE}


def _text(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def go_str(value: object) -> str:
    """fmt.Sprint of a value decoded from JSON/YAML (numbers are float64 in Go's JSON)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def go_truthy(value: object) -> bool:
    """Go template truth: false, 0, nil and empty strings/collections are false."""
    return bool(value)  # the same rule as Python's for the JSON types; "false" is true in both


def dig(doc: Mapping[str, Any], *path: str) -> Any:
    """doc[path[0]][path[1]]..., or None where a step is missing or not a mapping."""
    node: Any = doc
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def unwrap_values(doc: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
    """(values, mesh config found beside them or None) from any of: the injector's
    values (`kubectl get cm istio-sidecar-injector -o jsonpath='{.data.values}'`), that
    ConfigMap itself, an IstioOperator (spec.values, spec.meshConfig), or the istiod
    chart's Helm values (top-level `cni`, `meshConfig`)."""
    if doc.get("kind") == "ConfigMap":
        import json

        raw = dig(doc, "data", "values")
        if not isinstance(raw, str):
            raise ConfigError("ConfigMap data.values", _text(raw), "expected the injector's values as a JSON string")
        try:
            loaded = json.loads(raw)
        except ValueError as err:
            raise ConfigError("ConfigMap data.values", _text(raw[:40]), f"not JSON: {err}") from None
        return (loaded if isinstance(loaded, Mapping) else {}), None
    if doc.get("kind") == "IstioOperator":
        spec = doc.get("spec") or {}
        return (spec.get("values") or {}), spec.get("meshConfig")
    return doc, doc.get("meshConfig")


def injector_values(doc: Mapping[str, Any] | None) -> InjectorValues:
    """The values the template reads, with the chart's defaults where absent."""
    if not doc:
        return InjectorValues()
    defaults = InjectorValues()
    proxy = dig(doc, "global", "proxy") or {}

    def text(key: str, default: str) -> str:
        return default if key not in proxy or proxy[key] is None else go_str(proxy[key])

    cni = (go_truthy(dig(doc, "pilot", "cni", "enabled"))
           or go_truthy(dig(doc, "cni", "enabled"))          # the istiod chart's own key for pilot.cni
           or go_truthy(dig(doc, "istio_cni", "enabled")))   # Istio before 1.24 (removed in #52645)
    level = dig(doc, "global", "logging", "level")
    return InjectorValues(
        include_ip_ranges=text("includeIPRanges", defaults.include_ip_ranges),
        exclude_ip_ranges=text("excludeIPRanges", defaults.exclude_ip_ranges),
        include_inbound_ports=text("includeInboundPorts", defaults.include_inbound_ports),
        exclude_inbound_ports=text("excludeInboundPorts", defaults.exclude_inbound_ports),
        include_outbound_ports=text("includeOutboundPorts", ""),
        exclude_outbound_ports=text("excludeOutboundPorts", ""),
        status_port=text("statusPort", defaults.status_port),
        log_level=defaults.log_level if level is None else go_str(level),
        log_as_json=go_truthy(dig(doc, "global", "logAsJson")),
        force_apply_iptables=go_truthy(dig(doc, "global", "proxy_init", "forceApplyIptables")),
        native_nftables=go_truthy(dig(doc, "global", "nativeNftables")),
        cni_enabled=cni,
    )


def unwrap_mesh(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """The mesh config from itself or from the `istio` ConfigMap (data.mesh, YAML text,
    parsed by the caller) or an IstioOperator (spec.meshConfig)."""
    if doc.get("kind") == "IstioOperator":
        return dig(doc, "spec", "meshConfig") or {}
    return doc


def interception_mode(field: str, value: object) -> str:
    """An interception mode as protojson reads it: a name or an enum number."""
    if isinstance(value, int) and not isinstance(value, bool) and value in _MODE_NUMBERS:
        return _MODE_NUMBERS[value]
    if value in (REDIRECT, TPROXY, NONE):
        return str(value)
    raise ConfigError(field, _text(value), "expected REDIRECT, TPROXY or NONE")


def proxy_metadata(field: str, value: object) -> dict[str, str]:
    """proxyMetadata: a map of strings (protojson refuses other value types)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(field, _text(value), "expected a map of environment variables")
    for key, item in value.items():
        if not isinstance(item, str):
            raise ConfigError(f"{field}.{key}", _text(item), "values must be strings (quote them in YAML)")
    return {str(k): v for k, v in value.items()}


def mesh_defaults(doc: Mapping[str, Any] | None) -> MeshDefaults:
    """Listener ports and defaultConfig from a mesh config, with Istio's defaults."""
    if not doc:
        return MeshDefaults()
    default_config = doc.get("defaultConfig") or {}
    if not isinstance(default_config, Mapping):
        raise ConfigError("defaultConfig", _text(default_config), "expected a map")
    mode = default_config.get("interceptionMode")

    def port(key: str, default: str) -> str:
        value = doc.get(key)
        return default if not value else go_str(value)  # sprig `default` treats 0 as unset

    return MeshDefaults(
        proxy_listen_port=port("proxyListenPort", "15001"),
        proxy_inbound_listen_port=port("proxyInboundListenPort", "15006"),
        interception_mode=REDIRECT if mode is None else interception_mode(
            "defaultConfig.interceptionMode", mode),
        proxy_metadata=tuple(proxy_metadata("defaultConfig.proxyMetadata",
                                            default_config.get("proxyMetadata")).items()),
    )
