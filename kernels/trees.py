"""Tree-ensemble kernels over packed node records (see engine/models/packing.py): scores and leaf indices."""

from __future__ import annotations

import numba
import numpy as np
from numba.extending import register_jitable

from scoreline.kernels.links import apply_link
from scoreline.kernels.policy import jit, parallel_jit
from scoreline.kernels.rules import CATEGORY_LIMIT, category_index, in_zero_band

__all__ = [
    "CHILD_MASK",
    "FEATURE_SHIFT",
    "MAX_FEATURES",
    "NAN_RIGHT",
    "CATEGORICAL",
    "ZERO_MISSING",
    "DEFAULT_RIGHT",
    "WIDE_SET",
    "TREE_NUMERIC",
    "TREE_CATEGORICAL",
    "TREE_GENERAL",
    "TREE_WIDE",
    "TREE_PLAIN",
    "GROUP_ROWS",
    "TILE_ROWS",
    "predict_serial",
    "predict_parallel",
    "predict_buffered_serial",
    "predict_buffered_parallel",
    "predict_linear_serial",
    "predict_linear_parallel",
    "leaf_indices",
    "set_contains",
]

# Layout of a node's int64 word (column 1 of the record).
CHILD_MASK = (1 << 32) - 1  # bits 0-31: record index of the left child (right = left + 1)
FEATURE_SHIFT = 32  # bits 32-55: feature index
FEATURE_MASK = (1 << 24) - 1
MAX_FEATURES = 1 << 24
NAN_SHIFT = 56
NAN_RIGHT = 1 << 56  # a NaN goes right
CATEGORICAL = 1 << 57  # column 0 is the 64-bit set of categories 0..63 that go left
ZERO_MISSING = 1 << 58  # |x| <= kZeroThreshold and NaN go to the default side
DEFAULT_RIGHT = 1 << 59  # the default side is right
WIDE_SET = 1 << 60  # with CATEGORICAL: a set reaching past 63, column 0 = start << 32 | words
_SPECIAL = CATEGORICAL | ZERO_MISSING

# Column 3 of the trees table: which walk a tree needs.
TREE_NUMERIC = 0  # numeric splits only: the branch-free lockstep walk
TREE_CATEGORICAL = 1  # also categorical splits on categories < 64: lockstep with a bit test
TREE_GENERAL = 2  # zero-as-missing band tests: a row at a time
TREE_WIDE = 3  # categorical sets reaching past category 63 (read from cat_bits): lockstep too
TREE_PLAIN = 4  # numeric splits where NaN never goes right (x > t alone decides): the leanest step

# Helpers are plain @jit functions that LLVM inlines into the kernels: Numba-level inlining
# (inline="always") gave the same speed but took 40-80 s to compile each kernel here, 4-8x more.

# Rows that walk each tree together: eight independent chains of dependent loads keep the core
# busy where one row alone waits on every node (measured 2.3x over a row at a time, 100 x 31).
GROUP_ROWS = 8
# Rows per tile: each block of trees is walked by this many rows before the next block, so a
# block's nodes are fetched from memory once per tile instead of once per group.
TILE_ROWS = 64
# Node records per block of trees (16 bytes each: 256 KiB, about a core's L2).
TILE_RECORDS = 16384

@register_jitable
def set_contains(category, word, location, cat_bits):
    """Whether a categorical split's set holds ``category`` (from rules.category_index; -1 never).

    The set is the record's 64-bit column 0 for categories 0..63, or (WIDE_SET) ``words`` uint32
    words at ``start`` in cat_bits (location = start << 32 | words); a category past the set's
    last word is not in it. Plain Python registered with Numba, so the CUDA kernels compile this
    same function as a device function.
    """
    if category < 0:
        return False
    if not (word & WIDE_SET):
        return category < 64 and (location >> category) & 1 == 1
    start = location >> 32
    words = location & CHILD_MASK
    slot = category >> 5
    return slot < words and (cat_bits[start + slot] >> np.uint32(category & 31)) & np.uint32(1) == 1


@jit
def _leaf_record(X, row, root, thresholds, words, cat_bits):
    """Record index of the leaf that ``X[row]`` reaches from ``root`` (any kind of split).

    One row alone is a chain of dependent loads; stopping at the leaf (a record that is its own
    child) saves the steps a fixed-depth walk would spend there, which outweighs the one
    mispredicted exit.
    """
    node = root
    while True:
        word = words[2 * node + 1]
        x = X[row, (word >> FEATURE_SHIFT) & FEATURE_MASK]
        side = np.int64(x > thresholds[2 * node])
        if x != x:
            side = (word >> NAN_SHIFT) & 1
        if word & _SPECIAL:
            if word & CATEGORICAL:
                side = 0 if set_contains(category_index(x), word, words[2 * node], cat_bits) else 1
            elif x != x or in_zero_band(x):
                side = (word >> 59) & 1  # zero as missing: NaN and the zero band go to the default side
        child = (word & CHILD_MASK) + side
        if child == node:
            return node
        node = child


# The lockstep walks carry record indices as uint64: Numba adds a negative-index wrap-around
# (sign test, mask, add) to every load through a signed index, and with eight walks interleaved
# those instructions and the registers they take cost 11-13% of the bulk time (measured on the
# breast-cancer, 100 x 31 and 1000 x 255 benchmark models).
_U1 = np.uint64(1)
_U2 = np.uint64(2)


@jit
def step(X, row, node, thresholds, words):
    """One numeric split without branches: right when x > t, or when x is NaN and NaN goes right.

    A leaf is its own child with threshold +inf, so stepping from a leaf stays there. Branches
    here cost 4-10x: the eight interleaved walks below stop being one straight-line block.
    """
    word = words[node * _U2 + _U1]
    x = X[row, (word >> FEATURE_SHIFT) & FEATURE_MASK]
    side = np.uint64(x > thresholds[node * _U2]) | (np.uint64(x != x) & np.uint64((word >> NAN_SHIFT) & 1))
    return np.uint64(word & CHILD_MASK) + side


@jit
def step_categorical(X, row, node, thresholds, words):
    """``step`` that also evaluates categorical splits whose sets fit in 64 bits, branch-free."""
    word = words[node * _U2 + _U1]
    x = np.float64(X[row, (word >> FEATURE_SHIFT) & FEATURE_MASK])
    numeric_side = np.int64(x > thresholds[node * _U2]) | (np.int64(x != x) & ((word >> NAN_SHIFT) & 1))
    valid = (x > -1.0) & (x < 64.0)
    category = np.int64(x if valid else 0.0)
    category_side = 1 - ((words[node * _U2] >> category) & np.int64(valid))
    side = category_side if (word & CATEGORICAL) else numeric_side
    return np.uint64(word & CHILD_MASK) + np.uint64(side)


