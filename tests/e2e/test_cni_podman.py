"""The CNI plugin under a real container runtime: podman with its CNI network backend.

The test writes its own network (a conflist in /etc/cni/net.d: the bridge plugin on a
private /24 with ipMasq off and host-local IPAM), chains the plugin after it with our
own `istio-iptables-cni install` (the launcher goes into a temp directory that the
test's containers.conf adds to podman's cni_plugin_dirs), and starts a container
WITHOUT NET_ADMIN (--cap-drop=all).  Real connections then show the app's outbound
TCP on 15001 with the right SO_ORIGINAL_DST and inbound TCP on 15006; `podman rm`
runs the plugin's DEL, and the namespace (kept alive by a process of ours) is left
without our rules.  Every network, file, link and container it creates is removed;
no other network of the host is touched.

Opt-in like the image test: RUN_E2E=1, root, podman, runc and the image
(`make image` builds localhost/istio-iptables:dev; .ci/run does both).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

IMAGE = os.environ.get("ISTIO_IPTABLES_IMAGE", "localhost/istio-iptables:dev")
CONF_DIR = Path("/etc/cni/net.d")
IPAM_STATE = Path("/var/lib/cni/networks")
PROXY_UID, APP_UID = 1337, 1000

pytestmark = [
    pytest.mark.skipif(os.environ.get("RUN_E2E") != "1", reason="container e2e is opt-in: set RUN_E2E=1"),
    pytest.mark.skipif(shutil.which("podman") is None or shutil.which("runc") is None, reason="needs podman, runc"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (podman networks, /etc/cni/net.d)"),
]

# Runs in the container as the proxy uid: stand-ins for Envoy's outbound (15001) and
# inbound (15006) listeners and for the app's own port, each answering one JSON line
# with the port it is and SO_ORIGINAL_DST.
LISTENERS = r"""
import json, socket, struct, threading
def serve(port):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(16)
    while True:
        conn, peer = server.accept()
        try:
            raw = conn.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
            original = [socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0]]
        except OSError:
            original = None
        conn.sendall((json.dumps({"port": port, "original_dst": original, "peer": peer[0]}) + "\n").encode())
        conn.close()
for port in (15001, 15006, 8080):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
CLIENT = r"""
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print(conn.makefile().readline().strip())
"""


class Node:
    """The test's podman setup: its containers.conf, network name, subnet and plugin dir."""

    def __init__(self, tmp: Path) -> None:
        suffix = secrets.token_hex(3)
        self.network = f"iit-cni-{suffix}"
        self.bridge = f"iitcni{suffix}"  # <= 15 characters
        self.octet = _free_octet()
        self.subnet = f"10.251.{self.octet}.0/24"
        self.gateway = f"10.251.{self.octet}.1"
        self.conflist = CONF_DIR / f"90-{self.network}.conflist"
        self.bin_dir = tmp / "bin"
        self.bin_dir.mkdir()
        self.log = tmp / "plugin.log"
        self.conf = tmp / "containers.conf"
        self.conf.write_text('[containers]\ndefault_ulimits = []\n[network]\nnetwork_backend = "cni"\n'
                             f'cni_plugin_dirs = ["/usr/lib/cni", "/usr/libexec/cni", "/opt/cni/bin", '
                             f'"{self.bin_dir}"]\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def podman(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
        return done


def _free_octet() -> int:
    """A 10.251.X.0/24 that no route of the host and no conflist uses."""
    used = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True, check=True).stdout
    used += "".join(p.read_text(errors="replace") for p in CONF_DIR.glob("*.conf*"))
    free = [x for x in range(1, 255) if f"10.251.{x}." not in used]
    assert free, "no free 10.251.X.0/24 on this host"
    return random.choice(free)


