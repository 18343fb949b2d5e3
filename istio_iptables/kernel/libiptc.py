"""iptables-legacy backend without iptables binaries: planned rules written with python-iptables.

Instead of feeding text to ``iptables-legacy-restore``, each rule's argv (``-p tcp
--dport 15008 -j RETURN`` ...) is converted into an ``iptc.Rule`` / ``iptc.Rule6``
and inserted into an in-memory libiptc handle of its table.  Nothing reaches the
kernel until every rule of every table has been converted and inserted; only then
is each touched table committed.  Any failure before that discards the handles, so
the kernel is left exactly as it was.  (The kernel can still refuse a table at
commit time; tables committed before it are then reverted.)

API: :func:`apply_rules`, :func:`delete_rules`, :func:`save`, :class:`LibiptcError`;
rules are anything shaped like :class:`RuleLike` (``istio_iptables.model.iptables_plan.Rule``).

Notes on python-iptables (1.x) and libxtables (1.8) that shape this module:

* Importing ``iptc`` is slow by default (~250 ms): ``iptc.util`` imports
  ``distutils.sysconfig``, which setuptools' distutils shim turns into an import of
  all of setuptools; libc, libxtables, libip4tc, libip6tc and ``libxtwrapper`` are
  located with ``ctypes.util.find_library`` (``ldconfig -p`` each, plus ``gcc`` and
  ``ld`` for ``libxtwrapper``); and ``ldconfig -N -v`` runs unless ``XTABLES_LIBDIR``
  is set.  :func:`prepare_environment` sets ``XTABLES_LIBDIR``, ``IPTABLES_LIBDIR``
  and ``PYTHON_IPTABLES_XTABLES_VERSION`` where unset, and :func:`_load_iptc`
  answers the remaining ``find_library`` calls from the multiarch directories and
  lets the ``distutils.sysconfig`` import fail fast (iptc falls back to sysconfig).
  ``iptc`` is imported on first use only, never when this module is imported.
* One address family per process: libxtables registers a family-specific extension
  (REDIRECT, TPROXY, multiport) only for the family current when its .so was first
  loaded.  Each call therefore runs in a forked worker by default (``isolate=True``,
  see :func:`_dispatch`).
* Negation: addresses, interfaces and the protocol take a leading ``"!"`` in the
  value (``rule.dst = "!127.0.0.1/32"``); a match or target option is negated by a
  leading ``"!"`` element of the value passed to ``parse`` (``["!", "15008"]``).
* ``Chain.insert_rule(rule, position)`` takes a 0-based position; ``-I CHAIN N`` is
  ``insert_rule(rule, N - 1)``.
* Jumps to user chains and the verdicts ACCEPT/DROP/RETURN/QUEUE are "standard"
  targets that libiptc maps by name.  A ``-j`` name that is neither a verdict, nor
  a chain of the rule's table, nor a loadable target extension is rejected here.
* python-iptables takes no xtables lock; this module takes ``/run/xtables.lock``
  (or ``$XTABLES_LOCKFILE``) like iptables-legacy does, so concurrent iptables
  invocations cannot interleave with a commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

__all__ = [
    "LibiptcError",
    "RuleLike",
    "apply_rules",
    "delete_rules",
    "prepare_environment",
    "rule_text",
    "save",
]


def _log() -> Any:
    """This module's logger; logging is imported on first use only (start-up cost)."""
    import logging

    return logging.getLogger(__name__)


#: How long to wait for the xtables lock held by another iptables user, in seconds.
XTABLES_LOCK_WAIT = 30.0
_DEFAULT_LOCKFILE = "/run/xtables.lock"

_VERDICTS = frozenset({"ACCEPT", "DROP", "RETURN", "QUEUE"})
_FAMILY_NAMES = {4: "iptables-legacy", 6: "ip6tables-legacy"}
# Protocols whose implicit match extension has a different name than the protocol.
_PROTO_MATCH_ALIASES = {"icmpv6": "icmp6", "ipv6-icmp": "icmp6"}
# Upper bound on deleting the same rule again when it was added more than once.
_MAX_DUPLICATE_DELETES = 64


class RuleLike(Protocol):
    """What this backend needs of a planned rule (istio_iptables.model.iptables_plan.Rule fits)."""

    @property
    def table(self) -> str: ...

    @property
    def chain(self) -> str: ...

    @property
    def params(self) -> tuple[str, ...]: ...

    @property
    def position(self) -> int | None: ...


class LibiptcError(Exception):
    """A rule, chain or table could not be written (or read) through libiptc.

    ``table``, ``chain`` and ``rule`` name what failed when it was one rule.
    """

    def __init__(self, message: str, *, table: str | None = None, chain: str | None = None,
                 rule: str | None = None) -> None:
        super().__init__(message)
        self.table = table
        self.chain = chain
        self.rule = rule


