"""The libiptc (python-iptables) backend against iptables-legacy-restore, in throwaway netns.

Every test creates fresh network namespaces (``iit-libiptc-<random>``) and runs the
backend in a subprocess under ``ip netns exec``, so the host's tables are never
touched.  The reference for "what the rules should look like" is the same rule text
fed to ``iptables-legacy-restore --noflush`` in another fresh namespace; outputs of
``iptables-legacy-save`` (comment lines and counters dropped) must be identical.

Needs root, ``ip`` and the iptables-legacy tools.  Without them the tests skip, or
fail when ``REQUIRE_NETNS=1`` (as CI sets it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
NS_PREFIX = "iit-libiptc-"
TOOLS = ("ip", "iptables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy-save",
         "ip6tables-legacy-restore")

# A rule as the tests write it: (table, "-A CHAIN ..." or "-I CHAIN N ...").
Line = tuple[str, str]

# ----------------------------------------------------------------------------- rulesets

NAT_CHAINS = ["ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT"]


def nat_rules(family: int) -> list[Line]:
    passthrough, loopback, dns = (
        ("127.0.0.6/32", "127.0.0.1/32", "127.0.0.53/32") if family == 4 else ("::6/128", "::1/128", "::53/128")
    )
    lines = f"""
        -A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
        -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
        -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
        -A PREROUTING -p tcp -j ISTIO_INBOUND
        -A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
        -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
        -A OUTPUT -j ISTIO_OUTPUT
        -A ISTIO_OUTPUT -o lo -s {passthrough} -j RETURN
        -A ISTIO_OUTPUT -o lo ! -d {loopback} -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
        -A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
        -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
        -A ISTIO_OUTPUT -o lo ! -d {loopback} -p tcp -m multiport ! --dports 53,15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
        -A ISTIO_OUTPUT -m owner ! --gid-owner root -m owner ! --gid-owner 202 -j RETURN
        -A ISTIO_OUTPUT -d {loopback} -j RETURN
        -A ISTIO_OUTPUT -d {"9.9.0.0/16" if family == 4 else "2001:db8:9::/48"} -j ISTIO_REDIRECT
        -I PREROUTING 1 -i eth1 -j RETURN
        -A OUTPUT -j ISTIO_OUTPUT_DNS
        -A ISTIO_OUTPUT_DNS -p udp --dport 53 -d {dns} -j REDIRECT --to-port 15053
    """  # noqa: E501
    return [("nat", line) for line in _lines(lines)]


DNS_RAW_RULES: list[Line] = [
    ("raw", "-A OUTPUT -j ISTIO_OUTPUT_DNS"),
    ("raw", "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1"),
    ("raw", "-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner 1337 -j CT --zone 2"),
]

# raw first: the backend commits tables in first-use order, so a nat table the kernel
# rejects comes after a committed raw table, which must then be reverted.
STANDARD_CHAINS = [("raw", "ISTIO_OUTPUT_DNS")] + [("nat", c) for c in [*NAT_CHAINS, "ISTIO_OUTPUT_DNS"]]

TPROXY_CHAINS = [("mangle", c) for c in ("ISTIO_DIVERT", "ISTIO_TPROXY", "ISTIO_INBOUND", "ISTIO_DROP")]


def tproxy_rules(family: int) -> list[Line]:
    loopback, passthrough = ("127.0.0.1/32", "127.0.0.6/32") if family == 4 else ("::1/128", "::6/128")
    lines = f"""
        -A ISTIO_DIVERT -j MARK --set-mark 1337
        -A ISTIO_DIVERT -j ACCEPT
        -A ISTIO_TPROXY ! -d {loopback} -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006
        -A PREROUTING -p tcp -j ISTIO_INBOUND
        -A ISTIO_INBOUND -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT
        -A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY
        -A PREROUTING -p tcp -m mark --mark 1337 -j CONNMARK --save-mark
        -A OUTPUT -p tcp -o lo -m mark --mark 1337 -j RETURN
        -A OUTPUT ! -d {loopback} -p tcp -o lo -m owner --uid-owner 1337 -j MARK --set-mark 1338
        -A OUTPUT -p tcp -m connmark --mark 1337 -j CONNMARK --restore-mark
        -I ISTIO_INBOUND 1 -p tcp -m mark --mark 1337 -j RETURN
        -I ISTIO_INBOUND 2 -p tcp -s {passthrough} -i lo -j RETURN
        -I ISTIO_INBOUND 3 -p tcp -i lo -m mark ! --mark 1338 -j RETURN
        -A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP
        -A ISTIO_DROP -j DROP
    """
    return [("mangle", line) for line in _lines(lines)]


# Rules that exist before the backend runs, so "untouched" means more than "empty".
PRE_EXISTING = {
    4: """*nat
