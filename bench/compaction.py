"""Issue 13: the memory of a compaction day, the streamed merge beside merging segments whole.

Four segments of ``--rows`` rows each (the exact_deduped state's columns: pair_id, date,
SHA-256) are merged into one, as the fourth day of a size tier triggers it. ``stream`` is
``StateStore._merge`` (a chunk of 64k rows per segment at a time); ``whole`` is the merge
before it: every row of the four read, concatenated and sorted at once. Each runs in a fresh
child process on a copy of the same state (hard links); seconds are the merge's, the peak is
the child's ``VmHWM`` (printed beside its RSS before the merge).

Run: ``.venv/bin/python bench/compaction.py`` (``--rows 1600000``: the 6.4M-row merge that a
10M-row history performs).
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


def child(folder: str, how: str) -> None:
    store = StateStore(Path(folder), "exact_deduped", SHA_SCHEMA)
    group = [s for s in store.manifest() if s.name]
    before = _rss_mib("VmRSS")
    start = time.perf_counter()
    if how == "stream":
        store._merge(group)
    else:
        _merge_whole(store, group)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak": _rss_mib("VmHWM"), "before": before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_600_000, help="rows per segment")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compaction-bench-"))
    try:
        base = work / "base"
        started = time.perf_counter()
        build(base, args.rows)
        print(f"4 segments of {args.rows:,} rows built in {time.perf_counter() - started:.0f} s")
        print(f"{'merge':>8} {'rows out':>12} {'seconds':>8} {'peak MiB':>9} {'(before)':>9}")
        for how in ("whole", "stream"):
            copy = work / how
            shutil.copytree(base, copy, copy_function=os.link)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(copy), how],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            m = json.loads(out.strip().splitlines()[-1])
            print(
                f"{how:>8} {4 * args.rows:>12,} {m['seconds']:>8.1f} {m['peak']:>9,.0f} "
                f"{m['before']:>9,.0f}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