@jit
def step_wide(X, row, node, thresholds, words, cat_bits):
    """``step_categorical`` that also reads category sets reaching past 63 from cat_bits.

    Every node does the numeric test, the 64-bit set test and one cat_bits load (from word 0
    where the node has no wide set) and keeps the side its flags name, with no branch: a row
    at a time these trees ran at about LightGBM's speed (the 500 x 63 benchmark model, every
    tree with a wide set).
    """
    word = words[node * _U2 + _U1]
    x = np.float64(X[row, (word >> FEATURE_SHIFT) & FEATURE_MASK])
    location = words[node * _U2]
    numeric_side = np.int64(x > thresholds[node * _U2]) | (np.int64(x != x) & ((word >> NAN_SHIFT) & 1))
    # category_index's rule (kernels/rules.py) without its branch: invalid values go right.
    valid = (x > -1.0) & (x < CATEGORY_LIMIT)
    category = np.int64(x if valid else 0.0)
    narrow = valid & (category < 64)
    narrow_side = 1 - ((location >> min(category, 63)) & np.int64(narrow))
    slot = category >> 5
    wide = (word & WIDE_SET) != 0
    in_set = wide & valid & (slot < (location & CHILD_MASK))
    index = np.uint64((location >> 32) + slot) if in_set else np.uint64(0)
    bit = np.int64((cat_bits[index] >> np.uint32(category & 31)) & np.uint32(1))
    wide_side = 1 - (bit & np.int64(in_set))
    category_side = wide_side if wide else narrow_side
    side = category_side if (word & CATEGORICAL) else numeric_side
    return np.uint64(word & CHILD_MASK) + np.uint64(side)


@jit
def _walk_group_wide(X, r, root, depth, column, thresholds, words, cat_bits, leaf_value, out):
    """``_walk_group`` for trees with wide categorical sets."""
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = np.uint64(root)
    for _ in range(depth):
        n0 = step_wide(X, r, n0, thresholds, words, cat_bits)
        n1 = step_wide(X, r + 1, n1, thresholds, words, cat_bits)
        n2 = step_wide(X, r + 2, n2, thresholds, words, cat_bits)
        n3 = step_wide(X, r + 3, n3, thresholds, words, cat_bits)
        n4 = step_wide(X, r + 4, n4, thresholds, words, cat_bits)
        n5 = step_wide(X, r + 5, n5, thresholds, words, cat_bits)
        n6 = step_wide(X, r + 6, n6, thresholds, words, cat_bits)
        n7 = step_wide(X, r + 7, n7, thresholds, words, cat_bits)
    out[r, column] += leaf_value[n0]
    out[r + 1, column] += leaf_value[n1]
    out[r + 2, column] += leaf_value[n2]
    out[r + 3, column] += leaf_value[n3]
    out[r + 4, column] += leaf_value[n4]
    out[r + 5, column] += leaf_value[n5]
    out[r + 6, column] += leaf_value[n6]
    out[r + 7, column] += leaf_value[n7]


@jit
def _walk_group_categorical(X, r, root, depth, column, thresholds, words, leaf_value, out):
    """``_walk_group`` for trees with categorical splits."""
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = np.uint64(root)
    for _ in range(depth):
        n0 = step_categorical(X, r, n0, thresholds, words)
        n1 = step_categorical(X, r + 1, n1, thresholds, words)
        n2 = step_categorical(X, r + 2, n2, thresholds, words)
        n3 = step_categorical(X, r + 3, n3, thresholds, words)
        n4 = step_categorical(X, r + 4, n4, thresholds, words)
        n5 = step_categorical(X, r + 5, n5, thresholds, words)
        n6 = step_categorical(X, r + 6, n6, thresholds, words)
        n7 = step_categorical(X, r + 7, n7, thresholds, words)
    out[r, column] += leaf_value[n0]
    out[r + 1, column] += leaf_value[n1]
    out[r + 2, column] += leaf_value[n2]
    out[r + 3, column] += leaf_value[n3]
    out[r + 4, column] += leaf_value[n4]
    out[r + 5, column] += leaf_value[n5]
    out[r + 6, column] += leaf_value[n6]
    out[r + 7, column] += leaf_value[n7]


@jit
def _step_plain(X, row, node, thresholds, words):
    """``step`` for trees where no split sends NaN right: ``x > t`` is false for NaN, so it
    alone decides. Models trained on data without missing values are made of such trees
    (missing type None with thresholds >= 0); the NaN test is a third of ``step``'s work
    (measured 1.37x faster on the breast-cancer benchmark model).
    """
    word = words[node * _U2 + _U1]
    x = X[row, (word >> FEATURE_SHIFT) & FEATURE_MASK]
    return np.uint64(word & CHILD_MASK) + np.uint64(x > thresholds[node * _U2])


@jit
def _walk_group_plain(X, r, root, depth, column, thresholds, words, leaf_value, out):
    """``_walk_group`` for TREE_PLAIN trees."""
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = np.uint64(root)
    for _ in range(depth):
        n0 = _step_plain(X, r, n0, thresholds, words)
        n1 = _step_plain(X, r + 1, n1, thresholds, words)
        n2 = _step_plain(X, r + 2, n2, thresholds, words)
        n3 = _step_plain(X, r + 3, n3, thresholds, words)
        n4 = _step_plain(X, r + 4, n4, thresholds, words)
        n5 = _step_plain(X, r + 5, n5, thresholds, words)
        n6 = _step_plain(X, r + 6, n6, thresholds, words)
        n7 = _step_plain(X, r + 7, n7, thresholds, words)
    out[r, column] += leaf_value[n0]
    out[r + 1, column] += leaf_value[n1]
    out[r + 2, column] += leaf_value[n2]
    out[r + 3, column] += leaf_value[n3]
    out[r + 4, column] += leaf_value[n4]
    out[r + 5, column] += leaf_value[n5]
    out[r + 6, column] += leaf_value[n6]
    out[r + 7, column] += leaf_value[n7]


@jit
def _walk_group(X, r, root, depth, column, thresholds, words, leaf_value, out):
    """Rows r..r+7 through one tree of numeric splits, in lockstep, adding the leaves to out.

    Always ``depth`` steps: stopping once all eight rows sit on leaves (they usually finish
    ~30% earlier) measured 1.6x slower, the test breaking the straight-line block. Measured
    again with the test as the loop's condition (no ``break``, whose exit path made Numba spill
    the walk's registers): 14% slower on the breast-cancer model even when no group stops
    early, 7% faster on 1000 x 255 stopping from the shallowest leaf's depth on; leaf-wise
    trees are unbalanced, but eight rows together still reach near the tree's depth (group
    maxima: 84% of depth on breast cancer, 73% on 1000 x 255). Trees whose leaf counts say
    eight rows usually finish well above the deepest leaf take ``_walk_group_short`` instead.
    """
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = np.uint64(root)
    for _ in range(depth):
        n0 = step(X, r, n0, thresholds, words)
        n1 = step(X, r + 1, n1, thresholds, words)
        n2 = step(X, r + 2, n2, thresholds, words)
        n3 = step(X, r + 3, n3, thresholds, words)
        n4 = step(X, r + 4, n4, thresholds, words)
        n5 = step(X, r + 5, n5, thresholds, words)
        n6 = step(X, r + 6, n6, thresholds, words)
        n7 = step(X, r + 7, n7, thresholds, words)
    out[r, column] += leaf_value[n0]
    out[r + 1, column] += leaf_value[n1]
    out[r + 2, column] += leaf_value[n2]
    out[r + 3, column] += leaf_value[n3]
    out[r + 4, column] += leaf_value[n4]
    out[r + 5, column] += leaf_value[n5]
    out[r + 6, column] += leaf_value[n6]
    out[r + 7, column] += leaf_value[n7]


