"""Rewrite the package's console scripts in an image without pip's launcher line.

pip's console scripts run `re.sub(...)` on argv[0] before calling the entry point:
that compiles a regular expression at every start (istio_iptables.cli.launcher says
what it costs).  The launchers written here, by that function, only import the entry
point and call it; bench/runner.py measures the tool through the same function's.

Usage (in images/Dockerfile): PYTHON launchers.py BIN_DIR
"""

import sys
from importlib.metadata import entry_points
from pathlib import Path

from istio_iptables.cli import launcher


def main(folder: str) -> int:
    written = 0
    for entry in entry_points(group="console_scripts"):
        if entry.dist is None or entry.dist.name != "istio-iptables":
            continue
        path = Path(folder) / entry.name
        path.write_text(launcher(sys.executable, entry.value))
        path.chmod(0o755)
        written += 1
    return 0 if written else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
