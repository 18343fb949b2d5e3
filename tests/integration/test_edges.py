"""Promises at the edges, on a real kernel: the validation probe, libiptc with -c/-k, strict input.

* The validation probe as Istio's istio-validation container runs it: uid/gid 1337,
  every capability dropped, ``--skip-rule-apply --run-validation``.
* ``--backend libiptc`` against ``--backend restore`` for flag sets with ``-c``/``-k``,
  TPROXY, DNS and dual stack: the same rules, re-runs that change nothing, cleanups
  that leave the namespace as it was.
* ``--network-namespace`` (and ``--resolv-conf``) naming a FIFO: one line, exit 2,
  at once (the open used to block forever).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from istio_iptables.lab.netlab import NetLab

from .conftest import STANDARD, applied, istio, saved

pytestmark = pytest.mark.netns
REPO = Path(__file__).resolve().parents[2]
FOREIGN_RULES = (("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN"),
                 ("-t", "mangle", "-A", "PREROUTING", "-i", "eth0", "-p", "udp", "--dport", "9998", "-j", "RETURN"))


# ----------------------------------------------------------------------------- the validation probe


def _unprivileged_python() -> tuple[str, dict[str, str]]:
    """An interpreter uid 1337 may execute, and the environment that finds this code.

    The test interpreter may live under a directory only root can enter (/root/.pyenv);
    the system's python3 of the same minor version runs the same pure-Python code."""
    candidates = [sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"]
    path = next((c for c in candidates if all(os.stat(p).st_mode & 0o005 for p in _parents(c))), None)
    if path is None or shutil.which("setpriv") is None:
        pytest.skip("needs setpriv and a python3 that an unprivileged user can run")
    site = sysconfig.get_paths()["purelib"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), site])}
    return path, env


def _parents(path: str) -> list[str]:
    real = Path(os.path.realpath(path))
    return [str(p) for p in [real, *real.parents]]