@jit
def _unfinished(words, n0, n1, n2, n3, n4, n5, n6, n7):
    """Whether any of eight records is not a leaf (a leaf is its own child), with one branch."""
    c0 = np.uint64(words[n0 * _U2 + _U1] & CHILD_MASK) != n0
    c1 = np.uint64(words[n1 * _U2 + _U1] & CHILD_MASK) != n1
    c2 = np.uint64(words[n2 * _U2 + _U1] & CHILD_MASK) != n2
    c3 = np.uint64(words[n3 * _U2 + _U1] & CHILD_MASK) != n3
    c4 = np.uint64(words[n4 * _U2 + _U1] & CHILD_MASK) != n4
    c5 = np.uint64(words[n5 * _U2 + _U1] & CHILD_MASK) != n5
    c6 = np.uint64(words[n6 * _U2 + _U1] & CHILD_MASK) != n6
    c7 = np.uint64(words[n7 * _U2 + _U1] & CHILD_MASK) != n7
    return (c0 | c1) | (c2 | c3) | (c4 | c5) | (c6 | c7)


@jit
def _walk_group_wide_short(X, r, root, depth, steps, column, thresholds, words, cat_bits, leaf_value, out):
    """``_walk_group_wide`` in two legs (see ``_walk_group_short``)."""
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = np.uint64(root)
    for _ in range(steps):
        n0 = step_wide(X, r, n0, thresholds, words, cat_bits)
        n1 = step_wide(X, r + 1, n1, thresholds, words, cat_bits)
        n2 = step_wide(X, r + 2, n2, thresholds, words, cat_bits)
        n3 = step_wide(X, r + 3, n3, thresholds, words, cat_bits)
        n4 = step_wide(X, r + 4, n4, thresholds, words, cat_bits)
        n5 = step_wide(X, r + 5, n5, thresholds, words, cat_bits)
        n6 = step_wide(X, r + 6, n6, thresholds, words, cat_bits)
        n7 = step_wide(X, r + 7, n7, thresholds, words, cat_bits)
    if _unfinished(words, n0, n1, n2, n3, n4, n5, n6, n7):
        for _ in range(depth - steps):
            n0 = step_wide(X, r, n0, thresholds, words, cat_bits)
            n1 = step_wide(X, r + 1, n1, thresholds, words, cat_bits)
            n2 = step_wide(X, r + 2, n2, thresholds, words, cat_bits)
            n3 = step_wide(X, r + 3, n3, thresholds, words, cat_bits)
            n4 = step_wide(X, r + 4, n4, thresholds, words, cat_bits)
            n5 = step_wide(X, r + 5, n5, thresholds, words, cat_bits)
            n6 = step_wide(X, r + 6, n6, thresholds, words, cat_bits)
            n7 = step_wide(X, r + 7, n7, thresholds, words, cat_bits)
    out[r, column] += leaf_value[n0]
    out[r + 1, column] += leaf_value[n1]
    out[r + 2, column] += leaf_value[n2]
    out[r + 3, column] += leaf_value[n3]
    out[r + 4, column] += leaf_value[n4]
    out[r + 5, column] += leaf_value[n5]
    out[r + 6, column] += leaf_value[n6]
    out[r + 7, column] += leaf_value[n7]


@jit
def _walk_group_categorical_short(X, r, root, depth, steps, column, thresholds, words, leaf_value, out):
    """``_walk_group_categorical`` in two legs (see ``_walk_group_short``)."""
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = np.uint64(root)
    for _ in range(steps):
        n0 = step_categorical(X, r, n0, thresholds, words)
        n1 = step_categorical(X, r + 1, n1, thresholds, words)
        n2 = step_categorical(X, r + 2, n2, thresholds, words)
        n3 = step_categorical(X, r + 3, n3, thresholds, words)
        n4 = step_categorical(X, r + 4, n4, thresholds, words)
        n5 = step_categorical(X, r + 5, n5, thresholds, words)
        n6 = step_categorical(X, r + 6, n6, thresholds, words)
        n7 = step_categorical(X, r + 7, n7, thresholds, words)
    if _unfinished(words, n0, n1, n2, n3, n4, n5, n6, n7):
        for _ in range(depth - steps):
            n0 = step_categorical(X, r, n0, thresholds, words)
            n1 = step_categorical(X, r + 1, n1, thresholds, words)
            n2 = step_categorical(X, r + 2, n2, thresholds, words)
            n3 = step_categorical(X, r + 3, n3, thresholds, words)
            n4 = step_categorical(X, r + 4, n4, thresholds, words)
            n5 = step_categorical(X, r + 5, n5, thresholds, words)
            n6 = step_categorical(X, r + 6, n6, thresholds, words)
            n7 = step_categorical(X, r + 7, n7, thresholds, words)
    out[r, column] += leaf_value[n0]
    out[r + 1, column] += leaf_value[n1]
    out[r + 2, column] += leaf_value[n2]
    out[r + 3, column] += leaf_value[n3]
    out[r + 4, column] += leaf_value[n4]
    out[r + 5, column] += leaf_value[n5]
    out[r + 6, column] += leaf_value[n6]
    out[r + 7, column] += leaf_value[n7]


@jit
def _walk_group_plain_short(X, r, root, depth, steps, column, thresholds, words, leaf_value, out):
    """``_walk_group_plain`` in two legs (see ``_walk_group_short``)."""
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = np.uint64(root)
    for _ in range(steps):
        n0 = _step_plain(X, r, n0, thresholds, words)
        n1 = _step_plain(X, r + 1, n1, thresholds, words)
        n2 = _step_plain(X, r + 2, n2, thresholds, words)
        n3 = _step_plain(X, r + 3, n3, thresholds, words)
        n4 = _step_plain(X, r + 4, n4, thresholds, words)
        n5 = _step_plain(X, r + 5, n5, thresholds, words)
        n6 = _step_plain(X, r + 6, n6, thresholds, words)
        n7 = _step_plain(X, r + 7, n7, thresholds, words)
    if _unfinished(words, n0, n1, n2, n3, n4, n5, n6, n7):
        for _ in range(depth - steps):
            n0 = _step_plain(X, r, n0, thresholds, words)
            n1 = _step_plain(X, r + 1, n1, thresholds, words)
            n2 = _step_plain(X, r + 2, n2, thresholds, words)
            n3 = _step_plain(X, r + 3, n3, thresholds, words)
            n4 = _step_plain(X, r + 4, n4, thresholds, words)
            n5 = _step_plain(X, r + 5, n5, thresholds, words)
            n6 = _step_plain(X, r + 6, n6, thresholds, words)
            n7 = _step_plain(X, r + 7, n7, thresholds, words)
    out[r, column] += leaf_value[n0]
    out[r + 1, column] += leaf_value[n1]
    out[r + 2, column] += leaf_value[n2]
    out[r + 3, column] += leaf_value[n3]
    out[r + 4, column] += leaf_value[n4]
    out[r + 5, column] += leaf_value[n5]
    out[r + 6, column] += leaf_value[n6]
    out[r + 7, column] += leaf_value[n7]


