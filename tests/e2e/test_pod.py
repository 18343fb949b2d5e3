"""The container image end to end: images/e2e.sh runs examples/pod.yaml with podman.

Opt-in: it builds an image (about a minute from scratch) and needs root and podman, so
it runs only with RUN_E2E=1 (e.g. `RUN_E2E=1 python3 -m pytest tests/e2e -s`).
`make e2e` runs the same script directly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "images" / "e2e.sh"

pytestmark = [
    pytest.mark.skipif(os.environ.get("RUN_E2E") != "1", reason="container e2e is opt-in: set RUN_E2E=1"),
    pytest.mark.skipif(shutil.which("podman") is None, reason="needs podman"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (podman pods, network namespaces)"),
]


def test_pod_end_to_end() -> None:
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1800, check=False)
    print(done.stdout)
    print(done.stderr)
    summary = re.search(r"^e2e: (\d+) passed, (\d+) failed$", done.stdout, re.MULTILINE)
    assert summary is not None, "e2e.sh printed no summary"
    assert done.returncode == 0, f"e2e.sh failed ({summary.group(2)} checks)"
    assert int(summary.group(1)) > 0 and int(summary.group(2)) == 0
