"""CLIP loading and encoding, on the seeded smoke model saved to a file and real photos."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataplatform.core.engine.progress import PROGRESS_SECONDS_ENV
from dataplatform.core.ingest.image_store import location_of
from dataplatform.core.ingest.landing import ImageRef
from dataplatform.core.scoring.clip_model import (
    IMAGE_PROGRESS_LABEL,
    SMOKE_MODEL_NAME,
    TEXT_PROGRESS_LABEL,
    ClipSpec,
    ClipWeightsUnavailable,
    build_smoke_checkpoint,
    clip_scores,
    embed_pairs,
    load_encoder,
    smoke_spec,
)
from tests.conftest import encode, photo

ROOT = Path(__file__).resolve().parents[3]
DAY = "2025-01-01"
BROKEN, MISSING = 3, 6


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def checkpoint(models_dir: Path) -> Path:
    return build_smoke_checkpoint(models_dir)


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Real photos as JPEG, PNG, 16-bit PNG and a tar member, plus a broken and a missing file."""
    root = tmp_path_factory.mktemp("landing")
    images = root / DAY / "img"
    images.mkdir(parents=True)
    files = {
        "astronaut.jpg": encode(photo("astronaut"), quality=90),
        "coffee.png": encode(photo("coffee"), "PNG"),
        "china.jpg": encode(photo("china"), quality=85),
        "broken.jpg": encode(photo("chelsea"), quality=90)[:300],
        "camera16.png": encode(
            Image.fromarray(np.asarray(photo("camera"), dtype=np.uint16) * 257), "PNG"
        ),
    }
    for name, data in files.items():
        (images / name).write_bytes(data)
    rocket = encode(photo("rocket"), quality=90)
    with tarfile.open(root / DAY / "shard.tar", "w") as tar:
        info = tarfile.TarInfo("k1.jpg")
        info.size = len(rocket)
        tar.addfile(info, io.BytesIO(rocket))
    with tarfile.open(root / DAY / "shard.tar") as tar:
        member = tar.getmember("k1.jpg")
    tar_location = location_of(
        ImageRef(
            kind="tar",
            path=str(root / DAY / "shard.tar"),
            offset=member.offset_data,
            size=member.size,
        ),
        root,
    )
    locations = [
        f"{DAY}/img/astronaut.jpg",
        f"{DAY}/img/coffee.png",
        tar_location,
        f"{DAY}/img/broken.jpg",
        f"{DAY}/img/china.jpg",
        f"{DAY}/img/camera16.png",
        f"{DAY}/img/missing.jpg",
        f"{DAY}/img/astronaut.jpg",
    ]
    assert locations[BROKEN].endswith("broken.jpg") and locations[MISSING].endswith("missing.jpg")
    return root, locations


def _spec(checkpoint: Path, **settings: object) -> ClipSpec:
    return ClipSpec(model=SMOKE_MODEL_NAME, pretrained=str(checkpoint), **settings)


def test_smoke_checkpoint_is_built_once_with_seeded_weights(checkpoint: Path, tmp_path: Path):
    import torch

    assert checkpoint.name == "dataplatform-smoke-clip.pt" and checkpoint.is_file()
    mtime = checkpoint.stat().st_mtime_ns
    assert build_smoke_checkpoint(checkpoint.parent) == checkpoint
    assert checkpoint.stat().st_mtime_ns == mtime

    again = torch.load(build_smoke_checkpoint(tmp_path), weights_only=True)
    first = torch.load(checkpoint, weights_only=True)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_smoke_spec_keeps_the_base_settings(models_dir: Path, checkpoint: Path):
    spec = smoke_spec(models_dir, base=ClipSpec(batch_size=7, num_workers=0, device="cpu"))
    assert spec == ClipSpec(
        model=SMOKE_MODEL_NAME,
        pretrained=str(checkpoint),
        device="cpu",
        precision="auto",
        batch_size=7,
        num_workers=0,
    )


