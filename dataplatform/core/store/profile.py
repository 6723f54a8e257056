"""The run profile: production (real model weights) or smoke (small built-in test models).

Chosen by the environment, not by run config, because it must hold for every step process of a
run and for the demo that launches them; every output produced under smoke says so.
"""

from __future__ import annotations

import os

PROFILE_ENV = "DATAPLATFORM_PROFILE"
SMOKE = "smoke"


def is_smoke() -> bool:
    return os.environ.get(PROFILE_ENV, "").strip().lower() == SMOKE
