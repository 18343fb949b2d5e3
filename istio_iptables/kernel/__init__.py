"""Everything that touches the kernel or spawns a process, one concern per module.

spawn (posix_spawn + memfd runner), iptables_restore (iptables-*-save/-restore, and the
cheap per-flavour dumps the backend choice reads), nft (nft -f), libiptc
(python-iptables, in-process), netlink (stdlib rtnetlink: addresses, ::6, nf_tables
tables and chains), routes (TPROXY ip rule/route), netns (setns), nslock (one writer
per network namespace).  Modules here know nothing of flags or plans beyond the rule
shapes they are handed.  Heavy libraries (iptc, pyroute2) are imported only inside the
functions that need them, never at module import: the init path must stay cheap.
"""
