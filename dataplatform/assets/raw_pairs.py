"""raw_pairs: every image-text pair that arrived in a landing folder, decoded and described."""

import dagster as dg

from dataplatform.assets.partitions import daily_partitions
from dataplatform.assets.reporting import (
    CHECK_PAIR_ID_UNIQUE,
    CHECK_ROWS_CONSERVED,
    OWNERS,
    conservation_check,
    stage_metadata,
    table_column,
    unique_check,
)
from dataplatform.core.funnel import stage_funnel
from dataplatform.core.image_decode import DEFAULT_DRAFT_SIZE, DEFAULT_MAX_PIXELS
from dataplatform.core.ingest import STAGE, IngestOptions, ingest_folder
from dataplatform.core.text_normalize import DEFAULT_MAX_TEXT_CHARS
from dataplatform.core.warehouse import refresh_catalog, write_ledger, write_partition
from dataplatform.resources.warehouse import WarehouseResource

KEY = dg.AssetKey(STAGE)


class RawPairsConfig(dg.Config):
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images above this many pixels are rejected as decompression bombs before decoding."""
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    """Captions are cut to this many characters after normalisation (and flagged)."""
    draft_size: int = DEFAULT_DRAFT_SIZE
    """JPEGs decode at the smallest codec scale that is at least this size; 0 decodes in full."""
    workers: int = 0
    """Decoding processes; 0 means one per available core."""


@dg.asset(
    key=KEY,
    partitions_def=daily_partitions,
    description="Every image-text pair that landed on the day, decoded once and described.",
    kinds={"python", "parquet", "pillow"},
    owners=OWNERS,
    code_version="1",
    group_name="curation",
    check_specs=[
        dg.AssetCheckSpec(CHECK_ROWS_CONSERVED, asset=KEY),
        dg.AssetCheckSpec(CHECK_PAIR_ID_UNIQUE, asset=KEY),
    ],
)
def raw_pairs(
    context: dg.AssetExecutionContext, config: RawPairsConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Ingest ``landing/<date>/``: manifests, shards, captioned images; bad rows to the ledger."""
    home = warehouse.resolve()
    date = context.partition_key
    options = IngestOptions(
        max_pixels=config.max_pixels,
        max_text_chars=config.max_text_chars,
        draft_size=config.draft_size or None,
        workers=config.workers,
    )
    landing = home.landing_date(date)
    if not landing.is_dir():
        context.log.warning(f"no landing folder {landing}: writing an empty partition")
    result = ingest_folder(landing, date, options)
    output = write_partition(home, STAGE, date, result.kept)
    write_ledger(home, STAGE, date, result.rejected)
    refresh_catalog(home)
    funnel = stage_funnel(STAGE, date, result.rows_in, result.kept.num_rows, result.rejected)
    return dg.MaterializeResult(
        metadata=stage_metadata(funnel, output, {"landing": dg.MetadataValue.path(str(landing))}),
        check_results=[
            conservation_check(funnel),
            unique_check(
                CHECK_PAIR_ID_UNIQUE, "pair_id", table_column(result.kept, "pair_id"), "the day"
            ),
        ],
    )
