"""Checks the warehouse against the sample data's truth file: did every row end as designed?

The demo runs this after materializing, so a user sees at once whether the platform did what
the built-in data was built to show, row by row, not only in aggregate.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from dataplatform.core.ingest.landing import IMAGE_SUFFIXES
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import connect

# Stage ledgers whose rows are duplicates (the rest of the reasons are rejections).
_DUPLICATE_REASONS = {"exact_duplicate": "exact_duplicate", "phash_duplicate": "phash_duplicate"}
# A truth row that pHash is not expected to catch is simply kept by the pHash stage.
_KEPT_EXPECTATIONS = {"kept", "not_phash_detectable"}


def observed_outcomes(home: Home) -> list[tuple[str, str, tuple[str, ...], str]]:
    """(date, source file, candidate keys, outcome) for every row that arrived."""
    con = connect(home)
    raw = con.execute(
        """
        SELECT r.date, r.pair_id, r.source, r.source_locator,
               coalesce(e.reason, p.reason, 'kept') AS outcome
        FROM raw_pairs r
        LEFT JOIN (SELECT * FROM rejections WHERE stage = 'exact_deduped') e USING (date, pair_id)
        LEFT JOIN (SELECT * FROM rejections WHERE stage = 'phash_deduped') p USING (date, pair_id)
        """
    ).fetchall()
    rejected = con.execute(
        "SELECT date, pair_id, source, reason FROM rejections WHERE stage = 'raw_pairs'"
    ).fetchall()
    con.close()
    rows = []
    for date, pair_id, source, locator, outcome in raw:
        outcome = _DUPLICATE_REASONS.get(
            outcome, outcome if outcome == "kept" else f"rejected:{outcome}"
        )
        rows.append((date, source, _keys(pair_id, source, locator), outcome))
    for date, pair_id, where, reason in rejected:
        source, _, locator = where.partition(" ")
        rows.append((date, source, _keys(pair_id, source, locator), f"rejected:{reason}"))
    return rows


def _keys(pair_id: str, source: str, locator: str) -> tuple[str, ...]:
    keys = [pair_id]
    kind, _, value = locator.partition(" ")
    if kind == "line":
        keys.append(f"line-{value}")
    elif kind == "key":
        keys.append(value)
    if Path(source).suffix.lower() in IMAGE_SUFFIXES:
        keys.append(Path(source).stem)
    return tuple(keys)


def compare_with_truth(home: Home, truth_path: Path) -> tuple[int, list[str]]:
    """How many truth rows ended as expected, and a line for each that did not."""
    truth = json.loads(truth_path.read_text())
    wanted = Counter(
        (
            t["date"],
            t["source"],
            t["key"],
            "kept" if t["expected"] in _KEPT_EXPECTATIONS else t["expected"],
        )
        for t in truth
    )
    unmatched: list[tuple[str, str, tuple[str, ...], str]] = []
    for date, source, keys, outcome in observed_outcomes(home):
        for key in keys:
            if wanted[(date, source, key, outcome)] > 0:
                wanted[(date, source, key, outcome)] -= 1
                break
        else:
            unmatched.append((date, source, keys, outcome))
    missing = [
        f"expected {o} for {d} {s} {k}" for (d, s, k, o), n in wanted.items() for _ in range(n)
    ]
    surprises = [f"observed {o} for {d} {s} {k[0]}" for d, s, k, o in unmatched]
    return len(truth) - len(missing), sorted(missing) + sorted(surprises)
