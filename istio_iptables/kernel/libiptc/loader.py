"""Importing python-iptables cheaply, for one address family.

python-iptables (1.x) is expensive to import as shipped: ``iptc.util`` imports
``distutils.sysconfig`` (with setuptools installed, all of setuptools), ``ctypes.util``
(which brings subprocess, shutil, tempfile, bz2 and lzma), ``subprocess`` and
``sysconfig``; ``iptc.ip4tc`` imports ``socket`` (enum conversion of every constant)
and runs ``modprobe ip_tables`` as a child process, ``iptc.ip6tc`` runs ``modprobe
ip6_tables``; libraries are located with ``find_library`` (``ldconfig -p``, ``gcc``,
``ld``), and ``ldconfig -N -v`` runs unless ``XTABLES_LIBDIR`` is set; the package's
``__init__`` imports both families and ``iptc.easy``.

:func:`load_iptc` imports the same code without any of that:

* ``prepare_environment`` sets ``XTABLES_LIBDIR``, ``IPTABLES_LIBDIR`` and
  ``PYTHON_IPTABLES_XTABLES_VERSION`` where unset (a few stat calls, no process);
* while python-iptables' modules execute, ``ctypes.util``, ``subprocess``, ``shlex``,
  ``sysconfig`` and ``distutils.sysconfig`` are small stand-ins in ``sys.modules``
  (the real modules load on first real use; nothing is replaced once a real one is
  loaded), and ``socket`` is the ``_socket`` it wraps (every name iptc uses is there);
* ``iptc.util``'s ``find_library``/``find_libc`` open the libraries by path, and its
  ``load_kernel`` runs modprobe only when the module is missing (no
  ``/proc/net/ip{,6}_tables_names``), as iptables itself does;
* the ``iptc`` package is set up without running its ``__init__``: only
  ``iptc.ip4tc`` (and ``iptc.ip6tc`` for IPv6) are imported.

* two per-rule costs of python-iptables are cut (see :func:`_trim_per_rule_work` and
  :func:`_short_dir`).

The stand-ins leave ``sys.modules`` before :func:`load_iptc` returns.  The replaced
python-iptables functions (util's finders and load_kernel, two IPTCModule methods, the
IP header structs' ``__dir__``) stay replaced in this process, which is normally the
backend's short-lived worker.  bench/instructions.py measures what all this saves.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from istio_iptables.kernel.libiptc.common import LibiptcError

_PROC_TABLE_NAMES = {"ip_tables": "/proc/net/ip_tables_names", "ip6_tables": "/proc/net/ip6_tables_names"}


def _multiarch() -> str | None:
    """The Debian multiarch tuple of this interpreter, e.g. ``x86_64-linux-gnu``."""
    tuple_ = getattr(sys.implementation, "_multiarch", None)
    if isinstance(tuple_, str) and tuple_:
        return tuple_
    import sysconfig

    value = sysconfig.get_config_var("MULTIARCH")
    return value if isinstance(value, str) and value else None


_LIBRARY_DIRS: list[str] = []


def _library_dirs() -> list[str]:
    """Directories that may hold libxtables and friends, most specific first."""
    if not _LIBRARY_DIRS:
        _LIBRARY_DIRS.extend(_find_library_dirs())
    return list(_LIBRARY_DIRS)


def _find_library_dirs() -> list[str]:
    dirs: list[str] = []
    arch = _multiarch()
    if arch:
        dirs += [f"/usr/lib/{arch}", f"/lib/{arch}"]
    dirs += ["/usr/lib64", "/lib64", "/usr/local/lib", "/usr/lib", "/lib"]
    seen: set[str] = set()
    result: list[str] = []
    for d in dirs:
        real = os.path.realpath(d)
        if real not in seen and os.path.isdir(real):
            seen.add(real)
            result.append(d)
    return result


# Sonames majors to try by name before listing a directory (libxtables 12 is iptables
# 1.6.2-1.8.x; libip4tc/libip6tc 2 is 1.8.x).  Listing /usr/lib/<arch> is the slow path.
_KNOWN_MAJORS = {"xtables": (12, 11, 10), "ip4tc": (2, 0), "ip6tc": (2, 0), "iptc": (0,), "c": (6,)}


def _listdir(d: str, cache: dict[str, list[str]]) -> list[str]:
    listing = cache.get(d)
    if listing is None:
        try:
            listing = os.listdir(d)
        except OSError:
            listing = []
        cache[d] = listing
    return listing


def find_soname(name: str, dirs: Sequence[str], cache: dict[str, list[str]] | None = None) -> tuple[str, int] | None:
    """``lib<name>.so.<major>`` in the first directory holding one: a known major by
    name first, else the shortest such file in a directory listing."""
    for d in dirs:
        for major in _KNOWN_MAJORS.get(name, ()):
            path = os.path.join(d, f"lib{name}.so.{major}")
            if os.path.exists(path):
                return path, major
    prefix = f"lib{name}.so."
    listings = {} if cache is None else cache
    for d in dirs:
        found = []
        for entry in _listdir(d, listings):
            if entry.startswith(prefix):
                version = entry[len(prefix):].split(".")
                if all(part.isascii() and part.isdigit() for part in version):
                    found.append((len(entry), entry, int(version[0])))
        if found:
            _, entry, major = min(found)
            return os.path.join(d, entry), major
    return None


def _iptc_spec() -> Any:
    from importlib.machinery import PathFinder

    return PathFinder.find_spec("iptc")


def _iptc_site_dir(spec: Any) -> str | None:
    """The directory holding the ``iptc`` package (and its ``libxtwrapper`` extension)."""
    if spec is None or not spec.submodule_search_locations:
        return None
    location: str = next(iter(spec.submodule_search_locations))
    return os.path.dirname(os.path.abspath(location))


def prepare_environment(spec: Any = None) -> None:
    """Set python-iptables' location variables where unset (cheap; no subprocess).

    ``XTABLES_LIBDIR``: the xtables extension directory (``/usr/lib/<multiarch>/xtables``).
    ``IPTABLES_LIBDIR``: where libxtables lives, plus the directory of ``libxtwrapper``.
    ``PYTHON_IPTABLES_XTABLES_VERSION``: the libxtables soname major.
    """
    dirs = _library_dirs()
    if not os.environ.get("XTABLES_LIBDIR"):
        for d in dirs:
            candidate = os.path.join(d, "xtables")
            if os.path.isdir(candidate):
                os.environ["XTABLES_LIBDIR"] = candidate
                break
    libdir_env = os.environ.get("IPTABLES_LIBDIR")
    search = libdir_env.split(":") if libdir_env else dirs
    xtables = find_soname("xtables", search) or find_soname("xtables", dirs)
    if not libdir_env:
        libdirs: list[str] = []
        if xtables is not None:
            libdirs.append(os.path.dirname(xtables[0]))
        site = _iptc_site_dir(spec if spec is not None else _iptc_spec())
        if site is not None:
            libdirs.append(site)
        if libdirs:
            os.environ["IPTABLES_LIBDIR"] = ":".join(libdirs)
    if xtables is not None and not os.environ.get("PYTHON_IPTABLES_XTABLES_VERSION"):
        os.environ["PYTHON_IPTABLES_XTABLES_VERSION"] = str(xtables[1])


class _Finder:
    """python-iptables' find_library/find_libc, answered by path (RTLD_GLOBAL, as iptc does)."""

    def __init__(self) -> None:
        extra = [d for d in os.environ.get("IPTABLES_LIBDIR", "").split(":") if d]
        self.dirs = extra + _library_dirs()
        self.listings: dict[str, list[str]] = {}

    def _open(self, path: str) -> Any:
        import ctypes

        return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)

    def _path(self, name: str) -> tuple[str, int] | None:
        if name.startswith("lib") and ".so." in name:  # "libxtables.so.12": that file
            major = name.split(".so.", 1)[1].split(".")[0]
            for d in self.dirs:
                if os.path.exists(os.path.join(d, name)):
                    return os.path.join(d, name), int(major) if major.isdigit() else 0
            return None
        if name not in _KNOWN_MAJORS:
            from importlib.machinery import EXTENSION_SUFFIXES

            for d in self.dirs:  # python extension-style names: libxtwrapper.cpython-311-....so
                for suffix in EXTENSION_SUFFIXES:
                    path = os.path.join(d, f"lib{name}{suffix}")
                    if os.path.exists(path):
                        return path, 0
        return find_soname(name, self.dirs, self.listings)

    def find_library(self, *names: str) -> tuple[Any, int | None]:
        for name in names:
            hit = self._path(name)
            if hit is not None:
                try:
                    return self._open(hit[0]), hit[1]
                except OSError:
                    continue
        raise LibiptcError(f"cannot find library {' or '.join(names)} (searched {', '.join(self.dirs)})")

    def find_libc(self) -> Any:
        hit = find_soname("c", self.dirs, self.listings)
        return self._open(hit[0] if hit else "libc.so.6")


