"""semantic_deduped: near-identical images by CLIP embedding, found with FAISS, global."""

from collections import Counter
from collections.abc import Iterator
from typing import Literal, get_args

import dagster as dg
import numpy as np
import pyarrow as pa

from dataplatform.assets.clip_scored import EMBEDDINGS
from dataplatform.assets.code_versions import code_version
from dataplatform.assets.dedup_history import concat_columns, state_metadata, sync_history
from dataplatform.assets.partitions import PREVIOUS_DAY, daily_backfill_policy, daily_partitions
from dataplatform.assets.quality_filtered import KEY as QUALITY_KEY
from dataplatform.assets.reporting import (
    GLOBAL_SCOPE,
    finish_stage,
    for_each_day,
    open_stage_day,
    read_input,
    stage_checks,
    stage_specs,
    table_column,
)
from dataplatform.core.dedup.history_state import INGESTED_IDS, Lookups, ingested_before
from dataplatform.core.dedup.semantic_history import NAME as STATE
from dataplatform.core.dedup.semantic_history import SEMANTIC_SPEC, RetrainMode, retrain_if_due
from dataplatform.core.dedup.semantic_history import record as semantic_record
from dataplatform.core.dedup.semantic_history import store as semantic_store
from dataplatform.core.dedup.semantic_history import sync as semantic_sync
from dataplatform.core.dedup.semantic_index import (
    DEFAULT_SIMILARITY_THRESHOLD,
    find_similar_pairs,
    greedy_keep,
)
from dataplatform.core.engine.chunk_map import combined_runs
from dataplatform.core.engine.engine_spec import EngineSpec
from dataplatform.core.scoring.embedding_table import rows_for
from dataplatform.core.store.profile import is_smoke
from dataplatform.core.store.schema import ledger_row, ledger_table
from dataplatform.resources.engine import EngineResource
from dataplatform.resources.warehouse import WarehouseResource

STAGE = "semantic_deduped"
KEY = dg.AssetKey(STAGE)
UPSTREAM = QUALITY_KEY
CHECK_NO_SIMILAR_KEPT = "no_kept_pair_above_similarity"
# The smoke model's embeddings are random: only (near) identical images may count as copies.
SMOKE_THRESHOLD = 0.999
# Declared once: the Literal is what a run config is checked against at launch.
KeepRule = Literal["quality", "clip_score", "pair_id"]
KEEP_RULES: tuple[str, ...] = get_args(KeepRule)


class SemanticDedupConfig(dg.Config):
    threshold: float = DEFAULT_SIMILARITY_THRESHOLD
    """Pairs whose image embeddings have cosine >= this are duplicates of each other."""
    keep_rule: KeepRule = "quality"
    """The member of a cluster kept: `quality` (highest aesthetic score where scored, then
    highest clip_score), `clip_score` (highest) or `pair_id` (smallest)."""
    retrain: RetrainMode = "auto"
    """`auto`: when the day's drift or the history's growth says the index's quantizer is due
    (docs/dedup_state.md), retrain it and re-encode the history before deciding (a rare day that
    costs the history, logged); `advise`: only report it, for `dataplatform rebuild-state`."""


@dg.multi_asset(
    name=STAGE,
    specs=stage_specs(
        KEY,
        deps=[UPSTREAM, dg.AssetDep(KEY, partition_mapping=PREVIOUS_DAY), dg.AssetKey(EMBEDDINGS)],
        description="Pairs without semantic copies (crops, flips, re-shoots) by CLIP image cosine.",
        kinds={"faiss", "parquet"},
        code_version=code_version(__name__),
        group_name="curation",
    ),
    partitions_def=daily_partitions,
    backfill_policy=daily_backfill_policy,
    check_specs=stage_checks(
        KEY,
        {CHECK_NO_SIMILAR_KEPT: "no two kept pairs have image cosine at or above the threshold"},
        global_dedup=True,
    ),
)
def semantic_deduped(
    context: dg.AssetExecutionContext,
    config: SemanticDedupConfig,
    warehouse: WarehouseResource,
    engine: EngineResource,
) -> Iterator[dg.MaterializeResult]:
    """Keep the best pair of each cluster of near-identical images; earlier days always win."""
    spec = engine.spec()
    yield from for_each_day(
        context, KEY, lambda date: _materialize_day(context, config, warehouse, spec, date)
    )


