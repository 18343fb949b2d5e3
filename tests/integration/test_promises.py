"""The promises at the edges, on a real kernel: nothing lost, one capture,
restart-safe.  Concurrent writers, another writer during a failed run, mixed
backends and modes, order-aware drift, foreign ISTIO_-named chains, re-run cost,
and `nft list ruleset` after a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from istio_iptables.lab.netlab import NetLab
from istio_iptables.model import iptables_state as state
from istio_iptables.model.iptables_dump import parse_save
from istio_iptables.model.iptables_plan import Plan, build_plan
from istio_iptables.model.iptables_render import restore_text
from tests.test_nft_golden import CASES, capture_config, host_facts

from ..conftest import REPO
from .conftest import STANDARD, applied, istio, saved

pytestmark = pytest.mark.netns
BACKENDS = ["nft", "legacy"]
OTHER_WRITER_RULE = ("-t", "nat", "-A", "POSTROUTING", "-d", "203.0.113.7/32", "-j", "RETURN")


def _shim(folder: Path, name: str, body: str) -> dict[str, str]:
    """A PATH entry whose `name` runs `body` (sh), else the real program."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def _real(program: str) -> str:
    for folder in ("/usr/sbin", "/sbin", "/usr/bin"):
        if os.access(f"{folder}/{program}", os.X_OK):
            return f"{folder}/{program}"
    raise AssertionError(f"{program} not installed")


def _nft_ruleset(lab: NetLab) -> str:
    """`nft -s list ruleset`: every table, chain and rule; -s leaves out the counters,
    which the lab's own IPv6 neighbour traffic moves."""
    return lab.run("pod", "nft", "-s", "list", "ruleset").stdout