class _ConvertError(Exception):
    """A params tuple cannot be expressed; `missing_chain` when a jump target is absent."""

    def __init__(self, message: str, *, missing_chain: bool = False) -> None:
        super().__init__(message)
        self.missing_chain = missing_chain


# --------------------------------------------------------------------------------------
# Loading python-iptables cheaply
# --------------------------------------------------------------------------------------

_LOAD_LOCK = threading.Lock()
_iptc_module: Any = None
_SIMPLE_LIBNAME = r"^[A-Za-z0-9_+-]+$"


def _multiarch() -> str | None:
    """The Debian multiarch tuple of this interpreter, e.g. ``x86_64-linux-gnu``."""
    tuple_ = getattr(sys.implementation, "_multiarch", None)
    if isinstance(tuple_, str) and tuple_:
        return tuple_
    import sysconfig

    value = sysconfig.get_config_var("MULTIARCH")
    return value if isinstance(value, str) and value else None


def _library_dirs() -> list[str]:
    """Directories that may hold libxtables and friends, most specific first."""
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


_DIR_LISTINGS: dict[str, list[str]] = {}


def _listdir(d: str) -> list[str]:
    listing = _DIR_LISTINGS.get(d)
    if listing is None:
        try:
            listing = os.listdir(d)
        except OSError:
            listing = []
        _DIR_LISTINGS[d] = listing
    return listing


def _find_soname(name: str, dirs: Sequence[str]) -> tuple[str, int] | None:
    """The shortest ``lib<name>.so.<major>[.x.y]`` file in the first directory holding one."""
    prefix = f"lib{name}.so."
    for d in dirs:
        found = []
        for entry in _listdir(d):
            if entry.startswith(prefix):
                version = entry[len(prefix):].split(".")
                if all(part.isdigit() for part in version):
                    found.append((len(entry), entry, int(version[0])))
        if found:
            _, entry, major = min(found)
            return os.path.join(d, entry), major
    return None


def _iptc_site_dir() -> str | None:
    """The directory holding the ``iptc`` package (and its ``libxtwrapper`` extension)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("iptc")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.dirname(os.path.abspath(next(iter(spec.submodule_search_locations))))


def prepare_environment() -> None:
    """Set python-iptables' location variables where unset (cheap; no subprocess).

    ``XTABLES_LIBDIR``: the xtables extension directory (``/usr/lib/<multiarch>/xtables``).
    ``IPTABLES_LIBDIR``: where libxtables lives, plus the directory of ``libxtwrapper``.
    ``PYTHON_IPTABLES_XTABLES_VERSION``: the libxtables soname major, so python-iptables
    opens ``libxtables.so.<major>`` by path instead of asking ``find_library``.
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
    xtables = _find_soname("xtables", search) or _find_soname("xtables", dirs)
    if not libdir_env:
        libdirs: list[str] = []
        if xtables is not None:
            libdirs.append(os.path.dirname(xtables[0]))
        site = _iptc_site_dir()
        if site is not None:
            libdirs.append(site)
        if libdirs:
            os.environ["IPTABLES_LIBDIR"] = ":".join(libdirs)
    if xtables is not None and not os.environ.get("PYTHON_IPTABLES_XTABLES_VERSION"):
        os.environ["PYTHON_IPTABLES_XTABLES_VERSION"] = str(xtables[1])


def _fast_find_library(original: Callable[[str], str | None]) -> Callable[[str], str | None]:
    """A ``ctypes.util.find_library`` that looks in the library directories first."""
    dirs = _library_dirs()
    extra = os.environ.get("IPTABLES_LIBDIR")
    if extra:
        dirs = [d for d in extra.split(":") if d] + dirs

    def find(name: str) -> str | None:
        if re.match(_SIMPLE_LIBNAME, name):
            hit = _find_soname(name, dirs)
            if hit is not None:
                return hit[0]
        return original(name)

    return find


