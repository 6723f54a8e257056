"""Benchmark: ingest + hash throughput, and the near-duplicate search at a million hashes.

(a) `ingest_folder` (manifest, read, SHA-256, EXIF, draft decode, pHash, both cores) against
    the plain loop a user would write: `PIL.Image.open` + `hashlib.sha256` + `imagehash.phash`,
    on the same generated camera-sized JPEGs, in one process run. Also measures how often our
    hash equals imagehash's bit for bit, and by how many bits it differs when not.
(b) the exact multi-index Hamming search (bench/phash_search.py) against brute force.

Usage: .venv/bin/python bench/phash.py [--images 2000] [--search-n 1000000] [--skip-search]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataplatform.core.dedup.phash import from_hex  # noqa: E402
from dataplatform.core.ingest.ingest_folder import IngestOptions, available_cores, ingest_folder  # noqa: E402
from dataplatform.core.samples.synthetic_images import write_synthetic_landing  # noqa: E402

OUT = ROOT / "bench" / "out"


def synthetic_day(n_images: int, seed: int = 0) -> Path:
    """A cached landing day of n_images camera-sized JPEGs (1-4 MP), generated once."""
    day = OUT / f"landing_{n_images}_{seed}" / "landing" / "2025-01-01"
    marker = day / "pairs.jsonl"
    if not marker.is_file():
        t = time.perf_counter()
        byte = n_images // 10
        perceptual = n_images // 5
        write_synthetic_landing(
            day,
            n_distinct=n_images - byte - perceptual,
            byte_copies=byte,
            perceptual_copies=perceptual,
            megapixels=(1.0, 4.0),
            seed=seed,
            workers=available_cores(),
        )
        print(f"generated {n_images} JPEGs in {time.perf_counter() - t:.0f}s under {day}")
    return day


def plain_loop(paths: list[Path]) -> tuple[float, dict[str, str]]:
    started = time.perf_counter()
    hashes = {}
    for path in paths:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        with Image.open(path) as image:
            hashes[path.name] = (digest, str(imagehash.phash(image)))
    return time.perf_counter() - started, {k: v[1] for k, v in hashes.items()}


def phash_by_file(kept) -> dict[str, str]:
    return dict(
        zip(
            [Path(u).name for u in kept.column("image_uri").to_pylist()],
            kept.column("phash").to_pylist(),
            strict=True,
        )
    )


def bench_ingest(n_images: int) -> None:
    day = synthetic_day(n_images)
    rows = [json.loads(line) for line in (day / "pairs.jsonl").read_text().splitlines()]
    paths = [day / r["image"] for r in rows]
    megapixels = []
    for p in paths[:200]:
        with Image.open(p) as im:
            megapixels.append(im.size[0] * im.size[1] / 1e6)
    print(
        f"\n(a) ingest + hash of {len(paths)} JPEGs "
        f"({np.mean(megapixels):.1f} MP mean of the first 200), {available_cores()} cores"
    )
    baseline_s, reference = plain_loop(paths)
    print(
        f"  plain loop (open + sha256 + imagehash.phash): {baseline_s:7.1f}s  "
        f"{len(paths) / baseline_s:6.1f} images/s"
    )
    started = time.perf_counter()
    result = ingest_folder(day, "2025-01-01", IngestOptions())
    ours_s = time.perf_counter() - started
    print(
        f"  dataplatform ingest_folder:                   {ours_s:7.1f}s  "
        f"{len(paths) / ours_s:6.1f} images/s"
    )
    print(f"  ratio: {baseline_s / ours_s:.2f}x faster (goal >= 3x)")
    by_name = phash_by_file(result.kept)
    dist = np.array(
        [bin(from_hex(by_name[n]) ^ from_hex(reference[n])).count("1") for n in reference]
    )
    print(
        f"  agreement with imagehash.phash: {np.mean(dist == 0):.1%} identical, "
        f"{np.mean(dist <= 2):.1%} within 2 bits, mean {dist.mean():.2f} bits, max {dist.max()}"
    )
    start = time.perf_counter()
    full = ingest_folder(day, "2025-01-01", IngestOptions(draft_size=None))
    full_s = time.perf_counter() - start
    full_by_name = phash_by_file(full.kept)
    exact = np.mean([full_by_name[n] == reference[n] for n in reference])
    print(
        f"  with draft decoding off: {full_s:.1f}s ({baseline_s / full_s:.2f}x), "
        f"{exact:.1%} identical to imagehash"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--search-n", type=int, default=1_000_000)
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    bench_ingest(args.images)
    if not args.skip_search:
        import phash_search

        print(f"\n(b) near-duplicate search over {args.search_n} hashes")
        phash_search.main(["--n", str(args.search_n)])


if __name__ == "__main__":
    main()
