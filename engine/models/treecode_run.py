"""Numba drivers of the per-model compiled tier: run a model's chunk functions (engine/models/treecode.py) by address.

Ordinary Numba kernels, compiled once for every model and kept in Numba's cache (nogil): each
chunk runs over a whole tile of rows before the next starts, then the link is applied per row.
"""

from __future__ import annotations

import numba
import numpy as np
from scoreline.engine.models.codegen import call_chunk
from scoreline.kernels.links import apply_link
from scoreline.kernels.policy import jit, parallel_jit

__all__ = [
    "COPY_TILE_ROWS",
    "MIN_PARALLEL_TILE",
    "TILE_ROWS",
    "predict_parallel",
    "predict_parallel_copy",
    "predict_serial",
    "predict_serial_copy",
]


# Rows per tile: each chunk of trees runs over a whole tile before the next chunk starts. Larger
# tiles measured faster all the way up to whole batches (1 thread, 100k rows, CPU time; tiles of
# 128 / 4096 / 65536 rows): breast-cancer 1.6 / 2.1 / 2.5 M rows/s, 5 x 100 x 31 0.14 / 0.17 /
# 0.20 M rows/s. lleaves also runs each block of trees over the whole batch.
TILE_ROWS = 65536
# A tile copied first (float32 or F-order input) is at most this many rows: its float64 buffer
# stays small.
COPY_TILE_ROWS = 4096
# The smallest tile the parallel drivers split a batch into.
MIN_PARALLEL_TILE = 256


@jit
def _finish(out, start, stop, divisor, link, param):
    for r in range(start, stop):
        row = out[r]
        if divisor != 0.0:
            for c in range(row.shape[0]):
                row[c] = row[c] / divisor
        apply_link(row, link, param)


@jit
def _direct_tile(X, start, stop, addresses, divisor, link, param, out):
    out[start:stop] = 0.0
    rows = X[start:stop]
    sums = out[start:stop]
    for chunk in range(addresses.shape[0]):
        call_chunk(addresses[chunk], rows, np.int64(stop - start), sums)
    _finish(out, start, stop, divisor, link, param)


@jit
def _copy_tile(X, start, stop, addresses, divisor, link, param, out, buffer):
    n = stop - start
    for i in range(n):
        for j in range(X.shape[1]):
            buffer[i, j] = X[start + i, j]
    out[start:stop] = 0.0
    sums = out[start:stop]
    for chunk in range(addresses.shape[0]):
        call_chunk(addresses[chunk], buffer, np.int64(n), sums)
    _finish(out, start, stop, divisor, link, param)


@jit
def predict_serial(X, addresses, tile, divisor, link, param, out):
    """Score every row of a float64 C-order X into out (n, num_class, C-contiguous float64).

    addresses: int64 machine-code addresses of the model's chunks (``LoadedCode.addresses``),
    each run over a tile of ``tile`` rows read in place, in order.
    """
    n = X.shape[0]
    for start in range(0, n, tile):
        _direct_tile(X, start, min(start + tile, n), addresses, divisor, link, param, out)


@jit
def predict_serial_copy(X, addresses, tile, divisor, link, param, out):
    """``predict_serial`` for any other X (float32, F order): each tile is first copied into a
    float64 C buffer (float32 widens exactly, as LightGBM compares it)."""
    n = X.shape[0]
    buffer = np.empty((min(tile, n), X.shape[1]), dtype=np.float64)
    for start in range(0, n, tile):
        _copy_tile(X, start, min(start + tile, n), addresses, divisor, link, param, out, buffer)


@parallel_jit
def predict_parallel(X, addresses, tile, divisor, link, param, out):
    """``predict_serial`` with tiles spread over Numba's threads."""
    n = X.shape[0]
    for t in numba.prange((n + tile - 1) // tile):
        _direct_tile(X, t * tile, min(t * tile + tile, n), addresses, divisor, link, param, out)


@parallel_jit
def predict_parallel_copy(X, addresses, tile, divisor, link, param, out):
    """``predict_serial_copy`` with tiles spread over Numba's threads."""
    n = X.shape[0]
    for t in numba.prange((n + tile - 1) // tile):
        buffer = np.empty((tile, X.shape[1]), dtype=np.float64)
        _copy_tile(X, t * tile, min(t * tile + tile, n), addresses, divisor, link, param, out, buffer)
