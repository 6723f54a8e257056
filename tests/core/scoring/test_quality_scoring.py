"""score_on_engine's progress: every image counted by batch, the scores unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataplatform.core.engine.progress import PROGRESS_SECONDS_ENV
from dataplatform.core.scoring.quality_scoring import (
    PROGRESS_LABEL,
    Scorers,
    ScorerSettings,
    score_on_engine,
    score_partition,
)
from tests.conftest import encode, photo


def test_scoring_logs_images_done_by_batch_and_the_same_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "0")
    rows = []
    for name in ("astronaut", "coffee", "rocket", "chelsea", "camera", "black"):
        image = Image.new("RGB", (64, 48)) if name == "black" else photo(name).convert("RGB")
        (tmp_path / f"{name}.jpg").write_bytes(encode(image, quality=90))
        rows.append(
            {
                "pair_id": name,
                "date": "2025-01-01",
                "image_location": f"{name}.jpg",
                "width": image.width,
                "height": image.height,
            }
        )
    embeddings = np.zeros((len(rows), 4), np.float32)
    lines: list[str] = []
    scored = score_on_engine(
        rows,
        embeddings,
        tmp_path,
        ScorerSettings(use_nudenet=False, use_ocr=False),
        batch_size=4,
        log=lines.append,
    )
    assert scored.table.equals(score_partition(rows, embeddings, tmp_path, Scorers(), 4))
    assert [line.split(", ")[0] for line in lines] == [
        f"{PROGRESS_LABEL}: 0 of 6 images",
        f"{PROGRESS_LABEL}: 4 of 6 images (66%)",
        f"{PROGRESS_LABEL}: 6 of 6 images done",
    ]