def test_load_encoder_loads_the_file_once_per_spec(checkpoint: Path, tmp_path: Path, landing):
    root, locations = landing
    encoder = load_encoder(_spec(checkpoint))
    assert load_encoder(_spec(checkpoint)) is encoder
    assert encoder.dim == 64 and encoder.device == "cpu" and encoder.dtype_name == "float32"
    assert encoder.identity == {
        "model": SMOKE_MODEL_NAME,
        "pretrained": str(checkpoint),
        "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "dim": "64",
        "device": "cpu",
        "precision": "fp32",
        "smoke": "true",
    }

    # The same weights from another file: a separate model object, the same embeddings.
    copy = tmp_path / "copy.pt"
    shutil.copyfile(checkpoint, copy)
    other = load_encoder(_spec(copy))
    assert other is not encoder and other.model is not encoder.model
    first, _ = encoder.embed_images(locations[:3], root)
    second, _ = other.embed_images(locations[:3], root)
    np.testing.assert_array_equal(first, second)
    texts = ["an astronaut", "a cup of coffee"]
    np.testing.assert_array_equal(encoder.embed_texts(texts), other.embed_texts(texts))


def test_embed_images_gives_unit_rows_and_errors_in_place(checkpoint: Path, landing):
    root, locations = landing
    encoder = load_encoder(_spec(checkpoint, batch_size=3, num_workers=2))
    embeddings, errors = encoder.embed_images(locations, root)

    assert embeddings.shape == (len(locations), 64) and embeddings.dtype == np.float32
    bad = {BROKEN, MISSING}
    good = [i for i in range(len(locations)) if i not in bad]
    assert [i for i, e in enumerate(errors) if e is not None] == [BROKEN, MISSING]
    assert errors[BROKEN].startswith("decode_error: ")
    assert errors[MISSING].startswith("read_error: missing_file: ")
    assert "missing.jpg" in errors[MISSING]
    assert np.isnan(embeddings[sorted(bad)]).all()
    assert np.isfinite(embeddings[good]).all()
    np.testing.assert_allclose(np.linalg.norm(embeddings[good], axis=1), 1.0, atol=1e-5)
    # The same location twice gives the same row; different photos give different rows.
    np.testing.assert_allclose(embeddings[0], embeddings[7], atol=1e-6)
    assert np.abs(embeddings[0] - embeddings[1]).max() > 1e-3
    assert encoder.last_stats is not None and encoder.last_stats.images == len(locations)

    # Batched through worker processes == one image at a time inline.
    single = load_encoder(_spec(checkpoint, batch_size=1, num_workers=0))
    one_by_one, single_errors = single.embed_images(locations, root)
    assert single_errors == errors
    np.testing.assert_allclose(one_by_one, embeddings, atol=1e-4)


def test_embed_images_applies_exif_orientation(checkpoint: Path, tmp_path: Path):
    upright = photo("astronaut").resize((160, 96))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter left; viewers turn it right
    (tmp_path / "upright.png").write_bytes(encode(upright, "PNG"))
    (tmp_path / "turned.png").write_bytes(
        encode(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif.tobytes())
    )
    encoder = load_encoder(_spec(checkpoint, num_workers=0))
    embeddings, errors = encoder.embed_images(["upright.png", "turned.png"], tmp_path)
    assert errors == [None, None]
    np.testing.assert_allclose(embeddings[0], embeddings[1], atol=1e-5)


def test_embed_images_of_nothing(checkpoint: Path, tmp_path: Path):
    embeddings, errors = load_encoder(_spec(checkpoint)).embed_images([], tmp_path)
    assert embeddings.shape == (0, 64) and errors == []


