"""Benchmark: one landing day on the local engine and on a loopback Ray cluster of 1 and 2 workers.

The day is N camera-sized JPEGs (3000x2000 to 4000x3000) made from the real photos in the
scikit-image and scikit-learn wheels: each distinct image is a collage of four jittered crops,
at least 12 pHash bits from every other, with sensor-like noise so that files have a camera's
size; a tenth are byte copies and a fifth perceptual copies (re-encode, resize, brightness,
grayscale, watermark, crop), so that both dedup stages have work. Generated once, cached under
``--work``.

(a) raw_pairs -> exact_deduped -> phash_deduped, materialized through Dagster (in-process
    executor, a fresh warehouse per configuration), on:
      local, 1 process      raw_pairs run config ``workers: 1``: decode and hash inline
      local, 2 processes    ``workers: 2``: the local engine's own process pool (one per core)
      ray, 1 worker node    ``local_cluster(worker_nodes=1, cpus_per_node=1)``: one actor
      ray, 2 worker nodes   ``worker_nodes=2``, one CPU each: two actors
    One CPU per node, so Ray with k nodes holds k CPUs, as the local engine with k processes
    does. The head offers no CPU (it only coordinates) and the Dagster step stays the driver.
    Each step's seconds come from its STEP_START and STEP_SUCCESS events; the engine's share of
    raw_pairs is its ``engine_wall_s`` metadata (Ray actor start included). The dedup stages
    take the engine too, for their history lookups, but each warehouse starts empty: there is
    no history to look up. Every table and ledger row must equal the local, 1 process run's.
(b) the CLIP smoke model (``smoke_spec``) embedding the kept pairs of (a) with ``embed_pairs``
    on the same four configurations: locally one process with one torch thread and no
    DataLoader worker, then two torch threads with two DataLoader workers (the resource's
    default); on Ray, one actor per CPU with one torch thread and no DataLoader worker. The
    embeddings must equal the local, 1 process run's bit for bit.

The Ray cluster's start-up is printed apart and not counted in any stage. On a 2-core machine the
point is that Ray gives the same rows and scales with its workers, not its absolute speed: the
head, the driver and the actors share the same two cores.

Usage: .venv/bin/python bench/engine.py [--images 4000] [--work bench/out/engine]
       [--chunk-rows 256] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataplatform.core.engine.engine_spec import DEFAULT_CHUNK_ROWS, EngineSpec  # noqa: E402
from dataplatform.core.ingest.ingest_folder import available_cores  # noqa: E402
from dataplatform.core.samples.sample_data import (  # noqa: E402
    CAPTIONS,
    DISTINCT_MIN_DISTANCE,
    decode_for_phash,
    encode_jpeg,
    load_photo,
)
from dataplatform.core.samples.synthetic_images import PERCEPTUAL_EDITS, perceptual_edit  # noqa: E402

DATE = "2025-01-01"
STAGES = ("raw_pairs", "exact_deduped", "phash_deduped")
# Camera sensor sizes, landscape and portrait, with how often each is drawn: about 8 MP a photo.
CAMERA_SIZES = ((3000, 2000), (2000, 3000), (4000, 3000), (3000, 4000))
CAMERA_SIZE_WEIGHTS = (0.4, 0.2, 0.3, 0.1)
CAMERA_QUALITY = 90
# Photos in the wheels that are photographs (sample_data.CAPTIONS), the collage's sources.
PHOTOS = tuple(CAPTIONS)
LICENSES = ("CC0-1.0", "CC-BY-4.0", "CC-BY-SA-4.0")
# The pHash of a collage is checked on a render this wide; noise and size do not move it.
CHECK_WIDTH = 384
# Sigma 5 gives about 1.6 bits a pixel at quality 90 (2.4 MB at 12 MP), as camera JPEGs have.
NOISE_SIGMA = 5.0
NOISE_MARGIN = 256
NOISE_SEED = 14
# A table's columns that name the Dagster run behind it, which differ between any two runs.
RUN_COLUMNS = {"stage_runs", "dataset_version"}
WARM_UP_ROWS = 32


@dataclass(frozen=True)
class Tile:
    photo: str
    crop: tuple[float, float, float, float]
    """left, top, right, bottom as fractions of the photo."""
    mirror: bool
    brightness: float
    contrast: float
    colour: float


@dataclass(frozen=True)
class Collage:
    """One distinct image: four tiles on a grid split at (split_x, split_y)."""

    size: tuple[int, int]
    split: tuple[float, float]
    tiles: tuple[Tile, Tile, Tile, Tile]
    noise_seed: int


_PHOTO_CACHE: dict[str, Image.Image] = {}


def _photo(name: str) -> Image.Image:
    if name not in _PHOTO_CACHE:
        _PHOTO_CACHE[name] = load_photo(name).convert("RGB")
    return _PHOTO_CACHE[name]


def draw_collage(rng: np.random.Generator) -> Collage:
    size = CAMERA_SIZES[int(rng.choice(len(CAMERA_SIZES), p=CAMERA_SIZE_WEIGHTS))]
    tiles = []
    for _ in range(4):
        keep_w, keep_h = rng.uniform(0.35, 1.0, size=2)
        left, top = rng.uniform(0, 1 - keep_w), rng.uniform(0, 1 - keep_h)
        tiles.append(
            Tile(
                photo=PHOTOS[int(rng.integers(len(PHOTOS)))],
                crop=(left, top, left + keep_w, top + keep_h),
                mirror=bool(rng.integers(2)),
                brightness=float(rng.uniform(0.75, 1.25)),
                contrast=float(rng.uniform(0.75, 1.25)),
                colour=float(rng.uniform(0.6, 1.4)),
            )
        )
    split = (float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7)))
    return Collage(size, split, tuple(tiles), int(rng.integers(2**31)))  # type: ignore[arg-type]


def render(collage: Collage, width: int | None = None, noise: bool = True) -> Image.Image:
    """The collage at its camera size (or scaled to ``width``), noise added at full size."""
    full_w, full_h = collage.size
    scale = 1.0 if width is None else width / full_w
    w, h = max(8, round(full_w * scale)), max(8, round(full_h * scale))
    sx, sy = round(w * collage.split[0]), round(h * collage.split[1])
    boxes = ((0, 0, sx, sy), (sx, 0, w, sy), (0, sy, sx, h), (sx, sy, w, h))
    canvas = Image.new("RGB", (w, h))
    for tile, box in zip(collage.tiles, boxes, strict=True):
        photo = _photo(tile.photo)
        pw, ph = photo.size
        left, top, right, bottom = tile.crop
        box_in = (round(left * pw), round(top * ph), round(right * pw), round(bottom * ph))
        part = photo.crop(box_in)
        if tile.mirror:
            part = ImageOps.mirror(part)
        # Jittered at the photo's own size, before the upscale: the same look, far less work.
        part = ImageEnhance.Brightness(part).enhance(tile.brightness)
        part = ImageEnhance.Contrast(part).enhance(tile.contrast)
        part = ImageEnhance.Color(part).enhance(tile.colour)
        part = part.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.BICUBIC)
        canvas.paste(part, box[:2])
    if noise:
        pixels = np.asarray(canvas, dtype=np.int16)
        offset = np.random.default_rng(collage.noise_seed).integers(NOISE_MARGIN, size=2)
        pixels += _grain()[offset[0] : offset[0] + h, offset[1] : offset[1] + w]
        canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return canvas


_GRAIN: list[np.ndarray] = []


def _grain() -> np.ndarray:
    """Sensor-like noise for the largest camera size plus a margin, drawn once per process;
    each image takes it at its own offset (drawing 36M normals per image costs seconds)."""
    if not _GRAIN:
        side = max(max(size) for size in CAMERA_SIZES) + NOISE_MARGIN
        noise = np.random.default_rng(NOISE_SEED).normal(0, NOISE_SIGMA, (side, side, 3))
        _GRAIN.append(np.clip(np.round(noise), -127, 127).astype(np.int8))
    return _GRAIN[0]


def _write_collage(task: tuple[Collage, str]) -> None:
    collage, path = task
    Path(path).write_bytes(encode_jpeg(render(collage), CAMERA_QUALITY))


def _write_edit(task: tuple[str, str, str, int]) -> int:
    """Write the perceptual copy of ``source``; its imagehash distance to the source."""
    source, path, edit, seed = task
    original = decode_for_phash(Path(source).read_bytes())
    edited = perceptual_edit(original, edit, np.random.default_rng(seed))
    quality = 60 if edit == "jpeg_reencode" else CAMERA_QUALITY
    payload = encode_jpeg(edited, quality)
    Path(path).write_bytes(payload)
    return int(imagehash.phash(decode_for_phash(payload)) - imagehash.phash(original))


def _hash_bits(image: Image.Image) -> int:
    return int(str(imagehash.phash(image)), 16)


def camera_day(work: Path, n_images: int, seed: int = 0) -> tuple[Path, dict[str, dict]]:
    """The landing root holding ``DATE/`` with n_images JPEGs and pairs.jsonl, and the truth
    per pair id; generated once under ``work``."""
    root = work / f"landing_{n_images}_{seed}"
    landing, truth_file = root / "landing", root / "truth.json"
    if truth_file.is_file():
        return landing, json.loads(truth_file.read_text())
    if root.exists():
        shutil.rmtree(root)
    day = landing / DATE / "images"
    day.mkdir(parents=True)
    started = time.perf_counter()
    rng = np.random.default_rng([seed, 14])
    byte_copies, perceptual = n_images // 10, n_images // 5
    distinct = n_images - byte_copies - perceptual

    # Collages are drawn until each is DISTINCT_MIN_DISTANCE bits from all drawn before, so
    # that no distinct image is a near copy of another and the dedup stages' work is planted.
    collages: list[Collage] = []
    hashes = np.zeros(0, dtype=np.uint64)
    redrawn = 0
    while len(collages) < distinct:
        collage = draw_collage(rng)
        bits = np.uint64(_hash_bits(render(collage, CHECK_WIDTH, noise=False)))
        if hashes.size:
            xor = np.bitwise_xor(hashes, bits)
            nearest = int(np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(1).min())
            if nearest < DISTINCT_MIN_DISTANCE:
                redrawn += 1
                continue
        collages.append(collage)
        hashes = np.append(hashes, bits)
    ids = [f"cam-{i:06d}" for i in range(n_images)]
    path = {i: day / f"{i}.jpg" for i in ids}
    workers = available_cores()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        tasks = [(c, str(path[ids[i]])) for i, c in enumerate(collages)]
        list(pool.map(_write_collage, tasks, chunksize=8))
        # Copies get ids after every distinct one: dedup keeps the first by pair_id.
        sources = [int(s) for s in rng.integers(distinct, size=byte_copies + perceptual)]
        edits = [
            PERCEPTUAL_EDITS[int(e)] for e in rng.integers(len(PERCEPTUAL_EDITS), size=perceptual)
        ]
        edit_tasks = [
            (
                str(path[ids[sources[byte_copies + k]]]),
                str(path[ids[distinct + byte_copies + k]]),
                edit,
                seed * 1_000_003 + k,
            )
            for k, edit in enumerate(edits)
        ]
        distances = list(pool.map(_write_edit, edit_tasks, chunksize=8))
    for k in range(byte_copies):
        shutil.copyfile(path[ids[sources[k]]], path[ids[distinct + k]])

    truth: dict[str, dict] = {}
    captions: dict[str, str] = {}
    for i, collage in enumerate(collages):
        subjects = "; ".join(CAPTIONS[t.photo].rstrip(".") for t in collage.tiles)
        captions[ids[i]] = f"Four photos in a grid: {subjects}."
        truth[ids[i]] = {"kind": "distinct", "of": None}
    for k in range(byte_copies + perceptual):
        row_id, of = ids[distinct + k], ids[sources[k]]
        captions[row_id] = captions[of]
        if k < byte_copies:
            truth[row_id] = {"kind": "byte_copy", "of": of}
        else:
            truth[row_id] = {
                "kind": "perceptual_copy",
                "of": of,
                "edit": edits[k - byte_copies],
                "phash_distance": distances[k - byte_copies],
            }
    order = [ids[int(i)] for i in rng.permutation(n_images)]
    lines = [
        json.dumps(
            {
                "id": row_id,
                "image": f"images/{row_id}.jpg",
                "text": captions[row_id],
                "license": LICENSES[n % len(LICENSES)],
            }
        )
        for n, row_id in enumerate(order)
    ]
    (landing / DATE / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    truth_file.write_text(json.dumps(truth))
    size = sum(p.stat().st_size for p in day.iterdir())
    print(
        f"generated {n_images} JPEGs ({size / 2**30:.1f} GiB, {distinct} distinct after "
        f"{redrawn} redraws, {byte_copies} byte copies, {perceptual} perceptual copies) in "
        f"{time.perf_counter() - started:.0f} s under {landing}"
    )
    return landing, truth


@dataclass(frozen=True)
class Setup:
    """One configuration: the engine and how many CPUs it may use."""

    name: str
    engine: str
    cpus: int


SETUPS = (
    Setup("local, 1 process", "local", 1),
    Setup("local, 2 processes", "local", 2),
    Setup("ray, 1 worker node", "ray", 1),
    Setup("ray, 2 worker nodes", "ray", 2),
)


@dataclass
class StageRun:
    setup: str
    cpus: int
    total_s: float
    step_s: dict[str, float]
    engine_wall_s: float
    engine_steady_s: float
    """The engine's seconds once its workers were up (Ray: actors started, imports done)."""
    engine_workers: int
    engine_nodes: int
    engines: dict[str, str]
    """Each stage's engine and its engine_wall_s, for the stages that report them."""
    rows_out: dict[str, int]
    load_before: float
    load_after: float
    same_as_baseline: bool | None = None


