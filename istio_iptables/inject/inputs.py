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
    """The values and mesh config from their files, with Istio's defaults.  A field the
    injector could not use raises ManifestError naming the file and the field."""
    values_doc: Mapping[str, Any] | None = None
    mesh_doc: Mapping[str, Any] | None = None
    mesh_source = "the mesh config"
    if values_path is not None:
        try:
            values_doc, mesh_doc = unwrap_values(load_mapping_file(values_path))
            values = injector_values(values_doc)
        except ManifestError:
            raise
        except ConfigError as err:
            raise ManifestError(values_path, str(err)) from None
        mesh_source = values_path
    else:
        values = injector_values(None)
    if mesh_path is not None:
        mesh_doc = _mesh_document(mesh_path)
        mesh_source = mesh_path
    if mesh_doc is not None and not isinstance(mesh_doc, Mapping):
        raise ManifestError(mesh_source, "meshConfig is not a mapping")
    try:
        return values, mesh_defaults(mesh_doc)
    except ConfigError as err:
        raise ManifestError(mesh_source, str(err)) from None


def _mesh_document(path: str) -> Mapping[str, Any]:
    doc = load_mapping_file(path)
    if doc.get("kind") == "ConfigMap":  # the `istio` ConfigMap: data.mesh holds YAML text
        text = (doc.get("data") or {}).get("mesh")
        if not isinstance(text, str):
            raise ManifestError(path, "a ConfigMap without data.mesh")
        doc = load_yaml(text, f"{path} data.mesh") or {}
        if not isinstance(doc, Mapping):
            raise ManifestError(path, "data.mesh is not a mapping")
    return unwrap_mesh(doc)


def injections(path: str, values_path: str | None = None,
               mesh_path: str | None = None) -> list[tuple[PodTemplate, Injection]]:
    """Each pod template of the manifest with what the injector adds to it."""
    values, mesh = injector_inputs(values_path, mesh_path)
    templates = pod_templates(load_documents(read_text(path), path), path)
    from istio_iptables.cli.flags import parse_args

    found = []
    for template in templates:
        try:
            injection = render(template, values, mesh)
        except ConfigError as err:  # an annotation the injector refuses: say which template
            raise ManifestError(f"{path}: {template.where}", str(err)) from None
        if injection.container is not None and not injection.own_args:
            # Values and mesh config are not validated by the injector; the init container
            # would fail on them.  Say so now, through the one parser.  (A pod's own
            # istio-init args are shown as the injector copies them, whatever they are.)
            try:
                parse_args(injection.container.args, dict(injection.container.env))
            except ConfigError as err:
                raise ManifestError(f"{path}: {template.where}",
                                    f"istio-init would refuse the args the injector writes: {err}") from None
        found.append((template, injection))
    return found
