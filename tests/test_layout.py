"""The package layout is the design: check its import rules so it cannot silently rot.

model/ is pure (flags in, rules out), so it can be tested and dry-run anywhere and
stays cheap to import; kernel/ is the only layer that touches the kernel and knows
nothing of how a run is decided; apply/ decides and writes, but is not a command line.
Read from the source with `ast`, so a lazy import inside a function counts too.
"""

import ast
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "istio_iptables"
# Which layers each layer may import from ("" is the package's top-level modules: logs).
ALLOWED = {
    "model": {"model", ""},
    "kernel": {"kernel", "model", ""},
    "apply": {"apply", "kernel", "model", ""},
}
# (importing module, imported module, allowed only inside a function): hostfacts.gather
# reads the pod's addresses; importing netlink lazily keeps the rest of model/ free of it.
EXCEPTIONS = {("model/hostfacts.py", "istio_iptables.kernel.netlink")}


class Import(NamedTuple):
    module: str
    line: int
    in_function: bool


def imports_of(path: Path) -> list[Import]:
    """Every istio_iptables module `path` imports (absolute or relative), and where."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(("istio_iptables", *path.relative_to(PACKAGE).parent.parts))
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                # `from istio_iptables.kernel import netlink` imports the submodule.
                found.extend(Import(f"{base}.{a.name}" if base.count(".") < 2 else base, child.lineno, in_function)
                             for a in child.names)
            visit(child, nested)

    visit(tree, False)
    return [i for i in found if i.module == "istio_iptables" or i.module.startswith("istio_iptables.")]


def layer_of(module: str) -> str:
    """'model' for istio_iptables.model.x, '' for istio_iptables.logs."""
    parts = module.split(".")
    if len(parts) >= 3 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return ""


def violations(layer: str) -> list[str]:
    problems: list[str] = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for imp in imports_of(path):
            if layer_of(imp.module) in ALLOWED[layer]:
                continue
            if (rel, imp.module) in EXCEPTIONS and imp.in_function:
                continue
            where = "inside a function" if imp.in_function else "at module level"
            problems.append(f"{rel}:{imp.line} imports {imp.module} {where}")
    return problems


def namedtuple_users(root: Path) -> list[str]:
    """Modules under `root` defining a typing.NamedTuple class or calling
    collections.namedtuple."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        if any((isinstance(n, ast.ClassDef) and any(ast.unparse(b).endswith("NamedTuple") for b in n.bases))
               or (isinstance(n, ast.Call) and ast.unparse(n.func).endswith("namedtuple"))
               for n in ast.walk(tree)):
            found.append(path.relative_to(root).as_posix())
    return found


def test_records_are_records_not_namedtuples() -> None:
    """One idiom for records: model/record.Record.  Defining a typing.NamedTuple costs
    0.7-0.9 M instructions at import (collections.namedtuple `eval`s a generated
    `__new__`, typing checks every annotation), a Record ~0.17 M (valgrind); the init
    path defines 14 before doing any work, at 10 ms of CPU = 100 ms of pod
    start under `cpu: 100m`.  Record never reads its annotations, so modules defining
    records may use `from __future__ import annotations`."""
    assert namedtuple_users(PACKAGE) == []


def test_the_record_checker_sees_every_namedtuple_spelling(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from typing import NamedTuple\nclass A(NamedTuple):\n    x: int\n")
    (tmp_path / "b.py").write_text("import typing\nclass B(typing.NamedTuple):\n    x: int\n")
    (tmp_path / "c.py").write_text("import collections\nC = collections.namedtuple('C', 'x')\n")
    (tmp_path / "d.py").write_text("from istio_iptables.model.record import Record\nclass D(Record):\n    x: int\n")
    assert namedtuple_users(tmp_path) == ["a.py", "b.py", "c.py"]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    assert violations(layer) == []


def test_the_checker_sees_what_it_must_refuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule test above can fail: a model module importing apply/, cli/ or kernel/
    (even lazily, or relatively), and hostfacts importing netlink at module level."""
    fake = tmp_path / "istio_iptables"
    (fake / "model").mkdir(parents=True)
    for layer in ("apply", "cli", "kernel"):
        (fake / layer).mkdir()
    (fake / "model" / "planner.py").write_text(
        "from istio_iptables.apply import run\n"
        "from ..cli.flags import parse_args\n"
        "def f() -> None:\n"
        "    import istio_iptables.kernel.spawn\n"
        "from istio_iptables import logs\n"
        "from . import config\n")
    (fake / "model" / "hostfacts.py").write_text("from istio_iptables.kernel.netlink import interface_addresses\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    assert violations("model") == [
        "model/hostfacts.py:1 imports istio_iptables.kernel.netlink at module level",
        "model/planner.py:1 imports istio_iptables.apply.run at module level",
        "model/planner.py:2 imports istio_iptables.cli.flags at module level",
        "model/planner.py:4 imports istio_iptables.kernel.spawn inside a function",
    ]
