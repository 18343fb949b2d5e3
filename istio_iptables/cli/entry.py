"""Console-script entry points (and `python -m istio_iptables`).

The cyclic garbage collector is switched off before anything else is imported: the
command is a short-lived process that ends with os._exit, its objects are freed by
reference counting, and the collector's passes during the imports of click and our
modules cost about 9 M instructions (5% of a standard apply; see bench/instructions.py).
Library users (tests, the lab, the CNI plugin) import istio_iptables.cli.main and keep
their collector.
"""

import gc

gc.disable()


def entry() -> None:
    from istio_iptables.cli.main import entry as run

    run()


def clean_entry() -> None:
    from istio_iptables.cli.main import clean_entry as run

    run()
