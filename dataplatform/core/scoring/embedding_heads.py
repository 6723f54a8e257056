"""Small LAION heads that score L2-normalised CLIP image embeddings: aesthetics and NSFW.

Three published state_dict formats are recognised from their keys and shapes alone
(``detect_head``), rebuilt as the exact modules their authors ran, and loaded strictly:

- ``aesthetic_linear``: LAION-AI/aesthetic-predictor ``sa_0_4_vit_*_linear.pth``,
  ``nn.Linear(dim, 1)``; the score is on the 1-10 aesthetic scale.
- ``aesthetic_mlp``: christophschuhmann/improved-aesthetic-predictor ``*-linearMSE.pth``, the
  MLP of ``simple_inference.py``: Linear(dim,1024) Dropout(0.2) Linear(1024,128) Dropout(0.2)
  Linear(128,64) Dropout(0.1) Linear(64,16) Linear(16,1), with no activations (they are
  commented out there), hence the keys ``layers.{0,2,4,6,7}``. Same 1-10 scale.
- ``nsfw_pr11``: LAION-AI/CLIP-based-NSFW-Detector pull request 11 (``src/models.py``), the
  AutoKeras heads converted to torch: a Keras-style Normalization, ``(x - mean) /
  (sqrt(variance) + 1e-10)``, then ReLU MLP 512-32-32-1 (ViT-B/32) or 768-64-512-256-1
  (ViT-L/14) and a sigmoid; the score is the NSFW probability.

Every head was trained on embeddings of one CLIP (OpenAI's weights for all of these), so a
head's score means nothing on another CLIP's embeddings even where the width agrees:
``head_matches`` is the check a caller makes before scoring, and writes a null score otherwise.
The CLIP is read from the file name (``vit_b_32``, ``ViT-L-14``, ``l14``, ...), because the
weights do not record it and 512 is the width of both ViT-B/32 and ViT-B/16.

torch is imported inside functions: Dagster imports this module in every step process.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

AESTHETIC_LINEAR = "aesthetic_linear"
AESTHETIC_MLP = "aesthetic_mlp"
NSFW_PR11 = "nsfw_pr11"
KINDS = (AESTHETIC_LINEAR, AESTHETIC_MLP, NSFW_PR11)

# improved-aesthetic-predictor simple_inference.py: (index in nn.Sequential, out_features).
_MLP_LINEARS = ((0, 1024), (2, 128), (4, 64), (6, 16), (7, 1))
_MLP_DROPOUTS = {1: 0.2, 3: 0.2, 5: 0.1}
# CLIP-based-NSFW-Detector PR 11 src/models.py: NSFWModel_B32 and NSFWModel_L14, by input width.
_PR11_WIDTHS = {512: (32, 32, 1), 768: (64, 512, 256, 1)}
# NSFWModel_B32 drops out after its second ReLU (a no-op in eval, kept so the module reads alike).
_PR11_DROPOUT = {512: (2, 0.5)}
# PR 11's Normalization adds this to the standard deviation (Keras clamps it at 1e-7 instead;
# the converted heads were checked against Keras with this one).
_PR11_EPSILON = 1e-10

# Width of the image embedding of each CLIP architecture named in LAION head file names.
CLIP_WIDTHS = {"ViT-B-32": 512, "ViT-B-16": 512, "ViT-L-14": 768, "ViT-H-14": 1024}
# "vit_b_32", "ViT-B-32", "b32", "l14", ... anywhere in the file name, not inside a word.
_CLIP_IN_NAME = re.compile(r"(?<![a-z])(?:vit[-_]?)?([blh])[-_]?(14|16|32)(?!\d)")
# Unit-norm tolerance: float16 CLIP outputs normalised in float16 are off by up to ~1e-3.
_NORM_TOLERANCE = 1e-2
SCORE_BATCH_SIZE = 8192
"""Rows per forward pass: bounds the MLP's 1024-wide activations to 32 MiB."""


@dataclass(frozen=True)
class HeadSpec:
    """What a head file holds: its format, and the CLIP whose embeddings it scores."""

    kind: str
    """One of ``KINDS``."""
    path: str
    clip_model: str
    """open_clip architecture name of the CLIP it was trained on, e.g. ``ViT-L-14``."""
    dim: int
    """Width of the embeddings it takes."""
    clip_pretrained: str = "openai"
    """open_clip pretrained tag of that CLIP: every head recognised here used OpenAI's."""


