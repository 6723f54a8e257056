"""Issue 13: the memory of a compaction day, for the hash states and the semantic state, now
beside before.

- ``exact``: four segments of ``--rows`` rows (the exact_deduped state's columns: pair_id,
  date, SHA-256) merged into one, as the fourth day of a size tier triggers it. ``now`` is
  ``StateStore._merge`` (a chunk of 64k rows per segment at a time); ``before`` is the merge
  it replaced: every row of the four read, concatenated and sorted at once.
- ``semantic``: four semantic segments of ``--semantic-rows`` random 512-d unit vectors
  (float32 exact vectors, 256 lists) merged by ``semantic_state.merge_segments``. The new
  segment is filled through memory maps; ``now`` writes each block back and drops its pages
  (``_SegmentWriter.release``), ``before`` turns that off.

Each merge runs in a fresh child process on a copy of the same sources (hard links); seconds
are the merge's, the peak is the child's ``VmHWM`` (printed beside its RSS before the merge).

Run: ``.venv/bin/python bench/compaction.py`` (``--rows 1600000``: the 6.4M-row merge that a
10M-row history performs; ``--semantic-rows 400000``: 1.6M vectors merged).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from dataplatform.core.dedup import semantic_state
from dataplatform.core.dedup.dedup_state import StateStore, key_of_hex
from dataplatform.core.dedup.history_state import SHA_SCHEMA

DAYS = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _day(date: str, rows: int, seed: int) -> tuple[np.ndarray, pa.Table]:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, 32), dtype=np.uint8)
    shas = [bytes(r).hex() for r in raw]
    table = pa.table(
        {
            "pair_id": [f"{date}-{i}" for i in range(rows)],
            "date": [date] * rows,
            "image_sha256": shas,
        },
        schema=SHA_SCHEMA,
    )
    return key_of_hex(shas), table


def build(folder: Path, rows: int) -> None:
    """Four one-day segments, recorded without compaction (the merge is what is measured)."""
    store = StateStore(folder, "exact_deduped", SHA_SCHEMA)
    store._compacted = lambda segments: segments  # type: ignore[method-assign]
    for k, date in enumerate(DAYS):
        store.record_day(date, *_day(date, rows, k), f"c{k}")


def _merge_whole(store: StateStore, group: list) -> None:
    """The merge before chunking: all four segments' rows in memory at once."""
    keys, tables = [], []
    for segment in group:
        rows = store._rows(segment)
        keys.append(np.asarray(store._keys(segment)))
        tables.append(rows)
    merged = pa.concat_tables(tables)
    store._write_segment(np.concatenate(keys), merged)


def build_semantic(work: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    quantizer = semantic_state.train_quantizer(_unit(rng, 20_000), work / "quantizer", nlist=256)
    for k, date in enumerate(DAYS):
        ids = [f"{k}-{i}" for i in range(rows)]
        vectors = _unit(rng, rows)
        semantic_state.write_segment(work / f"s{k}", quantizer, ids, [date] * rows, vectors)


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 512)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def child(stage: str, folder: str, how: str) -> None:
    before = _rss_mib("VmRSS")
    start = time.perf_counter()
    if stage == "semantic":
        if how == "before":
            semantic_state._SegmentWriter.release = lambda self: None  # type: ignore[method-assign]
        sources = [Path(folder) / f"s{k}" for k in range(len(DAYS))]
        semantic_state.merge_segments(sources, Path(folder) / "merged")
    else:
        store = StateStore(Path(folder), "exact_deduped", SHA_SCHEMA)
        group = [s for s in store.manifest() if s.name]
        if how == "now":
            store._merge(group)
        else:
            _merge_whole(store, group)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak": _rss_mib("VmHWM"), "before": before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_600_000, help="exact rows per segment")
    parser.add_argument("--semantic-rows", type=int, default=400_000, help="vectors per segment")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compaction-bench-"))
    try:
        print(
            f"{'state':>9} {'merge':>7} {'rows out':>12} {'seconds':>8} {'peak MiB':>9} "
            f"{'(before)':>9}"
        )
        for stage, rows, make in (
            ("exact", args.rows, build),
            ("semantic", args.semantic_rows, build_semantic),
        ):
            base = work / stage
            base.mkdir()
            make(base, rows)
            for how in ("before", "now"):
                copy = work / f"{stage}-{how}"
                shutil.copytree(base, copy, copy_function=os.link)
                out = subprocess.run(
                    [sys.executable, __file__, "--child", stage, str(copy), how],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                m = json.loads(out.strip().splitlines()[-1])
                print(
                    f"{stage:>9} {how:>7} {4 * rows:>12,} {m['seconds']:>8.1f} "
                    f"{m['peak']:>9,.0f} {m['before']:>9,.0f}"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
