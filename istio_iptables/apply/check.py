"""Does the namespace hold exactly the planned capture?  Surveys and decides as an
apply would, and writes nothing: the CNI plugin's CHECK, and anything else that must
answer "drifted or not" without changing the namespace."""

import difflib
import re

from istio_iptables.model import hostfacts
from istio_iptables.model.config import CaptureConfig, RunOptions


def differences(capture: CaptureConfig, run: RunOptions) -> list[str]:
    """What differs between the current namespace and the plan, in words (empty: in
    sync).  iptables mode compares every family's rules in order (apply/iptables);
    native nftables mode compares Istio's tables line by line with the plan as the
    kernel lists it; both check the ::6 address and TPROXY's policy routing when the
    plan adds them."""
    from istio_iptables.model.iptables_plan import build_plan

    facts = hostfacts.gather(run.ipv6, capture.dual_stack, capture.needs_nameservers, run.resolv_conf)
    plan = build_plan(capture, facts)
    if run.native_nftables:
        problems = _nft_differences(capture, facts)
    else:
        from istio_iptables.apply.iptables import check_iptables

        problems = check_iptables(plan, run)
    if plan.routes:
        from istio_iptables.kernel.routes import missing_routes

        problems += [f"missing: {step.describe()}" for step in missing_routes(plan.routes)]
    if plan.addresses:
        from istio_iptables.kernel.netlink import interface_addresses
        from istio_iptables.model.constants import IPV6_INBOUND_PASSTHROUGH, IPV6_INBOUND_PASSTHROUGH_ADDRESS

        if IPV6_INBOUND_PASSTHROUGH_ADDRESS not in {address for _, address in interface_addresses()}:
            problems.append(f"{IPV6_INBOUND_PASSTHROUGH} is missing on lo")
    return problems


def _nft_differences(capture: CaptureConfig, facts: hostfacts.HostFacts) -> list[str]:
    """Istio's native tables here against the plan, both as `nft list table` prints
    them (the plan applied in a new, empty namespace: kernel/nft.as_listed), every
    chain and rule in order; counters' packets and bytes are not compared."""
    from istio_iptables.kernel.nft import as_listed, istio_tables_text
    from istio_iptables.model.nft_plan import build_nft_rules, render_parts

    planned = tables_of(as_listed(render_parts(build_nft_rules(capture, facts))))
    present = tables_of(istio_tables_text())
    problems = []
    for table in sorted(planned.keys() | present.keys()):
        want, have = planned.get(table), present.get(table)
        if have is None:
            problems.append(f"nftables table inet {table} is missing")
        elif want is None:
            problems.append(f"nftables table inet {table} is not in the plan")
        elif want != have:
            problems.append(f"nftables table inet {table}: {_first_difference(want, have)}")
    return problems


_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")


def tables_of(listing: str) -> dict[str, list[str]]:
    """`nft list table` output → table name → its lines, stripped, counters without
    their numbers (what traffic did is not drift)."""
    tables: dict[str, list[str]] = {}
    lines: list[str] = []
    for raw in listing.splitlines():
        line = _COUNTER.sub("counter", raw.strip())
        if line.startswith("table "):
            lines = tables.setdefault(line.split()[2], [])
        elif line:
            lines.append(line)
    return tables


def _first_difference(want: list[str], have: list[str]) -> str:
    """The first place the namespace's lines leave the plan's, in words."""
    matcher = difflib.SequenceMatcher(a=want, b=have, autojunk=False)
    for tag, w1, _, h1, _ in matcher.get_opcodes():
        if tag == "insert":
            return f"unexpected {have[h1]!r}"
        if tag == "delete":
            return f"missing {want[w1]!r}"
        if tag == "replace":
            return f"{want[w1]!r} reads {have[h1]!r}"
    return "differs"  # unreachable for unequal lists