def detect_head(path: str | Path) -> HeadSpec:
    """The format and CLIP of the head file at ``path``, from its keys, shapes and file name."""
    path = Path(path).resolve()
    return _spec_of(path, _read_state_dict(path))


def head_matches(
    spec: HeadSpec, clip_model: str, clip_dim: int, clip_pretrained: str | None = None
) -> bool:
    """Whether ``spec``'s head may score embeddings of this CLIP.

    The architecture and width must agree; the pretrained tag is compared when given (OpenAI
    ViT-B-32 and LAION-2B ViT-B-32 embeddings have the same width but different spaces).
    """
    if spec.clip_model != clip_model or spec.dim != clip_dim:
        return False
    return clip_pretrained is None or clip_pretrained == spec.clip_pretrained


class EmbeddingHead:
    """A loaded head; build it with ``load_head``, which keeps one per process and file."""

    def __init__(self, spec: HeadSpec, module: torch.nn.Module, sha256: str) -> None:
        self.spec = spec
        self.module = module
        self.sha256 = sha256

    def score(self, embeddings: np.ndarray, batch_size: int = SCORE_BATCH_SIZE) -> np.ndarray:
        """(n, dim) L2-normalised embeddings -> (n,) float32 scores; NaN rows score NaN."""
        import torch

        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.spec.dim:
            got = f"{x.shape[1]}-d" if x.ndim == 2 else f"shape {x.shape}"
            raise ValueError(
                f"head {Path(self.spec.path).name} takes {self.spec.dim}-d embeddings of "
                f"{self.spec.clip_model}, got {got}; score it with that CLIP's embeddings"
            )
        _check_unit_norm(x, self.spec.path)
        out = np.empty(len(x), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                batch = torch.from_numpy(x[start : start + batch_size])
                out[start : start + len(batch)] = self.module(batch)[:, 0].numpy()
        return out

    def __repr__(self) -> str:
        return f"EmbeddingHead({self.spec.kind}, {self.spec.clip_model}, {self.spec.path})"


_cache: dict[tuple[str, int, int], EmbeddingHead] = {}
_cache_lock = threading.Lock()


def load_head(path: str | Path) -> EmbeddingHead:
    """The head in ``path``, loaded once per process (reloaded if the file is replaced)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"head file {path} does not exist; check the configured path")
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _cache_lock:
        head = _cache.get(key)
        if head is None:
            head = _cache[key] = _load(path)
    return head


def _load(path: Path) -> EmbeddingHead:
    data = path.read_bytes()
    state_dict = _read_state_dict(path)
    spec = _spec_of(path, state_dict)
    module = _build(spec)
    module.load_state_dict(state_dict, strict=True)
    module.eval()
    return EmbeddingHead(spec, module, hashlib.sha256(data).hexdigest())


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"head file {path} does not exist; check the configured path")
    try:
        # Some heads were saved from cuda:0; weights_only refuses anything but tensors.
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(
            f"head file {path} is not a torch state_dict ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise ValueError(f"head file {path} holds a {type(state_dict).__name__}, not a state_dict")
    return state_dict


def _spec_of(path: Path, state_dict: dict[str, Any]) -> HeadSpec:
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    kind, dim = _kind_and_dim(shapes)
    if kind is None:
        raise ValueError(
            f"head file {path} is none of the recognised LAION heads {KINDS} "
            f"(keys: {sorted(shapes)[:8]}); see dataplatform/core/scoring/embedding_heads.py"
        )
    clip_model = _clip_in_name(path.name)
    if clip_model is None:
        raise ValueError(
            f"head file {path}: cannot tell which CLIP it was trained on; put the CLIP in the "
            "file name as LAION does (e.g. vit_b_32, ViT-L-14, l14)"
        )
    if CLIP_WIDTHS[clip_model] != dim:
        raise ValueError(
            f"head file {path} is named for {clip_model} ({CLIP_WIDTHS[clip_model]}-d) but takes "
            f"{dim}-d embeddings; rename it after the CLIP it was trained on"
        )
    return HeadSpec(kind=kind, path=str(path), clip_model=clip_model, dim=dim)


def _kind_and_dim(shapes: dict[str, tuple[int, ...]]) -> tuple[str | None, int]:
    """Which published layout the shapes are, exactly, and its input width."""
    if set(shapes) == {"weight", "bias"}:
        weight, bias = shapes["weight"], shapes["bias"]
        if len(weight) == 2 and weight[0] == 1 and bias == (1,):
            return AESTHETIC_LINEAR, weight[1]
        return None, 0
    if set(shapes) == {f"layers.{i}.{p}" for i, _ in _MLP_LINEARS for p in ("weight", "bias")}:
        dim = shapes["layers.0.weight"][-1]
        widths = [dim] + [out for _, out in _MLP_LINEARS]
        expected = {}
        for n, (index, out) in enumerate(_MLP_LINEARS):
            expected[f"layers.{index}.weight"] = (out, widths[n])
            expected[f"layers.{index}.bias"] = (out,)
        if shapes == expected:
            return AESTHETIC_MLP, dim
        return None, 0
    mean = shapes.get("norm.mean")
    if mean is not None and len(mean) == 1 and mean[0] in _PR11_WIDTHS:
        dim = mean[0]
        widths = (dim, *_PR11_WIDTHS[dim])
        expected = {"norm.mean": (dim,), "norm.variance": (dim,)}
        for n in range(1, len(widths)):
            expected[f"linear_{n}.weight"] = (widths[n], widths[n - 1])
            expected[f"linear_{n}.bias"] = (widths[n],)
        if shapes == expected:
            return NSFW_PR11, dim
    return None, 0


def _clip_in_name(name: str) -> str | None:
    match = _CLIP_IN_NAME.search(name.lower())
    if match is None:
        return None
    family, patch = match.groups()
    model = f"ViT-{family.upper()}-{patch}"
    return model if model in CLIP_WIDTHS else None


def _build(spec: HeadSpec) -> torch.nn.Module:
    """The module whose state_dict keys and shapes are exactly those of ``spec``'s file."""
    from torch import nn

    if spec.kind == AESTHETIC_LINEAR:
        return nn.Linear(spec.dim, 1)
    if spec.kind == AESTHETIC_MLP:
        layers: list[nn.Module] = []
        width = spec.dim
        for index, out in _MLP_LINEARS:
            while len(layers) < index:
                layers.append(nn.Dropout(_MLP_DROPOUTS[len(layers)]))
            layers.append(nn.Linear(width, out))
            width = out
        return nn.Sequential(OrderedDict(layers=nn.Sequential(*layers)))
    if spec.kind == NSFW_PR11:
        parts: list[tuple[str, nn.Module]] = [("norm", _normalization_class()(spec.dim))]
        widths = (spec.dim, *_PR11_WIDTHS[spec.dim])
        for n in range(1, len(widths)):
            parts.append((f"linear_{n}", nn.Linear(widths[n - 1], widths[n])))
            last = n == len(widths) - 1
            parts.append((f"act_{n}", nn.Sigmoid() if last else nn.ReLU()))
            if _PR11_DROPOUT.get(spec.dim, (0, 0.0))[0] == n:
                parts.append(("dropout", nn.Dropout(_PR11_DROPOUT[spec.dim][1])))
        return nn.Sequential(OrderedDict(parts))
    raise ValueError(f"unknown head kind {spec.kind!r}; use one of {KINDS}")


@cache
def _normalization_class() -> type:
    """PR 11's Keras-style Normalization layer (defined lazily: it subclasses a torch class)."""
    import torch
    from torch import nn

    class Normalization(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(dim))
            self.register_buffer("variance", torch.ones(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - self.mean) / (self.variance.sqrt() + _PR11_EPSILON)

    return Normalization


def _check_unit_norm(x: np.ndarray, path: str) -> None:
    """Refuse raw (unnormalised) embeddings: every head here was trained on unit vectors."""
    finite = np.isfinite(x).all(axis=1)
    if not finite.any():
        return
    norms = np.linalg.norm(x[finite], axis=1)
    worst = norms[np.argmax(np.abs(norms - 1.0))]
    if abs(worst - 1.0) > _NORM_TOLERANCE:
        raise ValueError(
            f"head {Path(path).name} needs L2-normalised embeddings, but a row has norm "
            f"{worst:.4g}; divide each row by its L2 norm first"
        )
