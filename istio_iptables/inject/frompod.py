"""`--from-pod FILE`: take the capture flags (and env) from a manifest's pod template.

The flags are the init container's args as `istio-iptables pod` computes them, without
the agent word and without what only concerns that container's own run (its log
flags, --run-validation/--skip-rule-apply of Istio CNI's validation container,
--force-apply), so the main command, explain and verify capture exactly what the pod
would.  The env is what the injector sets on the init container (the proxy config's
proxyMetadata), which our one parser reads like Istio does (e.g.
ISTIO_META_DNS_CAPTURE turns on DNS capture).
"""

from collections.abc import Mapping, Sequence

from istio_iptables.inject.inputs import injections
from istio_iptables.inject.manifest import ManifestError

FROM_POD = "--from-pod"
# Args of the init container that say how it runs, not what it captures.
_RUN_ONLY = frozenset({"--run-validation", "--skip-rule-apply", "--force-apply", "--log_as_json"})


def capture_from_pod(path: str, values: str | None = None,
                     mesh_config: str | None = None) -> tuple[list[str], dict[str, str]]:
    """(capture flags, env the injector would set) for the manifest's single pod
    template.  Raises ManifestError when there is no template, several, or nothing
    would be injected (the reason in words), ConfigError for a refused annotation."""
    found = injections(path, values, mesh_config)
    if len(found) != 1:
        where = ", ".join(template.where for template, _ in found) or "none"
        raise ManifestError(path, f"--from-pod needs exactly one pod template, found {len(found)} ({where})")
    template, injection = found[0]
    if injection.container is None:
        raise ManifestError(path, f"{template.where}: nothing would be captured: {injection.reason}")
    args = injection.container.args[1:]  # without the agent word
    flags = [arg for arg in args if arg not in _RUN_ONLY and not arg.startswith("--log_")]
    return flags, dict(injection.container.env)


def expand_from_pod(argv: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """argv with `--from-pod FILE` replaced: the pod's flags first, so explicit flags
    (later) win; the pod's env under the caller's, so an explicit variable wins too."""
    rest: list[str] = []
    path: str | None = None
    items = iter(argv)
    for arg in items:
        if arg == FROM_POD:
            path = next(items, None)
            if path is None:
                raise ManifestError(FROM_POD, "needs a manifest file (or - for stdin)")
        elif arg.startswith(FROM_POD + "="):
            path = arg.partition("=")[2]
        else:
            rest.append(arg)
    if path is None:
        return list(argv), dict(env)
    flags, pod_env = capture_from_pod(path)
    return flags + rest, {**pod_env, **env}
