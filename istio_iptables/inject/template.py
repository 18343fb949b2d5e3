"""One pod template + the injector's values + the mesh config → the init container
Istio's sidecar injector would add: its name, args and env.

The specification is Istio's injection template
(manifests/charts/istio-control/istio-discovery/files/injection-template.yaml, the
`initContainers` part) and the Go code around it in pkg/kube/inject:
- inject.go injectRequired: no injection with hostNetwork, or sidecar.istio.io/inject
  "false" (label before annotation);
- validate.go: every annotation is validated before the template runs (here through
  inject/annotations.py, which maps each annotation to its flag);
- template.go excludeInboundPort: the status port joins -d after 15090,15021;
- webhook.go reapplyOverwrittenContainers / adjustInitContainerUser: a pod's own
  istio-init (or istio-validation) container overrides the template's args and env,
  and an istio-proxy container's securityContext.runAsUser (non-zero) replaces -u;
- pkg/config/mesh MergeProxyConfig: proxy.istio.io/config over the mesh's
  defaultConfig, its proxyMetadata merged key by key (the annotation wins).
"""

from collections.abc import Mapping
from typing import Any

from istio_iptables.inject import annotations as a
from istio_iptables.inject.manifest import PodTemplate, load_yaml
from istio_iptables.inject.values import InjectorValues, MeshDefaults, interception_mode, proxy_metadata
from istio_iptables.model.config import ConfigError
from istio_iptables.model.record import Record

INIT_CONTAINER = "istio-init"
VALIDATION_CONTAINER = "istio-validation"
PROXY_CONTAINER = "istio-proxy"
SIDECAR_TEMPLATE = "sidecar"
AGENT_SUBCOMMAND = "istio-iptables"
# The template's -u when not TPROXY: .ProxyUID, 1337 unless an OpenShift namespace
# annotation says otherwise (GetProxyIDs), which a manifest alone cannot show.
DEFAULT_PROXY_UID = "1337"
# Envoy's Prometheus port and the health port, always excluded inbound by the template.
ALWAYS_EXCLUDED_INBOUND = "15090,15021"


class InitContainer(Record):
    name: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "args": list(self.args),
                "env": [{"name": k, "value": v} for k, v in self.env]}


class Injection(Record):
    """The init container, or None with the reason nothing is injected."""

    container: InitContainer | None
    reason: str = ""
    own_args: bool = False  # the pod's own istio-init args replaced the template's


def render(pod: PodTemplate, values: InjectorValues, mesh: MeshDefaults) -> Injection:
    """What the injector adds for this pod template.  Raises ConfigError naming the
    annotation for a value the injector refuses."""
    spec = pod.spec
    annotations = pod.annotations
    if spec.get("hostNetwork") is True:
        return Injection(None, "hostNetwork: true: the injector never injects host-network pods")
    disabled = a.injection_disabled(annotations, pod.labels, webhook=True)
    if disabled and annotations.get(a.INTERCEPTION_MODE) != a.NONE:
        return Injection(None, disabled)  # inject "false": nothing further is read
    by_flag = _pairs(a.annotation_flags(annotations))  # validates every annotation first, as RunTemplate does
    templates = annotations.get(a.INJECT_TEMPLATES)
    if templates is not None and SIDECAR_TEMPLATE not in (t.strip() for t in templates.split(",")):
        # inject.go selectTemplates; the gateway, grpc-* and custom templates add no istio-init.
        # (A custom template named in the injector's config could; we know only Istio's own.)
        return Injection(None, f"{a.INJECT_TEMPLATES} is {templates!r}: only the sidecar template adds istio-init")
    mode, metadata = effective_proxy_config(annotations, mesh)
    mode = annotations.get(a.INTERCEPTION_MODE, mode)
    if mode == a.NONE:
        return Injection(None, disabled or "interception mode NONE (proxy config): no init container")

    name = VALIDATION_CONTAINER if values.cni_enabled else INIT_CONTAINER
    status_port = annotations.get(a.STATUS_PORT, values.status_port)
    excluded = exclude_inbound_port(status_port, by_flag.get("-d", values.exclude_inbound_ports))
    args = [AGENT_SUBCOMMAND,
            "-p", mesh.proxy_listen_port,
            "-z", mesh.proxy_inbound_listen_port,
            "-u", "1337" if mode == a.TPROXY else DEFAULT_PROXY_UID,
            "-m", mode,
            "-i", by_flag.get("-i", values.include_ip_ranges),
            "-x", by_flag.get("-x", values.exclude_ip_ranges),
            "-b", by_flag.get("-b", values.include_inbound_ports),
            "-d", f"{ALWAYS_EXCLUDED_INBOUND},{excluded}" if excluded else ALWAYS_EXCLUDED_INBOUND]
    # -q/-o: written when the annotation is present (even empty) or the value is not empty.
    if a.INCLUDE_OUTBOUND_PORTS in annotations or values.include_outbound_ports:
        args += ["-q", by_flag.get("-q", values.include_outbound_ports)]
    if a.EXCLUDE_OUTBOUND_PORTS in annotations or values.exclude_outbound_ports:
        args += ["-o", by_flag.get("-o", values.exclude_outbound_ports)]
    for flag in ("-k", "-c"):  # annotation_flags chose reroute-virtual-interfaces over kubevirtInterfaces
        if flag in by_flag:
            args += [flag, by_flag[flag]]
    args.append("--log_output_level=" + annotations.get(a.AGENT_LOG_LEVEL, values.log_level))
    if values.log_as_json:
        args.append("--log_as_json")
    if values.cni_enabled:
        args += ["--run-validation", "--skip-rule-apply"]
    elif values.force_apply_iptables:
        args.append("--force-apply")
    if values.native_nftables:
        args.append("--native-nftables")
    env = tuple(sorted(metadata.items()))  # Go's template ranges over a map in key order
    return _apply_pod_overrides(pod, InitContainer(name, tuple(args), env))


