"""data_cards: one audit record per pair that enters training, and the dataset cards."""

import datetime as dt
from collections.abc import Iterator

import dagster as dg

from dataplatform.assets.code_versions import code_version
from dataplatform.assets.partitions import daily_backfill_policy, daily_partitions
from dataplatform.assets.reporting import (
    finish_stage,
    for_each_day,
    ledger_key,
    open_stage_day,
    read_input,
    stage_checks,
    stage_specs,
)
from dataplatform.assets.review import review_sheet_metadata
from dataplatform.assets.tokens import KEY as TOKENS_KEY
from dataplatform.assets.vq_tokenizer import KEY as TOKENIZER_KEY
from dataplatform.core.records.data_cards import (
    CARDS_TABLE,
    StageRun,
    build_cards_on_engine,
    card_markdown,
    dataset_version,
    write_dataset_card,
)
from dataplatform.core.records.plots import markdown_image
from dataplatform.core.records.takedown_requests import (
    TakedownRequestError,
    exclude_taken_down,
    load_takedowns,
)
from dataplatform.core.store.stages import STAGE_ORDER
from dataplatform.core.store.warehouse import document_path
from dataplatform.resources.engine import EngineResource
from dataplatform.resources.warehouse import WarehouseResource

STAGE = CARDS_TABLE
KEY = dg.AssetKey(STAGE)
CODE_VERSION = code_version(__name__)
CHECK_CARDS_COMPLETE = "cards_complete"
# The partitioned stages a card records, in pipeline order (the tokenizer is unpartitioned).
LINEAGE = STAGE_ORDER[: STAGE_ORDER.index(STAGE)]


@dg.multi_asset(
    name=STAGE,
    specs=stage_specs(
        KEY,
        # The dataset cards count every earlier stage's ledger rows of the day (the funnel).
        deps=[TOKENS_KEY, *(ledger_key(stage) for stage in LINEAGE)],
        description=(
            "One data card per pair that enters training (source, license, every score and "
            "transform, the run of every stage), the dataset cards and the review sheets."
        ),
        kinds={"parquet", "markdown", "html"},
        code_version=CODE_VERSION,
        group_name="cards",
    ),
    partitions_def=daily_partitions,
    backfill_policy=daily_backfill_policy,
    check_specs=stage_checks(
        KEY,
        {
            CHECK_CARDS_COMPLETE: (
                "every card has a source, a license status, a CLIP score, tokens and the run "
                "of every stage"
            )
        },
    ),
)
def data_cards(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, engine: EngineResource
) -> Iterator[dg.MaterializeResult]:
    """Card every tokenized pair; takedowns filed since are the last gate before training."""
    yield from for_each_day(
        context, KEY, lambda date: _materialize_day(context, warehouse, engine, date)
    )


def _materialize_day(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    engine: EngineResource,
    date: str,
) -> list[dg.MaterializeResult]:
    """One day of ``data_cards``; ``for_each_day`` runs it for each day of the run."""
    day = open_stage_day(warehouse, STAGE, date)
    home, date = day.home, day.date
    try:
        requests = load_takedowns(home)
    except TakedownRequestError as exc:
        raise dg.Failure(description=str(exc)) from exc
    current = read_input(home, TOKENS_KEY.path[-1], date).sort_by("pair_id")
    kept, ledger = exclude_taken_down(current, requests, STAGE)
    runs = stage_runs(context, date)
    cards, engine_run = build_cards_on_engine(
        kept, runs, dataset_version(date, runs), engine.spec(), context.log.info
    )
    stages = [*LINEAGE, STAGE]
    missing = _incomplete(cards)
    complete = dg.AssetCheckResult(
        check_name=CHECK_CARDS_COMPLETE,
        passed=not missing,
        metadata={"incomplete": len(missing), "examples": ", ".join(missing[:10]) or "-"},
        description=(
            "every card has a source, a license status, a CLIP score, tokens and the run "
            "of every stage"
        ),
    )

    def card_metadata() -> dict:
        # The dataset cards count the committed partition, so they are written after it; the
        # day's card stores the day's summary, which the overall card merges with the others'.
        partition_card = write_dataset_card(home, stages, date, runs)
        overall_card = write_dataset_card(home, stages, None)
        ui_card = card_markdown(
            partition_card.card,
            [markdown_image(png, name) for name, png in partition_card.plots.items()],
        )
        return {
            "dataset_version": (
                cards.column("dataset_version")[0].as_py() if cards.num_rows else "-"
            ),
            "dataset_card": dg.MetadataValue.md(ui_card),
            "dataset_card_path": dg.MetadataValue.path(
                str(document_path(home, f"{partition_card.folder}/card.md"))
            ),
            "dataset_card_json": dg.MetadataValue.path(
                str(document_path(home, f"{partition_card.folder}/card.json"))
            ),
            "overall_card_path": dg.MetadataValue.path(
                str(document_path(home, f"{overall_card.folder}/card.md"))
            ),
            # Days whose stored summary was missing or stale, rebuilt from their partitions.
            "overall_summaries_rebuilt": ", ".join(overall_card.card["summaries_rebuilt"]) or "-",
            "licenses": dg.MetadataValue.json(partition_card.card["licenses"]),
            "stage_runs": dg.MetadataValue.json([r.as_dict() for r in runs]),
            **engine_run.metadata(),
            # The cards link the review sheets of every stage, not of a stage of their own.
            **review_sheet_metadata(home, stages, date),
        }

    return finish_stage(
        day,
        current.num_rows,
        cards,
        ledger,
        metadata=card_metadata,
        checks=[complete],
        review_sheet=False,
    )


def stage_runs(context: dg.AssetExecutionContext, date: str) -> list[StageRun]:
    """The latest materialization of each stage's ``date`` partition, from the instance."""
    runs = []
    for stage in [*LINEAGE[:-1], TOKENIZER_KEY.path[-1], LINEAGE[-1]]:
        partitioned = stage != TOKENIZER_KEY.path[-1]
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey(stage), asset_partitions=[date] if partitioned else None
            ),
            limit=1,
        ).records
        if not records:
            runs.append(StageRun(stage, None, None, None))
            continue
        record = records[0]
        tags = record.asset_materialization.tags or {}
        runs.append(
            StageRun(
                stage,
                record.run_id,
                tags.get("dagster/code_version"),
                dt.datetime.fromtimestamp(record.timestamp, dt.UTC).isoformat(timespec="seconds"),
            )
        )
    runs.append(
        StageRun(
            STAGE,
            context.run.run_id,
            CODE_VERSION,
            dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
    )
    return runs


def _incomplete(cards) -> list[str]:
    problems = []
    for row in cards.select(
        ["pair_id", "source", "license_status", "clip_score", "token_count", "stage_runs"]
    ).to_pylist():
        runs_missing = '"run_id": null' in row["stage_runs"]
        if (
            not row["source"]
            or not row["license_status"]
            or row["clip_score"] is None
            or not row["token_count"]
            or runs_missing
        ):
            problems.append(row["pair_id"])
    return problems
