"""CUDA tree-ensemble kernels (numba-cuda) over the packed node records: raw scores equal to the CPU's.

The kernels read the arrays of engine/models/packing.py as the CPU kernels do (one 16-byte record per node,
children adjacent, a leaf its own child) and follow the same rules (docs/lightgbm-semantics.md).
They stop at the raw score, divided by the iteration count for average_output models: the output
transforms run on the host with kernels/links.py (``link_rows``), because CUDA's ``exp`` is not
glibc's (CUDA documents up to 1 ulp of error) and the CPU path, like LightGBM, uses glibc's.

Design for one thread per row (see docs/gpu.md):
- ``score_staged``: a block copies its rows into shared memory first, coalesced whatever the input
  layout, as ``staged[feature * block + thread]``: a thread then reads any feature of its own row
  with no bank conflict (doubles at consecutive 8-byte slots across the warp), instead of a
  scattered global load per node visit.
- ``score_global``: the same walk reading the row from global memory (feature-major input reads
  coalesce at the top levels, where a warp tests the same feature); for rows too wide to stage.
- A thread stops walking a tree at its leaf (a leaf is its own child). A warp runs until its
  deepest row is done, so the walk costs the warp's deepest path, not the tree's depth: on the
  benchmark models that is 2-13% fewer levels than the tree depth (1000 x 255: 19.8k levels per
  row for a warp of 32 against 22.7k; its rows average 9.3k, the price of one thread per row).
- Classes outer, iterations inner: class k sums trees k, k + K, k + 2K, ... in file order, which is
  exactly the CPU's per-column order (columns never mix), with the sum in a register.
- No fused multiply-add: NVVM contracts ``a * b + c`` by default, so linear-leaf products use
  libdevice's ``dmul_rn`` (never fused); the tree sums are plain additions.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import cuda

from scoreline.kernels.links import apply_link
from scoreline.kernels.policy import jit, parallel_jit
from scoreline.kernels.rules import category_index, in_zero_band
from scoreline.kernels.trees import CATEGORICAL, CHILD_MASK, FEATURE_SHIFT, NAN_RIGHT, ZERO_MISSING, set_contains

__all__ = ["SIMULATED", "SHARED_BYTES", "score_staged", "score_global", "link_rows", "link_rows_parallel"]

# Under NUMBA_ENABLE_CUDASIM=1 kernels run as Python threads on numpy arrays: no libdevice there.
# (numba-cuda keeps its own config module; older releases read numba's.)
SIMULATED = bool(getattr(getattr(cuda, "config", None) or numba.config, "ENABLE_CUDASIM", 0))

# Static per-block shared memory every CUDA device offers without an opt-in.
SHARED_BYTES = 48 * 1024

_FEATURE_MASK = (1 << 24) - 1
_NAN_SHIFT = 56
_DEFAULT_SHIFT = 59
_SPECIAL = CATEGORICAL | ZERO_MISSING
assert NAN_RIGHT == 1 << _NAN_SHIFT and FEATURE_SHIFT == 32  # the layout these kernels decode

_device = cuda.jit(device=True)
_kernel = cuda.jit if SIMULATED else cuda.jit(cache=True)

if SIMULATED:

    @_device
    def _mul(a, b):
        return a * b  # Python floats: one IEEE multiply, nothing to fuse

else:
    from numba.cuda import libdevice

    @_device
    def _mul(a, b):
        # __nv_dmul_rn is never contracted into an FMA: the product is rounded first, as on the CPU.
        return libdevice.dmul_rn(a, b)


# LightGBM's category rule and the packed set lookup, compiled from the CPU kernels' own source.
_category_index = _device(category_index)
_in_zero_band = _device(in_zero_band)
_set_contains = _device(set_contains)


@_device
def _leaf(src, base, stride, root, depth, thresholds, words, cat_bits):
    """Record index of the leaf that the row at ``src[base + feature * stride]`` reaches.

    Indices are unsigned on purpose: Numba wraps negative indices around for signed ones, three
    extra instructions per array read, on every level of every tree.
    """
    node = np.uint64(root)
    first = np.uint64(base)
    step = np.uint64(stride)
    for _ in range(depth):
        at = node + node
        word = words[at + np.uint64(1)]
        child = np.uint64(word & CHILD_MASK)
        if child == node:
            break  # a leaf (its own child): the warp stops once all its rows stand on leaves
        x = np.float64(src[first + np.uint64((word >> FEATURE_SHIFT) & _FEATURE_MASK) * step])
        side = np.uint64(x > thresholds[at])
        if x != x:
            side = np.uint64((word >> _NAN_SHIFT) & 1)
        if word & _SPECIAL:
            if word & CATEGORICAL:
                side = np.uint64(0 if _set_contains(_category_index(x), word, words[at], cat_bits) else 1)
            elif x != x or _in_zero_band(x):
                side = np.uint64((word >> _DEFAULT_SHIFT) & 1)  # zero as missing: NaN and the zero band
        node = child + side
    return node


@_device
def _linear_value(src, base, stride, leaf, leaf_value, linear, linear_const, linear_feature, linear_coeff):
    """LightGBM's linear leaf: const + sum(coeff * x) in file order; any NaN -> the plain leaf value."""
    start = linear[leaf, 0]
    count = linear[leaf, 1]
    total = linear_const[leaf]
    for j in range(start, start + count):
        x = np.float64(src[base + linear_feature[j] * stride])
        if x != x:
            return leaf_value[leaf]
        if _in_zero_band(x):
            x = 0.0
        total += _mul(linear_coeff[j], x)
    return total


