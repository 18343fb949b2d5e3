"""The CNI protocol (pure) and `istio-iptables-cni install|uninstall` on scratch
directories: nothing here needs root.  The plugin against real namespaces is in
tests/integration/test_cni.py, and under podman in tests/e2e/test_cni_podman.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from istio_iptables.cni import install
from istio_iptables.cni import protocol as p
from istio_iptables.cni.protocol import CniError

from .conftest import modules_after

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0"}


def request(env: dict[str, str], conf: dict[str, Any] | bytes) -> p.Request:
    return p.parse_request(env, conf if isinstance(conf, bytes) else json.dumps(conf).encode())


def error_of(env: dict[str, str], conf: dict[str, Any] | bytes) -> CniError:
    with pytest.raises(CniError) as caught:
        request(env, conf)
    return caught.value


def test_request_carries_the_parameters() -> None:
    req = request({**ENV, "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;IgnoreUnknown=1"},
                  {"cniVersion": "1.0.0", "name": "n", "prevResult": {"cniVersion": "1.0.0"}})
    assert (req.command, req.version, req.netns, req.ifname, req.container_id) == \
        ("ADD", "1.0.0", "/var/run/netns/x", "eth0", "c1")
    assert req.args == {"K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "web", "IgnoreUnknown": "1"}
    assert req.prev_result == {"cniVersion": "1.0.0"}


@pytest.mark.parametrize(("env", "stdin", "code", "words"), [
    ({**ENV, "CNI_COMMAND": "ATTACH"}, b"{}", 4, "ATTACH"),
    ({k: v for k, v in ENV.items() if k != "CNI_COMMAND"}, b"{}", 4, "CNI_COMMAND"),
    ({k: v for k, v in ENV.items() if k != "CNI_IFNAME"}, b'{"cniVersion":"1.0.0"}', 4, "CNI_IFNAME"),
    ({k: v for k, v in ENV.items() if k != "CNI_NETNS"}, b'{"cniVersion":"0.4.0"}', 4, "CNI_NETNS"),
    (ENV, b"", 6, "not JSON"),
    (ENV, b"\xff\xfe", 6, "not JSON"),
    (ENV, b'"1.0.0"', 6, "not a JSON object"),
    (ENV, b'{"cniVersion": 1}', 6, "cniVersion"),
    (ENV, b'{"cniVersion": "0.2.0"}', 1, "0.2.0"),
    (ENV, b"{}", 1, "''"),  # no version: 0.1.0, as libcni reads it
    ({**ENV, "CNI_COMMAND": "CHECK"}, b'{"cniVersion": "0.3.1"}', 1, "CHECK"),
    ({**ENV, "CNI_COMMAND": "STATUS"}, b'{"cniVersion": "1.0.0"}', 1, "STATUS"),
    ({**ENV, "CNI_COMMAND": "GC"}, b'{"cniVersion": "0.4.0"}', 1, "GC"),
    ({**ENV, "CNI_ARGS": "K8S_POD_NAME"}, b'{"cniVersion": "1.0.0"}', 4, "CNI_ARGS"),
])
def test_bad_requests_get_the_spec_code(env: dict[str, str], stdin: bytes, code: int, words: str) -> None:
    err = error_of(env, stdin)
    assert err.code == code
    assert words in f"{err.msg} {err.details}"


def test_container_id_and_cni_path_are_optional() -> None:
    # Never used (no per-container state, no delegation): bench/ drives ADD without them.
    env = {k: v for k, v in ENV.items() if k != "CNI_CONTAINERID"}
    assert request(env, {"cniVersion": "1.0.0"}).container_id == ""


def test_del_needs_no_netns_and_version_needs_nothing() -> None:
    env = {k: v for k, v in ENV.items() if k != "CNI_NETNS"}
    assert request({**env, "CNI_COMMAND": "DEL"}, {"cniVersion": "0.4.0"}).netns == ""
    assert request({"CNI_COMMAND": "VERSION"}, b"").version == p.LATEST_VERSION
    assert request({"CNI_COMMAND": "VERSION"}, {"cniVersion": "0.2.0"}).version == "0.2.0"  # answered anyway
    assert request({"CNI_COMMAND": "GC"}, {"cniVersion": "1.1.0"}).command == "GC"


def test_error_object_has_exactly_the_spec_keys() -> None:
    err = CniError(7, 'invalid "capture"', "invalid value 'x' for -p/--envoy-port")
    assert p.error_object(err, "1.0.0") == {"cniVersion": "1.0.0", "code": 7, "msg": 'invalid "capture"',
                                            "details": "invalid value 'x' for -p/--envoy-port"}


V1_RESULT = {"cniVersion": "1.1.0",
             "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:00:05", "mtu": 1450, "sandbox": "/run/netns/x",
                             "socketPath": "/tmp/s", "pciID": "0000:00:1f.6"}],
             "ips": [{"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 0},
                     {"address": "fd00::5/64", "interface": 0}],
             "routes": [{"dst": "0.0.0.0/0", "mtu": 1400}], "dns": {"nameservers": ["10.96.0.10"]}}


def test_result_conversion_down_to_0_4_0_and_back() -> None:
    old = p.convert_result(V1_RESULT, "0.4.0")
    assert old["cniVersion"] == "0.4.0"
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"]
    assert old["interfaces"] == [{"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": "/run/netns/x"}]
    assert old["routes"] == V1_RESULT["routes"] and old["dns"] == V1_RESULT["dns"]
    new = p.convert_result(old, "1.0.0")
    assert all("version" not in ip for ip in new["ips"])
    assert new["ips"] == V1_RESULT["ips"]
    assert p.convert_result(V1_RESULT, "1.1.0") == V1_RESULT
    assert p.convert_result(None, "0.4.0") == {"cniVersion": "0.4.0"}


_ADDRESSES = st.one_of(st.ip_addresses(v=4).map(lambda a: f"{a}/24"), st.ip_addresses(v=6).map(lambda a: f"{a}/64"))
_V1_IPS = st.lists(st.fixed_dictionaries({"address": _ADDRESSES}, optional={"gateway": st.just("10.0.0.1"),
                                                                            "interface": st.integers(0, 3)}))
_V1_INTERFACES = st.lists(st.fixed_dictionaries({"name": st.text("abcdef0123", min_size=1, max_size=15)},
                                                optional={"mac": st.just("0a:58:0a:00:00:01"),
                                                          "sandbox": st.just("/run/netns/p")}))


@given(ips=_V1_IPS, interfaces=_V1_INTERFACES, target=st.sampled_from(p.SUPPORTED_VERSIONS))
def test_a_1_0_0_result_survives_any_round_trip(ips: list[dict[str, Any]], interfaces: list[dict[str, Any]],
                                                 target: str) -> None:
    result = {"cniVersion": "1.0.0", "interfaces": interfaces, "ips": ips, "routes": [], "dns": {}}
    there = p.convert_result(result, target)
    assert there["cniVersion"] == target
    assert all(("version" in ip) == (target < "1.0.0") for ip in there["ips"])
    assert p.convert_result(there, "1.0.0") == result


# --- install / uninstall -------------------------------------------------------------------------

BRIDGE = {"cniVersion": "1.0.0", "name": "podnet", "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipMasq": False,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.251.7.0/24"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": True}}]}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "istio_iptables.cni", *args], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    (conf_dir / "10-podnet.conflist").write_text(json.dumps(BRIDGE, indent=2))
    (conf_dir / "99-other.conflist").write_text(json.dumps(dict(BRIDGE, name="other")))
    (conf_dir / "05-single.conf").write_text(json.dumps({"cniVersion": "0.3.1", "name": "x", "type": "bridge"}))
    return bin_dir, conf_dir


def _dirs(node: tuple[Path, Path]) -> list[str]:
    return ["--bin-dir", str(node[0]), "--conf-dir", str(node[1])]


def test_install_chains_after_the_first_conflist_and_is_idempotent(node: tuple[Path, Path]) -> None:
    bin_dir, conf_dir = node
    first = cli("install", *_dirs(node))
    assert first.returncode == 0, first.stderr
    chained = json.loads((conf_dir / "10-podnet.conflist").read_text())
    assert [p["type"] for p in chained["plugins"]] == ["bridge", "portmap", "istio-iptables-cni"]
    entry = chained["plugins"][-1]
    assert entry["capture"] == install.DEFAULT_CAPTURE
    assert entry["capabilities"] == {"io.kubernetes.cri.pod-annotations": True}
    assert json.loads((conf_dir / "99-other.conflist").read_text()) == dict(BRIDGE, name="other")
    launcher = bin_dir / "istio-iptables-cni"
    assert os.access(launcher, os.X_OK)
    assert launcher.read_text().startswith(f"#!{sys.executable} ")
    files = sorted(os.listdir(conf_dir))

    stamp = (conf_dir / "10-podnet.conflist").stat().st_mtime_ns
    again = cli("install", *_dirs(node))
    assert again.returncode == 0 and "already chained" in again.stdout, again
    assert (conf_dir / "10-podnet.conflist").stat().st_mtime_ns == stamp  # not rewritten
    assert sorted(os.listdir(conf_dir)) == files  # no temp files left


def test_the_installed_launcher_runs_the_plugin_with_a_bare_environment(node: tuple[Path, Path]) -> None:
    assert cli("install", *_dirs(node)).returncode == 0
    done = subprocess.run([str(node[0] / "istio-iptables-cni")], input=b'{"cniVersion": "1.0.0"}',
                          capture_output=True, env={"CNI_COMMAND": "VERSION", "PYTHONPATH": "/nonexistent"},
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["supportedVersions"] == list(p.SUPPORTED_VERSIONS)


def test_install_replaces_our_entry_and_uninstall_reverses_both(node: tuple[Path, Path]) -> None:
    bin_dir, conf_dir = node
    before = (conf_dir / "99-other.conflist").read_text()
    assert cli("install", *_dirs(node), "--network", "other", "--capture", '["-p","15001","-i","*"]').returncode == 0
    assert cli("install", *_dirs(node), "--network", "other", "--capture", '["-p","15002","-i","*"]',
               "--exclude-namespaces", "kube-system, istio-system", "--log-file", "/tmp/x.log").returncode == 0
    plugins = json.loads((conf_dir / "99-other.conflist").read_text())["plugins"]
    assert [p["type"] for p in plugins] == ["bridge", "portmap", "istio-iptables-cni"]
    assert plugins[-1]["capture"] == ["-p", "15002", "-i", "*"]
    assert plugins[-1]["excludeNamespaces"] == ["kube-system", "istio-system"]
    assert plugins[-1]["logFile"] == "/tmp/x.log"
    assert "istio-iptables-cni" not in (conf_dir / "10-podnet.conflist").read_text()

    done = cli("uninstall", *_dirs(node))
    assert done.returncode == 0, done.stderr
    assert json.loads((conf_dir / "99-other.conflist").read_text()) == json.loads(before)
    assert not (bin_dir / "istio-iptables-cni").exists()
    assert cli("uninstall", *_dirs(node)).returncode == 0  # twice is fine


@pytest.mark.parametrize(("args", "words"), [
    (("--capture", '["-p","x"]'), "'x' for -p/--envoy-port"),
    (("--capture", "-p 15001"), "is not JSON"),
    (("--capture", '{"p": 1}'), "expected a JSON list"),
    (("--capture", '["--network-namespace","/x"]'), "--network-namespace"),
    (("--capture-env", "[]"), "expected a JSON object"),
    (("--bogus",), "unrecognized arguments: --bogus"),
])
def test_bad_install_input_is_one_line_exit_2_and_writes_nothing(node: tuple[Path, Path], args: tuple[str, ...],
                                                                 words: str) -> None:
    bin_dir, conf_dir = node
    before = {f: (conf_dir / f).read_text() for f in os.listdir(conf_dir)}
    done = cli("install", *_dirs(node), *args)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and words in done.stderr, done.stderr
    assert {f: (conf_dir / f).read_text() for f in os.listdir(conf_dir)} == before
    assert os.listdir(bin_dir) == []


def test_install_refuses_what_it_cannot_chain_into(node: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, conf_dir = node
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no *.conflist" in cli("install", "--bin-dir", str(bin_dir), "--conf-dir", str(empty)).stderr
    assert "no conflist" in cli("install", *_dirs(node), "--network", "nope").stderr
    (bin_dir / "istio-iptables-cni").write_text("#!/bin/sh\necho someone else's\n")
    refused = cli("install", *_dirs(node))
    assert refused.returncode == 1 and "not written by" in refused.stderr
    assert "istio-iptables-cni" not in (conf_dir / "10-podnet.conflist").read_text()
    (conf_dir / "00-broken.conflist").write_text("{")
    (bin_dir / "istio-iptables-cni").unlink()
    assert "is not JSON" in cli("install", *_dirs(node)).stderr


def test_without_cni_command_it_prints_usage() -> None:
    done = cli()
    assert done.returncode == 2 and "install|uninstall" in done.stderr and done.stdout == ""


def test_the_add_path_imports_no_heavy_modules() -> None:
    # Everything an ADD imports (the plugin, the applier, the annotation mapping), as in
    # the init path's test in test_model.py: no python-iptables, pyroute2 or yaml.
    loaded = modules_after(
        "import istio_iptables.cni.__main__, istio_iptables.cni.plugin, istio_iptables.cni.protocol\n"
        "import istio_iptables.apply.run, istio_iptables.apply.iptables, istio_iptables.inject.annotations\n"
        "import istio_iptables.kernel.netns")
    assert [m for m in loaded if m.split(".")[0] in ("iptc", "pyroute2", "yaml", "argparse")] == []


# JSON values as a runtime could send them: every type JSON has, any text (escapes,
# non-ASCII, surrogates), NaN and the infinities json accepts and writes.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@given(JSON_VALUES)
def test_dumps_and_loads_are_json_s_own(value: Any) -> None:
    # protocol.loads/dumps stand in for json.loads/json.dumps(indent=2) without importing
    # json (its import is ~4.4 M instructions of every ADD): byte for byte the same.
    assert p.dumps({"v": value}) == json.dumps({"v": value}, indent=2) + "\n"
    for text in (json.dumps(value), json.dumps(value, indent=2, ensure_ascii=False),
                 f" \r\n\t{json.dumps(value)}\n "):
        assert json.dumps(p.loads(text.encode())) == json.dumps(json.loads(text.encode()))


@pytest.mark.parametrize("data", [
    b"", b"  ", b"{", b'{"a": 1} x', b'{"a": 1}{}', b"\xef\xbb\xbf{\"a\": 1}", '{"a": "\u00e9"}'.encode("utf-16"),
    '{"a": 1}'.encode("utf-16-le"), '{"a": 1}'.encode("utf-32"), b"\xff{}", b'{"a": "\xed\xa0\x80"}',
    b'{"a": "tab\there"}', b'{"a": "\xc3\xa9"}', b"[NaN, -Infinity]", b"01", b'{"a": 1,}', b"\x00", b"[" * 100_000])
def test_loads_answers_or_fails_as_json_loads(data: bytes) -> None:
    def outcome(load: Any) -> str:
        try:
            return "value " + json.dumps(load(data))
        except (ValueError, RecursionError) as err:
            return f"{type(err).__name__}: {err}"

    assert outcome(p.loads) == outcome(json.loads)


def test_dumps_leaves_other_types_to_json() -> None:
    odd: dict[Any, Any] = {"t": (1, 2), 3: "int key", "nested": {"f": 1.5, "big": 10**30}}
    assert p.dumps(odd) == json.dumps(odd, indent=2) + "\n"
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="Circular reference"):
        p.dumps(loop)


def test_an_add_request_and_its_result_never_import_json() -> None:
    code = ("import sys\n"
            "from istio_iptables.cni import protocol as p\n"
            "req = p.parse_request({'CNI_COMMAND': 'ADD', 'CNI_NETNS': '/x', 'CNI_IFNAME': 'eth0'},\n"
            "    b'{\"cniVersion\": \"1.0.0\", \"name\": \"n\", \"capture\": [\"-p\", \"15001\"],'\n"
            "    b' \"prevResult\": {\"cniVersion\": \"1.0.0\", \"ips\": [{\"address\": \"10.0.0.2/24\"}]}}')\n"
            "sys.stdout.write(p.dumps(p.convert_result(req.prev_result, req.version)))\n"
            "print('json' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.endswith("}\nFalse\n") and '"address": "10.0.0.2/24"' in done.stdout


def test_nft_listings_compare_by_table_and_line_with_counters_numbers_dropped() -> None:
    from istio_iptables.apply.check import tables_of

    listing = ("table inet istio-proxy-nat {\n\tchain output {\n"
               "\t\ttype nat hook output priority dstnat; policy accept;\n"
               "\t\tcounter packets 3 bytes 180 jump istio-output\n\t}\n}\n"
               "table inet istio-proxy-mangle {\n\tchain x {\n\t}\n}\n")
    assert tables_of(listing) == {
        "istio-proxy-nat": ["chain output {", "type nat hook output priority dstnat; policy accept;",
                            "counter jump istio-output", "}", "}"],
        "istio-proxy-mangle": ["chain x {", "}", "}"],
    }
    assert tables_of(listing.replace("packets 3 bytes 180", "packets 0 bytes 0")) == tables_of(listing)
    assert tables_of(listing.replace("istio-output", "istio-redirect")) != tables_of(listing)
