"""The chained CNI plugin: ADD, DEL, CHECK, STATUS, GC and VERSION over the same
parser, planner and applier as the `istio-iptables` command.

The conflist entry's `"capture"` list is parsed by cli.flags.parse_args, exactly as a
command line; pod annotations (runtimeConfig `io.kubernetes.cri.pod-annotations`)
add flags through the mapping the `pod` command uses; ADD and DEL hand the result to
apply.run.run_apply inside CNI_NETNS, so a retried ADD is the applier's no-op re-run
and DEL is its --cleanup-only.  The plugin owns only the protocol around that: which
errors get which code, what is printed, and which pods pass through untouched.

Entry keys besides `type` (all optional):
  capture            JSON list of istio-iptables flags (default: none, Istio's defaults)
  captureEnv         object: the environment those flags are read with (Istio's
                     env-only settings, e.g. ISTIO_OUTBOUND_OWNER_GROUPS); the node's
                     own environment is never read
  excludeNamespaces  list of Kubernetes namespaces (CNI_ARGS K8S_POD_NAMESPACE) whose
                     pods pass through untouched
  logFile            append log lines there instead of stderr
Nothing but the result or the error object is ever written to stdout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from istio_iptables import logs as log
from istio_iptables.cli.flags import Settings, parse_args
from istio_iptables.cni import protocol as p
from istio_iptables.cni.protocol import CniError, Request
from istio_iptables.model.config import ConfigError

# Flags the runtime decides, not the conflist: where (CNI_NETNS), and what (the command).
_RUNTIME_OWNED = (("network_namespace", "--network-namespace", "CNI_NETNS"),
                  ("dry_run", "--dry-run", "nothing else: a plugin's stdout carries the result"),
                  ("cleanup_only", "--cleanup-only", "CNI_COMMAND=DEL"))
# The agent's ports that Istio's CNI plugin never captures inbound, whatever the annotations say.
PROXY_EXCLUDED_PORTS = "15020,15021,15090"
# Where plugins' PATH points when a runtime execs them with an empty environment.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Result = dict[str, Any] | None


def run(env: Mapping[str, str], stdin: bytes, out: TextIO) -> int:
    """One invocation: the result (or the error object) goes to `out`; returns the
    exit status (0 success, 1 error)."""
    version = p.LATEST_VERSION
    command = env.get("CNI_COMMAND", "")
    try:
        request = p.parse_request(env, stdin)
        version = request.version
        _log_to(request.config)
        if request.command != "VERSION":
            log.info("CNI %s container=%s netns=%s ifname=%s cniVersion=%s", request.command,
                     request.container_id or "-", request.netns or "-", request.ifname or "-", version)
        result = COMMANDS[request.command](request)
    except CniError as err:
        log.error("CNI %s failed (code %d): %s", command or "-", err.code, err)
        out.write(p.dumps(p.error_object(err, version)))
        return 1
    except Exception as err:  # a runtime needs the error object, never a traceback
        error = CniError(p.APPLY_FAILED, "unexpected error", f"{type(err).__name__}: {err}")
        log.error("CNI %s failed: %s", command or "-", error)
        out.write(p.dumps(p.error_object(error, version)))
        return 1
    if result is not None:
        out.write(p.dumps(result))
    return 0


def _add(request: Request) -> Result:
    argv = _pod_argv(request)
    if argv is not None:
        settings = capture_settings(argv, _capture_env(request.config))
        _enter(request.netns, missing_ok=False)
        _apply(settings, cleanup=False)
    return p.convert_result(request.prev_result, request.version)


def _del(request: Request) -> Result:
    # DEL is best effort: with flags it cannot read, cleanup still removes every ISTIO_
    # chain and every jump into one (only rules in built-in chains need the flags).
    try:
        argv = _pod_argv(request)
        if argv is None:
            return None
        settings = capture_settings(argv, _capture_env(request.config))
    except CniError as err:
        log.warning("DEL with the default flags: %s", err)
        settings = parse_args([], {})
    if not _enter(request.netns, missing_ok=True):
        return None
    _apply(settings, cleanup=True)
    return None


def _check(request: Request) -> Result:
    if request.prev_result is None:
        raise CniError(p.INVALID_CONFIG, "required prevResult missing", "CHECK needs the result of the ADD")
    argv = _pod_argv(request)
    if argv is None:
        return None
    settings = capture_settings(argv, _capture_env(request.config))
    _enter(request.netns, missing_ok=False)
    try:
        from istio_iptables.apply.check import differences

        problems = differences(settings.capture, settings.run)
    except Exception as err:
        raise CniError(p.CAPTURE_DRIFTED, "cannot read the capture", str(err)) from None
    if problems:
        raise CniError(p.CAPTURE_DRIFTED, "the namespace does not hold the planned capture", "; ".join(problems))
    log.info("CHECK: the namespace holds exactly the planned capture")
    return None


def _status(request: Request) -> Result:
    try:
        settings = capture_settings(_base_argv(request.config), _capture_env(request.config))
    except CniError as err:
        raise CniError(p.NOT_AVAILABLE, "every ADD would fail", f"{err.msg}: {err.details}") from None
    from istio_iptables.kernel.iptables_restore import which

    needed = ["nft"] if settings.run.native_nftables else \
        ["iptables-restore", "iptables-nft-restore", "iptables-legacy-restore"]
    if not any(which(program) for program in needed):
        raise CniError(p.NOT_AVAILABLE, "every ADD would fail", " or ".join(needed) + " not found on PATH")
    return None


def _gc(request: Request) -> Result:
    # Everything we write lives inside the pod's namespace and goes with it: there are
    # no leftovers on the node to collect.
    log.info("GC: nothing to collect (the plugin keeps no state outside pod namespaces)")
    return None


def _version(request: Request) -> Result:
    return p.version_result(request.version)


COMMANDS: dict[str, Callable[[Request], Result]] = {
    "ADD": _add, "DEL": _del, "CHECK": _check, "STATUS": _status, "GC": _gc, "VERSION": _version,
}


def capture_settings(argv: list[str], env: Mapping[str, str]) -> Settings:
    """The flags through the one parser; flags the runtime owns are refused."""
    try:
        settings = parse_args(argv, env)
    except ConfigError as err:
        raise CniError(p.INVALID_CONFIG, 'invalid "capture"', str(err)) from None
    for field, flag, owner in _RUNTIME_OWNED:
        if getattr(settings.run, field):
            raise CniError(p.INVALID_CONFIG, 'invalid "capture"', f"{flag} is not accepted here ({owner} decides)")
    return settings


def _base_argv(config: Mapping[str, Any]) -> list[str]:
    capture = config.get("capture", [])
    if not isinstance(capture, list) or not all(isinstance(arg, str) for arg in capture):
        raise CniError(p.INVALID_CONFIG, 'invalid "capture"',
                       f"{capture!r}: expected a JSON list of istio-iptables flags (strings)")
    return capture


def _capture_env(config: Mapping[str, Any]) -> dict[str, str]:
    env = config.get("captureEnv", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise CniError(p.INVALID_CONFIG, 'invalid "captureEnv"', f"{env!r}: expected an object of strings")
    return env


def _pod_argv(request: Request) -> list[str] | None:
    """The flags for this pod: the conflist's, then its annotations'; None when the
    pod passes through untouched."""
    argv = _base_argv(request.config)
    namespace = request.args.get("K8S_POD_NAMESPACE", "")
    excluded = request.config.get("excludeNamespaces", [])
    if not isinstance(excluded, list) or not all(isinstance(n, str) for n in excluded):
        raise CniError(p.INVALID_CONFIG, 'invalid "excludeNamespaces"', f"{excluded!r}: expected a list of strings")
    if namespace and namespace in excluded:
        log.info("pass-through: namespace %s is in excludeNamespaces", namespace)
        return None
    annotations = _annotations(request.config)
    if not annotations:
        return argv
    from istio_iptables.inject.annotations import annotation_flags, injection_disabled

    reason = injection_disabled(annotations)
    if reason is not None:
        log.info("pass-through: %s", reason)
        return None
    try:
        extra = _keep_proxy_ports_excluded(annotation_flags(annotations))
    except ConfigError as err:
        raise CniError(p.INVALID_CONFIG, "invalid pod annotation", str(err)) from None
    if extra:
        log.info("flags from pod annotations: %s", " ".join(extra))
    return [*argv, *extra]


def _keep_proxy_ports_excluded(flags: list[str]) -> list[str]:
    """Istio's CNI plugin always adds the agent's ports to an excludeInboundPorts
    annotation (cni/pkg/plugin/sidecar_redirect.go), as the injector's template does:
    the annotation's -d would otherwise replace the conflist's and capture them."""
    out = list(flags)
    for index in range(len(out) - 1):
        if out[index] == "-d":
            ports = [port.strip() for port in f"{out[index + 1]},{PROXY_EXCLUDED_PORTS}".split(",") if port.strip()]
            out[index + 1] = ",".join(dict.fromkeys(ports))
    return out


def _annotations(config: Mapping[str, Any]) -> dict[str, str]:
    runtime = config.get("runtimeConfig", {})
    annotations = runtime.get(p.POD_ANNOTATIONS, {}) if isinstance(runtime, dict) else {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise CniError(p.INVALID_CONFIG, f'invalid runtimeConfig "{p.POD_ANNOTATIONS}"',
                       f"{annotations!r}: expected an object of strings")
    return annotations


def _enter(netns: str, *, missing_ok: bool) -> bool:
    """Move into the pod's namespace; False (DEL) when it is already gone."""
    from istio_iptables.kernel.netns import NetnsError, enter

    if not netns or not os.path.exists(netns):
        if missing_ok:
            log.info("network namespace %s is gone: nothing to remove", netns or "(none given)")
            return False
        raise CniError(p.UNKNOWN_CONTAINER, "the network namespace does not exist", f"CNI_NETNS={netns!r}")
    try:
        enter(netns)
    except NetnsError as err:
        if missing_ok:  # e.g. a bind mount already unmounted: the namespace is gone
            log.info("%s: nothing to remove", err)
            return False
        raise CniError(p.UNKNOWN_CONTAINER, "cannot enter the network namespace", str(err)) from None
    return True


def _apply(settings: Settings, *, cleanup: bool) -> None:
    """The one applier, in the namespace this thread has entered."""
    from istio_iptables.apply.run import run_apply
    from istio_iptables.model.hostfacts import HostFactsError

    log.setup_logging(settings.run.log_format)
    run = settings.run._replace(network_namespace="", cleanup_only=cleanup)
    try:
        status = run_apply(settings.capture, run)
    except (ConfigError, HostFactsError) as err:
        raise CniError(p.INVALID_CONFIG, 'invalid "capture"', str(err)) from None
    if status != 0:
        what = "removing the capture failed" if cleanup else "applying the capture failed"
        raise CniError(p.APPLY_FAILED, what, log.last_error())


def _log_to(config: Mapping[str, Any]) -> None:
    path = config.get("logFile")
    if not path:
        return
    if not isinstance(path, str):
        raise CniError(p.INVALID_CONFIG, 'invalid "logFile"', f"{path!r}: expected a path")
    try:
        sys.stderr = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115  (open until exit)
    except OSError as err:
        log.warning("cannot open logFile %s (%s); logging to stderr", path, err.strerror)
