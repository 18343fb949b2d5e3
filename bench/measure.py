"""Measuring a row: tool, floor and shell baseline interleaved, each run in a fresh pod
namespace from the package's veth lab (istio_iptables.lab.netlab), and every apply
checked afterwards (exit 0 and our rules in the namespace).  A row that fails records
the reason; the benchmark goes on."""

from __future__ import annotations

import contextlib
import json
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limits import LimitedCgroup, quota_offsets
from rows import FLOOR_CODE, STANDARD, Row, binary, restore_command, shell_script, split_restore, with_flag
from runner import Runner, Sample, console_scripts, run_quiet

from istio_iptables.lab.netlab import NetLab

TAG = "ibench"  # prefix of every namespace this benchmark creates


@contextlib.contextmanager
def fresh_pod() -> Iterator[NetLab]:
    """A pod namespace as a CNI leaves it (lo up, eth0 with an IPv4 and an IPv6 address,
    default routes) joined to a peer; removed on exit."""
    with NetLab(peer_anyip=False, prefix=TAG) as lab:
        yield lab


def iptables_save(lab: NetLab, family: int, flavour: str) -> str:
    done = run_quiet(["ip", "netns", "exec", lab.pod_ns, binary(family, flavour, "save")])
    return done.stdout if done.returncode == 0 else ""


def find_rules(lab: NetLab, families: Sequence[int], flavours: Sequence[str]) -> str | None:
    """Which flavour's tables hold ISTIO_OUTPUT for every family (None: no apply happened)."""
    for flavour in flavours:
        if all(":ISTIO_OUTPUT" in iptables_save(lab, f, flavour) for f in families):
            return flavour
    return None


def has_tproxy_routes(lab: NetLab) -> bool:
    return "lookup 133" in run_quiet(["ip", "-n", lab.pod_ns, "rule", "show"]).stdout


def has_native_tables(lab: NetLab) -> bool:
    return "inet istio-proxy-nat" in run_quiet(["ip", "netns", "exec", lab.pod_ns, "nft", "list", "tables"]).stdout


@dataclass
class Result:
    row: Row
    backend: str = ""  # what was measured: nft / legacy / libiptc (legacy) / native / -
    families: tuple[int, ...] = (4,)
    rules: int = 0
    tool: list[Sample] = field(default_factory=list)
    floor: list[Sample] = field(default_factory=list)
    shell: list[Sample] = field(default_factory=list)
    error: str = ""
    skipped: str = ""

    @staticmethod
    def median(samples: list[Sample], attr: str = "cpu_ms") -> float | None:
        values = [getattr(s, attr) for s in samples if s.ok and getattr(s, attr) is not None]
        if not samples or len(values) != len(samples):
            return None
        return float(statistics.median(values))

    def failure(self, samples: list[Sample]) -> str:
        bad = next((s for s in samples if not s.ok), None)
        return bad.error if bad else ""

    def raw(self) -> dict[str, Any]:
        tool_cpu, floor_cpu, shell_cpu = (self.median(s) for s in (self.tool, self.floor, self.shell))
        return {
            "row": self.row.name, "kind": self.row.kind, "asked_backend": self.row.backend, "backend": self.backend,
            "args": [a if len(a) <= 200 else f"<{a.count(',') + 1} CIDRs>" for a in self.row.args],
            "families": list(self.families), "rules": self.rules, "note": self.row.note, "target": self.row.target,
            "error": self.error or self.failure(self.tool), "skipped": self.skipped,
            "median": {"tool_cpu_ms": tool_cpu, "tool_rss_mib": self.median(self.tool, "rss_mib"),
                       "tool_wall_ms": self.median(self.tool, "wall_ms"),
                       "floor_cpu_ms": floor_cpu, "floor_rss_mib": self.median(self.floor, "rss_mib"),
                       "shell_cpu_ms": shell_cpu, "shell_wall_ms": self.median(self.shell, "wall_ms")},
            "tool_over_floor": ratio(tool_cpu, floor_cpu), "tool_over_shell": ratio(tool_cpu, shell_cpu),
            "tool": [s.raw() for s in self.tool], "floor": [s.raw() for s in self.floor],
            "shell": [s.raw() for s in self.shell],
        }


