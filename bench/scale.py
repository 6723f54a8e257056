"""Issue 13: a global dedup day against a growing history, the persistent state beside the rebuild.

For each global dedup stage, a day of ``--day`` pairs (100,000) is decided against histories of
``--sizes`` rows (0, 1M, 3M, 10M) by two code paths on the same data:

- state: what the assets do now. ``history_state.sync`` (partition footers only when nothing is
  stale), the lookups of only the history rows the day can hit (``ingested_before``,
  ``kept_sha_before``, ``kept_phash_near``), the decision and the checks on that subset, the
  day's commit, then ``record`` of the day into the state;
- baseline: what the assets did before the state (``git show cbb2392:dataplatform/assets/``,
  the commit that added the state before the assets used it):
  ``read_history`` of every earlier partition, the same decision functions on all of it, the
  checks over all of it, the day's commit.

Each (stage, path, history) runs in a fresh child process: seconds are the wall time of the
day's work (imports and data generation excluded), peak RSS is the child's ``VmHWM`` at the
end (absolute), printed beside its RSS after imports so the work's own share shows. The
baseline runs only while it fits: a size whose peak, fitted on the smaller sizes, exceeds
``--max-baseline-gib`` is skipped, and a child whose RSS passes that limit is stopped; larger
sizes are then skipped too, and the table says why. Where both ran, the decisions (kept
pair_ids, ledger pair_id/reason/duplicate_of, check outcomes) are compared.

Data: history days of ``--day`` random pairs (pair_id, date, 64-hex SHA-256, 16-hex pHash),
built once and grown size by size, committed to raw_pairs, exact_deduped and phash_deduped (one
commit per day) and recorded into the three states with that commit, so both paths read the
same days. The day to decide: for exact, 5% byte copies of random history rows, 5% copies
within the day, 5% reused history pair_ids; for pHash, 10% near copies (1-8 flipped bits) of
history hashes and 3% near copies (0-8 bits) within the day. Random 64-bit hashes are spread
more evenly than real pHashes, which cluster, so real pHash searches find more candidates.

The state child works on a copy of the state folder made of hard links (segments are immutable
and every write is a new file renamed into place), so its ``record`` of the day, and any
compaction it triggers, never reach the next measurement; the warehouse is shared, and the
day's own partition only ever feeds a day that is re-committed before it is read.

The projection fits, per path, the measured day's seconds against history rows as a line
a + b * h (least squares). Only one day size is measured, so a day of R pairs is given as a
range: low = a * R / day + b * h (the history's cost does not grow with the day: reading it,
building a search over it) and high = (a + b * h) * R / day (it grows with every pair of the
day: lookups); a cost made of both kinds lies between. Day k of a year at R pairs a day has
(k - 1) * R history rows; the year is the sum of its 365 days.

The semantic stage is measured separately (bench/semdedup.py); a stage is one entry of
``STAGES`` here (its two day functions and its day input), so it can join this table later.

Run: ``.venv/bin/python bench/scale.py`` (the full bench: building 10M rows of history and a
baseline that reads all of it, best alone on the machine); ``--sizes 0,200000 --day 20000``
takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dataplatform.assets.dedup_history import input_commit, rows_by_id, rows_with
from dataplatform.assets.exact_deduped import CHECK_SHA_UNIQUE
from dataplatform.assets.exact_deduped import STAGE as EXACT
from dataplatform.assets.phash_deduped import CHECK_NO_NEAR_DUPLICATES, duplicate_ledger
from dataplatform.assets.phash_deduped import STAGE as PHASH
from dataplatform.assets.raw_pairs import KEY as RAW_KEY
from dataplatform.assets.reporting import (
    CHECK_PAIR_ID_UNIQUE,
    GLOBAL_SCOPE,
    read_input,
    read_input_history,
    table_column,
    unique_check,
    write_stage,
)
from dataplatform.core.dedup.exact_dedup import ExactDedupResult, exact_deduplicate
from dataplatform.core.dedup.history_state import (
    EXACT_KEPT,
    INGESTED_IDS,
    PHASH_KEPT,
    SPECS,
    ingested_before,
    kept_phash_near,
    kept_sha_before,
    record,
    state_root,
    sync,
)
from dataplatform.core.dedup.phash_dedup import (
    kept_pairs_within,
    phash_deduplicate,
)
from dataplatform.core.dedup.phash_index import DEFAULT_PHASH_THRESHOLD
from dataplatform.core.store.home import Home
from dataplatform.core.store.schema import ledger_row, ledger_table
from dataplatform.core.store.warehouse import commit_stage

RAW = RAW_KEY.path[-1]
THRESHOLD = DEFAULT_PHASH_THRESHOLD
FIRST_DAY = date(2024, 1, 1)
SEED = 13
BASELINE = "baseline"
STATE = "state"
PATHS = (STATE, BASELINE)
YEAR_DAYS = 365
PROJECTED_PAIRS_A_DAY = (1_000_000, 10_000_000)
GOAL_DAY_S = 30.0
GOAL_DAY_GROWTH = 2.0
GOAL_PEAK_GROWTH = 1.5
GOAL_SIZES = (1_000_000, 10_000_000)
_MIB = 1 << 20
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)


# ---- data ---------------------------------------------------------------------------------------


def _strings(chars: np.ndarray) -> pa.Array:
    """Rows of a (n, width) uint8 matrix as an Arrow string array, without a Python object each."""
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars).tobytes())
    )


def _hex(raw: np.ndarray) -> pa.Array:
    """Lower-case hex of each row of a (n, k) uint8 matrix."""
    out = np.empty((raw.shape[0], 2 * raw.shape[1]), np.uint8)
    out[:, 0::2] = _HEX_DIGITS[raw >> 4]
    out[:, 1::2] = _HEX_DIGITS[raw & 15]
    return _strings(out)


def _pair_ids(prefix: np.ndarray, number: np.ndarray) -> pa.Array:
    """``prefix`` (one ASCII letter a row) and ``number`` as 12 digits: ``h000000123456``."""
    digits = (number[:, None] // 10 ** np.arange(11, -1, -1, dtype=np.int64)) % 10
    return _strings(np.column_stack([prefix, digits.astype(np.uint8) + ord("0")]))


def _day_date(k: int) -> str:
    return (FIRST_DAY + timedelta(days=k)).isoformat()


@dataclass
class _Pairs:
    """Pairs as numpy arrays: pair_id = prefix letter + number, sha256 bytes, pHash."""

    prefix: np.ndarray  # (n,) uint8
    number: np.ndarray  # (n,) int64
    sha: np.ndarray  # (n, 32) uint8
    phash: np.ndarray  # (n,) uint64

    def table(self, day: str) -> pa.Table:
        n = len(self.number)
        return pa.table(
            {
                "pair_id": _pair_ids(self.prefix, self.number),
                "date": pa.array([day] * n, pa.string()),
                "image_sha256": _hex(self.sha),
                "phash": _hex(self.phash.astype(">u8").view(np.uint8).reshape(n, 8)),
            }
        )


def _random_pairs(rng: np.random.Generator, letter: str, first: int, n: int) -> _Pairs:
    return _Pairs(
        np.full(n, ord(letter), np.uint8),
        np.arange(first, first + n, dtype=np.int64),
        np.frombuffer(rng.bytes(32 * n), np.uint8).reshape(n, 32).copy(),
        np.frombuffer(rng.bytes(8 * n), np.uint64).copy(),
    )


def _history_day(k: int, day: int) -> _Pairs:
    """History day ``k``: the same pairs every time it is asked for (seeded by ``k``)."""
    return _random_pairs(np.random.default_rng([SEED, k]), "h", k * day, day)


def _history_rows(rows: np.ndarray, day: int) -> _Pairs:
    """The history pairs at global row numbers ``rows`` (regenerating only their days)."""
    picked = _Pairs(
        np.full(len(rows), ord("h"), np.uint8),
        rows.astype(np.int64),
        np.empty((len(rows), 32), np.uint8),
        np.empty(len(rows), np.uint64),
    )
    for k in np.unique(rows // day).tolist():
        at = np.flatnonzero(rows // day == k)
        source = _history_day(k, day)
        picked.sha[at] = source.sha[rows[at] % day]
        picked.phash[at] = source.phash[rows[at] % day]
    return picked


def _flip_bits(rng: np.random.Generator, hashes: np.ndarray, low: int, high: int) -> np.ndarray:
    """Each hash with ``low``..``high`` distinct random bits flipped."""
    counts = rng.integers(low, high + 1, len(hashes))
    out = hashes.copy()
    for c in range(max(low, 1), high + 1):
        at = np.flatnonzero(counts == c)
        if at.size:
            bits = np.argsort(rng.random((at.size, 64)), axis=1)[:, :c].astype(np.uint64)
            out[at] ^= np.bitwise_or.reduce(np.left_shift(np.uint64(1), bits), axis=1)
    return out


def exact_day(history_rows: int, day: int) -> _Pairs:
    """Raw pairs of the day: 5% byte copies of history, 5% copies within it, 5% reused ids."""
    rng = np.random.default_rng([SEED, 1, history_rows])
    pairs = _random_pairs(rng, "d", 0, day)
    share = day // 20
    slots = rng.permutation(day)
    reused, copies, within, fresh = (
        slots[:share],
        slots[share : 2 * share],
        slots[2 * share : 3 * share],
        slots[3 * share :],
    )
    if history_rows:
        source = _history_rows(rng.choice(history_rows, share, replace=False), day)
        pairs.prefix[reused], pairs.number[reused] = source.prefix, source.number
        pairs.sha[copies] = _history_rows(rng.integers(0, history_rows, share), day).sha
    pairs.sha[within] = pairs.sha[rng.choice(fresh, share)]
    return pairs


def phash_day(history_rows: int, day: int) -> _Pairs:
    """Exact-deduped pairs of the day: 10% near copies of history pHashes, 3% within the day."""
    rng = np.random.default_rng([SEED, 2, history_rows])
    pairs = _random_pairs(rng, "q", 0, day)
    near_history, near_day = day // 10, 3 * day // 100
    slots = rng.permutation(day)
    to_history = slots[:near_history]
    to_day = slots[near_history : near_history + near_day]
    fresh = slots[near_history + near_day :]
    if history_rows:
        source = _history_rows(rng.integers(0, history_rows, near_history), day)
        pairs.phash[to_history] = _flip_bits(rng, source.phash, 1, THRESHOLD)
    pairs.phash[to_day] = _flip_bits(rng, pairs.phash[rng.choice(fresh, near_day)], 0, THRESHOLD)
    return pairs


def grow_history(home: Home, have: int, want: int, day: int) -> None:
    """Add history days ``have``..``want - 1``: one commit of the three tables a day, and the day
    recorded into each state with that commit (so ``sync`` finds nothing stale)."""
    for k in range(have, want):
        when = _day_date(k)
        rows = _history_day(k, day).table(when)
        commit = commit_stage(home, when, {spec.table: rows for spec in SPECS})
        for spec in SPECS:
            record(home, spec, when, rows, commit=commit)


# ---- the day, per stage and path (run in the child) ---------------------------------------------


class Steps:
    """Wall seconds per named step of the day."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class Decided:
    kept: pa.Table
    ledger: pa.Table
    checks: dict[str, bool]
    rebuilt: int = 0  # days the state rebuilt from the warehouse (0 unless the bench is wrong)


