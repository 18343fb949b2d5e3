"""Entry points.  flags: Istio's flags and environment → validated Settings (the one
parser every entry point uses); main: the `istio-iptables` / `istio-clean-iptables`
commands.

The console scripts call `entry` / `clean_entry` below, which switch the cyclic
garbage collector off before anything else is imported: the command is a short-lived
process that ends with os._exit, its objects are freed by reference counting, and the
collector's passes during the imports of click and our modules cost about 9 M
instructions (5% of a standard apply; see bench/instructions.py).  They live in this
package's __init__, which a start imports anyway, rather than in a module of their
own (~0.35 M instructions each).  Library users (tests, the lab, the CNI plugin) import
istio_iptables.cli.main and keep their collector.

`launcher` is the text of the console scripts that call them, as the image installs
them (images/launchers.py) and the benchmark measures them (bench/runner.py).
"""

import gc


def entry() -> None:
    """`istio-iptables`."""
    gc.disable()
    from istio_iptables.cli.main import entry as run

    run()


def clean_entry() -> None:
    """`istio-clean-iptables`."""
    gc.disable()
    from istio_iptables.cli.main import clean_entry as run

    run()


def launcher(python: str, target: str) -> str:
    """A console script running `target` ("module:function") with `python`.  pip's
    scripts also run `re.sub` over argv[0] first: a regular expression compiled at
    every start, 3.7 M instructions with the script's own compile (~1 ms of CPU,
    ~10 ms of pod start under cpu: 100m).  This one only imports and calls."""
    module, function = target.split(":")
    return f"#!{python}\nfrom {module} import {function}\nraise SystemExit({function}())\n"
