"""The branch-free SIMD tier: every node of a tree evaluated for 32 or 64 rows at once, exit leaf by bitmask.

The technique (QuickScorer's relative "full evaluation", measured in shared/prototypes/forest-simd):
leaves of a tree are numbered left to right; every split node carries a 64-bit mask that clears
the leaves of its left subtree, applied to a row's bitvector when the row goes right
(``x > t``; LightGBM sends ``x <= t`` left). After all nodes, the row's leaf is the lowest set bit
(``cttz``). Rows sit in SIMD lanes: a block of rows is transposed to slot-major, so one
``<8 x double>`` compare tests eight rows against a node. No branch depends on the data, so the
cost is the same whatever the rows; walking code (kernels/trees.py, engine/models/treecode.py)
wins instead where rows leave trees after a few predictable branches, hence the choice at load
(engine/models/tiers.py).

LightGBM's missing values without per-node work: a block holds one "slot" per (feature, way of
reading it) the model uses, filled while transposing:

    NAN_LOW   NaN -> -inf              (NaN goes left: x > t is false)
    NAN_HIGH  NaN -> +inf              (NaN goes right)
    BAND_LOW  NaN and |x| <= kZ -> -inf   (zero as missing, default left, where 0.0 goes right)
    BAND_HIGH NaN and |x| <= kZ -> +inf   (zero as missing, default right, where 0.0 goes left)
    NAN_FLAG  1.0 for NaN, else 0.0    (NAN_HIGH at a threshold of +inf: only NaN goes right)
    BAND_FLAG 1.0 for NaN and the band (BAND_HIGH at a threshold of +inf), compared with 0.5
    CATEGORY  LightGBM's category 0..63 of x, or 64 where every set sends x right

A categorical split holds its set of categories 0..63 as 64 bits instead of a threshold; a row
goes right where its category's bit is clear. A tree's numeric splits come first, then its
categorical ones (the bitvector is an AND of masks, so the order of nodes does not matter).

Missing type None reads NaN as 0.0, so NaN goes where 0.0 goes (NAN_LOW iff 0 <= t); thresholds
inside the zero band are moved to its edge (kernels/rules.py effective_thresholds), so the band
reads as 0.0 everywhere else. The forest loop (trees x nodes) is emitted as vector LLVM IR
inside one Numba intrinsic; leaf values are added per class in LightGBM's tree order, so raw
scores are bit-identical to ``Booster.predict`` and to the generic kernel. Nothing is generated
per model: a model is four flat arrays, the machine code comes from Numba's cache.

Limits (the model stays on the other tiers; ``unsupported_reason`` says why): categorical
sets naming categories past 63, linear trees, trees over 64 leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scoreline.engine.models.lightgbm import EnsembleIR, TreeIR
from scoreline.kernels import rules

__all__ = [
    "BAND_FLAG",
    "BAND_HIGH",
    "BAND_LOW",
    "MAX_LEAVES",
    "NAN_FLAG",
    "NAN_HIGH",
    "NAN_LOW",
    "SimdForest",
    "build_forest",
    "unsupported_reason",
]

NAN_LOW, NAN_HIGH, BAND_LOW, BAND_HIGH, NAN_FLAG, BAND_FLAG, CATEGORY = range(7)
MAX_LEAVES = 64  # one 64-bit word per row and tree


@dataclass(frozen=True, eq=False)
class SimdForest:
    """One model as the SIMD kernel reads it (engine/models/simd_run.py); plain arrays, so it pickles.

    slots: int64 (S, 2), the feature and way of reading (NAN_LOW ...) of each block slot.
    nodes: float64 (N, 3) records: threshold (categorical: the 64-bit set, as int64), then as
    int64 the slot and the left-subtree mask.
    trees: int64 (T + 1, 4): first node, first categorical node, first leaf value, output column;
    row T closes the last.
    leaves: float64, every tree's leaf values numbered left to right.
    """

    slots: np.ndarray
    nodes: np.ndarray
    trees: np.ndarray
    leaves: np.ndarray


def unsupported_reason(ir: EnsembleIR) -> str | None:
    """Why the SIMD tier cannot score ``ir`` (None when it can)."""
    for i, tree in enumerate(ir.trees):
        if tree.is_linear:
            return f"linear trees (tree {i})"
        if tree.num_leaves > MAX_LEAVES:
            return f"a tree of {tree.num_leaves} leaves (tree {i}; at most {MAX_LEAVES})"
        for node in np.flatnonzero(rules.is_categorical(tree.decision_type)):
            if _category_set(tree, node) is None:
                return f"a categorical set naming categories past 63 (tree {i})"
    return None


def _category_set(tree: TreeIR, node: int) -> int | None:
    """The categorical split's set of categories 0..63 as a 64-bit word, None when it names more."""
    index = int(tree.threshold[node])
    words = tree.cat_threshold[int(tree.cat_boundaries[index]):int(tree.cat_boundaries[index + 1])]
    if (np.asarray(words[2:]) != 0).any():
        return None
    return sum(int(w) << (32 * i) for i, w in enumerate(words[:2]))


