#!/usr/bin/env python3
"""Startup cost of istio-iptables against the floor and against istio-iptables.sh (issue 4).

Run as root: `python3 bench/bench.py [--runs N] [--quick] [--json FILE]` (see --help).

Every measured command runs in its own fresh network namespace that looks like a
dual-stack pod (lo up, one device holding 192.0.2.10/24 and 2001:db8::10/64).  The
command is forked from here, moved into the namespace with setns(2) (and, for the
cgroup section, into the limited cgroups) and exec'd under GNU time; its CPU time is
ru_utime + ru_stime of the whole process tree from os.wait4, its peak RSS is the
tree's ru_maxrss as GNU time reports it.  (A child forked from this Python process
carries this process's RSS until it execs, and Linux keeps that in ru_maxrss; GNU
time forks the real command from a small process, so its figure is the command's.)

For each row three things are measured, interleaved, median of N runs:
  tool   python -m istio_iptables <args>;
  floor  python -c 'import click' that then execs the same iptables-restore(s), fed the
         text the tool's --dry-run prints for the same arguments: the least any
         Python+click tool can cost;
  shell  the tool's `--output commands` as a /bin/sh script: one iptables process per
         rule, as istio-iptables.sh did.
The tool and the floor run on a venv of this interpreter that sees the same packages
but runs no start-up code from this machine's .pth files (--python to use another).
Every apply is checked: exit 0 and an ISTIO_OUTPUT chain in the namespace afterwards.
A row that fails prints FAIL and the reason; the benchmark goes on.

Then the standard apply, the floor and the shell baseline run under the init
container's limits (cpu 100m, memory 50Mi) in a cgroup: wall time to ready, OOM kills.
Targets are reported, never asserted; the exit status is 0 when the benchmark ran.
Namespaces and cgroups are removed at the end, also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import site
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STANDARD: tuple[str, ...] = ("-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
                             "-x", "", "-b", "*", "-d", "15090,15021,15020")
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
TAG = "ibench"  # prefix of every namespace and cgroup this script creates
POD_V4, POD_V6 = "192.0.2.10/24", "2001:db8::10/64"
# One argv or environment string may hold at most 32 pages (MAX_ARG_STRLEN), NUL included.
ARG_LIMIT = 32 * os.sysconf("SC_PAGESIZE") - 1
CPU_PERIOD_US, CPU_QUOTA_US = 100_000, 10_000  # 100m
MEMORY_LIMIT = 50 * 1024 * 1024  # 50Mi
TARGET_RATIO, TARGET_RSS_MIB, TARGET_READY_S = 1.25, 25.0, 1.0

# The floor: the interpreter and click, then straight into iptables-restore.  Arguments
# are pairs (restore binary, file); all but the last are forked, the last is exec'd.
FLOOR_CODE = """\
import click, os, sys
args = sys.argv[1:]
while args:
    binary, path, args = args[0], args[1], args[2:]
    argv = [binary, "--noflush"] + (["--wait"] if "legacy" in binary else [])
    pid = os.fork() if args else 0
    if pid == 0:
        os.dup2(os.open(path, os.O_RDONLY), 0)
        os.execvp(binary, argv)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
        sys.exit(1)
"""

# For the profile: the tool as `-m` runs it, reporting its own CPU apart from its children's.
SPLIT_CODE = """\
import atexit, resource, runpy, sys
def _report():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    sys.stderr.write(f"BENCH-RUSAGE {me.ru_utime + me.ru_stime} {kids.ru_utime + kids.ru_stime}\\n")
atexit.register(_report)
sys.argv[0] = "istio_iptables"
runpy.run_module("istio_iptables", run_name="__main__", alter_sys=True)
"""


class BenchError(RuntimeError):
    """The benchmark itself cannot go on (not root, no `ip`, ...)."""


# --------------------------------------------------------------------------- processes


_LIBC: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    native: Callable[[int, int], None] | None = getattr(os, "setns", None)  # Python >= 3.12
    if native is not None:
        native(fd, CLONE_NEWNET)
        return
    assert _LIBC is not None
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@dataclass
class Sample:
    """One measured run of one command."""

    ok: bool
    cpu_ms: float
    rss_mib: float | None
    wall_ms: float
    status: str  # "exit 0", "exit 1", "signal 9"
    error: str = ""
    stdout: str = field(default="", repr=False)
    stderr: str = field(default="", repr=False)

    def raw(self) -> dict[str, Any]:
        return {"ok": self.ok, "cpu_ms": round(self.cpu_ms, 3), "rss_mib": self.rss_mib,
                "wall_ms": round(self.wall_ms, 3), "status": self.status, "error": self.error}


def child_env(pythonpath: str = "") -> dict[str, str]:
    """A clean environment: no ISTIO_* variable of the caller leaks into the tool."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    for extra in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        if extra not in path.split(":"):
            path += ":" + extra
    env = {"PATH": path, "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/root")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def site_hooks() -> list[str]:
    """.pth files of this interpreter's site-packages that run code at every start-up."""
    hooks = []
    for folder in site.getsitepackages():
        for pth in sorted(Path(folder).glob("*.pth")):
            with contextlib.suppress(OSError):
                if any(ln.startswith(("import ", "import\t")) for ln in pth.read_text().splitlines()):
                    hooks.append(pth.name)
    return hooks


