"""Every quality score of a partition, computed once and stored before any threshold.

The scorers are the ones registered for ``quality_filtered`` in ``scores``. Each image is read
and decoded once per batch and handed to every image scorer (technical, NudeNet, RapidOCR,
watermark); the embedding heads (aesthetic, CLIP-based NSFW) score the CLIP embeddings
`clip_scored` already stored; then the scorers that combine scores (NSFW) run. A scorer that
fails on one image leaves that score null and says why in `scorer_errors`; it never fails the
partition.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from dataplatform.core.engine.chunk_map import ChunkRun, map_chunks
from dataplatform.core.engine.engine_spec import EngineSpec
from dataplatform.core.engine.progress import Progress
from dataplatform.core.ingest.image_decode import decode_rgb
from dataplatform.core.ingest.image_store import read_location
from dataplatform.core.ingest.rejection import describe
from dataplatform.core.scoring import scores as registry
from dataplatform.core.scoring.scores import (
    EMBEDDINGS,
    IMAGES,
    QUALITY_STAGE,
    SCORES,
    Batch,
    Scorer,
    Unscored,
)

if TYPE_CHECKING:
    from dataplatform.core.scoring.embedding_heads import EmbeddingHead
    from dataplatform.core.scoring.nsfw_nudenet import NudeNetScorer
    from dataplatform.core.scoring.ocr_readability import OcrScorer
    from dataplatform.core.scoring.watermark_model import WatermarkScorer

# OCR wants a short side up to 736 px and the blur measure 512 px: decoding a camera JPEG at a
# reduced codec scale that keeps at least this size loses nothing either of them uses.
DECODE_DRAFT_SIZE = 1024
KEY_FIELDS = (
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("date", pa.string(), nullable=False),
)
ERRORS = registry.ERRORS.scores[0].name
PROGRESS_LABEL = "quality scores"


def scores_schema() -> pa.Schema:
    """The quality scores table: the keys, then every registered quality score."""
    return pa.schema(
        [*KEY_FIELDS, *(pa.field(s.name, s.type) for s in registry.scores(QUALITY_STAGE))]
    )


def score_names() -> list[str]:
    """The columns ``quality_filtered`` adds to each kept pair, in table order."""
    return [s.name for s in registry.scores(QUALITY_STAGE)]


@dataclass
class Scorers:
    """The loaded models; None where a scorer is switched off or has no weights."""

    nudenet: NudeNetScorer | None = None
    ocr: OcrScorer | None = None
    watermark: WatermarkScorer | None = None
    aesthetic: EmbeddingHead | None = None
    clip_nsfw: EmbeddingHead | None = None
    notes: dict[str, str] = field(default_factory=dict)  # scorer -> why it did not run


@dataclass(frozen=True)
class ScorerSettings:
    """Which scorers to load and from which files: plain values, so a Ray actor can load the
    same models from them as this process would."""

    use_nudenet: bool = True
    use_ocr: bool = True
    watermark_checkpoint: Path | None = None
    aesthetic_head: Path | None = None
    clip_nsfw_head: Path | None = None
    device: str = "cpu"
    clip: tuple[tuple[str, str], ...] = ()
    """The identity of the CLIP that made the embeddings (model, pretrained, dim)."""


def load_scorers(settings: ScorerSettings) -> Scorers:
    """The models ``settings`` name, each loaded once; a scorer that cannot run says why."""
    from dataplatform.core.scoring.embedding_heads import head_matches, load_head
    from dataplatform.core.scoring.nsfw_nudenet import load_nudenet
    from dataplatform.core.scoring.ocr_readability import load_ocr
    from dataplatform.core.scoring.watermark_model import load_watermark

    scorers = Scorers()
    scorers.nudenet = load_nudenet() if settings.use_nudenet else None
    if not settings.use_nudenet:
        scorers.notes["nsfw (NudeNet)"] = "switched off (use_nudenet=false)"
    scorers.ocr = load_ocr() if settings.use_ocr else None
    if not settings.use_ocr:
        scorers.notes["ocr (RapidOCR)"] = "switched off (use_ocr=false)"
    if settings.watermark_checkpoint is None:
        scorers.notes["watermark"] = "no `watermark_checkpoint` configured: watermark_score is null"
    else:
        scorers.watermark = load_watermark(settings.watermark_checkpoint, settings.device)
    clip = dict(settings.clip)
    for setting, attr, label in (
        ("aesthetic_head", "aesthetic", "aesthetic"),
        ("clip_nsfw_head", "clip_nsfw", "clip nsfw head"),
    ):
        path = getattr(settings, setting)
        if path is None:
            scorers.notes[label] = f"no `{setting}` configured: score is null"
            continue
        head = load_head(path)
        pretrained = clip.get("pretrained", "")
        tag = None if ("/" in pretrained or pretrained.endswith((".pt", ".bin"))) else pretrained
        if head_matches(head.spec, clip.get("model", ""), int(clip.get("dim", 0)), tag):
            setattr(scorers, attr, head)
        else:
            scorers.notes[label] = (
                f"`{setting}` {path.name} is for {head.spec.clip_model}/{head.spec.clip_pretrained}"
                f" ({head.spec.dim}-d); the embeddings are {clip.get('model')}/{pretrained} "
                f"({clip.get('dim')}-d): score is null"
            )
    return scorers


@dataclass(frozen=True)
class PartitionScores:
    """A day's scores in row order, why any scorer did not run, and where it was computed."""

    table: pa.Table
    notes: dict[str, str]
    run: ChunkRun