:KEEP_ME - [0:0]
-A OUTPUT -d 192.0.2.9/32 -j KEEP_ME
-A KEEP_ME -p tcp -j RETURN
COMMIT
*raw
-A PREROUTING -p udp --dport 9999 -j ACCEPT
COMMIT
*mangle
-A OUTPUT -m mark --mark 7 -j RETURN
COMMIT
""",
    6: """*nat
:KEEP_ME - [0:0]
-A OUTPUT -d 2001:db8::9/128 -j KEEP_ME
COMMIT
*raw
-A PREROUTING -p udp --dport 9999 -j ACCEPT
COMMIT
*mangle
-A OUTPUT -m mark --mark 7 -j RETURN
COMMIT
""",
}


def _lines(block: str) -> list[str]:
    return [line.strip() for line in textwrap.dedent(block).splitlines() if line.strip()]


def as_rule(line: Line) -> tuple[str, str, list[str], int | None]:
    """(table, chain, params, position) in the shape of istio_iptables.model.iptables_plan.Rule."""
    table, text = line
    argv = shlex.split(text)
    if argv[0] == "-A":
        return table, argv[1], argv[2:], None
    assert argv[0] == "-I", text
    return table, argv[1], argv[3:], int(argv[2])


def restore_text(chains: Sequence[tuple[str, str]], lines: Sequence[Line]) -> str:
    """The same ruleset as an iptables-restore file (tables in first-use order)."""
    order: list[str] = []
    for table, _ in [*chains, *lines]:
        if table not in order:
            order.append(table)
    out: list[str] = []
    for table in order:
        out.append(f"*{table}")
        out += [f":{chain} - [0:0]" for t, chain in chains if t == table]
        out += [text for t, text in lines if t == table]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- environment


def _required() -> bool:
    return os.environ.get("REQUIRE_NETNS", "").strip().lower() in {"1", "true", "yes"}


def _unavailable() -> str | None:
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root: creates network namespaces and writes iptables-legacy tables in them"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if importlib.util.find_spec("iptc") is None:
        return "python-iptables (module iptc) is not installed"
    probe = f"{NS_PREFIX}probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        legacy = subprocess.run(["ip", "netns", "exec", probe, "iptables-legacy-save", "-t", "nat"],
                                capture_output=True, text=True)
        if legacy.returncode != 0:
            return f"iptables-legacy does not work here: {legacy.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_AVAILABILITY: list[str | None] = []


@pytest.fixture
def netns() -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty network namespaces, all deleted at the end of the test."""
    if not _AVAILABILITY:
        _AVAILABILITY.append(_unavailable())
    reason = _AVAILABILITY[0]
    if reason is not None:
        if _required():
            pytest.fail(f"REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)
    created: list[str] = []

    def make() -> str:
        name = f"{NS_PREFIX}{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        created.append(name)
        return name

    yield make
    for name in created:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def run(ns: str, *argv: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}): {proc.stderr}"
    return proc.stdout