@jit
def _walk_group_short(X, r, root, depth, steps, column, thresholds, words, leaf_value, out):
    """``_walk_group`` in two legs: ``steps`` levels, then the rest of ``depth`` only when some
    row is not on a leaf yet (a leaf is its own child).

    The packer (engine/models/lockstep.py) picks ``steps`` per tree from where LightGBM's
    training rows ended, so that eight rows rarely need the second leg; any row still ends on
    its leaf, since the second leg is the same walk the plain group takes. One test per group,
    where a test per step lost (see ``_walk_group``), and the whole group continues in
    lockstep: finishing the unfinished rows one at a time (``_leaf_record``) measured 3.2x
    slower than the full walk with two steps cut from every tree (100 x 31).

    Measured (one thread, 100k rows, a busy 2-core machine, medians of 7-15 interleaved rounds):
    forcing one step off every tree's first leg costs 2-8% on whole-row benchmarks and 25-32%
    with columns drawn independently (breast cancer, diabetes: the group test then mispredicts),
    so the packer's costs are conservative. On the benchmark models eight rows seldom all finish
    early (LightGBM's deepest leaves hold few rows, but a group of eight is likely to hold one),
    so it shortens 0-5% of trees and saves about 1% of the steps: neutral within the noise. Chain
    -like trees, where nearly every row stops near the root, are where the second leg is skipped:
    100 chains 14 deep, first leg 1 step, 3.8x faster when rows stop where the counts say; even
    with 30% of rows at the bottom (the counts say one in a million) no slower; every row at the
    bottom, 6% slower (the test and the miss on every group: the bound for counts that lie).
    """
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = np.uint64(root)
    for _ in range(steps):
        n0 = step(X, r, n0, thresholds, words)
        n1 = step(X, r + 1, n1, thresholds, words)
        n2 = step(X, r + 2, n2, thresholds, words)
        n3 = step(X, r + 3, n3, thresholds, words)
        n4 = step(X, r + 4, n4, thresholds, words)
        n5 = step(X, r + 5, n5, thresholds, words)
        n6 = step(X, r + 6, n6, thresholds, words)
        n7 = step(X, r + 7, n7, thresholds, words)
    if _unfinished(words, n0, n1, n2, n3, n4, n5, n6, n7):
        for _ in range(depth - steps):
            n0 = step(X, r, n0, thresholds, words)
            n1 = step(X, r + 1, n1, thresholds, words)
            n2 = step(X, r + 2, n2, thresholds, words)
            n3 = step(X, r + 3, n3, thresholds, words)
            n4 = step(X, r + 4, n4, thresholds, words)
            n5 = step(X, r + 5, n5, thresholds, words)
            n6 = step(X, r + 6, n6, thresholds, words)
            n7 = step(X, r + 7, n7, thresholds, words)
    out[r, column] += leaf_value[n0]
    out[r + 1, column] += leaf_value[n1]
    out[r + 2, column] += leaf_value[n2]
    out[r + 3, column] += leaf_value[n3]
    out[r + 4, column] += leaf_value[n4]
    out[r + 5, column] += leaf_value[n5]
    out[r + 6, column] += leaf_value[n6]
    out[r + 7, column] += leaf_value[n7]


@jit
def _tree_block_end(trees, first):
    """One past the last tree of the block starting at ``first``: trees whose records start
    within TILE_RECORDS of the block's first record."""
    end = first + 1
    while end < trees.shape[0] and trees[end, 0] - trees[first, 0] < TILE_RECORDS:
        end += 1
    return end


@jit
def _walk_trees(X, row, t, trees, thresholds, words, cat_bits, leaf_value, out):
    """One row through trees t..t+7 in lockstep (the single-row counterpart of _walk_group),
    adding their leaves in tree order."""
    depth = trees[t, 1]
    categorical = TREE_NUMERIC  # the step every tree of the eight can take (step covers TREE_PLAIN)
    for i in range(t, t + GROUP_ROWS):
        depth = max(depth, trees[i, 1])
        if trees[i, 3] != TREE_PLAIN:
            categorical = max(categorical, trees[i, 3])
    n0, n1 = np.uint64(trees[t, 0]), np.uint64(trees[t + 1, 0])
    n2, n3 = np.uint64(trees[t + 2, 0]), np.uint64(trees[t + 3, 0])
    n4, n5 = np.uint64(trees[t + 4, 0]), np.uint64(trees[t + 5, 0])
    n6, n7 = np.uint64(trees[t + 6, 0]), np.uint64(trees[t + 7, 0])
    if categorical == TREE_NUMERIC:
        for _ in range(depth):
            n0 = step(X, row, n0, thresholds, words)
            n1 = step(X, row, n1, thresholds, words)
            n2 = step(X, row, n2, thresholds, words)
            n3 = step(X, row, n3, thresholds, words)
            n4 = step(X, row, n4, thresholds, words)
            n5 = step(X, row, n5, thresholds, words)
            n6 = step(X, row, n6, thresholds, words)
            n7 = step(X, row, n7, thresholds, words)
    elif categorical == TREE_CATEGORICAL:
        for _ in range(depth):
            n0 = step_categorical(X, row, n0, thresholds, words)
            n1 = step_categorical(X, row, n1, thresholds, words)
            n2 = step_categorical(X, row, n2, thresholds, words)
            n3 = step_categorical(X, row, n3, thresholds, words)
            n4 = step_categorical(X, row, n4, thresholds, words)
            n5 = step_categorical(X, row, n5, thresholds, words)
            n6 = step_categorical(X, row, n6, thresholds, words)
            n7 = step_categorical(X, row, n7, thresholds, words)
    else:  # TREE_WIDE: the step that covers every kind of split but zero-as-missing
        for _ in range(depth):
            n0 = step_wide(X, row, n0, thresholds, words, cat_bits)
            n1 = step_wide(X, row, n1, thresholds, words, cat_bits)
            n2 = step_wide(X, row, n2, thresholds, words, cat_bits)
            n3 = step_wide(X, row, n3, thresholds, words, cat_bits)
            n4 = step_wide(X, row, n4, thresholds, words, cat_bits)
            n5 = step_wide(X, row, n5, thresholds, words, cat_bits)
            n6 = step_wide(X, row, n6, thresholds, words, cat_bits)
            n7 = step_wide(X, row, n7, thresholds, words, cat_bits)
    out[row, trees[t, 2]] += leaf_value[n0]
    out[row, trees[t + 1, 2]] += leaf_value[n1]
    out[row, trees[t + 2, 2]] += leaf_value[n2]
    out[row, trees[t + 3, 2]] += leaf_value[n3]
    out[row, trees[t + 4, 2]] += leaf_value[n4]
    out[row, trees[t + 5, 2]] += leaf_value[n5]
    out[row, trees[t + 6, 2]] += leaf_value[n6]
    out[row, trees[t + 7, 2]] += leaf_value[n7]


