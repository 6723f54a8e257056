"""quality_filtered: aesthetics, NSFW, watermark, OCR readability and technical quality."""

import dataclasses
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pyarrow as pa

from dataplatform.assets.clip_scored import EMBEDDINGS
from dataplatform.assets.clip_scored import KEY as CLIP_KEY
from dataplatform.assets.code_versions import code_version
from dataplatform.assets.partitions import daily_backfill_policy, daily_partitions
from dataplatform.assets.reporting import (
    finish_stage,
    for_each_day,
    open_stage_day,
    read_input,
    stage_checks,
    stage_specs,
    table_column,
)
from dataplatform.core.engine.chunk_map import ChunkRun
from dataplatform.core.records.plots import histogram_png, markdown_image
from dataplatform.core.scoring import scores as registry
from dataplatform.core.scoring.embedding_table import rows_for
from dataplatform.core.scoring.quality_rules import QualityThresholds, evaluate_table
from dataplatform.core.scoring.quality_scoring import score_names, score_on_engine
from dataplatform.core.store.schema import ledger_row, ledger_table
from dataplatform.core.store.warehouse import CorruptPartitionError, has_partition, read_partition
from dataplatform.resources.engine import EngineResource
from dataplatform.resources.quality import QualityResource
from dataplatform.resources.warehouse import WarehouseResource

STAGE = "quality_filtered"
KEY = dg.AssetKey(STAGE)
SCORES = "quality_scores"
CHECK_SCORE_RANGES = "scores_in_range"
_DEFAULTS = QualityThresholds()


def _quality_config() -> type[dg.Config]:
    """The run config: one field per ``QualityThresholds`` setting, with its default, + rescore.

    Derived, not copied, so that a new rule's threshold reaches the launchpad without editing
    this asset.
    """
    thresholds = {f.name: getattr(_DEFAULTS, f.name) for f in dataclasses.fields(QualityThresholds)}
    namespace = {
        "__module__": __name__,
        "__doc__": "Thresholds, applied to stored scores: change them and re-materialize to "
        "re-filter. `rescore` recomputes the scores even when this day's `quality_scores` are "
        "already stored.",
        "__annotations__": {**{k: type(v) for k, v in thresholds.items()}, "rescore": bool},
        **thresholds,
        "rescore": False,
    }
    return type("QualityConfig", (dg.Config,), namespace)


QualityConfig = _quality_config()


@dg.multi_asset(
    name=STAGE,
    specs=stage_specs(
        KEY,
        deps=[CLIP_KEY, dg.AssetKey(EMBEDDINGS)],
        description=(
            "Every quality score stored for every pair, then the quality thresholds applied."
        ),
        kinds={"onnx", "pytorch", "parquet"},
        code_version=code_version(__name__),
        group_name="curation",
        side_tables={
            SCORES: (
                "Every quality score of every pair scored that day; re-used when the "
                "thresholds change."
            )
        },
    ),
    partitions_def=daily_partitions,
    backfill_policy=daily_backfill_policy,
    pool="gpu",
    check_specs=stage_checks(
        KEY,
        {
            CHECK_SCORE_RANGES: (
                "every bounded quality score inside its declared range (scoring/scores)"
            )
        },
    ),
)
def quality_filtered(
    context: dg.AssetExecutionContext,
    config: QualityConfig,
    warehouse: WarehouseResource,
    quality: QualityResource,
    engine: EngineResource,
) -> Iterator[dg.MaterializeResult]:
    """Score aesthetics, NSFW, watermark, OCR and technical quality; drop what fails a threshold."""
    yield from for_each_day(
        context,
        KEY,
        lambda date: _materialize_day(context, config, warehouse, quality, engine, date),
    )


