"""`istio-iptables pod` and `--from-pod`: the init container Istio's injector adds.

Two kinds of expectations: Istio's own injection tests (tests/testdata/istio-inject: its
inputs and, from its golden outputs, each pod template's istio-init container), and
one test per annotation and value whose expected args are read off the injection
template (manifests/charts/istio-control/istio-discovery/files/injection-template.yaml,
"the template" below) and pkg/kube/inject (cited per test)."""

from __future__ import annotations

import io
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from istio_iptables.cli.main import main
from istio_iptables.inject import annotations as a
from istio_iptables.inject.frompod import capture_from_pod

from .conftest import modules_after

DATA = Path(__file__).resolve().parent / "testdata" / "istio-inject"
ISTIO = json.loads((DATA / "expected.json").read_text())
# What the template writes for a pod with no annotations and Istio's default values.
DEFAULT_ARGS = ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
                "-x", "", "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info"]


def run_pod(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["pod", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def pod_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, docs: list[Any], *args: str) -> list[Any]:
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    status, out, err = run_pod(capsys, str(path), "--output", "json", *args)
    assert status == 0, err
    result: list[Any] = json.loads(out)
    return result


def deployment(annotations: dict[str, str] | None = None, *, labels: dict[str, str] | None = None,
               spec: dict[str, Any] | None = None, kind: str = "Deployment") -> dict[str, Any]:
    template = {"metadata": {"annotations": annotations or {}, "labels": labels or {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "web", "ports": [{"containerPort": 8080}]}],
                         **(spec or {})}}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", **template["metadata"]},
                "spec": template["spec"]}
    if kind == "CronJob":
        return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "web"},
                "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "web"}, "spec": {"template": template}}


def args_of(capsys: pytest.CaptureFixture[str], tmp_path: Path, annotations: dict[str, str] | None = None,
            *extra: str, **kwargs: Any) -> list[str] | None:
    entry = pod_json(capsys, tmp_path, [deployment(annotations, **kwargs)], *extra)[0]
    return None if entry is None else list(entry["args"])