@jit
def _score_row(X, row, thresholds, words, leaf_value, trees, cat_bits, out):
    """One row over every tree in file order, eight trees at a time where their splits allow."""
    num_trees = trees.shape[0]
    t = 0
    while t < num_trees:
        if t + GROUP_ROWS <= num_trees:
            general = False
            for i in range(t, t + GROUP_ROWS):
                general = general or trees[i, 3] == TREE_GENERAL
            if not general:
                _walk_trees(X, row, t, trees, thresholds, words, cat_bits, leaf_value, out)
                t += GROUP_ROWS
                continue
        out[row, trees[t, 2]] += leaf_value[_leaf_record(X, row, trees[t, 0], thresholds, words, cat_bits)]
        t += 1


@jit
def _score_tile(X, start, stop, thresholds, words, leaf_value, trees, cat_bits, divisor, link, param, out):
    """Rows start..stop-1 over every tree: per row the trees are added in file order (LightGBM's
    summation order, so sums agree to the bit), then the row is transformed.

    Whole groups of eight rows walk each block of trees together; the rows left over (a single
    row, the end of a batch) walk eight trees at a time instead.
    """
    for row in range(start, stop):
        for k in range(out.shape[1]):
            out[row, k] = 0.0
    num_trees = trees.shape[0]
    grouped_end = start + (stop - start) // GROUP_ROWS * GROUP_ROWS
    first = 0
    while first < num_trees and grouped_end > start:
        end = _tree_block_end(trees, first)
        for t in range(first, end):
            root = trees[t, 0]
            depth = trees[t, 1]
            column = trees[t, 2]
            kind = trees[t, 3]
            steps = trees[t, 4]
            if steps < depth and kind != TREE_GENERAL:
                if kind == TREE_PLAIN:
                    for r in range(start, grouped_end, GROUP_ROWS):
                        _walk_group_plain_short(X, r, root, depth, steps, column, thresholds, words, leaf_value, out)
                elif kind == TREE_NUMERIC:
                    for r in range(start, grouped_end, GROUP_ROWS):
                        _walk_group_short(X, r, root, depth, steps, column, thresholds, words, leaf_value, out)
                elif kind == TREE_CATEGORICAL:
                    for r in range(start, grouped_end, GROUP_ROWS):
                        _walk_group_categorical_short(X, r, root, depth, steps, column, thresholds, words,
                                                      leaf_value, out)
                else:
                    for r in range(start, grouped_end, GROUP_ROWS):
                        _walk_group_wide_short(X, r, root, depth, steps, column, thresholds, words, cat_bits,
                                               leaf_value, out)
            elif kind == TREE_PLAIN:
                for r in range(start, grouped_end, GROUP_ROWS):
                    _walk_group_plain(X, r, root, depth, column, thresholds, words, leaf_value, out)
            elif kind == TREE_NUMERIC:
                for r in range(start, grouped_end, GROUP_ROWS):
                    _walk_group(X, r, root, depth, column, thresholds, words, leaf_value, out)
            elif kind == TREE_CATEGORICAL:
                for r in range(start, grouped_end, GROUP_ROWS):
                    _walk_group_categorical(X, r, root, depth, column, thresholds, words, leaf_value, out)
            elif kind == TREE_WIDE:
                for r in range(start, grouped_end, GROUP_ROWS):
                    _walk_group_wide(X, r, root, depth, column, thresholds, words, cat_bits, leaf_value, out)
            else:  # zero-as-missing band tests (rare): a row at a time
                for row in range(start, grouped_end):
                    out[row, column] += leaf_value[_leaf_record(X, row, root, thresholds, words, cat_bits)]
        first = end
    for row in range(grouped_end, stop):
        _score_row(X, row, thresholds, words, leaf_value, trees, cat_bits, out)
    for row in range(start, stop):
        if divisor != 0.0:
            for k in range(out.shape[1]):
                out[row, k] = out[row, k] / divisor
        apply_link(out[row], link, param)


@jit
def predict_serial(X, thresholds, words, leaf_value, trees, cat_bits, divisor, link, param, out):
    """Score every row of X into out (n, num_class) on the calling thread.

    thresholds and words are the float64 and int64 views of the packed node records; trees is
    the (T, 5) table of root record, depth, output column, walk kind (TREE_*) and lockstep
    steps (<= depth: engine/models/lockstep.py); divisor is
    the iteration count for average_output models (0.0 otherwise); link/param pick the transform
    (kernels/links.py). X is float64 or float32, C or F order.
    """
    n = X.shape[0]
    for start in range(0, n, TILE_ROWS):
        stop = min(start + TILE_ROWS, n)
        _score_tile(X, start, stop, thresholds, words, leaf_value, trees, cat_bits, divisor, link, param, out)


@parallel_jit
def predict_parallel(X, thresholds, words, leaf_value, trees, cat_bits, divisor, link, param, out):
    """``predict_serial`` with row tiles spread over Numba's threads."""
    n = X.shape[0]
    tiles = (n + TILE_ROWS - 1) // TILE_ROWS
    for tile in numba.prange(tiles):
        start = tile * TILE_ROWS
        stop = min(start + TILE_ROWS, n)
        _score_tile(X, start, stop, thresholds, words, leaf_value, trees, cat_bits, divisor, link, param, out)


@jit
def _linear_value(X, row, leaf, leaf_value, linear, linear_const, linear_feature, linear_coeff):
    """LightGBM's linear leaf: const + sum(coeff * x) over its features; any NaN -> plain leaf value."""
    start = linear[leaf, 0]
    count = linear[leaf, 1]
    total = linear_const[leaf]
    for j in range(start, start + count):
        x = np.float64(X[row, linear_feature[j]])
        if x != x:
            return leaf_value[leaf]
        if in_zero_band(x):
            x = 0.0  # LightGBM drops near-zero values from the row before predicting
        total += linear_coeff[j] * x
    return total


@jit
def _score_rows_linear(X, start, stop, thresholds, words, leaf_value, trees, cat_bits, linear, linear_const,
                       linear_feature, linear_coeff, divisor, link, param, out):
    for row in range(start, stop):
        for k in range(out.shape[1]):
            out[row, k] = 0.0
    for t in range(trees.shape[0]):
        root = trees[t, 0]
        column = trees[t, 2]
        for row in range(start, stop):
            leaf = _leaf_record(X, row, root, thresholds, words, cat_bits)
            out[row, column] += _linear_value(X, row, leaf, leaf_value, linear, linear_const, linear_feature,
                                              linear_coeff)
    for row in range(start, stop):
        if divisor != 0.0:
            for k in range(out.shape[1]):
                out[row, k] = out[row, k] / divisor
        apply_link(out[row], link, param)


