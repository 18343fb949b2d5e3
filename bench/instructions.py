#!/usr/bin/env python3
"""Deterministic cost of the standard apply: instructions counted by valgrind (callgrind).

CPU milliseconds on a shared 2-vCPU VM swing by 30% from run to run, which hides
the few-millisecond differences that matter under a 100m CPU limit.  Instruction
counts are the same on every run for the same binaries and inputs, so this script
compares the tool with the floor in instructions:

  floor  python -c 'import click' ending without the interpreter's teardown (bench.py's
         floor execs the restore, which skips it too, and the tool ends with os._exit),
         plus one iptables-nft-restore --noflush of the text the tool would write;
  tool   istio-iptables with the standard profile, plus the two iptables processes it
         starts (the restore, and the final -save it logs as istio-init does).
         valgrind does not follow posix_spawn children, so those two are counted
         separately, on the same input in a fresh namespace.

The `--backend libiptc` profile compares the tool with its own floor (python -c
'import click' plus one iptables-legacy-restore --noflush).  Its python-iptables work
runs in a forked worker, whose counters would otherwise start with everything the
parent executed before the fork: valgrind dumps the parent's counts just before
glibc's _Fork, and every process's own dumps (parent parts, worker, the iptables
children valgrind follows) are summed, each instruction counted once.

Run as root after `python3 -m compileall -q istio_iptables` (make bench-instructions
does both): a stale .pyc would add the compiler's cost to the tool.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STANDARD = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
            "-d", "15090,15021,15020"]
VALGRIND = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--callgrind-out-file=/dev/null"]


def clean_python(scratch: Path) -> str:
    """A venv of this interpreter whose one .pth only adds paths: this machine's
    other .pth files run start-up code that a real image would not have."""
    venv = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    paths = [p for p in sys.path if p.endswith("site-packages")] + [str(REPO)]
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "paths.pth").write_text("\n".join(paths) + "\n")
    return str(venv / "bin" / "python3")


def counted(argv: list[str], stdin: str = "", netns: str | None = None) -> int:
    """Instructions executed by `argv` and the children valgrind follows, in a fresh
    network namespace (or in `netns`)."""
    name = netns or f"iinstr-{uuid.uuid4().hex[:8]}"
    if netns is None:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        done = subprocess.run(["ip", "netns", "exec", name, *VALGRIND, *argv], input=stdin, text=True,
                              capture_output=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{argv[0]} failed under valgrind:\n{done.stderr[-2000:]}")
        return sum(int(line.rsplit(":", 1)[1].replace(",", "")) for line in done.stderr.splitlines()
                   if "Collected :" in line)
    finally:
        if netns is None:
            subprocess.run(["ip", "netns", "del", name], check=False)


def counted_tree(argv: list[str]) -> tuple[int, list[int]]:
    """Instructions of `argv`'s whole process tree in a fresh namespace, each counted once
    (see the module docstring), and the per-process (per-dump) parts."""
    name = f"iinstr-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with tempfile.TemporaryDirectory(prefix="iinstr-cg-") as out:
            tool = [*VALGRIND[:-1], "--dump-before=_Fork", f"--callgrind-out-file={out}/cg.%p"]
            done = subprocess.run(["ip", "netns", "exec", name, *tool, *argv], capture_output=True, text=True,
                                  check=False)
            if done.returncode != 0:
                raise SystemExit(f"{argv[0]} failed under valgrind:\n{done.stderr[-2000:]}")
            parts = [int(line.split()[1]) for path in sorted(Path(out).iterdir())
                     for line in path.read_text().splitlines() if line.startswith("totals:")]
        return sum(parts), parts
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def libiptc_profile(python: str) -> None:
    """`--backend libiptc` against python -c 'import click' + one iptables-legacy-restore."""
    dry = subprocess.run([python, "-m", "istio_iptables", "--dry-run", "--ipv6", "off", *STANDARD],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    rules = "".join(line + "\n" for line in dry.splitlines() if not line.startswith("#"))
    import_click = counted([python, "-c", "import click, os; os._exit(0)"])
    restore = counted(["iptables-legacy-restore", "--noflush"], rules)
    floor = import_click + restore
    tool, parts = counted_tree([python, "-m", "istio_iptables", "--ipv6", "off", *STANDARD, "--backend", "libiptc"])
    print("standard profile, IPv4, --backend libiptc, instructions (valgrind callgrind)")
    for label, value in (("floor: python -c 'import click' (no teardown)", import_click),
                         ("floor: iptables-legacy-restore --noflush", restore), ("floor total", floor)):
        print(f"  {label:42s} {value / 1e6:8.1f} M")
    print(f"  {'tool: every process, each counted once':42s} {tool / 1e6:8.1f} M  "
          f"(parts: {', '.join(f'{p / 1e6:.1f}' for p in parts)})")
    print(f"  tool / floor = {tool / floor:.2f}x (target <= 1.5x)")


def main() -> int:
    if os.geteuid() != 0:
        print("run as root (network namespaces)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="iinstr-") as scratch:
        python = clean_python(Path(scratch))
        dry = subprocess.run([python, "-m", "istio_iptables", "--dry-run", "--ipv6", "off", *STANDARD],
                             capture_output=True, text=True, check=True, cwd=REPO).stdout
        rules = "".join(line + "\n" for line in dry.splitlines() if not line.startswith("#"))
        restore = counted(["iptables-nft-restore", "--noflush"], rules)
        import_click = counted([python, "-c", "import click, os; os._exit(0)"])
        floor = import_click + restore
        tool_python = counted([python, "-m", "istio_iptables", "--ipv6", "off", *STANDARD])
        name = f"iinstr-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        try:
            subprocess.run(["ip", "netns", "exec", name, "iptables-nft-restore", "--noflush"], input=rules,
                           text=True, check=True)
            final_save = counted(["iptables-nft-save"], netns=name)
        finally:
            subprocess.run(["ip", "netns", "del", name], check=False)
    tool = tool_python + restore + final_save
    rows = [
        ("floor: python -c 'import click' (no teardown)", import_click),
        ("floor: iptables-nft-restore --noflush", restore),
        ("floor total", floor),
        ("tool: istio-iptables (python process)", tool_python),
        ("tool: its iptables-nft-restore", restore),
        ("tool: its final iptables-nft-save", final_save),
        ("tool total", tool),
    ]
    print("standard profile, IPv4, iptables-nft, instructions (valgrind callgrind)")
    for label, value in rows:
        print(f"  {label:42s} {value / 1e6:8.1f} M")
    print(f"  tool / floor = {tool / floor:.2f}x (target <= 1.25x)")
    with tempfile.TemporaryDirectory(prefix="iinstr-") as scratch:
        libiptc_profile(clean_python(Path(scratch)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
