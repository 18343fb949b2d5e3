"""The apply layer: one real run, per mode.

run (entry: namespace, the namespace lock, host facts, plan, owners, mode, validation)
→ iptables (survey, decide, write, roll back) or nftables (Istio's native nft mode),
both finishing with system (the ::6 address and TPROXY routes); undo holds the inverse
operations of one run, taken back when a later step fails.  This is the only layer that decides what
to write; it talks to the kernel only through istio_iptables.kernel.

ApplyError, the one error the modes share, lives here rather than in a module of its
own: the package is imported on every apply anyway, and a module costs ~0.35 M
instructions to import.
"""


class ApplyError(RuntimeError):
    """The apply failed; the namespace was put back as it was (or the message says not)."""
