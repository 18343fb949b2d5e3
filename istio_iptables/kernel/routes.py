"""TPROXY's policy routing from the standard library: `ip rule add fwmark M lookup T`
and `ip route add local default dev lo table T`, per family, idempotent.

These two steps used to go through pyroute2, whose import alone costs 150-200 ms of
CPU and 33 MiB of peak RSS: under the init container's 100m limit that is 1.5-2 s
added to every TPROXY pod start.  The rtnetlink messages they need are four
fixed-size headers and a few u32 attributes; netlink.py's helpers send them.
pyroute2 stays where its breadth pays and startup does not count (the veth lab).

Adding is idempotent: a rule is looked for in a dump first (the kernel's EEXIST check
for rules compares priorities, which a priority-less `ip rule add` never repeats), a
route is added with NLM_F_EXCL and EEXIST means present.  Removing treats "not there"
as done.  Both report what they changed, so a rollback removes exactly that.
"""

from __future__ import annotations

import _socket as socket  # the C module, as in netlink.py
import _struct as struct  # the C module: struct.py only re-exports it (~0.35 M instructions)
import errno
from collections.abc import Callable, Sequence

from istio_iptables.kernel import netlink
from istio_iptables.kernel.netlink import NetlinkError
from istio_iptables.model.iptables_plan import RouteStep

RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWRULE = 32
RTM_DELRULE = 33
RTM_GETRULE = 34
RTA_OIF = 4
RTA_TABLE = 15
FRA_FWMARK = 10
FRA_TABLE = 15
FR_ACT_TO_TBL = 1
RTPROT_BOOT = 3  # what `ip route add` writes as the route's protocol
RTN_LOCAL = 2
RT_SCOPE_HOST = 254
RT_SCOPE_NOWHERE = 255
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
# What "not there" looks like when removing: no such rule/route, or no such family here.
_ABSENT = (errno.ENOENT, errno.ESRCH, errno.EAFNOSUPPORT)


class RouteError(RuntimeError):
    """A routing step failed; the message names the step and the kernel's words."""


def _u32(kind: int, value: int) -> bytes:
    return struct.pack("=HHI", 8, kind, value)


def _header_table(table: int) -> int:
    """The u8 table field of the fixed header: the id when it fits, else unspecified
    (the u32 attribute, always sent, carries it)."""
    return table if table < 256 else 0


def _rule_body(step: RouteStep) -> bytes:
    # struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags
    head = struct.pack("=BBBBBBBBI", _FAMILY[step.family], 0, 0, 0, _header_table(step.table), 0, 0,
                       FR_ACT_TO_TBL, 0)
    return head + _u32(FRA_TABLE, step.table) + _u32(FRA_FWMARK, step.mark or 0)


def _route_body(step: RouteStep, lo_index: int, adding: bool = True) -> bytes:
    # struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    # A delete leaves protocol and scope open, as `ip route del` does: whoever added it.
    protocol, scope = (RTPROT_BOOT, RT_SCOPE_HOST) if adding else (0, RT_SCOPE_NOWHERE)
    head = struct.pack("=BBBBBBBBI", _FAMILY[step.family], 0, 0, 0, _header_table(step.table), protocol,
                       scope, RTN_LOCAL, 0)
    return head + _u32(RTA_TABLE, step.table) + _u32(RTA_OIF, lo_index)


def _dump(kind: int, family: int) -> list[tuple[bytes, dict[int, bytes]]]:
    """(fixed header, attributes) of every rule or route of a family."""
    found: list[tuple[bytes, dict[int, bytes]]] = []
    request = struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0)
    for payload in netlink.dump(kind, request):
        found.append((payload[:12], netlink.attributes(payload, 12)))
    return found


def _table_of(head: bytes, attrs: dict[int, bytes]) -> int:
    raw = attrs.get(FRA_TABLE)  # == RTA_TABLE
    return struct.unpack("=I", raw)[0] if raw is not None else head[4]


def _rule_present(step: RouteStep) -> bool:
    for head, attrs in _dump(RTM_GETRULE, _FAMILY[step.family]):
        mark = attrs.get(FRA_FWMARK)
        if head[7] == FR_ACT_TO_TBL and _table_of(head, attrs) == step.table and mark is not None \
                and struct.unpack("=I", mark)[0] == step.mark:
            return True
    return False


def _local_default_present(step: RouteStep, lo_index: int) -> bool:
    for head, attrs in _dump(RTM_GETROUTE, _FAMILY[step.family]):
        oif = attrs.get(RTA_OIF)
        if head[1] == 0 and head[7] == RTN_LOCAL and _table_of(head, attrs) == step.table \
                and oif is not None and struct.unpack("=I", oif)[0] == lo_index:
            return True
    return False


def _add(step: RouteStep, lo_index: int) -> bool:
    """Add one step; False when it was already there."""
    excl = netlink.NLM_F_CREATE | netlink.NLM_F_EXCL
    if step.kind == "rule":
        if _rule_present(step):
            return False
        netlink.request(RTM_NEWRULE, excl, _rule_body(step))
        return True
    try:
        netlink.request(RTM_NEWROUTE, excl, _route_body(step, lo_index))
    except NetlinkError as err:
        if err.errno != errno.EEXIST:
            raise
        if _local_default_present(step, lo_index):
            return False
        raise NetlinkError(errno.EEXIST, f"table {step.table} already holds a different default route") from None
    return True


def _remove(step: RouteStep, lo_index: int) -> bool:
    """Remove one step; False when it was not there."""
    try:
        if step.kind == "rule":
            netlink.request(RTM_DELRULE, 0, _rule_body(step))
        else:
            netlink.request(RTM_DELROUTE, 0, _route_body(step, lo_index, adding=False))
    except NetlinkError as err:
        if err.errno in _ABSENT:
            return False
        raise
    return True


def apply_routes(steps: Sequence[RouteStep], added: list[RouteStep]) -> None:
    """Add each missing step, appending it to `added` as soon as it exists, so that a
    failure half-way still tells the rollback what to remove."""
    _each(steps, _add, added, "{}")


def remove_routes(steps: Sequence[RouteStep]) -> list[RouteStep]:
    """Remove each present step; returns the ones removed.  Safe to repeat."""
    removed: list[RouteStep] = []
    _each(steps, _remove, removed, "removing ({})")
    return removed


def _each(steps: Sequence[RouteStep], change: Callable[[RouteStep, int], bool], changed: list[RouteStep],
          what: str) -> None:
    """Run `change` on each step in order, appending to `changed` each step it changed
    (at once: a failure later still leaves the list right); a kernel error stops the
    loop as a RouteError naming the step (`what` formats its description)."""
    lo_index = socket.if_nametoindex("lo")
    for step in steps:
        try:
            if change(step, lo_index):
                changed.append(step)
        except OSError as err:
            raise RouteError(f"{what.format(step.describe())} failed: {err.strerror or err}") from None


def missing_routes(steps: Sequence[RouteStep]) -> list[RouteStep]:
    """The steps not in place now (read-only: two dumps per family), for a CHECK."""
    lo_index = socket.if_nametoindex("lo")
    return [step for step in steps
            if not (_rule_present(step) if step.kind == "rule" else _local_default_present(step, lo_index))]