def _lazy_module(name: str, **attributes: Any) -> types.ModuleType:
    """A stand-in holding `attributes`; anything else loads the real module."""
    stub = types.ModuleType(name)
    stub.__dict__.update(attributes)
    return stub


def _real(name: str) -> Any:
    """The real stdlib module, imported now (outside the stand-in window)."""
    import importlib

    if getattr(sys.modules.get(name), "__stand_in__", False):
        del sys.modules[name]
    return importlib.import_module(name)


def _stand_ins() -> dict[str, Any]:
    def popen(*args: Any, **kwargs: Any) -> Any:
        return _real("subprocess").Popen(*args, **kwargs)

    def get_config_var(name: str) -> Any:
        return _real("sysconfig").get_config_var(name)

    def get_path(name: str) -> Any:
        return _real("sysconfig").get_path(name)

    def find_library(name: str) -> Any:
        return _real("ctypes.util").find_library(name)

    def split(text: str, comments: bool = False, posix: bool = True) -> Any:
        return _real("shlex").split(text, comments, posix)

    import _socket

    return {
        "ctypes.util": _lazy_module("ctypes.util", find_library=find_library, __stand_in__=True),
        "subprocess": _lazy_module("subprocess", Popen=popen, PIPE=-1, __stand_in__=True),
        "sysconfig": _lazy_module("sysconfig", get_config_var=get_config_var, get_path=get_path,
                                  __stand_in__=True),
        "shlex": _lazy_module("shlex", split=split, __stand_in__=True),  # only save() output is split
        "distutils.sysconfig": None,  # iptc.util falls back to sysconfig on ModuleNotFoundError
        "socket": _socket,
    }