# --- 1. rollback by inverse operations; one writer at a time ---------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_run_keeps_a_rule_another_writer_added_meanwhile(lab: NetLab, tmp_path: Path, backend: str) -> None:
    """IPv6 is written, then the IPv4 restore fails after another process added a rule
    to the same table: the rollback removes our IPv6 rules and keeps that rule."""
    restore = f"iptables-{backend}-restore"
    env = _shim(tmp_path / "bin", restore, f"""
case " $* " in *" --noflush "*)
  cat >/dev/null
  iptables-{backend} -w -t nat -A POSTROUTING -d 203.0.113.7/32 -j RETURN
  echo "{restore}: line 2 failed: Invalid argument" >&2; exit 1;;
esac
exec {_real(restore)} "$@"
""")
    lab.run("pod", f"iptables-{backend}", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN")
    before4, before6 = saved(lab, backend=backend), saved(lab, ipv6=True, backend=backend)

    done = istio(lab, *STANDARD, "--dual-stack", "--force-iptables-binary", backend, env=env)

    assert done.returncode == 1
    assert "restored to its state before this run" in done.stderr  # IPv6 had been written
    after4 = saved(lab, backend=backend)
    assert "-A POSTROUTING -d 203.0.113.7/32 -j RETURN" in after4
    assert after4.replace("-A POSTROUTING -d 203.0.113.7/32 -j RETURN\n", "") == before4
    assert _without_empty_tables(saved(lab, ipv6=True, backend=backend)) == _without_empty_tables(before6)


def _without_empty_tables(text: str) -> str:
    """A legacy table, once used in a namespace, stays (empty) until the namespace goes:
    no command deletes it.  Compare without tables holding only empty built-in chains."""
    blocks = text.split("\n*")
    kept = [b for b in blocks if "\n-A " in b or any(ln.startswith(":") and " - [" in ln for ln in b.splitlines())]
    return "\n*".join(kept)


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_applies_write_one_exact_ruleset(lab: NetLab, backend: str) -> None:
    flags = (*STANDARD, "--dual-stack", "--force-iptables-binary", backend)
    applied(lab, *flags)
    expected = (saved(lab, backend=backend), saved(lab, ipv6=True, backend=backend))
    argv = [sys.executable, "-m", "istio_iptables", "--network-namespace", lab.pod_ns_path, *flags]
    for _ in range(10):
        applied(lab, *flags, "--cleanup-only")
        runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
        results = [(run.wait(timeout=120), run.communicate()[1]) for run in runs]
        assert [code for code, _ in results] == [0, 0, 0, 0], [err for _, err in results]
        assert sum("IPv4: apply" in err for _, err in results) == 1  # the others found it in sync
        assert (saved(lab, backend=backend), saved(lab, ipv6=True, backend=backend)) == expected


_LOCK_PROBE = """
import sys, time
sys.path.insert(0, {repo!r})
from istio_iptables.kernel import nslock
try:
    nslock.acquire(wait=0.3)
except nslock.LockTimeout as err:
    print("TIMEOUT", err)
else:
    print("ACQUIRED")
"""


def test_the_lock_is_per_network_namespace_bounded_and_freed_by_death(lab: NetLab) -> None:
    probe = _LOCK_PROBE.format(repo=str(REPO))
    holder = subprocess.Popen(["ip", "netns", "exec", lab.pod_ns, sys.executable, "-c",
                               f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
                               "from istio_iptables.kernel import nslock\nlock = nslock.acquire()\n"
                               "print('held', flush=True)\n"
                               "import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        blocked = lab.run("pod", sys.executable, "-c", probe).stdout
        assert blocked.startswith("TIMEOUT") and "for over 0.3s" in blocked
        assert "pid " in blocked  # names the holder
        assert lab.run("peer", sys.executable, "-c", probe).stdout.strip() == "ACQUIRED"  # another netns
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs
        holder.wait()
    assert lab.run("pod", sys.executable, "-c", probe).stdout.strip() == "ACQUIRED"


def test_a_run_that_cannot_get_the_lock_fails_with_one_line_and_changes_nothing(lab: NetLab) -> None:
    holder = subprocess.Popen(["ip", "netns", "exec", lab.pod_ns, sys.executable, "-c",
                               f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
                               "from istio_iptables.kernel import nslock\nlock = nslock.acquire()\n"
                               "print('held', flush=True)\nimport time; time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = saved(lab)
        run = ("import sys; sys.path.insert(0, {repo!r})\n"
               "from istio_iptables.kernel import nslock\nnslock.DEFAULT_WAIT = 0.5\n"
               "from istio_iptables.cli.main import main\nsys.exit(main({args!r}))")
        done = lab.run("pod", sys.executable, "-c", run.format(repo=str(REPO), args=[*STANDARD, "--ipv6", "off"]),
                       check=False)
        assert done.returncode == 1
        errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
        assert len(errors) == 1, done.stderr
        assert f"(pid {holder.pid})" in errors[0]  # `ip netns exec` execs python: same pid
        assert "istio-iptables.lock" in errors[0] and "nothing was changed" in errors[0]
        assert saved(lab) == before
    finally:
        holder.kill()
        holder.wait()


# --- 2. detection: our chains decide first, legacy only when it holds rules ---------------

def test_an_empty_legacy_table_does_not_flip_detection(lab: NetLab) -> None:
    flags = (*STANDARD, "--ipv6", "off")
    applied(lab, *flags)
    nft_rules = saved(lab, backend="nft")
    lab.run("pod", "iptables-legacy", "-L", "-n")  # creates an empty legacy filter table
    assert lab.run("pod", "cat", "/proc/net/ip_tables_names").stdout.strip()

    rerun = applied(lab, *flags)
    assert "in-sync" in rerun.stderr and "iptables-nft" in rerun.stderr
    assert "ISTIO" not in saved(lab, backend="legacy")
    applied(lab, *flags, "--cleanup-only")
    assert "ISTIO" not in saved(lab, backend="nft")
    assert "ISTIO" in nft_rules


def test_our_chains_in_both_backends_are_refused_and_cleanup_cleans_both(lab: NetLab) -> None:
    flags = (*STANDARD, "--ipv6", "off")
    applied(lab, *flags, "--force-iptables-binary", "nft")
    plan = istio(lab, *flags, "--dry-run").stdout
    lab.run("pod", "iptables-legacy-restore", "--noflush", input=plan)  # a second capture, by hand
    before = (saved(lab, backend="nft"), saved(lab, backend="legacy"))

    refused = istio(lab, *flags)
    assert refused.returncode == 1
    assert "iptables-legacy and iptables-nft" in refused.stderr
    assert (saved(lab, backend="nft"), saved(lab, backend="legacy")) == before

    applied(lab, *flags, "--cleanup-only")
    assert "ISTIO" not in saved(lab, backend="nft") + saved(lab, backend="legacy")


# --- 3. one capture per namespace: iptables mode and --native-nftables -------------------

def _has_native(lab: NetLab) -> bool:
    return "istio-proxy-nat" in _nft_ruleset(lab)


@pytest.mark.parametrize("first", ["iptables", "native"])
def test_the_two_modes_never_stack(lab: NetLab, first: str) -> None:
    iptables_mode = (*STANDARD, "--ipv6", "off")
    native_mode = (*iptables_mode, "--native-nftables")
    second = iptables_mode if first == "native" else native_mode
    applied(lab, *(native_mode if first == "native" else iptables_mode))
    ruleset = _nft_ruleset(lab)

    refused = istio(lab, *second)
    assert refused.returncode == 1
    assert "second capture" in refused.stderr and "--reconcile" in refused.stderr
    assert _nft_ruleset(lab) == ruleset

    applied(lab, *second, "--reconcile")
    assert _has_native(lab) == (second == native_mode)
    assert ("ISTIO_OUTPUT" in saved(lab)) == (second == iptables_mode)
    applied(lab, *second)  # now a plain re-run: in sync


@pytest.mark.parametrize("cleaner", ["iptables", "native"])
def test_cleanup_in_either_mode_removes_both_and_then_the_shared_routes(lab: NetLab, cleaner: str) -> None:
    tproxy = ("-m", "TPROXY", "-b", "*", "--dual-stack")
    before_rules = lab.run("pod", "ip", "rule").stdout
    applied(lab, *tproxy, "--native-nftables")
    plan = istio(lab, *tproxy, "--dry-run").stdout.split("# ip6tables-restore")[0]
    lab.run("pod", "iptables-nft-restore", "--noflush", input=plan)  # an iptables capture beside it
    assert "lookup 133" in lab.run("pod", "ip", "rule").stdout

    applied(lab, *tproxy, "--cleanup-only", *(["--native-nftables"] if cleaner == "native" else []))

    assert not _has_native(lab)
    assert "ISTIO" not in saved(lab)
    assert lab.run("pod", "ip", "rule").stdout == before_rules
    assert "::6/128" not in lab.run("pod", "ip", "-6", "addr", "show", "dev", "lo").stdout


# --- 7. drift is order-aware; the normalization matches both backends' -save ------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_the_same_rules_in_another_order_are_drift(lab: NetLab, backend: str) -> None:
    base = (*STANDARD, "--ipv6", "off", "--force-iptables-binary", backend)
    applied(lab, *base, "-u", "1337,1338")
    first = saved(lab, backend=backend)

    refused = istio(lab, *base, "-u", "1338,1337")
    assert refused.returncode == 1
    assert "another order" in refused.stderr
    assert saved(lab, backend=backend) == first

    applied(lab, *base, "-u", "1338,1337", "--reconcile")
    swapped = saved(lab, backend=backend)
    assert swapped.index("--uid-owner 1338") < swapped.index("--uid-owner 1337")
    assert "in-sync" in applied(lab, *base, "-u", "1338,1337").stderr


def _golden_plans() -> list[tuple[str, Plan, dict[str, str]]]:
    """Each golden case's plan, with owner names replaced by ids (the names of Istio's
    cases, e.g. group 'java', need not exist here) and the map to compare them back."""
    plans = []
    for name in sorted(CASES):
        plan = build_plan(capture_config(CASES[name]), host_facts(CASES[name]))
        ids: dict[str, str] = {}
        for family in plan.families:
            for rule in family.rules:
                for option, value in zip(rule.params, rule.params[1:], strict=False):
                    if option in ("--uid-owner", "--gid-owner") and not value.isdigit():
                        ids.setdefault(value, str(40000 + len(ids)))
        plans.append((name, plan, ids))
    return plans


def _resolver(ids: dict[str, str]) -> state.Resolver:
    return lambda _option, owner: ids[owner]


def _with_ids(text: str, ids: dict[str, str]) -> str:
    for name, number in ids.items():
        text = text.replace(f"-owner {name} ", f"-owner {number} ")
    return text


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_golden_plan_compares_equal_to_what_save_prints(lab: NetLab, backend: str) -> None:
    """Apply each golden case's plan as it is, read it back with -save, and the
    in-order comparison must find no difference (and a swapped pair must be found)."""
    assert len(CASES) >= 27
    for name, plan, ids in _golden_plans():
        for family_plan in plan.families:
            base = f"{'iptables' if family_plan.family == 4 else 'ip6tables'}-{backend}"
            lab.run("pod", f"{base}-restore", "--noflush", input=_with_ids(restore_text(family_plan), ids))
            current = parse_save(lab.run("pod", f"{base}-save").stdout)
            comparison = state.Comparison(family_plan, current, _resolver(ids))
            assert comparison.differences() == [], (name, family_plan.family)
            clean = state.merge_restore(state.cleanup_lines(current, comparison.non_hooks_present()), "")
            lab.run("pod", f"{base}-restore", "--noflush", input=clean)
            assert not parse_save(lab.run("pod", f"{base}-save").stdout).has_rules(), name


# --- 8. a foreign ISTIO_-named chain is not ours ------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_foreign_istio_audit_chain_is_left_alone(lab: NetLab, backend: str) -> None:
    iptables = f"iptables-{backend}"
    lab.run("pod", iptables, "-N", "ISTIO_AUDIT")
    lab.run("pod", iptables, "-A", "INPUT", "-j", "ISTIO_AUDIT")
    lab.run("pod", iptables, "-t", "nat", "-N", "ISTIO_AUDIT")  # a name we never write, in a table we do
    flags = (*STANDARD, "--ipv6", "off", "--force-iptables-binary", backend)

    applied(lab, *flags)
    applied(lab, "-i", "*", "--ipv6", "off", "--force-iptables-binary", backend, "--reconcile")
    assert "-A INPUT -j ISTIO_AUDIT" in saved(lab, backend=backend)
    applied(lab, *flags, "--cleanup-only")
    after = saved(lab, backend=backend)
    assert "-A INPUT -j ISTIO_AUDIT" in after and after.count(":ISTIO_AUDIT") == 2
    assert "ISTIO_OUTPUT" not in after


# --- 9. a re-run reads one dump and writes nothing ------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_an_identical_rerun_with_a_big_list_runs_no_restore(lab: NetLab, tmp_path: Path, backend: str) -> None:
    """The -C pass of iptables-nft-restore is quadratic (28 s at 9,000 CIDRs): an
    identical re-run must compare text instead, and start no restore at all."""
    # Mostly CIDRs -save prints as written, and some it respells (host bits).
    cidrs = ",".join([*(f"10.{i // 250}.{i % 250}.0/24" for i in range(2000)), "172.16.9.9/12", "192.0.2.77/28"])
    flags = (*STANDARD, "--ipv6", "off", "--force-iptables-binary", backend, "-x", cidrs)
    applied(lab, *flags)
    log = tmp_path / "calls"
    restore = f"iptables-{backend}-restore"
    env = _shim(tmp_path / "bin", restore, f'echo "$@" >> {log}\nexec {_real(restore)} "$@"')

    rerun = applied(lab, *flags, env=env)

    assert "in-sync" in rerun.stderr
    assert not log.exists(), log.read_text()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", ["one CIDR deleted", "a foreign rule in the middle", "two CIDRs swapped"])
def test_a_big_list_changed_in_the_middle_is_drift_on_a_rerun(lab: NetLab, backend: str, change: str) -> None:
    """A re-run compares a 3,000-CIDR run with -save's text in one piece; a change deep
    inside it must still be found (and nothing written without --reconcile)."""
    cidrs = [f"10.{i // 250}.{i % 250}.0/24" for i in range(3000)]
    flags = (*STANDARD, "--ipv6", "off", "--force-iptables-binary", backend, "-x", ",".join(cidrs))
    applied(lab, *flags)
    iptables = f"iptables-{backend}"
    if change == "one CIDR deleted":
        lab.run("pod", iptables, "-t", "nat", "-D", "ISTIO_OUTPUT", "-d", cidrs[1500], "-j", "RETURN")
    elif change == "a foreign rule in the middle":
        position = str(1500 + 5)  # past the rules before the -x run, inside it
        lab.run("pod", iptables, "-t", "nat", "-I", "ISTIO_OUTPUT", position, "-d", "192.0.2.9/32", "-j", "RETURN")
    else:
        lab.run("pod", iptables, "-t", "nat", "-D", "ISTIO_OUTPUT", "-d", cidrs[1500], "-j", "RETURN")
        position = str(1500 + 5 + 1)
        lab.run("pod", iptables, "-t", "nat", "-I", "ISTIO_OUTPUT", position, "-d", cidrs[1500], "-j", "RETURN")
    before = saved(lab, backend=backend)

    rerun = istio(lab, *flags)

    assert rerun.returncode == 1, rerun.stderr
    assert "differ from this plan" in rerun.stderr and "nat/ISTIO_OUTPUT" in rerun.stderr
    assert saved(lab, backend=backend) == before


# --- 10. after a failed run, nft list ruleset is byte-identical ---------------------------------

@pytest.mark.parametrize("failure", ["::6 refused", "iptables restore refused"])
def test_a_failed_run_leaves_nft_list_ruleset_byte_identical(lab: NetLab, tmp_path: Path, failure: str) -> None:
    lab.run("pod", "iptables-nft", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN")
    lab.run("pod", "ip6tables-nft", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN")
    lab.run("pod", "ip6tables-nft", "-t", "mangle", "-A", "OUTPUT", "-j", "RETURN")
    env = None
    if failure == "::6 refused":
        lab.sysctl("pod", "net.ipv6.conf.lo.disable_ipv6", "1")
    else:  # IPv6 is written, then the IPv4 restore is refused
        env = _shim(tmp_path / "bin", "iptables-nft-restore", f"""
case " $* " in *" --noflush "*) cat >/dev/null; echo "iptables-nft-restore: line 5 failed" >&2; exit 1;; esac
exec {_real("iptables-nft-restore")} "$@"
""")
    before = _nft_ruleset(lab)

    done = istio(lab, *STANDARD, "-m", "TPROXY", "--dual-stack", env=env)

    assert done.returncode == 1
    assert "restored to its state before this run" in done.stderr
    assert _nft_ruleset(lab) == before
