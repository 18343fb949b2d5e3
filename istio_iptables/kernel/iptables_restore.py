"""The iptables-restore backend: one `iptables-restore --noflush` per family, with
Istio's choice between iptables-legacy and iptables-nft.

The choice of flavour is made by the iptables mode (apply/iptables.py) from the dumps
read here; `dump` reads the cheap signals first: whether legacy tables exist in this
namespace is in /proc/net/ip_tables_names, and a netlink probe says whether nf_tables
holds any table, so the common fresh-pod case costs no extra process.
"""

import os
import re

from istio_iptables import logs as log
from istio_iptables.kernel import spawn
from istio_iptables.kernel.netlink import nft_has_tables
from istio_iptables.model.record import Record

# The calling thread's namespace: /proc/net follows the thread-group leader, and
# verify reads a scratch namespace from a thread that alone has entered it.  Kernels
# before 3.17 have no /proc/thread-self; there the process-wide /proc/net is read.
_PROC_TABLE_NAMES = {4: "/proc/thread-self/net/ip_tables_names", 6: "/proc/thread-self/net/ip6_tables_names"}
_OLD_KERNEL_TABLE_NAMES = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}
# A pattern, not a compiled regex: only a failed restore reads it (compiling at import
# cost every apply ~0.3 M instructions; re caches it on first use).
_LINE_FAILED = r"line (\d+) failed"
RESTORE_TIMEOUT = 60


class IptablesError(RuntimeError):
    """An iptables binary failed; the message names the binary, the table and the
    kernel's words.  `committed`: for a failed restore, the tables that were committed
    before the failure (None: unknown, any of them may have been)."""

    def __init__(self, message: str, committed: tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.committed = committed


class Binary(Record):
    """One family's iptables flavour: e.g. iptables-nft / iptables-nft-save / -restore."""

    family: int
    flavour: str  # "legacy", "nft" or "" (plain `iptables`, whatever it points to)

    @property
    def base(self) -> str:
        name = "iptables" if self.family == 4 else "ip6tables"
        return f"{name}-{self.flavour}" if self.flavour else name

    @property
    def save(self) -> str:
        return f"{self.base}-save"

    @property
    def restore(self) -> str:
        return f"{self.base}-restore"

    @property
    def is_legacy(self) -> bool:
        return self.flavour == "legacy"

    def describe(self) -> str:
        return self.base


def _run(argv: list[str], stdin: str | None = None) -> spawn.Finished:
    try:
        return spawn.run(argv, stdin, timeout=RESTORE_TIMEOUT)
    except FileNotFoundError:
        raise IptablesError(f"{argv[0]} not found: install iptables (both legacy and nft binaries)") from None
    except spawn.SpawnTimeout:
        raise IptablesError(f"{argv[0]} did not finish within {RESTORE_TIMEOUT}s (xtables lock held?)") from None


def which(program: str) -> str | None:
    """The program's path on $PATH, like shutil.which (whose import pulls in bz2, lzma
    and zlib: ~2 ms of CPU at every pod start)."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(folder or ".", program)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def legacy_has_tables(family: int) -> bool:
    """Whether iptables-legacy holds tables in this network namespace (Istio's
    'legacy has existing rules' test, read from /proc instead of running -save), as
    the calling thread sees it."""
    try:
        return _holds_names(_PROC_TABLE_NAMES[family])
    except OSError:
        if os.access("/proc/thread-self", os.F_OK):
            return False  # the module is not loaded here: no legacy table
    try:
        return _holds_names(_OLD_KERNEL_TABLE_NAMES[family])
    except OSError:
        return False


def _holds_names(path: str) -> bool:
    # Bytes: a text-mode open looks up the ascii codec (imports encodings.ascii) and
    # builds a TextIOWrapper, ~0.9 M instructions for a file of ASCII table names.
    with open(path, "rb") as handle:
        return bool(handle.read().strip())


def dump(binary: Binary) -> str | None:
    """The flavour's current `-save` text, read as cheaply as the kernel allows: empty
    without a process when /proc (legacy) or a netlink probe (nft) shows no table;
    None when this flavour is not installed or does not work here (nft-save fails
    where the kernel lacks nf_tables)."""
    if which(binary.save) is None:
        return None
    if binary.is_legacy and not legacy_has_tables(binary.family):
        return ""
    if binary.flavour == "nft" and nft_has_tables(binary.family) is False:
        return ""
    done = _run([binary.save])
    if done.returncode != 0:
        if binary.flavour:
            log.info("%s does not work here (%s)", binary.save, " ".join(done.stderr.split()))
            return None
        raise IptablesError(f"{binary.save} failed: {' '.join(done.stderr.split())}{_hint(done.stderr)}")
    return done.stdout


def require(binary: Binary) -> None:
    if which(binary.restore) is None:
        raise IptablesError(f"{binary.restore} not found: install iptables (legacy and nft binaries)")


_PRIVILEGE_HINT = "; istio-init needs CAP_NET_ADMIN and CAP_NET_RAW in the pod's network namespace"


def _hint(stderr: str) -> str:
    if "Permission denied" in stderr or "not permitted" in stderr:
        return _PRIVILEGE_HINT
    if "unable to initialize table" in stderr:
        return "; the kernel lacks this table (module not loaded) or CAP_NET_ADMIN/CAP_NET_RAW is missing"
    return ""


def save(binary: Binary) -> str:
    """The family's full ruleset as `-save` text."""
    done = _run([binary.save])
    if done.returncode != 0:
        message = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise IptablesError(f"{binary.save} failed: {message}{_hint(done.stderr)}")
    return done.stdout


def restore(binary: Binary, text: str, *, noflush: bool = True, what: str = "rules") -> None:
    """Feed `text` to iptables-restore; each table block commits atomically."""
    argv = [binary.restore]
    if noflush:
        argv.append("--noflush")
    if binary.is_legacy:
        argv.append("--wait")
    done = _run(argv, text)
    if done.returncode != 0:
        raise IptablesError(_explain(binary.restore, text, done.stderr, what), _committed(binary, text, done.stderr))


def _committed(binary: Binary, text: str, stderr: str) -> tuple[str, ...] | None:
    """Which tables a failed restore committed.  iptables-nft-restore sends the whole
    input as one nf_tables transaction: none.  iptables-legacy-restore commits each
    table at its COMMIT line: those before the line it names (unknown without one)."""
    if binary.flavour == "nft":
        return ()
    match = re.search(_LINE_FAILED, stderr)
    if match is None:
        return None
    failed, table, done = int(match.group(1)), "", []
    for number, line in enumerate(text.splitlines(), 1):
        if number >= failed:
            break
        if line.startswith("*"):
            table = line[1:].strip()
        elif line == "COMMIT":
            done.append(table)
    return tuple(done)


def _explain(program: str, text: str, stderr: str, what: str) -> str:
    """Turn 'line N failed' into the table and rule the kernel refused."""
    lines = text.splitlines()
    detail = " ".join(stderr.split()) or "no message"
    match = re.search(_LINE_FAILED, stderr)
    if match and 0 < int(match.group(1)) <= len(lines):
        number = int(match.group(1))
        table = next((ln.lstrip("*").strip() for ln in reversed(lines[:number]) if ln.startswith("*")), "?")
        return f"{program} refused {what} in table {table}, line {number}: {lines[number - 1]!r}: {detail}"
    return f"{program} failed applying {what}: {detail}{_hint(stderr)}"
