"""What is measured: the rows (flags, backend, kind, target) and each row's floor.

A row's floor is the least any Python+click tool could cost for the same work:
  apply, CNI ADD   `import click`, then exec the iptables-restore(s) of the text the
                   tool's --dry-run prints (one per family);
  re-run           `import click`, then exec the -save of each family: reading the
                   rules back once is the least a run that must find them in place does;
  native nftables  `import click`, then exec `nft -f` of the tool's --output nft text;
  dry run          `import click` alone.
Every floor's interpreter is given the tool's arguments too (after "--", unread): any
Python tool pays for decoding them before its first line runs.
The shell baseline (apply rows) is the tool's `--output commands` as a /bin/sh script:
one iptables process per rule, as istio-iptables.sh did.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runner import BenchError

STANDARD: tuple[str, ...] = ("-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
                             "-x", "", "-b", "*", "-d", "15090,15021,15020")
TARGET_RATIO, TARGET_RATIO_LIBIPTC, TARGET_RSS_MIB = 1.25, 1.5, 25.0
TARGET_LIMITED_RATIO = 1.15  # time to ready under 100m/50Mi, tool over floor
# One argv or environment string may hold at most 32 pages (MAX_ARG_STRLEN), NUL included.
ARG_LIMIT = 32 * os.sysconf("SC_PAGESIZE") - 1
RESOLV_CONF = "nameserver 10.96.0.10\nnameserver fd00:10:96::a\nsearch default.svc.cluster.local\n"

# The floor: the interpreter and click, then straight into the row's programs.  Arguments
# are pairs (command line, stdin file or "-"); all but the last are forked, the last exec'd.
# After "--" come the tool's own arguments, unread: the interpreter decodes argv before any
# code runs (20 M instructions for the 130 KB of 10,000 -x CIDRs), as it does for the tool.
FLOOR_CODE = """\
import click, os, sys
args = sys.argv[1:sys.argv.index("--")]
while args:
    argv, path, args = args[0].split(), args[1], args[2:]
    pid = os.fork() if args else 0
    if pid == 0:
        if path != "-":
            os.dup2(os.open(path, os.O_RDONLY), 0)
        os.execvp(argv[0], argv)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
        sys.exit(1)
"""


@dataclass(frozen=True)
class Row:
    name: str
    args: tuple[str, ...]
    backend: str  # what the row asks for: "auto", "nft", "legacy", "libiptc", "native"
    kind: str = "apply"  # apply | rerun | dry-run | native | cni
    tproxy: bool = False
    note: str = ""
    target: float = TARGET_RATIO

    @property
    def flavours(self) -> tuple[str, ...]:
        return {"auto": ("nft", "legacy"), "nft": ("nft",), "native": ()}.get(self.backend, ("legacy",))

    @property
    def slug(self) -> str:
        return "".join(ch if ch.isalnum() else "_" for ch in self.name)


def with_flag(args: Sequence[str], flag: str, value: str) -> tuple[str, ...]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return tuple(out)


def exclude_cidrs(count: int) -> tuple[str, str]:
    """`count` distinct /32s for -x, and the range they come from.  198.18.0.0/15
    (benchmarking) while the list fits in one argv string; past that (about 8,000
    entries) the kernel refuses the exec, so the list is written as compactly as IPv4
    allows, in 240.0.0.0/4 (reserved, never routed).  Only rule text: no traffic."""
    base = (198 << 24) | (18 << 16)
    text = ",".join(f"{(a := base + i + 1) >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}/32"
                    for i in range(count))
    if len(text) <= ARG_LIMIT:
        return text, "198.18.0.0/15"
    text = ",".join(f"{240 + i // 1000}.{i // 100 % 10}.{i // 10 % 10}.{i % 10}/32" for i in range(count))
    if count > 16_000 or len(text) > ARG_LIMIT:
        raise BenchError(f"{count} CIDRs do not fit in one argument ({ARG_LIMIT} bytes)")
    return text, "240.0.0.0/4 (198.18.0.0/15 text exceeds MAX_ARG_STRLEN)"


def build_rows(quick: bool, scratch: Path) -> list[Row]:
    std = STANDARD
    resolv = scratch / "resolv.conf"
    resolv.write_text(RESOLV_CONF)
    sizes = (1_000,) if quick else (1_000, 5_000, 10_000)
    cidrs = {n: exclude_cidrs(n) for n in (10, *sizes)}
    rows = [
        Row("standard", std, "auto"),
        Row("standard --dual-stack", (*std, "--dual-stack"), "auto"),
        Row("standard -m TPROXY", with_flag(std, "-m", "TPROXY"), "auto", tproxy=True),
        Row("DNS capture", (*std, "--redirect-dns", "--resolv-conf", str(resolv)), "auto",
            note="--redirect-dns, resolv.conf with one IPv4 and one IPv6 nameserver"),
    ]
    # 5,000 is not in the list: it gives the linearity check two spans well above the noise.
    for count, (text, source) in cidrs.items():
        rows.append(Row(f"-x {count:,} CIDRs", with_flag(std, "-x", text), "auto", note=f"{count:,} in {source}"))
    rows += [
        Row("--dry-run --ipv6 off", (*std, "--dry-run", "--ipv6", "off"), "auto", kind="dry-run"),
        Row("--dry-run", (*std, "--dry-run"), "auto", kind="dry-run"),
        Row("backend nft restore", (*std, "--force-iptables-binary", "nft"), "nft"),
        Row("backend legacy restore", (*std, "--force-iptables-binary", "legacy"), "legacy"),
        Row("backend libiptc", (*std, "--backend", "libiptc"), "libiptc", target=TARGET_RATIO_LIBIPTC),
        Row("native nftables", (*std, "--native-nftables"), "native", kind="native"),
    ]
    for flavour in ("nft", "legacy"):
        forced = ("--force-iptables-binary", flavour)
        rows.append(Row(f"re-run standard ({flavour})", (*std, *forced), flavour, kind="rerun"))
        for count in sizes:
            rows.append(Row(f"re-run -x {count:,} CIDRs ({flavour})", (*with_flag(std, "-x", cidrs[count][0]),
                                                                       *forced), flavour, kind="rerun"))
    rows.append(Row("CNI ADD (standard)", std, "auto", kind="cni",
                    note="python -m istio_iptables.cni, CNI_COMMAND=ADD, config on stdin"))
    return rows


def split_restore(text: str) -> dict[int, str]:
    """The dry-run's restore text per family, comment lines dropped."""
    parts: dict[int, list[str]] = {}
    family = 4
    for line in text.splitlines():
        if line.startswith("#"):
            if "ip6tables-restore" in line:
                family = 6
            elif "iptables-restore" in line:
                family = 4
            continue
        if line.strip():
            parts.setdefault(family, []).append(line)
    return {f: "\n".join(lines) + "\n" for f, lines in parts.items()}


def shell_script(commands: str, flavour: str) -> str:
    """`--output commands` as istio-iptables.sh ran it: one process per rule."""
    lines = ["set -e"]
    for line in commands.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        for base in ("iptables", "ip6tables"):
            if line.startswith(base + " "):
                line = f"{base}-{flavour}{line[len(base):]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def binary(family: int, flavour: str, tool: str) -> str:
    """iptables-nft-restore, ip6tables-legacy-save, ..."""
    return f"{'iptables' if family == 4 else 'ip6tables'}-{flavour}-{tool}"


def restore_command(family: int, flavour: str) -> str:
    return binary(family, flavour, "restore") + " --noflush" + (" --wait" if flavour == "legacy" else "")
