"""VQ-VAE tokenizer: shapes, determinism, held-out quality of a tiny CPU-trained model, saving,
and diffusers' VQModel through the same API."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from dataplatform.core.tokens.vq_tokenizer import (
    VQConfig,
    evaluate,
    load_tokenizer,
    save_tokenizer,
    train_vqvae,
)
from tests.conftest import photo

# Small enough to train in about half a minute on 2 CPU cores: 64 px images, 8 x 8 tokens.
CONFIG = VQConfig(resolution=64, downsample=8, codebook_size=256, channels=32)
STEPS = 400
TRAIN_PHOTOS = (
    "astronaut", "rocket", "motorcycle_left", "retina", "hubble_deep_field", "brick",
    "grass", "gravel", "camera", "horse", "coins", "moon",
)  # fmt: skip
HELDOUT_PHOTOS = ("china", "flower", "coffee", "chelsea")
# Measured: 400 steps reach about 17.9 dB on the held-out photos, the untrained model about 9 dB.
PSNR_FLOOR = 15.0


def _crops(names: tuple[str, ...], per_photo: int, seed: int) -> np.ndarray:
    """Random square crops (a quarter of the short side up to all of it) resized to 64 px."""
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        image = photo(name).convert("RGB")
        w, h = image.size
        for _ in range(per_photo):
            side = int(rng.integers(min(w, h) // 4, min(w, h) + 1))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = image.crop((x, y, x + side, y + side)).resize((64, 64), Image.BICUBIC)
            out.append(np.asarray(crop))
    return np.stack(out)


@pytest.fixture(scope="module")
def train_images() -> np.ndarray:
    return _crops(TRAIN_PHOTOS, per_photo=16, seed=0)


@pytest.fixture(scope="module")
def heldout_images() -> np.ndarray:
    return _crops(HELDOUT_PHOTOS, per_photo=4, seed=1)


@pytest.fixture(scope="module")
def trained(train_images):
    started = time.perf_counter()
    tok = train_vqvae(train_images, CONFIG, steps=STEPS, seed=0)
    print(f"trained {STEPS} steps in {time.perf_counter() - started:.1f} s")
    return tok


def test_round_trip_shapes_and_dtypes(trained, heldout_images):
    tokens = trained.encode(heldout_images)
    assert tokens.shape == (16, 8, 8)
    assert tokens.dtype == np.uint16
    assert int(tokens.max()) < CONFIG.codebook_size
    images = trained.decode(tokens)
    assert images.shape == heldout_images.shape
    assert images.dtype == np.uint8


def test_encodes_any_multiple_of_downsample(trained, heldout_images):
    wide = np.concatenate([heldout_images[:2], heldout_images[2:4]], axis=2)[:, :32]
    tokens = trained.encode(wide)
    assert tokens.shape == (2, 4, 16)
    assert trained.decode(tokens).shape == (2, 32, 128, 3)
    with pytest.raises(ValueError, match="multiple of downsample"):
        trained.encode(heldout_images[:, :60])


def test_tokens_deterministic_and_batch_independent(trained, heldout_images):
    batch = trained.encode(heldout_images)
    np.testing.assert_array_equal(batch, trained.encode(heldout_images))
    one_by_one = np.concatenate([trained.encode(image[None]) for image in heldout_images])
    np.testing.assert_array_equal(batch, one_by_one)


def test_training_is_deterministic_given_seed(train_images):
    small = VQConfig(resolution=64, downsample=8, codebook_size=32, channels=8, code_dim=8)
    a = train_vqvae(train_images[:32], small, steps=3, batch_size=4, seed=7)
    b = train_vqvae(train_images[:32], small, steps=3, batch_size=4, seed=7)
    c = train_vqvae(train_images[:32], small, steps=3, batch_size=4, seed=8)
    assert a.identity["sha256"] == b.identity["sha256"]
    assert a.identity["sha256"] != c.identity["sha256"]


def test_trained_reaches_psnr_floor_on_heldout_photos(trained, train_images, heldout_images):
    untrained = train_vqvae(train_images, CONFIG, steps=0, seed=0)
    before = evaluate(untrained, heldout_images)
    after = evaluate(trained, heldout_images)
    print(f"held-out untrained {before}\nheld-out trained {after}")
    assert after["psnr"] >= PSNR_FLOOR
    assert before["psnr"] < PSNR_FLOOR - 3.0
    assert after["codebook_usage"] > 0.3
    assert after["dead_code_share"] == pytest.approx(1.0 - after["codebook_usage"])
    assert after["perplexity"] > 40.0


def test_save_load_round_trip(trained, heldout_images, tmp_path):
    path = save_tokenizer(trained, tmp_path / "tok")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "weights.pt"]
    # Saving again replaces the directory whole.
    assert save_tokenizer(trained, path) == path
    loaded = load_tokenizer(path)
    assert loaded.config == CONFIG
    assert loaded.identity["kind"] == "dataplatform-vqvae"
    assert loaded.identity["sha256"] == trained.identity["sha256"]
    assert loaded.identity["path"] == str(path)
    np.testing.assert_array_equal(loaded.encode(heldout_images), trained.encode(heldout_images))
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]


def test_load_missing_path_names_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer_path"):
        load_tokenizer(tmp_path / "nowhere")


def test_diffusers_vqmodel_loads_through_same_api(tmp_path, heldout_images):
    diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed")
    import torch

    torch.manual_seed(0)
    model = diffusers.VQModel(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        num_vq_embeddings=64,
        norm_num_groups=4,
        sample_size=32,
    )
    model.save_pretrained(tmp_path / "vqmodel")
    tok = load_tokenizer(tmp_path / "vqmodel")
    assert tok.identity["kind"] == "diffusers-vqmodel"
    assert tok.identity["sha256"]
    assert (tok.config.downsample, tok.config.codebook_size) == (4, 64)
    images = heldout_images[:3, :32, :32]
    tokens = tok.encode(images)
    assert tokens.shape == (3, 8, 8)
    assert tokens.dtype == np.uint16
    assert int(tokens.max()) < 64
    np.testing.assert_array_equal(tokens, tok.encode(images))
    decoded = tok.decode(tokens)
    assert decoded.shape == images.shape
    assert decoded.dtype == np.uint8
