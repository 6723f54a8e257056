"""tokens: every kept image as a grid of discrete VQ codes, with its resolution and crop."""

from collections.abc import Iterator

import dagster as dg
import pyarrow as pa

from dataplatform.assets.code_versions import code_version
from dataplatform.assets.partitions import daily_backfill_policy, daily_partitions
from dataplatform.assets.reporting import (
    finish_stage,
    for_each_day,
    open_stage_day,
    read_input,
    stage_checks,
    stage_specs,
    unreadable_files_fail,
)
from dataplatform.assets.semantic_deduped import KEY as SEMANTIC_KEY
from dataplatform.assets.vq_tokenizer import KEY as TOKENIZER_KEY
from dataplatform.assets.vq_tokenizer import TRAINED_DIR
from dataplatform.core.records.plots import markdown_image
from dataplatform.core.store.schema import ledger_row, ledger_table
from dataplatform.core.tokens.crop_policy import (
    DEFAULT_POLICY,
    DEFAULT_RESOLUTION,
    RESOLUTIONS,
    CropPolicy,
)
from dataplatform.core.tokens.encode_images import EncodeSettings, encode_rows
from dataplatform.core.tokens.token_budget import (
    DEFAULT_TARGET_TOKENS,
    budget,
    budget_plot_png,
    tokens_per_day,
)
from dataplatform.resources.engine import EngineResource
from dataplatform.resources.tokenizer import TokenizerResource
from dataplatform.resources.warehouse import WarehouseResource

STAGE = "tokens"
KEY = dg.AssetKey(STAGE)
CHECK_TOKEN_RANGE = "token_ids_in_codebook"


class TokensConfig(dg.Config):
    resolution: int = DEFAULT_RESOLUTION
    """256, 336 or 448 (section 7.6: 1B models at 256, 10B models at 336-448)."""
    crop: CropPolicy = DEFAULT_POLICY
    """`center` or `letterbox` for a fixed dataset; `random` (seeded per pair) for augmentation."""
    seed: int = 0
    """Seed of the `random` crop policy: the same seed gives the same crop for a pair."""
    target_tokens: int = DEFAULT_TARGET_TOKENS
    """The image-token budget to report progress against (section 7.6: 3T-6T image tokens)."""


@dg.multi_asset(
    name=STAGE,
    specs=stage_specs(
        KEY,
        deps=[SEMANTIC_KEY, TOKENIZER_KEY],
        description=(
            "Discrete VQ image tokens for every curated pair, with resolution and crop box."
        ),
        kinds={"pytorch", "parquet"},
        code_version=code_version(__name__),
        group_name="tokens",
    ),
    partitions_def=daily_partitions,
    backfill_policy=daily_backfill_policy,
    pool="gpu",
    check_specs=stage_checks(
        KEY, {CHECK_TOKEN_RANGE: "every token id indexes the tokenizer's codebook"}
    ),
)
def tokens(
    context: dg.AssetExecutionContext,
    config: TokensConfig,
    warehouse: WarehouseResource,
    tokenizer: TokenizerResource,
    engine: EngineResource,
) -> Iterator[dg.MaterializeResult]:
    """Crop/letterbox each kept image to the resolution and encode it to codebook indices."""
    # `crop` is a Literal, refused at launch; Dagster's config enums are strings only, so the
    # resolution (an int) is checked here.
    if config.resolution not in RESOLUTIONS:
        raise dg.Failure(f"resolution must be one of {RESOLUTIONS}; got {config.resolution}")
    yield from for_each_day(
        context,
        KEY,
        lambda date: _materialize_day(context, config, warehouse, tokenizer, engine, date),
    )


