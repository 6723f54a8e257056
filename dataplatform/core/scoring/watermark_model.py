"""LAION's watermark detector (LAION-AI/LAION-5B-WatermarkDetection): architecture and scoring.

The model, as LAION's ``inference.py`` and ``example_use.py`` build it: timm's EfficientNet-B3
with ``num_classes=2``, whose classifier is then replaced by an MLP
Linear(1536,625) ReLU Dropout(0.3) Linear(625,256) ReLU Linear(256,2). ``watermark_model_v1.pt``
is a plain state_dict of that model, so a checkpoint of timm's bare ``efficientnet_b3`` (a single
``classifier`` Linear) does not load into it: the MLP is part of the format.

Choices, each with its source:

- ``efficientnet_b3`` rather than the ``efficientnet_b3a`` that LAION names: current timm maps
  the deprecated ``b3a`` name to ``efficientnet_b3`` with a warning; it was never a different
  architecture, only a different evaluation config, so the state_dict keys are the same.
- Preprocessing is LAION's, not timm's: ``resolve_data_config`` for this model says 288 px,
  bicubic, centre crop 0.875; LAION fine-tuned and ran the detector on a 256x256 bilinear resize
  of the whole image (aspect ratio not kept, no crop), then ImageNet mean/std, which are also
  timm's defaults. Images are first made 8-bit RGB, which LAION's JPEG-only inputs already were.
- The watermark class is index 0: ``inference.py`` writes ``softmax(out)[:, 0]`` to its
  ``P Watermark`` column and ``[:, 1]`` to ``P Clean``, and ``example_use.py`` unpacks
  ``water_sym, clear_sym``.

torch, torchvision and timm are imported inside functions: Dagster imports this module in every
step process.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from dataplatform.core.ingest.image_decode import eight_bit

if TYPE_CHECKING:
    import torch

SETTING = "watermark_checkpoint"
"""The configuration setting that names the checkpoint; errors name it."""
TIMM_ARCHITECTURE = "efficientnet_b3"
IMAGE_SIZE = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WATERMARK_CLASS = 0
BATCH_SIZE = 16
"""Images per forward pass; bounds the activations a worker holds at once."""


def build_watermark_model() -> torch.nn.Module:
    """LAION's watermark detector with random weights (nothing is downloaded)."""
    import timm
    from torch import nn

    model = timm.create_model(TIMM_ARCHITECTURE, pretrained=False, num_classes=2)
    model.classifier = nn.Sequential(
        nn.Linear(model.num_features, 625),
        nn.ReLU(),
        nn.Dropout(p=0.3),
        nn.Linear(625, 256),
        nn.ReLU(),
        nn.Linear(256, 2),
    )
    return model


def watermark_transform() -> Any:
    """8-bit RGB PIL image -> normalised (3, 256, 256) tensor, as LAION's inference does it."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize((IMAGE_SIZE, IMAGE_SIZE)),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class WatermarkScorer:
    """A loaded detector; build it with ``load_watermark``, which keeps one per process."""

    def __init__(self, model: torch.nn.Module, device: str, checkpoint: Path, sha256: str) -> None:
        self.model = model
        self.device = device
        self.checkpoint = checkpoint
        self.sha256 = sha256
        self.transform = watermark_transform()

    def score(self, images: Sequence[Image.Image], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """(n,) float32 probabilities in [0, 1] that each image carries a watermark."""
        import torch

        out = np.empty(len(images), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                batch = torch.stack([self.transform(_rgb(image)) for image in chunk])
                batch = batch.to(self.device)
                probs = torch.softmax(self.model(batch).float(), dim=1)[:, WATERMARK_CLASS]
                out[start : start + len(chunk)] = probs.cpu().numpy()
        return out

    def __repr__(self) -> str:
        return f"WatermarkScorer({self.checkpoint}, device={self.device})"


_cache: dict[tuple[str, int, int, str], WatermarkScorer] = {}
_cache_lock = threading.Lock()


def load_watermark(checkpoint: str | Path, device: str = "cpu") -> WatermarkScorer:
    """The detector with the weights in ``checkpoint``, loaded once per process and device."""
    path = Path(checkpoint).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"`{SETTING}` is {str(checkpoint)!r}, but {path} is not a file; point it at LAION's "
            "watermark_model_v1.pt (a state_dict of the LAION-5B-WatermarkDetection model)"
        )
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, device)
    with _cache_lock:
        scorer = _cache.get(key)
        if scorer is None:
            scorer = _cache[key] = _load(path, device)
    return scorer


def _load(path: Path, device: str) -> WatermarkScorer:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"watermark device is {device!r}, but torch sees no CUDA GPU; use cpu")
    data = path.read_bytes()
    state_dict = _read_state_dict(path)
    model = build_watermark_model()
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"`{SETTING}` {path} is not a state_dict of LAION's watermark detector "
            f"(efficientnet_b3 with the 1536-625-256-2 classifier): {_one_line(exc)}"
        ) from exc
    model.eval().to(device)
    return WatermarkScorer(model, device, path, hashlib.sha256(data).hexdigest())


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(
            f"`{SETTING}` {path} is not a torch checkpoint ({type(exc).__name__}: {_one_line(exc)})"
        ) from exc
    # v1 is a plain state_dict; LAION's later inference.py reads {"weights": state_dict}.
    if isinstance(loaded, dict) and isinstance(loaded.get("weights"), dict):
        loaded = loaded["weights"]
    if not isinstance(loaded, dict):
        raise ValueError(f"`{SETTING}` {path} holds a {type(loaded).__name__}, not a state_dict")
    # Saved from DistributedDataParallel, every key has this prefix.
    if loaded and all(key.startswith("module.") for key in loaded):
        loaded = {key.removeprefix("module."): value for key, value in loaded.items()}
    return loaded


def _rgb(image: Image.Image) -> Image.Image:
    return eight_bit(image).convert("RGB")


def _one_line(exc: BaseException) -> str:
    """torch's message on one line, cut short: a bad checkpoint lists hundreds of keys."""
    text = " ".join(str(exc).split())
    return (text[:400] + " ...") if len(text) > 400 else text or type(exc).__name__