@jit
def predict_linear_serial(X, thresholds, words, leaf_value, trees, cat_bits, linear, linear_const, linear_feature,
                          linear_coeff, divisor, link, param, out):
    """``predict_serial`` for models with linear trees (is_linear=1)."""
    n = X.shape[0]
    for start in range(0, n, TILE_ROWS):
        stop = min(start + TILE_ROWS, n)
        _score_rows_linear(X, start, stop, thresholds, words, leaf_value, trees, cat_bits, linear, linear_const,
                           linear_feature, linear_coeff, divisor, link, param, out)


@parallel_jit
def predict_linear_parallel(X, thresholds, words, leaf_value, trees, cat_bits, linear, linear_const,
                            linear_feature, linear_coeff, divisor, link, param, out):
    """``predict_linear_serial`` with row blocks spread over Numba's threads."""
    n = X.shape[0]
    tiles = (n + TILE_ROWS - 1) // TILE_ROWS
    for tile in numba.prange(tiles):
        start = tile * TILE_ROWS
        stop = min(start + TILE_ROWS, n)
        _score_rows_linear(X, start, stop, thresholds, words, leaf_value, trees, cat_bits, linear, linear_const,
                           linear_feature, linear_coeff, divisor, link, param, out)


@jit
def leaf_indices(X, thresholds, words, leaf_index, trees, cat_bits, out):
    """LightGBM's pred_leaf: out[row, t] = the leaf number tree t sends row to (int32)."""
    for row in range(X.shape[0]):
        for t in range(trees.shape[0]):
            leaf = _leaf_record(X, row, trees[t, 0], thresholds, words, cat_bits)
            out[row, t] = leaf_index[leaf]


# -- The buffered walk: models with categorical splits (engine/models/packing.py buffered_layout).
#
# Each tile of rows is first copied into a column-major buffer of the columns the trees read,
# B[column * TILE_ROWS + row]: a column per feature that numeric splits read (the value as
# float64) and one per feature that categorical splits read (its category, from
# rules.category_index, as a float64 in -1..2^31-1). The buffer's rows are TILE_ROWS apart at
# a fixed stride, so eight rows walking together address it from one pointer (each row's own
# pointer into X spilled to the stack with eight walks interleaved), and a wide row's few used
# features sit together instead of one cache line each in a 12 KB row. Every categorical set
# is in cat_bits, followed by a zero word, and word 0 is zero, so the category test is one
# branch-free load: a numeric node reads word 0, a category past the set its zero word.
# Measured on the benchmark models against predict_serial (one thread, 10k rows): 2.05x on
# real-grants (1,502 features, 208 used), 1.58x on real-flights, 1.78x on gen-500x63-cat; on
# models without categorical splits this step is 2-3x slower than ``step``, so they keep it.


_ROWS = np.uint64(TILE_ROWS)
_MASK = np.uint64(CHILD_MASK)


@jit
def _step_buffered(B, r, node, words, thresholds, cat_bits):
    """One split of any kind but zero-as-missing, branch-free, for buffer row ``r``: the numeric
    test (x > t, NaN right where flagged) and the category test (x is the category), keeping the
    side the node's flag names. Column 0 of the record is read once, as the threshold's bits or
    the set's location (start << 32 | words)."""
    word = np.uint64(words[node * _U2 + _U1])
    location = np.uint64(words[node * _U2])
    x = B[((word >> np.uint64(FEATURE_SHIFT)) & np.uint64(FEATURE_MASK)) * _ROWS + r]
    numeric_side = np.uint64(x > thresholds[node * _U2]) | (np.uint64(x != x) & ((word >> np.uint64(NAN_SHIFT)) & _U1))
    categorical = (word & np.uint64(CATEGORICAL)) != 0
    # A categorical node's x is a whole number in -1..2^31-1 (the buffer's category column);
    # -1 wraps to the largest slot, which reads the set's trailing zero word: right. On a
    # numeric node the conversion's value is never used (the selects below drop it).
    category = np.uint64(np.int64(x))
    slot = min(category >> np.uint64(5), location & _MASK)
    index = (location >> np.uint64(32)) + slot if categorical else np.uint64(0)
    bit = np.uint64((cat_bits[index] >> np.uint32(category & np.uint64(31))) & np.uint32(1))
    side = (_U1 - bit) if categorical else numeric_side
    return (word & _MASK) + side


@jit
def _walk_buffered(B, r, root, depth, steps, words, thresholds, cat_bits):
    """Buffer rows r..r+7 through one tree in lockstep (``_walk_group_short``'s two legs:
    ``steps`` levels, then on to ``depth`` only if some row is not on a leaf); their leaves."""
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = np.uint64(root)
    for _ in range(steps):
        n0 = _step_buffered(B, r, n0, words, thresholds, cat_bits)
        n1 = _step_buffered(B, r + _U1, n1, words, thresholds, cat_bits)
        n2 = _step_buffered(B, r + np.uint64(2), n2, words, thresholds, cat_bits)
        n3 = _step_buffered(B, r + np.uint64(3), n3, words, thresholds, cat_bits)
        n4 = _step_buffered(B, r + np.uint64(4), n4, words, thresholds, cat_bits)
        n5 = _step_buffered(B, r + np.uint64(5), n5, words, thresholds, cat_bits)
        n6 = _step_buffered(B, r + np.uint64(6), n6, words, thresholds, cat_bits)
        n7 = _step_buffered(B, r + np.uint64(7), n7, words, thresholds, cat_bits)
    if steps < depth and _unfinished(words, n0, n1, n2, n3, n4, n5, n6, n7):
        for _ in range(depth - steps):
            n0 = _step_buffered(B, r, n0, words, thresholds, cat_bits)
            n1 = _step_buffered(B, r + _U1, n1, words, thresholds, cat_bits)
            n2 = _step_buffered(B, r + np.uint64(2), n2, words, thresholds, cat_bits)
            n3 = _step_buffered(B, r + np.uint64(3), n3, words, thresholds, cat_bits)
            n4 = _step_buffered(B, r + np.uint64(4), n4, words, thresholds, cat_bits)
            n5 = _step_buffered(B, r + np.uint64(5), n5, words, thresholds, cat_bits)
            n6 = _step_buffered(B, r + np.uint64(6), n6, words, thresholds, cat_bits)
            n7 = _step_buffered(B, r + np.uint64(7), n7, words, thresholds, cat_bits)
    return n0, n1, n2, n3, n4, n5, n6, n7