def _load_iptc() -> Any:
    """Import python-iptables once, with the environment prepared; returns the module."""
    global _iptc_module
    if _iptc_module is not None:
        return _iptc_module
    with _LOAD_LOCK:
        if _iptc_module is None:
            prepare_environment()
            import ctypes.util

            original = ctypes.util.find_library
            setattr(ctypes.util, "find_library", _fast_find_library(original))  # noqa: B010
            # iptc.util tries `from distutils.sysconfig import get_python_lib` and falls back to
            # sysconfig on ModuleNotFoundError.  With setuptools installed, that import pulls
            # in all of setuptools and pkg_resources (~150 ms); a None entry makes it fail fast.
            blocked = "distutils.sysconfig" not in sys.modules
            if blocked:
                sys.modules["distutils.sysconfig"] = None  # type: ignore[assignment]
            try:
                _iptc_module = importlib.import_module("iptc")
            except Exception as exc:  # XTablesError, OSError, AttributeError from ctypes
                raise LibiptcError(f"cannot load python-iptables (libiptc/libxtables): {exc}") from exc
            finally:
                _DIR_LISTINGS.clear()
                setattr(ctypes.util, "find_library", original)  # noqa: B010
                if blocked and sys.modules.get("distutils.sysconfig", 0) is None:
                    del sys.modules["distutils.sysconfig"]
    return _iptc_module


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _lib_message(exc: BaseException) -> str:
    """python-iptables' message with its bytes reprs (``b'Invalid argument'``) unwrapped."""
    return re.sub(r"""\bb(['"])(.*?)\1""", r"\2", str(exc)) or type(exc).__name__


def _check_family(family: int) -> None:
    if family not in _FAMILY_NAMES:
        raise ValueError(f"family must be 4 or 6, not {family!r}")


def _quote(token: str) -> str:
    if token and not re.search(r"[\s'\"\\]", token):
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rule_text(rule: RuleLike) -> str:
    """The rule as an iptables command line after ``-t TABLE``: ``-A CHAIN ...`` or ``-I CHAIN N ...``."""
    head = [f"-A {rule.chain}"] if rule.position is None else [f"-I {rule.chain} {rule.position}"]
    return " ".join(head + [_quote(p) for p in rule.params])


_RULE_CLASSES: dict[int, Any] = {}


def _scoped_tables(rule: Any) -> list[Any]:
    scoped = getattr(rule, "_lookup_tables", None)
    if scoped is not None:
        return list(scoped)
    chain = getattr(rule, "chain", None)
    return [chain.table] if chain is not None else []


def _table_classes(iptc: Any, family: int) -> tuple[Any, Any]:
    """(Table class, Rule class) of a family.

    The Rule class is a subclass whose ``tables`` (where python-iptables looks up
    whether a target name is a chain) is only the rule's own table.  The stock
    property opens every table of the family, which makes the kernel instantiate
    filter/security/... in the namespace as a side effect, and would treat a chain
    of another table as a valid jump.
    """
    cls = _RULE_CLASSES.get(family)
    if cls is None:
        base = iptc.Rule if family == 4 else iptc.Rule6
        cls = type(f"Scoped{base.__name__}", (base,), {"tables": property(_scoped_tables)})
        _RULE_CLASSES[family] = cls
    return (iptc.Table if family == 4 else iptc.Table6), cls


@contextlib.contextmanager
def _xtables_lock() -> Iterator[None]:
    """Hold the xtables lock (flock on /run/xtables.lock) as iptables-legacy does."""
    path = os.environ.get("XTABLES_LOCKFILE") or _DEFAULT_LOCKFILE
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        _log().debug("xtables lock %s unavailable (%s); continuing without it", path, exc)
        fd = -1
    try:
        if fd >= 0:
            deadline = time.monotonic() + XTABLES_LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LibiptcError(
                            f"another app is holding the xtables lock {path}; gave up after "
                            f"{XTABLES_LOCK_WAIT:g}s"
                        ) from None
                    time.sleep(0.05)
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # releases the flock


class _Tables:
    """Non-autocommit libiptc handles of one family, refreshed on first use."""

    def __init__(self, iptc: Any, family: int) -> None:
        self.iptc = iptc
        self.family = family
        self.table_cls, self.rule_cls = _table_classes(iptc, family)
        self.handles: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        handle = self.handles.get(name)
        if handle is None:
            try:
                handle = self.table_cls(name, autocommit=False)
                # Tables are cached per process by python-iptables: drop any stale state.
                handle.autocommit = False
                handle.refresh()
            except Exception as exc:
                raise LibiptcError(
                    f"{_FAMILY_NAMES[self.family]}: cannot open table {name!r}: {_lib_message(exc)}", table=name
                ) from exc
            self.handles[name] = handle
        return handle

    def discard(self) -> None:
        """Throw away every uncommitted change (autocommit is off, so refresh drops them)."""
        for name, handle in self.handles.items():
            try:
                handle.autocommit = False
                handle.refresh()
            except Exception as exc:  # pragma: no cover - only if the kernel goes away
                _log().warning("could not reset %s table %s: %s", _FAMILY_NAMES[self.family], name, exc)


# --------------------------------------------------------------------------------------
# params tuple -> iptc.Rule
# --------------------------------------------------------------------------------------


