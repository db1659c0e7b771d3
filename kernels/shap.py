"""Exact path-dependent TreeSHAP (LightGBM's pred_contrib) over the packed node records.

A leaf's contribution to the features on its root path depends on the row only through which of
those features the row "follows" (its one-fraction: 1 when the row takes the path's side at every
split on that feature, else 0); the zero-fractions (cover of the path's child / cover of the
node, multiplied over the feature's splits) are fixed by the model. So each leaf path is traced
once (``trace_paths``), the row's agreement is a bit mask built top-down in one pass over the
tree's records, and the leaf's d weights for that mask come from one table of 2^d Shapley sums
built at load (``fill_tables``), or, for paths too long to tabulate, from LightGBM's own
ExtendPath / UnwoundPathSum arithmetic (tree.h) per row. Either way the results agree with
``Booster.predict(pred_contrib=True)`` to rounding.

Decisions at each node are those of the scoring kernels (kernels/trees.py ``step_wide`` and the
zero-as-missing band), so missing types, default sides and categorical sets route identically.
"""

from __future__ import annotations

import numpy as np

from scoreline.kernels.policy import jit
from scoreline.kernels.rules import in_zero_band
from scoreline.kernels.trees import (
    CHILD_MASK,
    FEATURE_MASK,
    FEATURE_SHIFT,
    TREE_CATEGORICAL,
    TREE_GENERAL,
    TREE_WIDE,
    ZERO_MISSING,
    step,
    step_categorical,
    step_wide,
)

__all__ = ["MAX_PATH_FEATURES", "count_paths", "trace_paths", "fill_tables", "expand_tables", "contributions"]

# A path's agreement mask is an int64: paths with more distinct features are refused at load.
MAX_PATH_FEATURES = 62
_ALL = np.int64(-1)
BLOCK_ROWS = 32  # rows that walk a tree together (contributions)


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
def fill_tables(leaf_records, elem_bit, leaf_path, path_zero, shapley_weight, leaf_table, table):
    """For each listed leaf with leaf_table[leaf] >= 0, write at table[leaf_table[leaf] + mask]
    the sum over subsets S of the mask's features of w(|S|) x the product of the zero-fractions
    of the mask's features outside S, for every mask 0 .. 2^d - 1 (w(k) = k! (d-1-k)! / d!,
    ``shapley_weight[d, k]``).

    A feature e the row follows then contributes leaf x (1 - z_e) x Z x table[mask without e]
    and every other feature -leaf x Z x table[mask], Z the product of the zero-fractions of the
    features the row does not follow: the Shapley sum of TreeSHAP with one-fractions 0 or 1. Sums
    of positive terms only, so no cancellation (LightGBM's unwinding subtracts).
    """
    poly = np.empty(MAX_PATH_FEATURES + 2, dtype=np.float64)
    for leaf in leaf_records:
        base = leaf_table[leaf]
        if base < 0:
            continue
        d = elem_bit[leaf]
        start = leaf_path[leaf]
        for mask in range(1 << d):
            # poly[k] = elementary symmetric polynomial e_k of the mask's zero-fractions.
            poly[0] = 1.0
            size = 0
            for e in range(d):
                if (mask >> e) & 1:
                    size += 1
                    poly[size] = 0.0
                    z = path_zero[start + e]
                    for k in range(size, 0, -1):
                        poly[k] += z * poly[k - 1]
            total = 0.0
            for k in range(size + 1):
                total += shapley_weight[d, k] * poly[size - k]
            table[base + mask] = total


@jit(inline="always")
def _weights_from_sums(path_zero, p, d, mask, value, table, base, out, at):
    """out[at + e] = the contribution of path feature e of a leaf of `value` for `mask`, from
    its Shapley sums at table[base:]: value (1 - z_e) Z S(mask without e) for a feature the
    row follows, -value Z S(mask) for the others (Z: the product of their zero-fractions).
    Branch-free: whether the row follows a feature varies from row to row. Inlined where it
    is called: a call reference-counts the arrays it is passed (see ``contributions``)."""
    cold_product = 1.0
    for e in range(d):
        cold_product *= path_zero[p + e] if ((mask >> e) & 1) == 0 else 1.0
    cold = -value * cold_product * table[base + mask]
    hot_scale = value * cold_product
    for e in range(d):
        bit = (mask >> e) & 1
        hot = hot_scale * (1.0 - path_zero[p + e]) * table[base + (mask ^ (bit << e))]
        out[at + e] = hot if bit else cold


@jit
def expand_tables(leaf_records, elem_bit, leaf_path, path_zero, leaf_value, leaf_table, table, leaf_expanded,
                  expanded):
    """For each listed leaf with leaf_expanded[leaf] >= 0 (and a Shapley-sum table): its d
    contributions for every mask, at expanded[leaf_expanded[leaf] + mask * d + e], as
    ``contributions`` computes them from the sums (so a row then costs d additions)."""
    for leaf in leaf_records:
        at = leaf_expanded[leaf]
        base = leaf_table[leaf]
        if at < 0 or base < 0:
            continue
        d = elem_bit[leaf]
        p = leaf_path[leaf]
        value = leaf_value[leaf]
        for mask in range(1 << d):
            _weights_from_sums(path_zero, p, d, mask, value, table, base, expanded, at + mask * d)