@contextmanager
def _standing_in() -> Iterator[None]:
    """Stand-ins for the modules iptc imports but (almost) never uses, while it imports."""
    placed: list[tuple[str, Any]] = []
    for name, module in _stand_ins().items():
        if name not in sys.modules:
            sys.modules[name] = module
            placed.append((name, module))
    try:
        yield
    finally:
        for name, module in placed:
            if sys.modules.get(name, 0) is module:
                del sys.modules[name]


def _load_kernel_if_missing(original: Callable[..., Any]) -> Callable[..., Any]:
    """modprobe only when the kernel lacks the module (its /proc file is absent)."""

    def load_kernel(name: str, exc_if_failed: bool = False) -> Any:
        proc = _PROC_TABLE_NAMES.get(name)
        if proc is not None and os.path.exists(proc):
            return None
        return original(name, exc_if_failed)

    return load_kernel


def _package(spec: Any) -> types.ModuleType:
    """The ``iptc`` package object, set up without running its ``__init__``."""
    if spec is None or spec.submodule_search_locations is None:
        raise LibiptcError("python-iptables (the iptc package) is not installed")
    package = types.ModuleType("iptc")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    sys.modules["iptc"] = package
    return package


def _trim_per_rule_work(module_cls: Any) -> None:
    """Two per-rule costs of python-iptables' Match/Target base class, cut (together
    about a fifth of the per-rule instructions; see bench/instructions.py):

    * ``__setattr__`` tells an option name from an attribute with ``dir(self)``, which
      builds and sorts every attribute name of the class at each assignment; the
      class's names are the same every time, so they are computed once per class.
    * ``final_check`` first round-trips every option through the extension's C
      ``save()`` (stdout redirected into a pipe, the text re-split with shlex, the
      options reset and parsed again) before the extension's own check.  iptables
      runs only the check; so does this backend (the tests compare every rule with
      what iptables-legacy-restore writes, and ``-C`` finds each one).
    """
    if getattr(module_cls, "_istio_trimmed", False):
        return
    names: dict[type, frozenset[str]] = {}

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if name[:1] == "_":  # python-iptables' own state: most assignments
            object.__setattr__(self, name, value)
            return
        cls = type(self)
        known = names.get(cls)
        if known is None:
            known = names[cls] = frozenset(dir(cls))
        if name not in known and name not in self.__dict__:
            self.parse(name.replace("_", "-"), value)
        else:
            object.__setattr__(self, name, value)

    def final_check(self: Any) -> None:
        if self._module:
            self._final_check()

    module_cls.__setattr__ = __setattr__
    module_cls.final_check = final_check
    module_cls._istio_trimmed = True


