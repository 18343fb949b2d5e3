"""Put the plugin on a node, or take it off: `istio-iptables-cni install|uninstall`.

Chaining works as Istio's install-cni does it: our entry is appended to the
`plugins` of an existing conflist (the primary network's, e.g. the bridge or the
cluster CNI), replacing an entry of ours already there, so the runtime runs us after
the interface exists.  Without --network the conflist is the first *.conflist in
lexical order, the one runtimes pick.  The conflist is rewritten atomically (temp
file in the same directory, fsync, rename), so a runtime never reads half a file.

The executable the runtime runs (its `type`, looked up in its plugin directories) is
a small launcher: a Python script whose #! names this interpreter by absolute path,
because runtimes exec plugins with a minimal environment (no venv on PATH).
Both commands are idempotent.  Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, NoReturn

from istio_iptables.cni.protocol import INVALID_CONFIG, POD_ANNOTATIONS, CniError

PLUGIN_TYPE = "istio-iptables-cni"
PROG = "istio-iptables-cni"
# Istio's standard sidecar profile (what the injector passes to istio-init).
DEFAULT_CAPTURE = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
                   "-d", "15090,15021,15020"]
LAUNCHER_MARK = "# written by `istio-iptables-cni install`; `istio-iptables-cni uninstall` removes it"
EXIT_FAILED = 1
EXIT_USAGE = 2


class InstallError(RuntimeError):
    """The node's files are not as expected (no conflist, not JSON, a foreign file)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, like every other bad input
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Chain istio-iptables-cni after a node's primary CNI network.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, text in (("install", "install the plugin and chain it into the conflist"),
                       ("uninstall", "remove our conflist entry and the plugin")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--bin-dir", required=True, help="a plugin directory of the runtime (e.g. /opt/cni/bin)")
        sub.add_argument("--conf-dir", required=True, help="the runtime's conflist directory (e.g. /etc/cni/net.d)")
        sub.add_argument("--network", help='the conflist whose "name" is NAME (default: the first *.conflist; '
                                           "uninstall: every conflist holding our entry)")
        if name == "install":
            sub.add_argument("--capture", default=json.dumps(DEFAULT_CAPTURE),
                             help='JSON list of istio-iptables flags for the "capture" key '
                                  "(default: Istio's standard sidecar profile)")
            sub.add_argument("--capture-env", default="{}", help='JSON object for the "captureEnv" key')
            sub.add_argument("--exclude-namespaces", default="",
                             help="comma list of Kubernetes namespaces whose pods pass through untouched")
            sub.add_argument("--log-file", default="", help="where the plugin appends its log (default: stderr)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        if args.command == "install":
            entry = _entry(args)
            _install(args.bin_dir, args.conf_dir, args.network, entry)
        else:
            _uninstall(args.bin_dir, args.conf_dir, args.network)
    except CniError as err:
        sys.stderr.write(f"{PROG} {args.command}: error: {err.msg}: {err.details}\n")
        return EXIT_USAGE
    except (InstallError, OSError) as err:
        sys.stderr.write(f"{PROG} {args.command}: error: {err}\n")
        return EXIT_FAILED
    return 0


def _entry(args: argparse.Namespace) -> dict[str, Any]:
    """Our conflist entry, validated by the plugin's own parser before anything is written."""
    from istio_iptables.cni.plugin import capture_settings

    capture = _json_arg("--capture", args.capture, list)
    env = _json_arg("--capture-env", args.capture_env, dict)
    if not all(isinstance(a, str) for a in capture):
        raise CniError(INVALID_CONFIG, "invalid --capture", f"{args.capture}: expected a JSON list of strings")
    if not all(isinstance(v, str) for v in env.values()):
        raise CniError(INVALID_CONFIG, "invalid --capture-env",
                       f"{args.capture_env}: expected a JSON object of strings")
    capture_settings(capture, env)
    entry: dict[str, Any] = {"type": PLUGIN_TYPE, "capture": capture,
                             "capabilities": {POD_ANNOTATIONS: True}}
    if env:
        entry["captureEnv"] = env
    namespaces = [n.strip() for n in args.exclude_namespaces.split(",") if n.strip()]
    if namespaces:
        entry["excludeNamespaces"] = namespaces
    if args.log_file:
        entry["logFile"] = os.path.abspath(args.log_file)
    return entry


def _json_arg(flag: str, text: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise CniError(INVALID_CONFIG, f"invalid {flag}", f"{text!r} is not JSON ({err})") from None
    if not isinstance(value, kind):
        expected = "list" if kind is list else "object"
        raise CniError(INVALID_CONFIG, f"invalid {flag}", f"{text!r}: expected a JSON {expected}")
    return value


def _install(bin_dir: str, conf_dir: str, network: str | None, entry: dict[str, Any]) -> None:
    path = _choose_conflist(conf_dir, network)
    _write_launcher(bin_dir)
    conflist = _load(path)
    plugins = [p for p in conflist["plugins"] if not _ours(p)]
    updated = dict(conflist, plugins=[*plugins, entry])
    if updated == conflist:
        print(f"{path}: already chained")
    else:
        _atomic_write(path, (json.dumps(updated, indent=2) + "\n").encode())
        print(f"{path}: chained {PLUGIN_TYPE} after {', '.join(str(p.get('type')) for p in plugins) or 'nothing'}")


def _uninstall(bin_dir: str, conf_dir: str, network: str | None) -> None:
    paths = [_choose_conflist(conf_dir, network)] if network else _conflists(conf_dir)
    for path in paths:
        conflist = _load(path)
        plugins = [p for p in conflist["plugins"] if not _ours(p)]
        if len(plugins) != len(conflist["plugins"]):
            _atomic_write(path, (json.dumps(dict(conflist, plugins=plugins), indent=2) + "\n").encode())
            print(f"{path}: removed {PLUGIN_TYPE}")
    launcher = os.path.join(bin_dir, PLUGIN_TYPE)
    if _is_our_launcher(launcher):
        os.unlink(launcher)
        print(f"{launcher}: removed")
    elif os.path.lexists(launcher):
        raise InstallError(f"{launcher} was not written by `{PROG} install`; left in place")


def _ours(plugin: Any) -> bool:
    return isinstance(plugin, dict) and plugin.get("type") == PLUGIN_TYPE


def _conflists(conf_dir: str) -> list[str]:
    try:
        names = sorted(n for n in os.listdir(conf_dir) if n.endswith(".conflist"))
    except OSError as err:
        raise InstallError(f"cannot read --conf-dir {conf_dir}: {err.strerror}") from None
    return [os.path.join(conf_dir, n) for n in names]


def _choose_conflist(conf_dir: str, network: str | None) -> str:
    paths = _conflists(conf_dir)
    if not paths:
        raise InstallError(f"no *.conflist in {conf_dir}: nothing to chain after")
    if network is None:
        return paths[0]
    for path in paths:
        if _load(path).get("name") == network:
            return path
    raise InstallError(f"no conflist in {conf_dir} has \"name\": {network!r}")


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            conflist = json.load(handle)
    except ValueError as err:
        raise InstallError(f"{path} is not JSON: {err}") from None
    if not isinstance(conflist, dict) or not isinstance(conflist.get("plugins"), list):
        raise InstallError(f'{path} is not a conflist (no "plugins" list)')
    return conflist


def launcher_text(python: str) -> str:
    """The plugin executable: this interpreter, by absolute path, running the plugin.
    -s and -E keep a runtime's PYTHON* variables and user site-packages out of it."""
    return (f"#!{python} -sE\n{LAUNCHER_MARK}\n"
            "from istio_iptables.cni.__main__ import entry\n\nentry()\n")


def _write_launcher(bin_dir: str) -> None:
    path = os.path.join(bin_dir, PLUGIN_TYPE)
    text = launcher_text(sys.executable)
    if os.path.lexists(path) and not _is_our_launcher(path):
        raise InstallError(f"{path} exists and was not written by `{PROG} install`; not replacing it")
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return
    except OSError:
        pass
    _atomic_write(path, text.encode(), mode=0o755)
    print(f"{path}: installed (runs {sys.executable})")


def _is_our_launcher(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return LAUNCHER_MARK in handle.read(4096)
    except OSError:
        return False


def _atomic_write(path: str, data: bytes, mode: int | None = None) -> None:
    """Write a sibling temp file (a name runtimes ignore), fsync it, rename it over
    `path`, fsync the directory: readers see the old file or the new one."""
    folder, name = os.path.split(os.path.abspath(path))
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