def clean_interpreter(scratch: Path) -> str:
    """A venv of this interpreter whose only .pth puts the repository and this
    interpreter's site-packages on sys.path: the packages are all there, but .pth hooks
    of this machine (which an init-container image does not have) do not run."""
    venv = scratch / "venv"
    done = run_quiet([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    if done.returncode != 0:
        raise BenchError(f"cannot create a venv: {done.stderr.strip()}")
    lib = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (lib / "bench-paths.pth").write_text("\n".join([str(REPO), *site.getsitepackages()]) + "\n")
    return str(venv / "bin" / "python3")


class Runner:
    """Fork, join cgroups, setns, exec under GNU time; wait4 for the tree's rusage."""

    def __init__(self, scratch: Path, env: dict[str, str]) -> None:
        self.scratch = scratch
        self.env = env
        self.time_bin = shutil.which("time", path=self.env["PATH"])
        self.serial = 0

    def run(self, argv: Sequence[str], *, netns: str | None, stdin: Path | None = None,
            cgroup_procs: Sequence[Path] = (), measure: bool = True) -> Sample:
        self.serial += 1
        rss_file = self.scratch / f"rss.{self.serial}"
        program = shutil.which(argv[0], path=self.env["PATH"]) or argv[0]
        full = [program, *argv[1:]]
        if measure and self.time_bin:
            full = [self.time_bin, "-f", "%M", "-o", str(rss_file), *full]
        ns_fd = os.open(NETNS_DIR / netns, os.O_RDONLY) if netns else -1
        in_fd = os.open(stdin or os.devnull, os.O_RDONLY)
        with tempfile.TemporaryFile(dir=self.scratch) as out, tempfile.TemporaryFile(dir=self.scratch) as err:
            started = time.monotonic()
            pid = os.fork()
            if pid == 0:  # child: never returns
                self._exec(full, ns_fd, in_fd, out.fileno(), err.fileno(), cgroup_procs)
            os.close(in_fd)
            if ns_fd >= 0:
                os.close(ns_fd)
            try:
                _, status, usage = os.wait4(pid, 0)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                raise
            wall = time.monotonic() - started
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
        cpu_ms = (usage.ru_utime + usage.ru_stime) * 1000
        code = os.waitstatus_to_exitcode(status)
        rss: float | None = None
        how = f"exit {code}" if code >= 0 else f"signal {-code}"
        if measure and self.time_bin and rss_file.exists():
            report = rss_file.read_text().splitlines()
            rss_file.unlink()
            for line in report:
                if m := re.match(r"Command terminated by signal (\d+)", line):
                    how = f"signal {m.group(1)}"
            if report and report[-1].strip().isdigit():
                rss = int(report[-1]) / 1024
        elif measure:
            rss = usage.ru_maxrss / 1024  # upper bound: includes this process's RSS at fork
        ok = how == "exit 0"
        error = "" if ok else f"{how}: {last_line(stderr)}"
        return Sample(ok, cpu_ms, rss, wall * 1000, how, error, stdout, stderr)

    def _exec(self, argv: list[str], ns_fd: int, in_fd: int, out_fd: int, err_fd: int,
              cgroup_procs: Sequence[Path]) -> None:
        try:
            os.setpgid(0, 0)  # its own group: the parent can end the whole tree by its id
            for procs in cgroup_procs:
                with open(procs, "w") as handle:
                    handle.write(f"{os.getpid()}\n")
            if ns_fd >= 0:
                _setns(ns_fd)
            os.dup2(in_fd, 0)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            os.execve(argv[0], argv, self.env)
        except BaseException as err:
            with contextlib.suppress(BaseException):
                os.write(err_fd, f"bench: cannot start {argv[0]}: {err}\n".encode())
        finally:
            os._exit(127)


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("BENCH-")]
    return (lines[-1] if lines else "no output")[:200]


def run_quiet(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=600)


# --------------------------------------------------------------------------- namespaces


class Lab:
    """The namespaces (and scratch files) of this run; close() removes them all."""

    def __init__(self) -> None:
        self.prefix = f"{TAG}{os.getpid()}-"
        self.count = 0
        self.live: set[str] = set()
        self.device: str | None = None  # "dummy" or "veth", whichever the kernel has
        self._scratch = tempfile.TemporaryDirectory(prefix=f"{TAG}-")
        self.scratch = Path(self._scratch.name)

    def create(self) -> str:
        self.count += 1
        name = f"{self.prefix}{self.count}"
        done = run_quiet(["ip", "netns", "add", name])
        if done.returncode != 0:
            raise BenchError(f"ip netns add {name}: {done.stderr.strip()}")
        self.live.add(name)
        if self.device is None:
            self.device = "dummy" if run_quiet(["ip", "-n", name, "link", "add", "pod0", "type", "dummy"]
                                               ).returncode == 0 else "veth"
            first = True
        else:
            first = False
        add = "" if first and self.device == "dummy" else (
            "link add pod0 type dummy\n" if self.device == "dummy" else "link add pod0 type veth peer name pod1\n")
        batch = (f"link set lo up\n{add}link set pod0 up\naddr add {POD_V4} dev pod0\n"
                 f"addr add {POD_V6} dev pod0 nodad\n")
        done = run_quiet(["ip", "-n", name, "-batch", "-"], batch)
        if done.returncode != 0:
            raise BenchError(f"setting up namespace {name}: {done.stderr.strip()}")
        return name

    def delete(self, name: str) -> None:
        if name in self.live:
            run_quiet(["ip", "netns", "delete", name])
            self.live.discard(name)

    @contextlib.contextmanager
    def fresh(self) -> Iterator[str]:
        name = self.create()
        try:
            yield name
        finally:
            self.delete(name)

    def close(self) -> None:
        for name in sorted(self.live):
            self.delete(name)
        self._scratch.cleanup()


def remove_stale() -> None:
    """Namespaces and cgroups left by an earlier run of this script that was killed."""
    def dead(pid: str) -> bool:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (OSError, ValueError):
            return False
        return False

    if NETNS_DIR.is_dir():
        for entry in NETNS_DIR.iterdir():
            m = re.fullmatch(rf"{TAG}(\d+)-\d+", entry.name)
            if m and dead(m.group(1)):
                run_quiet(["ip", "netns", "delete", entry.name])
    for base in {d for d, _ in cgroup_v1_dirs().values()}:
        for entry in base.glob(f"{TAG}-*"):
            m = re.fullmatch(rf"{TAG}-(\d+)", entry.name)
            if m and dead(m.group(1)):
                with contextlib.suppress(OSError):
                    entry.rmdir()


def iptables_save(netns: str, family: int, flavour: str) -> str:
    binary = f"{'iptables' if family == 4 else 'ip6tables'}-{flavour}-save"
    done = run_quiet(["ip", "netns", "exec", netns, binary])
    return done.stdout if done.returncode == 0 else ""


def find_rules(netns: str, families: Sequence[int], flavours: Sequence[str]) -> str | None:
    """Which flavour's tables hold ISTIO_OUTPUT for every family (None: no apply happened)."""
    for flavour in flavours:
        if all(":ISTIO_OUTPUT" in iptables_save(netns, f, flavour) for f in families):
            return flavour
    return None


def has_tproxy_routes(netns: str) -> bool:
    done = run_quiet(["ip", "-n", netns, "rule", "show"])
    return "lookup 133" in done.stdout


# --------------------------------------------------------------------------- cgroups


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root, fstype, options) of every cgroup mount."""
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if rfields and rfields[0] in ("cgroup", "cgroup2"):
                opts = set(rfields[2].split(",")) if len(rfields) > 2 else set()
                found.append((fields[4], fields[3], rfields[0], opts))
    return found


def _own_cgroups() -> dict[str, str]:
    """controller (or "" for cgroup v2) -> this process's cgroup path."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                own[name] = path
    return own