def _pairs(flags: list[str]) -> dict[str, str]:
    return dict(zip(flags[::2], flags[1::2], strict=True))


def exclude_inbound_port(port: str, excluded: str) -> str:
    """template.go excludeInboundPort: add the status port to the excluded inbound
    ports unless it is 0, empty or already listed (then the list is kept as written)."""
    port = port.strip()
    if not port or port == "0":
        return excluded
    items = excluded.split(",")
    if port in items:
        return excluded
    return ",".join([item.strip() for item in items if item.strip()] + [port])


def effective_proxy_config(annotations: Mapping[str, str], mesh: MeshDefaults) -> tuple[str, dict[str, str]]:
    """(interception mode, proxyMetadata) after proxy.istio.io/config is merged over the
    mesh's defaultConfig.  A bad annotation raises ConfigError naming it."""
    mode = mesh.interception_mode
    metadata = dict(mesh.proxy_metadata)
    raw = annotations.get(a.PROXY_CONFIG)
    if raw is None:
        return mode, metadata
    try:
        doc = load_yaml(raw, a.PROXY_CONFIG) or {}
        if not isinstance(doc, Mapping):
            raise ConfigError(a.PROXY_CONFIG, raw, "expected a ProxyConfig mapping")
        if "interceptionMode" in doc:
            mode = interception_mode("interceptionMode", doc["interceptionMode"])
        metadata.update(proxy_metadata("proxyMetadata", doc.get("proxyMetadata")))
    except ConfigError as err:
        reason = err.reason if err.flag == a.PROXY_CONFIG else f"{err.flag}: {err.reason}"
        raise ConfigError(a.PROXY_CONFIG, raw, reason) from None
    return mode, metadata


def _find(spec: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """FindContainerFromPod: containers first, then initContainers."""
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            if isinstance(container, Mapping) and container.get("name") == name:
                return container
    return None


def _injected_before(pod: PodTemplate) -> set[str]:
    """Init containers an earlier injection added (sidecar.istio.io/status), which the
    injector replaces rather than treats as the user's overrides."""
    import json

    try:
        status = json.loads(pod.annotations.get(a.SIDECAR_STATUS, "null"))
    except ValueError:
        return set()
    names = status.get("initContainers") if isinstance(status, Mapping) else None
    return {str(n) for n in names} if isinstance(names, list) else set()


def _apply_pod_overrides(pod: PodTemplate, container: InitContainer) -> Injection:
    """webhook.go: the pod's own container of the same name overlays the template's
    (args replaced when given, env merged by name), then -u follows the istio-proxy
    container's runAsUser."""
    args, env = list(container.args), dict(container.env)
    own = None if container.name in _injected_before(pod) else _find(pod.spec, container.name)
    own_args = bool(own and own.get("args"))
    if own is not None:
        if own_args:
            args = [str(arg) for arg in own["args"]]
        for item in own.get("env") or []:
            if isinstance(item, Mapping) and "name" in item:
                env[str(item["name"])] = str(item.get("value", ""))
    proxy = _find(pod.spec, PROXY_CONTAINER)
    user = (proxy.get("securityContext") or {}).get("runAsUser") if proxy else None
    if isinstance(user, int) and not isinstance(user, bool) and user != 0 and "-u" in args[:-1]:
        args[args.index("-u") + 1] = str(user)
    return Injection(InitContainer(container.name, tuple(args), tuple(env.items())), own_args=own_args)