@jit
def _step_buffered_plain(B, r, node, words, thresholds, cat_bits):
    """``_step_buffered`` for models where no numeric split sends NaN right (x > t alone decides)."""
    word = np.uint64(words[node * _U2 + _U1])
    location = np.uint64(words[node * _U2])
    x = B[((word >> np.uint64(FEATURE_SHIFT)) & np.uint64(FEATURE_MASK)) * _ROWS + r]
    numeric_side = np.uint64(x > thresholds[node * _U2])
    categorical = (word & np.uint64(CATEGORICAL)) != 0
    category = np.uint64(np.int64(x))
    slot = min(category >> np.uint64(5), location & _MASK)
    index = (location >> np.uint64(32)) + slot if categorical else np.uint64(0)
    bit = np.uint64((cat_bits[index] >> np.uint32(category & np.uint64(31))) & np.uint32(1))
    side = (_U1 - bit) if categorical else numeric_side
    return (word & _MASK) + side


@jit
def _walk_buffered_plain(B, r, root, depth, steps, words, thresholds, cat_bits):
    """``_walk_buffered`` with ``_step_buffered_plain``."""
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = np.uint64(root)
    for _ in range(steps):
        n0 = _step_buffered_plain(B, r, n0, words, thresholds, cat_bits)
        n1 = _step_buffered_plain(B, r + _U1, n1, words, thresholds, cat_bits)
        n2 = _step_buffered_plain(B, r + np.uint64(2), n2, words, thresholds, cat_bits)
        n3 = _step_buffered_plain(B, r + np.uint64(3), n3, words, thresholds, cat_bits)
        n4 = _step_buffered_plain(B, r + np.uint64(4), n4, words, thresholds, cat_bits)
        n5 = _step_buffered_plain(B, r + np.uint64(5), n5, words, thresholds, cat_bits)
        n6 = _step_buffered_plain(B, r + np.uint64(6), n6, words, thresholds, cat_bits)
        n7 = _step_buffered_plain(B, r + np.uint64(7), n7, words, thresholds, cat_bits)
    if steps < depth and _unfinished(words, n0, n1, n2, n3, n4, n5, n6, n7):
        for _ in range(depth - steps):
            n0 = _step_buffered_plain(B, r, n0, words, thresholds, cat_bits)
            n1 = _step_buffered_plain(B, r + _U1, n1, words, thresholds, cat_bits)
            n2 = _step_buffered_plain(B, r + np.uint64(2), n2, words, thresholds, cat_bits)
            n3 = _step_buffered_plain(B, r + np.uint64(3), n3, words, thresholds, cat_bits)
            n4 = _step_buffered_plain(B, r + np.uint64(4), n4, words, thresholds, cat_bits)
            n5 = _step_buffered_plain(B, r + np.uint64(5), n5, words, thresholds, cat_bits)
            n6 = _step_buffered_plain(B, r + np.uint64(6), n6, words, thresholds, cat_bits)
            n7 = _step_buffered_plain(B, r + np.uint64(7), n7, words, thresholds, cat_bits)
    return n0, n1, n2, n3, n4, n5, n6, n7


@jit
def _leaf_buffered(B, r, root, words, thresholds, cat_bits):
    """``_leaf_record`` on the buffer (trees with zero-as-missing band tests): record index of
    the leaf that buffer row ``r`` reaches."""
    node = np.uint64(root)
    while True:
        word = np.uint64(words[node * _U2 + _U1])
        location = np.uint64(words[node * _U2])
        x = B[((word >> np.uint64(FEATURE_SHIFT)) & np.uint64(FEATURE_MASK)) * _ROWS + r]
        if word & np.uint64(CATEGORICAL):
            side = _U1
            if x >= 0.0:
                category = np.uint64(x)
                slot = category >> np.uint64(5)
                if slot < (location & _MASK):
                    bit = (cat_bits[(location >> np.uint64(32)) + slot] >> np.uint32(category & np.uint64(31))) & 1
                    side = _U1 - np.uint64(bit)
        else:
            side = np.uint64(x > thresholds[node * _U2])
            if x != x:
                side = (word >> np.uint64(NAN_SHIFT)) & _U1
            if (word & np.uint64(ZERO_MISSING)) and (x != x or in_zero_band(x)):
                side = (word >> np.uint64(59)) & _U1  # zero as missing: the default side
        child = (word & _MASK) + side
        if child == node:
            return node
        node = child


@jit
def _walk_trees_buffered(B, r, t, trees, words, thresholds, cat_bits, leaf_value, tile_out, nan_right):
    """Buffer row ``r`` through trees t..t+7 in lockstep (``_walk_trees`` on the buffer), adding
    their leaves in tree order. A leaf's record steps to itself, so the walk stops at the first
    step that moves none of the eight, at most the deepest of their depths: leaf-wise trees are
    deep, the row's paths mostly short."""
    depth = trees[t, 1]
    for i in range(t + 1, t + GROUP_ROWS):
        depth = max(depth, trees[i, 1])
    n0, n1 = np.uint64(trees[t, 0]), np.uint64(trees[t + 1, 0])
    n2, n3 = np.uint64(trees[t + 2, 0]), np.uint64(trees[t + 3, 0])
    n4, n5 = np.uint64(trees[t + 4, 0]), np.uint64(trees[t + 5, 0])
    n6, n7 = np.uint64(trees[t + 6, 0]), np.uint64(trees[t + 7, 0])
    if nan_right:
        for _ in range(depth):
            m0, m1, m2, m3, m4, m5, m6, m7 = n0, n1, n2, n3, n4, n5, n6, n7
            n0 = _step_buffered(B, r, n0, words, thresholds, cat_bits)
            n1 = _step_buffered(B, r, n1, words, thresholds, cat_bits)
            n2 = _step_buffered(B, r, n2, words, thresholds, cat_bits)
            n3 = _step_buffered(B, r, n3, words, thresholds, cat_bits)
            n4 = _step_buffered(B, r, n4, words, thresholds, cat_bits)
            n5 = _step_buffered(B, r, n5, words, thresholds, cat_bits)
            n6 = _step_buffered(B, r, n6, words, thresholds, cat_bits)
            n7 = _step_buffered(B, r, n7, words, thresholds, cat_bits)
            if ((m0 ^ n0) | (m1 ^ n1) | (m2 ^ n2) | (m3 ^ n3) | (m4 ^ n4) | (m5 ^ n5) | (m6 ^ n6)
                    | (m7 ^ n7)) == 0:
                break  # all eight at their leaves (a leaf steps to itself): skip the deeper levels
    else:
        for _ in range(depth):
            m0, m1, m2, m3, m4, m5, m6, m7 = n0, n1, n2, n3, n4, n5, n6, n7
            n0 = _step_buffered_plain(B, r, n0, words, thresholds, cat_bits)
            n1 = _step_buffered_plain(B, r, n1, words, thresholds, cat_bits)
            n2 = _step_buffered_plain(B, r, n2, words, thresholds, cat_bits)
            n3 = _step_buffered_plain(B, r, n3, words, thresholds, cat_bits)
            n4 = _step_buffered_plain(B, r, n4, words, thresholds, cat_bits)
            n5 = _step_buffered_plain(B, r, n5, words, thresholds, cat_bits)
            n6 = _step_buffered_plain(B, r, n6, words, thresholds, cat_bits)
            n7 = _step_buffered_plain(B, r, n7, words, thresholds, cat_bits)
            if ((m0 ^ n0) | (m1 ^ n1) | (m2 ^ n2) | (m3 ^ n3) | (m4 ^ n4) | (m5 ^ n5) | (m6 ^ n6)
                    | (m7 ^ n7)) == 0:
                break  # all eight at their leaves (a leaf steps to itself): skip the deeper levels
    i = np.int64(r)
    tile_out[i, trees[t, 2]] += leaf_value[n0]
    tile_out[i, trees[t + 1, 2]] += leaf_value[n1]
    tile_out[i, trees[t + 2, 2]] += leaf_value[n2]
    tile_out[i, trees[t + 3, 2]] += leaf_value[n3]
    tile_out[i, trees[t + 4, 2]] += leaf_value[n4]
    tile_out[i, trees[t + 5, 2]] += leaf_value[n5]
    tile_out[i, trees[t + 6, 2]] += leaf_value[n6]
    tile_out[i, trees[t + 7, 2]] += leaf_value[n7]