def cgroup_v1_dirs() -> dict[str, tuple[Path, str]]:
    """For the cpu and memory controllers on cgroup v1: (the directory this process is
    in, the mount point)."""
    own = _own_cgroups()
    dirs: dict[str, tuple[Path, str]] = {}
    for point, root, fstype, opts in _mounts():
        for ctl in ("cpu", "memory"):
            if fstype == "cgroup" and ctl in opts and ctl in own:
                rel = os.path.relpath(own[ctl], root) if own[ctl].startswith(root) else "."
                dirs[ctl] = (Path(point) / rel, point)
    return dirs


class LimitedCgroup:
    """cpu 100m + memory 50Mi, as the init container gets, below this process's own
    cgroups (v1 cpu+memory controllers, else a v2 group with both)."""

    def __init__(self) -> None:
        self.name = f"{TAG}-{os.getpid()}"
        self.dirs: list[Path] = []
        self.cpu: Path | None = None
        self.memory: Path | None = None
        self.version = 0
        v1 = cgroup_v1_dirs()
        if "cpu" in v1 and "memory" in v1:
            self.version = 1
            self.cpu = v1["cpu"][0] / self.name
            self.memory = v1["memory"][0] / self.name
            return
        own = _own_cgroups().get("")
        for point, _, fstype, _ in _mounts():
            if fstype == "cgroup2" and own is not None:
                parent = Path(point) / own.lstrip("/")
                ctl = (parent / "cgroup.subtree_control")
                if ctl.exists() and {"cpu", "memory"} <= set(ctl.read_text().split()):
                    self.version = 2
                    self.cpu = self.memory = parent / self.name
                    return

    def describe(self) -> str:
        if not self.version:
            return "no usable cgroup (needs v1 cpu+memory controllers, or v2 with both delegated)"
        places = sorted({str(self.cpu), str(self.memory)})
        return f"cgroup v{self.version}: " + ", ".join(places)

    def create(self) -> None:
        if self.cpu is None or self.memory is None:
            raise BenchError(self.describe())
        for path in dict.fromkeys([self.cpu, self.memory]):
            path.mkdir()
            self.dirs.append(path)
        if self.version == 1:
            (self.cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (self.cpu / "cpu.cfs_quota_us").write_text(str(CPU_QUOTA_US))
            (self.memory / "memory.limit_in_bytes").write_text(str(MEMORY_LIMIT))
        else:
            (self.cpu / "cpu.max").write_text(f"{CPU_QUOTA_US} {CPU_PERIOD_US}")
            (self.memory / "memory.max").write_text(str(MEMORY_LIMIT))
            (self.memory / "memory.swap.max").write_text("0")

    @property
    def procs(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def reset(self) -> None:
        if self.version == 1 and self.memory is not None:
            for name in ("memory.failcnt", "memory.max_usage_in_bytes"):
                with contextlib.suppress(OSError):
                    (self.memory / name).write_text("0")

    def counters(self) -> dict[str, int]:
        """oom_kill, failcnt (limit hit), peak bytes, nr_throttled, throttled_us."""
        out: dict[str, int] = {}
        if self.cpu is None or self.memory is None:
            return out
        keyed = self._keyed(self.cpu / "cpu.stat")
        out["nr_throttled"] = keyed.get("nr_throttled", 0)
        out["throttled_us"] = keyed.get("throttled_time", 0) // 1000 or keyed.get("throttled_usec", 0)
        if self.version == 1:
            out["oom_kill"] = self._keyed(self.memory / "memory.oom_control").get("oom_kill", 0)
            out["failcnt"] = self._int(self.memory / "memory.failcnt")
            out["peak_bytes"] = self._int(self.memory / "memory.max_usage_in_bytes")
        else:
            events = self._keyed(self.memory / "memory.events")
            out["oom_kill"] = events.get("oom_kill", 0)
            out["failcnt"] = events.get("max", 0)
            out["peak_bytes"] = self._int(self.memory / "memory.peak")
        return out

    @staticmethod
    def _keyed(path: Path) -> dict[str, int]:
        try:
            pairs = (line.split() for line in path.read_text().splitlines())
            return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].lstrip("-").isdigit()}
        except OSError:
            return {}

    @staticmethod
    def _int(path: Path) -> int:
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def remove(self) -> None:
        for path in reversed(self.dirs):
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        self.dirs = []


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    name: str
    args: tuple[str, ...]
    backend: str  # what the row asks for: "auto", "nft", "legacy", "libiptc"
    dry_run: bool = False
    tproxy: bool = False
    note: str = ""

    @property
    def flavours(self) -> tuple[str, ...]:
        return {"auto": ("nft", "legacy"), "nft": ("nft",)}.get(self.backend, ("legacy",))


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