def _option_names(ext: Any) -> list[str]:
    """Long option names (without ``--``) a python-iptables Match or Target accepts."""
    names: list[str] = []
    tables = [getattr(ext, "_orig_options", None)]
    module = getattr(ext, "_module", None)
    if module is not None:
        tables += [getattr(module, "x6_options", None), getattr(module, "extra_opts", None)]
    for entries in tables:
        if not entries:
            continue
        i = 0
        while True:
            raw = entries[i].name
            if not raw:
                break
            name = raw.decode()
            if name not in names:
                names.append(name)
            i += 1
    return names


def _is_option(token: str) -> bool:
    return token.startswith("--") or (len(token) == 2 and token[0] == "-" and token[1].isalpha())


class _Converter:
    """Builds one python-iptables rule from an iptables argv, iptables' way."""

    def __init__(self, iptc: Any, family: int, table: Any, params: Sequence[str]) -> None:
        self.iptc = iptc
        self.family = family
        self.table = table
        self.params = params
        self.rule: Any = None
        self.matches: list[Any] = []
        self.target: Any = None
        self.proto: str | None = None
        self.proto_inverted = False
        self.implicit_loaded = False

    def convert(self) -> Any:
        _, rule_cls = _table_classes(self.iptc, self.family)
        self.rule = rule_cls()
        self.rule._lookup_tables = [self.table]
        params = list(self.params)
        invert = False
        i = 0
        while i < len(params):
            token = params[i]
            i += 1
            if token == "!":
                if invert:
                    raise _ConvertError("multiple consecutive '!' are not allowed")
                invert = True
                continue
            if not _is_option(token):
                raise _ConvertError(f"unexpected argument {token!r}")
            inline: str | None = None
            if token.startswith("--") and "=" in token:
                token, inline = token.split("=", 1)
            values: list[str] = [] if inline is None else [inline]
            while i < len(params) and params[i] != "!" and not _is_option(params[i]):
                values.append(params[i])
                i += 1
            self._option(token, values, invert)
            invert = False
        if invert:
            raise _ConvertError("'!' at the end of the rule negates nothing")
        if self.target is None:
            self.rule.create_target("")  # no -j: a rule that only counts
        return self.rule

    def _one(self, option: str, values: list[str]) -> str:
        if len(values) != 1:
            raise _ConvertError(f"option {option} takes exactly one argument, got {values!r}")
        return values[0]

    def _option(self, option: str, values: list[str], invert: bool) -> None:
        neg = "!" if invert else ""
        if option in ("-s", "--source", "--src"):
            value = self._one(option, values)
            if "," in value:
                raise _ConvertError(f"{option} with several addresses ({value}) is not supported")
            self.rule.src = neg + value
        elif option in ("-d", "--destination", "--dst"):
            value = self._one(option, values)
            if "," in value:
                raise _ConvertError(f"{option} with several addresses ({value}) is not supported")
            self.rule.dst = neg + value
        elif option in ("-i", "--in-interface"):
            self.rule.in_interface = neg + self._one(option, values)
        elif option in ("-o", "--out-interface"):
            self.rule.out_interface = neg + self._one(option, values)
        elif option in ("-p", "--protocol"):
            value = self._one(option, values).lower()
            try:
                self.rule.protocol = neg + value
            except ValueError:  # a name python-iptables does not know, e.g. ipv6-icmp
                import socket

                try:
                    number = socket.getprotobyname(value)
                except OSError:
                    raise _ConvertError(f"unknown protocol {value!r}") from None
                self.rule.protocol = f"{neg}{number}"
            self.proto = self.rule.protocol.lstrip("!")
            self.proto_inverted = invert
        elif option in ("-f", "--fragment"):
            if self.family != 4 or values or invert:
                raise _ConvertError(f"{neg and '! '}{option} is only supported un-negated for IPv4")
            self.rule.fragment = True
        elif option in ("-m", "--match"):
            if invert:
                raise _ConvertError("'!' before -m is not allowed")
            match = self.iptc.Match(self.rule, self._one(option, values))
            self.rule.add_match(match)
            self.matches.append(match)
        elif option in ("-j", "--jump", "-g", "--goto"):
            if invert:
                raise _ConvertError(f"'!' before {option} is not allowed")
            if self.target is not None:
                raise _ConvertError("more than one -j/-g")
            self._set_target(self._one(option, values), goto=option in ("-g", "--goto"))
        elif option.startswith("--"):
            self._module_option(option[2:], values, invert)
        else:
            raise _ConvertError(f"unknown option {option}")

    def _set_target(self, name: str, *, goto: bool) -> None:
        if not name:
            raise _ConvertError("empty target name")
        if name in _VERDICTS and not goto:
            self.target = self.rule.create_target(name)
            return
        if self.table.is_chain(name) and not self.table.builtin_chain(name):
            self.target = self.rule.create_target(name, goto=goto)
            return
        if goto:
            raise _ConvertError(f"goto target {name!r} is not a user chain of table {self.table.name!r}",
                                missing_chain=True)
        xt = self.iptc.xtables.xtables(self.rule.nfproto)
        if not xt.find_target(name):
            raise _ConvertError(
                f"{name!r} is neither a chain of table {self.table.name!r} nor a target extension",
                missing_chain=True,
            )
        self.target = self.rule.create_target(name)

    def _candidates(self) -> list[Any]:
        """Extensions an option may belong to: the newest loaded wins, as in iptables."""
        found: list[Any] = [] if self.target is None else [self.target]
        found += reversed(self.matches)
        return found

    def _implicit_match(self) -> Any:
        """Load the protocol's own match (``-p tcp`` -> ``-m tcp``) as iptables does on demand."""
        if self.implicit_loaded or self.proto is None or self.proto_inverted:
            return None
        name = self.proto
        if self.family == 6:
            name = _PROTO_MATCH_ALIASES.get(name, name)
        if name in ("all", "0") or any(m.name == name for m in self.matches):
            return None
        try:
            return self.iptc.Match(self.rule, name)
        except Exception:
            return None

    def _module_option(self, name: str, values: list[str], invert: bool) -> None:
        value = (["!"] if invert else []) + values
        candidates = self._candidates()
        for ext in candidates:
            if name in _option_names(ext):
                ext.parse(name, value)
                return
        implicit = self._implicit_match()
        pool = candidates + ([implicit] if implicit is not None else [])
        owner: Any = None
        canonical = name
        if implicit is not None and name in _option_names(implicit):
            owner = implicit
        else:
            # getopt_long accepts an unambiguous abbreviation (Istio writes --to-port).
            hits = [(ext, opt) for ext in pool for opt in _option_names(ext) if opt.startswith(name)]
            distinct = {opt for _, opt in hits}
            if len(distinct) > 1:
                raise _ConvertError(f"option --{name} is ambiguous: {', '.join(sorted(distinct))}")
            if hits:
                owner, canonical = hits[0]
        if owner is None:
            loaded = ", ".join(e.name for e in pool) or "none"
            raise _ConvertError(f"unknown option --{name} (loaded extensions: {loaded})")
        if owner is implicit:
            self.rule.add_match(implicit)
            self.matches.append(implicit)
            self.implicit_loaded = True
        owner.parse(canonical, value)


