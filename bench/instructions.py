#!/usr/bin/env python3
"""Deterministic cost of an apply: instructions counted by valgrind (callgrind).

CPU milliseconds on a shared 2-vCPU VM swing by 30% from run to run, which hides
the few-millisecond differences that matter under a 100m CPU limit.  Instruction
counts are the same on every run for the same binaries and inputs, so this script
compares the tool with the floor in instructions, per row:

  floor  python -c 'import click' ending without the interpreter's teardown (bench.py's
         floor execs the restore, which skips it too, and the tool ends with os._exit),
         given the tool's arguments (the interpreter decodes argv before any code runs:
         20 M instructions for the 130 KB of 10,000 -x CIDRs, paid by any Python tool),
         plus one iptables-nft-restore --noflush of the text the tool would write
         (re-run rows: plus one iptables-nft-save of the rules in place instead);
  tool   istio-iptables (its console script, as pip writes it and an image runs
         it), plus every program it starts.  valgrind follows its
         posix_spawn children, but their report would go to the stderr the tool reads
         from them, so every process writes its own log file (--log-file=DIR/%p):
         whatever the tool runs is counted, on exactly its input.

Rows: standard and TPROXY (IPv4, iptables-nft) always; `--modes` adds DNS capture and
native nftables (floor: `nft -f` of the tool's ruleset), `--cidrs` -x 1,000, 5,000 and
10,000 CIDRs, `--rerun` the identical second run of the standard profile (with `--cidrs`, also of
the 10,000-CIDR row on iptables-nft and on iptables-legacy), `--libiptc` the
`--backend libiptc` apply against its own floor (python -c 'import click' plus one
iptables-legacy-restore; python-iptables works in a forked worker, whose counters would
start with everything the parent ran before the fork, so valgrind dumps the parent's
counts just before glibc's _Fork and every dump is summed, each instruction counted
once), `--cni` a CNI ADD (`istio-iptables-cni`, the config on stdin) against
the standard floor.
Run as root after `python3 -m compileall -q istio_iptables` (make bench-instructions
does both): a stale .pyc would add the compiler's cost to the tool.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from runner import clean_interpreter, console_scripts, image_interpreter

REPO = Path(__file__).resolve().parent.parent
STANDARD = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
            "-d", "15090,15021,15020"]
VALGRIND = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--callgrind-out-file=/dev/null"]
_COLLECTED = re.compile(r"Collected : ([\d,]+)")
_COMMAND = re.compile(r"Command: (.+)")


def collected(text: str) -> int:
    return sum(int(m.group(1).replace(",", "")) for m in _COLLECTED.finditer(text))


class Namespace:
    """A scratch network namespace like a pod's: lo up, one veth end with an address."""

    def __init__(self) -> None:
        self.name = f"iinstr-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        batch = "link set lo up\nlink add eth0 type veth peer name eth1\nlink set eth0 up\n" \
                "addr add 192.0.2.2/24 dev eth0\n"
        subprocess.run(["ip", "-n", self.name, "-batch", "-"], input=batch, text=True, check=True)

    def run(self, argv: Sequence[str], stdin: str = "", env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], input=stdin, text=True,
                              capture_output=True, check=False, env=env)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def counted(ns: Namespace, argv: Sequence[str], stdin: str = "") -> int:
    """Instructions executed by `argv` (and the children valgrind follows) in `ns`."""
    done = ns.run([*VALGRIND, *argv], stdin)
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed under valgrind:\n{done.stderr[-2000:]}")
    return collected(done.stderr)


def per_process(logs: Path) -> tuple[int, list[tuple[str, int]]]:
    """From one log per traced process (valgrind --log-file=DIR/%p), in start order: the
    first process's count (the tool's interpreter), and (program, count) for every other."""
    own, children = -1, []
    for log in sorted(logs.iterdir(), key=lambda path: int(path.name)):
        text = log.read_text()
        command = _COMMAND.search(text)
        program = Path(command.group(1).split()[0]).name if command else "?"
        if own < 0:
            own = collected(text)
        else:
            children.append((program, collected(text)))
    return max(own, 0), children