def legacy_save(ns: str, family: int, table: str | None = None) -> str:
    """iptables-legacy-save output without comment lines and counters."""
    argv = ["iptables-legacy-save" if family == 4 else "ip6tables-legacy-save"]
    if table is not None:
        argv += ["-t", table]
    text = run(ns, *argv)
    kept = [re.sub(r"\s*\[\d+:\d+\]$", "", line) for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(kept) + "\n"


def legacy_restore(ns: str, family: int, text: str) -> None:
    run(ns, "iptables-legacy-restore" if family == 4 else "ip6tables-legacy-restore", "--noflush", stdin=text)


_RUNNER = """
import json, sys
from dataclasses import dataclass
from istio_iptables.kernel import libiptc
from tests.integration.libiptc_save import save

@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    params: tuple[str, ...]
    position: int | None = None

def call(req):
    rules = [Rule(t, c, tuple(p), pos) for t, c, p, pos in req.get("rules", [])]
    chains = [(t, c) for t, c in req.get("chains", [])]
    isolate = req.get("isolate", True)
    try:
        if req["op"] == "apply":
            result = libiptc.apply_rules(req["family"], chains, rules, isolate=isolate)
        elif req["op"] == "delete":
            result = libiptc.delete_rules(req["family"], rules, chains, isolate=isolate)
        else:
            result = save(req["family"], req["tables"], isolate=isolate)
    except libiptc.LibiptcError as exc:
        return {"ok": False, "error": str(exc), "table": exc.table, "chain": exc.chain, "rule": exc.rule}
    return {"ok": True, "result": result}

print(json.dumps([call(req) for req in json.load(sys.stdin)]))
"""


def request(op: str, family: int, *, chains: Sequence[tuple[str, str]] = (), lines: Sequence[Line] = (),
            tables: Sequence[str] = (), isolate: bool = True) -> dict[str, Any]:
    return {"op": op, "family": family, "chains": list(chains), "rules": [as_rule(x) for x in lines],
            "tables": list(tables), "isolate": isolate}


def backend_calls(ns: str, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run backend calls, in order, in one fresh interpreter inside `ns`; returns their answers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    out = run(ns, sys.executable, "-c", _RUNNER, stdin=json.dumps(list(requests)), env=env)
    answers: list[dict[str, Any]] = json.loads(out.strip().splitlines()[-1])
    return answers


def backend(ns: str, op: str, family: int, *, chains: Sequence[tuple[str, str]] = (),
            lines: Sequence[Line] = (), tables: Sequence[str] = (), isolate: bool = True) -> dict[str, Any]:
    """One backend call inside `ns` in a fresh interpreter; returns its answer."""
    return backend_calls(ns, [request(op, family, chains=chains, lines=lines, tables=tables, isolate=isolate)])[0]


def apply_ok(ns: str, family: int, chains: Sequence[tuple[str, str]], lines: Sequence[Line], *,
             isolate: bool = True) -> None:
    answer = backend(ns, "apply", family, chains=chains, lines=lines, isolate=isolate)
    assert answer["ok"], answer["error"]


def assert_same_as_restore(netns: Callable[[], str], family: int, chains: Sequence[tuple[str, str]],
                           lines: Sequence[Line], *, isolate: bool = True) -> str:
    """Apply with the backend in one namespace and with restore in another; compare."""
    ours, reference = netns(), netns()
    apply_ok(ours, family, chains, lines, isolate=isolate)
    legacy_restore(reference, family, restore_text(chains, lines))
    tables = sorted({t for t, _ in [*chains, *lines]})
    for table in tables:
        expected = legacy_save(reference, family, table)
        assert legacy_save(ours, family, table) == expected, f"table {table} differs"
        assert "-A " in expected
    # save() renders rules exactly as iptables-legacy-save prints them.
    answer = backend(ours, "save", family, tables=tables)
    assert answer["ok"], answer["error"]
    for table, chain_rules in answer["result"].items():
        ours_lines = [f"-A {chain} {text}".rstrip() for chain, rules in chain_rules.items() for text in rules]
        saved = [line for line in legacy_save(ours, family, table).splitlines() if line.startswith("-A ")]
        assert ours_lines == saved, f"save() differs from iptables-legacy-save for {table}"
    return ours


# ----------------------------------------------------------------------------- tests


def test_import_is_cheap_and_lazy() -> None:
    """Importing the backend must not import python-iptables (or run ldconfig)."""
    code = "import sys, istio_iptables.kernel.libiptc as m; print('iptc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_loading_iptc_runs_no_ldconfig_or_gcc() -> None:
    """With the environment prepared, python-iptables opens its libraries by path."""
    if importlib.util.find_spec("iptc") is None:
        if _required():
            pytest.fail("python-iptables (module iptc) is not installed")
        pytest.skip("python-iptables (module iptc) is not installed")
    code = textwrap.dedent("""
        import json, subprocess
        spawned = []
        original = subprocess.Popen.__init__
        def record(self, args, *a, **k):
            spawned.append(args if isinstance(args, str) else [str(x) for x in args])
            return original(self, args, *a, **k)
        subprocess.Popen.__init__ = record
        from istio_iptables.kernel.libiptc.loader import load_iptc
        load_iptc(4)
        print(json.dumps(spawned))
    """)
    env = {k: v for k, v in os.environ.items()
           if k not in ("XTABLES_LIBDIR", "IPTABLES_LIBDIR", "PYTHON_IPTABLES_XTABLES_VERSION")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "PYTHONPATH": str(REPO)}, cwd=REPO)
    spawned = json.loads(out.stdout.strip().splitlines()[-1])
    # modprobe only where the kernel lacks ip_tables (python-iptables runs it at every import).
    assert [argv for argv in spawned if "modprobe" not in " ".join(argv)] == []
    if os.path.exists("/proc/net/ip_tables_names"):
        assert spawned == []


@pytest.mark.parametrize("isolate", [True, False], ids=["worker", "in-process"])
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_standard_nat_ruleset_matches_restore(netns: Callable[[], str], family: int, isolate: bool) -> None:
    lines = nat_rules(family) + DNS_RAW_RULES
    ours = assert_same_as_restore(netns, family, STANDARD_CHAINS, lines, isolate=isolate)
    nat = legacy_save(ours, family, "nat")
    # -I PREROUTING 1 went in front of the earlier appended PREROUTING rule.
    prerouting = [line for line in nat.splitlines() if line.startswith("-A PREROUTING")]
    assert prerouting == ["-A PREROUTING -i eth1 -j RETURN", "-A PREROUTING -p tcp -j ISTIO_INBOUND"]
    assert "--to-ports 15053" in nat  # --to-port is getopt's abbreviation of --to-ports


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_tproxy_mangle_ruleset_matches_restore(netns: Callable[[], str], family: int) -> None:
    ours = assert_same_as_restore(netns, family, TPROXY_CHAINS, tproxy_rules(family))
    inbound = [line for line in legacy_save(ours, family, "mangle").splitlines()
               if line.startswith("-A ISTIO_INBOUND")]
    assert inbound[0].endswith("-m mark --mark 0x539 -j RETURN")
    assert "-i lo -p tcp -j RETURN" in inbound[1]
    assert inbound[2].endswith("-m mark ! --mark 0x53a -j RETURN")
    assert "--ctstate RELATED,ESTABLISHED" in inbound[3]


def test_existing_chain_is_flushed_like_restore_noflush(netns: Callable[[], str]) -> None:
    before = [("nat", "-A ISTIO_OUTPUT -d 192.0.2.1/32 -j RETURN")]
    chains = [("nat", "ISTIO_OUTPUT")]
    lines = [("nat", "-A OUTPUT -j ISTIO_OUTPUT"), ("nat", "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN")]
    ours, reference = netns(), netns()
    for ns in (ours, reference):
        legacy_restore(ns, 4, restore_text(chains, before))
    apply_ok(ours, 4, chains, lines)
    legacy_restore(reference, 4, restore_text(chains, lines))
    assert legacy_save(ours, 4, "nat") == legacy_save(reference, 4, "nat")


FAILURES = {
    "jump-to-missing-chain": ("nat", "-A ISTIO_OUTPUT -p tcp -j ISTIO_NO_SUCH_CHAIN", "ISTIO_NO_SUCH_CHAIN"),
    "unknown-target": ("nat", "-A ISTIO_OUTPUT -j NOSUCHTARGET", "NOSUCHTARGET"),
    "unknown-option": ("nat", "-A ISTIO_OUTPUT -p tcp --no-such-option 1 -j RETURN", "no-such-option"),
    "bad-option-value": ("nat", "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports notaport", "REDIRECT"),
    "unknown-match": ("nat", "-A ISTIO_OUTPUT -m nosuchmatch --x 1 -j RETURN", "nosuchmatch"),
    "missing-chain-for-rule": ("nat", "-A ISTIO_NOT_CREATED -j RETURN", "ISTIO_NOT_CREATED"),
    "insert-past-end": ("nat", "-I ISTIO_INBOUND 9 -j RETURN", "ISTIO_INBOUND"),
    # Accepted by libiptc, refused by the kernel at commit: CT is a raw-table target.  The raw
    # table, committed earlier, must be reverted.
    "kernel-rejects-commit": ("nat", "-A ISTIO_OUTPUT -p udp -j CT --zone 3", "rejected by the kernel"),
}


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failing_rule_writes_nothing(netns: Callable[[], str], family: int, case: str) -> None:
    ns = netns()
    legacy_restore(ns, family, PRE_EXISTING[family])
    before = {fam: legacy_save(ns, fam) for fam in (4, 6)}
    table, bad, needle = FAILURES[case]
    good = DNS_RAW_RULES + nat_rules(family)  # raw first, so raw is committed before nat
    lines = [*good[:8], (table, bad), *good[8:]]
    answer = backend(ns, "apply", family, chains=STANDARD_CHAINS, lines=lines)
    assert not answer["ok"], "the backend accepted a broken rule"
    message = answer["error"]
    assert needle in message, message
    assert f"-t {table}" in message, message
    if case != "kernel-rejects-commit":
        assert bad in message, message  # the failing rule, verbatim
        assert answer["table"] == table
        assert answer["chain"] == shlex.split(bad)[1]
        assert answer["rule"] == bad
    else:
        assert "reverted" in message and "raw" in message, message
    assert {fam: legacy_save(ns, fam) for fam in (4, 6)} == before


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_delete_rules_removes_everything_and_is_idempotent(netns: Callable[[], str], family: int) -> None:
    ns = netns()
    legacy_restore(ns, family, PRE_EXISTING[family])
    pristine = legacy_save(ns, family)
    chains = STANDARD_CHAINS + TPROXY_CHAINS
    lines = nat_rules(family) + DNS_RAW_RULES + tproxy_rules(family)
    apply_ok(ns, family, chains, lines)
    assert legacy_save(ns, family) != pristine
    for _ in range(2):
        answer = backend(ns, "delete", family, chains=chains, lines=lines)
        assert answer["ok"], answer["error"]
        assert legacy_save(ns, family) == pristine
    # Twice applied (rules in built-in chains duplicated), still fully removed.
    apply_ok(ns, family, chains, lines)
    apply_ok(ns, family, chains, lines)
    answer = backend(ns, "delete", family, chains=chains, lines=lines)
    assert answer["ok"], answer["error"]
    assert legacy_save(ns, family) == pristine


def test_families_are_independent(netns: Callable[[], str]) -> None:
    ns = netns()
    apply_ok(ns, 6, TPROXY_CHAINS, tproxy_rules(6))
    assert "-A " not in legacy_save(ns, 4)
    assert "ISTIO_TPROXY" in legacy_save(ns, 6, "mangle")


def test_many_calls_in_one_process(netns: Callable[[], str]) -> None:
    """python-iptables caches table handles per process: later calls must see fresh state."""
    ns, reference = netns(), netns()
    chains = STANDARD_CHAINS + TPROXY_CHAINS
    v4 = nat_rules(4) + DNS_RAW_RULES + tproxy_rules(4)
    v6 = nat_rules(6) + DNS_RAW_RULES + tproxy_rules(6)
    broken = [*v4[:5], ("nat", "-A ISTIO_OUTPUT -j NOSUCHTARGET"), *v4[5:]]
    answers = backend_calls(ns, [
        request("apply", 4, chains=chains, lines=v4),
        request("apply", 6, chains=chains, lines=v6),
        request("delete", 4, chains=chains, lines=v4),
        request("apply", 4, chains=chains, lines=broken),
        request("apply", 4, chains=chains, lines=v4),
        request("apply", 4, chains=chains, lines=v4),  # re-apply: declared chains are flushed first
    ])
    assert [a["ok"] for a in answers] == [True, True, True, False, True, True], answers
    legacy_restore(reference, 4, restore_text(chains, v4))
    legacy_restore(reference, 6, restore_text(chains, v6))
    for family in (4, 6):
        for table in ("nat", "raw", "mangle"):
            expected = legacy_save(reference, family, table)
            actual = legacy_save(ns, family, table)
            if family == 4 and table != "nat":
                # Rules in built-in chains were appended twice by the two applies.
                expected_rules = sorted(set(expected.splitlines()))
                assert sorted(set(actual.splitlines())) == expected_rules
            elif family == 4:
                assert sorted(set(actual.splitlines())) == sorted(set(expected.splitlines()))
            else:
                assert actual == expected


def test_in_process_mode_refuses_a_second_family(netns: Callable[[], str]) -> None:
    """libxtables 1.8 cannot serve both families in one process; say so instead of failing oddly."""
    ns = netns()
    answers = backend_calls(ns, [
        request("apply", 4, chains=TPROXY_CHAINS, lines=tproxy_rules(4), isolate=False),
        request("apply", 6, chains=TPROXY_CHAINS, lines=tproxy_rules(6), isolate=False),
        request("apply", 6, chains=TPROXY_CHAINS, lines=tproxy_rules(6), isolate=True),
        request("save", 4, tables=["mangle"], isolate=False),
    ])
    assert [a["ok"] for a in answers] == [True, False, False, True], answers
    for answer in answers[1:3]:
        assert "same process" in answer["error"], answer["error"]
    assert "-A " not in legacy_save(ns, 6)
    assert "ISTIO_TPROXY" in legacy_save(ns, 4, "mangle")


MORE_SYNTAX_CHAINS = [("filter", "ISTIO_MISC"), ("filter", "ISTIO_MISC2")]


def more_syntax_rules(family: int) -> list[Line]:
    host, net, dotted = (("10.0.0.1", "192.0.2.0/24", "10.1.0.0/255.255.0.0") if family == 4
                         else ("2001:db8::1", "2001:db8:1::/64", "2001:db8:2::/48"))
    icmp = ("-p icmp --icmp-type echo-request" if family == 4
            else "-p icmpv6 --icmpv6-type echo-request")
    lines = f"""
        -A OUTPUT -j ISTIO_MISC
        -A ISTIO_MISC -p tcp -m tcp --tcp-flags SYN,RST SYN -j RETURN
        -A ISTIO_MISC ! -p udp -s {host} -j RETURN
        -A ISTIO_MISC -i eth+ ! -o lo -j ACCEPT
        -A ISTIO_MISC -d {dotted} -m comment --comment "istio rule, with spaces" -j RETURN
        -A ISTIO_MISC -m state --state NEW,ESTABLISHED -j ACCEPT
        -A ISTIO_MISC -p udp -m udp --dport 53:60 -j DROP
        -A ISTIO_MISC -p tcp --dport=8080 -m owner --uid-owner 0 -j RETURN
        -A ISTIO_MISC -m mark --mark 0x10/0xff -g ISTIO_MISC2
        -A ISTIO_MISC2 -p tcp -j REJECT --reject-with tcp-reset
        -A ISTIO_MISC2 -s {net}
        -I ISTIO_MISC2 1 {icmp} -j ACCEPT
    """
    return [("filter", line) for line in _lines(lines)]


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_more_syntax_matches_restore(netns: Callable[[], str], family: int) -> None:
    """Goto, aliases (state), wildcards, dotted masks, '=' values, quoted values, no -j."""
    assert_same_as_restore(netns, family, MORE_SYNTAX_CHAINS, more_syntax_rules(family))
