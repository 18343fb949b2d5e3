"""Everything that touches the kernel or spawns a process, one concern per module.

spawn (posix_spawn + memfd runner), iptables_restore (iptables-*-save/-restore, and the
cheap per-flavour dumps the backend choice reads), nft (nft -f; nft_refusal reads its
errors, imported only on failure), libiptc
(python-iptables, in-process), netlink (stdlib rtnetlink: addresses, ::6, nf_tables
tables and chains, requests and dumps), routes (TPROXY ip rule/route, over netlink),
netns (setns), nslock (one writer per network namespace), live_rules (what explain
--live reads).  Modules here know nothing of flags or plans beyond the rule shapes
they are handed.  The heavy library of the apply path (iptc) is imported only inside
the functions that need it, never at module import: the init path must stay cheap.
"""