def _convert(iptc: Any, family: int, table: Any, params: Sequence[str]) -> Any:
    return _Converter(iptc, family, table, params).convert()


# --------------------------------------------------------------------------------------
# One family per process: the worker
# --------------------------------------------------------------------------------------

#: The family this process has used python-iptables for in-process (isolate=False).
_inprocess_family: int | None = None


def _dispatch(family: int, isolate: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a forked worker process (``isolate``) or in this process.

    libxtables 1.8 registers a family-specific extension (REDIRECT, TPROXY, multiport,
    ...) only for the family that was current when its shared object was first
    loaded, so after IPv4 work the IPv6 variants are never found; when
    python-iptables then re-runs the extension's init, libxtables may call
    ``exit(1)`` ("target ... already registered").  python-iptables' author advises
    one address family per process.  By default every call therefore runs in a
    forked child that imports python-iptables afresh (~20 ms) and sends its answer
    back; this process never loads libxtables.  ``isolate=False`` works in this
    process, and is refused for a second family.
    """
    _check_family(family)
    if _inprocess_family is not None and _inprocess_family != family:
        raise LibiptcError(
            f"python-iptables was already used in this process for IPv{_inprocess_family} "
            f"(isolate=False); libxtables cannot serve IPv{family} in the same process"
        )
    if not isolate:
        _claim_family(family)
        return fn(*args)
    return _in_child(fn, *args)


def _claim_family(family: int) -> None:
    global _inprocess_family
    _inprocess_family = family


def _in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` in a forked child; its result (JSON-able) or LibiptcError comes back."""
    import json
    import tempfile

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with tempfile.TemporaryFile() as err_file:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 0
            try:
                os.close(read_fd)
                os.dup2(err_file.fileno(), 2)
                try:
                    answer: dict[str, Any] = {"result": fn(*args)}
                except LibiptcError as exc:
                    answer = {"error": str(exc), "table": exc.table, "chain": exc.chain, "rule": exc.rule}
                except BaseException as exc:
                    answer = {"error": f"{type(exc).__name__}: {_lib_message(exc)}"}
                with os.fdopen(write_fd, "wb") as out:
                    out.write(json.dumps(answer).encode())
            except BaseException:
                code = 70
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as answer_pipe:
            raw = answer_pipe.read()
        _, status = os.waitpid(pid, 0)
        err_file.seek(0)
        stderr = err_file.read().decode(errors="replace").strip()
    if not raw:
        how = (f"was killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exited with status {os.waitstatus_to_exitcode(status)}")
        detail = f": {stderr}" if stderr else ""
        raise LibiptcError(f"the libiptc worker process {how} without an answer{detail}")
    if stderr:
        print(stderr, file=sys.stderr)  # libxtables warnings, passed on
    reply: dict[str, Any] = json.loads(raw)
    if "error" in reply:
        raise LibiptcError(reply["error"], table=reply.get("table"), chain=reply.get("chain"),
                           rule=reply.get("rule"))
    return reply["result"]


# --------------------------------------------------------------------------------------
# Public API and its in-process workers
# --------------------------------------------------------------------------------------


class _TableWork:
    """What apply_rules did to one table, so a later commit failure can be undone."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.flushed: list[str] = []
        self.added: list[tuple[str, Any]] = []


def apply_rules(family: int, chains: Sequence[tuple[str, str]], rules: Sequence[RuleLike], *,
                isolate: bool = True) -> None:
    """Create ``chains`` and add ``rules`` in order, all or nothing.

    ``chains`` are (table, chain) pairs.  A missing chain is created; an existing user
    chain is flushed, as ``iptables-restore --noflush`` does with a declared chain;
    built-in chains are left alone.  Rules are then appended (``position is None``)
    or inserted at the 1-based ``position``.

    Every table is committed only after every rule converted and went into its
    in-memory handle.  On any failure the handles are discarded and
    :class:`LibiptcError` names the table, chain, rule and the library's message.
    If the kernel rejects a table at commit time, tables committed before it are
    reverted (rules deleted, created chains removed) before the error is raised.

    ``isolate``: see :func:`_dispatch`.
    """
    _dispatch(family, isolate, _apply_here, family, list(chains), list(rules))


def _apply_here(family: int, chains: Sequence[tuple[str, str]], rules: Sequence[RuleLike]) -> None:
    iptc = _load_iptc()
    fam = _FAMILY_NAMES[family]
    with _xtables_lock():
        tables = _Tables(iptc, family)
        work: dict[str, _TableWork] = {}
        try:
            for table_name, chain_name in chains:
                table = tables.get(table_name)
                done = work.setdefault(table_name, _TableWork())
                try:
                    if table.builtin_chain(chain_name):
                        continue
                    if table.is_chain(chain_name):
                        table.flush_entries(chain_name)
                        done.flushed.append(chain_name)
                    else:
                        table.create_chain(chain_name)
                        done.created.append(chain_name)
                except Exception as exc:
                    raise LibiptcError(
                        f"{fam} -t {table_name}: cannot create chain {chain_name}: {_lib_message(exc)}; "
                        "nothing was written",
                        table=table_name, chain=chain_name,
                    ) from exc
            for planned in rules:
                table = tables.get(planned.table)
                done = work.setdefault(planned.table, _TableWork())
                text = rule_text(planned)
                try:
                    if not table.is_chain(planned.chain):
                        raise _ConvertError(f"chain {planned.chain} does not exist")
                    if planned.position is not None and planned.position < 1:
                        raise _ConvertError(f"position must be 1 or more, not {planned.position}")
                    rule = _convert(iptc, family, table, planned.params)
                    chain = iptc.Chain(table, planned.chain)
                    if planned.position is None:
                        chain.append_rule(rule)
                    else:
                        chain.insert_rule(rule, planned.position - 1)  # libiptc counts from 0
                    done.added.append((planned.chain, rule))
                except Exception as exc:
                    raise LibiptcError(
                        f"{fam} -t {planned.table}: rule `{text}` failed: {_lib_message(exc)}; nothing was written",
                        table=planned.table, chain=planned.chain, rule=text,
                    ) from exc
        except BaseException:
            tables.discard()
            raise
        _commit_all(tables, work)


def _commit_all(tables: _Tables, work: dict[str, _TableWork]) -> None:
    fam = _FAMILY_NAMES[tables.family]
    committed: list[str] = []
    for name, handle in tables.handles.items():
        try:
            handle.commit()
        except Exception as exc:
            notes = [_undo(tables, done_name, work.get(done_name, _TableWork())) for done_name in reversed(committed)]
            tables.discard()
            detail = f"; reverted already committed tables: {'; '.join(notes)}" if notes else "; nothing was written"
            count = len(work.get(name, _TableWork()).added)
            raise LibiptcError(
                f"{fam} -t {name}: commit rejected by the kernel ({count} rules added to the table; the kernel "
                f"log may name the refused extension): {_lib_message(exc)}{detail}",
                table=name,
            ) from exc
        committed.append(name)
    tables.discard()  # fresh handles; a committed handle must not be committed again


def _undo(tables: _Tables, name: str, done: _TableWork) -> str:
    """Best-effort revert of a table committed by apply_rules; returns a note."""
    iptc = tables.iptc
    handle = tables.handles[name]
    problems: list[str] = []
    try:
        handle.refresh()
        for chain_name, rule in reversed(done.added):
            try:
                iptc.Chain(handle, chain_name).delete_rule(rule)
            except Exception as exc:
                problems.append(f"rule in {chain_name}: {_lib_message(exc)}")
        for chain_name in done.created:
            try:
                handle.flush_entries(chain_name)
            except Exception as exc:
                problems.append(f"flush {chain_name}: {_lib_message(exc)}")
        for chain_name in done.created:
            try:
                handle.delete_chain(chain_name)
            except Exception as exc:
                problems.append(f"delete {chain_name}: {_lib_message(exc)}")
        handle.commit()
    except Exception as exc:
        problems.append(str(exc))
    if done.flushed:
        problems.append(f"flushed chains not restored: {', '.join(done.flushed)}")
    return f"{name} ({'; '.join(problems)})" if problems else name


def delete_rules(family: int, rules: Sequence[RuleLike], chains: Sequence[tuple[str, str]], *,
                 isolate: bool = True) -> None:
    """Best-effort, idempotent cleanup of what :func:`apply_rules` wrote.

    Each rule is deleted (every copy of it) where present; then the given user chains
    are flushed and deleted where present.  Absent rules and chains are not errors.
    Everything that can be removed is committed; anything else that failed (a chain
    still referenced from a rule not listed, say) is reported afterwards in one
    :class:`LibiptcError`.  ``isolate``: see :func:`_dispatch`.
    """
    _dispatch(family, isolate, _delete_here, family, list(rules), list(chains))


def _delete_here(family: int, rules: Sequence[RuleLike], chains: Sequence[tuple[str, str]]) -> None:
    iptc = _load_iptc()
    fam = _FAMILY_NAMES[family]
    problems: list[str] = []
    with _xtables_lock():
        tables = _Tables(iptc, family)
        unavailable: set[str] = set()

        def table_or_none(name: str) -> Any:
            if name in unavailable:
                return None
            try:
                return tables.get(name)
            except LibiptcError as exc:  # a table that cannot be opened holds nothing of ours
                _log().debug("cleanup skips %s: %s", name, exc)
                unavailable.add(name)
                return None

        try:
            for planned in rules:
                table = table_or_none(planned.table)
                if table is None or not table.is_chain(planned.chain):
                    continue
                try:
                    rule = _convert(iptc, family, table, planned.params)
                except _ConvertError as exc:
                    if not exc.missing_chain:
                        problems.append(f"-t {planned.table} `{rule_text(planned)}`: {_lib_message(exc)}")
                    continue  # a jump to a chain that is gone: the rule cannot exist
                except Exception as exc:
                    problems.append(f"-t {planned.table} `{rule_text(planned)}`: {_lib_message(exc)}")
                    continue
                chain = iptc.Chain(table, planned.chain)
                for _ in range(_MAX_DUPLICATE_DELETES):
                    try:
                        chain.delete_rule(rule)
                    except iptc.IPTCError:
                        break  # not (or no longer) present
                    except Exception as exc:
                        problems.append(f"-t {planned.table} `{rule_text(planned)}`: {_lib_message(exc)}")
                        break
            user_chains = []
            for table_name, chain_name in chains:
                table = table_or_none(table_name)
                if table is None or not table.is_chain(chain_name) or table.builtin_chain(chain_name):
                    continue
                try:
                    table.flush_entries(chain_name)
                    user_chains.append((table, table_name, chain_name))
                except iptc.IPTCError as exc:
                    problems.append(f"-t {table_name} -F {chain_name}: {_lib_message(exc)}")
            for table, table_name, chain_name in user_chains:
                try:
                    table.delete_chain(chain_name)
                except iptc.IPTCError as exc:
                    problems.append(f"-t {table_name} -X {chain_name}: {_lib_message(exc)}")
            for name, handle in tables.handles.items():
                try:
                    handle.commit()
                except Exception as exc:
                    problems.append(f"-t {name}: commit failed: {_lib_message(exc)}")
        finally:
            tables.discard()
    if problems:
        raise LibiptcError(f"{fam}: cleanup incomplete: " + " | ".join(problems))


def save(family: int, tables: Sequence[str], *, isolate: bool = True) -> dict[str, dict[str, list[str]]]:
    """Read tables back: {table: {chain: [rule as iptables-save prints it after ``-A CHAIN``]}}.

    Chains are in libiptc order (built-in chains, then user chains by name), as
    ``iptables-save`` lists them.  ``isolate``: see :func:`_dispatch`.
    """
    result: dict[str, dict[str, list[str]]] = _dispatch(family, isolate, _save_here, family, list(tables))
    return result


def _save_here(family: int, tables: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    iptc = _load_iptc()
    result: dict[str, dict[str, list[str]]] = {}
    handles = _Tables(iptc, family)
    try:
        for table_name in tables:
            table = handles.get(table_name)
            chains: dict[str, list[str]] = {}
            try:
                for chain in table.chains:
                    rules = []
                    entry = table.first_rule(chain.name)
                    while entry:
                        rules.append(_render(family, handles.rule_cls(entry, chain)))
                        entry = table.next_rule(entry)
                    chains[chain.name] = rules
            except Exception as exc:
                raise LibiptcError(f"{_FAMILY_NAMES[family]}: cannot read table {table_name}: {_lib_message(exc)}",
                                   table=table_name) from exc
            result[table_name] = chains
    finally:
        handles.discard()
    return result


_PROTOCOL_NAMES: dict[int, str] = {}


def _protocol_name(number: int) -> str | None:
    """The protocol's name as iptables-save prints it: /etc/protocols first (getprotobynumber)."""
    if not _PROTOCOL_NAMES:
        try:
            with open("/etc/protocols", encoding="utf-8", errors="replace") as protocols:
                for line in protocols:
                    fields = line.split("#", 1)[0].split()
                    if len(fields) >= 2 and fields[1].isdigit():
                        _PROTOCOL_NAMES.setdefault(int(fields[1]), fields[0])
        except OSError:
            _PROTOCOL_NAMES[-1] = ""  # remember that there is no file
    return _PROTOCOL_NAMES.get(number)


def _address(value: str) -> str:
    """``"!10.0.0.0/255.0.0.0"`` (python-iptables' form) -> ``"10.0.0.0/8"`` (iptables-save's)."""
    import ipaddress

    addr, _, mask = value.lstrip("!").partition("/")
    try:
        net = ipaddress.ip_network(f"{addr}/{mask}", strict=False)
        return f"{net.network_address}/{net.prefixlen}"
    except ValueError:
        return f"{addr}/{mask}"  # a non-contiguous mask: iptables prints it dotted too


def _saved_options(ext: Any, ip: Any) -> str:
    """The extension's own ``save`` output (what iptables-save prints after ``-m x``/``-j X``)."""
    buf = ext._get_saved_buf(ip)  # python-iptables runs the C save() with stdout on a pipe
    if not buf:
        return ""
    text = buf.decode() if isinstance(buf, bytes) else str(buf)
    return text.strip()


def _render(family: int, rule: Any) -> str:
    """One rule in iptables-save syntax (without the leading ``-A CHAIN``)."""
    parts: list[str] = []
    ip = rule.get_ip()
    zero = {"0.0.0.0/0.0.0.0", "0.0.0.0/0", "::/0"}
    for flag, value in (("-s", rule.src), ("-d", rule.dst)):
        if value.lstrip("!") in zero and not value.startswith("!"):
            continue
        parts += (["!"] if value.startswith("!") else []) + [flag, _address(value)]
    for flag, value in (("-i", rule.in_interface), ("-o", rule.out_interface)):
        if value:
            parts += (["!"] if value.startswith("!") else []) + [flag, value.lstrip("!")]
    proto = rule.protocol
    if ip.proto or proto.startswith("!"):  # iptables-save omits protocol 0 ("all")
        name = _protocol_name(int(ip.proto)) or proto.lstrip("!")
        parts += (["!"] if proto.startswith("!") else []) + ["-p", "all" if name == "ip" else name]
    if family == 4 and ip.flags & 0x01:  # IPT_F_FRAG
        parts += (["!"] if ip.invflags & 0x20 else []) + ["-f"]
    for match in rule.matches:
        parts += ["-m", match.name]
        options = _saved_options(match, ip)
        if options:
            parts.append(options)
    target = rule.target
    if target is not None and target.name:
        parts += ["-g" if target.goto else "-j", target.name]
        options = _saved_options(target, ip)
        if options:
            parts.append(options)
    return " ".join(parts)
