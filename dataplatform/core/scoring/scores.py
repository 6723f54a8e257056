"""Every score a pair carries, declared once: its column, range, stage, plot and where it shows.

A ``Scorer`` registers the scores one stage writes and, for a quality scorer, the function that
computes them from a batch of decoded images, the CLIP embeddings or the other scores. Every
list of scores is read from here: the quality scores table and the columns ``quality_filtered``
keeps, its range check and histograms, the data cards, the review sheets and ``explain``. The
quality rules name the registered scores they cut (``quality_rules``), and a new scorer is one
registration (docs/architecture.md, "Add a scorer").

Computing a score and deciding on it stay apart, as in Data-Juicer's stats and filters: a scorer
writes columns before any threshold, so a threshold can change without scoring again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from dataplatform.core.scoring.technical_quality import technical_scores
from dataplatform.core.store.stages import STAGE_ORDER

if TYPE_CHECKING:
    from PIL import Image

CLIP_STAGE = "clip_scored"
QUALITY_STAGE = "quality_filtered"

# What a scorer's compute function reads (``Batch``).
IMAGES = "images"  # each row's decoded RGB image, one batch of rows at a time
EMBEDDINGS = "embeddings"  # each row's CLIP image embedding, the whole partition at once
SCORES = "scores"  # the columns the image and embedding scorers wrote, the whole partition
READS = (IMAGES, EMBEDDINGS, SCORES)

# Where a score is shown.
CARD = "card"  # a column of every pair's data card
DATASET_CARD = "dataset_card"  # summarised and plotted on the dataset card; a card column too
REVIEW = "review"  # on the kept thumbnails of a review sheet, and summarised over the kept rows
EXPLAIN = "explain"  # in `explain`, for the stage that kept the pair
PLACES = frozenset({CARD, DATASET_CARD, REVIEW, EXPLAIN})
EVERYWHERE = PLACES


@dataclass(frozen=True)
class Histogram:
    """A score's histogram in its stage's metadata, over the score's ``value_range``."""

    threshold: str | None = None
    """The ``QualityThresholds`` setting drawn as the marker, where a rule cuts this score."""


@dataclass(frozen=True)
class Score:
    """One column a scorer writes: a number, or the text that explains one (``type`` string)."""

    name: str
    type: pa.DataType = pa.float32()
    value_range: tuple[float, float] | None = None
    """Where the values lie: the axis of every plot of the score, and a check when ``bounded``."""
    bounded: bool = True
    """False where ``value_range`` is a scale, not a promise (a linear head can leave it)."""
    histogram: Histogram | None = None
    shown: frozenset[str] = frozenset()
    """``PLACES`` that show it; ``DATASET_CARD`` implies ``CARD``."""

    def __post_init__(self) -> None:
        unknown = set(self.shown) - PLACES
        if unknown:
            raise ValueError(
                f"score {self.name} is shown in {sorted(unknown)}; places are {sorted(PLACES)}"
            )
        numeric = pa.types.is_floating(self.type) or pa.types.is_integer(self.type)
        if not numeric and (
            self.value_range or self.histogram or {DATASET_CARD, REVIEW} & self.shown
        ):
            raise ValueError(
                f"score {self.name} is {self.type}: only a number has a range, a histogram "
                "or a place on the dataset card and review sheets"
            )
        shown = frozenset(self.shown) | ({CARD} if DATASET_CARD in self.shown else set())
        object.__setattr__(self, "shown", shown)

    @property
    def plot_range(self) -> tuple[float, float] | None:
        """``value_range`` where both ends are finite; None lets a plot span the data."""
        if self.value_range is None or not all(map(math.isfinite, self.value_range)):
            return None
        return self.value_range


@dataclass(frozen=True)
class Unscored:
    """One row a scorer could not score, and why: its columns stay null, the reason is kept."""

    reason: str


@dataclass(frozen=True)
class Batch:
    """What a compute function gets: ``rows`` and, by what it reads, one input per row."""

    rows: Sequence[Mapping[str, Any]]
    images: Sequence[Image.Image] = ()
    embeddings: np.ndarray | None = None
    scores: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
    model: Any = None
    """The loaded model the scorer names (``Scorer.model``), else None."""


Result = Mapping[str, Any] | Unscored
Compute = Callable[[Batch], Sequence[Result]]