def spread(samples: list[Sample]) -> float | None:
    values = [s.cpu_ms for s in samples if s.ok]
    if len(values) < 2 or len(values) != len(samples):
        return None
    return (max(values) - min(values)) / statistics.median(values)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


class Command:
    """One measured command of a row: argv, stdin, extra environment, and how to check
    the namespace afterwards (None: fine; else what is wrong)."""

    def __init__(self, argv: Sequence[str], check: Callable[[NetLab, Sample], str | None] | None = None,
                 stdin: Path | None = None, env: Callable[[NetLab], dict[str, str]] | None = None,
                 prepare: Callable[[NetLab], str | None] | None = None) -> None:
        self.argv, self.check, self.stdin, self.env, self.prepare = list(argv), check, stdin, env, prepare


class Bench:
    def __init__(self, runner: Runner, python: str, runs: int, log: Callable[[str], None],
                 limited_runs: int = 100) -> None:
        self.runner, self.python, self.runs, self.log = runner, python, runs, log
        self.limited_runs = limited_runs
        self.scratch = runner.scratch
        self.scripts = console_scripts(python, self.scratch / "bin")

    def tool_argv(self, args: Sequence[str]) -> list[str]:
        """The tool as an image runs it: its console script."""
        return [self.scripts["istio-iptables"], *args]

    def floor_argv(self, pairs: Sequence[str], args: Sequence[str]) -> list[str]:
        """The floor (rows.FLOOR_CODE) running `pairs`, given the tool's arguments too."""
        return [self.python, "-c", FLOOR_CODE, *pairs, "--", *args]

    def dry_run(self, args: Sequence[str], output: str) -> Sample:
        """The tool's dry run in a fresh pod namespace, so IPv6 detection sees a pod."""
        with fresh_pod() as lab:
            return self.runner.run(self.tool_argv([*args, "--dry-run", "--output", output]),
                                   netns=lab.pod_ns_path, measure=False)

    def measure(self, command: Command, cgroup: LimitedCgroup | None = None, burn_ms: float = 0.0) -> Sample:
        with fresh_pod() as lab:
            if command.prepare is not None:
                problem = command.prepare(lab)
                if problem:
                    return Sample(False, 0.0, None, 0.0, "setup", problem)
            sample = self.runner.run(command.argv, netns=lab.pod_ns_path, stdin=command.stdin,
                                     cgroup_procs=cgroup.procs if cgroup else (),
                                     extra_env=command.env(lab) if command.env else None, burn_ms=burn_ms)
            if sample.ok and command.check is not None:
                problem = command.check(lab, sample)
                if problem:
                    sample.ok, sample.error = False, problem
        return sample

    # -- checks ------------------------------------------------------------------

    @staticmethod
    def rules_check(families: Sequence[int], flavours: Sequence[str],
                    tproxy: bool = False) -> Callable[[NetLab, Sample], str | None]:
        def check(lab: NetLab, _sample: Sample) -> str | None:
            if find_rules(lab, families, flavours) is None:
                fams = "+".join(f"IPv{f}" for f in families)
                return f"no ISTIO_OUTPUT chain ({fams}) in {'/'.join(flavours)} after the run"
            if tproxy and not has_tproxy_routes(lab):
                return "TPROXY policy route (fwmark lookup 133) missing"
            return None
        return check

    # -- rows --------------------------------------------------------------------

    def run_row(self, row: Row) -> Result:
        result = Result(row)
        if row.kind == "dry-run":
            return self._dry_run_row(row, result)
        if row.kind == "native":
            return self._native_row(row, result)
        args = row.args
        plan = self.dry_run(args, "restore")
        commands = self.dry_run(args, "commands")
        if not plan.ok or not commands.ok:
            result.error = "dry run failed: " + (plan.error or commands.error)
            return result
        texts = split_restore(plan.stdout)
        result.families = tuple(sorted(texts, reverse=True))  # IPv6 first, as the tool writes
        result.rules = sum(1 for t in texts.values() for ln in t.splitlines() if ln.startswith(("-A", "-I")))

        # A first run (not counted) warms the page cache and tells which flavour "auto" picks.
        with fresh_pod() as lab:
            warm = self.runner.run(self.tool_argv(args), netns=lab.pod_ns_path, measure=False)
            flavour = find_rules(lab, result.families, row.flavours) if warm.ok else None
            problem = warm.error if not warm.ok else \
                self.rules_check(result.families, row.flavours, row.tproxy)(lab, warm)
        if problem or flavour is None:
            result.error = problem or "no rules found"
            return result
        result.backend = "libiptc (legacy)" if row.backend == "libiptc" else flavour
        check = self.rules_check(result.families, (flavour,), row.tproxy)
        floor_check = self.rules_check(result.families, (flavour,))

        floor_pairs: list[str] = []
        for family in result.families:
            path = self.scratch / f"restore.{row.slug}.v{family}"
            path.write_text(texts[family])
            floor_pairs += [restore_command(family, flavour), str(path)]
        floor = Command(self.floor_argv(floor_pairs, args), floor_check)

        if row.kind == "rerun":
            tool = self._rerun_command(row, result, flavour)
            save_pairs: list[str] = []
            for family in result.families:
                save_pairs += [binary(family, flavour, "save"), "-"]
            floor = Command(self.floor_argv(save_pairs, args), floor_check, prepare=tool.prepare)
            shell = None
        elif row.kind == "cni":
            cni = self._cni_command(row, result, flavour)
            if cni is None:
                return result
            tool, shell = cni, None
        else:
            tool = Command(self.tool_argv(args), check)
            script = self.scratch / f"shell.{row.slug}.sh"
            script.write_text(shell_script(commands.stdout, flavour))
            shell = Command(["/bin/sh", str(script)], check)

        for i in range(self.runs):
            result.tool.append(self.measure(tool))
            result.floor.append(self.measure(floor))
            if shell is not None:
                result.shell.append(self.measure(shell))
            self.log(f"  run {i + 1}/{self.runs}: tool {result.tool[-1].cpu_ms:.1f} ms, "
                     f"floor {result.floor[-1].cpu_ms:.1f} ms"
                     + (f", shell {result.shell[-1].cpu_ms:.1f} ms" if shell is not None else ""))
        return result

    def _dry_run_row(self, row: Row, result: Result) -> Result:
        result.backend = "-"

        def printed(_lab: NetLab, sample: Sample) -> str | None:
            return None if "ISTIO_OUTPUT" in sample.stdout else "dry run printed no ISTIO_OUTPUT rules"

        for _ in range(self.runs):
            result.tool.append(self.measure(Command(self.tool_argv(row.args), printed)))
            result.floor.append(self.measure(Command([self.python, "-c", "import click", *row.args])))
        return result

    def _native_row(self, row: Row, result: Result) -> Result:
        result.backend = "native (nft -f)"
        text = self.dry_run(row.args, "nft")
        if not text.ok:
            result.error = "dry run failed: " + text.error
            return result
        path = self.scratch / f"nft.{row.slug}"
        path.write_text(text.stdout)
        result.rules = sum(1 for ln in text.stdout.splitlines() if ln.startswith("add rule"))

        def tables(_lab: NetLab, _sample: Sample) -> str | None:
            return None if has_native_tables(_lab) else "no inet istio-proxy-nat table after the run"

        tool = Command(self.tool_argv(row.args), tables)
        floor = Command(self.floor_argv([f"nft -f {path}", "-"], row.args), tables)
        for i in range(self.runs):
            result.tool.append(self.measure(tool))
            result.floor.append(self.measure(floor))
            self.log(f"  run {i + 1}/{self.runs}: tool {result.tool[-1].cpu_ms:.1f} ms, "
                     f"floor {result.floor[-1].cpu_ms:.1f} ms")
        return result

    def _rerun_command(self, row: Row, result: Result, flavour: str) -> Command:
        """The identical second run: the first apply is setup, not measured."""
        first = self.tool_argv(row.args)

        def prepare(lab: NetLab) -> str | None:
            done = self.runner.run(first, netns=lab.pod_ns_path, measure=False)
            return None if done.ok else "first apply failed: " + done.error

        rules = self.rules_check(result.families, (flavour,))

        def check(lab: NetLab, sample: Sample) -> str | None:
            if "in-sync" not in sample.stderr:
                return "the second run did not find the rules in sync"
            return rules(lab, sample)

        return Command(first, check, prepare=prepare)

    def _cni_command(self, row: Row, result: Result, flavour: str) -> Command | None:
        """The chained CNI plugin's ADD, driven as a container runtime does (env + stdin);
        None (row skipped) when this interpreter cannot import istio_iptables.cni."""
        probe = run_quiet([self.python, "-c", "import importlib.util, sys; "
                           "sys.exit(importlib.util.find_spec('istio_iptables.cni') is None)"])
        if probe.returncode != 0:
            result.skipped = "istio_iptables.cni is not importable here (the CNI plugin has not landed)"
            return None
        counter = [0]

        def env(lab: NetLab) -> dict[str, str]:
            counter[0] += 1
            config = {"cniVersion": "1.0.0", "name": "bench", "type": "istio-iptables-cni", "capture": list(row.args),
                      "prevResult": {"cniVersion": "1.0.0",
                                     "interfaces": [{"name": lab.pod_if, "sandbox": lab.pod_ns_path}],
                                     "ips": [{"address": f"{lab.pod_ipv4}/24", "interface": 0},
                                             *([{"address": f"{lab.pod_ipv6}/64", "interface": 0}]
                                               if lab.pod_ipv6 else [])]}}
            (self.scratch / "cni.json").write_text(json.dumps(config))
            return {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"bench-{counter[0]}", "CNI_NETNS": lab.pod_ns_path,
                    "CNI_IFNAME": lab.pod_if, "CNI_PATH": "/opt/cni/bin"}

        result.backend = flavour
        return Command([self.scripts["istio-iptables-cni"]], self.rules_check(result.families, (flavour,)),
                       stdin=self.scratch / "cni.json", env=env)

    # -- under the init container's limits --------------------------------------

    def limited(self, cgroup: LimitedCgroup) -> dict[str, Any]:
        """Standard and TPROXY applies and their floors (and the shell baseline of the
        standard one) under cpu 100m / memory 50Mi, over `limited_runs` quota offsets:
        wall time to ready, OOM kills."""
        out: dict[str, Any] = {}
        cgroup.create()
        for name, args, tproxy in (("standard", STANDARD, False),
                                   ("TPROXY", with_flag(STANDARD, "-m", "TPROXY"), True)):
            texts = split_restore(self.dry_run(args, "restore").stdout)
            families = tuple(sorted(texts, reverse=True))
            with fresh_pod() as lab:
                self.runner.run(self.tool_argv(args), netns=lab.pod_ns_path, measure=False)
                flavour = find_rules(lab, families, ("nft", "legacy")) or "nft"
            pairs: list[str] = []
            for family in families:
                path = self.scratch / f"restore.limited.{name}.v{family}"
                path.write_text(texts[family])
                pairs += [restore_command(family, flavour), str(path)]
            rules = self.rules_check(families, (flavour,))
            commands = {"tool": Command(self.tool_argv(args), self.rules_check(families, (flavour,), tproxy)),
                        "floor": Command(self.floor_argv(pairs, args), rules)}
            if not tproxy:
                script = self.scratch / "shell.limited.sh"
                script.write_text(shell_script(self.dry_run(args, "commands").stdout, flavour))
                commands["shell"] = Command(["/bin/sh", str(script)], rules)
            section: dict[str, Any] = {"backend": flavour}
            samples: dict[str, list[dict[str, Any]]] = {who: [] for who in commands}
            # Interleaved, as the rows are: a drift of the machine during the section
            # then weighs on tool and floor alike.  Each round's quota offset is the
            # same for all three, so their times pair up (limits.py: why offsets).
            for offset in quota_offsets(self.limited_runs):
                for who, command in commands.items():
                    cgroup.reset()
                    before = cgroup.counters()
                    sample = self.measure(command, cgroup=cgroup, burn_ms=offset)
                    after = cgroup.counters()
                    delta = {k: after.get(k, 0) - before.get(k, 0)
                             for k in ("oom_kill", "nr_throttled", "throttled_us")}
                    oom = delta["oom_kill"] > 0 or sample.status == "signal 9"
                    samples[who].append({**sample.raw(), **delta, "failcnt": after.get("failcnt", 0),
                                         "cgroup_peak_mib": round(after.get("peak_bytes", 0) / 2**20, 1), "oom": oom})
            for who, taken in samples.items():
                self.log(f"  limited {name} {who}: " + ", ".join(f"{s['wall_ms']:.0f}" for s in taken) + " ms")
                section[who] = taken
            out[name] = section
        return out