def build_rows(quick: bool) -> list[Row]:
    std = STANDARD
    rows = [
        Row("standard", std, "auto"),
        Row("standard --dual-stack", (*std, "--dual-stack"), "auto"),
        Row("standard -m TPROXY", with_flag(std, "-m", "TPROXY"), "auto", tproxy=True),
    ]
    # 5,000 is not in the list: it gives the linearity check two spans well above the noise.
    for count in (10, 1_000) if quick else (10, 1_000, 5_000, 10_000):
        cidrs, source = exclude_cidrs(count)
        rows.append(Row(f"-x {count:,} CIDRs", with_flag(std, "-x", cidrs), "auto", note=f"{count:,} in {source}"))
    rows += [
        Row("--dry-run --ipv6 off", (*std, "--dry-run", "--ipv6", "off"), "auto", dry_run=True),
        Row("--dry-run", (*std, "--dry-run"), "auto", dry_run=True),
        Row("backend nft restore", (*std, "--force-iptables-binary", "nft"), "nft"),
        Row("backend legacy restore", (*std, "--force-iptables-binary", "legacy"), "legacy"),
        Row("backend libiptc", (*std, "--backend", "libiptc"), "libiptc"),
    ]
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


@dataclass
class Result:
    row: Row
    backend: str = ""  # what was measured: nft / legacy / libiptc (legacy) / -
    families: tuple[int, ...] = (4,)
    rules: int = 0
    tool: list[Sample] = field(default_factory=list)
    floor: list[Sample] = field(default_factory=list)
    shell: list[Sample] = field(default_factory=list)
    error: str = ""

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
            "row": self.row.name, "asked_backend": self.row.backend, "backend": self.backend,
            "args": [a if len(a) <= 200 else f"<{a.count(',') + 1} CIDRs>" for a in self.row.args],
            "families": list(self.families), "rules": self.rules, "note": self.row.note,
            "error": self.error or self.failure(self.tool),
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


