"""exact_deduped: byte-identical images removed by SHA-256, globally across partitions."""

from collections.abc import Iterator

import dagster as dg

from dataplatform.assets.code_versions import code_version
from dataplatform.assets.dedup_history import (
    concat_columns,
    input_commit,
    rows_by_id,
    rows_with,
    state_metadata,
    sync_history,
)
from dataplatform.assets.partitions import PREVIOUS_DAY, daily_backfill_policy, daily_partitions
from dataplatform.assets.raw_pairs import KEY as RAW_KEY
from dataplatform.assets.reporting import (
    GLOBAL_SCOPE,
    finish_stage,
    for_each_day,
    open_stage_day,
    read_input,
    stage_checks,
    stage_specs,
    unique_check,
)
from dataplatform.core.dedup.exact_dedup import exact_deduplicate
from dataplatform.core.dedup.history_state import (
    EXACT_KEPT,
    INGESTED_IDS,
    Lookups,
    ingested_before,
    kept_sha_before,
    record,
)
from dataplatform.core.engine.chunk_map import combined_runs
from dataplatform.core.engine.engine_spec import EngineSpec
from dataplatform.core.store.schema import ledger_row, ledger_table
from dataplatform.resources.engine import EngineResource
from dataplatform.resources.warehouse import WarehouseResource

STAGE = "exact_deduped"
KEY = dg.AssetKey(STAGE)
CHECK_SHA_UNIQUE = "image_sha256_unique"


@dg.multi_asset(
    name=STAGE,
    specs=stage_specs(
        KEY,
        deps=[RAW_KEY, dg.AssetDep(KEY, partition_mapping=PREVIOUS_DAY)],
        description=(
            "Raw pairs without byte copies: the earliest pair with an image's SHA-256 wins."
        ),
        kinds={"duckdb", "parquet"},
        code_version=code_version(__name__),
        group_name="curation",
    ),
    partitions_def=daily_partitions,
    backfill_policy=daily_backfill_policy,
    check_specs=stage_checks(
        KEY,
        {CHECK_SHA_UNIQUE: "image_sha256 is unique across every kept pair up to this day"},
        global_dedup=True,
        blocking=[CHECK_SHA_UNIQUE],
    ),
)
def exact_deduped(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, engine: EngineResource
) -> Iterator[dg.MaterializeResult]:
    """Drop pairs whose bytes equal a pair kept earlier (earlier day, then smaller pair_id)."""
    spec = engine.spec()
    yield from for_each_day(
        context, KEY, lambda date: _materialize_day(context, warehouse, spec, date)
    )


def _materialize_day(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    engine: EngineSpec,
    date: str,
) -> list[dg.MaterializeResult]:
    """One day of ``exact_deduped``; ``for_each_day`` runs it for each day of the run."""
    day = open_stage_day(warehouse, STAGE, date, global_dedup=True)
    home, date = day.home, day.date
    ingested_commit = input_commit(home, RAW_KEY.path[-1], date)
    current = read_input(home, RAW_KEY.path[-1], date)
    rebuilt = sync_history(context, home, (INGESTED_IDS, EXACT_KEPT), date)
    # Only the history rows the day can hit, from the persistent state: same decisions as the
    # whole history, at the day's cost (core/dedup/history_state.py).
    # On the Ray engine, both lookups run sharded by key prefix on the workers.
    lookups = Lookups(engine, context.log.info)
    ids_history = ingested_before(home, current, date, lookups)
    kept_history = kept_sha_before(home, current, date, lookups)
    result = exact_deduplicate(current, kept_history, ids_history)

    ledger_rows = []
    reused = result.reused_ids.to_pylist()
    for row, hit in zip(rows_by_id(current, [r["pair_id"] for r in reused]), reused, strict=True):
        ledger_rows.append(
            ledger_row(
                row, STAGE, "duplicate_pair_id", f"pair_id already ingested on {hit['first_date']}"
            )
        )
    dups = result.duplicates.to_pylist()
    for row, dup in zip(rows_by_id(current, [d["pair_id"] for d in dups]), dups, strict=True):
        where = "an earlier day" if dup["duplicate_of_date"] < date else "this day"
        ledger_rows.append(
            ledger_row(
                row,
                STAGE,
                "exact_duplicate",
                f"same SHA-256 as {dup['duplicate_of']} ({where}, {dup['duplicate_of_date']})",
                duplicate_of=dup["duplicate_of"],
                distance=0.0,
            )
        )
    ledger = ledger_table(sorted(ledger_rows, key=lambda r: r["pair_id"]))
    # Uniqueness from the same lookups: no kept pair of the day shares its SHA-256 or pair_id
    # with another of the day or with an earlier kept pair. (That earlier days are unique among
    # themselves was checked on their own days; a re-run earlier day names the later days it
    # leaves stale, see state_metadata.)
    kept_ids = result.kept.column("pair_id")
    kept_sha = result.kept.column("image_sha256")
    earlier_sha = rows_with(kept_history, "image_sha256", kept_sha).column("image_sha256")
    sha_unique = unique_check(
        CHECK_SHA_UNIQUE, "image_sha256", concat_columns(kept_sha, earlier_sha), GLOBAL_SCOPE
    )

    def record_state(commit: str) -> None:
        # The commit id the stage just wrote, not one read later: a takedown that rewrites
        # the partition before the record then leaves a mismatch, and the next sync repairs it.
        record(home, INGESTED_IDS, date, current, commit=ingested_commit)
        record(home, EXACT_KEPT, date, result.kept, commit=commit)

    return finish_stage(
        day,
        current.num_rows,
        result.kept,
        ledger,
        metadata={
            **state_metadata(context, home, EXACT_KEPT, date, rebuilt),
            **combined_runs(lookups.runs, engine.kind).metadata(),
        },
        checks=[sha_unique],
        pair_ids=concat_columns(
            kept_ids, rows_with(ids_history, "pair_id", kept_ids).column("pair_id")
        ),
        pair_id_scope=GLOBAL_SCOPE,
        on_commit=record_state,
    )
