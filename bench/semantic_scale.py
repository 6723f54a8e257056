"""Issue 13, semantic_deduped: a day of CLIP-like embeddings against a growing kept history.

The state path is what the asset does now (``core/dedup/semantic_history``): search the
persistent IVF-SQ8 segments for each day vector's nearest earlier kept pair at the threshold
(``SemanticStore.nearest``), ``greedy_keep``, record the day. The baseline is the code before
the state: every earlier embedding in memory and ``semantic_deduplicate`` building its index
over them (``find_similar_between``). Each cell runs in a fresh child process; seconds are the
day's work. Peak is the child's ``VmHWM`` (resident memory, memory-mapped file pages included)
when the day's work ends; "day MiB" is the same peak counted from the end of generating the day
(``/proc/self/clear_refs``), i.e. what deciding the day itself needs, which the generator's
temporaries (about 1.1 GiB) would otherwise hide.

Data: unit 512-d vectors around 20,000 shared centres (cosine 0.9-0.99 to their centre, so
clusters hold many near neighbours), days of ``--day`` vectors; the day to decide has 10% edited
copies of history rows (cosine >= 0.95 to them) and 3% copies within the day. The history is
recorded into the state a day at a time (its quantizer trained once, on a sample of the first
days, as ``rebuild-state`` trains it) and kept as .npy day files for the baseline.

Recall: the state's history pairs (``SemanticStore.search``, every pair) for
``--recall-queries`` of the day's vectors against an exact float64 scan of the whole history, at
the threshold, after the day's peak is taken.

Run: ``.venv/bin/python bench/semantic_scale.py`` (histories 0, 200k, 1M; ``--sizes`` for
others). The issue's 5M-vector goal needs about 13 GB of state and a long encode; say
``--sizes 0,5000000`` on a machine that has the time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

DIM = 512
THRESHOLD = 0.95
CENTRES = 20_000
SAMPLE_DAYS = 2
FIRST_DAY = "2024-01-01"


def _date(k: int) -> str:
    return str(np.datetime64(FIRST_DAY) + np.timedelta64(k, "D"))


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _centres() -> np.ndarray:
    return _unit(np.random.default_rng(1).standard_normal((CENTRES, DIM), np.float32))


def _around(rng: np.random.Generator, centres: np.ndarray, spread: float) -> np.ndarray:
    """Unit vectors at cosine about 1 / sqrt(1 + spread**2 * DIM) from ``centres``."""
    noise = rng.standard_normal(centres.shape, np.float32) * np.float32(spread)
    return _unit(centres + noise)


def history_day(k: int, day: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1000 + k)
    picks = centres[rng.integers(0, len(centres), day)]
    return _around(rng, picks, rng.choice([0.01, 0.02, 0.03], day)[:, None])


def decide_day(history: list[Path], day: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(7)
    vectors = history_day(10_000, day, centres)
    if history:
        n = day // 10
        source = np.load(history[int(rng.integers(0, len(history)))], mmap_mode="r")
        rows = np.sort(rng.choice(len(source), min(n, len(source)), replace=False))
        vectors[:n] = _around(rng, np.asarray(source[rows]), 0.004)
    inside = day * 3 // 100
    vectors[day - inside :] = _around(rng, vectors[:inside], 0.004)
    return vectors


def _ids(date: str, n: int) -> pa.Table:
    return pa.table({"pair_id": [f"{date}-{i:07d}" for i in range(n)], "date": [date] * n})


def build(work: Path, days: int, day: int) -> None:
    """History days as .npy files and in the semantic state (quantizer trained once)."""
    from dataplatform.core.dedup.semantic_history import SemanticStore

    centres = _centres()
    state = SemanticStore(work / "state")
    have = len(list((work / "days").glob("*.npy"))) if (work / "days").exists() else 0
    (work / "days").mkdir(parents=True, exist_ok=True)
    for k in range(have, days):
        vectors = history_day(k, day, centres)
        np.save(work / "days" / f"{_date(k)}.npy", vectors)
        if state.quantizer() is None:
            sample = np.concatenate([history_day(j, day, centres) for j in range(SAMPLE_DAYS)])
            state._training = state.train(sample, expected_rows=days * day)
        state.record_day(_date(k), vectors, _ids(_date(k), day), "bench")
        state._training = None


def _peak_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Restart ``VmHWM`` from the current resident size (Linux); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def child(path: str, work: str, days: int, day: int, recall_queries: int) -> None:
    from dataplatform.core.dedup.semantic_history import SemanticStore
    from dataplatform.core.dedup.semantic_index import (
        find_similar_pairs,
        greedy_keep,
        semantic_deduplicate,
    )

    work_dir = Path(work)
    files = sorted((work_dir / "days").glob("*.npy"))[:days]
    vectors = decide_day(files, day, _centres())
    rank = np.arange(day)
    date = _date(days)
    imported = _peak_mib()
    reset = _reset_peak()
    start = time.perf_counter()
    result: dict[str, object] = {}
    if path == "state":
        state = SemanticStore(work_dir / "state")
        history = state.nearest(vectors, THRESHOLD, date)
        decision = greedy_keep(
            rank,
            find_similar_pairs(vectors, THRESHOLD),
            (history.query, history.row, history.similarity),
        )
        kept = decision.keep
        state.record_day(date, vectors[kept], _ids(date, day).filter(pa.array(kept)), "bench")
        seconds = time.perf_counter() - start
        day_peak = _peak_mib()
        state.drop_dates([date])
        if recall_queries:
            pairs = state.search(vectors[:recall_queries], THRESHOLD, date)
            found = set(
                zip(
                    pairs.query.tolist(),
                    pairs.history["pair_id"].take(pa.array(pairs.row)).to_pylist(),
                    strict=True,
                )
            )
            exact = set()
            for f in files:
                block = np.load(f, mmap_mode="r")
                sims = vectors[:recall_queries].astype(np.float64) @ np.asarray(block).T
                for a, b in zip(*np.nonzero(sims >= THRESHOLD), strict=True):
                    exact.add((int(a), f"{f.stem}-{int(b):07d}"))
            result["recall"] = len(found & exact) / len(exact) if exact else 1.0
            result["exact_pairs"] = len(exact)
            result["false"] = len(found - exact)
    else:
        history_vectors = np.concatenate([np.load(f) for f in files]) if files else None
        decision = semantic_deduplicate(vectors, THRESHOLD, rank, history_vectors)
        seconds = time.perf_counter() - start
        day_peak = _peak_mib()
    result.update(
        seconds=seconds,
        removed=int((~decision.keep).sum()),
        peak_mib=max(imported, day_peak),
        day_mib=day_peak if reset else float("nan"),
        imported_mib=imported,
    )
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,200000,1000000")
    parser.add_argument("--day", type=int, default=100_000)
    parser.add_argument("--baseline-max", type=int, default=200_000, help="largest baseline")
    parser.add_argument("--recall-queries", type=int, default=500)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="semantic-scale-"))
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"semantic_deduped: a day of {args.day:,} 512-d vectors, threshold {THRESHOLD}")
    print(
        f"{'history':>10} {'state s':>9} {'base s':>9} {'state MiB':>10} {'base MiB':>9} "
        f"{'state day MiB':>14} {'base day MiB':>13} {'recall':>8} {'removed':>16}"
    )
    for size in sizes:
        days = size // args.day
        started = time.perf_counter()
        build(work, days, args.day)
        built = time.perf_counter() - started
        cells = {}
        for path in ("state", "baseline"):
            if path == "baseline" and size > args.baseline_max:
                cells[path] = None
                continue
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    path,
                    str(work),
                    str(days),
                    str(args.day),
                    str(args.recall_queries if path == "state" else 0),
                ],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                cells[path] = {"error": done.stderr.strip().splitlines()[-1][:80]}
            else:
                cells[path] = json.loads(done.stdout.strip().splitlines()[-1])
        s, b = cells["state"], cells["baseline"]

        def secs(c):
            return "-" if c is None else (c.get("error", "")[:9] or f"{c['seconds']:.1f}")

        def mib(c, key="peak_mib"):
            return "-" if c is None or "error" in c else f"{c[key]:,.0f}"

        recall = f"{s['recall']:.2%}" if s and "recall" in s and size else "-"
        removed = f"{s.get('removed', '-')}/{b.get('removed', '-') if b else '-'}" if s else "-"
        print(
            f"{size:>10,} {secs(s):>9} {secs(b):>9} {mib(s):>10} {mib(b):>9} "
            f"{mib(s, 'day_mib'):>14} {mib(b, 'day_mib'):>13} {recall:>8} "
            f"{removed:>16}   (history built in {built:.0f} s)",
            flush=True,
        )
    print("baseline runs up to --baseline-max history vectors; '-' = not run")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
