"""Write, remove and read Istio's native nftables ruleset with the `nft` binary.

`nft -f -` runs its whole input as one netlink batch: the kernel commits every line
or none of them, so a refused rule leaves the namespace exactly as it was (no
snapshot or rollback needed, unlike iptables-restore per table).  The `flush table`
lines of `render_nft` make a re-run replace the rules of Istio's tables, and only
those; other nftables tables (kube-proxy's, a CNI's) are never named, so never touched.
"""

from istio_iptables.kernel import netlink, spawn
from istio_iptables.model.nft_plan import FAMILY, TABLES, cleanup_text

NFT_BINARY = "nft"
DEFAULT_TIMEOUT = 60.0


class NftError(RuntimeError):
    """nft failed (nothing was changed).  `line_number`/`line` name the line of our input
    nft refused, when it said which; `reason` is nft's own words."""

    def __init__(self, message: str, *, reason: str = "", line_number: int | None = None,
                 line: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.line_number = line_number
        self.line = line
        self.stderr = stderr


def apply_nft(text: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Feed `text` (from `render_nft`) to `nft -f -` as one atomic transaction."""
    if not text.strip():
        return
    done = _nft(["-f", "-"], stdin=text, timeout=timeout)
    if done.returncode != 0:
        raise _refused(text, done.stderr, "applying the nftables ruleset")


def cleanup_nft(*, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Delete istio-proxy-nat, -mangle and -raw if present, in one transaction.
    Idempotent: each `delete table` follows an `add table`, so a missing table is no error."""
    text = cleanup_text(TABLES)
    done = _nft(["-f", "-"], stdin=text, timeout=timeout)
    if done.returncode != 0:
        raise _refused(text, done.stderr, "deleting the istio-proxy-* nftables tables")


def nft_ruleset(*, timeout: float = DEFAULT_TIMEOUT) -> str:
    """`nft list ruleset`: every table of the namespace, for dry runs, logs and tests."""
    done = _nft(["list", "ruleset"], timeout=timeout)
    if done.returncode != 0:
        from istio_iptables.kernel.nft_refusal import first_line

        raise NftError(f"nft list ruleset failed: {first_line(done.stderr)}", stderr=done.stderr)
    return done.stdout


def istio_tables_text(*, timeout: float = DEFAULT_TIMEOUT) -> str:
    """`nft list table` of each istio-proxy-* table that exists now: valid `nft -f`
    input that puts them back (empty when none exists)."""
    present = netlink.nft_tables(netlink.NFPROTO_INET)  # a netlink dump instead of 3 processes
    parts = []
    for table in TABLES if present is None else [t for t in TABLES if t in present]:
        done = _nft(["list", "table", FAMILY, table], timeout=timeout)
        if done.returncode == 0:
            parts.append(done.stdout)
    return "".join(parts)


def as_listed(text: str, *, timeout: float = DEFAULT_TIMEOUT) -> str:
    """`text` (our tables' `nft -f` input) as the kernel lists it: applied in a new,
    empty network namespace and read back like `istio_tables_text`.  nft lists rules
    in its own spelling (`ip daddr 127.0.0.1` for the `127.0.0.1/32` it was given, a
    counter with its packets and bytes), so a live namespace is compared with this,
    not with our input."""
    from istio_iptables.kernel.netns import in_new_netns

    def apply_and_list() -> str:
        apply_nft(text, timeout=timeout)
        return istio_tables_text(timeout=timeout)

    return in_new_netns(apply_and_list)


def _nft(args: list[str], *, stdin: str | None = None, timeout: float) -> spawn.Finished:
    """Run nft, turning a missing binary or a hang into an NftError."""
    argv = [NFT_BINARY, *args]
    try:
        return spawn.run(argv, stdin, timeout)
    except FileNotFoundError:
        raise NftError(f"{NFT_BINARY!r} not found on PATH: native nftables mode needs the nftables "
                       "package (the nft binary) in the image") from None
    except spawn.SpawnTimeout as err:
        raise NftError(f"{' '.join(argv)} did not finish: {err}") from None


def _refused(text: str, stderr: str, doing: str) -> NftError:
    """An NftError quoting the line of `text` nft refused (nft numbers lines from 1)."""
    from istio_iptables.kernel.nft_refusal import parse_refusal

    refusal = parse_refusal(stderr)
    lines = text.splitlines()
    number = refusal.line_number
    if number is None or not 1 <= number <= len(lines):
        return NftError(f"nft failed {doing}: {refusal.reason}; nothing was changed",
                        reason=refusal.reason, stderr=stderr)
    line = lines[number - 1]
    return NftError(f"nft refused line {number} ({line!r}): {refusal.reason}; nothing was changed",
                    reason=refusal.reason, line_number=number, line=line, stderr=stderr)