@dataclass(frozen=True)
class Scorer:
    """The scores one stage writes, and how a quality scorer computes them.

    ``compute`` returns one result per row of its batch: a mapping from some of ``scores``'
    names to values (an absent name or a NaN is a null), or ``Unscored``. An exception costs
    the batch its scores and names the scorer in ``scorer_errors``, never the partition. A
    scorer without ``reads`` and ``compute`` is written by its stage's own code (CLIP's cosine,
    the errors column). A scorer naming a ``model`` (an attribute of ``quality_scoring.Scorers``)
    is skipped where that model is not loaded, and gets it as ``batch.model``.
    """

    name: str
    stage: str
    scores: tuple[Score, ...]
    reads: str | None = None
    compute: Compute | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if self.stage not in STAGE_ORDER:
            raise ValueError(
                f"scorer {self.name}: stage {self.stage!r} is not one of {STAGE_ORDER}"
            )
        if (self.reads is None) != (self.compute is None):
            raise ValueError(f"scorer {self.name}: give both reads and compute, or neither")
        if self.reads is not None and self.reads not in READS:
            raise ValueError(f"scorer {self.name}: reads {self.reads!r}, not one of {READS}")
        if not self.scores:
            raise ValueError(f"scorer {self.name} declares no score")


_registry: dict[str, Scorer] = {}


def register(scorer: Scorer) -> Scorer:
    """Add ``scorer``; every list of scores shows its scores from now on, after the others."""
    if scorer.name in _registry:
        raise ValueError(f"a scorer named {scorer.name} is registered already; unregister it first")
    taken = {s.name for s in scores()}
    clash = [s.name for s in scorer.scores if s.name in taken]
    if clash or len({s.name for s in scorer.scores}) != len(scorer.scores):
        raise ValueError(
            f"scorer {scorer.name}: score names {clash or 'repeated'} already declared"
        )
    _registry[scorer.name] = scorer
    return scorer


def unregister(name: str) -> None:
    """Remove the scorer ``name`` (a test's, at teardown)."""
    if _registry.pop(name, None) is None:
        raise KeyError(f"no scorer named {name}; registered: {', '.join(_registry)}")


def scorers(stage: str | None = None) -> tuple[Scorer, ...]:
    """The registered scorers (of ``stage``), in registration order."""
    return tuple(s for s in _registry.values() if stage is None or s.stage == stage)


def scores(stage: str | None = None, shown: str | None = None) -> tuple[Score, ...]:
    """Every registered score (of ``stage``, shown in ``shown``), in registration order."""
    return tuple(
        score
        for scorer in scorers(stage)
        for score in scorer.scores
        if shown is None or shown in score.shown
    )


def score(name: str) -> Score:
    """The registered score ``name``."""
    for candidate in scores():
        if candidate.name == name:
            return candidate
    raise KeyError(f"no score named {name}; registered: {', '.join(s.name for s in scores())}")


def out_of_range(table: pa.Table, stage: str) -> list[str]:
    """``stage``'s bounded scores in ``table`` with a value outside their range, and that range."""
    bad = []
    for declared in scores(stage):
        if declared.value_range is None or not declared.bounded:
            continue
        lo, hi = declared.value_range
        values = table.column(declared.name).drop_null().to_numpy().astype(np.float64)
        if values.size and (values.min() < lo - 1e-6 or values.max() > hi + 1e-6):
            bad.append(f"{declared.name} [{values.min():.3g}, {values.max():.3g}]")
    return bad


# --- the built-in scorers ---------------------------------------------------------------------

_PROBABILITY = (0.0, 1.0)
_SHARE = (0.0, 1.0)


def _technical(batch: Batch) -> list[Result]:
    # width and height are the original size; the image may be a reduced draft decode.
    return [
        dataclasses.asdict(technical_scores(image, row["width"], row["height"]))
        for image, row in zip(batch.images, batch.rows, strict=True)
    ]


def _nudenet(batch: Batch) -> list[Result]:
    return [
        Unscored(detections)
        if math.isnan(value)
        else {"nudenet_score": value, "nudenet_detections": detections}
        for value, detections in batch.model.score(batch.images)
    ]


def _ocr(batch: Batch) -> list[Result]:
    return [
        Unscored(r.error)
        if r.error
        else {
            "ocr_text": r.text,
            "ocr_text_area": r.text_area,
            "ocr_confidence": r.confidence,
            "ocr_lines": r.lines,
        }
        for r in batch.model.read(batch.images)
    ]


