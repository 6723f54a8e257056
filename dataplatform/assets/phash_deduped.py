"""phash_deduped: perceptual copies (re-encodes, resizes, tints) removed by pHash distance."""

from collections.abc import Iterator

import dagster as dg
import pyarrow as pa

from dataplatform.assets.code_versions import code_version
from dataplatform.assets.dedup_history import (
    concat_columns,
    rows_by_id,
    state_metadata,
    sync_history,
)
from dataplatform.assets.exact_deduped import KEY as EXACT_KEY
from dataplatform.assets.partitions import PREVIOUS_DAY, daily_backfill_policy, daily_partitions
from dataplatform.assets.reporting import (
    GLOBAL_SCOPE,
    finish_stage,
    for_each_day,
    open_stage_day,
    read_input,
    stage_checks,
    stage_specs,
)
from dataplatform.core.dedup.history_state import (
    INGESTED_IDS,
    PHASH_KEPT,
    Lookups,
    ingested_before,
    kept_phash_near,
    record,
)
from dataplatform.core.dedup.phash_dedup import (
    PhashDedupResult,
    kept_pairs_within,
    phash_deduplicate,
)
from dataplatform.core.dedup.phash_index import DEFAULT_PHASH_THRESHOLD
from dataplatform.core.engine.chunk_map import combined_runs
from dataplatform.core.engine.engine_spec import EngineSpec
from dataplatform.core.store.schema import ledger_row, ledger_table
from dataplatform.resources.engine import EngineResource
from dataplatform.resources.warehouse import WarehouseResource

STAGE = "phash_deduped"
KEY = dg.AssetKey(STAGE)
CHECK_NO_NEAR_DUPLICATES = "no_kept_pair_within_threshold"


class PhashDedupConfig(dg.Config):
    threshold: int = DEFAULT_PHASH_THRESHOLD
    """Pairs whose 64-bit pHashes differ in at most this many bits are duplicates."""


@dg.multi_asset(
    name=STAGE,
    specs=stage_specs(
        KEY,
        deps=[EXACT_KEY, dg.AssetDep(KEY, partition_mapping=PREVIOUS_DAY)],
        description="Exact-deduped pairs without perceptual copies (pHash Hamming distance).",
        kinds={"numpy", "parquet"},
        code_version=code_version(__name__),
        group_name="curation",
    ),
    partitions_def=daily_partitions,
    backfill_policy=daily_backfill_policy,
    check_specs=stage_checks(
        KEY,
        {
            CHECK_NO_NEAR_DUPLICATES: (
                "no two kept pairs (the day's, and the day's against the history) lie within "
                "the pHash threshold"
            )
        },
        global_dedup=True,
    ),
)
def phash_deduped(
    context: dg.AssetExecutionContext,
    config: PhashDedupConfig,
    warehouse: WarehouseResource,
    engine: EngineResource,
) -> Iterator[dg.MaterializeResult]:
    """Drop pairs within the pHash threshold of a pair kept earlier; the ledger names the match."""
    spec = engine.spec()
    yield from for_each_day(
        context, KEY, lambda date: _materialize_day(context, config, warehouse, spec, date)
    )


def _materialize_day(
    context: dg.AssetExecutionContext,
    config: PhashDedupConfig,
    warehouse: WarehouseResource,
    engine: EngineSpec,
    date: str,
) -> list[dg.MaterializeResult]:
    """One day of ``phash_deduped``; ``for_each_day`` runs it for each day of the run."""
    day = open_stage_day(warehouse, STAGE, date, global_dedup=True)
    home, date = day.home, day.date
    current = read_input(home, EXACT_KEY.path[-1], date)
    rebuilt = sync_history(context, home, (INGESTED_IDS, PHASH_KEPT), date)
    # Every earlier kept pHash within the threshold of one of the day's, from the persistent
    # state: all the greedy decision can use, so the decisions are the whole history's.
    # On the Ray engine, searched one (state segment, hash band) per task on the workers.
    lookups = Lookups(engine, context.log.info)
    history = kept_phash_near(home, current, date, config.threshold, lookups)
    result = phash_deduplicate(current, history, config.threshold)

    dups = result.duplicates
    ledger = duplicate_ledger(
        result, rows_by_id(current, [d["pair_id"] for d in dups]), config.threshold
    )
    # The check reuses that lookup: kept pairs of the day against each other and against it.
    near = kept_pairs_within(result.kept, history, config.threshold)
    none_near = dg.AssetCheckResult(
        check_name=CHECK_NO_NEAR_DUPLICATES,
        passed=not near,
        metadata={
            "pairs_within_threshold": len(near),
            "examples": "; ".join(f"{a}~{b} ({d})" for a, b, d in near[:10]) or "-",
        },
        description=f"no two kept pairs lie within {config.threshold} bits",
    )
    kept_ids = result.kept.column("pair_id")
    return finish_stage(
        day,
        current.num_rows,
        result.kept,
        ledger,
        metadata={
            "threshold_bits": config.threshold,
            **state_metadata(context, home, PHASH_KEPT, date, rebuilt),
            **combined_runs(lookups.runs, engine.kind).metadata(),
        },
        checks=[none_near],
        pair_ids=concat_columns(
            kept_ids, ingested_before(home, result.kept, date, lookups).column("pair_id")
        ),
        pair_id_scope=GLOBAL_SCOPE,
        # The commit id just written, so that a takedown racing the record leaves a mismatch.
        on_commit=lambda commit: record(home, PHASH_KEPT, date, result.kept, commit=commit),
    )


def duplicate_ledger(result: PhashDedupResult, rows: list[dict], threshold: int) -> pa.Table:
    """The ledger rows of ``result``'s duplicates; ``rows`` are their pairs, in that order."""
    return ledger_table(
        [
            ledger_row(
                row,
                STAGE,
                "phash_duplicate",
                f"pHash {dup['distance']} bits from {dup['duplicate_of']} "
                f"({dup['duplicate_of_date']}); threshold {threshold}",
                duplicate_of=dup["duplicate_of"],
                distance=float(dup["distance"]),
                threshold=float(threshold),
            )
            for row, dup in zip(rows, result.duplicates, strict=True)
        ]
    )