def count_tool(tool: str, args: Sequence[str], logs: Path, ns: Namespace) -> tuple[int, list[tuple[str, int]]]:
    """The tool's own process and each program it started, in start order."""
    for old in logs.iterdir():
        old.unlink()
    done = ns.run([*VALGRIND, f"--log-file={logs}/%p", tool, *args])
    if done.returncode != 0:
        raise SystemExit(f"istio-iptables failed under valgrind:\n{done.stderr[-2000:]}")
    return per_process(logs)


def count_tree(ns: Namespace, argv: Sequence[str], out: Path) -> int:
    """Every process of `argv`'s tree, each instruction counted once (see the docstring)."""
    for old in out.iterdir():
        old.unlink()
    tool = [*VALGRIND[:-1], "--dump-before=_Fork", f"--callgrind-out-file={out}/cg.%p"]
    done = ns.run([*tool, *argv])
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed under valgrind:\n{done.stderr[-2000:]}")
    return sum(int(line.split()[1]) for path in out.iterdir()
               for line in path.read_text().splitlines() if line.startswith("totals:"))


def cni_add_config(ns: Namespace) -> str:
    """What a runtime sends a chained plugin on ADD: our entry with the standard capture
    and the primary plugin's result."""
    import json

    return json.dumps({
        "cniVersion": "1.0.0", "name": "bench", "type": "istio-iptables-cni", "capture": STANDARD,
        "prevResult": {"cniVersion": "1.0.0",
                       "interfaces": [{"name": "eth0", "sandbox": f"/var/run/netns/{ns.name}"}],
                       "ips": [{"address": "192.0.2.2/24", "gateway": "192.0.2.1", "interface": 0}]}})


