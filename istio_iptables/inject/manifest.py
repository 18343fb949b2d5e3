"""Kubernetes manifests → pod templates, the way `istioctl kube-inject` finds them.

pkg/kube/inject/inject.go IntoObject: a Pod is its own template; a CronJob's is
spec.jobTemplate.spec.template; every other workload's (Deployment, StatefulSet,
DaemonSet, ReplicaSet, Job, ReplicationController, ...) is spec.template; a List's
items are walked in order.  Objects without a pod template (Services, ConfigMaps) are
passed over, as kube-inject passes them through untouched.  YAML is read with PyYAML's
C loader where present; this module is imported only by the pod paths.
"""

import sys
from collections.abc import Mapping
from typing import Any

import yaml

from istio_iptables.inject.values import dig
from istio_iptables.model.config import ConfigError
from istio_iptables.model.record import Record

# libyaml's loader is several times faster; PyYAML built without libyaml lacks it.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ManifestError(ConfigError):
    """A file that cannot be read or is not the YAML we need; names the file.  A
    ConfigError, so every entry point reports it as bad input (one line, exit 2)."""

    def __init__(self, source: str, reason: str) -> None:  # ConfigError's own __init__ needs a value; this has none
        self.flag, self.value, self.reason = source, "", reason
        ValueError.__init__(self, f"{source}: {reason}")


class PodTemplate(Record):
    """One pod template: where it came from (e.g. "Deployment/web") and its parts."""

    where: str
    metadata: Mapping[str, Any]
    spec: Mapping[str, Any]

    @property
    def annotations(self) -> dict[str, str]:
        return _string_map(self.metadata.get("annotations"))

    @property
    def labels(self) -> dict[str, str]:
        return _string_map(self.metadata.get("labels"))


def _string_map(raw: object) -> dict[str, str]:
    # Kubernetes annotations and labels are strings; YAML may have typed an unquoted
    # `true` or `8080`, which the API server would refuse, so print them as written.
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): v if isinstance(v, str) else _yaml_scalar(v) for k, v in raw.items()}


def _yaml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def read_text(path: str) -> str:
    """A file's text, or stdin for `-`."""
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(path, getattr(err, "strerror", None) or str(err)) from None


def load_documents(text: str, source: str) -> list[Any]:
    """Every YAML document in `text` (JSON is YAML too); empty documents dropped."""
    try:
        return [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ManifestError(source, f"not valid YAML{where}: {' '.join(str(problem).split())}") from None


def load_yaml(text: str, source: str) -> Any:
    """A single YAML value (for an annotation's or a ConfigMap's embedded YAML)."""
    docs = load_documents(text, source)
    if len(docs) > 1:
        raise ManifestError(source, "expected one YAML document")
    return docs[0] if docs else None


def load_mapping_file(path: str) -> Mapping[str, Any]:
    """A values or mesh-config file: one YAML/JSON mapping."""
    docs = load_documents(read_text(path), path)
    if len(docs) != 1 or not isinstance(docs[0], Mapping):
        raise ManifestError(path, "expected one YAML or JSON mapping")
    return docs[0]


def pod_templates(docs: list[Any], source: str) -> list[PodTemplate]:
    """The pod templates of these documents, in document order."""
    found: list[PodTemplate] = []
    for doc in docs:
        _collect(doc, source, found)
    return found


def _collect(obj: Any, source: str, found: list[PodTemplate]) -> None:
    if not isinstance(obj, Mapping):
        raise ManifestError(source, f"expected Kubernetes objects, found {type(obj).__name__}")
    kind = str(obj.get("kind") or "")
    if kind == "List" or (kind.endswith("List") and isinstance(obj.get("items"), list)):
        for item in obj.get("items") or []:
            _collect(item, source, found)
        return
    name = str((obj.get("metadata") or {}).get("name") or (obj.get("metadata") or {}).get("generateName") or "")
    where = f"{kind or '?'}/{name}" if name else kind or "?"
    if kind == "Pod":
        template: Any = obj
    elif kind == "CronJob":
        template = dig(obj, "spec", "jobTemplate", "spec", "template")
    else:
        template = dig(obj, "spec", "template")
        if template is None:
            return  # no pod template: a Service, a ConfigMap, ...
    if not isinstance(template, Mapping) or not isinstance(template.get("spec") or {}, Mapping):
        raise ManifestError(source, f"{where}: the pod template is not a mapping")
    metadata = template.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise ManifestError(source, f"{where}: metadata is not a mapping")
    found.append(PodTemplate(where, metadata, template.get("spec") or {}))

