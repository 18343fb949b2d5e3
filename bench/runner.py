"""Running one measured command: fork, join cgroups, setns, exec under GNU time.

Wall time runs from the exec to the end of the tree: the fork from this (large)
process and the child's setup are the benchmark's, not the command's.  A run may
first burn some CPU inside its cgroups (`burn_ms`): the share of the CFS quota that a
container's runtime spends before the entry point starts (limits.py says why that
matters).

CPU time is ru_utime + ru_stime of the whole process tree from os.wait4; peak RSS is
the tree's ru_maxrss as GNU time reports it.  (A child forked from this Python process
carries this process's RSS until it execs, and Linux keeps that in ru_maxrss; GNU time
forks the real command from a small process, so its figure is the command's.)
The tool and the floor run on a venv of this interpreter that sees the same packages
but runs no start-up code from this machine's .pth files.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import select
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLONE_NEWNET = 0x40000000
RUN_TIMEOUT_S = 300  # one measured command; a hung run is killed and reported as a failure


class BenchError(RuntimeError):
    """The benchmark itself cannot go on (not root, no `ip`, ...)."""


_LIBC: list[ctypes.CDLL] = []


def _setns(fd: int) -> None:
    native: Callable[[int, int], None] | None = getattr(os, "setns", None)  # Python >= 3.12
    if native is not None:
        native(fd, CLONE_NEWNET)
        return
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    if _LIBC[0].setns(fd, CLONE_NEWNET) != 0:
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


def image_interpreter() -> str:
    """The interpreter the image ships when this machine has it: Debian's
    /usr/bin/python3.X of this interpreter's minor version (the image is Debian
    bookworm's python3).  It matters: its extension modules (_socket, select, _struct)
    are built in rather than loaded with dlopen, and it runs everything ~20% faster
    than a self-built interpreter, the floor included.  Else this interpreter."""
    debian = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    return debian if os.access(debian, os.X_OK) else sys.executable


def clean_interpreter(scratch: Path) -> str:
    """A venv of the image's interpreter (image_interpreter) whose only .pth puts the
    repository and this interpreter's site-packages on sys.path: the packages are all
    there, but .pth hooks of this machine (which an init-container image does not
    have) do not run.  The package's init-path bundle is built, as the image does."""
    venv = scratch / "venv"
    done = run_quiet([image_interpreter(), "-m", "venv", "--without-pip", str(venv)])
    if done.returncode != 0:
        raise BenchError(f"cannot create a venv: {done.stderr.strip()}")
    lib = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (lib / "bench-paths.pth").write_text("\n".join([str(REPO), *site.getsitepackages()]) + "\n")
    python = str(venv / "bin" / "python3")
    # As the image builds it: the init path's bundle (istio_iptables/bundle.py), written
    # next to the repository's package (its __pycache__, which git ignores).
    done = run_quiet([python, "-m", "istio_iptables.bundle"])
    if done.returncode != 0:
        raise BenchError(f"cannot build the init path's bundle: {done.stderr.strip()}")
    return python


def console_scripts(python: str, folder: Path) -> dict[str, str]:
    """The package's console scripts ([project.scripts]) for `python`, written into
    `folder` in the form the image installs (images/launchers.py): the commands an
    image runs (its ENTRYPOINT is `istio-iptables`), without the ~3 M instructions
    `python -m` adds for runpy."""
    import tomllib

    from istio_iptables.cli import launcher

    folder.mkdir(parents=True, exist_ok=True)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    paths: dict[str, str] = {}
    for name, target in scripts.items():
        path = folder / name
        path.write_text(launcher(python, target))
        path.chmod(0o755)
        paths[name] = str(path)
    return paths


class Runner:
    """Fork, join cgroups, setns, exec under GNU time; wait4 for the tree's rusage."""

    def __init__(self, scratch: Path, env: dict[str, str]) -> None:
        self.scratch = scratch
        self.env = env
        self.time_bin = shutil.which("time", path=self.env["PATH"])
        self.serial = 0
        if not _LIBC and not hasattr(os, "setns"):
            _LIBC.append(ctypes.CDLL(None, use_errno=True))  # loaded before any fork

    def run(self, argv: Sequence[str], *, netns: str | None, stdin: Path | None = None,
            cgroup_procs: Sequence[Path] = (), measure: bool = True,
            extra_env: Mapping[str, str] | None = None, burn_ms: float = 0.0) -> Sample:
        """Run `argv` in the namespace at path `netns` (None: this one), after burning
        `burn_ms` of CPU in the child once it is in `cgroup_procs`."""
        self.serial += 1
        rss_file = self.scratch / f"rss.{self.serial}"
        program = shutil.which(argv[0], path=self.env["PATH"]) or argv[0]
        full = [program, *argv[1:]]
        if measure and self.time_bin:
            full = [self.time_bin, "-f", "%M", "-o", str(rss_file), *full]
        env = {**self.env, **(extra_env or {})}
        ns_fd = os.open(netns, os.O_RDONLY) if netns else -1
        in_fd = os.open(stdin or os.devnull, os.O_RDONLY)
        with tempfile.TemporaryFile(dir=self.scratch) as out, tempfile.TemporaryFile(dir=self.scratch) as err:
            # The child holds the write end, closed on exec: this process's read returns
            # at the exec (or at the child's end, if the exec fails).
            exec_seen, exec_mark = os.pipe2(os.O_CLOEXEC)
            pid = os.fork()
            if pid == 0:  # child: never returns
                os.close(exec_seen)
                self._exec(full, env, ns_fd, in_fd, out.fileno(), err.fileno(), cgroup_procs, burn_ms)
            os.close(exec_mark)
            os.close(in_fd)
            if ns_fd >= 0:
                os.close(ns_fd)
            try:
                os.read(exec_seen, 1)
                started = time.monotonic()
            finally:
                os.close(exec_seen)
            status, usage = _wait(pid)
            wall = time.monotonic() - started
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
        cpu_ms = (usage.ru_utime + usage.ru_stime) * 1000 - burn_ms  # the command's own
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

    @staticmethod
    def _exec(argv: list[str], env: dict[str, str], ns_fd: int, in_fd: int, out_fd: int, err_fd: int,
              cgroup_procs: Sequence[Path], burn_ms: float) -> None:
        try:
            os.setpgid(0, 0)  # its own group: the parent can end the whole tree by its id
            for procs in cgroup_procs:
                with open(procs, "w") as handle:
                    handle.write(f"{os.getpid()}\n")
            until = time.thread_time() + burn_ms / 1000
            while time.thread_time() < until:
                pass
            if ns_fd >= 0:
                _setns(ns_fd)
            os.dup2(in_fd, 0)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            os.execve(argv[0], argv, env)
        except BaseException as err:
            with contextlib.suppress(BaseException):
                os.write(err_fd, f"bench: cannot start {argv[0]}: {err}\n".encode())
        finally:
            os._exit(127)


def _wait(pid: int) -> tuple[int, Any]:
    """wait4 with a deadline: a run past RUN_TIMEOUT_S has its process group killed.
    (A pidfd wakes this process when the child ends: no polling next to a measurement.)"""
    try:
        pidfd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([pidfd], [], [], RUN_TIMEOUT_S)
        finally:
            os.close(pidfd)
        if not ready:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        return status, usage
    except BaseException:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("BENCH-")]
    return (lines[-1] if lines else "no output")[:200]


def run_quiet(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=600)