def _exact_ledger(
    date: str, result: ExactDedupResult, rows_of: Callable[[list[str]], list[dict]]
) -> pa.Table:
    """The exact stage's ledger, as both versions of the asset write it."""
    ledger_rows = []
    reused = result.reused_ids.to_pylist()
    for row, hit in zip(rows_of([r["pair_id"] for r in reused]), reused, strict=True):
        ledger_rows.append(
            ledger_row(
                row, EXACT, "duplicate_pair_id", f"pair_id already ingested on {hit['first_date']}"
            )
        )
    dups = result.duplicates.to_pylist()
    for row, dup in zip(rows_of([d["pair_id"] for d in dups]), dups, strict=True):
        where = "an earlier day" if dup["duplicate_of_date"] < date else "this day"
        ledger_rows.append(
            ledger_row(
                row,
                EXACT,
                "exact_duplicate",
                f"same SHA-256 as {dup['duplicate_of']} ({where}, {dup['duplicate_of_date']})",
                duplicate_of=dup["duplicate_of"],
                distance=0.0,
            )
        )
    return ledger_table(sorted(ledger_rows, key=lambda r: r["pair_id"]))


def exact_state(home: Home, date: str, step: Steps) -> Decided:
    """exact_deduped as the asset runs it now (dataplatform/assets/exact_deduped.py)."""
    with step("input"):
        ingested_commit = input_commit(home, RAW, date)
        current = read_input(home, RAW, date)
    with step("history"):
        rebuilt = len(sync(home, INGESTED_IDS, date)) + len(sync(home, EXACT_KEPT, date))
    with step("lookup"):
        ids_history = ingested_before(home, current, date)
        kept_history = kept_sha_before(home, current, date)
    with step("decide"):
        result = exact_deduplicate(current, kept_history, ids_history)
    with step("ledger+checks"):
        ledger = _exact_ledger(date, result, lambda ids: rows_by_id(current, ids))
        kept_ids = table_column(result.kept, "pair_id")
        kept_sha = table_column(result.kept, "image_sha256")
        sha_unique = unique_check(
            CHECK_SHA_UNIQUE,
            "image_sha256",
            kept_sha
            + table_column(rows_with(kept_history, "image_sha256", kept_sha), "image_sha256"),
            GLOBAL_SCOPE,
        )
        EXACT_KEPT.store(home).rows_before(date)
        ids_unique = unique_check(
            CHECK_PAIR_ID_UNIQUE,
            "pair_id",
            kept_ids + table_column(rows_with(ids_history, "pair_id", kept_ids), "pair_id"),
            GLOBAL_SCOPE,
        )
    with step("write"):
        write_stage(home, EXACT, date, result.kept, ledger)
    with step("record"):
        record(home, INGESTED_IDS, date, current, commit=ingested_commit)
        record(home, EXACT_KEPT, date, result.kept)
    checks = {CHECK_SHA_UNIQUE: sha_unique.passed, CHECK_PAIR_ID_UNIQUE: ids_unique.passed}
    return Decided(result.kept, ledger, checks, rebuilt)


