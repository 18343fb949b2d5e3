"""The CNI protocol, pure: the request a runtime sends (environment + stdin), the
versions we speak, the result we hand back and the error object.

Facts from the CNI specification (SPEC.md 0.4.0, 1.0.0, 1.1.0):
- the command and its parameters come in CNI_* environment variables, the network
  configuration (one plugin's entry of the conflist, with `cniVersion`, `name`,
  `runtimeConfig` and `prevResult` filled in by the runtime) on stdin;
- CHECK exists from 0.4.0, STATUS and GC from 1.1.0;
- a chained plugin prints `prevResult` (with its own changes, here none) as its ADD
  result, in the configuration's `cniVersion`; between 0.3.x/0.4.0 and 1.x the
  result differs only in `ips[].version` (dropped in 1.0.0) and the interface fields
  1.1.0 added (kept only by 1.x);
- an error is `{"cniVersion", "code", "msg", "details"}` on stdout and a non-zero exit;
  codes 0-99 are the spec's, 100+ the plugin's own.
"""


import json
from collections.abc import Mapping
from typing import Any, NamedTuple

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
# Error codes of the spec ("Error"), and ours (100+).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
NOT_AVAILABLE = 50
APPLY_FAILED = 100
CAPTURE_DRIFTED = 101
# Environment a command cannot do without: the spec's "required environment
# parameters" less CNI_CONTAINERID and CNI_PATH, which the plugin never uses (it keeps
# no per-container state and delegates to no other plugin; the id is only logged).
REQUIRED_ENV = {
    "ADD": ("CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_IFNAME",),
    "STATUS": (),
    "GC": (),
    "VERSION": (),
}
# The first spec version that has the command.
FIRST_VERSION = {"CHECK": (0, 4, 0), "STATUS": (1, 1, 0), "GC": (1, 1, 0)}
# The capability key containerd and CRI-O fill with the pod's annotations.
POD_ANNOTATIONS = "io.kubernetes.cri.pod-annotations"
# Interface fields a 0.3.x/0.4.0 result has (1.1.0 added mtu, socketPath, pciID).
_V0_INTERFACE_FIELDS = ("name", "mac", "sandbox")


class CniError(Exception):
    """A failure reported to the runtime as the spec's error object."""

    def __init__(self, code: int, msg: str, details: str = "", version: str = "") -> None:
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = code
        self.msg = msg
        self.details = details
        self.version = version


class Request(NamedTuple):
    """One invocation: the command, its CNI_* parameters and the configuration."""

    command: str
    version: str
    config: dict[str, Any]
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = {}  # noqa: RUF012  (NamedTuple default, never mutated)

    @property
    def prev_result(self) -> dict[str, Any] | None:
        prev = self.config.get("prevResult")
        return prev if isinstance(prev, dict) else None


def parse_version(text: str) -> tuple[int, int, int]:
    """'1.0.0' -> (1, 0, 0); an empty version is 0.1.0, as libcni reads it."""
    parts = (text or "0.1.0").split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CniError(DECODING_FAILURE, "invalid cniVersion", repr(text))
    return int(parts[0]), int(parts[1]), int(parts[2])


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS: 'K8S_POD_NAMESPACE=ns;K8S_POD_NAME=x' into a dict."""
    out: dict[str, str] = {}
    for item in text.split(";"):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CniError(INVALID_ENVIRONMENT, "invalid CNI_ARGS", f"{item!r} is not KEY=VALUE")
        out[key] = value
    return out


def parse_request(env: Mapping[str, str], stdin: bytes) -> Request:
    """Read and check one invocation; raises CniError with the spec's code."""
    command = env.get("CNI_COMMAND", "")
    if command not in REQUIRED_ENV:
        raise CniError(INVALID_ENVIRONMENT, "invalid CNI_COMMAND",
                       f"{command!r}; expected one of " + ", ".join(REQUIRED_ENV))
    config = _parse_config(stdin, allow_empty=command == "VERSION")
    version = config.get("cniVersion", "")
    if not isinstance(version, str):
        raise CniError(DECODING_FAILURE, "invalid cniVersion", repr(version))
    if command == "VERSION":  # answered whatever the caller speaks: that is its purpose
        return Request(command, version or LATEST_VERSION, config)
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}")
    if parse_version(version) < FIRST_VERSION.get(command, (0, 0, 0)):
        raise CniError(INCOMPATIBLE_VERSION, f"config version does not allow {command}",
                       f"{command} needs cniVersion {'.'.join(map(str, FIRST_VERSION[command]))} or later, "
                       f"config is {version}", version)
    missing = [name for name in REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, "required env variables missing", ", ".join(missing), version)
    try:
        args = parse_cni_args(env.get("CNI_ARGS", ""))
    except CniError as err:
        err.version = version
        raise
    return Request(command, version, config, env.get("CNI_CONTAINERID", ""), env.get("CNI_NETNS", ""),
                   env.get("CNI_IFNAME", ""), args)


def _parse_config(stdin: bytes, *, allow_empty: bool) -> dict[str, Any]:
    if allow_empty and not stdin.strip():
        return {}
    try:
        config = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as err:
        raise CniError(DECODING_FAILURE, "the network configuration on stdin is not JSON", str(err)) from None
    if not isinstance(config, dict):
        raise CniError(DECODING_FAILURE, "the network configuration on stdin is not a JSON object",
                       type(config).__name__)
    return config


def version_result(version: str) -> dict[str, Any]:
    """The VERSION answer."""
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def convert_result(prev: dict[str, Any] | None, version: str) -> dict[str, Any]:
    """`prevResult` unchanged but for the version conversion (an empty result when
    there is none, as for the first plugin of a chain)."""
    if prev is None:
        return {"cniVersion": version}
    result = dict(prev, cniVersion=version)
    old = parse_version(version) < (1, 0, 0)
    if isinstance(result.get("ips"), list):
        result["ips"] = [_convert_ip(ip, old) if isinstance(ip, dict) else ip for ip in result["ips"]]
    if old and isinstance(result.get("interfaces"), list):
        result["interfaces"] = [{k: v for k, v in i.items() if k in _V0_INTERFACE_FIELDS}
                                if isinstance(i, dict) else i for i in result["interfaces"]]
    return result


def _convert_ip(ip: dict[str, Any], old: bool) -> dict[str, Any]:
    if not old:
        return {k: v for k, v in ip.items() if k != "version"}
    if "version" in ip:
        return ip
    return {"version": "6" if ":" in str(ip.get("address", "")) else "4", **ip}


def error_object(err: CniError, version: str) -> dict[str, Any]:
    """The spec's error object."""
    return {"cniVersion": err.version or version, "code": err.code, "msg": err.msg, "details": err.details}


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=2) + "\n"