def _materialize_day(
    context: dg.AssetExecutionContext,
    config: QualityConfig,
    warehouse: WarehouseResource,
    quality: QualityResource,
    engine: EngineResource,
    date: str,
) -> list[dg.MaterializeResult]:
    """One day of ``quality_filtered``; ``for_each_day`` runs it for each day of the run."""
    day = open_stage_day(warehouse, STAGE, date)
    home, date = day.home, day.date
    current = read_input(home, CLIP_KEY.path[-1], date).sort_by("pair_id")
    ids = table_column(current, "pair_id")
    scores, notes = _stored_or_new_scores(home, date, current, quality, config.rescore)
    new_scores: dict[str, pa.Table] = {}
    # Stored scores re-used: nothing ran on the engine for this materialization.
    run = ChunkRun("reused scores", 0, 0, 0.0)
    if scores is None:
        vectors = rows_for(ids, read_input(home, EMBEDDINGS, date))
        scored = score_on_engine(
            current.to_pylist(),
            vectors,
            home.landing,
            quality.scorer_settings(_clip_identity(current)),
            quality.batch_size,
            engine.spec(),
            context.log.info,
        )
        scores, run = scored.table, scored.run
        notes = {**notes, **scored.notes}
        new_scores = {SCORES: scores}
    thresholds = QualityThresholds(
        **{f.name: getattr(config, f.name) for f in dataclasses.fields(QualityThresholds)}
    )
    keep, rejections = evaluate_table(scores, thresholds)

    kept = current
    for name in score_names():
        kept = kept.append_column(name, scores.column(name))
    kept = kept.filter(pa.array(keep))
    rows = current.to_pylist()
    ledger = ledger_table(
        [
            ledger_row(
                rows[k],
                STAGE,
                rejections[k][0].reason,
                rejections[k][0].detail,
                score=float(rejections[k][0].value),
                threshold=float(rejections[k][0].threshold),
            )
            for k in np.flatnonzero(~keep)
        ]
    )
    out_of_range = registry.out_of_range(scores, STAGE)
    errors = [e for e in table_column(scores, "scorer_errors") if e]
    extra = {
        "scorers_not_run": dg.MetadataValue.md(
            "\n".join(f"- **{k}**: {v}" for k, v in sorted(notes.items())) or "all scorers ran"
        ),
        "scorer_errors": len(errors),
        "histograms": dg.MetadataValue.md(_histograms(scores, thresholds)),
        **run.metadata(),
    }
    in_range = dg.AssetCheckResult(
        check_name=CHECK_SCORE_RANGES,
        passed=not out_of_range,
        metadata={"out_of_range": ", ".join(out_of_range) or "-"},
        description="every bounded quality score inside its declared range (scoring/scores)",
    )
    return finish_stage(
        day,
        current.num_rows,
        kept,
        ledger,
        side_tables=new_scores,
        metadata=extra,
        checks=[in_range],
    )


def _stored_or_new_scores(home, date, current, quality, rescore):
    """This day's stored scores when they cover exactly these pairs: thresholds re-apply free.

    Stored scores that cannot be read are computed again (and rewritten) rather than failing
    the stage, since re-materializing it is what rewrites them.
    """
    if rescore or not has_partition(home, SCORES, date):
        return None, {}
    try:
        stored = read_partition(home, SCORES, date).sort_by("pair_id")
    except CorruptPartitionError as exc:
        return None, {"(stored scores)": f"{exc.path} cannot be read: rescored"}
    if stored.column("pair_id").to_pylist() != current.column("pair_id").to_pylist():
        return None, {}
    unscored = [name for name in score_names() if name not in stored.column_names]
    if unscored:
        return None, {"(stored scores)": f"lack {', '.join(unscored)}: rescored"}
    return stored, {"(all)": "scores re-used from quality_scores; set rescore to recompute"}


def _clip_identity(current: pa.Table) -> dict[str, str]:
    """The CLIP identity `clip_scored` stamped on its rows ("k=v;k=v")."""
    if current.num_rows == 0 or "clip_model" not in current.column_names:
        return {}
    text = current.column("clip_model")[0].as_py() or ""
    return dict(part.split("=", 1) for part in text.split(";") if "=" in part)


def _histograms(scores: pa.Table, thresholds: QualityThresholds) -> str:
    parts = []
    for score in registry.scores(STAGE):
        if score.histogram is None:
            continue
        name = score.name
        values = [v for v in scores.column(name).to_pylist() if v is not None]
        if not values:
            parts.append(f"**{name}**: not scored")
            continue
        setting = score.histogram.threshold
        marker = None if setting is None else getattr(thresholds, setting)
        png = histogram_png(values, value_range=score.plot_range, title=name, marker=marker)
        parts.append(f"**{name}**\n\n{markdown_image(png, name)}")
    return "\n\n".join(parts)