def exact_baseline(home: Home, date: str, step: Steps) -> Decided:
    """exact_deduped as the asset ran it before the state (cbb2392)."""
    with step("input"):
        current = read_input(home, RAW, date)
    with step("history"):
        kept_history = read_input_history(home, EXACT, date, ["pair_id", "image_sha256", "date"])
        ids_history = read_input_history(home, RAW, date, ["pair_id", "date"])
    with step("decide"):
        result = exact_deduplicate(current, kept_history, ids_history)
    with step("ledger+checks"):
        by_id = {row["pair_id"]: row for row in current.to_pylist()}
        ledger = _exact_ledger(date, result, lambda ids: [by_id[i] for i in ids])
        kept_ids = table_column(kept_history, "pair_id") + table_column(result.kept, "pair_id")
        kept_sha = table_column(kept_history, "image_sha256") + table_column(
            result.kept, "image_sha256"
        )
        sha_unique = unique_check(CHECK_SHA_UNIQUE, "image_sha256", kept_sha, GLOBAL_SCOPE)
        ids_unique = unique_check(CHECK_PAIR_ID_UNIQUE, "pair_id", kept_ids, GLOBAL_SCOPE)
    with step("write"):
        write_stage(home, EXACT, date, result.kept, ledger)
    checks = {CHECK_SHA_UNIQUE: sha_unique.passed, CHECK_PAIR_ID_UNIQUE: ids_unique.passed}
    return Decided(result.kept, ledger, checks)