def _materialize_day(
    context: dg.AssetExecutionContext,
    config: TokensConfig,
    warehouse: WarehouseResource,
    tokenizer: TokenizerResource,
    engine: EngineResource,
    date: str,
) -> list[dg.MaterializeResult]:
    """One day of ``tokens``; ``for_each_day`` runs it for each day of the run."""
    day = open_stage_day(warehouse, STAGE, date)
    home, date = day.home, day.date
    current = read_input(home, SEMANTIC_KEY.path[-1], date).sort_by("pair_id")
    rows = current.to_pylist()
    encoded = encode_rows(
        rows,
        home.landing,
        EncodeSettings(
            tokenizer_path=tokenizer.checked_path(home.root / "models" / TRAINED_DIR),
            device=tokenizer.device,
            batch_size=tokenizer.batch_size,
            resolution=config.resolution,
            crop=config.crop,
            seed=config.seed,
        ),
        engine.spec(),
        context.log.info,
    )
    grids, boxes, failures = encoded.grids, encoded.boxes, encoded.failures
    ok = [k for k in range(len(rows)) if k in grids]
    identity = ";".join(f"{k}={v}" for k, v in sorted(encoded.identity.items()))
    kept = current.take(pa.array(ok, pa.int64()))
    flat = [grids[k].reshape(-1) for k in ok]
    id_type = pa.uint16() if int(encoded.identity.get("codebook_size", 0)) <= 65536 else pa.int32()
    kept = (
        kept.append_column("tokens", pa.array([g.tolist() for g in flat], pa.list_(id_type)))
        .append_column(
            "token_grid", pa.array([list(grids[k].shape) for k in ok], pa.list_(pa.int32()))
        )
        .append_column("token_count", pa.array([int(g.size) for g in flat], pa.int32()))
        .append_column("resolution", pa.array([config.resolution] * len(ok), pa.int32()))
        .append_column("crop_policy", pa.array([config.crop] * len(ok), pa.string()))
        .append_column("crop_box", pa.array([boxes[k] for k in ok], pa.list_(pa.int32())))
        .append_column("tokenizer", pa.array([identity] * len(ok), pa.string()))
    )
    ledger = ledger_table(
        [ledger_row(rows[k], STAGE, "image_unreadable", detail) for k, detail in failures.items()]
    )
    codebook = int(encoded.identity.get("codebook_size", 0))
    max_id = max((int(g.max()) for g in flat if g.size), default=-1)
    ids_in_codebook = dg.AssetCheckResult(
        check_name=CHECK_TOKEN_RANGE,
        passed=max_id < codebook if codebook else True,
        metadata={"max_token_id": max_id, "codebook_size": codebook},
        description="every token id indexes the tokenizer's codebook",
    )

    def budget_metadata() -> dict:
        # The tally counts this day's committed partition, so it runs after the commit.
        with unreadable_files_fail():
            rows_budget = budget(tokens_per_day(home, STAGE), config.target_tokens)
        return {
            "tokenizer": identity,
            "resolution": config.resolution,
            "crop_policy": config.crop,
            "tokens_this_day": int(sum(g.size for g in flat)),
            **encoded.run.metadata(),
            "token_budget": dg.MetadataValue.table(
                records=[
                    dg.TableRecord(
                        {
                            "scope": r.scope,
                            "images": r.images,
                            "tokens": r.tokens,
                            "tokens_per_image": float(r.tokens_per_image),
                            "progress": float(r.progress),
                        }
                    )
                    for r in rows_budget
                ],
                schema=dg.TableSchema(
                    columns=[
                        dg.TableColumn("scope", "string"),
                        dg.TableColumn("images", "int"),
                        dg.TableColumn("tokens", "int"),
                        dg.TableColumn("tokens_per_image", "float"),
                        dg.TableColumn("progress", "float"),
                    ]
                ),
            ),
            "token_budget_plot": dg.MetadataValue.md(
                markdown_image(budget_plot_png(rows_budget), "cumulative tokens vs target")
            ),
        }

    return finish_stage(
        day,
        current.num_rows,
        kept,
        ledger,
        metadata=budget_metadata,
        checks=[ids_in_codebook],
    )
