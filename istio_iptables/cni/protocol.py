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

import _json  # json's C half: the scanner and string escaper json.loads/dumps use
from collections.abc import Mapping
from typing import Any

from istio_iptables.model.record import Record

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


class Request(Record):
    """One invocation: the command, its CNI_* parameters and the configuration."""

    command: str
    version: str
    config: dict[str, Any]
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = {}  # noqa: RUF012  (a record field default, never mutated)

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
        config = loads(stdin)
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


# Why not `import json`: it compiles six regular expressions at import, ~4.4 M
# instructions (2.4%) of every CNI ADD, a per-pod cost.  loads and dumps below give
# json.loads(stdin) and json.dumps(obj, indent=2) exactly, through the same C code
# (_json's scanner and string escaper), for what a runtime sends and what we print;
# anything else (other encodings, errors, types JSON does not have) goes to json
# itself, so its results and error messages stay json's own.
_JSON_SPACE = " \t\n\r"
_INF = float("inf")


class _ScanSettings:
    """What the C scanner reads from json.decoder.JSONDecoder(): its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": -_INF, "Infinity": _INF, "NaN": float("nan")}.__getitem__


_scan = _json.make_scanner(_ScanSettings)  # type: ignore[arg-type]  # a duck-typed context, as json's


def loads(data: bytes) -> Any:
    """json.loads(data).  Plain UTF-8 (json's reading unless a BOM or NUL bytes say
    otherwise, and then this decode or the scan fails) is scanned here; everything
    else, and every error, is json.loads's."""
    try:
        text = data.decode()
        value, end = _scan(text, len(text) - len(text.lstrip(_JSON_SPACE)))
        if not text[end:].strip(_JSON_SPACE):
            return value
    except Exception:  # json.loads below says what is wrong, in its words
        pass
    import json

    return json.loads(data)


def dumps(obj: dict[str, Any]) -> str:
    """json.dumps(obj, indent=2) plus a newline."""
    out: list[str] = []
    try:
        if _encode(obj, "\n", out):
            return "".join(out) + "\n"
    except RecursionError:  # json says why (a cycle, or too deep)
        pass
    import json

    return json.dumps(obj, indent=2) + "\n"


def _encode(value: Any, newline: str, out: list[str]) -> bool:
    """Append `value` as json.dumps(indent=2) writes it, `newline` being a line break
    and the current indentation; False for any type but JSON's own (exact dict, list,
    str, int, float, bool, None; json.dumps then writes the whole object)."""
    kind = type(value)
    if kind is str:
        out.append(_json.encode_basestring_ascii(value))
    elif value is None or value is True or value is False:
        out.append("null" if value is None else "true" if value else "false")
    elif kind is int:
        out.append(int.__repr__(value))
    elif kind is float:
        out.append("NaN" if value != value else "Infinity" if value == _INF else "-Infinity" if value == -_INF
                   else float.__repr__(value))
    elif (kind is list or kind is dict) and not value:
        out.append("[]" if kind is list else "{}")
    elif kind is list:
        inner = newline + "  "
        out.append("[" + inner)
        for index, item in enumerate(value):
            if index:
                out.append("," + inner)
            if not _encode(item, inner, out):
                return False
        out.append(newline + "]")
    elif kind is dict:
        inner = newline + "  "
        out.append("{" + inner)
        for index, (key, item) in enumerate(value.items()):
            if type(key) is not str:
                return False
            out.append(("," + inner if index else "") + _json.encode_basestring_ascii(key) + ": ")
            if not _encode(item, inner, out):
                return False
        out.append(newline + "}")
    else:
        return False
    return True
