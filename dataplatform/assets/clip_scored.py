"""clip_scored: CLIP image-text similarity for every pair, then a relevance filter."""

from collections.abc import Iterator

import dagster as dg
import numpy as np
import pyarrow as pa

from dataplatform.assets.code_versions import code_version
from dataplatform.assets.partitions import daily_backfill_policy, daily_partitions
from dataplatform.assets.phash_deduped import KEY as PHASH_KEY
from dataplatform.assets.reporting import (
    finish_stage,
    for_each_day,
    open_stage_day,
    read_input,
    stage_checks,
    stage_specs,
    table_column,
)
from dataplatform.core.records.plots import histogram_png, markdown_image
from dataplatform.core.scoring.clip_model import embed_pairs
from dataplatform.core.scoring.embedding_table import vectors_column
from dataplatform.core.scoring.score_filter import (
    ABSOLUTE,
    DEFAULT_CLIP_THRESHOLD,
    DEFAULT_KEEP_TOP_PERCENT,
    PERCENTILE,
    ScoreMode,
    ScoreRule,
    cut_for,
    keep_mask,
)
from dataplatform.core.scoring.scores import score
from dataplatform.core.store.schema import ledger_row, ledger_table
from dataplatform.resources.clip import ClipResource
from dataplatform.resources.engine import EngineResource
from dataplatform.resources.warehouse import WarehouseResource

STAGE = "clip_scored"
KEY = dg.AssetKey(STAGE)
EMBEDDINGS = "embeddings"
CHECK_SCORE_RANGE = "clip_score_in_range"
CHECK_EMBEDDING_NORMS = "embeddings_unit_norm"
# The cosine's range is declared with the score: the histogram's axis and the range check.
_CLIP_SCORE = score("clip_score")
# A random smoke model's scores mean nothing: keep most pairs so the funnel after it is testable.
SMOKE_RULE = ScoreRule(mode=PERCENTILE, keep_top_percent=90.0)


class ClipScoreConfig(dg.Config):
    mode: ScoreMode = ABSOLUTE
    """`absolute` keeps clip_score >= threshold; `percentile` keeps the top share of the day."""
    threshold: float = DEFAULT_CLIP_THRESHOLD
    """Cosine of image and text embeddings; LAION-5B kept >= 0.28 with ViT-B/32."""
    keep_top_percent: float = DEFAULT_KEEP_TOP_PERCENT
    """Share kept in percentile mode (DataComp's CLIP-score baseline keeps the top 30%)."""


@dg.multi_asset(
    name=STAGE,
    specs=stage_specs(
        KEY,
        deps=[PHASH_KEY],
        description=(
            "CLIP image and text embeddings and their cosine for every pair, then a threshold."
        ),
        kinds={"pytorch", "parquet"},
        code_version=code_version(__name__),
        group_name="curation",
        side_tables={
            EMBEDDINGS: (
                "The image and text embeddings of every pair CLIP scored that day (read "
                "by quality_filtered and semantic_deduped)."
            )
        },
    ),
    partitions_def=daily_partitions,
    backfill_policy=daily_backfill_policy,
    pool="gpu",
    check_specs=stage_checks(
        KEY,
        {
            CHECK_SCORE_RANGE: "every clip_score is a cosine in [-1, 1]",
            CHECK_EMBEDDING_NORMS: "every stored image embedding has unit L2 norm",
        },
    ),
)
def clip_scored(
    context: dg.AssetExecutionContext,
    config: ClipScoreConfig,
    warehouse: WarehouseResource,
    clip: ClipResource,
    engine: EngineResource,
) -> Iterator[dg.MaterializeResult]:
    """Embed every pair, store the embeddings and the score, and drop pairs under the threshold."""
    yield from for_each_day(
        context, KEY, lambda date: _materialize_day(context, config, warehouse, clip, engine, date)
    )