@jit
def _score_row_buffered(B, r, words, thresholds, leaf_value, trees, cat_bits, tile_out, nan_right):
    """Buffer row ``r`` over every tree in file order, eight trees at a time where their splits
    allow (``_score_row`` on the buffer)."""
    num_trees = trees.shape[0]
    t = 0
    while t < num_trees:
        if t + GROUP_ROWS <= num_trees:
            general = False
            for i in range(t, t + GROUP_ROWS):
                general = general or trees[i, 3] == TREE_GENERAL
            if not general:
                _walk_trees_buffered(B, r, t, trees, words, thresholds, cat_bits, leaf_value, tile_out, nan_right)
                t += GROUP_ROWS
                continue
        tile_out[np.int64(r), trees[t, 2]] += leaf_value[_leaf_buffered(B, r, trees[t, 0], words, thresholds, cat_bits)]
        t += 1


@jit
def _score_tile_buffered(X, start, stop, columns, categorical, words, thresholds, leaf_value, trees, cat_bits, B,
                         tile_out,
                         divisor, link, param, out, nan_right):
    """Rows start..stop-1 (at most TILE_ROWS) through every tree from the buffer B, then into
    out transformed; per row the trees are added in file order (LightGBM's summation order).
    Whole groups of eight rows walk each tree together; the rows left over (a single row, the end
    of a batch) walk eight trees at a time instead."""
    rows = stop - start
    padded = rows // GROUP_ROWS * GROUP_ROWS
    for j in range(columns.shape[0]):
        base = j * TILE_ROWS
        feature = columns[j]
        if categorical[j]:
            for i in range(rows):
                B[base + i] = np.float64(category_index(np.float64(X[start + i, feature])))
        else:
            for i in range(rows):
                B[base + i] = X[start + i, feature]
    for i in range(rows):
        for k in range(tile_out.shape[1]):
            tile_out[i, k] = 0.0
    num_trees = trees.shape[0]
    first = 0
    while first < num_trees and padded > 0:
        end = _tree_block_end(trees, first)
        for t in range(first, end):
            root = trees[t, 0]
            column = trees[t, 2]
            if trees[t, 3] == TREE_GENERAL:
                for i in range(padded):
                    leaf = _leaf_buffered(B, np.uint64(i), root, words, thresholds, cat_bits)
                    tile_out[i, column] += leaf_value[leaf]
                continue
            depth = trees[t, 1]
            steps = trees[t, 4]
            for r in range(0, padded, GROUP_ROWS):
                if nan_right:
                    n0, n1, n2, n3, n4, n5, n6, n7 = _walk_buffered(B, np.uint64(r), root, depth, steps, words,
                                                                    thresholds, cat_bits)
                else:
                    n0, n1, n2, n3, n4, n5, n6, n7 = _walk_buffered_plain(B, np.uint64(r), root, depth, steps,
                                                                          words, thresholds, cat_bits)
                tile_out[r, column] += leaf_value[n0]
                tile_out[r + 1, column] += leaf_value[n1]
                tile_out[r + 2, column] += leaf_value[n2]
                tile_out[r + 3, column] += leaf_value[n3]
                tile_out[r + 4, column] += leaf_value[n4]
                tile_out[r + 5, column] += leaf_value[n5]
                tile_out[r + 6, column] += leaf_value[n6]
                tile_out[r + 7, column] += leaf_value[n7]
        first = end
    for i in range(padded, rows):
        _score_row_buffered(B, np.uint64(i), words, thresholds, leaf_value, trees, cat_bits, tile_out, nan_right)
    for i in range(rows):
        row = start + i
        for k in range(out.shape[1]):
            out[row, k] = tile_out[i, k] / divisor if divisor != 0.0 else tile_out[i, k]
        apply_link(out[row], link, param)


@jit
def predict_buffered_serial(X, columns, categorical, words, leaf_value, trees, cat_bits, divisor, link, param, out,
                            nan_right):
    """``predict_serial`` for a buffered layout (engine/models/packing.py BufferedLayout): words
    are its records (flat int64), columns the feature each buffer column copies, categorical
    whether it holds the feature's category; cat_bits its sets; nan_right False where no numeric
    split sends NaN right (the step without the NaN test)."""
    n = X.shape[0]
    thresholds = words.view(np.float64)  # a node's threshold: the bits of its record's first word
    B = np.empty(max(columns.shape[0], 1) * TILE_ROWS, dtype=np.float64)
    tile_out = np.empty((TILE_ROWS, out.shape[1]), dtype=np.float64)
    for start in range(0, n, TILE_ROWS):
        stop = min(start + TILE_ROWS, n)
        _score_tile_buffered(X, start, stop, columns, categorical, words, thresholds, leaf_value, trees, cat_bits, B,
                             tile_out,
                             divisor, link, param, out, nan_right)


@parallel_jit
def predict_buffered_parallel(X, columns, categorical, words, leaf_value, trees, cat_bits, divisor, link, param,
                              out, nan_right):
    """``predict_buffered_serial`` with row tiles spread over Numba's threads (a buffer per tile)."""
    n = X.shape[0]
    thresholds = words.view(np.float64)
    tiles = (n + TILE_ROWS - 1) // TILE_ROWS
    for tile in numba.prange(tiles):
        start = tile * TILE_ROWS
        stop = min(start + TILE_ROWS, n)
        B = np.empty(max(columns.shape[0], 1) * TILE_ROWS, dtype=np.float64)
        tile_out = np.empty((TILE_ROWS, out.shape[1]), dtype=np.float64)
        _score_tile_buffered(X, start, stop, columns, categorical, words, thresholds, leaf_value, trees, cat_bits, B,
                             tile_out,
                             divisor, link, param, out, nan_right)
