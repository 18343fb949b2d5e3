"""Entry points.  flags: Istio's flags and environment → validated Settings (the one
parser every entry point uses); main: the `istio-iptables` / `istio-clean-iptables`
commands."""
