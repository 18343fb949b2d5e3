"""istio-iptables: a Python drop-in replacement for Istio's istio-init container."""

__version__ = "0.1.0"
