"""Refresh Istio's golden files in tests/testdata from a local Istio checkout.

Usage:

    git clone https://github.com/istio/istio /src/istio      # once, or use any clone you have
    python3 scripts/refresh_goldens.py /src/istio             # goldens of the checkout's HEAD
    python3 scripts/refresh_goldens.py /src/istio --rev 1.28.0 --rev-1-3 1.3.8
    python3 scripts/refresh_goldens.py /src/istio --check     # change nothing; exit 1 if out of date

Files are read with `git show REV:PATH`, so any commit the clone holds can be used
and no network is needed.  The script copies, byte for byte:

- tools/istio-iptables/pkg/capture/testdata/*.golden   -> tests/testdata/istio-golden/iptables/
- tools/istio-nftables/pkg/capture/testdata/*.golden   -> tests/testdata/istio-golden/nftables/
- tests/scripts/testdata/*_golden.txt at --rev-1-3     -> tests/testdata/istio-1.3-golden/
  (skipped with a note when the clone lacks that tag, e.g. a shallow clone)

and records the commits in tests/testdata/NOTICE and istio-golden/cases.json.

What it cannot do is translate a new case's inputs: Istio writes them as Go closures
in tools/istio-iptables/pkg/capture/run_test.go, and cases.json holds them as flags,
environment and host facts.  For a case that has a golden file but no entry in
cases.json, the script prints the Go closure and exits 1; transcribe it by hand (the
test of the golden count then needs its number updated too).  A case that Istio
dropped is reported so its cases.json entry can go.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

TESTDATA = Path(__file__).resolve().parent.parent / "tests" / "testdata"
CURRENT = TESTDATA / "istio-golden"
ISTIO_1_3 = TESTDATA / "istio-1.3-golden"
NOTICE = TESTDATA / "NOTICE"
# Our directory -> Istio's directory and the suffix of its golden files.
SOURCES = {
    CURRENT / "iptables": ("tools/istio-iptables/pkg/capture/testdata", ".golden"),
    CURRENT / "nftables": ("tools/istio-nftables/pkg/capture/testdata", ".golden"),
}
SOURCE_1_3 = ("tests/scripts/testdata", "_golden.txt")
RUN_TEST = "tools/istio-iptables/pkg/capture/run_test.go"


class Checkout:
    """Read-only access to one commit of a local Istio clone through git."""

    def __init__(self, path: Path, rev: str) -> None:
        self.path = path
        self.rev = rev
        self.commit = self._git("rev-parse", "--verify", f"{rev}^{{commit}}").strip()
        self.date = self._git("log", "-1", "--format=%cs", self.commit).strip()

    def _git(self, *args: str) -> str:
        done = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"refresh_goldens: git {' '.join(args)} in {self.path}: {done.stderr.strip()}")
        return done.stdout

    def files(self, directory: str, suffix: str) -> dict[str, bytes]:
        """File name -> content of every `*suffix` file directly in `directory`."""
        names = self._git("ls-tree", "--name-only", f"{self.commit}:{directory}").split()
        return {name: self.read(f"{directory}/{name}") for name in names if name.endswith(suffix)}

    def read(self, path: str) -> bytes:
        done = subprocess.run(["git", "-C", str(self.path), "show", f"{self.commit}:{path}"],
                              capture_output=True, check=True)
        return done.stdout


def sync(target: Path, files: dict[str, bytes], check: bool) -> list[str]:
    """Make `target` hold exactly `files`; returns what changed (or would change)."""
    changes: list[str] = []
    present = {p.name for p in target.glob("*") if p.name in files or p.suffix in (".golden", ".txt")}
    for name in sorted(present - set(files)):
        changes.append(f"removed {target.name}/{name}")
        if not check:
            (target / name).unlink()
    for name, content in sorted(files.items()):
        path = target / name
        if path.exists() and path.read_bytes() == content:
            continue
        changes.append(f"{'updated' if path.exists() else 'added'} {target.name}/{name}")
        if not check:
            target.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    return changes


def go_case(run_test: str, name: str) -> str:
    """The closure of case `name` in run_test.go, as a hint for transcribing it."""
    lines = run_test.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f'"{name}",':
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "},"), len(lines) - 1)
            return "\n".join(lines[i - 1 : end + 2])
    return f"(case {name!r} not found in {RUN_TEST})"


def record_commits(current: Checkout, old_1_3: Checkout | None, check: bool) -> list[str]:
    """Write the commits into NOTICE and the `about` of istio-golden/cases.json."""
    changes: list[str] = []
    edits = [
        (NOTICE, r"at istio/istio commit [0-9a-f]{40} \(\d{4}-\d{2}-\d{2}\)",
         f"at istio/istio commit {current.commit} ({current.date})"),
        (CURRENT / "cases.json", r"commit [0-9a-f]{7,40}, \d{4}-\d{2}-\d{2}",
         f"commit {current.commit[:12]}, {current.date}"),
    ]
    if old_1_3 is not None:
        edits.append((NOTICE, r"\(tag \S+, commit\n    [0-9a-f]{40}",
                      f"(tag {old_1_3.rev}, commit\n    {old_1_3.commit}"))
    for path, pattern, replacement in edits:
        text = path.read_text()
        new = re.sub(pattern, replacement, text, count=1)
        if new != text:
            changes.append(f"recorded the commit in {path.relative_to(TESTDATA)}")
            if not check:
                path.write_text(new)
    return changes


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a local clone of istio/istio")
    parser.add_argument("--rev", default="HEAD", help="commit or tag for the current goldens (default HEAD)")
    parser.add_argument("--rev-1-3", default="1.3.8", help="tag or commit for Istio 1.3's goldens (default 1.3.8)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is out of date")
    args = parser.parse_args(argv)

    current = Checkout(args.checkout, args.rev)
    changes: list[str] = []
    goldens: set[str] = set()
    for target, (directory, suffix) in SOURCES.items():
        files = current.files(directory, suffix)
        goldens |= {name[: -len(suffix)] for name in files}
        changes += sync(target, files, args.check)
    try:
        old_1_3: Checkout | None = Checkout(args.checkout, args.rev_1_3)
    except SystemExit as err:
        print(f"note: Istio 1.3 goldens left as they are: {err}", file=sys.stderr)
        old_1_3 = None
    if old_1_3 is not None:
        changes += sync(ISTIO_1_3, old_1_3.files(*SOURCE_1_3), args.check)
    changes += record_commits(current, old_1_3, args.check)

    problems: list[str] = []
    cases = set(json.loads((CURRENT / "cases.json").read_text())["cases"])
    run_test = current.read(RUN_TEST).decode()
    for name in sorted(goldens - cases):
        problems.append(f"case {name} has a golden file but no inputs in cases.json; Istio's case:\n"
                        + go_case(run_test, name))
    for name in sorted(cases - goldens):
        problems.append(f"case {name} is in cases.json but Istio no longer has its golden file")

    for line in changes:
        print(line)
    for problem in problems:
        print(f"refresh_goldens: {problem}", file=sys.stderr)
    if args.check and changes:
        print(f"refresh_goldens: tests/testdata is not at {current.commit[:12]}", file=sys.stderr)
        return 1
    if not changes:
        print(f"tests/testdata already matches istio/istio {current.commit[:12]}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
