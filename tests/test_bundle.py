"""The init path's bundle (istio_iptables/bundle.py): the same tool, served from one
file, and never served when it does not match the sources."""

from __future__ import annotations

import marshal
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import istio_iptables
from istio_iptables.bundle import INIT_PATH

STANDARD = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "10.0.0.0/8", "-b", "*",
            "-d", "15090,15021,15020", "--dry-run", "--ipv6", "off"]
# Which loader served each module of the init path, once all are imported.
LOADERS = ("import importlib, sys\n"
           "from istio_iptables.bundle import INIT_PATH\n"
           "for name in INIT_PATH:\n"
           "    module = importlib.import_module(name)\n"
           "    print(name, getattr(module.__spec__.loader, '__name__', type(module.__spec__.loader).__name__),"
           " module.__file__)\n")


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A copy of the package without any compiled file, importable from tmp_path."""
    shutil.copytree(Path(istio_iptables.__file__).parent, tmp_path / "istio_iptables",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def python(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ISTIO", "INBOUND", "OUTBOUND", "KUBE"))}
    env["PYTHONPATH"] = str(tree)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # cwd: `-c` and `-m` put the working directory first on sys.path.
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=tree, check=False)
    assert done.returncode == 0, done.stderr
    return done


def loaders(tree: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in python(tree, "-c", LOADERS).stdout.splitlines():
        name, loader, path = line.split()
        assert path.startswith(str(tree)), path  # the copy, not the repository
        out[name] = loader
    return out


def bundle_file(tree: Path) -> Path:
    return tree / "istio_iptables" / "__pycache__" / istio_iptables.BUNDLE_NAME


def test_the_bundled_tool_serves_every_init_path_module_and_prints_the_same_plan(tree: Path) -> None:
    unbundled = python(tree, "-m", "istio_iptables", *STANDARD).stdout
    assert set(loaders(tree).values()) == {"SourceFileLoader"}

    assert python(tree, "-m", "istio_iptables.bundle").stdout.startswith(str(bundle_file(tree)))

    assert loaders(tree) == dict.fromkeys(INIT_PATH, "BundleFinder")
    assert python(tree, "-m", "istio_iptables", *STANDARD).stdout == unbundled
    assert "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN" in unbundled


def test_a_module_whose_source_changed_is_imported_from_its_file(tree: Path) -> None:
    python(tree, "-m", "istio_iptables.bundle")
    source = tree / "istio_iptables" / "model" / "constants.py"
    source.write_text(source.read_text() + "CHANGED_AFTER_THE_BUNDLE = True\n")

    served = loaders(tree)

    assert served.pop("istio_iptables.model.constants") == "SourceFileLoader"
    assert set(served.values()) == {"BundleFinder"}
    changed = python(tree, "-c", "import istio_iptables.model.constants as c; print(c.CHANGED_AFTER_THE_BUNDLE)")
    assert changed.stdout == "True\n"


@pytest.mark.parametrize("content", [b"not a bundle", marshal.dumps(("istio-iptables bundle 0", 0, {})), b"",
                                     marshal.dumps(("istio-iptables bundle 1", {}))])
def test_a_damaged_or_foreign_bundle_is_not_read(tree: Path, content: bytes) -> None:
    unbundled = python(tree, "-m", "istio_iptables", *STANDARD).stdout
    bundle_file(tree).parent.mkdir(exist_ok=True)
    bundle_file(tree).write_bytes(content)

    assert set(loaders(tree).values()) == {"SourceFileLoader"}
    assert python(tree, "-m", "istio_iptables", *STANDARD).stdout == unbundled


def test_a_bundled_error_shows_the_source_line_in_its_traceback(tree: Path) -> None:
    """Tracebacks read the source files, as with pycs."""
    python(tree, "-m", "istio_iptables.bundle")
    code = "from istio_iptables.model.record import Record\nclass Bad(Record):\n    _x: int\n"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tree,
                          check=False)
    assert done.returncode == 1
    assert f'File "{tree}/istio_iptables/model/record.py"' in done.stderr
    assert 'raise ValueError(f"Field names cannot start with an underscore: {field!r}")' in done.stderr


def test_check_reports_a_module_not_served_and_a_stale_pyc(tree: Path) -> None:
    """What images/Dockerfile runs after copying the build between stages: an image
    layer keeps whole seconds of mtime, and a pyc of a source whose mtime moved is
    compiled again at every start where the interpreter may not write it."""
    python(tree, "-m", "compileall", "-q", str(tree / "istio_iptables"))
    python(tree, "-m", "istio_iptables.bundle")
    assert python(tree, "-m", "istio_iptables.bundle", "--check").stderr == ""

    source = tree / "istio_iptables" / "kernel" / "nslock.py"
    moved = source.stat().st_mtime + 1
    os.utime(source, (moved, moved))
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-m", "istio_iptables.bundle", "--check"], capture_output=True,
                          text=True, env=env, cwd=tree, check=False)

    assert done.returncode == 1
    assert "istio_iptables.kernel.nslock is not served by the bundle" in done.stderr
    assert f"1 stale pycs, compiled again at every start, e.g. {source}" in done.stderr


def test_a_bundle_is_read_only_at_the_optimisation_level_it_was_built_for(tree: Path) -> None:
    python(tree, "-m", "istio_iptables.bundle")
    assert set(loaders(tree).values()) == {"BundleFinder"}
    optimised = python(tree, "-O", "-c", LOADERS).stdout.split()
    assert set(optimised[1::3]) == {"SourceFileLoader"}
