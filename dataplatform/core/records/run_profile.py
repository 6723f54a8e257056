"""Which run profile a document's rows come from: production (real weights) or smoke.

Review sheets and dataset cards must say when their numbers come from the smoke profile, whose
small built-in CLIP model scores meaninglessly. The rows themselves say it where a model scored
them: clip_scored's ``clip_model`` (carried by every later table and the cards) is the model's
identity, with ``smoke=true`` for the smoke model. That holds whatever the environment of the
process that renders the document (a takedown re-renders cards and sheets later, from the CLI).
Rows no model scored fall back to ``DATAPLATFORM_PROFILE``, and say so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dataplatform.core.store.profile import PROFILE_ENV, is_smoke

SMOKE, PRODUCTION = "smoke", "production"
MODEL_COLUMN = "clip_model"
_SMOKE_MODEL = "smoke=true"


@dataclass(frozen=True)
class Profile:
    """The run profile, ``smoke`` or ``production``, and where it was read from (in words)."""

    name: str
    basis: str

    @property
    def is_smoke(self) -> bool:
        return self.name == SMOKE

    def describe(self) -> str:
        """What the profile means for the numbers beside it, for a reader."""
        if self.is_smoke:
            return (
                "Smoke profile: CLIP is the small built-in test model, so CLIP scores, the CLIP "
                "cut and semantic similarities mean nothing (the semantic threshold is raised)"
            )
        return "Production profile: real model weights"


def rows_profile(model_identities: Iterable[str | None]) -> Profile:
    """The profile of rows from their ``clip_model`` values; the environment's when none."""
    named = [m for m in model_identities if m]
    if named:
        if any(_SMOKE_MODEL in m for m in named):
            return Profile(SMOKE, "the built-in smoke CLIP model scored these rows (clip_model)")
        return Profile(PRODUCTION, "real CLIP weights scored these rows (clip_model)")
    return Profile(
        SMOKE if is_smoke() else PRODUCTION,
        f"{PROFILE_ENV} of the process that rendered this; no model scored these rows",
    )