def _materialize_day(
    context: dg.AssetExecutionContext,
    config: ClipScoreConfig,
    warehouse: WarehouseResource,
    clip: ClipResource,
    engine: EngineResource,
    date: str,
) -> list[dg.MaterializeResult]:
    """One day of ``clip_scored``; ``for_each_day`` runs it for each day of the run."""
    day = open_stage_day(warehouse, STAGE, date)
    home, date = day.home, day.date
    current = read_input(home, PHASH_KEY.path[-1], date).sort_by("pair_id")
    smoke = clip.is_smoke()
    rule = (
        SMOKE_RULE if smoke else ScoreRule(config.mode, config.threshold, config.keep_top_percent)
    )
    if smoke:
        context.log.warning(
            "DATAPLATFORM_PROFILE=smoke: the built-in test CLIP model scores meaninglessly; "
            f"threshold replaced by: {rule.describe()}"
        )
    pairs = embed_pairs(
        clip.spec(),
        table_column(current, "image_location"),
        table_column(current, "text"),
        home.landing,
        engine.spec(),
        context.log.info,
    )
    image_emb, errors, text_emb = pairs.image, pairs.errors, pairs.text
    scores = np.einsum("ij,ij->i", image_emb, text_emb).astype(np.float32)
    readable = np.array([e is None for e in errors], dtype=bool)
    cut = cut_for(scores[readable], rule)
    keep = readable & keep_mask(scores, cut)

    model_id = _identity_text(pairs.identity)
    embedded = current.filter(pa.array(readable))
    embeddings = pa.table(
        {
            "pair_id": embedded.column("pair_id"),
            "date": embedded.column("date"),
            "image_embedding": vectors_column(image_emb[readable]),
            "text_embedding": vectors_column(text_emb[readable]),
            "clip_score": pa.array(scores[readable]),
            "clip_model": pa.array([model_id] * embedded.num_rows, pa.string()),
        }
    )
    kept = (
        current.filter(pa.array(keep))
        .append_column("clip_score", pa.array(scores[keep]))
        .append_column("clip_model", pa.array([model_id] * int(keep.sum()), pa.string()))
    )
    rows = current.to_pylist()
    ledger = ledger_table(
        [
            ledger_row(rows[k], STAGE, "image_unreadable", errors[k])
            for k in np.flatnonzero(~readable)
        ]
        + [
            ledger_row(
                rows[k],
                STAGE,
                "low_clip_score",
                f"clip_score {scores[k]:.4f} < {cut:.4f} ({rule.describe()})",
                score=float(scores[k]),
                threshold=cut,
            )
            for k in np.flatnonzero(readable & ~keep)
        ]
    )
    norms = np.linalg.norm(image_emb[readable], axis=1) if readable.any() else np.ones(0)
    histogram = histogram_png(
        scores[readable], value_range=_CLIP_SCORE.plot_range, title="clip_score", marker=cut
    )
    extra = {
        "clip_model": model_id,
        "profile": "smoke (scores meaningless)" if smoke else "production",
        "rule": rule.describe(),
        "cut": float(cut),
        "score_histogram": dg.MetadataValue.md(markdown_image(histogram, "clip_score histogram")),
        **pairs.run.metadata(),
    }
    lo, hi = _CLIP_SCORE.value_range
    checks = [
        dg.AssetCheckResult(
            check_name=CHECK_SCORE_RANGE,
            passed=bool(np.all((scores[readable] >= lo - 1e-4) & (scores[readable] <= hi + 1e-4))),
            metadata={
                "min": float(scores[readable].min()) if readable.any() else 0.0,
                "max": float(scores[readable].max()) if readable.any() else 0.0,
            },
            description="every clip_score is a cosine in [-1, 1]",
        ),
        dg.AssetCheckResult(
            check_name=CHECK_EMBEDDING_NORMS,
            passed=bool(np.all(np.abs(norms - 1.0) < 1e-3)),
            metadata={"max_deviation": float(np.abs(norms - 1.0).max()) if norms.size else 0.0},
            description="every stored image embedding has unit L2 norm",
        ),
    ]
    side = {EMBEDDINGS: embeddings}
    return finish_stage(
        day,
        current.num_rows,
        kept,
        ledger,
        side_tables=side,
        metadata=extra,
        checks=checks,
    )


def _identity_text(identity: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(identity.items()))