@dataclass
class EmbedRun:
    setup: str
    cpus: int
    seconds: float
    steady_s: float
    images: int
    workers: int
    started_workers: int
    load_before: float
    load_after: float
    same_as_baseline: bool | None = None
    max_abs_diff: float = 0.0


@dataclass
class Report:
    images: int
    megapixels: float
    gigabytes: float
    kept: int
    page_cache_s: float
    cores: int
    cluster_start_s: dict[str, float] = field(default_factory=dict)
    stages: list[StageRun] = field(default_factory=list)
    embeds: list[EmbedRun] = field(default_factory=list)


def steady_seconds(log: list[tuple[float, str]], wall: float) -> float:
    """From chunk_map's Ray progress lines: the seconds from the actors being ready (its first
    line) to the last chunk done; the whole wall on the local engine, which logs none."""
    ready = [t for t, message in log if message.startswith("ray: ") and " on " in message]
    done = [t for t, message in log if message.startswith("ray: ") and "chunks done" in message]
    return done[-1] - ready[0] if ready and done else wall


def load() -> float:
    return os.getloadavg()[0]


def fresh_home(work: Path, name: str, landing: Path, rows: int | None = None) -> Path:
    """A new home whose landing day holds hard links to the cached day's files (the manifest's
    first ``rows`` rows only, when given)."""
    home = work / "homes" / name.replace(", ", "-").replace(" ", "_")
    if home.exists():
        shutil.rmtree(home)
    day = home / "landing" / DATE
    (day / "images").mkdir(parents=True)
    lines = (landing / DATE / "pairs.jsonl").read_text().splitlines()[:rows]
    (day / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    for line in lines:
        image = json.loads(line)["image"]
        try:
            os.link(landing / DATE / image, day / image)
        except OSError:
            shutil.copyfile(landing / DATE / image, day / image)
    return home


def materialize_stages(home: Path, setup: Setup, address: str, chunk_rows: int) -> StageRun:
    import dagster as dg

    from dataplatform.assets.exact_deduped import exact_deduped
    from dataplatform.assets.phash_deduped import phash_deduped
    from dataplatform.assets.raw_pairs import raw_pairs
    from dataplatform.resources import EngineResource, LicensePolicyResource, WarehouseResource

    resources = {
        "warehouse": WarehouseResource(home=str(home)),
        "licenses": LicensePolicyResource(),
        "engine": EngineResource(engine=setup.engine, address=address, chunk_rows=chunk_rows),
    }
    run_config: dict = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    if setup.engine == "local":
        run_config["ops"] = {"raw_pairs": {"config": {"workers": setup.cpus}}}
    instance = dg.DagsterInstance.ephemeral()
    before = load()
    started = time.perf_counter()
    result = dg.materialize(
        [raw_pairs, exact_deduped, phash_deduped],
        partition_key=DATE,
        resources=resources,
        run_config=run_config,
        instance=instance,
        raise_on_error=False,
    )
    total = time.perf_counter() - started
    if not result.success:
        failures = [e.message for e in result.all_events if e.is_failure]
        raise SystemExit(f"{setup.name}: the stages failed: {failures}")
    begun: dict[str, float] = {}
    step_s: dict[str, float] = {}
    engine_log: list[tuple[float, str]] = []
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None and entry.step_key == "raw_pairs":
            engine_log.append((entry.timestamp, entry.user_message))
        if event is None or entry.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            begun[entry.step_key] = entry.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            step_s[entry.step_key] = entry.timestamp - begun[entry.step_key]
    meta = {}
    rows_out = {}
    engines = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        values = {k: v.value for k, v in mat.metadata.items()}
        stage = mat.asset_key.path[-1]
        rows_out[stage] = int(values.get("dagster/partition_row_count", -1))
        if "engine_wall_s" in values:
            engines[stage] = f"{values.get('engine', '?')} {float(values['engine_wall_s']):.1f} s"
        if stage == "raw_pairs":
            meta = values
    wall = float(meta["engine_wall_s"])
    return StageRun(
        setup=setup.name,
        cpus=setup.cpus,
        total_s=total,
        step_s={stage: step_s[stage] for stage in STAGES},
        engine_wall_s=wall,
        engine_steady_s=steady_seconds(engine_log, wall),
        engine_workers=int(meta["engine_workers"]),
        engine_nodes=int(meta["engine_nodes"]),
        engines=engines,
        rows_out=rows_out,
        load_before=before,
        load_after=load(),
    )


def stage_outputs(home: Path) -> dict[str, list[dict]]:
    """Every row the three stages wrote (tables and ledgers), less the run-naming columns."""
    from dataplatform.core.store.home import Home
    from dataplatform.core.store.warehouse import read_ledger, read_partition

    store = Home(home)
    out = {}
    for stage in STAGES:
        table = read_partition(store, stage, DATE)
        out[stage] = table.drop_columns([c for c in table.column_names if c in RUN_COLUMNS])
        out[stage] = out[stage].to_pylist()
        out[f"ledger/{stage}"] = read_ledger(store, stage, DATE).to_pylist()
    return out


def embed(
    setup: Setup,
    spec,
    kept: tuple[list[str], list[str]],
    landing: Path,
    address: str,
    chunk_rows: int,
) -> tuple[EmbedRun, np.ndarray, np.ndarray]:
    import torch

    from dataplatform.core.scoring.clip_model import embed_pairs

    locations, texts = kept
    threads = torch.get_num_threads()
    if setup.engine == "local":
        torch.set_num_threads(setup.cpus)
        engine = EngineSpec()
    else:
        engine = EngineSpec(kind="ray", address=address, chunk_rows=chunk_rows)
    log: list[tuple[float, str]] = []
    before = load()
    started = time.perf_counter()
    try:
        pairs = embed_pairs(
            spec, locations, texts, landing, engine, lambda m: log.append((time.perf_counter(), m))
        )
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    failed = [e for e in pairs.errors if e]
    if failed:
        raise SystemExit(f"{setup.name}: {len(failed)} images failed to embed, e.g. {failed[0]}")
    run = EmbedRun(
        setup=setup.name,
        cpus=setup.cpus,
        seconds=seconds,
        steady_s=steady_seconds(log, seconds),
        images=len(locations),
        workers=pairs.run.workers if setup.engine == "ray" else setup.cpus,
        started_workers=pairs.run.started_workers,
        load_before=before,
        load_after=load(),
    )
    return run, pairs.image, pairs.text


def clip_spec(setup: Setup, models: Path):
    """The smoke CLIP for a setup: the local engine with k CPUs decodes in k DataLoader workers
    when k > 1 (the resource's default, 2); a Ray actor has one CPU, so it decodes inline."""
    from dataplatform.core.scoring.clip_model import ClipSpec, smoke_spec

    workers = setup.cpus if setup.engine == "local" and setup.cpus > 1 else 0
    return smoke_spec(models, ClipSpec(device="cpu", batch_size=64, num_workers=workers))


def recall(outputs: dict[str, list[dict]], truth: dict[str, dict]) -> str:
    removed = {
        row["pair_id"]: stage
        for stage in ("exact_deduped", "phash_deduped")
        for row in outputs[f"ledger/{stage}"]
    }
    lines = []
    for kind, stage in (("byte_copy", "exact_deduped"), ("perceptual_copy", "phash_deduped")):
        ids = [i for i, t in truth.items() if t["kind"] == kind]
        caught = sum(1 for i in ids if removed.get(i) == stage)
        lines.append(f"{kind}s removed by {stage}: {caught}/{len(ids)}")
    distinct = [i for i, t in truth.items() if t["kind"] == "distinct"]
    lines.append(f"distinct images removed: {sum(1 for i in distinct if i in removed)}")
    return "; ".join(lines)


@dataclass
class Bench:
    """What every setup shares: the cached day, the smoke model, the baseline's outputs."""

    work: Path
    landing: Path
    models: Path
    chunk_rows: int
    report: Report
    baseline: dict = field(default_factory=dict)

    def run(self, setup: Setup, home: Path, address: str = "") -> None:
        stages = materialize_stages(home, setup, address, self.chunk_rows)
        outputs = stage_outputs(home)
        base = self.baseline
        if "outputs" not in base:
            base["outputs"] = outputs
            kept = outputs["phash_deduped"]
            base["kept"] = ([r["image_location"] for r in kept], [r["text"] for r in kept])
        stages.same_as_baseline = outputs == base["outputs"]
        self.report.stages.append(stages)
        print(
            f"  stages: {stages.total_s:.1f} s (raw_pairs {stages.step_s['raw_pairs']:.1f} s, "
            f"its engine {stages.engine_wall_s:.1f} s on {stages.engine_workers} workers, "
            f"{stages.engine_steady_s:.1f} s once they were up); engine per stage: "
            f"{stages.engines}"
        )
        ledger = sum(len(outputs[f"ledger/{stage}"]) for stage in STAGES)
        kept_ids = [r["pair_id"] for r in outputs["phash_deduped"]]
        same_ids = kept_ids == [r["pair_id"] for r in base["outputs"]["phash_deduped"]]
        print(
            f"  rows out {stages.rows_out}, ledger rows {ledger}; kept pair_ids equal to the "
            f"baseline's: {same_ids}; every table and ledger row equal: {stages.same_as_baseline}"
        )
        spec = clip_spec(setup, self.models)
        run, image, text = embed(setup, spec, base["kept"], self.landing, address, self.chunk_rows)
        if "image" not in base:
            base["image"], base["text"] = image, text
        run.same_as_baseline = bool(
            np.array_equal(image, base["image"]) and np.array_equal(text, base["text"])
        )
        run.max_abs_diff = float(
            max(np.abs(image - base["image"]).max(), np.abs(text - base["text"]).max())
        )
        self.report.embeds.append(run)
        print(
            f"  CLIP smoke: {run.seconds:.1f} s for {run.images} pairs on {run.workers} workers "
            f"({run.steady_s:.1f} s once they were up); embeddings bit-identical to the "
            f"baseline's: {run.same_as_baseline} (max |diff| {run.max_abs_diff:.1e})"
        )

    def warm_up(self, rows: int) -> float:
        """Both engines' code paths once on a few rows, untimed: imports, the smoke model file
        and the first DuckDB connection then cost the baseline nothing more than the others."""
        started = time.perf_counter()
        home = fresh_home(self.work, "warm-up", self.landing, rows)
        setup = SETUPS[0]
        materialize_stages(home, setup, "", self.chunk_rows)
        kept = stage_outputs(home)["phash_deduped"]
        pairs = ([r["image_location"] for r in kept], [r["text"] for r in kept])
        for local in SETUPS[:2]:
            embed(local, clip_spec(local, self.models), pairs, self.landing, "", self.chunk_rows)
        shutil.rmtree(home)
        return time.perf_counter() - started


def _ratio(base: float, this: float) -> str:
    return f"{base / this:.2f}x" if this > 0 else "-"


def _table(head: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def print_tables(report: Report) -> None:
    """The figures as Markdown tables; speed-up is a baseline's seconds over these."""
    local = {s.cpus: s for s in report.stages if s.setup.startswith("local")}
    base = report.stages[0]
    print(
        f"\n(a) raw_pairs -> exact_deduped -> phash_deduped, {report.images} JPEGs "
        f"({report.megapixels:.1f} MP, {report.gigabytes:.1f} GiB) on {report.cores} cores. "
        "'engine' is raw_pairs' decode and hash (engine_wall_s, Ray actor start included); "
        "'up' is the same once the workers were up; 'steps' the three steps' seconds."
    )
    rows = []
    for s in report.stages:
        steps = sum(s.step_s.values())
        rows.append(
            [
                s.setup,
                str(s.cpus),
                f"{s.step_s['raw_pairs']:.1f}",
                f"{s.engine_wall_s:.1f}",
                f"{s.engine_steady_s:.1f}",
                f"{s.step_s['exact_deduped']:.1f}",
                f"{s.step_s['phash_deduped']:.1f}",
                f"{steps:.1f}",
                f"{report.images / s.engine_wall_s:.1f}",
                f"{report.images / s.engine_steady_s / s.cpus:.1f}",
                _ratio(base.engine_wall_s, s.engine_wall_s),
                _ratio(local[s.cpus].engine_wall_s, s.engine_wall_s),
                _ratio(sum(base.step_s.values()), steps),
                str(s.same_as_baseline),
                f"{s.load_before:.1f} / {s.load_after:.1f}",
            ]
        )
    _table(
        [
            "setup",
            "CPUs",
            "raw_pairs s",
            "engine s",
            "engine up s",
            "exact_deduped s",
            "phash_deduped s",
            "steps s",
            "engine images/s",
            "images/s per CPU, up",
            "engine vs local 1",
            "engine vs local, same CPUs",
            "steps vs local 1",
            "rows equal",
            "load before / after",
        ],
        rows,
    )
    local_e = {e.cpus: e for e in report.embeds if e.setup.startswith("local")}
    base_e = report.embeds[0]
    print(
        f"\n(b) CLIP smoke model: image and text embeddings of the {report.kept} kept pairs "
        "('up': once the actors were up and their model loaded)"
    )
    rows = [
        [
            e.setup,
            str(e.cpus),
            f"{e.seconds:.1f}",
            f"{e.steady_s:.1f}",
            f"{e.images / e.seconds:.1f}",
            f"{e.images / e.steady_s / e.cpus:.1f}",
            _ratio(base_e.seconds, e.seconds),
            _ratio(local_e[e.cpus].seconds, e.seconds),
            str(e.started_workers) if e.setup.startswith("ray") else "-",
            str(e.same_as_baseline),
            f"{e.load_before:.1f} / {e.load_after:.1f}",
        ]
        for e in report.embeds
    ]
    _table(
        [
            "setup",
            "CPUs",
            "seconds",
            "up s",
            "images/s",
            "images/s per CPU, up",
            "vs local 1",
            "vs local, same CPUs",
            "actors started",
            "bit-identical",
            "load before / after",
        ],
        rows,
    )
    by = {s.setup: s for s in report.stages}
    embeds = {e.setup: e for e in report.embeds}
    one, two = SETUPS[2].name, SETUPS[3].name
    if one in by and two in by:
        print(
            f"\nray, 2 worker nodes against 1: engine "
            f"{_ratio(by[one].engine_wall_s, by[two].engine_wall_s)} (up: "
            f"{_ratio(by[one].engine_steady_s, by[two].engine_steady_s)}), CLIP "
            f"{_ratio(embeds[one].seconds, embeds[two].seconds)} (up: "
            f"{_ratio(embeds[one].steady_s, embeds[two].steady_s)})"
        )
    for name, seconds in report.cluster_start_s.items():
        print(f"Ray cluster start-up ({name}), not in any stage time: {seconds:.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "engine")
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=DEFAULT_CHUNK_ROWS,
        help="rows a Ray actor takes at a time (the engine's default); lower it for small days",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Dagster warns that the assets' backfill policies differ and are beta: one partition here.
    warnings.filterwarnings("ignore", category=Warning, module="dagster")

    from dataplatform.core.engine.chunk_map import connect
    from dataplatform.core.engine.local_cluster import local_cluster

    work = args.work.resolve()
    landing, truth = camera_day(work, args.images)
    files = sorted((landing / DATE / "images").iterdir())
    started = time.perf_counter()
    size = sum(len(p.read_bytes()) for p in files)
    pixels = 0
    for path in files:
        with Image.open(path) as image:
            pixels += image.width * image.height
    report = Report(
        images=len(files),
        megapixels=pixels / len(files) / 1e6,
        gigabytes=size / 2**30,
        kept=0,
        page_cache_s=time.perf_counter() - started,
        cores=available_cores(),
    )
    print(
        f"{report.images} JPEGs, {report.megapixels:.1f} MP and {size / len(files) / 1e6:.2f} MB "
        f"on average; read once ({report.page_cache_s:.1f} s) so that every setup finds them in "
        f"the page cache; {report.cores} cores, 1-minute load {load():.1f}"
    )
    import dataplatform

    print(f"code: {Path(dataplatform.__file__).parent}")
    bench = Bench(work, landing, work / "models", args.chunk_rows, report)
    print(f"warm-up on {WARM_UP_ROWS} rows, untimed: {bench.warm_up(WARM_UP_ROWS):.1f} s")
    for setup in SETUPS:
        print(f"{setup.name}:")
        home = fresh_home(work, setup.name, landing)
        if setup.engine == "local":
            bench.run(setup, home)
            continue
        # Ray keeps its sockets under the temp folder, whose path must stay short.
        with tempfile.TemporaryDirectory(prefix="ray-bench-", dir="/tmp") as temp:
            began = time.perf_counter()
            with local_cluster(Path(temp), worker_nodes=setup.cpus, cpus_per_node=1) as cluster:
                connect(EngineSpec(kind="ray", address=cluster.address))
                report.cluster_start_s[setup.name] = time.perf_counter() - began
                print(f"  cluster up in {report.cluster_start_s[setup.name]:.1f} s")
                bench.run(setup, home, cluster.address)
    report.kept = len(bench.baseline["kept"][0])
    print(f"\nthe baseline's dedup: {recall(bench.baseline['outputs'], truth)}")
    print_tables(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    ok = all(s.same_as_baseline for s in report.stages) and all(
        e.same_as_baseline for e in report.embeds
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
