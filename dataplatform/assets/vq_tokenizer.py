"""vq_tokenizer: a VQ-VAE trained on this platform's own curated images (not partitioned)."""

import hashlib
import json
import time
from pathlib import Path

import dagster as dg
import numpy as np

from dataplatform.assets.code_versions import code_version
from dataplatform.assets.reporting import OWNERS
from dataplatform.assets.semantic_deduped import KEY as SEMANTIC_KEY
from dataplatform.core.ingest.image_decode import decode_rgb
from dataplatform.core.ingest.image_store import read_location
from dataplatform.core.store.warehouse import connect
from dataplatform.core.tokens.crop_policy import apply, plan
from dataplatform.resources.warehouse import WarehouseResource

KEY = dg.AssetKey("vq_tokenizer")
TRAINED_DIR = "vq_tokenizer"
METRICS_FILE = "metrics.json"
CHECK_PSNR = "heldout_psnr_floor"
CHECK_DEAD_CODES = "dead_code_share_ceiling"


class VQTrainConfig(dg.Config):
    """Defaults train in a few minutes on a CPU; raise them on a GPU."""

    train_resolution: int = 64
    """Training crops are this size; the network is convolutional and tokenizes any multiple."""
    downsample: int = 8
    """Pixels per token side. 8 trains to a useful quality on a CPU in under a minute (256 px
    images then give 32 x 32 tokens); 16 (256 tokens at 256 px, the book's setting) wants a GPU,
    larger training crops and more steps."""
    codebook_size: int = 512
    channels: int = 32
    steps: int = 400
    batch_size: int = 16
    sample_size: int = 2048
    """At most this many curated images (a stable sample); every fifth image is held out."""
    crops_per_image: int = 8
    """Random training crops taken from each sampled image (seeded per pair)."""
    min_psnr: float = 15.0
    """Check: held-out reconstruction PSNR (dB) floor."""
    max_dead_code_share: float = 0.9
    """Check: share of codebook entries unused on the held-out images."""
    retrain: bool = False
    """Train again even when a trained tokenizer exists (otherwise it is reused)."""
    seed: int = 0


@dg.asset(
    key=KEY,
    deps=[SEMANTIC_KEY],
    description="A VQ-VAE image tokenizer trained on a sample of the curated images.",
    kinds={"pytorch"},
    owners=OWNERS,
    code_version=code_version(__name__),
    group_name="tokens",
    pool="gpu",
    check_specs=[
        dg.AssetCheckSpec(CHECK_PSNR, asset=KEY),
        dg.AssetCheckSpec(CHECK_DEAD_CODES, asset=KEY),
    ],
)
def vq_tokenizer(
    context: dg.AssetExecutionContext, config: VQTrainConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Train (or reuse) the platform's tokenizer; report held-out PSNR and codebook use."""
    from dataplatform.core.tokens.vq_tokenizer import (
        VQConfig,
        auto_device,
        evaluate,
        save_tokenizer,
        train_vqvae,
    )

    home = warehouse.resolve()
    directory = home.root / "models" / TRAINED_DIR
    metrics_path = directory / METRICS_FILE
    if directory.exists() and metrics_path.is_file() and not config.retrain:
        metrics = json.loads(metrics_path.read_text())
        metrics["reused"] = True
        context.log.info(
            f"reusing the tokenizer trained at {directory}; set retrain to train again"
        )
    else:
        crops = _training_crops(home, config)
        if len(crops) < 5:
            raise dg.Failure(
                f"only {len(crops)} curated images to train on: materialize semantic_deduped "
                "for some days first"
            )
        # Held out by image, not by crop: no crop of a held-out image is ever trained on.
        holdout = np.concatenate(crops[::5])
        train = np.concatenate([c for k, c in enumerate(crops) if k % 5])
        vq = VQConfig(
            resolution=config.train_resolution,
            downsample=config.downsample,
            codebook_size=config.codebook_size,
            channels=config.channels,
        )
        device = auto_device("auto")
        started = time.perf_counter()
        tokenizer = train_vqvae(
            train,
            vq,
            steps=config.steps,
            batch_size=config.batch_size,
            seed=config.seed,
            device=device,
        )
        seconds = time.perf_counter() - started
        metrics = {
            **{k: float(v) for k, v in evaluate(tokenizer, holdout).items()},
            "train_images": int(len(train)),
            "heldout_images": int(len(holdout)),
            "train_seconds": round(seconds, 1),
            "steps": config.steps,
            "device": device,
            "reused": False,
        }
        save_tokenizer(tokenizer, directory)
        metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    psnr = float(metrics["psnr"])
    dead = float(metrics["dead_code_share"])
    version = weights_version(directory)
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in metrics.items() if isinstance(v, int | float | bool)},
            "path": dg.MetadataValue.path(str(directory)),
            "weights_version": version,
        },
        # From the saved files: a reused tokenizer reports the version it had, so `tokens`
        # stays fresh; a retrained one changes it, and every `tokens` partition shows stale.
        data_version=dg.DataVersion(version),
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_PSNR,
                passed=psnr >= config.min_psnr,
                metadata={"psnr": psnr, "floor": config.min_psnr},
                description="held-out reconstruction PSNR is above the floor",
            ),
            dg.AssetCheckResult(
                check_name=CHECK_DEAD_CODES,
                passed=dead <= config.max_dead_code_share,
                metadata={"dead_code_share": dead, "ceiling": config.max_dead_code_share},
                description="the codebook is used, not collapsed onto a few codes",
            ),
        ],
    )


def weights_version(directory: Path) -> str:
    """A digest of every file of the saved tokenizer (weights, config, metrics), by name."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:24]


def _training_crops(home, config: VQTrainConfig) -> list[np.ndarray]:
    """Per sampled curated image, seeded random crops at the training resolution."""
    con = connect(home)
    tables = {
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    source = SEMANTIC_KEY.path[-1]
    rows = (
        con.execute(f'SELECT pair_id, image_location FROM "{source}"').fetchall()
        if source in tables
        else []
    )
    con.close()
    rows.sort(key=lambda r: hashlib.sha256(f"{config.seed}:{r[0]}".encode()).hexdigest())
    size = config.train_resolution
    out = []
    for pair_id, location in rows[: config.sample_size]:
        try:
            image = decode_rgb(read_location(location, home.landing), 2 * size)
        except Exception:  # noqa: BLE001 - an unreadable image is simply not sampled
            continue
        # Shorter side to twice the crop size: crops then show objects at a useful scale.
        scale = 2 * size / min(image.size)
        image = image.resize(
            (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
        )
        out.append(
            np.stack(
                [
                    np.asarray(
                        apply(
                            image,
                            plan(
                                image.width,
                                image.height,
                                size,
                                "random",
                                seed=config.seed,
                                key=f"{pair_id}:{i}",
                            ),
                            size,
                        )
                    )
                    for i in range(config.crops_per_image)
                ]
            )
        )
    return out
