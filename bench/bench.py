#!/usr/bin/env python3
"""Startup cost of istio-iptables against its floor and against istio-iptables.sh.

Run as root: `python3 bench/bench.py [--runs N] [--quick] [--only TEXT] [--json FILE]`
(`make bench`).  The method, the modules and the history of results are in
bench/README.md.  In short: every row (rows.py) runs the tool, its floor and, for
applies, the shell baseline, interleaved, each in a fresh pod namespace of the
package's veth lab, median of N runs (measure.py, runner.py); then the standard and
TPROXY applies run under the init container's cpu 100m / memory 50Mi, once per quota
offset (limits.py: the mean time to ready over offsets, with its confidence interval);
then a profile of the standard apply (costs.py); report.py prints it all with a
verdict per row.  Targets are reported, never asserted: the exit status is 0 when
the benchmark ran.  Namespaces and cgroups are removed at the end, also on failure,
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the package, when run as a script

from costs import profile
from limits import LimitedCgroup, remove_stale_cgroups
from measure import TAG, Bench, Result
from report import machine, report, targets
from rows import build_rows
from runner import REPO, BenchError, Runner, child_env, clean_interpreter, image_interpreter, site_hooks

from istio_iptables.lab.netlab import cleanup_stale_namespaces


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=None, help="runs per measurement, median reported (default 7)")
    p.add_argument("--quick", action="store_true", help="runs=3 (unless --runs) and no 5,000/10,000-CIDR rows")
    p.add_argument("--json", metavar="FILE", help="also write the raw numbers to FILE")
    p.add_argument("--only", metavar="TEXT", action="append", default=[],
                   help="only rows whose name contains TEXT (repeatable)")
    p.add_argument("--python", metavar="PATH",
                   help="interpreter for the tool and the floor, used as is (default: a clean venv of the "
                        "image's interpreter, /usr/bin/python3.X, else of this one)")
    p.add_argument("--no-cgroup", action="store_true", help="skip the 100m/50Mi section")
    p.add_argument("--limited-runs", type=int, default=None, metavar="N",
                   help="runs per command in the 100m/50Mi section, one per quota offset "
                        "(default 100; 20 with --quick)")
    p.add_argument("--no-profile", action="store_true", help="skip the profile section")
    args = p.parse_args(argv)
    if args.runs is None:
        args.runs = 3 if args.quick else 7
    if args.limited_runs is None:
        args.limited_runs = 20 if args.quick else 100
    if args.runs < 1 or args.limited_runs < 1:
        p.error("--runs and --limited-runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("bench: run as root (network namespaces, iptables, cgroups)\n")
        return 2
    for tool in ("ip", "iptables-nft-restore", "iptables-legacy-restore", "nft"):
        if shutil.which(tool, path=child_env()["PATH"]) is None:
            sys.stderr.write(f"bench: {tool} not found\n")
            return 2

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    def log(msg: str) -> None:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    cleanup_stale_namespaces(TAG)
    remove_stale_cgroups()
    scratch_dir = tempfile.TemporaryDirectory(prefix=f"{TAG}-")
    scratch = Path(scratch_dir.name)
    cgroup = LimitedCgroup()
    try:
        if args.python:
            python, env = args.python, child_env(str(REPO))
            python_note = f"{python} as is (PYTHONPATH={REPO})"
        else:
            python, env = clean_interpreter(scratch), child_env()
            hooks = site_hooks()
            python_note = (f"venv of {image_interpreter()}, the image's interpreter when present "
                           f"(site-packages of {sys.executable} via a path-only .pth"
                           + (f"; start-up code in .pth files skipped: {', '.join(hooks)}" if hooks else "")
                           + "; --python to measure another interpreter)")
        runner = Runner(scratch, env)
        bench = Bench(runner, python, args.runs, log, args.limited_runs)
        info = machine(python_note)
        launcher_ms: float | None = None
        if runner.time_bin:
            launcher_ms = statistics.median(runner.run(["true"], netns=None).cpu_ms for _ in range(5))
        rows = [r for r in build_rows(args.quick, scratch) if not args.only or any(o in r.name for o in args.only)]
        results: list[Result] = []
        for row in rows:
            log(f"row: {row.name}")
            started = time.monotonic()
            results.append(bench.run_row(row))
            log(f"  done in {time.monotonic() - started:.1f} s")
        limited: dict[str, Any] | None = None
        if args.no_cgroup:
            limited_note = "skipped (--no-cgroup)"
        elif not cgroup.version:
            limited_note = "skipped: " + cgroup.describe()
        else:
            log("cgroup: cpu 100m, memory 50Mi")
            limited_note = cgroup.describe() + " (removed afterwards)"
            limited = bench.limited(cgroup)
        prof = None
        if not args.no_profile:
            log("profile")
            prof = profile(bench)
        print(report(info, args.runs, results, limited, limited_note, prof, launcher_ms))
        if args.json:
            raw = {"machine": info, "runs": args.runs, "launcher_cpu_ms": launcher_ms,
                   "rows": [r.raw() for r in results], "limited": limited, "cgroup": limited_note,
                   "targets": [{"target": n, "value": v, "verdict": t} for n, v, t in
                               targets({r.row.name: r for r in results}, limited)],
                   "profile": prof}
            Path(args.json).write_text(json.dumps(raw, indent=2) + "\n")
            log(f"raw numbers written to {args.json}")
        return 0
    except BenchError as err:
        sys.stderr.write(f"bench: {err}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("bench: interrupted; cleaning up\n")
        return 130
    finally:
        cgroup.remove()
        scratch_dir.cleanup()


if __name__ == "__main__":
    sys.exit(main())
