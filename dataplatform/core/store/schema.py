"""Column contracts shared by every stage: the pair columns and the rejection ledger.

Every table keeps the pair columns so that any stage's output can be audited on its own; the
ledger has one fixed schema for all stages so that DuckDB can read it as one table.
"""

from __future__ import annotations

import pyarrow as pa

PAIR_COLUMNS: list[pa.Field] = [
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("date", pa.string(), nullable=False),
    pa.field("text", pa.string()),
    pa.field("url", pa.string()),
    pa.field("license", pa.string()),
    pa.field("image_uri", pa.string()),
    pa.field("image_sha256", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
]

RAW_PAIR_SCHEMA = pa.schema(
    PAIR_COLUMNS
    + [
        pa.field("source", pa.string()),
        pa.field("source_locator", pa.string()),
        pa.field("image_location", pa.string()),
        pa.field("image_format", pa.string()),
        pa.field("image_mode", pa.string()),
        pa.field("image_frames", pa.int32()),
        pa.field("image_bytes", pa.int64()),
        pa.field("exif_transposed", pa.bool_()),
        pa.field("text_truncated", pa.bool_()),
        pa.field("phash", pa.string()),
        pa.field("extra", pa.string()),
    ]
)

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("date", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("duplicate_of", pa.string()),
        pa.field("distance", pa.float64()),
        pa.field("similarity", pa.float64()),
        pa.field("score", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("source", pa.string()),
        pa.field("image_uri", pa.string()),
        pa.field("image_sha256", pa.string()),
        pa.field("url", pa.string()),
        pa.field("license", pa.string()),
        pa.field("text", pa.string()),
    ]
)


def ledger_table(rows: list[dict]) -> pa.Table:
    """Ledger rows as a table; missing keys are nulls, unknown keys are an error."""
    names = set(LEDGER_SCHEMA.names)
    for row in rows:
        unknown = set(row) - names
        if unknown:
            raise ValueError(f"ledger row has unknown columns {sorted(unknown)}: {row}")
    return pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Reorder and cast ``table`` to ``schema``, keeping columns the schema does not name.

    Stages add their own columns after the contract's; casting here keeps every partition of
    a table on one schema so that DuckDB reads them together without ``union_by_name`` surprises.
    """
    columns = []
    fields = []
    for field in schema:
        if field.name not in table.column_names:
            raise ValueError(f"table lacks required column {field.name!r}")
        columns.append(table.column(field.name).cast(field.type))
        fields.append(field)
    for name in table.column_names:
        if name not in schema.names:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def ledger_row(pair: dict, stage: str, reason: str, detail: str, **fields: object) -> dict:
    """A ledger row for a pair that a stage drops, carrying the pair's audit columns."""
    return {
        "pair_id": pair["pair_id"],
        "date": pair["date"],
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "source": " ".join(p for p in (pair.get("source"), pair.get("source_locator")) if p),
        "image_uri": pair.get("image_uri"),
        "image_sha256": pair.get("image_sha256"),
        "url": pair.get("url"),
        "license": pair.get("license"),
        "text": pair.get("text"),
        **fields,
    }
