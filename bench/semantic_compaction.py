"""Issue 13: the memory of a semantic compaction day, with the new segment's pages released
after each block (now) and without (before).

Four semantic segments of ``--rows`` random 512-d unit vectors (float32 exact vectors, 256
lists) are merged into one by ``semantic_state.merge_segments``, as the fourth day of a size
tier triggers it. The new segment is filled through memory maps; ``release`` writes each block
back and drops its pages (``MADV_DONTNEED``), and the baseline child turns it off. Each merge
runs in a fresh child on the same sources; the peak is the child's ``VmHWM``, printed beside
its RSS before the merge.

Run: ``.venv/bin/python bench/semantic_compaction.py`` (``--rows 400000``: 1.6M rows merged).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dataplatform.core.dedup import semantic_state

DIM = 512
LISTS = 256


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build(work: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    quantizer = semantic_state.train_quantizer(_unit(rng, 20_000), work / "quantizer", nlist=LISTS)
    for k in range(4):
        date = f"2024-01-0{k + 1}"
        ids = [f"{k}-{i}" for i in range(rows)]
        vectors = _unit(rng, rows)
        semantic_state.write_segment(work / f"s{k}", quantizer, ids, [date] * rows, vectors)


def child(work: str, how: str) -> None:
    if how == "before":
        semantic_state._SegmentWriter.release = lambda self: None  # type: ignore[method-assign]
    sources = [Path(work) / f"s{k}" for k in range(4)]
    before = _rss_mib("VmRSS")
    start = time.perf_counter()
    semantic_state.merge_segments(sources, Path(work) / f"merged-{how}")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak": _rss_mib("VmHWM"), "before": before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000, help="rows per segment")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="semantic-compaction-"))
    try:
        started = time.perf_counter()
        build(work, args.rows)
        print(f"4 segments of {args.rows:,} rows built in {time.perf_counter() - started:.0f} s")
        print(f"{'merge':>8} {'rows out':>12} {'seconds':>8} {'peak MiB':>9} {'(before)':>9}")
        for how in ("before", "now"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(work), how],
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
