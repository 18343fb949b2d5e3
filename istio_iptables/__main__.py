"""`python -m istio_iptables` runs the istio-iptables command."""

from istio_iptables.cli import entry

if __name__ == "__main__":
    entry()