def _slot_kinds(tree: TreeIR, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How each split of a numeric tree reads its feature (NAN_LOW ...), and the threshold it
    compares with (``thresholds`` are the effective ones)."""
    decision = tree.decision_type
    band = rules.needs_zero_band(decision, tree.threshold)
    low = np.where(band, rules.default_left(decision), rules.nan_goes_left(decision, tree.threshold))
    kinds = np.where(band, np.where(low, BAND_LOW, BAND_HIGH), np.where(low, NAN_LOW, NAN_HIGH))
    # +inf > +inf is false: at a threshold of +inf only the missing values go right, a flag.
    flag = ~low & (thresholds == np.inf)
    kinds = np.where(flag, np.where(band, BAND_FLAG, NAN_FLAG), kinds)
    kinds = np.where(rules.is_categorical(decision), CATEGORY, kinds)
    return kinds, np.where(flag, 0.5, thresholds)


def _leaf_ranges(tree: TreeIR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leaves numbered left to right: (order of LightGBM's leaf numbers, and per split node the
    range [low, high) of numbers its left subtree covers)."""
    internal = tree.num_leaves - 1
    low = np.zeros(internal, dtype=np.int64)
    high = np.zeros(internal, dtype=np.int64)
    order: list[int] = []
    # Iterative in-order walk (trees can be deep): (node, stage) with stage 0 = before the left child.
    stack = [(0, 0)]
    while stack:
        node, stage = stack.pop()
        if stage == 0:
            low[node] = len(order)
            stack.append((node, 1))
            child = tree.left_child[node]
        else:
            high[node] = len(order)
            child = tree.right_child[node]
        if child < 0:
            order.append(~int(child))
        else:
            stack.append((int(child), 0))
    return np.array(order, dtype=np.int64), low, high


def build_forest(ir: EnsembleIR) -> SimdForest:
    """The SIMD arrays of ``ir``; raises ValueError when ``unsupported_reason(ir)`` names one."""
    reason = unsupported_reason(ir)
    if reason is not None:
        raise ValueError(f"the SIMD tier does not support this model: {reason}")
    k = ir.num_tree_per_iteration
    slot_of: dict[tuple[int, int], int] = {}
    node_parts, leaf_parts = [], []
    trees = np.zeros((len(ir.trees) + 1, 4), dtype=np.int64)
    nodes_used = leaves_used = 0
    for t, tree in enumerate(ir.trees):
        trees[t] = (nodes_used, nodes_used, leaves_used, t % k)
        if tree.num_leaves == 1:
            leaf_parts.append(np.asarray(tree.leaf_value, dtype=np.float64))
            leaves_used += 1
            continue
        order, low, high = _leaf_ranges(tree)
        kinds, thresholds = _slot_kinds(tree, rules.effective_thresholds(tree.threshold))
        slots = np.array([slot_of.setdefault((int(f), int(kind)), len(slot_of))
                          for f, kind in zip(tree.split_feature, kinds)], dtype=np.int64)
        # Mask clearing leaves low..high-1 (the left subtree), applied when the row goes right;
        # high - low <= 63 (the right subtree holds a leaf), so the shifts never overflow.
        width = (high - low).astype(np.uint64)
        span = (np.left_shift(np.uint64(1), width) - np.uint64(1)) << low.astype(np.uint64)
        record = np.zeros((tree.num_leaves - 1, 3), dtype=np.float64)
        record[:, 0] = thresholds
        meta = record.view(np.int64)
        meta[:, 1] = slots
        meta[:, 2] = (~span).view(np.int64)
        categorical = kinds == CATEGORY
        for node in np.flatnonzero(categorical):
            meta[node, 0] = np.uint64(_category_set(tree, node)).view(np.int64)
        node_parts.append(np.concatenate((record[~categorical], record[categorical])))
        leaf_parts.append(np.asarray(tree.leaf_value, dtype=np.float64)[order])
        trees[t, 1] = nodes_used + int((~categorical).sum())
        nodes_used += tree.num_leaves - 1
        leaves_used += tree.num_leaves
    trees[len(ir.trees)] = (nodes_used, nodes_used, leaves_used, 0)
    slots = np.array(sorted(slot_of, key=slot_of.get), dtype=np.int64).reshape(-1, 2)
    return SimdForest(
        slots=slots,
        nodes=np.concatenate(node_parts) if node_parts else np.zeros((0, 3)),
        trees=trees,
        leaves=np.concatenate(leaf_parts) if leaf_parts else np.zeros(0),
    )
