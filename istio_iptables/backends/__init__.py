"""Backends that write a plan into the kernel."""