class Bench:
    def __init__(self, lab: Lab, runner: Runner, python: str, runs: int, log: Callable[[str], None]) -> None:
        self.lab, self.runner, self.python, self.runs, self.log = lab, runner, python, runs, log

    def tool_argv(self, args: Sequence[str]) -> list[str]:
        return [self.python, "-m", "istio_iptables", *args]

    def dry_run(self, args: Sequence[str], output: str) -> Sample:
        """The tool's dry run in a fresh pod namespace, so IPv6 detection sees a pod."""
        with self.lab.fresh() as ns:
            return self.runner.run(self.tool_argv([*args, "--dry-run", "--output", output]), netns=ns,
                                   measure=False)

    def verify(self, ns: str, row: Row, families: Sequence[int], flavours: Sequence[str]) -> str | None:
        """None when the apply left our rules (and routes); else what is missing."""
        found = find_rules(ns, families, flavours)
        if found is None:
            fams = "+".join(f"IPv{f}" for f in families)
            return f"no ISTIO_OUTPUT chain ({fams}) in {'/'.join(flavours)} after the apply"
        if row.tproxy and not has_tproxy_routes(ns):
            return "TPROXY policy route (fwmark lookup 133) missing"
        return None

    def measure(self, argv: Sequence[str], row: Row, families: Sequence[int], flavours: Sequence[str],
                stdin: Path | None = None, check: bool = True, tproxy: bool | None = None,
                cgroup: LimitedCgroup | None = None) -> Sample:
        with self.lab.fresh() as ns:
            sample = self.runner.run(argv, netns=ns, stdin=stdin, cgroup_procs=cgroup.procs if cgroup else ())
            if sample.ok and check:
                probe = row if tproxy is None else Row(row.name, row.args, row.backend, tproxy=tproxy)
                problem = self.verify(ns, probe, families, flavours)
                if problem:
                    sample.ok, sample.error = False, problem
        return sample

    def run_row(self, row: Row) -> Result:
        result = Result(row)
        scratch = self.lab.scratch
        if row.dry_run:
            result.backend = "-"
            floor_argv = [self.python, "-c", "import click"]
            for _ in range(self.runs):
                sample = self.measure(self.tool_argv(row.args), row, (), (), check=False)
                if sample.ok and "ISTIO_OUTPUT" not in sample.stdout:
                    sample.ok, sample.error = False, "dry run printed no ISTIO_OUTPUT rules"
                result.tool.append(sample)
                result.floor.append(self.measure(floor_argv, row, (), (), check=False))
            return result

        plan = self.dry_run(row.args, "restore")
        commands = self.dry_run(row.args, "commands")
        if not plan.ok or not commands.ok:
            result.error = "dry run failed: " + (plan.error or commands.error)
            return result
        texts = split_restore(plan.stdout)
        result.families = tuple(sorted(texts, reverse=True))  # IPv6 first, as the tool writes
        result.rules = sum(1 for t in texts.values() for ln in t.splitlines() if ln.startswith(("-A", "-I")))

        # A first run (not counted) warms the page cache and tells which flavour "auto" picks.
        with self.lab.fresh() as ns:
            warm = self.runner.run(self.tool_argv(row.args), netns=ns, measure=False)
            found = find_rules(ns, result.families, row.flavours) if warm.ok else None
            problem = warm.error if not warm.ok else self.verify(ns, row, result.families, row.flavours)
        if problem or found is None:
            result.error = problem or "no rules found"
            return result
        flavour = found
        result.backend = "libiptc (legacy)" if row.backend == "libiptc" else flavour

        floor_args: list[str] = []
        for family in result.families:
            path = scratch / f"restore.{row.name.replace(' ', '_')}.v{family}"
            path.write_text(texts[family])
            floor_args += [f"{'iptables' if family == 4 else 'ip6tables'}-{flavour}-restore", str(path)]
        floor_argv = [self.python, "-c", FLOOR_CODE, *floor_args]
        script = scratch / f"shell.{row.name.replace(' ', '_')}.sh"
        script.write_text(shell_script(commands.stdout, flavour))
        shell_argv = ["/bin/sh", str(script)]
        for i in range(self.runs):
            result.tool.append(self.measure(self.tool_argv(row.args), row, result.families, (flavour,)))
            result.floor.append(self.measure(floor_argv, row, result.families, (flavour,), tproxy=False))
            result.shell.append(self.measure(shell_argv, row, result.families, (flavour,)))
            self.log(f"  run {i + 1}/{self.runs}: tool {result.tool[-1].cpu_ms:.1f} ms, "
                     f"floor {result.floor[-1].cpu_ms:.1f} ms, shell {result.shell[-1].cpu_ms:.1f} ms")
        return result

    def limited(self, cgroup: LimitedCgroup) -> dict[str, Any]:
        """Standard apply, floor and shell under cpu 100m / memory 50Mi: wall time to ready."""
        row = Row("standard", STANDARD, "auto")
        plan = self.dry_run(STANDARD, "restore")
        commands = self.dry_run(STANDARD, "commands")
        texts = split_restore(plan.stdout)
        families = tuple(sorted(texts, reverse=True))
        with self.lab.fresh() as ns:
            self.runner.run(self.tool_argv(STANDARD), netns=ns, measure=False)
            flavour = find_rules(ns, families, row.flavours) or "nft"
        floor_args: list[str] = []
        for family in families:
            path = self.lab.scratch / f"restore.limited.v{family}"
            path.write_text(texts[family])
            floor_args += [f"{'iptables' if family == 4 else 'ip6tables'}-{flavour}-restore", str(path)]
        script = self.lab.scratch / "shell.limited.sh"
        script.write_text(shell_script(commands.stdout, flavour))
        commands_by_name = {
            "tool": self.tool_argv(STANDARD),
            "floor": [self.python, "-c", FLOOR_CODE, *floor_args],
            "shell": ["/bin/sh", str(script)],
        }
        out: dict[str, Any] = {"backend": flavour}
        cgroup.create()
        for name, argv in commands_by_name.items():
            samples: list[dict[str, Any]] = []
            for _ in range(self.runs):
                cgroup.reset()
                before = cgroup.counters()
                sample = self.measure(argv, row, families, (flavour,), cgroup=cgroup)
                after = cgroup.counters()
                delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("oom_kill", "nr_throttled", "throttled_us")}
                oom = delta["oom_kill"] > 0 or sample.status == "signal 9"
                samples.append({**sample.raw(), **delta, "failcnt": after.get("failcnt", 0),
                                "cgroup_peak_mib": round(after.get("peak_bytes", 0) / 2**20, 1), "oom": oom})
            self.log(f"  limited {name}: " + ", ".join(f"{s['wall_ms']:.0f}" for s in samples) + " ms")
            out[name] = samples
        return out


