"""The iptables-restore backend: one `iptables-restore --noflush` per family, with
Istio's choice between iptables-legacy and iptables-nft.

Detection follows Istio's order (forced binary; else legacy when it already holds
rules; else nft when it works; else plain `iptables`) but reads the cheap signals first:
whether legacy tables exist in this namespace is in /proc/net/ip_tables_names, so the
common fresh-pod case costs no extra process.
"""

import os
import re
from typing import NamedTuple

from istio_iptables import logs as log
from istio_iptables.kernel import spawn
from istio_iptables.kernel.netlink import nft_has_tables

_PROC_TABLE_NAMES = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}
_LINE_FAILED = re.compile(r"line (\d+) failed")
RESTORE_TIMEOUT = 60


class IptablesError(RuntimeError):
    """An iptables binary failed; the message names the binary, the table and the
    kernel's words."""


class Binary(NamedTuple):
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
    'legacy has existing rules' test, read from /proc instead of running -save)."""
    try:
        with open(_PROC_TABLE_NAMES[family], encoding="ascii") as handle:
            return bool(handle.read().strip())
    except OSError:
        return False


def detect(family: int, forced: str) -> tuple[Binary, str]:
    """Pick the binary for one family, as Istio does, and return it with its current
    `-save` text: the one dump serves detection, the re-run check and the rollback."""
    if forced:
        binary = Binary(family, forced)
        _require(binary)
        if binary.is_legacy and not legacy_has_tables(family):
            return binary, ""  # no legacy table in this namespace: the dump would be empty
        return binary, save(binary)
    legacy = Binary(family, "legacy")
    if legacy_has_tables(family) and which(legacy.save):
        return legacy, save(legacy)
    nft = Binary(family, "nft")
    if which(nft.save):
        if nft_has_tables(family) is False:
            return nft, ""  # nothing in nf_tables yet: the dump would be empty
        done = _run([nft.save])
        if done.returncode == 0:
            return nft, done.stdout
        log.info("%s does not work here (%s); falling back", nft.save, done.stderr.strip())
    plain = Binary(family, "")
    _require(plain)
    return plain, save(plain)


def _require(binary: Binary) -> None:
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
        raise IptablesError(_explain(binary.restore, text, done.stderr, what))


def check(binary: Binary, text: str) -> bool:
    """Whether every `-C` line in `text` matches an existing rule.  Legacy checks under
    --test (nothing is committed); nft skips checks under --test, so it runs them
    for real: a transaction holding only checks changes nothing."""
    if not text:
        return True
    argv = [binary.restore, "--noflush"] + (["--test", "--wait"] if binary.is_legacy else [])
    return _run(argv, text).returncode == 0


def _explain(program: str, text: str, stderr: str, what: str) -> str:
    """Turn 'line N failed' into the table and rule the kernel refused."""
    lines = text.splitlines()
    detail = " ".join(stderr.split()) or "no message"
    match = _LINE_FAILED.search(stderr)
    if match and 0 < int(match.group(1)) <= len(lines):
        number = int(match.group(1))
        table = next((ln.lstrip("*").strip() for ln in reversed(lines[:number]) if ln.startswith("*")), "?")
        return f"{program} refused {what} in table {table}, line {number}: {lines[number - 1]!r}: {detail}"
    return f"{program} failed applying {what}: {detail}{_hint(stderr)}"
