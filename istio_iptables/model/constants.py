"""Values Istio fixes, written once: defaults, names, addresses, marks and ports.

Each value here is used by more than one module (the two planners, the state
comparison, the apply layer, the flag table), and each must stay equal to what
current Istio writes, because the golden files and pods already running with Istio's
rules pin them down.  Changing one is changing behaviour, not style.

Plain str/int/tuple constants only: this module is on the init path and imports nothing.
"""

# Istio's defaults for its flags (tools/istio-iptables/pkg/cmd and config).
PROXY_PORT = 15001  # -p: outbound capture (Envoy's listener)
INBOUND_CAPTURE_PORT = 15006  # -z
INBOUND_TUNNEL_PORT = 15008  # -e: HBONE, never captured
PROXY_UID = "1337"  # -u/-g when $ENVOY_USER (istio-proxy) does not resolve
TPROXY_MARK = 1337  # -t
TPROXY_ROUTE_TABLE = 133  # -r
PROBE_PORT = 15002  # --iptables-probe-port
IPV4_LOOPBACK_CIDR = "127.0.0.1/32"  # ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR

# Written into rules, not configurable in Istio.
DNS_AGENT_PORT = "15053"  # the istio-agent DNS proxy that --redirect-dns sends port 53 to
OUTBOUND_MARK = "1338"  # TPROXY: proxy -> app traffic over lo, kept from being diverted again
IPV6_LOOPBACK = "::1/128"
# The source the proxy uses for inbound passthrough (and the validation probe's target):
# traffic from it on lo is never captured again.
IPV4_INBOUND_PASSTHROUGH_ADDRESS = "127.0.0.6"
IPV4_INBOUND_PASSTHROUGH = f"{IPV4_INBOUND_PASSTHROUGH_ADDRESS}/32"
# IPv6 has no 127/8 beyond ::1, so Istio adds ::6 to lo itself when the pod has IPv6.
IPV6_INBOUND_PASSTHROUGH_ADDRESS = "::6"
IPV6_INBOUND_PASSTHROUGH = f"{IPV6_INBOUND_PASSTHROUGH_ADDRESS}/128"

# iptables mode: every chain we create starts with the prefix; anything else is not ours.
ISTIO_PREFIX = "ISTIO_"
ISTIO_OUTPUT = "ISTIO_OUTPUT"
ISTIO_OUTPUT_DNS = "ISTIO_OUTPUT_DNS"
ISTIO_INBOUND = "ISTIO_INBOUND"
ISTIO_DIVERT = "ISTIO_DIVERT"
ISTIO_TPROXY = "ISTIO_TPROXY"
ISTIO_REDIRECT = "ISTIO_REDIRECT"
ISTIO_IN_REDIRECT = "ISTIO_IN_REDIRECT"
ISTIO_DROP = "ISTIO_DROP"
# Every chain any of our plans can create, per table: what a cleanup removes and a re-run
# compares (tests/test_golden.py holds every chain Istio's golden outputs create to it).
# Nothing of ours lives in filter or security; ISTIO_OUTPUT in filter is someone else's.
OUR_CHAINS: dict[str, frozenset[str]] = {
    "nat": frozenset({ISTIO_INBOUND, ISTIO_REDIRECT, ISTIO_IN_REDIRECT, ISTIO_OUTPUT, ISTIO_OUTPUT_DNS}),
    "mangle": frozenset({ISTIO_INBOUND, ISTIO_DIVERT, ISTIO_TPROXY, ISTIO_DROP}),
    "raw": frozenset({ISTIO_INBOUND, ISTIO_OUTPUT_DNS}),
}
# Sorted, as Istio sorts the table names of a restore file.
TABLE_ORDER = ("filter", "mangle", "nat", "raw")
# A 32-bit mark or mask with every bit set: the mask iptables assumes when none is given.
FULL_MARK_MASK = 0xFFFFFFFF
