"""The pure model: flags in, rules out, no I/O.

config (parse + validate into frozen records, see record.py) → iptables_plan / nft_plan
(ordered rules per family and table) → iptables_render (restore text, commands, JSON);
iptables_dump parses `-save` and iptables_state compares it in order with a plan and
writes cleanup and rollback text.  constants holds the values Istio fixes (defaults, chain names, marks,
addresses) that several modules write.  hostfacts holds the two facts a plan depends
on (IPv6 on/off, nameservers); its `gather` is the one function here that asks the
kernel, through kernel.netlink, imported inside the function.  Nothing in this package
may import from apply/, cli/ or kernel/ otherwise (tests/test_layout.py checks it).
"""
