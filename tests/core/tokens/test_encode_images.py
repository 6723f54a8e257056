"""encode_rows's progress: images counted as each batch is encoded, the tokens unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataplatform.core.engine.progress import PROGRESS_SECONDS_ENV
from dataplatform.core.tokens.encode_images import PROGRESS_LABEL, EncodeSettings, encode_rows
from dataplatform.core.tokens.vq_tokenizer import VQConfig, save_tokenizer, train_vqvae
from tests.conftest import encode, photo


def test_encoding_logs_images_done_by_batch_and_the_same_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "0")
    config = VQConfig(resolution=32, downsample=8, codebook_size=16, channels=8)
    path = save_tokenizer(
        train_vqvae(np.zeros((1, 32, 32, 3), np.uint8), config, steps=0), tmp_path / "vq"
    )
    rows = []
    for name in ("astronaut", "coffee", "broken", "rocket", "chelsea"):
        data = b"not an image" if name == "broken" else encode(photo(name).convert("RGB"))
        (tmp_path / f"{name}.jpg").write_bytes(data)
        width, height = (10, 10) if name == "broken" else photo(name).size
        rows.append(
            {"pair_id": name, "image_location": f"{name}.jpg", "width": width, "height": height}
        )
    settings = EncodeSettings(path, "cpu", batch_size=2, resolution=32, crop="center")
    quiet = encode_rows(rows, tmp_path, settings, log=lambda line: None)
    lines: list[str] = []
    logged = encode_rows(rows, tmp_path, settings, log=lines.append)
    assert sorted(logged.grids) == sorted(quiet.grids) == [0, 1, 3, 4]
    for k, grid in quiet.grids.items():
        np.testing.assert_array_equal(logged.grids[k], grid)
    assert logged.boxes == quiet.boxes and list(logged.failures) == [2]
    # A batch counts once encoded; an unreadable image counts when it fails.
    assert [line.split(", ")[0] for line in lines] == [
        f"{PROGRESS_LABEL}: 0 of 5 images",
        f"{PROGRESS_LABEL}: 2 of 5 images (40%)",
        f"{PROGRESS_LABEL}: 3 of 5 images (60%)",
        f"{PROGRESS_LABEL}: 5 of 5 images done",
    ]
