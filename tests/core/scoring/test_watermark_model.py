"""LAION's watermark detector: its checkpoint format, loaded from a seeded random state_dict."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from dataplatform.core.scoring.watermark_model import (
    IMAGE_SIZE,
    SETTING,
    build_watermark_model,
    load_watermark,
    watermark_transform,
)
from tests.conftest import photo

PHOTOS = ("astronaut", "coffee", "camera", "chelsea", "china")  # camera is grayscale


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LAION's format (a plain state_dict) with seeded random weights.

    The classifier is scaled up so that different photos get visibly different scores: with
    timm's initialisation every image scores 0.503 to six digits, which would hide a batching bug.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_watermark_model()
    with torch.no_grad():
        for index in (0, 3, 5):
            model.classifier[index].weight.mul_(30)
    path = tmp_path_factory.mktemp("watermark") / "watermark_model_v1.pt"
    torch.save(model.state_dict(), path)
    return path


def test_architecture_is_laions() -> None:
    import timm

    model = build_watermark_model()
    assert [type(m).__name__ for m in model.classifier] == [
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "ReLU",
        "Linear",
    ]
    linears = [m for m in model.classifier if type(m).__name__ == "Linear"]
    assert [(m.in_features, m.out_features) for m in linears] == [(1536, 625), (625, 256), (256, 2)]
    # The name LAION used; timm now maps it to efficientnet_b3, with the same backbone keys.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b3a = timm.create_model("efficientnet_b3a", pretrained=False, num_classes=2)
    backbone = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("classifier")}
    assert backbone == {
        k: v.shape for k, v in b3a.state_dict().items() if not k.startswith("classifier")
    }


def test_transform_is_a_256_square_resize_with_imagenet_normalisation() -> None:
    from PIL import Image

    white = watermark_transform()(Image.new("RGB", (640, 200), "white"))
    assert tuple(white.shape) == (3, IMAGE_SIZE, IMAGE_SIZE)
    expected = [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    np.testing.assert_allclose(white.mean(dim=(1, 2)).numpy(), expected, rtol=1e-6)


def test_scores_real_photos_deterministically_batched_or_not(checkpoint: Path) -> None:
    scorer = load_watermark(checkpoint)
    images = [photo(name) for name in PHOTOS]
    scores = scorer.score(images)
    assert scores.shape == (len(PHOTOS),) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    assert np.ptp(scores) > 1e-3, scores
    np.testing.assert_array_equal(scorer.score(images), scores)
    one_by_one = np.concatenate([scorer.score([image]) for image in images])
    np.testing.assert_allclose(one_by_one, scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scorer.score(images, batch_size=2), scores, rtol=0, atol=1e-5)
    assert scorer.score([]).shape == (0,)


def test_load_is_cached_and_accepts_wrapped_state_dicts(checkpoint: Path, tmp_path: Path) -> None:
    import torch

    assert load_watermark(checkpoint) is load_watermark(str(checkpoint))
    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    wrapped = tmp_path / "ddp.pt"
    torch.save({"weights": {f"module.{k}": v for k, v in state_dict.items()}}, wrapped)
    image = [photo("astronaut")]
    np.testing.assert_array_equal(
        load_watermark(wrapped).score(image), load_watermark(checkpoint).score(image)
    )


def test_missing_or_wrong_checkpoint_names_the_setting(tmp_path: Path) -> None:
    import timm
    import torch

    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=rf"`{SETTING}`.*nope\.pt"):
        load_watermark(missing)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match=rf"`{SETTING}`.*junk\.pt"):
        load_watermark(tmp_path / "junk.pt")
    # timm's bare 2-class model lacks LAION's MLP classifier: not this format.
    bare = tmp_path / "bare.pt"
    torch.save(timm.create_model("efficientnet_b3", num_classes=2).state_dict(), bare)
    with pytest.raises(ValueError, match=rf"`{SETTING}`.*bare\.pt.*classifier"):
        load_watermark(bare)
