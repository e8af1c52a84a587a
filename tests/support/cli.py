"""Run the ``eventd`` command as a user does: a child process, this checkout
first on its import path (so an editable install pointing elsewhere cannot
test another tree)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_eventd(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m eventd ARGS``, text output captured, never raising on a non-zero exit."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "eventd", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
