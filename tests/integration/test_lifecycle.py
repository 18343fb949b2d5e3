"""Apply, re-run, drift, reconcile, cleanup, rollback and validation on a real kernel."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from istio_iptables.lab.netlab import NetLab

from .conftest import STANDARD, applied, istio, saved

pytestmark = pytest.mark.netns
FOREIGN_RULE = ("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN")


def _istio_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "ISTIO" in line]


def _by_table(text: str) -> dict[str, list[str]]:
    """Rules and chains per table, in order (legacy and nft print tables in different orders)."""
    tables: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:]
        elif line.startswith(("-A", ":")):
            tables.setdefault(current, []).append(line)
    return {name: lines for name, lines in tables.items() if any("ISTIO" in line for line in lines)}


def _tables(text: str, names: tuple[str, ...] = ("mangle", "nat", "raw")) -> str:
    """Only the given tables of a save dump (python-iptables also loads filter/security)."""
    keep, out = False, []
    for line in text.splitlines():
        if line.startswith("*"):
            keep = line[1:] in names
        if keep:
            out.append(line)
    return "\n".join(out)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_rerun_is_a_noop_and_cleanup_restores_the_original_ruleset(lab: NetLab, backend: str) -> None:
    lab.run("pod", f"iptables-{backend}", *FOREIGN_RULE)
    before = saved(lab, backend=backend)
    flags = (*STANDARD, "--ipv6", "off", "--force-iptables-binary", backend)

    applied(lab, *flags)
    after_first = saved(lab, backend=backend)
    second = applied(lab, *flags)
    assert "in-sync" in second.stderr
    assert saved(lab, backend=backend) == after_first
    assert _istio_lines(after_first)

    applied(lab, *flags, "--cleanup-only")
    assert saved(lab, backend=backend) == before
    assert "--dport 9999 -j RETURN" in before
    applied(lab, *flags, "--cleanup-only")  # cleaning a clean namespace is fine too
    assert saved(lab, backend=backend) == before


def test_positional_clean_and_istio_clean_iptables_remove_everything(lab: NetLab) -> None:
    lab.run("pod", "iptables-nft", *FOREIGN_RULE)
    before = saved(lab)
    applied(lab, *STANDARD, "--ipv6", "off")
    applied(lab, "clean", "--ipv6", "off")
    assert saved(lab) == before
    applied(lab, *STANDARD, "--ipv6", "off")
    done = __import__("subprocess").run(
        ["ip", "netns", "exec", lab.pod_ns, sys.executable, "-c",
         "import sys; from istio_iptables.cli.main import clean_main; sys.exit(clean_main(['--ipv6', 'off']))"],
        capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert saved(lab) == before


def test_drift_is_refused_then_reconciled(lab: NetLab) -> None:
    applied(lab, *STANDARD, "--ipv6", "off")
    standard_rules = saved(lab)
    other = ("-i", "*", "-b", "8080", "--ipv6", "off")

    refused = istio(lab, *other)
    assert refused.returncode == 1
    assert "--reconcile" in refused.stderr
    assert saved(lab) == standard_rules

    applied(lab, *other, "--reconcile")
    reconciled = saved(lab)
    assert "--dport 8080 -j ISTIO_IN_REDIRECT" in reconciled
    assert "--dport 15090" not in reconciled
    applied(lab, *other, "--cleanup-only")
    applied(lab, *other)
    assert saved(lab) == reconciled  # same as a fresh apply of the new flags


def test_reconcile_keeps_foreign_rules(lab: NetLab) -> None:
    applied(lab, *STANDARD, "--ipv6", "off")
    lab.run("pod", "iptables-nft", *FOREIGN_RULE)
    applied(lab, "-i", "*", "--ipv6", "off", "--reconcile")
    assert "--dport 9999 -j RETURN" in saved(lab)


def test_backends_write_the_same_ruleset(lab: NetLab) -> None:
    flags = (*STANDARD, "--ipv6", "off", "--redirect-dns", "--capture-all-dns", "-m", "TPROXY")
    applied(lab, *flags, "--force-iptables-binary", "legacy")
    legacy = saved(lab, backend="legacy")
    applied(lab, *flags, "--force-iptables-binary", "legacy", "--cleanup-only")

    applied(lab, *flags, "--backend", "libiptc")
    libiptc = saved(lab, backend="legacy")
    applied(lab, *flags, "--backend", "libiptc", "--cleanup-only")

    applied(lab, *flags, "--force-iptables-binary", "nft")
    nft = saved(lab, backend="nft")

    assert _istio_lines(legacy)
    assert _tables(legacy) == _tables(libiptc)
    assert _by_table(nft) == _by_table(legacy)


def test_libiptc_is_refused_on_an_nft_namespace(lab: NetLab) -> None:
    lab.run("pod", "iptables-nft", *FOREIGN_RULE)
    before_legacy = saved(lab, backend="legacy")
    done = istio(lab, *STANDARD, "--ipv6", "off", "--backend", "libiptc")
    assert done.returncode == 1
    assert "iptables-nft" in done.stderr
    assert saved(lab, backend="legacy") == before_legacy


def test_failing_ipv6_restore_leaves_the_namespace_untouched(lab: NetLab, tmp_path: Path) -> None:
    fake = tmp_path / "ip6tables-nft-restore"
    fake.write_text("#!/bin/sh\necho 'ip6tables-nft-restore: line 3 failed: No chain/target/match by that name.' >&2\n"
                    "exit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    before4, before6 = saved(lab), saved(lab, ipv6=True)

    done = istio(lab, *STANDARD, "--dual-stack", "--force-iptables-binary", "nft", env=env)

    assert done.returncode == 1
    assert "ip6tables-nft-restore refused" in done.stderr
    assert "nothing was changed" in done.stderr
    assert (saved(lab), saved(lab, ipv6=True)) == (before4, before6)


def test_failure_after_both_families_were_written_is_rolled_back(lab: NetLab) -> None:
    lab.run("pod", "iptables-nft", *FOREIGN_RULE)
    lab.run("pod", "ip6tables-nft", *FOREIGN_RULE)
    before4, before6 = saved(lab), saved(lab, ipv6=True)
    lab.sysctl("pod", "net.ipv6.conf.lo.disable_ipv6", "1")  # makes adding ::6 to lo fail

    done = istio(lab, *STANDARD, "--dual-stack")

    assert done.returncode == 1
    assert "restored to its state before this run" in done.stderr  # both families had been written
    assert (saved(lab), saved(lab, ipv6=True)) == (before4, before6)


def test_rollback_in_a_fresh_namespace_leaves_no_empty_tables(lab: NetLab) -> None:
    before4, before6 = saved(lab), saved(lab, ipv6=True)
    assert before4 == "" and before6 == ""  # nothing at all in nf_tables yet
    lab.sysctl("pod", "net.ipv6.conf.lo.disable_ipv6", "1")  # makes adding ::6 to lo fail

    done = istio(lab, *STANDARD, "--dual-stack")

    assert done.returncode == 1
    assert "restored to its state before this run" in done.stderr
    assert (saved(lab), saved(lab, ipv6=True)) == ("", "")


def test_failed_tproxy_route_removes_exactly_what_this_run_added(lab: NetLab) -> None:
    lab.run("pod", "ip", "-6", "rule", "add", "fwmark", "1337", "lookup", "133")  # someone else's, kept
    lab.run("pod", "ip", "-6", "route", "add", "unreachable", "default", "table", "133")  # our route cannot go in
    before = [lab.run("pod", *cmd).stdout for cmd in (("ip", "rule"), ("ip", "-6", "rule"),
                                                      ("ip", "route", "show", "table", "all"),
                                                      ("ip", "-6", "route", "show", "table", "all"))]
    before4, before6 = saved(lab), saved(lab, ipv6=True)

    done = istio(lab, "-m", "TPROXY", "-b", "*", "--dual-stack")

    assert done.returncode == 1
    assert "ip -6 route add local default dev lo table 133 failed: table 133 already holds" in done.stderr
    assert "restored to its state before this run" in done.stderr
    after = [lab.run("pod", *cmd).stdout for cmd in (("ip", "rule"), ("ip", "-6", "rule"),
                                                     ("ip", "route", "show", "table", "all"),
                                                     ("ip", "-6", "route", "show", "table", "all"))]
    assert after == before  # the IPv4 rule and route it added are gone, the foreign IPv6 rule stays
    assert (saved(lab), saved(lab, ipv6=True)) == (before4, before6)


def test_validation_passes_after_apply_and_fails_without_rules(lab: NetLab) -> None:
    failed = istio(lab, "--run-validation", "--skip-rule-apply", "--probe-timeout", "2s", "--ipv6", "off")
    assert failed.returncode == 126
    assert "validation failed" in failed.stderr

    applied(lab, *STANDARD, "--ipv6", "off", "--run-validation")
    applied(lab, "--run-validation", "--skip-rule-apply", "--ipv6", "off")


def test_tproxy_cleanup_removes_routes_and_address(lab: NetLab) -> None:
    before = lab.run("pod", "ip", "rule").stdout
    applied(lab, "-m", "TPROXY", "-b", "*", "--dual-stack")
    assert "lookup 133" in lab.run("pod", "ip", "-6", "rule").stdout
    applied(lab, "-m", "TPROXY", "-b", "*", "--dual-stack")  # routes too are idempotent

    applied(lab, "-m", "TPROXY", "-b", "*", "--dual-stack", "--cleanup-only")

    assert lab.run("pod", "ip", "rule").stdout == before
    assert "lookup 133" not in lab.run("pod", "ip", "-6", "rule").stdout
    assert "::6/128" not in lab.run("pod", "ip", "-6", "addr", "show", "dev", "lo").stdout


def test_json_logs_are_one_object_per_line_with_the_final_ruleset(lab: NetLab) -> None:
    import json

    done = applied(lab, *STANDARD, "--ipv6", "off", "--log-format", "json")
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    messages = [e["msg"] for e in entries]
    assert all(e["level"] in ("info", "warning") for e in entries)
    assert any(m.startswith("IPv4: using iptables-") for m in messages)
    assert any("-A ISTIO_OUTPUT -j ISTIO_REDIRECT" in m for m in messages)
    assert any(m.startswith("done in") for m in messages)


def test_nft_table_probe_sees_what_iptables_nft_writes(lab: NetLab) -> None:
    probe = ("from istio_iptables.kernel.netlink import nft_has_tables as f; print(f(4), f(6))")
    repo = str(Path(__file__).resolve().parents[2])
    assert lab.run("pod", sys.executable, "-c", f"import sys; sys.path.insert(0, {repo!r}); {probe}").stdout.split() \
        == ["False", "False"]
    lab.run("pod", "iptables-nft", *FOREIGN_RULE)
    assert lab.run("pod", sys.executable, "-c", f"import sys; sys.path.insert(0, {repo!r}); {probe}").stdout.split() \
        == ["True", "False"]


def _istio_1_3_commands(case: str) -> list[list[str]]:
    """The IPv4 iptables commands Istio 1.3's istio-iptables.sh ran for a golden case."""
    from tests.conftest import TESTDATA

    text = (TESTDATA / "istio-1.3-golden" / f"{case}_golden.txt").read_text()
    body = text.split("ENABLE_INBOUND_IPV6=", 1)[1]
    return [line.split()[1:] for line in body.splitlines() if line.startswith("iptables -t ")]


