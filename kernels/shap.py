"""Exact path-dependent TreeSHAP (LightGBM's pred_contrib) over the packed node records.

A leaf's contribution to the features on its root path depends on the row only through which of
those features the row "follows" (its one-fraction: 1 when the row takes the path's side at every
split on that feature, else 0); the zero-fractions (cover of the path's child / cover of the
node, multiplied over the feature's splits) are fixed by the model. So each leaf path is traced
once (``trace_paths``), the row's agreement is a bit mask built top-down in one pass over the
tree's records, and the leaf's d weights for that mask come from a table built at load
(``fill_tables``, 2^d masks) or, for paths too long to tabulate, from the same arithmetic per
row. The arithmetic is LightGBM's own ExtendPath / UnwoundPathSum (tree.h), so results agree
with ``Booster.predict(pred_contrib=True)`` to rounding.

Decisions at each node are those of the scoring kernels (kernels/trees.py ``_step_wide`` and the
zero-as-missing band), so missing types, default sides and categorical sets route identically.
"""

from __future__ import annotations

import numpy as np

from scoreline.kernels.policy import jit
from scoreline.kernels.trees import CHILD_MASK, FEATURE_MASK, FEATURE_SHIFT, K_ZERO, ZERO_MISSING, _step_wide

__all__ = ["MAX_PATH_FEATURES", "count_paths", "trace_paths", "fill_tables", "contributions"]

# A path's agreement mask is an int64: paths with more distinct features are refused at load.
MAX_PATH_FEATURES = 62
_ALL = np.int64(-1)


@jit
def count_paths(words, trees, tree_stop, parent, path_len):
    """Fill parent (of every record; -1 at roots) and path_len (per leaf record, the number of
    distinct features on its root path, counted up to MAX_PATH_FEATURES + 1)."""
    for t in range(trees.shape[0]):
        root = trees[t, 0]
        parent[root] = -1
        for r in range(root, tree_stop[t]):
            child = np.int64(words[2 * r + 1] & CHILD_MASK)
            if child != r:
                parent[child] = r
                parent[child + 1] = r
    features = np.empty(MAX_PATH_FEATURES + 1, dtype=np.int64)
    for t in range(trees.shape[0]):
        for r in range(trees[t, 0], tree_stop[t]):
            if np.int64(words[2 * r + 1] & CHILD_MASK) != r:
                continue
            count = 0
            node = parent[r]
            while node >= 0 and count <= MAX_PATH_FEATURES:
                feature = np.int64((words[2 * node + 1] >> FEATURE_SHIFT) & FEATURE_MASK)
                known = False
                for e in range(count):
                    known = known or features[e] == feature
                if not known:
                    features[count] = feature
                    count += 1
                node = parent[node]
            path_len[r] = count


@jit
def trace_paths(words, trees, tree_stop, cover, parent, path_len, elem_bit, leaf_path, path_feature, path_zero):
    """Trace every leaf's root path: its distinct features in first-seen order and their
    zero-fractions (path_feature / path_zero from leaf_path[leaf]); elem_bit[node] = the bit of
    the node's feature in the masks of the leaves below it; elem_bit[leaf] = the path's length.

    parent and path_len come from ``count_paths``; the caller sizes path_* to sum(path_len).
    """
    nodes = np.empty(4096, dtype=np.int64)
    used = 0
    for t in range(trees.shape[0]):
        for r in range(trees[t, 0], tree_stop[t]):
            if np.int64(words[2 * r + 1] & CHILD_MASK) != r:
                continue
            depth = 0
            node = r
            while parent[node] >= 0:
                if depth == nodes.size:
                    bigger = np.empty(2 * nodes.size, dtype=np.int64)
                    bigger[:depth] = nodes[:depth]
                    nodes = bigger
                nodes[depth] = node
                depth += 1
                node = parent[node]
            start = used
            count = 0
            # Walk root -> leaf: nodes[depth - 1] is the root's child on the path.
            for i in range(depth - 1, -1, -1):
                child = nodes[i]
                split = parent[child]
                feature = np.int64((words[2 * split + 1] >> FEATURE_SHIFT) & FEATURE_MASK)
                e = 0
                while e < count and path_feature[start + e] != feature:
                    e += 1
                if e == count:
                    path_feature[start + e] = feature
                    path_zero[start + e] = 1.0
                    count += 1
                # LightGBM: hot_zero_fraction * incoming_zero_fraction, data_count(child) / data_count(node).
                path_zero[start + e] = (cover[child] / cover[split]) * path_zero[start + e]
                elem_bit[split] = e
            leaf_path[r] = start
            elem_bit[r] = count
            used += count


