"""The image tokenizer as a Dagster resource: a configured VQ model, or the platform-trained one."""

from pathlib import Path

import dagster as dg

from dataplatform.core.tokens.vq_tokenizer import auto_device


class TokenizerResource(dg.ConfigurableResource):
    """Loads once per process. Empty `tokenizer_path` means the one `vq_tokenizer` trained."""

    tokenizer_path: str = ""
    """A tokenizer saved by this platform, or a diffusers `VQModel` directory (e.g. aMUSEd's)."""
    device: str = "auto"
    """`auto` (CUDA when present, fp16 autocast), `cuda` or `cpu`."""
    batch_size: int = 32

    def resolve_path(self, trained_dir: Path) -> Path:
        return Path(self.tokenizer_path).expanduser() if self.tokenizer_path else trained_dir

    def checked_path(self, trained_dir: Path) -> Path:
        """The configured tokenizer's path, else the one trained under ``trained_dir``."""
        path = self.resolve_path(trained_dir)
        if not path.exists():
            raise dg.Failure(
                f"no tokenizer at {path}: materialize `vq_tokenizer` first, or set the "
                "tokenizer resource's `tokenizer_path` to a saved tokenizer or a diffusers VQModel"
            )
        return path

    def load(self, trained_dir: Path):
        """The configured tokenizer, else the one trained under ``trained_dir``."""
        from dataplatform.core.tokens.vq_tokenizer import load_tokenizer

        return load_tokenizer(self.checked_path(trained_dir), auto_device(self.device))