def phash_state(home: Home, date: str, step: Steps) -> Decided:
    """phash_deduped as the asset runs it now (dataplatform/assets/phash_deduped.py)."""
    with step("input"):
        current = read_input(home, EXACT, date)
    with step("history"):
        rebuilt = len(sync(home, INGESTED_IDS, date)) + len(sync(home, PHASH_KEPT, date))
    with step("lookup"):
        history = kept_phash_near(home, current, date, THRESHOLD)
    with step("decide"):
        result = phash_deduplicate(current, history, THRESHOLD)
    with step("ledger+checks"):
        dups = result.duplicates
        ledger = duplicate_ledger(
            result, rows_by_id(current, [d["pair_id"] for d in dups]), THRESHOLD
        )
        near = kept_pairs_within(result.kept, history, THRESHOLD)
        PHASH_KEPT.store(home).rows_before(date)
        kept_ids = table_column(result.kept, "pair_id")
        ids_unique = unique_check(
            CHECK_PAIR_ID_UNIQUE,
            "pair_id",
            kept_ids + table_column(ingested_before(home, result.kept, date), "pair_id"),
            GLOBAL_SCOPE,
        )
    with step("write"):
        write_stage(home, PHASH, date, result.kept, ledger)
    with step("record"):
        record(home, PHASH_KEPT, date, result.kept)
    checks = {CHECK_NO_NEAR_DUPLICATES: not near, CHECK_PAIR_ID_UNIQUE: ids_unique.passed}
    return Decided(result.kept, ledger, checks, rebuilt)


