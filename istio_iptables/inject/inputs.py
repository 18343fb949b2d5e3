"""Files in, injections out: the one path `istio-iptables pod` and `--from-pod` share.

A manifest (or `-` for stdin), an optional values file and an optional mesh-config
file → for each pod template, in document order, what the injector adds.  Absent
files mean Istio's defaults.  The mesh config comes from --mesh-config when given,
else from the values' own `meshConfig` (as Helm and IstioOperator carry it).
"""

from collections.abc import Mapping
from typing import Any

from istio_iptables.inject.manifest import (
    ManifestError,
    PodTemplate,
    load_documents,
    load_mapping_file,
    load_yaml,
    pod_templates,
    read_text,
)
from istio_iptables.inject.template import Injection, render
from istio_iptables.inject.values import (
    InjectorValues,
    MeshDefaults,
    injector_values,
    mesh_defaults,
    unwrap_mesh,
    unwrap_values,
)
from istio_iptables.model.config import ConfigError


def injector_inputs(values_path: str | None, mesh_path: str | None) -> tuple[InjectorValues, MeshDefaults]:
    """The values and mesh config from their files, with Istio's defaults."""
    values_doc: Mapping[str, Any] | None = None
    mesh_source = "the mesh config"
    mesh_doc: Mapping[str, Any] | None = None
    if values_path is not None:
        values_doc, mesh_doc = unwrap_values(load_mapping_file(values_path))
        mesh_source = values_path
    if mesh_path is not None:
        doc = load_mapping_file(mesh_path)
        if doc.get("kind") == "ConfigMap":  # the `istio` ConfigMap: data.mesh holds YAML text
            text = (doc.get("data") or {}).get("mesh")
            if not isinstance(text, str):
                raise ManifestError(mesh_path, "a ConfigMap without data.mesh")
            doc = load_yaml(text, f"{mesh_path} data.mesh") or {}
        if not isinstance(doc, Mapping):
            raise ManifestError(mesh_path, "data.mesh is not a mapping")
        mesh_doc = unwrap_mesh(doc)
        mesh_source = mesh_path
    if mesh_doc is not None and not isinstance(mesh_doc, Mapping):
        raise ManifestError(values_path or "the values", "meshConfig is not a mapping")
    try:
        values = injector_values(values_doc)
    except ConfigError as err:
        raise ManifestError(values_path or "the values", str(err)) from None
    try:
        return values, mesh_defaults(mesh_doc)
    except ConfigError as err:
        raise ManifestError(mesh_source, str(err)) from None


def injections(path: str, values_path: str | None = None,
               mesh_path: str | None = None) -> list[tuple[PodTemplate, Injection]]:
    """Each pod template of the manifest with what the injector adds to it."""
    values, mesh = injector_inputs(values_path, mesh_path)
    templates = pod_templates(load_documents(read_text(path), path), path)
    found = []
    for template in templates:
        try:
            found.append((template, render(template, values, mesh)))
        except ConfigError as err:  # an annotation the injector refuses: say which template
            raise ManifestError(f"{path}: {template.where}", str(err)) from None
    return found
