"""LAION aesthetic and NSFW heads: the published files against manual forward passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataplatform.core.scoring.embedding_heads import (
    AESTHETIC_LINEAR,
    AESTHETIC_MLP,
    NSFW_PR11,
    HeadSpec,
    detect_head,
    head_matches,
    load_head,
)

HEADS = Path(__file__).resolve().parents[3].parent / "shared" / "peerdata" / "laion-heads"
AESTHETIC = "LAION-AI_aesthetic-predictor"
IMPROVED = "christophschuhmann_improved-aesthetic-predictor"
PR11 = "LAION-AI_CLIP-based-NSFW-Detector/pr11/models"
# file -> (kind, CLIP, width), as documented by each repository.
PUBLISHED = {
    f"{AESTHETIC}/sa_0_4_vit_b_32_linear.pth": (AESTHETIC_LINEAR, "ViT-B-32", 512),
    f"{AESTHETIC}/sa_0_4_vit_b_16_linear.pth": (AESTHETIC_LINEAR, "ViT-B-16", 512),
    f"{AESTHETIC}/sa_0_4_vit_l_14_linear.pth": (AESTHETIC_LINEAR, "ViT-L-14", 768),
    f"{IMPROVED}/sac+logos+ava1-l14-linearMSE.pth": (AESTHETIC_MLP, "ViT-L-14", 768),
    f"{PR11}/clip_ViT-B-32_openai_binary_nsfw_head.pth": (NSFW_PR11, "ViT-B-32", 512),
    f"{PR11}/clip_ViT-L-14_openai_binary_nsfw_head.pth": (NSFW_PR11, "ViT-L-14", 768),
}


def head_file(name: str) -> Path:
    path = HEADS / name
    if not path.is_file():
        pytest.skip(f"LAION head weights not found at {path} (peerdata laion-heads is absent)")
    return path


def weights(path: Path) -> dict[str, np.ndarray]:
    import torch

    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return {key: value.numpy() for key, value in state_dict.items()}


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def save_state_dict(path: Path, tensors: dict[str, tuple[int, ...]]) -> Path:
    import torch

    torch.save({key: torch.zeros(shape) for key, shape in tensors.items()}, path)
    return path


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_head_is_detected_loaded_and_scores(name: str) -> None:
    path = head_file(name)
    kind, clip_model, dim = PUBLISHED[name]
    assert detect_head(path) == HeadSpec(kind, str(path.resolve()), clip_model, dim)
    head = load_head(path)
    assert head.spec == detect_head(path)
    assert {k: tuple(v.shape) for k, v in head.module.state_dict().items()} == {
        k: v.shape for k, v in weights(path).items()
    }
    scores = head.score(unit_vectors(16, dim))
    assert scores.shape == (16,) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    assert len(head.sha256) == 64


def test_linear_head_is_x_times_w_plus_b() -> None:
    path = head_file(f"{AESTHETIC}/sa_0_4_vit_b_32_linear.pth")
    head = load_head(path)
    assert type(head.module).__name__ == "Linear"
    assert (head.module.in_features, head.module.out_features) == (512, 1)
    w = weights(path)
    x = unit_vectors(32, 512)
    expected = (x @ w["weight"].T + w["bias"])[:, 0]
    np.testing.assert_allclose(head.score(x), expected, rtol=1e-5, atol=1e-5)


def test_improved_mlp_has_no_activations_and_matches_numpy() -> None:
    path = head_file(f"{IMPROVED}/sac+logos+ava1-l14-linearMSE.pth")
    head = load_head(path)
    layers = head.module.layers
    assert [type(m).__name__ for m in layers] == ["Linear", "Dropout"] * 3 + ["Linear"] * 2
    assert [m.p for m in layers if type(m).__name__ == "Dropout"] == [0.2, 0.2, 0.1]
    assert [(m.in_features, m.out_features) for m in layers if hasattr(m, "in_features")] == [
        (768, 1024),
        (1024, 128),
        (128, 64),
        (64, 16),
        (16, 1),
    ]
    w = weights(path)
    x = unit_vectors(32, 768).astype(np.float64)
    for index in (0, 2, 4, 6, 7):
        x = x @ w[f"layers.{index}.weight"].T + w[f"layers.{index}.bias"]
    np.testing.assert_allclose(head.score(unit_vectors(32, 768)), x[:, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "widths"),
    [
        (f"{PR11}/clip_ViT-B-32_openai_binary_nsfw_head.pth", [512, 32, 32, 1]),
        (f"{PR11}/clip_ViT-L-14_openai_binary_nsfw_head.pth", [768, 64, 512, 256, 1]),
    ],
)
def test_pr11_nsfw_head_matches_numpy_and_is_a_probability(name: str, widths: list[int]) -> None:
    path = head_file(name)
    head = load_head(path)
    linears = [m for n, m in head.module.named_children() if n.startswith("linear_")]
    assert [(m.in_features, m.out_features) for m in linears] == list(
        zip(widths[:-1], widths[1:], strict=True)
    )
    names = [n for n, _ in head.module.named_children()]
    assert names[0] == "norm" and names[-1] == f"act_{len(widths) - 1}"
    assert type(head.module[-1]).__name__ == "Sigmoid"
    w = weights(path)
    x = unit_vectors(64, widths[0], seed=3).astype(np.float64)
    h = (x - w["norm.mean"]) / (np.sqrt(w["norm.variance"]) + 1e-10)
    for n in range(1, len(widths)):
        h = h @ w[f"linear_{n}.weight"].T + w[f"linear_{n}.bias"]
        h = np.maximum(h, 0) if n < len(widths) - 1 else 1 / (1 + np.exp(-h))
    scores = head.score(unit_vectors(64, widths[0], seed=3))
    assert ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_allclose(scores, h[:, 0], rtol=1e-4, atol=1e-6)


def test_dim_mismatch_names_both_widths() -> None:
    head = load_head(head_file(f"{AESTHETIC}/sa_0_4_vit_l_14_linear.pth"))
    with pytest.raises(ValueError, match=r"768-d .*got 512-d"):
        head.score(unit_vectors(4, 512))
    with pytest.raises(ValueError, match="768-d"):
        head.score(unit_vectors(1, 768)[0])


def test_raw_embeddings_are_refused_and_nan_rows_score_nan() -> None:
    head = load_head(head_file(f"{AESTHETIC}/sa_0_4_vit_b_32_linear.pth"))
    with pytest.raises(ValueError, match="L2-normalised"):
        head.score(unit_vectors(4, 512) * 7)
    x = unit_vectors(3, 512)
    x[1] = np.nan
    scores = head.score(x)
    assert np.isnan(scores[1]) and np.isfinite(scores[[0, 2]]).all()
    assert head.score(np.empty((0, 512), np.float32)).shape == (0,)


def test_batches_agree_with_one_pass() -> None:
    head = load_head(head_file(f"{IMPROVED}/sac+logos+ava1-l14-linearMSE.pth"))
    x = unit_vectors(50, 768)
    np.testing.assert_allclose(head.score(x, batch_size=7), head.score(x), rtol=1e-6, atol=1e-6)


def test_head_matches() -> None:
    spec = HeadSpec(AESTHETIC_LINEAR, "sa_0_4_vit_b_32_linear.pth", "ViT-B-32", 512)
    assert head_matches(spec, "ViT-B-32", 512)
    assert head_matches(spec, "ViT-B-32", 512, clip_pretrained="openai")
    assert not head_matches(spec, "ViT-B-32", 512, clip_pretrained="laion2b_s34b_b79k")
    assert not head_matches(spec, "ViT-B-16", 512)
    assert not head_matches(spec, "ViT-L-14", 768)
    assert not head_matches(spec, "ViT-B-32", 768)


def test_load_head_is_cached_per_path() -> None:
    path = head_file(f"{PR11}/clip_ViT-B-32_openai_binary_nsfw_head.pth")
    assert load_head(path) is load_head(str(path))
    assert load_head(path) is not load_head(head_file(f"{AESTHETIC}/sa_0_4_vit_b_32_linear.pth"))


@pytest.mark.parametrize(
    ("name", "clip_model"),
    [
        ("sa_0_4_vit_b_16_linear.pth", "ViT-B-16"),
        ("ava+logos-l14-linearMSE.pth", "ViT-L-14"),
        ("clip_ViT-L-14_openai_binary_nsfw_head.pth", "ViT-L-14"),
        ("clip_autokeras_nsfw_b32.pth", "ViT-B-32"),
    ],
)
def test_clip_is_read_from_the_file_name(tmp_path: Path, name: str, clip_model: str) -> None:
    dim = 512 if clip_model.startswith("ViT-B") else 768
    path = save_state_dict(tmp_path / name, {"weight": (1, dim), "bias": (1,)})
    assert detect_head(path).clip_model == clip_model


def test_unrecognised_files_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"other_vit_b_32\.pth.*none of the recognised"):
        detect_head(save_state_dict(tmp_path / "other_vit_b_32.pth", {"fc.weight": (1, 512)}))
    relu_mlp = {f"layers.{i}.weight": (1, 768) for i in (0, 3, 6, 9, 11)}
    with pytest.raises(ValueError, match="none of the recognised"):
        detect_head(save_state_dict(tmp_path / "relu-l14.pth", relu_mlp))
    with pytest.raises(ValueError, match=r"my_head\.pth.*which CLIP"):
        detect_head(save_state_dict(tmp_path / "my_head.pth", {"weight": (1, 512), "bias": (1,)}))
    with pytest.raises(ValueError, match="named for ViT-L-14"):
        detect_head(save_state_dict(tmp_path / "vit_l_14.pth", {"weight": (1, 512), "bias": (1,)}))
    (tmp_path / "vit_b_32.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"vit_b_32\.pth is not a torch state_dict"):
        detect_head(tmp_path / "vit_b_32.pth")
    with pytest.raises(FileNotFoundError, match="missing_b32.pth"):
        load_head(tmp_path / "missing_b32.pth")