def test_rules_left_by_istio_1_3_are_reconciled_and_cleaned(lab: NetLab) -> None:
    """An upgraded init container meets the old script's rules (different jumps,
    e.g. `-A OUTPUT -p tcp -j ISTIO_OUTPUT`): drift is refused, --reconcile replaces
    them with exactly what a fresh apply writes, cleanup removes everything."""
    import json

    from tests.conftest import TESTDATA

    case = json.loads((TESTDATA / "istio-1.3-golden" / "cases.json").read_text())["cases"]["mode_redirect"]
    args = (*case["args"], "--ipv6", "off")
    lab.run("pod", "iptables-nft", *FOREIGN_RULE)
    before = saved(lab)
    for command in _istio_1_3_commands("mode_redirect"):
        lab.run("pod", "iptables-nft", *command)
    assert "-A OUTPUT -p tcp -j ISTIO_OUTPUT" in saved(lab)

    assert istio(lab, *args).returncode == 1
    applied(lab, *args, "--reconcile")
    reconciled = saved(lab)
    applied(lab, *args, "--cleanup-only")
    assert saved(lab) == before
    applied(lab, *args)
    assert saved(lab) == reconciled


def test_namespace_by_name_and_under_ip_netns_exec(lab: NetLab) -> None:
    import subprocess
    import sys

    by_name = subprocess.run([sys.executable, "-m", "istio_iptables", "--network-namespace", lab.pod_ns,
                              *STANDARD, "--ipv6", "off"], capture_output=True, text=True, check=False)
    assert by_name.returncode == 0, by_name.stderr
    rules = saved(lab)
    assert "ISTIO_OUTPUT" in rules
    under_exec = lab.run("pod", sys.executable, "-m", "istio_iptables", *STANDARD, "--ipv6", "off")
    assert "in-sync" in under_exec.stderr
    assert saved(lab) == rules
    missing = subprocess.run([sys.executable, "-m", "istio_iptables", "--network-namespace", "no-such-netns",
                              *STANDARD], capture_output=True, text=True, check=False)
    assert missing.returncode == 1
    assert "no-such-netns" in missing.stderr


@pytest.mark.parametrize("bad", [("-b", "80,http"), ("-u", "no-such-user-here"), ("-x", "*")])
def test_bad_input_exits_2_with_one_line_and_touches_nothing(lab: NetLab, bad: tuple[str, str]) -> None:
    applied(lab, *STANDARD, "--ipv6", "off")
    before = saved(lab)

    done = istio(lab, "-i", "*", "--ipv6", "off", "--reconcile", *bad)

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and bad[1] in done.stderr
    assert saved(lab) == before
