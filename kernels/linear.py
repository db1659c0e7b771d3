"""Linear-model kernels: out[i, k] = link(intercept[k] + sum_j X[i, j] * coef[k, j]), one pass.

Every row's sum runs over the features in order j = 0, 1, ... and adds the intercept last, as
``X @ coef.T + intercept`` writes it, with no fused multiply-add (the project's fast-math flags
exclude ``contract``): the result is bit-for-bit the same for C- and F-order X, for the serial and
the parallel kernel, and equal to numpy's ``sum over j of X[:, j] * coef[k, j]`` taken in that
order. BLAS sums in another order, so against ``X @ coef.T`` (and scikit-learn) it agrees to about
1e-15 relative to ``sum_j |X[i, j] * coef[k, j]|``, not bit for bit.

A NaN feature makes the row's scores NaN (and so do ``inf * 0`` and ``inf - inf``): linear models
have no missing-value branch; the engine reports such a row as an error.
"""

from __future__ import annotations

import numba
import numpy as np

from scoreline.kernels.links import LINK_IDENTITY, apply_link
from scoreline.kernels.policy import jit, parallel_jit

__all__ = ["linear_predict", "linear_predict_parallel", "BLOCK_ROWS"]

# Rows per block: 256 rows x 8 bytes is 2 KB of accumulators, and for an F-order matrix each
# feature column's block is one 2 KB contiguous run, so the inner loop streams and vectorises.
BLOCK_ROWS = 256


@jit
def _block(X, coef, intercept, link, param, out, start, stop, acc):
    """Score rows [start, stop) into out[start:stop] (a C-order (n, num_class) array)."""
    num_features = X.shape[1]
    num_class = coef.shape[0]
    size = stop - start
    for k in range(num_class):
        for r in range(size):
            acc[r] = 0.0
        # Feature-major: the same order of additions per row as a row-major dot product, but
        # over F-order input each step reads a contiguous column block (vectorised across rows).
        for j in range(num_features):
            w = coef[k, j]
            for r in range(size):
                acc[r] += np.float64(X[start + r, j]) * w
        b = intercept[k]
        for r in range(size):
            out[start + r, k] = acc[r] + b
    if link != LINK_IDENTITY:
        for r in range(start, stop):
            apply_link(out[r], link, param)


@jit
def _block_rows(X, coef, intercept, link, param, out, start, stop):
    """Row-major variant for C-order X: each row's features are contiguous."""
    num_features = X.shape[1]
    num_class = coef.shape[0]
    for i in range(start, stop):
        for k in range(num_class):
            acc = 0.0
            for j in range(num_features):
                acc += np.float64(X[i, j]) * coef[k, j]
            out[i, k] = acc + intercept[k]
        if link != LINK_IDENTITY:
            apply_link(out[i], link, param)


@jit
def linear_predict(X, coef, intercept, link, param, out):
    """Score every row of X (float32/float64, C or F order) into out (float64 (n, num_class)).

    ``coef`` is (num_class, num_features) float64, ``intercept`` (num_class,), ``link`` a
    ``kernels.links`` code and ``param`` its parameter. Serial: for small batches.
    """
    n = X.shape[0]
    if X.flags.f_contiguous and n > 1:
        acc = np.empty(BLOCK_ROWS, np.float64)
        for start in range(0, n, BLOCK_ROWS):
            _block(X, coef, intercept, link, param, out, start, min(start + BLOCK_ROWS, n), acc)
    else:
        _block_rows(X, coef, intercept, link, param, out, 0, n)


@parallel_jit
def linear_predict_parallel(X, coef, intercept, link, param, out):
    """``linear_predict`` with row blocks spread over Numba's threads; same results."""
    n = X.shape[0]
    blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    f_order = X.flags.f_contiguous
    for b in numba.prange(blocks):
        start = b * BLOCK_ROWS
        stop = min(start + BLOCK_ROWS, n)
        if f_order:
            acc = np.empty(BLOCK_ROWS, np.float64)
            _block(X, coef, intercept, link, param, out, start, stop, acc)
        else:
            _block_rows(X, coef, intercept, link, param, out, start, stop)