def count_cni_add(plugin: str, logs: Path, ns: Namespace) -> tuple[int, list[tuple[str, int]]]:
    """A CNI ADD driven as a runtime drives it (bare environment, CNI_* variables, the
    config on stdin): the plugin's process and each program it started."""
    for old in logs.iterdir():
        old.unlink()
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_NETNS": f"/var/run/netns/{ns.name}",
           "CNI_IFNAME": "eth0", "CNI_CONTAINERID": "bench", "CNI_PATH": "/usr/lib/cni"}
    done = subprocess.run([*VALGRIND, f"--log-file={logs}/%p", plugin],
                          input=cni_add_config(ns), text=True, capture_output=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the CNI ADD failed under valgrind:\n{done.stdout[-1000:]}{done.stderr[-2000:]}")
    return per_process(logs)


def cidr_list(count: int) -> str:
    return ",".join(f"{240 + i // 1000}.{i // 100 % 10}.{i // 10 % 10}.{i % 10}/32" for i in range(count))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cidrs", action="store_true", help="add the -x 1,000 / 5,000 / 10,000 CIDR rows")
    p.add_argument("--rerun", action="store_true", help="add the identical second run of the standard profile")
    p.add_argument("--modes", action="store_true", help="add DNS capture and native nftables (floor: nft -f)")
    p.add_argument("--libiptc", action="store_true", help="add --backend libiptc (floor: iptables-legacy-restore)")
    p.add_argument("--cni", action="store_true", help="add a CNI ADD of the standard capture")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root (network namespaces)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="iinstr-") as tmp:
        scratch = Path(tmp)
        resolv = scratch / "resolv.conf"
        resolv.write_text("nameserver 10.96.0.10\n")
        with_x = [(f"-x {n:,} CIDRs", [*STANDARD[:11], cidr_list(n), *STANDARD[12:]], "restore")
                  for n in (1_000, 5_000, 10_000)]
        rows: list[tuple[str, list[str], str]] = [
            ("standard", STANDARD, "restore"),
            ("standard -m TPROXY", [*STANDARD[:7], "TPROXY", *STANDARD[8:]], "restore"),
            *([("DNS capture", [*STANDARD, "--redirect-dns", "--resolv-conf", str(resolv)], "restore"),
               ("native nftables", [*STANDARD, "--native-nftables"], "nft")] if args.modes else []),
            *(with_x if args.cidrs else []),
            *([("native -x 10,000 CIDRs", [*with_x[-1][1], "--native-nftables"], "nft")]
              if args.cidrs and args.modes else []),
            *([("re-run standard", STANDARD, "save")] if args.rerun else []),
            *([(f"re-run -x 10,000 ({flavour})", [*with_x[-1][1], "--force-iptables-binary", flavour], "save")
               for flavour in ("nft", "legacy")] if args.rerun and args.cidrs else []),
            *([("backend libiptc", [*STANDARD, "--backend", "libiptc"], "legacy")] if args.libiptc else []),
            *([("CNI ADD", STANDARD, "cni")] if args.cni else []),
        ]
        python = clean_interpreter(scratch)  # the image's interpreter, without this machine's .pth hooks
        scripts = console_scripts(python, scratch / "bin")  # the commands as an image runs them
        logs = scratch / "logs"
        logs.mkdir()
        ns = Namespace()
        try:
            click_only = [python, "-c", "import click, os; os._exit(0)"]
            import_click = counted(ns, click_only)
        finally:
            ns.close()
        print("instructions (valgrind callgrind), IPv4, iptables-nft; M = millions")
        print(f"  interpreter: {image_interpreter()} (a venv of it)")
        print(f"  floor's interpreter: python -c 'import click' (no teardown) {import_click / 1e6:.1f} M,"
              " given the row's arguments")
        print(f"  {'row':<26} {'floor':>9} {'tool':>9} {'ratio':>6}  tool = python process + the programs it ran")
        for name, flags, floor_kind in rows:
            full = [*flags, "--ipv6", "off"]
            output = ["--output", "nft"] if floor_kind == "nft" else []
            dry = subprocess.run([python, "-m", "istio_iptables", "--dry-run", *output, *full], capture_output=True,
                                 text=True, check=True, cwd=REPO).stdout
            rules = "".join(line + "\n" for line in dry.splitlines() if not line.startswith("#"))
            ns = Namespace()
            try:
                if floor_kind == "save":
                    if ns.run([python, "-m", "istio_iptables", *full]).returncode != 0:
                        raise SystemExit("the first apply failed")
                    flavour = "legacy" if "legacy" in flags else "nft"
                    floor_child = counted(ns, [f"iptables-{flavour}-save"])
                else:
                    probe = Namespace()
                    floor_argv = {"nft": ["nft", "-f", "-"], "legacy": ["iptables-legacy-restore", "--noflush"]}.get(
                        floor_kind, ["iptables-nft-restore", "--noflush"])
                    try:
                        floor_child = counted(probe, floor_argv, rules)
                    finally:
                        probe.close()
                children: list[tuple[str, int]] = []
                if floor_kind == "legacy":  # python-iptables forks a worker: count the tree once
                    tool_python = count_tree(ns, [scripts["istio-iptables"], *full], logs)
                elif floor_kind == "cni":
                    tool_python, children = count_cni_add(scripts["istio-iptables-cni"], logs, ns)
                else:
                    tool_python, children = count_tool(scripts["istio-iptables"], full, logs, ns)
            finally:
                ns.close()
            ns = Namespace()
            try:
                floor_python = counted(ns, [*click_only, *full])
            finally:
                ns.close()
            floor = floor_python + floor_child
            tool = tool_python + sum(c for _, c in children)
            parts = " + ".join([f"{tool_python / 1e6:.1f}", *(f"{n} {c / 1e6:.1f}" for n, c in children)])
            print(f"  {name:<26} {floor / 1e6:8.1f}M {tool / 1e6:8.1f}M {tool / floor:5.2f}x  {parts}")
    print("target: tool / floor <= 1.25x (backend libiptc: <= 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
