"""Benchmark: a partition of camera-sized JPEGs through raw_pairs, exact_deduped, phash_deduped.

The command a user types (`dagster asset materialize ... --partition`), timed end to end with
Dagster's start-up included, against the plain imagehash loop (open + sha256 + phash) on the
same files in the same process run. Then recall against the synthetic set's truth: byte copies
caught, perceptual copies caught (overall, by edit, and among those pHash can see at the
threshold), and distinct images wrongly removed.

Usage: .venv/bin/python bench/partition_e2e.py [--images 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from phash import plain_loop, synthetic_day  # noqa: E402

from dataplatform.core.dedup.phash_index import DEFAULT_PHASH_THRESHOLD  # noqa: E402
from dataplatform.core.store.home import Home  # noqa: E402
from dataplatform.core.store.warehouse import connect  # noqa: E402

DATE = "2025-01-01"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4000)
    args = parser.parse_args()
    day = synthetic_day(args.images)
    home = Home(day.parent.parent)
    truth = json.loads((home.root / f"synthetic_truth_{DATE}.json").read_text())
    rows = [json.loads(line) for line in (day / "pairs.jsonl").read_text().splitlines()]
    paths = [day / r["image"] for r in rows]

    baseline_s, _ = plain_loop(paths)
    print(f"plain loop (open + sha256 + imagehash.phash) on {len(paths)} JPEGs: {baseline_s:.1f}s")

    env = {**os.environ, "DATAPLATFORM_HOME": str(home.root)}
    with tempfile.TemporaryDirectory() as dagster_home:
        env["DAGSTER_HOME"] = dagster_home
        Path(dagster_home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        command = [
            str(Path(sys.executable).parent / "dagster"),
            "asset",
            "materialize",
            "-m",
            "dataplatform.definitions",
            "--select",
            "raw_pairs,exact_deduped,phash_deduped",
            "--partition",
            DATE,
        ]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        ours_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-4000:])
    print(f"dagster asset materialize (3 stages, end to end): {ours_s:.1f}s")
    print(f"ratio: {baseline_s / ours_s:.2f}x faster than the plain loop (goal >= 2x)")

    con = connect(home)
    removed = dict(
        con.execute(
            "SELECT pair_id, reason FROM rejections WHERE date = ? AND stage <> 'raw_pairs'", [DATE]
        ).fetchall()
    )
    raw_rejects = con.execute(
        "SELECT count(*) FROM rejections WHERE date = ? AND stage = 'raw_pairs'", [DATE]
    ).fetchone()[0]
    con.close()
    kinds = Counter(t["kind"] for t in truth.values())
    byte = [i for i, t in truth.items() if t["kind"] == "byte_copy"]
    perceptual = [i for i, t in truth.items() if t["kind"] == "perceptual_copy"]
    distinct = [i for i, t in truth.items() if t["kind"] == "distinct"]
    visible = [i for i in perceptual if truth[i]["phash_distance"] <= DEFAULT_PHASH_THRESHOLD]
    caught = lambda ids: sum(1 for i in ids if i in removed)  # noqa: E731
    print(f"\nrows: {dict(kinds)}; rejected at ingest: {raw_rejects}")
    print(f"byte copies caught:       {caught(byte)}/{len(byte)} ({caught(byte) / len(byte):.1%})")
    print(
        f"perceptual copies caught: {caught(perceptual)}/{len(perceptual)} "
        f"({caught(perceptual) / len(perceptual):.1%}; goal >= 95%)"
    )
    print(
        f"  of those within {DEFAULT_PHASH_THRESHOLD} bits by imagehash: "
        f"{caught(visible)}/{len(visible)} ({caught(visible) / max(len(visible), 1):.1%})"
    )
    for edit in sorted({truth[i]["edit"] for i in perceptual}):
        ids = [i for i in perceptual if truth[i]["edit"] == edit]
        print(f"  {edit:<14} {caught(ids)}/{len(ids)}")
    print(f"distinct images wrongly removed: {caught(distinct)}/{len(distinct)}")


if __name__ == "__main__":
    main()