@_device
def _score_row(src, base, stride, row, thresholds, words, leaf_value, trees, cat_bits, linear, linear_const,
               linear_feature, linear_coeff, is_linear, num_class, divisor, out):
    """All outputs of one row: class k sums trees k, k + K, ... (file order), then divides."""
    num_trees = trees.shape[0]
    for k in range(num_class):
        total = 0.0
        for t in range(k, num_trees, num_class):
            leaf = _leaf(src, base, stride, trees[t, 0], trees[t, 1], thresholds, words, cat_bits)
            if is_linear:
                total += _linear_value(src, base, stride, leaf, leaf_value, linear, linear_const, linear_feature,
                                       linear_coeff)
            else:
                total += leaf_value[leaf]
        if divisor != 0.0:
            total = total / divisor
        out[row, k] = total


@_kernel
def score_staged(X, n, num_features, feature_major, thresholds, words, leaf_value, trees, cat_bits, linear,
                 linear_const, linear_feature, linear_coeff, is_linear, num_class, divisor, out):
    """Raw scores of rows 0..n-1 into out (n, num_class), one thread per row, rows staged in shared memory.

    X is the flat input (float64 or float32): ``X[row * num_features + f]`` when ``feature_major`` is
    0, ``X[f * n + row]`` when it is 1. The model arrays are engine/models/packing.py's; ``is_linear`` is 1
    when the leaves are linear (else the linear arrays are never read), ``divisor`` the iteration
    count of an average_output model or 0.0. Launch with blocks of B threads and
    B * num_features * 8 bytes of dynamic shared memory.
    """
    staged = cuda.shared.array(0, numba.float64)  # a Numba type: the simulator needs one too
    block = cuda.blockDim.x
    tid = cuda.threadIdx.x
    first = cuda.blockIdx.x * block
    count = min(block, n - first)
    total = count * num_features
    # Consecutive threads copy consecutive input values: coalesced sweeps over the block's rows.
    if feature_major:
        if tid < count:
            for f in range(num_features):
                staged[f * block + tid] = X[f * n + first + tid]
    else:
        # Value i of the block's rows is row i // F, feature i % F. Integer division is a long
        # software routine on the GPU, so divide once and then step (r, f) by the block size.
        start = first * num_features
        r = tid // num_features
        f = tid - r * num_features
        step_rows = block // num_features
        step_features = block - step_rows * num_features
        for i in range(tid, total, block):
            staged[f * block + r] = X[start + i]
            r += step_rows
            f += step_features
            if f >= num_features:
                f -= num_features
                r += 1
    cuda.syncthreads()
    if tid < count:
        _score_row(staged, tid, block, first + tid, thresholds, words, leaf_value, trees, cat_bits, linear,
                   linear_const, linear_feature, linear_coeff, is_linear, num_class, divisor, out)


@_kernel
def score_global(X, n, num_features, feature_major, thresholds, words, leaf_value, trees, cat_bits, linear,
                 linear_const, linear_feature, linear_coeff, is_linear, num_class, divisor, out):
    """``score_staged`` reading each value from global memory (any width, no shared memory)."""
    row = cuda.grid(1)
    if row < n:
        if feature_major:
            base, stride = row, n
        else:
            base, stride = row * num_features, 1
        _score_row(X, base, stride, row, thresholds, words, leaf_value, trees, cat_bits, linear, linear_const,
                   linear_feature, linear_coeff, is_linear, num_class, divisor, out)


# --- host half: the output transform, with the CPU's exp ----------------------------------------


@jit
def link_rows(out, link, param):
    """Apply the objective's transform to every row of out (n, num_class) in place, on this thread."""
    for row in range(out.shape[0]):
        apply_link(out[row], link, param)


@parallel_jit
def link_rows_parallel(out, link, param):
    """``link_rows`` with rows spread over Numba's threads."""
    for row in numba.prange(out.shape[0]):
        apply_link(out[row], link, param)