def write_json(tmp_path: Path, name: str, doc: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


# ---- Istio's own injection tests --------------------------------------------------------------

@pytest.mark.parametrize("golden", sorted(ISTIO["cases"]))
def test_istio_injection_goldens(capsys: pytest.CaptureFixture[str], tmp_path: Path, golden: str) -> None:
    case = ISTIO["cases"][golden]
    extra = []
    if case["values"] is not None:
        extra += ["--values", write_json(tmp_path, "values.json", case["values"])]
    if case["mesh"] is not None:
        extra += ["--mesh-config", write_json(tmp_path, "mesh.json", case["mesh"])]
    status, out, err = run_pod(capsys, str(DATA / case["input"]), "--output", "json", *extra)
    assert status == 0, err
    assert json.loads(out) == case["expected"]


@pytest.mark.parametrize("source", sorted(ISTIO["refused"]))
def test_istio_refused_annotations_exit_2_naming_the_annotation(capsys: pytest.CaptureFixture[str],
                                                                source: str) -> None:
    bad = next(d for d in yaml.safe_load_all((DATA / source).read_text()) if d)
    annotations = bad["spec"]["template"]["metadata"]["annotations"]
    name, value = next((k, v) for k, v in annotations.items() if k.startswith("traffic.sidecar.istio.io/"))
    status, out, err = run_pod(capsys, str(DATA / source))
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and name in err and repr(value) in err and "Traceback" not in err


def test_the_goldens_cover_cni_tproxy_values_and_every_workload_kind() -> None:
    cases = ISTIO["cases"].values()
    names = {e["name"] for c in cases for e in c["expected"] if e}
    assert names == {"istio-init", "istio-validation"}
    assert any(e and "TPROXY" in e["args"] for c in cases for e in c["expected"])
    inputs = {c["input"] for c in cases}
    assert {"cronjob.yaml", "daemonset.yaml", "job.yaml", "replicaset.yaml", "statefulset.yaml", "pod.yaml",
            "list.yaml", "hello-multi.yaml", "replicationcontroller.yaml"} <= inputs
    assert any(e is None for c in cases for e in c["expected"])  # host network, NONE, gateway templates


# ---- one annotation at a time, against the template ------------------------------------------

def test_no_annotations_give_the_template_defaults(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert args_of(capsys, tmp_path) == DEFAULT_ARGS


def _with(**changes: str) -> list[str]:
    args = list(DEFAULT_ARGS)
    for flag, value in changes.items():
        args[args.index("-" + flag) + 1] = value
    return args


def _inserted(after: str, *items: str) -> list[str]:
    args = list(DEFAULT_ARGS)
    at = args.index(after) + 2
    return args[:at] + list(items) + args[at:]


@pytest.mark.parametrize(("annotations", "expected"), [
    # -m: `annotation sidecar.istio.io/interceptionMode .ProxyConfig.InterceptionMode`
    ({a.INTERCEPTION_MODE: "REDIRECT"}, DEFAULT_ARGS),
    # -i / -x / -b: the annotation, else global.proxy.includeIPRanges / excludeIPRanges / includeInboundPorts
    ({a.INCLUDE_OUTBOUND_IP_RANGES: "10.96.0.0/12"}, _with(i="10.96.0.0/12")),
    ({a.INCLUDE_OUTBOUND_IP_RANGES: ""}, _with(i="")),
    ({a.EXCLUDE_OUTBOUND_IP_RANGES: "10.0.0.0/8,fd00::/8"}, _with(x="10.0.0.0/8,fd00::/8")),
    ({a.INCLUDE_INBOUND_PORTS: "8080,9090"}, _with(b="8080,9090")),
    ({a.INCLUDE_INBOUND_PORTS: ""}, _with(b="")),
    # -d: "15090,15021," + excludeInboundPort(status port, excludeInboundPorts) (template.go)
    ({a.EXCLUDE_INBOUND_PORTS: "8443"}, _with(d="15090,15021,8443,15020")),
    ({a.EXCLUDE_INBOUND_PORTS: "8443,15020"}, _with(d="15090,15021,8443,15020")),
    ({a.EXCLUDE_INBOUND_PORTS: " 8443, 9000"}, _with(d="15090,15021,8443,9000,15020")),
    ({a.STATUS_PORT: "15999"}, _with(d="15090,15021,15999")),
    ({a.STATUS_PORT: "0"}, _with(d="15090,15021")),
    ({a.STATUS_PORT: "0", a.EXCLUDE_INBOUND_PORTS: "81"}, _with(d="15090,15021,81")),
    # -q / -o: only when the annotation is set (even empty) or the value is not empty
    ({a.INCLUDE_OUTBOUND_PORTS: "3306"}, _inserted("-d", "-q", "3306")),
    ({a.INCLUDE_OUTBOUND_PORTS: ""}, _inserted("-d", "-q", "")),
    ({a.EXCLUDE_OUTBOUND_PORTS: "5432,6379"}, _inserted("-d", "-o", "5432,6379")),
    ({a.INCLUDE_OUTBOUND_PORTS: "3306", a.EXCLUDE_OUTBOUND_PORTS: "22"}, _inserted("-d", "-q", "3306", "-o", "22")),
    # -k: reroute-virtual-interfaces, else kubevirtInterfaces; -c: excludeInterfaces
    ({a.KUBEVIRT_INTERFACES: "net1"}, _inserted("-d", "-k", "net1")),
    ({a.REROUTE_VIRTUAL_INTERFACES: "net2", a.KUBEVIRT_INTERFACES: "net1"}, _inserted("-d", "-k", "net2")),
    ({a.EXCLUDE_INTERFACES: "eth1,eth2"}, _inserted("-d", "-c", "eth1,eth2")),
    ({a.EXCLUDE_INTERFACES: "eth1", a.KUBEVIRT_INTERFACES: "net1"}, _inserted("-d", "-k", "net1", "-c", "eth1")),
    # --log_output_level: sidecar.istio.io/agentLogLevel, else global.logging.level
    ({a.AGENT_LOG_LEVEL: "default:debug"}, [*DEFAULT_ARGS[:-1], "--log_output_level=default:debug"]),
    # inject "true" changes nothing; other templates listed beside sidecar neither
    ({a.INJECT: "true", a.INJECT_TEMPLATES: "sidecar,spire"}, DEFAULT_ARGS),
])
def test_each_annotation_as_the_template_writes_it(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                   annotations: dict[str, str], expected: list[str]) -> None:
    assert args_of(capsys, tmp_path, annotations) == expected


def test_tproxy_writes_uid_1337_and_the_mode(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The template: `-u {{ if $tproxy }} "1337" {{ else }} {{ .ProxyUID | default "1337" }}`.
    assert args_of(capsys, tmp_path, {a.INTERCEPTION_MODE: "TPROXY"}) == _with(m="TPROXY")


@pytest.mark.parametrize(("run_as", "uid"), [(1234, "1234"), (0, "1337"), (None, "1337")])
def test_minus_u_follows_the_istio_proxy_containers_run_as_user(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path, run_as: int | None,
                                                                 uid: str) -> None:
    # webhook.go adjustInitContainerUser: a non-zero runAsUser of the pod's istio-proxy container replaces -u.
    proxy: dict[str, Any] = {"name": "istio-proxy", "image": "auto"}
    if run_as is not None:
        proxy["securityContext"] = {"runAsUser": run_as}
    spec = {"containers": [{"name": "app", "image": "web"}, proxy]}
    assert args_of(capsys, tmp_path, spec=spec) == _with(u=uid)
    # ... also in TPROXY mode, where the template wrote 1337 first.
    assert args_of(capsys, tmp_path, {a.INTERCEPTION_MODE: "TPROXY"}, spec=spec) == _with(u=uid, m="TPROXY")


def test_a_pods_own_istio_init_args_override_the_template(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    # webhook.go reapplyOverwrittenContainers: the pod's container of the same name is an overlay.
    own = ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "10.0.0.0/8",
           "-x", "", "-b", "*", "-d", "15090,15021,15020"]
    spec = {"initContainers": [{"name": "istio-init", "image": "auto", "args": own,
                                "env": [{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}]}]}
    entry = pod_json(capsys, tmp_path, [deployment(spec=spec)])[0]
    assert entry["args"] == own and entry["env"] == [{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}]


@pytest.mark.parametrize(("annotations", "labels", "spec", "why"), [
    ({a.INJECT: "false"}, None, None, "sidecar.istio.io/inject"),
    (None, {a.INJECT: "false", "app": "web"}, None, "label"),
    ({a.INTERCEPTION_MODE: "NONE"}, None, None, "NONE"),
    ({a.PROXY_CONFIG: "interceptionMode: NONE"}, None, None, "NONE"),
    (None, None, {"hostNetwork": True}, "hostNetwork"),
    ({a.INJECT_TEMPLATES: "gateway"}, None, None, "gateway"),
])
def test_nothing_is_injected(capsys: pytest.CaptureFixture[str], tmp_path: Path, annotations: dict[str, str] | None,
                             labels: dict[str, str] | None, spec: dict[str, Any] | None, why: str) -> None:
    docs = [deployment(annotations, labels=labels, spec=spec)]
    assert pod_json(capsys, tmp_path, docs) == [None]
    status, out, _ = run_pod(capsys, str(tmp_path / "manifest.yaml"))
    assert status == 0 and out.startswith("# Deployment/web: nothing injected:") and why in out


def test_inject_label_true_beats_an_annotation_false(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # inject.go injectRequired: "The label is the new API; if both are present we prefer the label".
    assert args_of(capsys, tmp_path, {a.INJECT: "false"}, labels={a.INJECT: "true"}) == DEFAULT_ARGS


@pytest.mark.parametrize("value", ["False", "no", "0"])
def test_the_injector_reads_only_lowercase_false(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 value: str) -> None:
    # injectRequired: other values log a warning and fall back to the default policy (inject).
    assert args_of(capsys, tmp_path, {a.INJECT: value}) == DEFAULT_ARGS


def test_inject_false_skips_validation_as_the_injector_does(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    annotations = {a.INJECT: "false", a.EXCLUDE_OUTBOUND_IP_RANGES: "*"}
    assert args_of(capsys, tmp_path, annotations) is None


# ---- values and mesh config -------------------------------------------------------------------

def test_values_set_defaults_and_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    values = {"global": {"proxy": {"includeIPRanges": "10.0.0.0/8", "excludeIPRanges": "10.1.0.0/16",
                                   "includeInboundPorts": "80", "excludeInboundPorts": "81",
                                   "includeOutboundPorts": "3306", "excludeOutboundPorts": "22",
                                   "statusPort": 15030},
                         "logging": {"level": "default:warn"}, "logAsJson": True, "nativeNftables": True,
                         "proxy_init": {"forceApplyIptables": True}}}
    args = args_of(capsys, tmp_path, None, "--values", write_json(tmp_path, "v.json", values))
    assert args == ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                    "-i", "10.0.0.0/8", "-x", "10.1.0.0/16", "-b", "80", "-d", "15090,15021,81,15030",
                    "-q", "3306", "-o", "22", "--log_output_level=default:warn", "--log_as_json",
                    "--force-apply", "--native-nftables"]
    # Annotations beat values.
    args = args_of(capsys, tmp_path, {a.EXCLUDE_OUTBOUND_PORTS: "23", a.INCLUDE_OUTBOUND_IP_RANGES: "*"},
                   "--values", str(tmp_path / "v.json"))
    assert args is not None and args[args.index("-o") + 1] == "23" and args[args.index("-i") + 1] == "*"


@pytest.mark.parametrize("values", [
    {"pilot": {"cni": {"enabled": True}}},                          # the injector's values (ConfigMap data.values)
    {"cni": {"enabled": True}},                                     # istiod chart values
    {"istio_cni": {"enabled": True}},                               # Istio before 1.24
    {"kind": "IstioOperator", "spec": {"values": {"pilot": {"cni": {"enabled": True}}}}},
    {"kind": "ConfigMap", "data": {"values": json.dumps({"pilot": {"cni": {"enabled": True}},
                                                         "global": {"proxy_init": {"forceApplyIptables": True}}})}},
])
def test_istio_cni_gives_the_validation_container(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  values: dict[str, Any]) -> None:
    # The template: `if .Values.pilot.cni.enabled` -> istio-validation, --run-validation --skip-rule-apply
    # (and no --force-apply).
    entry = pod_json(capsys, tmp_path, [deployment()], "--values", write_json(tmp_path, "v.json", values))[0]
    assert entry["name"] == "istio-validation"
    assert entry["args"] == [*DEFAULT_ARGS, "--run-validation", "--skip-rule-apply"]


def test_mesh_config_ports_mode_and_proxy_metadata(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    mesh = {"proxyListenPort": 16001, "proxyInboundListenPort": 16006,
            "defaultConfig": {"interceptionMode": "TPROXY",
                              "proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true", "B": "1"}}}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio"},
          "data": {"mesh": yaml.safe_dump(mesh)}}
    for doc in (mesh, cm, {"meshConfig": mesh}):
        flag = "--values" if "meshConfig" in doc else "--mesh-config"
        entry = pod_json(capsys, tmp_path, [deployment()], flag, write_json(tmp_path, "m.json", doc))[0]
        assert entry["args"] == _with(p="16001", z="16006", m="TPROXY")
        assert entry["env"] == [{"name": "B", "value": "1"}, {"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}]


def test_proxy_config_annotation_overrides_the_mesh_metadata_key_by_key(capsys: pytest.CaptureFixture[str],
                                                                        tmp_path: Path) -> None:
    # pkg/config/mesh MergeProxyConfig: proxyMetadata = mergeMap(mesh's, annotation's).
    mesh = write_json(tmp_path, "m.json", {"defaultConfig": {"proxyMetadata": {"A": "mesh", "B": "mesh"}}})
    annotations = {a.PROXY_CONFIG: "proxyMetadata:\n  B: pod\n  C: pod\ninterceptionMode: TPROXY\n"}
    entry = pod_json(capsys, tmp_path, [deployment(annotations)], "--mesh-config", mesh)[0]
    assert entry["env"] == [{"name": n, "value": v} for n, v in (("A", "mesh"), ("B", "pod"), ("C", "pod"))]
    assert entry["args"] == _with(m="TPROXY")


# ---- manifests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"])
def test_every_workload_kind(capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str) -> None:
    assert args_of(capsys, tmp_path, {a.EXCLUDE_OUTBOUND_PORTS: "22"}, kind=kind) == _inserted("-d", "-o", "22")


def test_lists_and_documents_in_order_skipping_objects_without_pods(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": []}}
    listed = {"apiVersion": "v1", "kind": "List",
              "items": [deployment({a.EXCLUDE_OUTBOUND_PORTS: "1"}), service, deployment(spec={"hostNetwork": True})]}
    docs = [deployment({a.EXCLUDE_OUTBOUND_PORTS: "2"}), service, listed, None,
            deployment({a.EXCLUDE_OUTBOUND_PORTS: "3"}, kind="Pod")]
    entries = pod_json(capsys, tmp_path, docs)
    assert [e and e["args"][e["args"].index("-o") + 1] for e in entries] == ["2", "1", None, "3"]


def test_stdin_and_args_output_paste_into_dry_run(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = yaml.safe_dump_all([deployment({a.EXCLUDE_OUTBOUND_IP_RANGES: "10.0.0.0/8",
                                               a.PROXY_CONFIG: "proxyMetadata: {ISTIO_META_DNS_CAPTURE: 'true'}"})])
    monkeypatch.setattr(sys, "stdin", io.StringIO(manifest))
    status, out, _ = run_pod(capsys, "-")
    assert status == 0
    line = out.splitlines()[0]
    assert line.endswith("  # env: ISTIO_META_DNS_CAPTURE=true")
    words = shlex.split(line, comments=True)
    assert words[0] == "istio-iptables" and words[words.index("-x") + 1] == "10.0.0.0/8"
    assert main(["--dry-run", "--ipv6", "off", *words]) == 0
    assert "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN" in capsys.readouterr().out


# ---- refusals: one line, exit 2 ----------------------------------------------------------------

@pytest.mark.parametrize(("annotations", "named"), [
    ({a.EXCLUDE_OUTBOUND_IP_RANGES: "10.0.0.0/33"}, a.EXCLUDE_OUTBOUND_IP_RANGES),
    ({a.INCLUDE_INBOUND_PORTS: "80,65536"}, a.INCLUDE_INBOUND_PORTS),
    ({a.EXCLUDE_INTERFACES: "eth0;reboot"}, a.EXCLUDE_INTERFACES),
    ({a.INTERCEPTION_MODE: "tproxy"}, a.INTERCEPTION_MODE),
    ({a.STATUS_PORT: "99999"}, a.STATUS_PORT),
    ({a.PROXY_CONFIG: "interceptionMode: SOMETIMES"}, a.PROXY_CONFIG),
    ({a.PROXY_CONFIG: "proxyMetadata: {ISTIO_META_DNS_CAPTURE: true}"}, a.PROXY_CONFIG),
    ({a.PROXY_CONFIG: "[unclosed"}, a.PROXY_CONFIG),
])
def test_refused_annotations(capsys: pytest.CaptureFixture[str], tmp_path: Path, annotations: dict[str, str],
                             named: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment(annotations)))
    status, out, err = run_pod(capsys, str(path))
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and named in err and "Deployment/web" in err
    assert repr(annotations[named]) in err


@pytest.mark.parametrize(("content", "words"), [
    (None, "No such file"),
    ("kind: Deployment\n  bad: [", "not valid YAML"),
    ("- just\n- a list\n", "expected Kubernetes objects"),
])
def test_bad_manifests(capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None,
                       words: str) -> None:
    path = tmp_path / "m.yaml"
    if content is not None:
        path.write_text(content)
    status, _, err = run_pod(capsys, str(path))
    assert status == 2 and len(err.splitlines()) == 1 and words in err and str(path) in err


@pytest.mark.parametrize("values", [
    {"kind": "ConfigMap", "data": {"values": "{not json"}},
    {"defaultConfig": {"interceptionMode": "SIDEWAYS"}},
    {"defaultConfig": {"proxyMetadata": ["A=1"]}},
])
def test_bad_values_and_mesh_config(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    values: dict[str, Any]) -> None:
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(deployment()))
    flag = "--values" if "kind" in values else "--mesh-config"
    status, _, err = run_pod(capsys, str(tmp_path / "m.yaml"), flag, write_json(tmp_path, "v.json", values))
    assert status == 2 and len(err.splitlines()) == 1 and "v.json" in err


# ---- the pod's args always parse (hypothesis) --------------------------------------------------

_PORTS = st.lists(st.integers(1, 65535), max_size=3).map(lambda ps: ",".join(map(str, ps)))
_CIDRS = st.lists(st.sampled_from(["10.0.0.0/8", "192.168.1.0/24", "fd00::/8", "0.0.0.0/0", "::/0", "10.1.2.3/32"]),
                  max_size=3).map(",".join)
_IFACES = st.lists(st.sampled_from(["eth1", "net1", "veth0", "cali1234"]), min_size=1, max_size=2).map(",".join)
_ANNOTATIONS = st.fixed_dictionaries({}, optional={
    a.INTERCEPTION_MODE: st.sampled_from(["REDIRECT", "TPROXY"]),
    a.INCLUDE_OUTBOUND_IP_RANGES: st.one_of(st.just("*"), _CIDRS),
    a.EXCLUDE_OUTBOUND_IP_RANGES: _CIDRS,
    a.INCLUDE_INBOUND_PORTS: st.one_of(st.just("*"), _PORTS),
    a.EXCLUDE_INBOUND_PORTS: _PORTS,
    a.INCLUDE_OUTBOUND_PORTS: _PORTS,
    a.EXCLUDE_OUTBOUND_PORTS: _PORTS,
    a.KUBEVIRT_INTERFACES: _IFACES,
    a.REROUTE_VIRTUAL_INTERFACES: _IFACES,
    a.EXCLUDE_INTERFACES: _IFACES,
    a.STATUS_PORT: st.sampled_from(["0", "15020", "15999"]),
    a.AGENT_LOG_LEVEL: st.sampled_from(["default:debug", "all:warn"]),
    a.PROXY_CONFIG: st.sampled_from(["proxyMetadata: {ISTIO_META_DNS_CAPTURE: 'true'}", "{}"]),
})
_VALUES = st.fixed_dictionaries({}, optional={
    "global": st.fixed_dictionaries({}, optional={
        "logAsJson": st.booleans(), "nativeNftables": st.booleans(),
        "proxy_init": st.fixed_dictionaries({"forceApplyIptables": st.booleans()}),
        "proxy": st.fixed_dictionaries({}, optional={"excludeOutboundPorts": _PORTS, "includeOutboundPorts": _PORTS,
                                                     "statusPort": st.sampled_from([0, 15020, 123])})}),
    "pilot": st.fixed_dictionaries({"cni": st.fixed_dictionaries({"enabled": st.booleans()})}),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(annotations=_ANNOTATIONS, values=_VALUES)
def test_pod_output_pasted_after_dry_run_parses(capsys: pytest.CaptureFixture[str], tmp_path_factory: Any,
                                                annotations: dict[str, str], values: dict[str, Any]) -> None:
    tmp_path = tmp_path_factory.mktemp("pod")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(deployment(annotations)))
    values_path = write_json(tmp_path, "v.json", values)
    status, out, err = run_pod(capsys, str(manifest), "--values", values_path)
    assert status == 0, err
    words = shlex.split(out, comments=True)
    entry = pod_json(capsys, tmp_path, [deployment(annotations)], "--values", values_path)[0]
    assert words == entry["args"]                                  # both outputs agree
    assert main(["--dry-run", "--ipv6", "off", *words]) == 0, capsys.readouterr().err
    capsys.readouterr()
    # --from-pod captures the same as the pasted args (the run-only flags aside).
    flags, env = capture_from_pod(str(manifest), values_path)
    assert flags == [w for w in words[1:] if not w.startswith("--log_") and w not in
                     ("--run-validation", "--skip-rule-apply", "--force-apply")]
    assert env == {e["name"]: e["value"] for e in entry["env"]}


# ---- --from-pod ----------------------------------------------------------------------------------

def dry_out(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    status = main(["--dry-run", "--ipv6", "off", "--resolv-conf", "/dev/null", *args])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


def test_from_pod_equals_the_pasted_args_and_explicit_flags_win(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(deployment({a.EXCLUDE_OUTBOUND_IP_RANGES: "10.0.0.0/8",
                                                                a.EXCLUDE_OUTBOUND_PORTS: "22"})))
    status, out, _ = run_pod(capsys, str(tmp_path / "m.yaml"))
    assert status == 0
    pasted = dry_out(capsys, *shlex.split(out))
    assert dry_out(capsys, "--from-pod", str(tmp_path / "m.yaml")) == pasted
    assert dry_out(capsys, f"--from-pod={tmp_path / 'm.yaml'}") == pasted
    mine = dry_out(capsys, "--from-pod", str(tmp_path / "m.yaml"), "-x", "192.168.0.0/16")
    assert "-d 192.168.0.0/16 -j RETURN" in mine and "10.0.0.0/8" not in mine and "--dport 22" in mine


def test_from_pod_sets_the_injectors_env(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(deployment(
        {a.PROXY_CONFIG: "proxyMetadata: {ISTIO_META_DNS_CAPTURE: 'true'}"})))
    assert capture_from_pod(str(tmp_path / "m.yaml")) == (DEFAULT_ARGS[1:-1], {"ISTIO_META_DNS_CAPTURE": "true"})
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.96.0.10\n")
    out = dry_out(capsys, "--from-pod", str(tmp_path / "m.yaml"), "--resolv-conf", str(resolv))
    assert "-d 10.96.0.10/32 -j REDIRECT --to-port 15053" in out
    monkeypatch.setenv("ISTIO_META_DNS_CAPTURE", "false")  # the caller's environment wins
    out = dry_out(capsys, "--from-pod", str(tmp_path / "m.yaml"), "--resolv-conf", str(resolv))
    assert "15053" not in out


@pytest.mark.parametrize(("docs", "words"), [
    ([], "found 0"),
    ([{"kind": "Deployment", "metadata": {"name": "a"}, "spec": {"template": {"spec": {}}}},
      {"kind": "Deployment", "metadata": {"name": "b"}, "spec": {"template": {"spec": {}}}}],
     "found 2 (Deployment/a, Deployment/b)"),
    ([{"kind": "Pod", "metadata": {"name": "h"}, "spec": {"hostNetwork": True}}], "nothing would be captured"),
])
def test_from_pod_needs_one_injected_template(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              docs: list[Any], words: str) -> None:
    (tmp_path / "m.yaml").write_text(yaml.safe_dump_all(docs))
    assert main(["--dry-run", "--from-pod", str(tmp_path / "m.yaml")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and words in err
    assert main(["--dry-run", "--from-pod"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_from_pod_through_the_one_parser(tmp_path: Path) -> None:
    from istio_iptables.cli.flags import parse_args

    (tmp_path / "m.yaml").write_text(yaml.safe_dump(deployment({a.INTERCEPTION_MODE: "TPROXY"})))
    settings_ = parse_args(["--from-pod", str(tmp_path / "m.yaml"), "-z", "15007"], {})
    assert settings_.capture.mode == "TPROXY" and settings_.capture.inbound_capture_port == 15007


def test_neither_yaml_nor_inject_on_the_init_path() -> None:
    loaded = modules_after("from istio_iptables.cli.main import main\n"
                           "main(['--dry-run', '--ipv6', 'off', '-i', '*', '-b', '*'])")
    assert [m for m in loaded if m.split(".")[0] == "yaml" or m.startswith("istio_iptables.inject")] == []


def test_values_istio_init_would_refuse_are_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(deployment()))
    values = write_json(tmp_path, "v.json", {"global": {"proxy": {"excludeIPRanges": "*"}}})
    status, _, err = run_pod(capsys, str(tmp_path / "m.yaml"), "--values", values)
    assert status == 2 and len(err.splitlines()) == 1
    assert "Deployment/web" in err and "istio-init would refuse" in err and "-x/--istio-service-exclude-cidr" in err