def phash_baseline(home: Home, date: str, step: Steps) -> Decided:
    """phash_deduped as the asset ran it before the state (cbb2392)."""
    with step("input"):
        current = read_input(home, EXACT, date)
    with step("history"):
        history = read_input_history(home, PHASH, date, ["pair_id", "phash", "date"])
    with step("decide"):
        result = phash_deduplicate(current, history, THRESHOLD)
    with step("ledger+checks"):
        by_id = {row["pair_id"]: row for row in current.to_pylist()}
        ledger = duplicate_ledger(
            result, [by_id[d["pair_id"]] for d in result.duplicates], THRESHOLD
        )
        near = kept_pairs_within(result.kept, history, THRESHOLD)
        ids_unique = unique_check(
            CHECK_PAIR_ID_UNIQUE,
            "pair_id",
            table_column(history, "pair_id") + table_column(result.kept, "pair_id"),
            GLOBAL_SCOPE,
        )
    with step("write"):
        write_stage(home, PHASH, date, result.kept, ledger)
    checks = {CHECK_NO_NEAR_DUPLICATES: not near, CHECK_PAIR_ID_UNIQUE: ids_unique.passed}
    return Decided(result.kept, ledger, checks)


@dataclass(frozen=True)
class Stage:
    """One global dedup stage of the bench: its day on each path, and how its input is made."""

    name: str
    planted: str
    input_table: str
    day_input: Callable[[int, int], _Pairs]
    run: dict[str, Callable[[Home, str, Steps], Decided]]


STAGES = (
    Stage(
        EXACT,
        "5% byte copies of history, 5% within the day, 5% reused pair_ids",
        RAW,
        exact_day,
        {STATE: exact_state, BASELINE: exact_baseline},
    ),
    Stage(
        PHASH,
        f"10% near copies of history (1-{THRESHOLD} bits), 3% within the day",
        EXACT,
        phash_day,
        {STATE: phash_state, BASELINE: phash_baseline},
    ),
)
_STAGE_BY_NAME = {s.name: s for s in STAGES}


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / _MIB


def _peak_rss_mib() -> float:
    """This process's peak RSS since its exec (``VmHWM``). Not ``ru_maxrss``: Linux carries that
    over from the parent across fork and exec, so every child would report at least the
    parent's size (the parent holds the generated history: 2.4 GiB at 10M rows)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_split_mib() -> dict[str, float]:
    """The RSS now, as anonymous memory and mapped file pages (the state memory-maps its files,
    and touched pages of those count in ``ru_maxrss`` though the kernel can drop them)."""
    split = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("RssAnon:", "RssFile:")):
                split[line.split(":")[0]] = int(line.split()[1]) / 1024
    return split


def run_child(stage: str, path: str, root: str, day: str, out: str) -> None:
    """The child's side: one day of ``stage`` on ``path``; results under ``out``."""
    folder = Path(out)
    imported_mib = _rss_mib()
    step = Steps()
    try:
        start = time.perf_counter()
        decided = _STAGE_BY_NAME[stage].run[path](Home(Path(root)), day, step)
        seconds = time.perf_counter() - start
    except MemoryError:
        (folder / "result.json").write_text(json.dumps({"status": "MemoryError"}))
        sys.exit(3)
    peak_mib = _peak_rss_mib()
    end_mib = _rss_split_mib()
    pq.write_table(decided.kept.select(["pair_id"]), folder / "kept.parquet")
    pq.write_table(
        decided.ledger.select(["pair_id", "reason", "duplicate_of"]), folder / "ledger.parquet"
    )
    result = {
        "status": "ok",
        "seconds": seconds,
        "steps": step.seconds,
        "imported_mib": imported_mib,
        "peak_mib": peak_mib,
        "end_mib": end_mib,
        "kept": decided.kept.num_rows,
        "removed": decided.ledger.num_rows,
        "checks": decided.checks,
        "rebuilt": decided.rebuilt,
    }
    (folder / "result.json").write_text(json.dumps(result))


# ---- the parent: measure in children ------------------------------------------------------------


