"""Rewrite the package's console scripts in an image without pip's launcher line.

pip's console scripts run `re.sub(...)` on argv[0] before calling the entry point:
that compiles a regular expression at every start, which with the script's own compile
is 3.7 M instructions (~1 ms of CPU, ~10 ms of pod start under cpu: 100m).  The
launchers written here only import the entry point and call it.  bench/runner.py
measures the tool through launchers of this same form.

Usage (in images/Dockerfile): PYTHON launchers.py BIN_DIR
"""

import sys
from importlib.metadata import entry_points
from pathlib import Path


def main(folder: str) -> int:
    written = 0
    for entry in entry_points(group="console_scripts"):
        if entry.dist is None or entry.dist.name != "istio-iptables":
            continue
        module, function = entry.value.split(":")
        path = Path(folder) / entry.name
        path.write_text(f"#!{sys.executable}\nfrom {module} import {function}\nraise SystemExit({function}())\n")
        path.chmod(0o755)
        written += 1
    return 0 if written else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