@jit
def _leaf_weights(zero, start, d, mask, path, out):
    """out[e] = LightGBM's UnwoundPathSum(e) * (one - zero) for the d path features, given which
    ones the row follows (bit e of mask). path is scratch of (d + 1) * 4: feature-free PathElements
    (zero, one, pweight) after ExtendPath over the dummy root element and the d features."""
    # ExtendPath, element 0 the dummy (zero = one = 1), then each feature in path order.
    path[0] = 1.0
    path[1] = 1.0
    path[2] = 1.0
    for depth in range(1, d + 1):
        zero_fraction = zero[start + depth - 1]
        one_fraction = np.float64((mask >> (depth - 1)) & 1)
        path[3 * depth] = zero_fraction
        path[3 * depth + 1] = one_fraction
        path[3 * depth + 2] = 0.0
        for i in range(depth - 1, -1, -1):
            path[3 * (i + 1) + 2] += one_fraction * path[3 * i + 2] * (i + 1) / np.float64(depth + 1)
            path[3 * i + 2] = zero_fraction * path[3 * i + 2] * (depth - i) / np.float64(depth + 1)
    for e in range(1, d + 1):
        zero_fraction = path[3 * e]
        one_fraction = path[3 * e + 1]
        next_one_portion = path[3 * d + 2]
        total = 0.0
        for i in range(d - 1, -1, -1):
            if one_fraction != 0.0:
                tmp = next_one_portion * (d + 1) / np.float64((i + 1) * one_fraction)
                total += tmp
                next_one_portion = path[3 * i + 2] - tmp * zero_fraction * ((d - i) / np.float64(d + 1))
            else:
                total += (path[3 * i + 2] / zero_fraction) / ((d - i) / np.float64(d + 1))
        out[e - 1] = total * (one_fraction - zero_fraction)


@jit
def fill_tables(leaf_records, leaf_value, elem_bit, leaf_path, path_zero, leaf_table, table):
    """For each listed leaf with leaf_table[leaf] >= 0, write its d weights times its value for
    every mask 0 .. 2^d - 1 at table[leaf_table[leaf] + mask * d]."""
    path = np.empty(3 * (MAX_PATH_FEATURES + 1), dtype=np.float64)
    weights = np.empty(MAX_PATH_FEATURES, dtype=np.float64)
    for leaf in leaf_records:
        base = leaf_table[leaf]
        if base < 0:
            continue
        d = elem_bit[leaf]
        value = leaf_value[leaf]
        for mask in range(1 << d):
            _leaf_weights(path_zero, leaf_path[leaf], d, mask, path, weights)
            for e in range(d):
                table[base + mask * d + e] = weights[e] * value


@jit
def _side(X, row, node, thresholds, words, cat_bits):
    """0 when X[row] goes left at split record ``node``, 1 when right (kernels/trees.py rules)."""
    word = words[2 * node + 1]
    side = np.int64(_step_wide(X, row, np.uint64(node), thresholds, words, cat_bits) - np.uint64(word & CHILD_MASK))
    if word & ZERO_MISSING:
        x = X[row, (word >> FEATURE_SHIFT) & FEATURE_MASK]
        if abs(x) <= K_ZERO:
            side = (word >> 59) & 1  # zero as missing: the zero band goes to the default side
    return side


@jit
def contributions(X, thresholds, words, cat_bits, trees, tree_stop, tree_bias, leaf_value, elem_bit, leaf_path,
                  path_feature, path_zero, leaf_table, table, out):
    """out[row, k * (F + 1) + f] = feature f's SHAP value for output k; column k * (F + 1) + F
    holds the expected value (the sum of the trees' biases). out is zeroed here.

    Trees are the outer loop so a tree's records and table stay in cache across the rows.
    """
    n = X.shape[0]
    stride = X.shape[1] + 1
    out[:, :] = 0.0
    masks = np.empty(max(1, thresholds.size // 2), dtype=np.int64)
    path = np.empty(3 * (MAX_PATH_FEATURES + 1), dtype=np.float64)
    weights = np.empty(MAX_PATH_FEATURES, dtype=np.float64)
    for t in range(trees.shape[0]):
        root = trees[t, 0]
        stop = tree_stop[t]
        offset = trees[t, 2] * stride
        for row in range(n):
            out[row, offset + stride - 1] += tree_bias[t]
            masks[root] = _ALL
            for r in range(root, stop):
                child = np.int64(words[2 * r + 1] & CHILD_MASK)
                mask = masks[r]
                if child != r:
                    side = _side(X, row, r, thresholds, words, cat_bits)
                    masks[child + side] = mask
                    masks[child + 1 - side] = mask & ~(np.int64(1) << elem_bit[r])
                    continue
                d = elem_bit[r]
                if d == 0:
                    continue
                p = leaf_path[r]
                base = leaf_table[r]
                if base >= 0:
                    base += (mask & ((np.int64(1) << d) - 1)) * d
                    for e in range(d):
                        out[row, offset + path_feature[p + e]] += table[base + e]
                else:
                    _leaf_weights(path_zero, p, d, mask, path, weights)
                    value = leaf_value[r]
                    for e in range(d):
                        out[row, offset + path_feature[p + e]] += weights[e] * value