@dataclass
class Measured:
    status: str  # "ok", or why it did not run or finish
    seconds: float = 0.0
    steps: dict[str, float] | None = None
    imported_mib: float = 0.0
    peak_mib: float = 0.0
    end_mib: dict[str, float] | None = None
    removed: int = 0
    checks: dict[str, bool] | None = None
    rebuilt: int = 0
    out: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _child_rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def measure(
    stage: Stage, path: str, root: Path, day: str, out: Path, limit_mib: float, timeout_s: float
) -> Measured:
    """Run one day in a child; stop it past ``limit_mib`` of RSS or ``timeout_s``."""
    out.mkdir(parents=True)
    command = [sys.executable, __file__, "--child", stage.name, path, str(root), day, str(out)]
    with open(out / "stderr.txt", "w") as stderr:
        child = subprocess.Popen(command, stdout=stderr, stderr=stderr)
        start, why = time.monotonic(), None
        while child.poll() is None:
            if _child_rss_mib(child.pid) > limit_mib:
                why = f"stopped: RSS passed {limit_mib / 1024:.1f} GiB"
            elif time.monotonic() - start > timeout_s:
                why = f"stopped: over {timeout_s:.0f} s"
            if why:
                child.kill()
                child.wait()
                return Measured(why)
            time.sleep(0.05)
    result_file = out / "result.json"
    if result_file.exists():
        result = json.loads(result_file.read_text())
        if result["status"] != "ok":
            return Measured(result["status"])
        result.pop("kept")
        return Measured(out=out, **result)
    if child.returncode == -signal.SIGKILL:
        return Measured("killed by SIGKILL (out of memory?)")
    lines = (out / "stderr.txt").read_text().strip().splitlines() or ["no output"]
    return Measured(f"failed (exit {child.returncode}): {lines[-1][:80]}")


def state_copy(home: Home, folder: Path) -> Path:
    """A home sharing the warehouse, with a hard-linked copy of the state (see the docstring)."""
    folder.mkdir(parents=True)
    os.symlink(home.warehouse, folder / "warehouse")
    if state_root(home).is_dir():
        shutil.copytree(state_root(home), state_root(Home(folder)), copy_function=os.link)
    return folder


