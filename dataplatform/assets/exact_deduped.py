"""exact_deduped: byte-identical images removed by SHA-256, globally across partitions."""

import dagster as dg

from dataplatform.assets.partitions import PREVIOUS_DAY, daily_partitions
from dataplatform.assets.raw_pairs import KEY as RAW_KEY
from dataplatform.assets.reporting import (
    GLOBAL_SCOPE,
    OWNERS,
    finish_stage,
    open_stage_day,
    read_input,
    read_input_history,
    stage_checks,
    table_column,
    unique_check,
)
from dataplatform.core.dedup.exact_dedup import exact_deduplicate
from dataplatform.core.store.schema import ledger_row, ledger_table
from dataplatform.resources.warehouse import WarehouseResource

STAGE = "exact_deduped"
KEY = dg.AssetKey(STAGE)
CHECK_SHA_UNIQUE = "image_sha256_unique"


@dg.asset(
    key=KEY,
    partitions_def=daily_partitions,
    deps=[RAW_KEY, dg.AssetDep(KEY, partition_mapping=PREVIOUS_DAY)],
    description="Raw pairs without byte copies: the earliest pair with an image's SHA-256 wins.",
    kinds={"duckdb", "parquet"},
    owners=OWNERS,
    code_version="1",
    group_name="curation",
    check_specs=stage_checks(KEY, CHECK_SHA_UNIQUE),
)
def exact_deduped(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Drop pairs whose bytes equal a pair kept earlier (earlier day, then smaller pair_id)."""
    day = open_stage_day(context, warehouse, STAGE, global_dedup=True)
    home, date = day.home, day.date
    current = read_input(home, RAW_KEY.path[-1], date)
    kept_history = read_input_history(home, STAGE, date, ["pair_id", "image_sha256", "date"])
    ids_history = read_input_history(home, RAW_KEY.path[-1], date, ["pair_id", "date"])
    result = exact_deduplicate(current, kept_history, ids_history)

    by_id = {row["pair_id"]: row for row in current.to_pylist()}
    ledger_rows = []
    for reused in result.reused_ids.to_pylist():
        ledger_rows.append(
            ledger_row(
                by_id[reused["pair_id"]],
                STAGE,
                "duplicate_pair_id",
                f"pair_id already ingested on {reused['first_date']}",
            )
        )
    for dup in result.duplicates.to_pylist():
        where = "an earlier day" if dup["duplicate_of_date"] < date else "this day"
        ledger_rows.append(
            ledger_row(
                by_id[dup["pair_id"]],
                STAGE,
                "exact_duplicate",
                f"same SHA-256 as {dup['duplicate_of']} ({where}, {dup['duplicate_of_date']})",
                duplicate_of=dup["duplicate_of"],
                distance=0.0,
            )
        )
    ledger = ledger_table(sorted(ledger_rows, key=lambda r: r["pair_id"]))
    kept_ids = table_column(kept_history, "pair_id") + table_column(result.kept, "pair_id")
    kept_sha = table_column(kept_history, "image_sha256") + table_column(
        result.kept, "image_sha256"
    )
    sha_unique = unique_check(CHECK_SHA_UNIQUE, "image_sha256", kept_sha, GLOBAL_SCOPE)
    return finish_stage(
        day,
        current.num_rows,
        result.kept,
        ledger,
        metadata={"history_pairs": kept_history.num_rows},
        checks=[sha_unique],
        pair_ids=kept_ids,
        pair_id_scope=GLOBAL_SCOPE,
    )
