"""Where the standard apply's CPU goes: the tool's own process against its children,
the programs it runs (strace), and the imports beyond the floor's (-X importtime)."""

from __future__ import annotations

import re
import shutil
import statistics
from typing import Any

from measure import Bench, fresh_pod
from rows import STANDARD

# The tool as its console script runs it (the entry point, not runpy's `-m`), reporting
# its own CPU apart from its children's.  The tool leaves with os._exit (no atexit), so
# the report wraps os._exit.
SPLIT_CODE = """\
import os, resource, sys
_exit = os._exit
def _report(status):
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    sys.stderr.write(f"BENCH-RUSAGE {me.ru_utime + me.ru_stime} {kids.ru_utime + kids.ru_stime}\\n")
    sys.stderr.flush()
    _exit(status)
os._exit = _report
from istio_iptables.cli import entry
entry()
"""


def profile(bench: Bench) -> dict[str, Any]:
    """Where the tool's CPU goes on the standard profile: itself vs its children, the
    programs it runs, and its import costs."""
    runner = bench.runner
    out: dict[str, Any] = {}
    runs = max(3, min(bench.runs, 5))

    splits: list[tuple[float, float, float]] = []
    for _ in range(runs):
        with fresh_pod() as lab:
            s = runner.run([bench.python, "-c", SPLIT_CODE, *STANDARD], netns=lab.pod_ns_path)
        m = re.search(r"BENCH-RUSAGE (\S+) (\S+)", s.stderr)
        if s.ok and m:
            splits.append((s.cpu_ms, float(m.group(1)) * 1000, float(m.group(2)) * 1000))
    if splits:
        out["split_ms"] = {"tree": statistics.median(t for t, _, _ in splits),
                           "python_process": statistics.median(p for _, p, _ in splits),
                           "children": statistics.median(c for _, _, c in splits)}

    strace = shutil.which("strace")
    if strace:
        log_file = bench.scratch / "strace.log"
        with fresh_pod() as lab:
            runner.run([strace, "-f", "-qq", "-e", "trace=execve", "-o", str(log_file),
                        *bench.tool_argv(STANDARD)], netns=lab.pod_ns_path, measure=False)
        programs = []
        for line in log_file.read_text().splitlines() if log_file.exists() else []:
            m = re.search(r'execve\("([^"]+)", \[(.*?)\]', line)
            if m and line.rstrip().endswith("= 0"):
                argv = [a.strip().strip('"') for a in m.group(2).split(", ")]
                programs.append(" ".join(argv)[:100])
        out["execs"] = programs[1:]  # the first is the tool's own interpreter

    def import_selfs(argv: list[str]) -> tuple[float, dict[str, float]]:
        """Median total import ms and median self ms per module, over `runs` runs."""
        selfs: dict[str, list[int]] = {}
        totals: list[int] = []
        for _ in range(runs):
            with fresh_pod() as lab:
                s = runner.run(argv, netns=lab.pod_ns_path, measure=False)
            total = 0
            for line in s.stderr.splitlines():
                m = re.match(r"import time:\s+(\d+) \|\s+\d+ \| \s*(\S+)", line)
                if m:
                    total += int(m.group(1))
                    selfs.setdefault(m.group(2), []).append(int(m.group(1)))
            totals.append(total)
        return statistics.median(totals) / 1000, {k: statistics.median(v) / 1000 for k, v in selfs.items()}

    # The console script under -X importtime: `-m` would add runpy's own imports.
    tool_total, tool_mods = import_selfs([bench.python, "-X", "importtime", *bench.tool_argv(STANDARD)])
    floor_total, floor_mods = import_selfs([bench.python, "-X", "importtime", "-c", "import click"])
    extra = sorted(((v, k) for k, v in tool_mods.items() if k not in floor_mods), reverse=True)
    out["imports_ms"] = {"tool": round(tool_total, 2), "floor": round(floor_total, 2),
                         "beyond_floor": round(sum(v for v, _ in extra), 2), "modules_beyond_floor": len(extra)}
    out["imports_beyond_floor_top"] = [(k, round(v, 2)) for v, k in extra[:16]]
    return out