def test_texts_and_scores(checkpoint: Path, landing):
    root, locations = landing
    encoder = load_encoder(_spec(checkpoint, batch_size=2))
    texts = ["an astronaut", "coffee", "a rocket", "", "a city", "a camera man", "x", "y" * 500]
    text_emb = encoder.embed_texts(texts)
    assert text_emb.shape == (len(texts), 64) and text_emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(text_emb, axis=1), 1.0, atol=1e-5)
    assert encoder.embed_texts([]).shape == (0, 64)

    image_emb, _ = encoder.embed_images(locations, root)
    scores = clip_scores(image_emb, text_emb)
    assert scores.dtype == np.float32 and scores.shape == (len(texts),)
    readable = np.isfinite(scores)
    assert readable.tolist() == [i not in (BROKEN, MISSING) for i in range(len(texts))]
    assert ((scores[readable] >= -1.0) & (scores[readable] <= 1.0)).all()
    manual = np.array([float(image_emb[i] @ text_emb[i]) for i in range(len(texts))])
    np.testing.assert_allclose(scores[readable], manual[readable], atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        clip_scores(image_emb[:2], text_emb)


def test_a_missing_checkpoint_path_names_the_setting(tmp_path: Path):
    path = tmp_path / "weights" / "ViT-B-32.pt"
    with pytest.raises(ClipWeightsUnavailable) as raised:
        load_encoder(ClipSpec(pretrained=str(path)))
    message = str(raised.value)
    assert "pretrained" in message and str(path) in message
    assert "DATAPLATFORM_PROFILE=smoke" in message


def test_a_tag_without_network_fails_fast_and_says_what_to_do(tmp_path: Path):
    # A fresh process: huggingface_hub reads HF_HUB_OFFLINE when it is first imported.
    script = (
        "from dataplatform.core.scoring.clip_model import (\n"
        "    ClipSpec, ClipWeightsUnavailable, load_encoder)\n"
        "try:\n"
        "    load_encoder(ClipSpec(model='ViT-B-32', pretrained='laion2b_s34b_b79k'))\n"
        "except ClipWeightsUnavailable as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('loaded')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert time.perf_counter() - started < 20
    assert result.returncode == 0, result.stderr
    assert "laion2b_s34b_b79k" in result.stdout
    assert "`pretrained` of the `clip` resource" in result.stdout
    assert "DATAPLATFORM_PROFILE=smoke" in result.stdout


def test_bad_settings_name_the_setting(checkpoint: Path):
    with pytest.raises(ValueError, match="`model`"):
        load_encoder(ClipSpec(model="ViT-Nope-99", pretrained=str(checkpoint)))
    with pytest.raises(ValueError, match="`model`"):
        load_encoder(ClipSpec(model="hf-hub:org/repo"))
    with pytest.raises(ValueError, match="`precision`"):
        load_encoder(_spec(checkpoint, device="cpu", precision="fp16"))
    with pytest.raises(ValueError, match="`device`"):
        ClipSpec(device="tpu")
    with pytest.raises(ValueError, match="`batch_size`"):
        ClipSpec(batch_size=0)
    with pytest.raises(ClipWeightsUnavailable, match="pretrained"):
        load_encoder(ClipSpec(pretrained=""))


def test_embed_pairs_logs_its_progress_and_the_same_numbers(
    checkpoint: Path, landing, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "0")
    root, locations = landing
    texts = [f"photo {i}" for i in range(len(locations))]
    spec = _spec(checkpoint, batch_size=3, num_workers=0)
    quiet = embed_pairs(spec, locations, texts, root, log=lambda line: None)
    lines: list[str] = []
    logged = embed_pairs(spec, locations, texts, root, log=lines.append)
    np.testing.assert_array_equal(logged.image, quiet.image)
    np.testing.assert_array_equal(logged.text, quiet.text)
    assert logged.errors == quiet.errors
    n = len(locations)  # 8: batches of 3, the broken and missing images counted in theirs
    assert [line.split(", ")[0] for line in lines] == [
        f"{IMAGE_PROGRESS_LABEL}: 0 of {n} images",
        f"{IMAGE_PROGRESS_LABEL}: 3 of {n} images (37%)",
        f"{IMAGE_PROGRESS_LABEL}: 6 of {n} images (75%)",
        f"{IMAGE_PROGRESS_LABEL}: {n} of {n} images done",
        f"{TEXT_PROGRESS_LABEL}: 0 of {n} texts",
        f"{TEXT_PROGRESS_LABEL}: 3 of {n} texts (37%)",
        f"{TEXT_PROGRESS_LABEL}: 6 of {n} texts (75%)",
        f"{TEXT_PROGRESS_LABEL}: {n} of {n} texts done",
    ]
