"""The veth traffic lab: a scratch pod and peer namespace joined by veth, with real
TCP/UDP listeners and clients to show where connections land.  Used by `make demo`,
the integration tests and the benchmark; never imported on the init path."""
