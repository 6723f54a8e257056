"""CLIP image and text embeddings with open_clip: loading the weights, and batched encoding.

One ``ClipEncoder`` per process and spec (``load_encoder`` caches it): loading a model costs
seconds and hundreds of megabytes, so a stage loads it once and streams every batch through it.
Images are read, decoded and preprocessed in DataLoader worker processes so that the model never
waits for Pillow; an image that cannot be read or decoded becomes a NaN row and an error string,
never a failed batch.

Real weights come from open_clip's download cache (a tag) or a local checkpoint file (a path);
both go through ``open_clip.create_model_and_transforms``. The smoke model (a tiny, seeded,
random CLIP built here and saved to a file) goes through the same call, so the tests exercise
the loading path production uses.

torch and open_clip are imported inside functions: Dagster imports this module in every step
process, and those must start in seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import UnidentifiedImageError

from dataplatform.core.engine.chunk_map import ChunkRun, map_chunks
from dataplatform.core.engine.engine_spec import EngineSpec
from dataplatform.core.engine.progress import Progress
from dataplatform.core.ingest.image_decode import decode_rgb
from dataplatform.core.ingest.image_store import read_location
from dataplatform.core.ingest.rejection import describe

if TYPE_CHECKING:
    import torch

SMOKE_MODEL_NAME = "dataplatform-smoke-clip"
SMOKE_CHECKPOINT = f"{SMOKE_MODEL_NAME}.pt"
SMOKE_CONFIG = f"{SMOKE_MODEL_NAME}.json"
# Fixed so that every home builds the same smoke weights and smoke embeddings are reproducible.
SMOKE_SEED = 20250101
# A CLIP small enough to build, save and run in well under a second on one CPU core, with the
# standard tokenizer (vocabulary 49408, context 77) so that texts go through the real path.
SMOKE_MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_SCHEMA_PREFIXES = ("hf-hub:", "local-dir:")
IMAGE_PROGRESS_LABEL = "CLIP image embeddings"
TEXT_PROGRESS_LABEL = "CLIP text embeddings"


class ClipWeightsUnavailable(RuntimeError):
    """The configured CLIP weights cannot be loaded on this machine (missing file, no network)."""


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP to load and how to run it; hashable, so it keys the per-process cache."""

    model: str = "ViT-B-32"
    """An open_clip architecture name (``open_clip.list_models()``)."""
    pretrained: str = "laion2b_s34b_b79k"
    """An open_clip tag for ``model``, or the path of a local checkpoint file."""
    device: str = "auto"
    """auto (CUDA when there is a GPU), cuda, cuda:N or cpu."""
    precision: str = "auto"
    """auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 (CUDA only) or bf16."""
    batch_size: int = 64
    num_workers: int = 2
    """DataLoader worker processes that read, decode and preprocess images; 0 decodes inline."""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("`model` of the `clip` resource is empty; name an open_clip model")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(
                f"`device` of the `clip` resource is {self.device!r}; use one of {DEVICES} "
                "or cuda:N"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"`precision` of the `clip` resource is {self.precision!r}; use one of {PRECISIONS}"
            )
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` of the `clip` resource is {self.batch_size}; use >= 1")
        if self.num_workers < 0:
            raise ValueError(
                f"`num_workers` of the `clip` resource is {self.num_workers}; use >= 0"
            )


@dataclass(frozen=True)
class EmbedStats:
    """Timing of one ``embed_images`` call: where the time went."""

    images: int
    seconds: float
    loader_wait_seconds: float
    """Time the model sat blocked on the DataLoader (reading, decoding, worker start-up)."""

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def loader_wait_share(self) -> float:
        return self.loader_wait_seconds / self.seconds if self.seconds > 0 else 0.0


def build_smoke_checkpoint(directory: Path) -> Path:
    """The smoke model's checkpoint in ``directory``, built with a fixed seed if not there yet.

    Also registers the smoke architecture with open_clip (in this process), so that
    ``create_model_and_transforms(SMOKE_MODEL_NAME, pretrained=<this path>)`` works.
    """
    import open_clip
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _register_smoke_config(directory)
    path = directory / SMOKE_CHECKPOINT
    if path.is_file():
        return path
    # fork_rng: seeding must not change the random stream of whoever called us.
    # open_clip logs "initialized randomly" here: that is the point of the smoke model.
    with torch.random.fork_rng(devices=[]), _quiet_logging():
        torch.manual_seed(SMOKE_SEED)
        model = open_clip.create_model(SMOKE_MODEL_NAME, pretrained=None, device="cpu")
    # Written aside and renamed: step processes of one run may build it at the same time.
    fd, partial = tempfile.mkstemp(dir=directory, prefix=f".{SMOKE_CHECKPOINT}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(model.state_dict(), fh)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return path


@contextlib.contextmanager
def _quiet_logging(level: int = logging.WARNING) -> Iterator[None]:
    """Silence log records up to ``level`` from libraries we call, for the duration."""
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def smoke_spec(directory: Path, base: ClipSpec | None = None) -> ClipSpec:
    """``base`` (default settings if None) with the smoke model, built in ``directory``."""
    return replace(
        base or ClipSpec(),
        model=SMOKE_MODEL_NAME,
        pretrained=str(build_smoke_checkpoint(directory)),
    )


class ClipEncoder:
    """A loaded CLIP model with its preprocessing and tokenizer; embeds images and texts.

    Build it with ``load_encoder``. ``model`` and ``preprocess`` are open_clip's own objects.
    """

    def __init__(
        self,
        spec: ClipSpec,
        model: torch.nn.Module,
        preprocess: Any,
        tokenizer: Any,
        device: str,
        precision: str,
        dim: int,
        identity: dict[str, str],
    ) -> None:
        import torch

        self.spec = spec
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision
        self.dtype_name = _TORCH_DTYPES[precision]
        self.dim = dim
        self.identity = identity
        self.last_stats: EmbedStats | None = None
        self._dtype = getattr(torch, self.dtype_name)
        size = getattr(model.visual, "image_size", 224)
        self._draft_size = max(size) if isinstance(size, tuple | list) else int(size)

    def __repr__(self) -> str:
        return f"ClipEncoder({self.spec.model!r}, {self.spec.pretrained!r}, {self.device})"

    def embed_images(
        self, locations: Sequence[str], landing_root: Path, progress: Progress | None = None
    ) -> tuple[np.ndarray, list[str | None]]:
        """(n, dim) float32 unit rows in input order, and an error (or None) per location.

        A location that cannot be read gives "read_error: ..." and one that cannot be decoded
        gives "decode_error: ..."; its row is NaN, so that every other row is still usable.
        ``progress`` is advanced by each batch's images.
        """
        import torch
        import torch.nn.functional as F
        from torch.utils.data import DataLoader

        n = len(locations)
        embeddings = np.full((n, self.dim), np.nan, dtype=np.float32)
        errors: list[str | None] = [None] * n
        started = time.perf_counter()
        waited = 0.0
        if n:
            # Workers beyond the number of batches would only be forked to sit idle.
            workers = min(self.spec.num_workers, math.ceil(n / self.spec.batch_size))
            loader = DataLoader(
                _ImageDataset(
                    list(locations), Path(landing_root), self.preprocess, self._draft_size
                ),
                batch_size=self.spec.batch_size,
                num_workers=workers,
                collate_fn=_collate,
                pin_memory=self.device.startswith("cuda"),
            )
            with torch.inference_mode():
                batches = iter(loader)
                while True:
                    t0 = time.perf_counter()
                    batch = next(batches, None)
                    waited += time.perf_counter() - t0
                    if batch is None:
                        break
                    indices, pixels, failures = batch
                    for index, error in failures:
                        errors[index] = error
                    if pixels is not None:
                        pixels = pixels.to(self.device, dtype=self._dtype, non_blocking=True)
                        features = self.model.encode_image(pixels)
                        # .cpu() waits for the GPU, so the next wait above is time it sits idle.
                        embeddings[indices] = F.normalize(features.float(), dim=-1).cpu().numpy()
                    if progress is not None:
                        progress.advance(len(indices) + len(failures))
        self.last_stats = EmbedStats(n, time.perf_counter() - started, waited)
        return embeddings, errors

    def embed_texts(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """(n, dim) float32 unit rows in input order; texts longer than the context are cut.

        ``progress`` is advanced by each batch's texts."""
        import torch
        import torch.nn.functional as F

        embeddings = np.empty((len(texts), self.dim), dtype=np.float32)
        size = self.spec.batch_size
        with torch.inference_mode():
            for start in range(0, len(texts), size):
                tokens = self.tokenizer(list(texts[start : start + size])).to(self.device)
                features = self.model.encode_text(tokens)
                embeddings[start : start + size] = F.normalize(features.float(), dim=-1).cpu()
                if progress is not None:
                    progress.advance(len(tokens))
        return embeddings


_ENCODERS: dict[ClipSpec, ClipEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def load_encoder(spec: ClipSpec) -> ClipEncoder:
    """The encoder for ``spec``, loaded on the first call in this process and cached."""
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(spec)
        if encoder is None:
            encoder = _ENCODERS[spec] = _load(spec)
        return encoder


@dataclass(frozen=True)
class PairEmbeddings:
    """A day's image and text embeddings, in row order, and where they were computed."""

    image: np.ndarray
    errors: list[str | None]
    text: np.ndarray
    identity: dict[str, str]
    run: ChunkRun


class _ChunkEmbedder:
    """The Ray engine's worker: loads the model once per actor, then embeds chunk after chunk."""

    def __init__(self, spec: ClipSpec, landing_root: Path) -> None:
        self._encoder = load_encoder(spec)
        self._landing_root = landing_root

    def __call__(
        self, chunk: tuple[Sequence[str], Sequence[str]]
    ) -> tuple[np.ndarray, list[str | None], np.ndarray, dict[str, str]]:
        locations, texts = chunk
        image, errors = self._encoder.embed_images(locations, self._landing_root)
        return image, errors, self._encoder.embed_texts(texts), self._encoder.identity


def embed_pairs(
    spec: ClipSpec,
    locations: Sequence[str],
    texts: Sequence[str],
    landing_root: Path,
    engine: EngineSpec | None = None,
    log: Any = None,
) -> PairEmbeddings:
    """Image and text embeddings for every pair, on the engine (local: this process's encoder).

    On Ray each actor loads the model once and takes a GPU when the cluster has them. Chunks are
    a whole number of batches, so each image meets the same batch companions as on the local
    engine and the embeddings are the same numbers. Progress goes to ``log`` (the progress
    logger without it): images and texts here, chunks on Ray.
    """
    engine = engine or EngineSpec()
    if not engine.is_ray or not locations:
        started = time.monotonic()
        encoder = load_encoder(spec)
        with Progress(IMAGE_PROGRESS_LABEL, len(locations), unit="images", log=log) as progress:
            image, errors = encoder.embed_images(locations, landing_root, progress)
        with Progress(TEXT_PROGRESS_LABEL, len(texts), unit="texts", log=log) as progress:
            text = encoder.embed_texts(texts, progress)
        run = ChunkRun("local", 1, 1, time.monotonic() - started)
        return PairEmbeddings(image, errors, text, encoder.identity, run)
    size = math.ceil(engine.chunk_rows / spec.batch_size) * spec.batch_size
    chunks = [
        (locations[i : i + size], texts[i : i + size]) for i in range(0, len(locations), size)
    ]
    parts, run = map_chunks(
        engine, partial(_ChunkEmbedder, spec, Path(landing_root)), chunks, gpu=True, log=log
    )
    return PairEmbeddings(
        image=np.concatenate([p[0] for p in parts]),
        errors=[e for p in parts for e in p[1]],
        text=np.concatenate([p[2] for p in parts]),
        identity=parts[0][3],
        run=run,
    )


def clip_scores(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Row-wise cosine of unit image and text embeddings (NaN where an image row is NaN)."""
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image embeddings {image_emb.shape} and text embeddings {text_emb.shape} "
            "must have the same shape: one row per pair"
        )
    return np.einsum(
        "ij,ij->i",
        image_emb.astype(np.float32, copy=False),
        text_emb.astype(np.float32, copy=False),
    )


def _load(spec: ClipSpec) -> ClipEncoder:
    if spec.model.startswith(_SCHEMA_PREFIXES):
        # open_clip ignores `pretrained` for these, which would make the setting lie.
        raise ValueError(_unknown_model_message(spec.model))
    checkpoint = _checkpoint_file(spec)

    import open_clip
    import torch

    if spec.model == SMOKE_MODEL_NAME:
        if checkpoint is None:
            raise _weights_unavailable(
                f"`pretrained` of the `clip` resource is {spec.pretrained!r}, but the smoke "
                "model has no published weights, only the file build_smoke_checkpoint() writes"
            )
        _register_smoke_config(checkpoint.parent)
    if spec.model not in open_clip.list_models():
        raise ValueError(_unknown_model_message(spec.model))
    if checkpoint is None and spec.pretrained not in (
        tags := open_clip.list_pretrained_tags_by_model(spec.model)
    ):
        raise _weights_unavailable(
            f"`pretrained` of the `clip` resource is {spec.pretrained!r}, which is neither a "
            f"file nor an open_clip tag of {spec.model} (its tags: {', '.join(tags) or 'none'})"
        )
    device = _resolve_device(spec.device, torch)
    precision = _resolve_precision(spec.precision, device)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model,
            pretrained=str(checkpoint) if checkpoint else spec.pretrained,
            precision=precision,
            device=device,
        )
        tokenizer = open_clip.get_tokenizer(spec.model)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loading failure means the weights are unusable
        cause = f"{type(exc).__name__}: {exc}"
        if checkpoint is not None:
            tried = (
                f"`pretrained` of the `clip` resource is the file {str(checkpoint)!r}, which "
                f"open_clip could not load as a {spec.model} checkpoint ({cause})"
            )
        else:
            tried = (
                f"`pretrained` of the `clip` resource is the open_clip tag {spec.pretrained!r} "
                f"of {spec.model}, which could not be loaded ({cause}); without network access "
                "its weights must already be in the Hugging Face cache (HF_HOME)"
            )
        raise _weights_unavailable(tried) from exc
    model.eval()
    dim = int(open_clip.get_model_config(spec.model)["embed_dim"])
    identity = {
        "model": spec.model,
        "pretrained": spec.pretrained,
        "checkpoint_sha256": _sha256_of(checkpoint) if checkpoint else "",
        "dim": str(dim),
        "device": device,
        "precision": precision,
        "smoke": "true" if spec.model == SMOKE_MODEL_NAME else "false",
    }
    return ClipEncoder(spec, model, preprocess, tokenizer, device, precision, dim, identity)


def _unknown_model_message(model: str) -> str:
    return (
        f"`model` of the `clip` resource is {model!r}, which is not an open_clip architecture "
        "name; use one of open_clip.list_models(), e.g. ViT-B-32, ViT-B-16 or ViT-L-14"
    )


def _checkpoint_file(spec: ClipSpec) -> Path | None:
    """The local checkpoint ``pretrained`` names, None for a tag; raises if the file is missing."""
    value = spec.pretrained.strip()
    if not value:
        raise _weights_unavailable(
            "`pretrained` of the `clip` resource is empty, and a random model is no model"
        )
    path = Path(value).expanduser()
    if path.is_file():
        return path.resolve()
    if "/" in value or os.sep in value or value.endswith(_CHECKPOINT_SUFFIXES):
        raise _weights_unavailable(
            f"`pretrained` of the `clip` resource is the path {value!r}, and no file exists there"
        )
    return None


def _weights_unavailable(tried: str) -> ClipWeightsUnavailable:
    """The error for unusable weights: what was tried, then how to supply weights."""
    return ClipWeightsUnavailable(
        f"CLIP weights unavailable: {tried}. To fix: run once where open_clip can download the "
        "tag so it is cached, or copy the checkpoint file (e.g. open_clip_pytorch_model.bin) to "
        "this machine and set `pretrained` of the `clip` resource to its local path. For tests "
        "or an offline demo, set DATAPLATFORM_PROFILE=smoke to use the small built-in test model."
    )


def _resolve_device(device: str, torch: Any) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"`device` of the `clip` resource is {device!r}, but torch sees no CUDA GPU here; "
            "use auto or cpu"
        )
    return device


def _resolve_precision(precision: str, device: str) -> str:
    on_gpu = device.startswith("cuda")
    if precision == "auto":
        return "fp16" if on_gpu else "fp32"
    if precision == "fp16" and not on_gpu:
        raise ValueError(
            "`precision` of the `clip` resource is fp16, which CPUs run slowly or not at all; "
            "use auto, fp32 or bf16 on cpu"
        )
    return precision


def _register_smoke_config(directory: Path) -> None:
    """Make SMOKE_MODEL_NAME an open_clip architecture in this process (a JSON in directory)."""
    import open_clip

    if SMOKE_MODEL_NAME in open_clip.list_models():
        return
    path = directory / SMOKE_CONFIG
    text = json.dumps(SMOKE_MODEL_CONFIG, indent=2, sort_keys=True)
    if not path.is_file() or path.read_text() != text:
        fd, partial = tempfile.mkstemp(dir=directory, prefix=f".{SMOKE_CONFIG}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(partial, path)
    open_clip.add_model_config(path)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _ImageDataset:
    """Map-style dataset (the protocol DataLoader needs): (index, pixels or None, error or None)."""

    def __init__(
        self, locations: list[str], landing_root: Path, preprocess: Any, draft_size: int
    ) -> None:
        self.locations = locations
        self.landing_root = landing_root
        self.preprocess = preprocess
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        try:
            data = read_location(self.locations[index], self.landing_root)
        except (OSError, ValueError) as exc:
            return index, None, f"read_error: {describe(exc)}"
        try:
            pixels = self.preprocess(decode_rgb(data, self.draft_size))
        except UnidentifiedImageError:
            return index, None, f"decode_error: not an image (bytes start {data[:8]!r})"
        except Exception as exc:  # noqa: BLE001 - a hostile image must not fail the batch
            return index, None, f"decode_error: {type(exc).__name__}: {exc}"
        return index, pixels, None


def _collate(items: list[tuple[int, Any, str | None]]) -> tuple[list[int], Any, list]:
    """Stack the decoded images; pass failures through as (index, error) pairs."""
    import torch

    decoded = [(index, pixels) for index, pixels, _ in items if pixels is not None]
    failures = [(index, error) for index, pixels, error in items if pixels is None]
    stacked = torch.stack([pixels for _, pixels in decoded]) if decoded else None
    return [index for index, _ in decoded], stacked, failures