# --------------------------------------------------------------------------- profile


def profile(bench: Bench) -> dict[str, Any]:
    """Where the tool's CPU goes on the standard profile: itself vs its children, the
    programs it runs, and its import costs."""
    lab, runner = bench.lab, bench.runner
    out: dict[str, Any] = {}
    runs = max(3, min(bench.runs, 5))

    splits: list[tuple[float, float, float]] = []
    for _ in range(runs):
        with lab.fresh() as ns:
            s = runner.run([bench.python, "-c", SPLIT_CODE, *STANDARD], netns=ns)
        m = re.search(r"BENCH-RUSAGE (\S+) (\S+)", s.stderr)
        if s.ok and m:
            splits.append((s.cpu_ms, float(m.group(1)) * 1000, float(m.group(2)) * 1000))
    if splits:
        out["split_ms"] = {"tree": statistics.median(t for t, _, _ in splits),
                           "python_process": statistics.median(p for _, p, _ in splits),
                           "children": statistics.median(c for _, _, c in splits)}

    strace = shutil.which("strace")
    if strace:
        log_file = lab.scratch / "strace.log"
        with lab.fresh() as ns:
            runner.run([strace, "-f", "-qq", "-e", "trace=execve", "-o", str(log_file),
                        *bench.tool_argv(STANDARD)], netns=ns, measure=False)
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
            with lab.fresh() as ns:
                s = runner.run(argv, netns=ns, measure=False)
            total = 0
            for line in s.stderr.splitlines():
                m = re.match(r"import time:\s+(\d+) \|\s+\d+ \| \s*(\S+)", line)
                if m:
                    total += int(m.group(1))
                    selfs.setdefault(m.group(2), []).append(int(m.group(1)))
            totals.append(total)
        return statistics.median(totals) / 1000, {k: statistics.median(v) / 1000 for k, v in selfs.items()}

    tool_total, tool_mods = import_selfs([bench.python, "-X", "importtime", "-m", "istio_iptables", *STANDARD])
    floor_total, floor_mods = import_selfs([bench.python, "-X", "importtime", "-c", "import click"])
    extra = sorted(((v, k) for k, v in tool_mods.items() if k not in floor_mods), reverse=True)
    out["imports_ms"] = {"tool": round(tool_total, 2), "floor": round(floor_total, 2),
                         "beyond_floor": round(sum(v for v, _ in extra), 2), "modules_beyond_floor": len(extra)}
    out["imports_beyond_floor_top"] = [(k, round(v, 2)) for v, k in extra[:16]]
    return out


# --------------------------------------------------------------------------- report