def _watermark(batch: Batch) -> list[Result]:
    return [{"watermark_score": value} for value in batch.model.score(batch.images)]


def _head(column: str) -> Compute:
    def compute(batch: Batch) -> list[Result]:
        return [{column: value} for value in batch.model.score(batch.embeddings)]

    return compute


def _nsfw(batch: Batch) -> list[Result]:
    # Either detector alone can flag an image: the stricter of the two is the score.
    pairs = zip(batch.scores["nudenet_score"], batch.scores["clip_nsfw_score"], strict=True)
    return [{"nsfw_score": max([v for v in pair if v is not None], default=None)} for pair in pairs]


CLIP = register(
    Scorer(
        "clip",
        CLIP_STAGE,
        (
            Score("clip_score", value_range=(-1.0, 1.0), shown=EVERYWHERE),
            Score("clip_model", pa.string(), shown=frozenset({CARD, EXPLAIN})),
        ),
    )
)
# Column order of the quality scores table: aesthetic, NSFW and its two detectors, watermark,
# OCR, technical; the errors column last.
AESTHETIC = register(
    Scorer(
        "aesthetic",
        QUALITY_STAGE,
        (
            # The LAION heads regress onto the 1-10 rating scale; nothing holds them inside it.
            Score(
                "aesthetic_score",
                value_range=(1.0, 10.0),
                bounded=False,
                histogram=Histogram("min_aesthetic"),
                shown=EVERYWHERE,
            ),
        ),
        EMBEDDINGS,
        _head("aesthetic_score"),
        model="aesthetic",
    )
)
NSFW = register(
    Scorer(
        "nsfw",
        QUALITY_STAGE,
        (
            Score(
                "nsfw_score",
                value_range=_PROBABILITY,
                histogram=Histogram("max_nsfw"),
                shown=EVERYWHERE,
            ),
        ),
        SCORES,
        _nsfw,
    )
)
NUDENET = register(
    Scorer(
        "nudenet",
        QUALITY_STAGE,
        (
            Score("nudenet_score", value_range=_PROBABILITY),
            Score("nudenet_detections", pa.string()),
        ),
        IMAGES,
        _nudenet,
        model="nudenet",
    )
)
CLIP_NSFW = register(
    Scorer(
        "clip_nsfw",
        QUALITY_STAGE,
        (Score("clip_nsfw_score", value_range=_PROBABILITY),),
        EMBEDDINGS,
        _head("clip_nsfw_score"),
        model="clip_nsfw",
    )
)
WATERMARK = register(
    Scorer(
        "watermark",
        QUALITY_STAGE,
        (
            Score(
                "watermark_score",
                value_range=_PROBABILITY,
                histogram=Histogram("max_watermark"),
                shown=EVERYWHERE,
            ),
        ),
        IMAGES,
        _watermark,
        model="watermark",
    )
)
OCR = register(
    Scorer(
        "ocr",
        QUALITY_STAGE,
        (
            Score("ocr_text", pa.string(), shown=frozenset({CARD, EXPLAIN})),
            Score(
                "ocr_text_area",
                value_range=_SHARE,
                histogram=Histogram("ocr_text_area_for_text_images"),
                shown=EVERYWHERE,
            ),
            Score("ocr_confidence", value_range=_PROBABILITY, shown=EVERYWHERE),
            Score("ocr_lines", pa.int32()),
        ),
        IMAGES,
        _ocr,
        model="ocr",
    )
)
TECHNICAL = register(
    Scorer(
        "technical",
        QUALITY_STAGE,
        (
            Score("shortest_side", pa.int32(), shown=frozenset({CARD, REVIEW, EXPLAIN})),
            Score(
                "aspect_ratio",
                value_range=(1.0, math.inf),
                shown=frozenset({CARD, REVIEW, EXPLAIN}),
            ),
            Score("blur_variance", histogram=Histogram("min_blur_variance"), shown=EVERYWHERE),
            Score(
                "clipped_fraction",
                value_range=_SHARE,
                histogram=Histogram("max_clipped_fraction"),
                shown=EVERYWHERE,
            ),
        ),
        IMAGES,
        _technical,
    )
)
ERRORS = register(
    Scorer(
        "scorer_errors",
        QUALITY_STAGE,
        # Written by quality_scoring itself: why each null score of the row is null.
        (Score("scorer_errors", pa.string(), shown=frozenset({EXPLAIN})),),
    )
)
