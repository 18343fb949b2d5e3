"""The init path's compiled code in one file, built at image build time.

Every module import costs ~0.2 M instructions in importlib's path machinery before its
code runs: the finder's directory checks, the pyc's lookup, stat, open, read and
validation.  The usual pod's start imports the 22 modules of INIT_PATH, ~4.7 M of
machinery, ~13 ms of pod start under the init container's cpu: 100m.  CPython 3.11
froze its own start-up modules for the same reason.  Served from the bundle, a start
costs 3.3-3.6 M instructions less (valgrind, bench/instructions.py).

`python -m istio_iptables.bundle` (images/Dockerfile; the benchmark) compiles them into
`__pycache__/init-path.<cache tag>.bundle` next to the package.  When that file is there,
the package's `__init__` puts a finder first on sys.meta_path that serves these modules
from it.  Each bundled module is checked against its source file the way a pyc is,
by mtime and size, with one stat.  A module whose source changed, or that is not in the
bundle, is imported from its file as usual.  A bundle of another interpreter version
is never read (the cache tag is in its name), nor one built at another `-O` level.
Deleting the file turns it all off.  Tracebacks, `__file__` and `inspect` see the
source files, as with pycs.
"""

from __future__ import annotations

import marshal
import os
import sys
from types import CodeType

# What a usual pod's apply imports (iptables mode, REDIRECT, numeric uid), in import
# order; tests/test_model.py holds it to a real apply's imports.
INIT_PATH = (
    "istio_iptables.cli",
    "istio_iptables.model",
    "istio_iptables.model.constants",
    "istio_iptables.model.record",
    "istio_iptables.model.config",
    "istio_iptables.cli.flags",
    "istio_iptables.cli.main",
    "istio_iptables.logs",
    "istio_iptables.model.hostfacts",
    "istio_iptables.apply",
    "istio_iptables.kernel",
    "istio_iptables.kernel.spawn",
    "istio_iptables.kernel.netlink",
    "istio_iptables.kernel.iptables_restore",
    "istio_iptables.model.iptables_plan",
    "istio_iptables.apply.run",
    "istio_iptables.kernel.nslock",
    "istio_iptables.model.iptables_render",
    "istio_iptables.apply.final_log",
    "istio_iptables.apply.undo",
    "istio_iptables.model.iptables_dump",
    "istio_iptables.apply.iptables",
)


def build(path: str | None = None) -> str:
    """Compile INIT_PATH from their source files into the bundle (written whole, then
    renamed into place).  The sources are found by name, without importing anything."""
    from istio_iptables import BUNDLE_FORMAT, BUNDLE_PATH

    root = os.path.dirname(os.path.abspath(__file__))
    entries: dict[str, tuple[str, bool, int, int, CodeType]] = {}
    for name in INIT_PATH:
        base = os.path.join(root, *name.split(".")[1:])
        package = os.path.isdir(base)
        origin = os.path.join(base, "__init__.py") if package else base + ".py"
        with open(origin, "rb") as handle:
            source = handle.read()
        st = os.stat(origin)
        entries[name] = (origin, package, int(st.st_mtime), st.st_size,
                         compile(source, origin, "exec", dont_inherit=True, optimize=sys.flags.optimize))
    target = path or BUNDLE_PATH
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = f"{target}.{os.getpid()}.tmp"
    with open(partial, "wb") as handle:
        handle.write(marshal.dumps((BUNDLE_FORMAT, sys.flags.optimize, entries)))
    os.replace(partial, target)
    return target


def stale_bytecode(root: str) -> list[str]:
    """The .py files below `root` whose pyc does not match them (timestamp pycs: mtime
    in whole seconds and size), which the interpreter would compile again at every
    start where it may not write (PYTHONDONTWRITEBYTECODE, a read-only image).  An
    image layer keeps whole seconds only, so a pyc compiled against a finer mtime
    goes stale when copied from one stage to the next."""
    from importlib.util import cache_from_source

    stale = []
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py"):
                continue
            source = os.path.join(folder, name)
            try:
                with open(cache_from_source(source), "rb") as handle:
                    header = handle.read(16)
            except OSError:
                continue  # never compiled: not ours to judge
            st = os.stat(source)
            flags = int.from_bytes(header[4:8], "little")
            if flags == 0 and (int.from_bytes(header[8:12], "little") != int(st.st_mtime) & 0xFFFFFFFF
                               or int.from_bytes(header[12:16], "little") != st.st_size & 0xFFFFFFFF):
                stale.append(source)
    return stale


def check() -> list[str]:
    """What keeps this installation from starting as built: init-path modules not
    served by the bundle, and stale pycs anywhere beside the package."""
    from importlib import import_module

    from istio_iptables import BUNDLE_PATH

    problems = [f"{name} is not served by the bundle ({BUNDLE_PATH})" for name in INIT_PATH
                if getattr(getattr(import_module(name).__spec__, "loader", None), "__name__", "") != "BundleFinder"]
    stale = stale_bytecode(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if stale:
        problems.append(f"{len(stale)} stale pycs, compiled again at every start, e.g. {stale[0]}")
    return problems


def main(argv: list[str]) -> int:
    """`python -m istio_iptables.bundle [--check]`: build the bundle, or check that the
    installation starts as built (images/Dockerfile runs both)."""
    if argv == ["--check"]:
        problems = check()
        for problem in problems:
            sys.stderr.write(f"istio_iptables.bundle: {problem}\n")
        return 1 if problems else 0
    target = build()
    sys.stdout.write(f"{target}: {len(INIT_PATH)} modules\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