def _cni(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "istio_iptables.cni", *args], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture(params=["0.4.0", "1.0.0"])
def node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Node]:
    if subprocess.run(["podman", "image", "exists", IMAGE], check=False).returncode != 0:
        pytest.fail(f"RUN_E2E=1 but {IMAGE} is missing: run `make image` first", pytrace=False)
    setup = Node(tmp_path)
    conflist = {"cniVersion": request.param, "name": setup.network, "plugins": [
        {"type": "bridge", "bridge": setup.bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
         "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}],
                  "ranges": [[{"subnet": setup.subnet, "gateway": setup.gateway}]]}}]}
    if not any((Path(d) / "bridge").exists() for d in ("/usr/lib/cni", "/usr/libexec/cni", "/opt/cni/bin")):
        pytest.fail("RUN_E2E=1 but the CNI bridge plugin is missing (containernetworking-plugins)", pytrace=False)
    # What this test, podman and the plugins may create on first use; removed again if they do.
    first_use = [p for p in (CONF_DIR / "cni.lock", CONF_DIR, CONF_DIR.parent, IPAM_STATE,
                             IPAM_STATE.parent / "results", IPAM_STATE.parent) if not p.exists()]
    CONF_DIR.mkdir(parents=True, exist_ok=True)
    setup.conflist.write_text(json.dumps(conflist, indent=2) + "\n")
    try:
        yield setup
    finally:
        for name in (f"{setup.network}-app", f"{setup.network}-peer"):
            setup.podman("rm", "-f", "-t", "0", name, check=False)
        _cni("uninstall", "--bin-dir", str(setup.bin_dir), "--conf-dir", str(CONF_DIR), "--network", setup.network)
        setup.conflist.unlink(missing_ok=True)
        shutil.rmtree(IPAM_STATE / setup.network, ignore_errors=True)
        subprocess.run(["ip", "link", "del", setup.bridge], capture_output=True, check=False)
        for path in first_use:
            with contextlib.suppress(OSError):  # a directory someone else now uses stays
                path.rmdir() if path.is_dir() else path.unlink()


def _reply(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    reply: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return reply


def _wait_ready(setup: Node, name: str) -> None:
    for _ in range(100):
        if "ready" in setup.podman("logs", name).stdout:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} never became ready: {setup.podman('logs', name).stderr}")


def test_podman_pod_without_net_admin_is_captured_by_the_chained_plugin(node: Node) -> None:
    installed = _cni("install", "--bin-dir", str(node.bin_dir), "--conf-dir", str(CONF_DIR),
                     "--network", node.network, "--log-file", str(node.log))
    assert installed.returncode == 0, installed.stderr
    chained = json.loads(node.conflist.read_text())
    assert [p["type"] for p in chained["plugins"]] == ["bridge", "istio-iptables-cni"]

    app = f"{node.network}-app"
    node.podman("run", "-d", "--name", app, "--network", node.network, "--cap-drop=all",
                "--user", str(PROXY_UID), "--entrypoint", "python3", IMAGE, "-c", LISTENERS)
    _wait_ready(node, app)
    inspect = json.loads(node.podman("inspect", app).stdout)[0]
    assert not inspect["EffectiveCaps"], inspect["EffectiveCaps"]  # no NET_ADMIN, no capability at all
    pod_ip = inspect["NetworkSettings"]["Networks"][node.network]["IPAddress"]
    sandbox = inspect["NetworkSettings"]["SandboxKey"]
    assert pod_ip.startswith(f"10.251.{node.octet}.")

    # The app (uid 1000) dials out: Envoy's outbound port gets it, with the real destination.
    outbound = _reply(node.podman("exec", "--user", str(APP_UID), app, "python3", "-c", CLIENT, node.gateway, "80"))
    assert outbound["port"] == 15001, outbound
    assert outbound["original_dst"] == [node.gateway, 80]

    # Another pod on the network dials the app's port 8080 (as the proxy uid, whose own
    # outbound traffic is not captured): the inbound capture port gets it.
    peer = f"{node.network}-peer"
    inbound = _reply(node.podman("run", "--name", peer, "--network", node.network, "--cap-drop=all",
                                 "--user", str(PROXY_UID), "--entrypoint", "python3", IMAGE, "-c", CLIENT,
                                 pod_ip, "8080"))
    assert inbound["port"] == 15006, inbound
    assert inbound["original_dst"] == [pod_ip, 8080]
    node.podman("rm", "-f", peer)

    # Without NET_ADMIN the app cannot undo its capture.
    tamper = node.podman("exec", "--user", "0", app, "iptables-nft", "-t", "nat", "-F", check=False)
    assert tamper.returncode != 0

    # Keep the pod's namespace alive past `podman rm` with a process of ours, then let
    # podman tear the network down: the plugin's DEL must leave no rule of ours in it.
    keeper = subprocess.Popen(["nsenter", f"--net={sandbox}", "sleep", "120"])
    try:
        time.sleep(0.2)
        held = f"/proc/{keeper.pid}/ns/net"
        assert "ISTIO_OUTPUT" in _save(held)
        node.podman("rm", "-f", "-t", "0", app)
        assert "ISTIO" not in _save(held)
    finally:
        keeper.send_signal(signal.SIGTERM)
        keeper.wait(timeout=10)
    log = node.log.read_text()
    assert "CNI ADD" in log and "CNI DEL" in log, log


def _save(netns: str) -> str:
    out = ""
    for save in ("iptables-nft-save", "iptables-legacy-save"):
        with contextlib.suppress(subprocess.CalledProcessError):
            out += subprocess.run(["nsenter", f"--net={netns}", save], capture_output=True, text=True,
                                  check=True).stdout
    return out
