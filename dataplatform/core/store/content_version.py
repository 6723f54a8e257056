"""A partition's content as one short digest: the data version Dagster compares for staleness.

A stage's data version must change when, and only when, what it kept changes: a re-run of
``phash_deduped`` with another threshold that keeps 10 pairs instead of 13 must mark the day's
``clip_scored`` "upstream data changed", and a re-run that keeps the same rows must not. Hashing
the code version (Dagster's default) gives neither. The digest covers every column's values in
row order, through the Arrow IPC stream of the table with its chunks combined and its schema
metadata (commit ids, which differ on every write) dropped. The writer rebases sliced arrays and
writes no validity buffer for a column without nulls, so equal tables give equal bytes however
they were built. Streamed into the hash batch by batch: no copy of the partition is held.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pyarrow as pa

DIGEST_CHARS = 24
# Rows per IPC batch fed to the hash: bounds the serialized batch held at once.
HASH_BATCH_ROWS = 65_536


class _HashSink:
    """A write-only file object that feeds what is written into a hash."""

    def __init__(self, digest: hashlib._Hash) -> None:
        self._digest = digest
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        self._digest.update(data)
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


def content_version(table: pa.Table) -> str:
    """The digest of ``table``'s column names, types and values, in row order."""
    digest = hashlib.sha256()
    plain = table.replace_schema_metadata(None)
    schema = pa.schema([field.remove_metadata() for field in plain.schema])
    plain = pa.Table.from_arrays(list(plain.columns), schema=schema)
    sink = pa.PythonFile(_HashSink(digest), mode="w")
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in plain.combine_chunks().to_batches(max_chunksize=HASH_BATCH_ROWS):
            writer.write_batch(batch)
    return digest.hexdigest()[:DIGEST_CHARS]


def combined_version(versions: Iterable[str]) -> str:
    """One digest for several (a range run's days, in date order)."""
    digest = hashlib.sha256()
    for version in versions:
        digest.update(version.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:DIGEST_CHARS]