def _short_dir(header: Any) -> None:
    """python-iptables builds every Target by scanning ``dir()`` of the rule's IP header
    struct for its ``*_F_GOTO`` constant (about 7% of the per-rule instructions); that
    scan is the only use of ``dir()`` on these structs, so it is given just that name."""
    if header is None or "__dir__" in vars(header):
        return
    names = [name for name in dir(header) if name.endswith("_F_GOTO")]
    header.__dir__ = lambda self: list(names)


_LOADED: dict[int, types.SimpleNamespace] = {}


def load_iptc(family: int) -> types.SimpleNamespace:
    """python-iptables' classes for `family`: Table, Chain, Rule, Match, IPTCError,
    xtables (the module), and Table6/Rule6 for IPv6."""
    loaded = _LOADED.get(family)
    if loaded is not None:
        return loaded
    import importlib

    spec = _iptc_spec()
    prepare_environment(spec)
    try:
        if "iptc.ip4tc" in sys.modules or ("iptc" in sys.modules and hasattr(sys.modules["iptc"], "Table")):
            module = importlib.import_module("iptc")  # imported the usual way already (tests)
            ip4, ip6 = module.ip4tc, module.ip6tc
        else:
            finder = _Finder()
            _package(spec)
            with _standing_in():
                util: Any = importlib.import_module("iptc.util")
                util.find_library = finder.find_library
                util.find_libc = finder.find_libc
                util.load_kernel = _load_kernel_if_missing(util.load_kernel)
                ip4 = importlib.import_module("iptc.ip4tc")
                ip6 = importlib.import_module("iptc.ip6tc") if family == 6 else None
    except LibiptcError:
        raise
    except Exception as exc:  # XTablesError, OSError, AttributeError from ctypes
        raise LibiptcError(f"cannot load python-iptables (libiptc/libxtables): {exc}") from exc
    _trim_per_rule_work(ip4.IPTCModule)
    for header in (ip4.ipt_ip, getattr(ip6, "ip6t_ip6", None)):
        _short_dir(header)
    xtables = sys.modules["iptc.xtables"]
    loaded = types.SimpleNamespace(Table=ip4.Table, Chain=ip4.Chain, Rule=ip4.Rule, Match=ip4.Match,
                                   IPTCError=ip4.IPTCError, xtables=xtables,
                                   Table6=getattr(ip6, "Table6", None), Rule6=getattr(ip6, "Rule6", None))
    _LOADED[family] = loaded
    return loaded
