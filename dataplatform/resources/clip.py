"""The CLIP model as a Dagster resource: which weights, where to run them, how to batch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from dataplatform.core.scoring.clip_model import ClipSpec, load_encoder, smoke_spec
from dataplatform.core.store import profile
from dataplatform.core.store.home import resolve_home

if TYPE_CHECKING:
    from dataplatform.core.scoring.clip_model import ClipEncoder

MODELS_FOLDER = "models"


class ClipResource(dg.ConfigurableResource):
    """open_clip weights for image and text embeddings; under DATAPLATFORM_PROFILE=smoke, the
    small built-in test model instead, whatever `model` and `pretrained` say."""

    model: str = "ViT-B-32"
    """open_clip architecture; ViT-B-32 is the model LAION and DataComp filtered with."""
    pretrained: str = "laion2b_s34b_b79k"
    """open_clip tag (downloaded once into the Hugging Face cache) or a local checkpoint path."""
    device: str = "auto"
    """auto (CUDA when there is a GPU), cuda, cuda:N or cpu."""
    precision: str = "auto"
    """auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 (CUDA only) or bf16."""
    batch_size: int = 64
    num_workers: int = 2
    """Worker processes that read, decode and preprocess images while the model runs."""
    models_dir: str = ""
    """Where the smoke model's checkpoint is written; default `<DATAPLATFORM_HOME>/models`."""

    def is_smoke(self) -> bool:
        return profile.is_smoke()

    def spec(self) -> ClipSpec:
        configured = ClipSpec(
            model=self.model,
            pretrained=self.pretrained,
            device=self.device,
            precision=self.precision,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
        )
        if self.is_smoke():
            return smoke_spec(self.smoke_directory(), base=configured)
        return configured

    def smoke_directory(self) -> Path:
        return Path(self.models_dir) if self.models_dir else resolve_home().root / MODELS_FOLDER

    def encoder(self) -> ClipEncoder:
        """The loaded model, once per process; raises ClipWeightsUnavailable without weights."""
        return load_encoder(self.spec())