@jit
def _general_side(X, row, node, thresholds, words, cat_bits):
    """0 (left) or 1 (right) at a split of a TREE_GENERAL tree: ``step_wide`` plus the
    zero-as-missing band, which sends |x| <= kZeroThreshold to the default side."""
    word = words[2 * node + 1]
    side = np.int64(step_wide(X, row, np.uint64(node), thresholds, words, cat_bits) - np.uint64(word & CHILD_MASK))
    if word & ZERO_MISSING:
        x = X[row, (word >> FEATURE_SHIFT) & FEATURE_MASK]
        if in_zero_band(x):
            side = (word >> 59) & 1
    return side


@jit
def contributions(X, thresholds, words, cat_bits, trees, tree_stop, tree_bias, leaf_value, elem_bit, leaf_path,
                  path_feature, path_zero, leaf_table, table, leaf_expanded, expanded, out):
    """out[row, k * (F + 1) + f] = feature f's SHAP value for output k; column k * (F + 1) + F
    holds the expected value (the sum of the trees' biases). out is zeroed here.

    Blocks of BLOCK_ROWS rows go through one tree at a time, node by node (every node: each
    leaf needs its mask), so the node's record and the tree's tables stay in cache across the
    block. masks[record - root, row] is the block's agreement mask at each record: the child a
    row does not take loses the node's feature bit.

    The decision is the scoring kernels' step for the tree's kind (kernels/trees.py TREE_*),
    chosen once per node: deciding in a helper that branched on the kind per row measured 6x
    slower. The loops are written out here rather than in helpers taking the arrays: a call
    that is not inlined reference-counts every array it is passed, which measured 20x the
    work itself for one row.
    """
    n = X.shape[0]
    stride = X.shape[1] + 1
    out[:, :] = 0.0
    widest = 1
    for t in range(trees.shape[0]):
        widest = max(widest, tree_stop[t] - trees[t, 0])
    masks = np.empty((widest, BLOCK_ROWS), dtype=np.int64)
    path = np.empty(3 * (MAX_PATH_FEATURES + 1), dtype=np.float64)
    weights = np.empty(MAX_PATH_FEATURES, dtype=np.float64)
    for start in range(0, n, BLOCK_ROWS):
        rows = min(BLOCK_ROWS, n - start)
        for t in range(trees.shape[0]):
            root = trees[t, 0]
            offset = trees[t, 2] * stride
            kind = trees[t, 3]
            for i in range(rows):
                out[start + i, offset + stride - 1] += tree_bias[t]
                masks[0, i] = _ALL
            for r in range(root, tree_stop[t]):
                child = np.int64(words[2 * r + 1] & CHILD_MASK)
                here = r - root
                if child != r:
                    clear = ~(np.int64(1) << elem_bit[r])
                    left = child - root
                    at = np.uint64(r)
                    base = np.uint64(child)
                    if kind == TREE_GENERAL:
                        for i in range(rows):
                            side = _general_side(X, start + i, r, thresholds, words, cat_bits)
                            masks[left, i] = masks[here, i] & (clear if side else _ALL)
                            masks[left + 1, i] = masks[here, i] & (_ALL if side else clear)
                    elif kind == TREE_WIDE:
                        for i in range(rows):
                            side = step_wide(X, start + i, at, thresholds, words, cat_bits) - base
                            masks[left, i] = masks[here, i] & (clear if side else _ALL)
                            masks[left + 1, i] = masks[here, i] & (_ALL if side else clear)
                    elif kind == TREE_CATEGORICAL:
                        for i in range(rows):
                            side = step_categorical(X, start + i, at, thresholds, words) - base
                            masks[left, i] = masks[here, i] & (clear if side else _ALL)
                            masks[left + 1, i] = masks[here, i] & (_ALL if side else clear)
                    else:  # TREE_NUMERIC, TREE_PLAIN
                        for i in range(rows):
                            side = step(X, start + i, at, thresholds, words) - base
                            masks[left, i] = masks[here, i] & (clear if side else _ALL)
                            masks[left + 1, i] = masks[here, i] & (_ALL if side else clear)
                    continue
                d = elem_bit[r]
                if d == 0:
                    continue
                p = leaf_path[r]
                value = leaf_value[r]
                at_table = leaf_table[r]
                if at_table < 0:
                    for i in range(rows):
                        _leaf_weights(path_zero, p, d, masks[here, i], path, weights)
                        for e in range(d):
                            out[start + i, offset + path_feature[p + e]] += weights[e] * value
                    continue
                low = (np.int64(1) << d) - 1
                at_expanded = leaf_expanded[r]
                if at_expanded >= 0:
                    for i in range(rows):
                        at = at_expanded + (masks[here, i] & low) * d
                        for e in range(d):
                            out[start + i, offset + path_feature[p + e]] += expanded[at + e]
                    continue
                for i in range(rows):
                    _weights_from_sums(path_zero, p, d, masks[here, i] & low, value, table, at_table, weights, 0)
                    for e in range(d):
                        out[start + i, offset + path_feature[p + e]] += weights[e]
