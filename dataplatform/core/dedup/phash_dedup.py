"""Perceptual deduplication of a partition against itself and every earlier kept pair.

The Hamming search is exact (``phash_index``); this module only maps the greedy decisions back
to pair ids, so the ledger can say which pair each duplicate was matched to and how far it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dataplatform.core.dedup.phash import from_hex
from dataplatform.core.dedup.phash_index import (
    deduplicate,
    find_near_pairs,
    find_near_pairs_between,
)


@dataclass(frozen=True)
class PhashDedupResult:
    kept: pa.Table
    duplicates: list[dict]  # pair_id, duplicate_of, duplicate_of_date, distance


def hashes_of(table: pa.Table) -> np.ndarray:
    return np.array([from_hex(h) for h in table.column("phash").to_pylist()], dtype=np.uint64)


def phash_deduplicate(current: pa.Table, history: pa.Table, threshold: int) -> PhashDedupResult:
    """Keep a pair unless it is within ``threshold`` bits of a pair kept before it.

    "Before" is every pair in ``history`` (pair_id, phash, date of earlier partitions), then the
    pairs of ``current`` in pair_id order, so the outcome does not depend on input row order.
    """
    current = current.sort_by("pair_id")
    history = history.sort_by([("date", "ascending"), ("pair_id", "ascending")])
    decision = deduplicate(hashes_of(current), threshold, hashes_of(history))
    ids = current.column("pair_id").to_pylist()
    dates = current.column("date").to_pylist()
    hist_ids = history.column("pair_id").to_pylist()
    hist_dates = history.column("date").to_pylist()
    duplicates = []
    for k in np.flatnonzero(~decision.keep):
        target = int(decision.duplicate_of[k])
        in_history = bool(decision.dup_in_history[k])
        duplicates.append(
            {
                "pair_id": ids[k],
                "duplicate_of": hist_ids[target] if in_history else ids[target],
                "duplicate_of_date": hist_dates[target] if in_history else dates[target],
                "distance": int(decision.distance[k]),
            }
        )
    kept = current.filter(pa.array(decision.keep))
    return PhashDedupResult(kept=kept, duplicates=duplicates)


def kept_pairs_within(
    kept: pa.Table, history: pa.Table, threshold: int
) -> list[tuple[str, str, int]]:
    """Pairs of kept rows (this partition, and this partition against history) within threshold.

    Empty when the dedup is right; the asset check reports whatever this finds.
    """
    ids = kept.column("pair_id").to_pylist()
    hashes = hashes_of(kept)
    found = []
    i, j, d = find_near_pairs(hashes, threshold)
    found += [(ids[a], ids[b], int(c)) for a, b, c in zip(i, j, d, strict=True)]
    if history.num_rows:
        hist_ids = history.column("pair_id").to_pylist()
        qi, ri, d = find_near_pairs_between(hashes, hashes_of(history), threshold)
        found += [(ids[a], hist_ids[b], int(c)) for a, b, c in zip(qi, ri, d, strict=True)]
    return found