class _ChunkScorer:
    """The Ray engine's worker: loads the scorers once per actor, then scores chunk after chunk."""

    def __init__(self, settings: ScorerSettings, landing_root: Path, batch_size: int) -> None:
        self._scorers = load_scorers(settings)
        self._landing_root = landing_root
        self._batch_size = batch_size

    def __call__(self, chunk: tuple[Sequence[dict], np.ndarray]) -> tuple[pa.Table, dict[str, str]]:
        rows, embeddings = chunk
        table = score_partition(
            rows, embeddings, self._landing_root, self._scorers, self._batch_size
        )
        return table, self._scorers.notes


def score_on_engine(
    rows: Sequence[dict],
    embeddings: np.ndarray,
    landing_root: Path,
    settings: ScorerSettings,
    batch_size: int = 32,
    engine: EngineSpec | None = None,
    log: Callable[[str], None] | None = None,
) -> PartitionScores:
    """``score_partition`` with scorers loaded from ``settings``, on the engine.

    A chunk is a whole number of batches, and every score is a function of its own row (the
    combining scorers read the row's own scores), so the table is the same on either engine.
    Progress goes to ``log`` (the progress logger without it): images here, chunks on Ray.
    """
    engine = engine or EngineSpec()
    if not engine.is_ray or not rows:
        started = time.monotonic()
        scorers = load_scorers(settings)
        with Progress(PROGRESS_LABEL, len(rows), unit="images", log=log) as progress:
            table = score_partition(rows, embeddings, landing_root, scorers, batch_size, progress)
        run = ChunkRun("local", 1, 1, time.monotonic() - started)
        return PartitionScores(table, scorers.notes, run)
    size = math.ceil(engine.chunk_rows / batch_size) * batch_size
    chunks = [(rows[i : i + size], embeddings[i : i + size]) for i in range(0, len(rows), size)]
    parts, run = map_chunks(
        engine, partial(_ChunkScorer, settings, Path(landing_root), batch_size), chunks, log=log
    )
    return PartitionScores(pa.concat_tables([p[0] for p in parts]), parts[0][1], run)