def _as_istio_validation(lab: NetLab, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the tool as istio-validation does: uid/gid 1337, no groups, no capabilities."""
    python, env = _unprivileged_python()
    argv = ["setpriv", "--reuid", "1337", "--regid", "1337", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", python, "-m", "istio_iptables", "--skip-rule-apply", "--run-validation",
            "--ipv6", "off", *args]
    return lab.run("pod", *argv, check=False, env=env, timeout=60)


def test_validation_passes_as_the_unprivileged_istio_validation_container(lab: NetLab) -> None:
    without_rules = _as_istio_validation(lab, "--probe-timeout", "2s")
    assert without_rules.returncode == 126, without_rules.stderr
    assert "validation failed" in without_rules.stderr

    applied(lab, *STANDARD, "--ipv6", "off")
    with_rules = _as_istio_validation(lab, "--probe-timeout", "5s")
    assert with_rules.returncode == 0, with_rules.stderr
    assert "validation succeeded" in with_rules.stderr
    assert "Traceback" not in with_rules.stderr


def test_validation_of_an_unknown_user_is_a_usage_error(lab: NetLab) -> None:
    done = istio(lab, "-u", "no-such-user-here", "--skip-rule-apply", "--run-validation")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "no-such-user-here" in done.stderr
    assert "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- libiptc and interface masks

FLAG_SETS = {
    "c-k": ("-c", "eth0", "-k", "eth1", "--dual-stack"),
    "c-wildcard-k-ipv6-only-rules": ("-c", "eth0,veth+", "-k", "eth1,tap+", "--ipv6", "on"),
    "tproxy-c": ("-m", "TPROXY", "-b", "*", "-c", "eth0", "-k", "eth1", "--dual-stack"),
    "dns-k": ("--redirect-dns", "-k", "eth1", "-c", "eth2", "--dual-stack"),
    "capture-all-dns-drop-invalid": ("--redirect-dns", "--capture-all-dns", "--drop-invalid", "-c", "eth0",
                                     "-x", "10.0.0.0/8,fd00::/8", "--dual-stack"),
    "c-k-ipv4": ("-c", "eth0", "-k", "eth1", "--ipv6", "off"),
}


def _with_foreign_rules(lab: NetLab) -> None:
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        for rule in FOREIGN_RULES:
            lab.run("pod", tool, *rule)


def _state(lab: NetLab) -> tuple[str, str, str, str]:
    return (saved(lab, backend="legacy"), saved(lab, ipv6=True, backend="legacy"),
            lab.run("pod", "ip", "rule").stdout, lab.run("pod", "ip", "-6", "rule").stdout)


@pytest.mark.parametrize("name", sorted(FLAG_SETS))
def test_libiptc_matches_restore_reruns_as_noop_and_cleans_up(lab: NetLab, name: str, tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.96.0.10\nnameserver fd00::10\n")
    flags = (*STANDARD, *FLAG_SETS[name], "--resolv-conf", str(resolv))
    _with_foreign_rules(lab)
    before = _state(lab)

    applied(lab, *flags, "--backend", "libiptc")
    after_apply = _state(lab)
    rerun = applied(lab, *flags, "--backend", "libiptc")
    assert "in-sync" in rerun.stderr, rerun.stderr
    assert _state(lab) == after_apply

    with NetLab() as reference:
        _with_foreign_rules(reference)
        applied(reference, *flags, "--force-iptables-binary", "legacy")
        assert _state(reference)[:2] == after_apply[:2]  # the same rules, both families
        applied(reference, *flags, "--force-iptables-binary", "legacy", "--cleanup-only")
        reference_clean = _state(reference)

    applied(lab, *flags, "--backend", "libiptc", "--cleanup-only")
    after_cleanup = _state(lab)
    assert after_cleanup == reference_clean
    for text_before, text_after in zip(before[:2], after_cleanup[:2], strict=True):
        assert [ln for ln in text_after.splitlines() if ln.startswith("-A")] == \
               [ln for ln in text_before.splitlines() if ln.startswith("-A")]
    assert after_cleanup[2:] == before[2:]


def test_libiptc_refuses_a_namespace_whose_rules_live_in_iptables_nft(lab: NetLab) -> None:
    lab.run("pod", "iptables-nft", *FOREIGN_RULES[0])
    before = (saved(lab), saved(lab, backend="legacy"))

    done = istio(lab, *STANDARD, "--ipv6", "off", "--backend", "libiptc")

    assert done.returncode == 1
    assert "--backend libiptc writes iptables-legacy tables, but this namespace's IPv4 rules live in " \
           "iptables-nft" in done.stderr
    assert (saved(lab), saved(lab, backend="legacy")) == before


# ----------------------------------------------------------------------------- strict input


def test_network_namespace_fifo_is_refused_at_once(lab: NetLab, tmp_path: Path) -> None:
    fifo = tmp_path / "not-a-netns"
    os.mkfifo(fifo)
    before = saved(lab)
    argv = [sys.executable, "-m", "istio_iptables", "--network-namespace", str(fifo), *STANDARD]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "--network-namespace" in lines[0] and "not a network namespace" in lines[0]
    assert saved(lab) == before


def test_network_namespace_of_another_kind_is_refused(lab: NetLab) -> None:
    done = istio(lab, *STANDARD)  # sanity: the lab's path works
    assert done.returncode == 0, done.stderr
    argv = [sys.executable, "-m", "istio_iptables", "--network-namespace", "/proc/self/ns/mnt", *STANDARD]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode == 2, refused.stderr
    assert "not a network namespace" in refused.stderr and refused.stderr.count("\n") == 1


def test_resolv_conf_fifo_and_non_utf8_lines(lab: NetLab, tmp_path: Path) -> None:
    fifo = tmp_path / "resolv-fifo"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-m", "istio_iptables", "--network-namespace", lab.pod_ns_path,
                           *STANDARD, "--redirect-dns", "--resolv-conf", str(fifo)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "not a regular file" in done.stderr

    resolv = tmp_path / "resolv.conf"
    resolv.write_bytes(b"# r\xe9solveur\nnameserver 10.96.0.10\nsearch caf\xc3\xa9.example\n"
                       b"nameserver \xff\xfe10.0.0.1\nnameserver 10.96.0.11\n")
    applied(lab, *STANDARD, "--ipv6", "off", "--redirect-dns", "--resolv-conf", str(resolv))
    nat = saved(lab)
    assert "-d 10.96.0.10/32" in nat and "-d 10.96.0.11/32" in nat and "10.0.0.1" not in nat
