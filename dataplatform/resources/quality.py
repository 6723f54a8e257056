"""The quality scorers as a Dagster resource: which models run, from which weights."""

from pathlib import Path

import dagster as dg

from dataplatform.core.scoring.quality_scoring import ScorerSettings


class QualityResource(dg.ConfigurableResource):
    """Small-model scorers for `quality_filtered`; each loads once per process.

    NudeNet and RapidOCR ship their ONNX models in their wheels, so they always run. The LAION
    aesthetic head, the LAION CLIP-based NSFW head and the LAION watermark detector need weight
    files; where none is configured their score is null and the metadata says so.
    """

    aesthetic_head: str = ""
    """A LAION aesthetic head (`sa_0_4_vit_b_32_linear.pth`, `sac+logos+ava1-l14-linearMSE.pth`)."""
    clip_nsfw_head: str = ""
    """Optional LAION CLIP-based NSFW head (PR 11 `clip_ViT-B-32_openai_binary_nsfw_head.pth`)."""
    watermark_checkpoint: str = ""
    """LAION watermark detector weights (`watermark_model_v1.pt`, efficientnet_b3a + its head)."""
    use_nudenet: bool = True
    use_ocr: bool = True
    device: str = "cpu"
    """`cpu` or `cuda` for the watermark model (the ONNX scorers run on CPU)."""
    batch_size: int = 32

    def configured_path(self, setting: str) -> Path | None:
        value = getattr(self, setting)
        if not value:
            return None
        path = Path(value).expanduser()
        if not path.is_file():
            raise dg.Failure(
                f"quality resource setting `{setting}` is {value!r}, which is not a file; "
                "give the path of the weights file, or leave it empty to skip that score"
            )
        return path

    def scorer_settings(self, clip_identity: dict[str, str]) -> ScorerSettings:
        """The settings with every weights file checked, for the embeddings of ``clip_identity``."""
        return ScorerSettings(
            use_nudenet=self.use_nudenet,
            use_ocr=self.use_ocr,
            watermark_checkpoint=self.configured_path("watermark_checkpoint"),
            aesthetic_head=self.configured_path("aesthetic_head"),
            clip_nsfw_head=self.configured_path("clip_nsfw_head"),
            device=self.device,
            clip=tuple(sorted(clip_identity.items())),
        )
