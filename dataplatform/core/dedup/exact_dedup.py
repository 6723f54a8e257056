"""Exact deduplication: byte-identical images by SHA-256, global across partitions.

Set-oriented work, so it is one DuckDB query over Arrow tables: the earliest occurrence of a
hash wins (an earlier partition, then the smallest pair_id within the partition).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa


@dataclass(frozen=True)
class ExactDedupResult:
    kept: pa.Table
    duplicates: pa.Table  # pair_id, duplicate_of, duplicate_of_date
    reused_ids: pa.Table  # pair_id, first_date: ids already used by an earlier partition


def exact_deduplicate(
    current: pa.Table, kept_history: pa.Table, ids_history: pa.Table
) -> ExactDedupResult:
    """Split ``current`` into first occurrences and byte copies.

    ``kept_history``: (pair_id, image_sha256, date) of pairs kept by earlier partitions.
    ``ids_history``: (pair_id, date) of every pair ingested by earlier partitions, because a
    pair_id must stay unique across the warehouse even when its earlier row was dropped.
    """
    con = duckdb.connect()
    con.register("cur", current)
    con.register("kept_hist", kept_history)
    con.register("ids_hist", ids_history)
    con.execute(
        """
        CREATE TEMP TABLE decided AS
        WITH reused AS (
            SELECT pair_id, min(date) AS first_date FROM ids_hist GROUP BY pair_id
        ),
        fresh AS (
            SELECT cur.* FROM cur ANTI JOIN reused USING (pair_id)
        ),
        hist AS (
            SELECT image_sha256, arg_min(pair_id, (date, pair_id)) AS hist_id,
                   min(date) AS hist_date
            FROM kept_hist GROUP BY image_sha256
        ),
        ranked AS (
            SELECT fresh.*,
                   first_value(pair_id) OVER w AS first_id,
                   row_number() OVER w AS rn
            FROM fresh
            WINDOW w AS (PARTITION BY image_sha256 ORDER BY pair_id)
        )
        SELECT ranked.*, hist.hist_id, hist.hist_date
        FROM ranked LEFT JOIN hist USING (image_sha256)
        """
    )
    columns = ", ".join(f'"{c}"' for c in current.column_names)
    kept = con.sql(
        f"SELECT {columns} FROM decided WHERE hist_id IS NULL AND rn = 1 ORDER BY pair_id"
    ).to_arrow_table()
    duplicates = con.sql(
        """
        SELECT pair_id, coalesce(hist_id, first_id) AS duplicate_of,
               coalesce(hist_date, date) AS duplicate_of_date
        FROM decided WHERE hist_id IS NOT NULL OR rn > 1 ORDER BY pair_id
        """
    ).to_arrow_table()
    reused = con.sql(
        """
        SELECT cur.pair_id, r.first_date FROM cur
        JOIN (SELECT pair_id, min(date) AS first_date FROM ids_hist GROUP BY pair_id) r
        USING (pair_id) ORDER BY cur.pair_id
        """
    ).to_arrow_table()
    con.close()
    return ExactDedupResult(
        kept=kept.cast(current.schema), duplicates=duplicates, reused_ids=reused
    )
