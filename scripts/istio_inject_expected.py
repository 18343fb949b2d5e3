"""Regenerate tests/testdata/istio-inject/ from an Istio checkout: Istio's own injection
test inputs (pkg/kube/inject/testdata/inject/*.yaml, copied verbatim) and, from its
golden outputs (*.injected), the istio-init / istio-validation container each pod
template gets (expected.json), with the values and mesh config each case uses in
pkg/kube/inject/inject_test.go TestInjection.

    python scripts/istio_inject_expected.py /path/to/istio

The data files are Istio's (Apache-2.0); see tests/testdata/istio-inject/NOTICE.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from istio_iptables.inject.manifest import load_documents, pod_templates, read_text

OUT = Path(__file__).resolve().parent.parent / "tests" / "testdata" / "istio-inject"
CNI = {"pilot": {"cni": {"enabled": True}}}          # components.cni.enabled=true
TPROXY = {"defaultConfig": {"interceptionMode": "TPROXY"}}
STATUS_123 = {"global": {"proxy": {"statusPort": 123}}}
# inject_test.go cases whose settings change istio-init: golden -> (input, values, mesh).
SETTINGS: dict[str, tuple[str, Any, Any]] = {
    "hello.yaml.cni.injected": ("hello.yaml", CNI, None),
    "hello-tproxy.yaml.injected": ("hello.yaml", None, TPROXY),
    "traffic-params.yaml.injected": ("traffic-params.yaml", {"global": {"proxy": {
        "includeIPRanges": "127.0.0.1/24,10.96.0.1/24", "excludeIPRanges": "10.96.0.2/24,10.96.0.3/24",
        "excludeInboundPorts": "4,5,6", "statusPort": 0}}}, None),
    "status_params.yaml.injected": ("status_params.yaml", STATUS_123, None),
    "kubevirtInterfaces.yaml.injected": ("kubevirtInterfaces.yaml", STATUS_123, None),
    "reroute-virtual-interfaces.yaml.injected": ("reroute-virtual-interfaces.yaml", STATUS_123, None),
    "hello-cncf-networks.yaml.injected": ("hello.yaml", CNI, None),
    "hello-existing-cncf-networks.yaml.injected": ("hello-existing-cncf-networks.yaml", CNI, None),
    "hello-existing-cncf-networks-json.yaml.injected": ("hello-existing-cncf-networks-json.yaml", CNI, None),
    "traffic-annotations.yaml.injected": ("traffic-annotations.yaml", None, {"defaultConfig": {"proxyMetadata": {
        "ISTIO_META_TLS_CLIENT_KEY": "/etc/identity/client/keys/client-key.pem"}}}),
    "proxy-override-runas.yaml.cni.injected": ("proxy-override-runas.yaml", CNI, None),
    "proxy-override-runas.yaml.tproxy.injected": ("proxy-override-runas.yaml", None, TPROXY),
}
# Goldens from another input whose settings (image names, pull policy, native sidecars,
# FIPS, hold-application, IstioOperator files) do not touch istio-init.
SAME_INIT = {
    "hello-always.yaml.injected": "hello.yaml", "hello-never.yaml.injected": "hello.yaml",
    "hello-old-version.yaml.injected": "hello.yaml", "hello.yaml.proxyImageName.injected": "hello.yaml",
    "hello.yaml.proxyInitImageName.injected": "hello.yaml", "hello-fips-140-3.yaml.injected": "hello.yaml",
    "hello-image-secrets-in-values.yaml.injected": "hello.yaml",
    "hello-multiple-image-secrets.yaml.injected": "hello-image-pull-secret.yaml",
    "hello-template-in-values.yaml.injected": "hello.yaml", "hello-mount-mtls-certs.yaml.injected": "hello.yaml",
    "hello.proxyHoldsApplication.yaml.injected": "hello.yaml",
    "hello-probes.proxyHoldsApplication.yaml.injected": "hello-probes.yaml",
    "cronjob-old-version.yaml.injected": "cronjob.yaml", "daemonset-old-version.yaml.injected": "daemonset.yaml",
    "job-old-version.yaml.injected": "job.yaml", "pod-old-version.yaml.injected": "pod.yaml",
    "replicaset-old-version.yaml.injected": "replicaset.yaml",
    "statefulset-old-version.yaml.injected": "statefulset.yaml",
    "native-sidecar-old-version.yaml.injected": "native-sidecar.yaml",
    "proxy-override-args-native.yaml.injected": "proxy-override-args.yaml",
}
# OpenShift: -u comes from the namespace's UID range annotation, which a manifest lacks.
SKIPPED = {"hello-openshift.yaml.injected", "hello-openshift-custom-injection.yaml.injected",
           "hello-openshift-tproxy.yaml.injected"}
INIT_NAMES = ("istio-init", "istio-validation")


def init_containers(path: Path) -> list[Any]:
    found = []
    for template in pod_templates(load_documents(read_text(str(path)), str(path)), str(path)):
        init = [c for c in template.spec.get("initContainers") or [] if c.get("name") in INIT_NAMES]
        found.append(None if not init else {
            "name": init[0]["name"], "args": init[0].get("args") or [],
            "env": [{"name": e["name"], "value": e.get("value", "")} for e in init[0].get("env") or []]})
    return found


def main(istio: str) -> None:
    data = Path(istio) / "pkg" / "kube" / "inject" / "testdata" / "inject"
    commit = subprocess.run(["git", "-C", istio, "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    OUT.mkdir(parents=True, exist_ok=True)
    for copied in sorted(data.glob("*.yaml")):
        shutil.copyfile(copied, OUT / copied.name)
    cases: dict[str, Any] = {}
    for golden in sorted(data.glob("*.injected")):
        name = golden.name
        if name in SKIPPED:
            continue
        if name in SETTINGS:
            source, values, mesh = SETTINGS[name]
        else:
            source, values, mesh = SAME_INIT.get(name, name.removesuffix(".injected")), None, None
        cases[name] = {"input": source, "values": values, "mesh": mesh, "expected": init_containers(golden)}
    errors = {p.name: p.name.removeprefix("traffic-annotations-bad-").removesuffix(".yaml")
              for p in sorted(data.glob("traffic-annotations-bad-*.yaml"))}
    doc = {"istio_commit": commit, "cases": cases, "refused": errors}
    (OUT / "expected.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"{len(cases)} cases, {len(errors)} refusals from istio {commit}")


if __name__ == "__main__":
    main(sys.argv[1])