def machine(python: str, python_note: str) -> dict[str, str]:
    def first(argv: list[str]) -> str:
        try:
            return run_quiet(argv).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "n/a"

    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        cpu = next((ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")), cpu)
    versions = {}
    for dist in ("click", "pyroute2", "python-iptables"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "absent"
    rev = first(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = run_quiet(["git", "-C", str(REPO), "status", "--porcelain", "--", "istio_iptables"]).stdout.strip()
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cpu": cpu,
        "nproc": str(len(os.sched_getaffinity(0))),
        "python": f"{platform.python_version()}: {python_note}",
        "iptables": f"{first(['iptables-nft', '--version'])}; {first(['iptables-legacy', '--version'])}",
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "tool": f"{REPO} @ {rev}{' + uncommitted changes in istio_iptables/' if dirty else ''}",
    }


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    def sized(r: Sequence[str]) -> Sequence[str]:  # a FAIL row's message does not size a column
        return r if len(r) == len(headers) else r[:-1]

    widths = [max([len(h)] + [len(sized(r)[i]) for r in rows if i < len(sized(r))]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        if len(cells) < len(headers):  # a FAIL row: the message spans the measure columns
            return "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells[:-1])) + "  " + cells[-1]
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def result_cells(r: Result) -> list[str]:
    tool_cpu = r.median(r.tool)
    if r.error or tool_cpu is None:
        return [r.row.name, r.backend or r.row.backend, "FAIL: " + (r.error or r.failure(r.tool))]
    floor_cpu, shell_cpu = r.median(r.floor), r.median(r.shell)
    floor_txt = fmt(floor_cpu) if floor_cpu is not None else ("FAIL" if r.floor else "-")
    shell_txt = fmt(shell_cpu) if shell_cpu is not None else ("FAIL" if r.shell else "-")
    return [r.row.name, r.backend, fmt(tool_cpu), fmt(r.median(r.tool, "rss_mib")), floor_txt, shell_txt,
            fmt(ratio(tool_cpu, floor_cpu), 2, "x"), fmt(ratio(tool_cpu, shell_cpu), 2, "x")]


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def targets(results: dict[str, Result], limited: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    std = results.get("standard")
    if std:
        r = ratio(std.median(std.tool), std.median(std.floor))
        out.append(("standard: tool CPU <= 1.25 x floor", fmt(r, 2, "x"), verdict(None if r is None else r <= 1.25)))
        rss = std.median(std.tool, "rss_mib")
        out.append(("standard: peak RSS <= 25 MiB", fmt(rss, 1, " MiB"),
                    verdict(None if rss is None else rss <= TARGET_RSS_MIB)))
    big = results.get("-x 10,000 CIDRs")
    if big:
        r = ratio(big.median(big.tool), big.median(big.floor))
        out.append(("10,000 CIDRs: tool CPU <= 1.25 x floor", fmt(r, 2, "x"),
                    verdict(None if r is None else r <= TARGET_RATIO)))
    # Linear growth: the cost per 1,000 CIDRs over 1k->5k and over 5k->10k should agree
    # (spans of thousands of rules, so the run-to-run noise of ~10 ms does not decide).
    cpu: list[tuple[int, float, float]] = []
    for n in (1_000, 5_000, 10_000):
        res = results.get(f"-x {n:,} CIDRs")
        tool_ms, floor_ms = (res.median(res.tool), res.median(res.floor)) if res else (None, None)
        if tool_ms is not None and floor_ms is not None:
            cpu.append((n, tool_ms, floor_ms))
    if len(cpu) == 3:
        def per_k(i: int, j: int, k: int) -> float:
            return (cpu[j][k] - cpu[i][k]) / (cpu[j][0] - cpu[i][0]) * 1000

        tool_a, tool_b, floor_a, floor_b = per_k(0, 1, 1), per_k(1, 2, 1), per_k(0, 1, 2), per_k(1, 2, 2)
        growth = tool_b / tool_a if tool_a > 0 else None
        out.append(("CIDR growth linear (ms per 1,000 CIDRs, 1k->5k vs 5k->10k)",
                    f"tool {tool_a:.1f}, {tool_b:.1f} (floor {floor_a:.1f}, {floor_b:.1f})",
                    verdict(None if growth is None else 0.67 <= growth <= 1.5)))
    if limited:
        tool = limited["tool"]
        ready = statistics.median(s["wall_ms"] for s in tool) / 1000 if all(s["ok"] for s in tool) else None
        out.append(("100m/50Mi: standard apply ready <= 1.0 s", fmt(ready, 2, " s"),
                    verdict(None if ready is None else ready <= TARGET_READY_S)))
        ooms = sum(1 for s in tool if s["oom"])
        out.append(("100m/50Mi: not OOM-killed", f"{ooms}/{len(tool)} runs OOM-killed", verdict(ooms == 0)))
    return out


def limited_report(limited: dict[str, Any]) -> str:
    rows = []
    for name in ("tool", "floor", "shell"):
        samples = limited[name]
        ok = all(s["ok"] for s in samples)
        first_error = next((s["error"] for s in samples if not s["ok"]), "")

        def med(key: str, ss: list[dict[str, Any]] = samples) -> float:
            return float(statistics.median(s[key] for s in ss))

        rows.append([name, limited["backend"] if name != "floor" else limited["backend"] + " restore",
                     fmt(med("wall_ms") / 1000, 3) if ok else "FAIL", fmt(med("cpu_ms")),
                     fmt(med("cgroup_peak_mib")), f"{med('nr_throttled'):.0f}",
                     f"{sum(1 for s in samples if s['oom'])}/{len(samples)}",
                     f"{max(s['failcnt'] for s in samples)}", first_error[:80]])
    headers = ["command", "binary", "ready s", "CPU ms", "cgroup peak MiB", "throttled periods", "OOM-killed",
               "limit hits", "error"]
    return table(headers, rows, {2, 3, 4, 5, 6, 7})


def report(info: dict[str, str], runs: int, results: list[Result], limited: dict[str, Any] | None,
           limited_note: str, prof: dict[str, Any] | None, launcher_ms: float | None) -> str:
    out = ["istio-iptables startup benchmark (issue 4)", ""]
    out += [f"  {k:<9} {v}" for k, v in info.items()]
    out += [f"  {'runs':<9} median of {runs}, each command in a fresh netns "
            f"(lo up, {POD_V4} + {POD_V6} nodad)",
            f"  {'launcher':<9} GNU time ({launcher_ms:.1f} ms CPU for `time true`, in every number)"
            if launcher_ms is not None else f"  {'launcher':<9} none (RSS is an upper bound)", ""]
    headers = ["row", "backend", "tool CPU ms", "tool peak RSS MiB", "floor CPU ms", "shell CPU ms",
               "tool/floor", "tool/shell"]
    out.append(table(headers, [result_cells(r) for r in results], {2, 3, 4, 5, 6, 7}))
    notes = [f"  {r.row.name}: {r.rules} rules ({'+'.join(f'IPv{f}' for f in sorted(r.families))})"
             + (f", {r.row.note}" if r.row.note else "")
             for r in results if not r.row.dry_run and r.rules]
    spreads = {kind: [spread(getattr(r, kind)) for r in results] for kind in ("tool", "floor", "shell")}
    noise = ", ".join(f"{kind} {statistics.median(v):.0%} (worst {max(v):.0%})"
                      for kind, vals in spreads.items() if (v := [x for x in vals if x is not None]))
    if noise:
        out.append(f"run-to-run spread of CPU, (max-min)/median per row, median over rows: {noise}")
    out += ["", "rules per row:", *notes,
            "  floor = python -c 'import click' exec'ing the row's iptables-restore with the tool's dry-run text;",
            "  shell = the tool's --output commands as a /bin/sh script (one iptables per rule, like "
            "istio-iptables.sh); dry-run rows: floor is `import click` alone"]
    out += ["", "under the init container's limits (cpu 100m = 10 ms per 100 ms, memory 50Mi): "
            f"{limited_note}"]
    if limited:
        out.append(limited_report(limited))
    by_name = {r.row.name: r for r in results}
    out += ["", "targets (reported, not asserted):"]
    out += [f"  {name:<58} {value:<38} {v}" for name, value, v in targets(by_name, limited)]
    if prof:
        out += ["", "profile of the standard apply:"]
        if "split_ms" in prof:
            s = prof["split_ms"]
            out.append(f"  CPU: python process {s['python_process']:.1f} ms + child processes {s['children']:.1f} ms"
                       f" (tree {s['tree']:.1f} ms incl. launcher)")
        if "execs" in prof:
            out.append(f"  programs it runs ({len(prof['execs'])}): " + "; ".join(prof["execs"]))
        if "imports_ms" in prof:
            i = prof["imports_ms"]
            out.append(f"  imports (-X importtime, inflated by its own overhead): tool {i['tool']:.1f} ms, "
                       f"floor (import click) {i['floor']:.1f} ms; {i['modules_beyond_floor']} modules the floor "
                       f"does not import cost {i['beyond_floor']:.1f} ms, the largest (self ms):")
            top = prof["imports_beyond_floor_top"]
            out += ["    " + "  ".join(f"{k} {v:.2f}" for k, v in top[j:j + 4]) for j in range(0, len(top), 4)]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=None, help="runs per measurement, median reported (default 7)")
    p.add_argument("--quick", action="store_true", help="runs=3 (unless --runs) and no 5,000/10,000-CIDR rows")
    p.add_argument("--json", metavar="FILE", help="also write the raw numbers to FILE")
    p.add_argument("--only", metavar="TEXT", action="append", default=[],
                   help="only rows whose name contains TEXT (repeatable)")
    p.add_argument("--python", metavar="PATH",
                   help="interpreter for the tool and the floor, used as is (default: a clean venv of this one)")
    p.add_argument("--no-cgroup", action="store_true", help="skip the 100m/50Mi section")
    p.add_argument("--no-profile", action="store_true", help="skip the profile section")
    args = p.parse_args(argv)
    if args.runs is None:
        args.runs = 3 if args.quick else 7
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    global _LIBC
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("bench: run as root (network namespaces, iptables, cgroups)\n")
        return 2
    for tool in ("ip", "iptables-nft-restore", "iptables-legacy-restore"):
        if shutil.which(tool, path=child_env()["PATH"]) is None:
            sys.stderr.write(f"bench: {tool} not found\n")
            return 2
    _LIBC = ctypes.CDLL(None, use_errno=True)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    def log(msg: str) -> None:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    remove_stale()
    lab = Lab()
    cgroup = LimitedCgroup()
    try:
        if args.python:
            python, env = args.python, child_env(str(REPO))
            python_note = f"{python} as is (PYTHONPATH={REPO})"
        else:
            python, env = clean_interpreter(lab.scratch), child_env()
            hooks = site_hooks()
            python_note = (f"venv of {sys.executable} (site-packages via a path-only .pth"
                           + (f"; start-up code in .pth files skipped: {', '.join(hooks)}" if hooks else "")
                           + "; --python to measure another interpreter)")
        runner = Runner(lab.scratch, env)
        bench = Bench(lab, runner, python, args.runs, log)
        info = machine(python, python_note)
        launcher_ms: float | None = None
        if runner.time_bin:
            launcher_ms = statistics.median(runner.run(["true"], netns=None).cpu_ms for _ in range(5))
        rows = [r for r in build_rows(args.quick) if not args.only or any(o in r.name for o in args.only)]
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
        text = report(info, args.runs, results, limited, limited_note, prof, launcher_ms)
        print(text)
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
        lab.close()


if __name__ == "__main__":
    sys.exit(main())
