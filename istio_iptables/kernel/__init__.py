"""Everything that touches the kernel or spawns a process, one concern per module.

spawn (posix_spawn + memfd runner), iptables_restore (iptables-*-save/-restore, Istio's
backend detection), nft (nft -f), libiptc (python-iptables, in-process), netlink
(stdlib rtnetlink: addresses, ::6, the nf_tables probe), routes (TPROXY ip rule/route, over
netlink), netns (setns).  Modules here know nothing of flags or plans beyond the rule shapes
they are handed.  The one heavy library here (iptc) is imported only inside the
functions that need it, never at module import: the init path must stay cheap.
"""
