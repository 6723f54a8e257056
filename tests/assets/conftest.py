"""A small three-day landing with known copies, and a way to run the stages through Dagster."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from PIL import ImageEnhance

from dataplatform.assets import ALL_ASSETS, CARD_ASSETS, INGEST_ASSETS, STAGE_ASSETS, TOKEN_ASSETS
from dataplatform.core.store.home import Home
from dataplatform.resources import (
    ClipResource,
    EngineResource,
    LicensePolicyResource,
    QualityResource,
    TokenizerResource,
    WarehouseResource,
)
from tests.conftest import encode, photo

DAYS = ["2025-01-01", "2025-01-02", "2025-01-03"]
# A tokenizer small enough to train in seconds; the checks' floors are off for it.
SMALL_TOKENIZER = {"steps": 30, "crops_per_image": 2, "min_psnr": 0.0, "max_dead_code_share": 1.0}


def _write(day: Path, rows: list[dict], files: dict[str, bytes]) -> None:
    (day / "img").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (day / "img" / name).write_bytes(data)
    (day / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def build_three_days(landing: Path) -> None:
    astronaut = encode(photo("astronaut"), quality=92)
    coffee = photo("coffee")
    rocket = encode(photo("rocket"), quality=92)
    chelsea = photo("chelsea")
    _write(
        landing / DAYS[0],
        [
            {
                "id": "a1",
                "image": "img/astronaut.jpg",
                "text": "an astronaut",
                "license": "CC0-1.0",
            },
            {"id": "a2", "image": "img/astronaut_copy.jpg", "text": "astronaut again"},
            {"id": "b1", "image": "img/coffee.jpg", "text": "coffee"},
            {"id": "b2", "image": "img/coffee_small.jpg", "text": "small coffee"},
            {"id": "c1", "image": "img/rocket.jpg", "text": "a rocket"},
        ],
        {
            "astronaut.jpg": astronaut,
            "astronaut_copy.jpg": astronaut,
            "coffee.jpg": encode(coffee, quality=92),
            "coffee_small.jpg": encode(coffee.resize((300, 200)), quality=85),
            "rocket.jpg": rocket,
        },
    )
    _write(
        landing / DAYS[1],
        [
            {"id": "a3", "image": "img/astronaut.jpg", "text": "the astronaut, reposted"},
            {"id": "c2", "image": "img/rocket_q50.jpg", "text": "rocket, recompressed"},
            {"id": "d1", "image": "img/chelsea.jpg", "text": "a cat"},
            {"id": "x1", "image": "img/broken.jpg", "text": "broken"},
        ],
        {
            "astronaut.jpg": astronaut,
            "rocket_q50.jpg": encode(photo("rocket"), quality=50),
            "chelsea.jpg": encode(chelsea, quality=92),
            "broken.jpg": b"not an image at all",
        },
    )
    _write(
        landing / DAYS[2],
        [
            {"id": "d2", "image": "img/chelsea_bright.jpg", "text": "a brighter cat"},
            {"id": "e1", "image": "img/china.jpg", "text": "a temple"},
            {"id": "a1", "image": "img/china.jpg", "text": "reused id"},
        ],
        {
            "chelsea_bright.jpg": encode(ImageEnhance.Brightness(chelsea).enhance(1.1), quality=90),
            "china.jpg": encode(photo("china"), quality=90),
        },
    )


@pytest.fixture(autouse=True)
def smoke_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asset tests run the small built-in CLIP model: no weights exist here, none may download."""
    monkeypatch.setenv("DATAPLATFORM_PROFILE", "smoke")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def three_days(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    build_three_days(home.landing)
    return home


def stage_resources(home: Home, **overrides) -> dict:
    """Every resource the assets take, pointed at ``home``, CPU-only; None keeps a default."""
    resources = {
        "warehouse": WarehouseResource(
            home=str(home.root), warehouse_url=home.warehouse_url, landing_url=home.landing_url
        ),
        "licenses": LicensePolicyResource(),
        "clip": ClipResource(models_dir=str(home.root / "models"), num_workers=0),
        "quality": QualityResource(),
        "tokenizer": TokenizerResource(device="cpu", batch_size=4),
        "engine": EngineResource(),
    }
    resources.update({k: v for k, v in overrides.items() if v is not None})
    return resources


def materialize_cards(
    home: Home,
    date: str,
    instance: dg.DagsterInstance | None = None,
    **resources,
):
    """vq_tokenizer (trained small, or reused), tokens and data_cards for ``date``."""
    return dg.materialize(
        ALL_ASSETS,
        selection=[k for a in TOKEN_ASSETS + CARD_ASSETS for k in a.keys],
        partition_key=date,
        resources=stage_resources(home, **resources),
        run_config={"ops": {"vq_tokenizer": {"config": SMALL_TOKENIZER}}},
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def materialize_day(
    home: Home,
    date: str,
    instance: dg.DagsterInstance | None = None,
    selection=None,
    clip: ClipResource | None = None,
    quality: QualityResource | None = None,
    run_config: dict | None = None,
    licenses: LicensePolicyResource | None = None,
    engine: EngineResource | None = None,
):
    return dg.materialize(
        INGEST_ASSETS + STAGE_ASSETS,
        partition_key=date,
        resources=stage_resources(
            home, licenses=licenses, clip=clip, quality=quality, engine=engine
        ),
        run_config=run_config,
        instance=instance or dg.DagsterInstance.ephemeral(),
        selection=with_written_tables(selection),
        raise_on_error=False,
    )


def with_written_tables(selection):
    """``selection`` (stage keys) plus each stage's ledger and side tables, which its step
    writes with it (one multi-asset, as the UI selects them); None stays everything."""
    if selection is None:
        return None
    wanted = {
        key
        for item in selection
        for key in (
            item.keys
            if isinstance(item, dg.AssetsDefinition)
            else [dg.AssetKey.from_coercible(item)]
        )
    }
    return [k for a in ALL_ASSETS if wanted & set(a.keys) for k in a.keys]


def lost_a_row_on_exact_deduped(real):
    """``reporting.conservation_check`` failing exact_deduped's check, as a lost row would."""
    from dataplatform.assets.reporting import CHECK_ROWS_CONSERVED

    def check(funnel):
        result = real(funnel)
        if funnel.stage != "exact_deduped":
            return result
        return dg.AssetCheckResult(
            check_name=CHECK_ROWS_CONSERVED,
            passed=False,
            metadata=result.metadata,
            description=result.description,
        )

    return check