def score_partition(
    rows: Sequence[dict],
    embeddings: np.ndarray,
    landing_root: Path,
    scorers: Scorers,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> pa.Table:
    """One row of scores per input row (same order), as ``scores_schema()``; ``progress`` is
    advanced by each batch's images once the image scorers have seen them."""
    schema = scores_schema()
    out: dict[str, list] = {name: [None] * len(rows) for name in schema.names}
    out["pair_id"] = [r["pair_id"] for r in rows]
    out["date"] = [r["date"] for r in rows]
    errors: list[list[str]] = [[] for _ in rows]
    loaded = []  # (scorer, its model) for every scorer that can run
    for scorer in registry.scorers(QUALITY_STAGE):
        model = _model(scorer, scorers)
        if scorer.compute is not None and (scorer.model is None or model is not None):
            loaded.append((scorer, model))
    for start in range(0, len(rows), batch_size):
        indices = range(start, min(start + batch_size, len(rows)))
        decoded, images = _decode(rows, indices, landing_root, errors)
        batch_rows = [rows[k] for k in decoded]
        for scorer, model in loaded:
            if scorer.reads == IMAGES:
                batch = Batch(batch_rows, images=images, model=model)
                _run(scorer, batch, decoded, out, errors)
        if progress is not None:
            progress.advance(len(indices))
    everyone = list(range(len(rows)))
    for scorer, model in loaded:
        if scorer.reads == EMBEDDINGS:
            batch = Batch(rows, embeddings=embeddings, model=model)
            _run(scorer, batch, everyone, out, errors)
    for scorer, model in loaded:
        if scorer.reads == SCORES:
            # A combining scorer sees what the image and embedding scorers wrote.
            written = {name: list(values) for name, values in out.items()}
            _run(scorer, Batch(rows, scores=written, model=model), everyone, out, errors)
    out[ERRORS] = ["; ".join(e) or None for e in errors]
    return pa.Table.from_pydict(out, schema=schema)


def _model(scorer: Scorer, scorers: Scorers) -> Any:
    if scorer.model is None:
        return None
    if not hasattr(scorers, scorer.model):
        raise ValueError(
            f"scorer {scorer.name} names the model {scorer.model!r}, which Scorers does not "
            "hold; name one of its fields or load nothing"
        )
    return getattr(scorers, scorer.model)


def _decode(rows, indices, landing_root, errors) -> tuple[list[int], list]:
    """The rows of ``indices`` that decode and their images; why the others did not, in errors."""
    decoded, images = [], []
    for k in indices:
        try:
            image = decode_rgb(
                read_location(rows[k]["image_location"], landing_root), DECODE_DRAFT_SIZE
            )
        except Exception as exc:  # noqa: BLE001 - one unreadable image is that row's problem
            errors[k].append(f"decode: {describe(exc)}")
            continue
        decoded.append(k)
        images.append(image)
    return decoded, images


def _run(scorer: Scorer, batch: Batch, keys: list[int], out: dict, errors: list) -> None:
    """``scorer`` over ``batch`` (rows ``keys`` of the partition), its results into ``out``."""
    if not keys:
        return
    assert scorer.compute is not None
    try:
        results = list(scorer.compute(batch))
    except Exception as exc:  # noqa: BLE001 - keep the other scores of the batch
        for k in keys:
            errors[k].append(f"{scorer.name}: {type(exc).__name__}: {exc}")
        return
    if len(results) != len(keys):
        raise ValueError(
            f"scorer {scorer.name} returned {len(results)} results for {len(keys)} rows; "
            "its compute function must return one per row"
        )
    declared = {s.name: s for s in scorer.scores}
    for k, result in zip(keys, results, strict=True):
        if isinstance(result, Unscored):
            errors[k].append(f"{scorer.name}: {result.reason}")
            continue
        undeclared = set(result) - set(declared)
        if undeclared:
            raise ValueError(
                f"scorer {scorer.name} wrote {sorted(undeclared)}, which it does not declare; "
                "add them to its scores"
            )
        for name, value in result.items():
            out[name][k] = _cell(declared[name].type, value)


def _cell(type_: pa.DataType, value: Any) -> Any:
    """A NaN float is a null: the scorer did not score that row."""
    if value is None or not pa.types.is_floating(type_):
        return value
    value = float(value)
    return None if math.isnan(value) else value
