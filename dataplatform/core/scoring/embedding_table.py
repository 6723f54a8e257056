"""The `embeddings` table's vector columns: numpy matrices in, fixed-size Arrow lists out."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def vectors_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def matrix_of(column: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """A (rows, dim) float32 matrix from a list column (fixed-size or not)."""
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 0 or len(column) == 0:
            return np.zeros((0, dim), dtype=np.float32)
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return np.asarray(column.flatten(), dtype=np.float32).reshape(len(column), dim)


def rows_for(
    pair_ids: list[str], embeddings: pa.Table, column: str = "image_embedding"
) -> np.ndarray:
    """The vectors of ``pair_ids`` in that order; KeyError names the first missing pair."""
    index = {pid: k for k, pid in enumerate(embeddings.column("pair_id").to_pylist())}
    col = embeddings.column(column)
    dim = col.type.list_size
    matrix = matrix_of(col, dim)
    missing = [pid for pid in pair_ids if pid not in index]
    if missing:
        raise KeyError(f"{len(missing)} pairs have no stored embedding (first: {missing[:3]})")
    return matrix[[index[pid] for pid in pair_ids]] if pair_ids else np.zeros((0, dim), np.float32)
