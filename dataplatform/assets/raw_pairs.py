"""raw_pairs: every image-text pair that arrived in a landing folder, decoded and described."""

from collections.abc import Iterator

import dagster as dg
import pyarrow as pa

from dataplatform.assets.code_versions import code_version
from dataplatform.assets.partitions import daily_backfill_policy, daily_partitions
from dataplatform.assets.reporting import (
    finish_stage,
    for_each_day,
    open_stage_day,
    stage_checks,
    stage_specs,
    table_column,
)
from dataplatform.assets.url_downloads import KEY as URL_DOWNLOADS
from dataplatform.core.ingest.image_decode import DEFAULT_DRAFT_SIZE, DEFAULT_MAX_PIXELS
from dataplatform.core.ingest.ingest_folder import STAGE, IngestOptions, ingest_folder
from dataplatform.core.ingest.license_policy import apply_license_policy
from dataplatform.core.ingest.text_normalize import DEFAULT_MAX_TEXT_CHARS
from dataplatform.core.records.takedown_requests import (
    TakedownRequestError,
    exclude_taken_down,
    load_takedowns,
)
from dataplatform.core.store.schema import LEDGER_SCHEMA
from dataplatform.resources.engine import EngineResource
from dataplatform.resources.licenses import LicensePolicyResource
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


@dg.multi_asset(
    name=STAGE,
    specs=stage_specs(
        KEY,
        deps=[URL_DOWNLOADS],
        description="Every image-text pair that landed on the day, decoded once and described.",
        kinds={"python", "parquet", "pillow"},
        code_version=code_version(__name__),
        group_name="curation",
    ),
    partitions_def=daily_partitions,
    backfill_policy=daily_backfill_policy,
    check_specs=stage_checks(KEY),
)
def raw_pairs(
    context: dg.AssetExecutionContext,
    config: RawPairsConfig,
    warehouse: WarehouseResource,
    licenses: LicensePolicyResource,
    engine: EngineResource,
) -> Iterator[dg.MaterializeResult]:
    """Ingest ``landing/<date>/`` (or ``<landing_url>/<date>/`` on an object store): manifests,
    shards, captioned images; bad rows to the ledger.

    Pairs a takedown request names never enter (ledger reason ``takedown``), and the license
    policy drops or flags pairs outside the allow-list (column ``license_status``).
    """
    yield from for_each_day(
        context,
        KEY,
        lambda date: _materialize_day(context, config, warehouse, licenses, engine, date),
    )


def _materialize_day(
    context: dg.AssetExecutionContext,
    config: RawPairsConfig,
    warehouse: WarehouseResource,
    licenses: LicensePolicyResource,
    engine: EngineResource,
    date: str,
) -> list[dg.MaterializeResult]:
    """One day of ``raw_pairs``; ``for_each_day`` runs it for each day of the run."""
    day = open_stage_day(warehouse, STAGE, date)
    home, date = day.home, day.date
    policy = licenses.policy()
    try:
        requests = load_takedowns(home)
    except TakedownRequestError as exc:
        raise dg.Failure(description=str(exc)) from exc
    options = IngestOptions(
        max_pixels=config.max_pixels,
        max_text_chars=config.max_text_chars,
        draft_size=config.draft_size or None,
        workers=config.workers,
    )
    landing = home.landing_day(date)
    if not home.has_landing_day(date):
        context.log.warning(f"no landing folder {landing}: writing an empty partition")
    result = ingest_folder(landing, date, options, engine.spec(), context.log.info)
    kept, taken_down = exclude_taken_down(result.kept, requests, STAGE)
    kept, license_drops = apply_license_policy(kept, policy, STAGE)
    ledger = pa.concat_tables(
        [t.cast(LEDGER_SCHEMA) for t in (result.rejected, taken_down, license_drops)]
    )
    statuses = table_column(kept, "license_status")
    extra = {
        "landing": dg.MetadataValue.path(str(landing)),
        "license_policy": policy.describe(),
        "license_flagged": sum(s != "allowed" for s in statuses),
        "takedown_requests": len(requests),
        "taken_down_at_ingest": taken_down.num_rows,
        **result.engine_run.metadata(),
    }
    return finish_stage(day, result.rows_in, kept, ledger, metadata=extra)
