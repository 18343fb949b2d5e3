"""CNI mode: istio-iptables as a chained CNI plugin (`istio-iptables-cni`), so that
application pods need no NET_ADMIN.  protocol.py is the pure CNI protocol, plugin.py
the commands over the one parser and applier, install.py puts the plugin on a node."""
