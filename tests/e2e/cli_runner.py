"""Running ``dataplatform`` as a user does: a fresh process, the smoke profile, a given home."""

from __future__ import annotations

import os
import subprocess
import sys

from dataplatform.core.store.home import Home


def run_cli(home: Home, *args: str) -> subprocess.CompletedProcess:
    """``python -m dataplatform.cli --home HOME ARGS...``, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "dataplatform.cli", "--home", str(home.root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DATAPLATFORM_PROFILE": "smoke"},
    )