def _materialize_day(
    context: dg.AssetExecutionContext,
    config: SemanticDedupConfig,
    warehouse: WarehouseResource,
    engine: EngineSpec,
    date: str,
) -> list[dg.MaterializeResult]:
    """One day of ``semantic_deduped``; ``for_each_day`` runs it for each day of the run."""
    day = open_stage_day(warehouse, STAGE, date, global_dedup=True)
    home, date = day.home, day.date
    smoke = is_smoke()
    threshold = SMOKE_THRESHOLD if smoke else config.threshold
    if smoke:
        context.log.warning(f"DATAPLATFORM_PROFILE=smoke: similarity threshold set to {threshold}")

    current = read_input(home, UPSTREAM.path[-1], date).sort_by("pair_id")
    vectors = _embeddings_for(current, read_input(home, EMBEDDINGS, date))
    rebuilt = sync_history(context, home, (INGESTED_IDS,), date)
    days = semantic_sync(home, date)
    if days:
        context.log.warning(
            f"{STATE} state rebuilt from the warehouse for {len(days)} day(s) "
            f"({', '.join(days[:5])}{', ...' if len(days) > 5 else ''})"
        )
    rebuilt += [f"{STATE}:{d}" for d in days]
    advice, retrained = retrain_if_due(home, vectors, date, config.retrain)
    if retrained != "-":
        context.log.warning(f"{STATE} quantizer retrained: {retrained}")
    state = semantic_store(home)
    # Each day row's nearest earlier kept pair at the threshold, from the persistent index:
    # all that the greedy decision uses (core/dedup/semantic_history.py).
    lookups = Lookups(engine, context.log.info)
    if lookups.sharded:  # split by index cell over the Ray engine's workers
        history, run = state.nearest_on_engine(vectors, threshold, date, engine, context.log.info)
        lookups.runs.append(run)
    else:
        history = state.nearest(vectors, threshold, date)
    rank = _rank(current, config.keep_rule)
    decision = greedy_keep(
        rank,
        find_similar_pairs(vectors, threshold),
        (history.query, history.row, history.similarity),
    )

    rows = current.to_pylist()
    hist_ids = table_column(history.history, "pair_id")
    ledger_rows = []
    cluster_sizes: Counter[str] = Counter()
    for k in np.flatnonzero(~decision.keep):
        target = int(decision.duplicate_of[k])
        of = hist_ids[target] if decision.dup_in_history[k] else rows[target]["pair_id"]
        cluster_sizes[of] += 1
        ledger_rows.append(
            ledger_row(
                rows[k],
                STAGE,
                "semantic_duplicate",
                f"image cosine {decision.similarity[k]:.4f} with {of}; threshold {threshold}",
                duplicate_of=of,
                similarity=float(decision.similarity[k]),
                threshold=float(threshold),
            )
        )
    ledger = ledger_table(ledger_rows)
    kept = current.filter(pa.array(decision.keep))
    kept_vectors = vectors[decision.keep]
    # The check reuses the lookup: kept pairs against each other, and against the history the
    # index returned for them.
    i, _, _ = find_similar_pairs(kept_vectors, threshold)
    violations = len(i) + int(np.count_nonzero(decision.keep[history.query]))
    size_counts = Counter(1 + n for n in cluster_sizes.values())
    extra = {
        "threshold": float(threshold),
        "keep_rule": config.keep_rule,
        "profile": "smoke (threshold raised)" if smoke else "production",
        **advice,
        "semantic_retrained": retrained,
        **state_metadata(context, home, SEMANTIC_SPEC, date, rebuilt),
        **combined_runs(lookups.runs, engine.kind).metadata(),
        "cluster_sizes": dg.MetadataValue.table(
            records=[
                dg.TableRecord({"cluster_size": size, "clusters": n})
                for size, n in sorted(size_counts.items())
            ],
            schema=dg.TableSchema(
                columns=[dg.TableColumn("cluster_size", "int"), dg.TableColumn("clusters", "int")]
            ),
        ),
    }
    none_similar = dg.AssetCheckResult(
        check_name=CHECK_NO_SIMILAR_KEPT,
        passed=violations == 0,
        metadata={"pairs_above_threshold": violations},
        description=f"no two kept pairs have image cosine >= {threshold}",
    )
    kept_ids = kept.column("pair_id")
    return finish_stage(
        day,
        current.num_rows,
        kept,
        ledger,
        metadata=extra,
        checks=[none_similar],
        pair_ids=concat_columns(
            kept_ids, ingested_before(home, kept, date, lookups).column("pair_id")
        ),
        pair_id_scope=GLOBAL_SCOPE,
        # The commit id just written, so that a takedown racing the record leaves a mismatch.
        on_commit=lambda commit: semantic_record(home, date, kept_vectors, kept, commit),
    )


def _embeddings_for(current: pa.Table, embeddings: pa.Table) -> np.ndarray:
    """The image embeddings of ``current``'s pairs, in its row order."""
    try:
        return rows_for(current.column("pair_id").to_pylist(), embeddings)
    except KeyError as exc:
        raise dg.Failure(
            f"{exc.args[0]} for {UPSTREAM.path[-1]}; "
            "re-materialize clip_scored and quality_filtered for this day"
        ) from exc


def _rank(current: pa.Table, keep_rule: str) -> np.ndarray:
    """Rank 0 is the best pair under ``keep_rule``; ties go to the smallest pair_id."""
    ids = current.column("pair_id").to_pylist()
    clip = current.column("clip_score").to_pylist()
    aesthetic = (
        current.column("aesthetic_score").to_pylist()
        if "aesthetic_score" in current.column_names
        else [None] * len(ids)
    )

    def key(k: int) -> tuple:
        if keep_rule == "pair_id":
            return (ids[k],)
        if keep_rule == "clip_score":
            return (-clip[k], ids[k])
        scored = aesthetic[k] is not None
        return (not scored, -(aesthetic[k] or 0.0), -clip[k], ids[k])

    order = sorted(range(len(ids)), key=key)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return rank