def same_decisions(a: Measured, b: Measured) -> str:
    """'yes', or what differs between two finished runs of one stage on one day."""
    differ = []
    for name in ("kept", "ledger"):
        left = pq.read_table(a.out / f"{name}.parquet")
        right = pq.read_table(b.out / f"{name}.parquet")
        if not left.sort_by("pair_id").equals(right.sort_by("pair_id")):
            differ.append(f"{name} ({left.num_rows} vs {right.num_rows} rows)")
    if a.checks != b.checks:
        differ.append(f"checks {a.checks} vs {b.checks}")
    failed = sorted(name for name, passed in (a.checks or {}).items() if not passed)
    if failed:
        differ.append(f"check failed: {', '.join(failed)}")
    return "yes" if not differ else "NO: " + "; ".join(differ)


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (a, b) of a + b * history; b = 0 from a single point, and where the fit
    falls with history (noise: no step gets cheaper with more history), a = the mean."""
    if len(points) < 2:
        return (points[0][1] if points else 0.0), 0.0
    x, y = np.array(points, dtype=float).T
    b, a = np.polyfit(x, y, 1)
    if b < 0:
        return float(y.mean()), 0.0
    return float(a), float(b)


def _predicted_peak_mib(done: list[tuple[int, Measured]], history: int) -> float | None:
    ran = [(h, m.peak_mib) for h, m in done if m.ok]
    if len(ran) < 2:
        return None
    a, b = _fit(ran)
    return a + b * history


# ---- printing -----------------------------------------------------------------------------------


def _seconds(m: Measured | None) -> str:
    return f"{m.seconds:.2f}" if m and m.ok else "-"


def _memory(m: Measured | None) -> str:
    return f"{m.peak_mib:,.0f} ({m.imported_mib:,.0f})" if m and m.ok else "-"


def print_stage(stage: Stage, day: int, rows: list[tuple[int, dict[str, Measured], str]]) -> None:
    print(f"\n{stage.name}: a day of {day:,} pairs ({stage.planted}), threshold {THRESHOLD}")
    print(
        f"{'history':>12}{'state s':>10}{'baseline s':>12}{'speed-up':>10}"
        f"{'state peak MiB':>22}{'baseline peak MiB':>22}{'removed':>9}  same decisions"
    )
    for history, runs, same in rows:
        new, old = runs[STATE], runs.get(BASELINE)
        speed = f"{old.seconds / new.seconds:.1f}x" if new.ok and old and old.ok else "-"
        print(
            f"{history:>12,}{_seconds(new):>10}{_seconds(old):>12}{speed:>10}"
            f"{_memory(new):>22}{_memory(old):>22}{new.removed if new.ok else '-':>9}  {same}"
        )
        for path, m in runs.items():
            if not m.ok:
                print(f"{'':>12}  {path}: {m.status}")
    print("  peak MiB = VmHWM at the end (RSS after imports in brackets)")
    for path in PATHS:
        print(f"  {path} steps (s):")
        for history, runs, _ in rows:
            m = runs.get(path)
            if m and m.ok and m.steps:
                steps = "  ".join(f"{k} {v:.2f}" for k, v in m.steps.items())
                end = m.end_mib or {}
                anon, mapped = end.get("RssAnon", 0.0), end.get("RssFile", 0.0)
                rss = f"  | RSS at end: anon {anon:,.0f}, file {mapped:,.0f} MiB"
                rebuilt = f"  (state rebuilt {m.rebuilt} days!)" if m.rebuilt else ""
                print(f"    {history:>12,}  {steps}{rss}{rebuilt}")


def _projection(points: list[tuple[int, Measured]], day: int) -> tuple[str, Callable]:
    """The fit of one path, and (low, high) seconds of a day of R pairs against h rows."""
    ran = [(h, m.seconds) for h, m in points if m.ok]
    a, b = _fit(ran)

    def seconds(pairs_a_day: int, rows: float) -> tuple[float, float]:
        scale = pairs_a_day / day
        return scale * a + b * rows, scale * (a + b * rows)

    return f"{a:.3g} + {b:.3g}*h s ({len(ran)} sizes)", seconds


def _peak_gib(points: list[tuple[int, Measured]], rows: float) -> float:
    """Peak RSS at ``rows`` of history by a line through the measured peaks (a day as measured)."""
    a, b = _fit([(h, m.peak_mib) for h, m in points if m.ok])
    return (a + b * rows) / 1024


def print_projection(results: dict[tuple[str, str], list[tuple[int, Measured]]], day: int) -> None:
    print(
        f"\nprojection: each path's day fitted as a + b*h seconds (h = history rows; least squares "
        f"over the sizes it ran).\nA day of R pairs: low = a*R/{day:,} + b*h (history cost "
        f"independent of the day), high = (a + b*h)*R/{day:,}\n(history cost per pair of the "
        f"day); day k of the year has h = (k-1)*R."
    )
    print(
        f"{'stage':<16}{'path':<10}{'pairs a day':>13}{'day 365 s':>24}{'year (h)':>20}"
        f"{'day 365 peak GiB':>18}"
    )
    fits = []
    for stage in STAGES:
        for path in PATHS:
            points = results.get((stage.name, path), [])
            if sum(m.ok for _, m in points) < 2:
                print(f"{stage.name:<16}{path:<10}  (needs two measured sizes)")
                continue
            text, seconds = _projection(points, day)
            fits.append(f"  {stage.name} {path}: {text}")
            for pairs in PROJECTED_PAIRS_A_DAY:
                days = np.array([seconds(pairs, k * pairs) for k in range(YEAR_DAYS)])
                last = f"{days[-1, 0]:,.0f} .. {days[-1, 1]:,.0f}"
                year = days.sum(axis=0) / 3600
                peak = _peak_gib(points, (YEAR_DAYS - 1) * pairs)
                print(
                    f"{stage.name:<16}{path:<10}{pairs:>13,}{last:>24}"
                    f"{f'{year[0]:,.0f} .. {year[1]:,.0f}':>20}{peak:>18,.1f}"
                )
    print(f"  fits, per day of {day:,} pairs:", *fits, sep="\n")
    print(
        "  day 365 peak: the measured peaks' line at that history for a day of the measured size "
        "(a lower bound);\n  the baseline's seconds assume it would fit in that memory."
    )


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_goals(results: dict[tuple[str, str], list[tuple[int, Measured]]]) -> None:
    small, large = GOAL_SIZES
    print(f"\ngoals (state path; the baseline beside it), histories {small:,} and {large:,}:")
    for stage in STAGES:
        at = {p: dict(results.get((stage.name, p), [])) for p in PATHS}
        new_small, new_large = at[STATE].get(small), at[STATE].get(large)
        old_large = at[BASELINE].get(large)
        if not (new_small and new_large and new_small.ok and new_large.ok):
            print(f"  {stage.name}: not measured (needs --sizes with {small:,} and {large:,})")
            continue
        growth = new_large.seconds / new_small.seconds
        peak = new_large.peak_mib / new_small.peak_mib
        work = (new_large.peak_mib - new_large.imported_mib) / max(
            new_small.peak_mib - new_small.imported_mib, 1.0
        )
        old = f"{old_large.seconds:.1f} s" if old_large and old_large.ok else "did not run"
        print(
            f"  {stage.name}: day at {large:,} history {new_large.seconds:.1f} s < "
            f"{GOAL_DAY_S:.0f} s: {_verdict(new_large.seconds < GOAL_DAY_S)} (baseline {old})"
        )
        print(
            f"  {stage.name}: day at {large:,} / day at {small:,} = {growth:.2f}x <= "
            f"{GOAL_DAY_GROWTH:.0f}x: {_verdict(growth <= GOAL_DAY_GROWTH)}"
        )
        print(
            f"  {stage.name}: peak RSS {small:,} -> {large:,} grows {peak:.2f}x <= "
            f"{GOAL_PEAK_GROWTH}x: {_verdict(peak <= GOAL_PEAK_GROWTH)} "
            f"(the work's own share above imports: {work:.2f}x)"
        )


# ---- main ---------------------------------------------------------------------------------------


def _available_gib() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / (1 << 20)
    return 8.0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,1000000,3000000,10000000", help="history rows")
    parser.add_argument("--day", type=int, default=100_000, help="pairs in a day")
    parser.add_argument(
        "--workdir", type=Path, help="where to build the data (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument(
        "--max-baseline-gib",
        type=float,
        default=round(0.6 * _available_gib(), 1),
        help="skip or stop the baseline past this peak RSS (default: 60%% of available memory)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds a child may run")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    day = args.day
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if any(s % day for s in sizes):
        raise SystemExit(f"--sizes {args.sizes}: every size must be a multiple of --day {day}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scale-bench-"))
    home = Home(workdir / "home")
    when = _day_date(sizes[-1] // day)  # after every history day of every size
    limit_mib = args.max_baseline_gib * 1024
    print(
        f"python {sys.version.split()[0]}; state = the assets now, baseline = before the state "
        f"(cbb2392); one child process per cell; baseline limit {args.max_baseline_gib} GiB"
    )
    results: dict[tuple[str, str], list[tuple[int, Measured]]] = {}
    tables: dict[str, list] = {s.name: [] for s in STAGES}
    baseline_stopped: dict[str, str] = {}
    try:
        have = 0
        for size in sizes:
            start = time.perf_counter()
            grow_history(home, have, size // day, day)
            have = size // day
            print(f"[history {size:,}: built in {time.perf_counter() - start:.0f} s]", flush=True)
            for stage in STAGES:
                commit_stage(
                    home, when, {stage.input_table: stage.day_input(size, day).table(when)}
                )
                runs: dict[str, Measured] = {}
                for path in PATHS:
                    done = results.setdefault((stage.name, path), [])
                    predicted = _predicted_peak_mib(done, size) if path == BASELINE else None
                    out = workdir / "runs" / f"{stage.name}-{path}-{size}"
                    if path == BASELINE and stage.name in baseline_stopped:
                        m = Measured(f"skipped: {baseline_stopped[stage.name]}")
                    elif predicted is not None and predicted > limit_mib:
                        m = Measured(
                            f"skipped: predicted peak {predicted / 1024:.1f} GiB > "
                            f"--max-baseline-gib {args.max_baseline_gib}"
                        )
                    else:
                        root = home.root if path == BASELINE else state_copy(home, out / "home")
                        m = measure(stage, path, root, when, out / "child", limit_mib, args.timeout)
                        if path == STATE:
                            shutil.rmtree(out / "home")
                    ran = not m.status.startswith("skipped")
                    if path == BASELINE and ran and not m.ok:
                        baseline_stopped[stage.name] = f"the baseline stopped at {size:,}"
                    runs[path] = m
                    done.append((size, m))
                    print(f"[{stage.name} {path} {size:,}: {m.status} {_seconds(m)} s]", flush=True)
                old = runs[BASELINE]
                same = same_decisions(runs[STATE], old) if runs[STATE].ok and old.ok else "-"
                tables[stage.name].append((size, runs, same))
        for stage in STAGES:
            print_stage(stage, day, tables[stage.name])
        print_projection(results, day)
        print_goals(results)
    finally:
        if args.keep:
            print(f"\nworkdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        run_child(*sys.argv[2:])
    else:
        main()
