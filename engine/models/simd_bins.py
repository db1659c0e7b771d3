"""The SIMD tier on 16-bit bins: numeric models compared as small integers, 16 leaves a word.

The SIMD tier (engine/models/simd.py) compares float64 values, four rows per AVX2 compare, and
ANDs 64-bit leaf masks, four rows per instruction: about one vector instruction per row and node.
A model with no categorical split needs neither width. LightGBM's thresholds come from its
histogram bins, so a feature has few distinct thresholds (at most ``max_bin``, 255 by default),
and for the sorted distinct thresholds T of a slot (engine/models/simd.py's ways of reading a
feature) and any value v that is not NaN (slots never hold NaN):

    v > T[j]  <=>  bin(v) > j,   where bin(v) = #{i : T[i] < v}

(T[0..j] are all <= T[j] < v; conversely if j + 1 thresholds are below v, so is T[j]). The drivers
bin each slot value once per row while transposing (a branch-free binary search), and a node is
one 16-bit compare: sixteen rows per AVX2 instruction. A tree is cut into words of 16 leaves
(segments, as the 64-leaf words of the float64 kernel: a node sits in every word its left
subtree touches), whose masks are 16 bits too. The exit leaf of a word is its lowest set bit, the
tree's that of the lowest word that kept one. Leaf values and sums are float64, added per class in
LightGBM's tree order, so the bits are those of ``Booster.predict``.

Measured (engine/models/simd_bins_run.py): see docs/treecode.md. Limits: no categorical splits
(the float64 kernel holds those), at most MAX_BINS - 1 distinct thresholds per slot, linear trees
and trees over simd.MAX_LEAVES leaves stay on the other tiers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scoreline.engine.models import simd
from scoreline.engine.models.lightgbm import EnsembleIR, TreeIR
from scoreline.kernels import rules

__all__ = ["MAX_BINS", "WORD", "BinnedForest", "build_binned", "unsupported_reason"]

# Leaves per word: a word's mask is one 16-bit lane, like the binned values it is compared with.
WORD = 16
# Bins are signed 16-bit lanes (AVX2 compares signed integers only): 0 .. MAX_BINS - 1.
MAX_BINS = 1 << 15


@dataclass(frozen=True, eq=False)
class BinnedForest:
    """One model as the binned SIMD kernel reads it (engine/models/simd_bins_run.py); plain arrays.

    slots: int64 (S, 4): feature, way of reading (simd.NAN_LOW ...), first threshold in
    ``bounds`` and how many. bounds: float64, each slot's distinct thresholds, ascending.
    nodes: int64 (N,) records: bits 0-15 the leaves of the node's word its left subtree covers
    (cleared where the row goes right), bits 16-31 the threshold's bin, bits 32-63 the slot's
    first element in a block (slot x LANES).
    segments: int64 (G + 1,): first node of each (tree, word); the last closes the last word.
    trees: int64 (T + 1, 3): first segment, first leaf value, output column; row T closes.
    leaves: float64, every tree's leaf values numbered left to right.
    tiles: int64, tree boundaries of the tiles of trees (simd.tile_bounds).
    """

    slots: np.ndarray
    bounds: np.ndarray
    nodes: np.ndarray
    segments: np.ndarray
    trees: np.ndarray
    leaves: np.ndarray
    tiles: np.ndarray


def unsupported_reason(ir: EnsembleIR) -> str | None:
    """Why the binned kernel cannot score ``ir`` (None when it can)."""
    reason = simd.unsupported_reason(ir)
    if reason is not None:
        return reason
    for i, tree in enumerate(ir.trees):
        if rules.is_categorical(tree.decision_type).any():
            return f"categorical splits (tree {i})"
    thresholds = _slot_thresholds(ir)
    for (feature, _), values in thresholds.items():
        if values.size >= MAX_BINS:
            return f"{values.size} distinct thresholds on feature {feature} (at most {MAX_BINS - 1})"
    return None


def _tree_slots(tree: TreeIR) -> tuple[np.ndarray, np.ndarray]:
    """How each split reads its feature (simd.NAN_LOW ...) and its effective threshold."""
    return simd.slot_kinds(tree, rules.effective_thresholds(tree.threshold))


def _slot_thresholds(ir: EnsembleIR) -> dict[tuple[int, int], np.ndarray]:
    """Per (feature, way of reading) slot, its distinct thresholds ascending (in first-use order)."""
    found: dict[tuple[int, int], list[float]] = {}
    for tree in ir.trees:
        if tree.num_leaves == 1:
            continue
        kinds, thresholds = _tree_slots(tree)
        for feature, kind, threshold in zip(tree.split_feature, kinds, thresholds):
            found.setdefault((int(feature), int(kind)), []).append(float(threshold))
    return {key: np.unique(np.asarray(values, dtype=np.float64)) for key, values in found.items()}


def build_binned(ir: EnsembleIR, lanes: int, tile_bytes: int | None = None) -> BinnedForest:
    """The binned SIMD arrays of ``ir`` for blocks of ``lanes`` rows; ValueError when
    ``unsupported_reason(ir)`` names one. tile_bytes as simd.build_forest's."""
    reason = unsupported_reason(ir)
    if reason is not None:
        raise ValueError(f"the binned SIMD kernel does not support this model: {reason}")
    thresholds = _slot_thresholds(ir)
    slot_of = {key: s for s, key in enumerate(thresholds)}
    k = ir.num_tree_per_iteration
    node_parts: list[np.ndarray] = []
    leaf_parts: list[np.ndarray] = []
    segment_starts: list[int] = []
    trees = np.zeros((len(ir.trees) + 1, 3), dtype=np.int64)
    nodes_used = leaves_used = 0
    for t, tree in enumerate(ir.trees):
        trees[t] = (len(segment_starts), leaves_used, t % k)
        if tree.num_leaves == 1:
            segment_starts.append(nodes_used)
            leaf_parts.append(np.asarray(tree.leaf_value, dtype=np.float64))
            leaves_used += 1
            continue
        order, low, high = simd.leaf_ranges(tree)
        kinds, values = _tree_slots(tree)
        slots = np.array([slot_of[(int(f), int(kind))] for f, kind in zip(tree.split_feature, kinds)], dtype=np.int64)
        bins = np.array([np.searchsorted(thresholds[(int(f), int(kind))], v)
                         for f, kind, v in zip(tree.split_feature, kinds, values)], dtype=np.int64)
        for word in range(-(-tree.num_leaves // WORD)):
            lo = np.clip(low - WORD * word, 0, WORD)
            width = np.clip(high - WORD * word, 0, WORD) - lo
            touched = width > 0
            span = ((np.int64(1) << width) - 1) << lo
            segment_starts.append(nodes_used)
            records = (span | (bins << 16) | ((slots * lanes) << 32))[touched]
            node_parts.append(records)
            nodes_used += records.size
        leaf_parts.append(np.asarray(tree.leaf_value, dtype=np.float64)[order])
        leaves_used += tree.num_leaves
    trees[len(ir.trees)] = (len(segment_starts), leaves_used, 0)
    segment_starts.append(nodes_used)
    keys = list(thresholds)
    counts = np.array([thresholds[key].size for key in keys], dtype=np.int64)
    slots = np.zeros((len(keys), 4), dtype=np.int64)
    if keys:
        slots[:, :2] = np.array(keys, dtype=np.int64)
        slots[:, 2] = np.cumsum(counts) - counts
        slots[:, 3] = counts
    segments = np.array(segment_starts, dtype=np.int64)
    # Bytes each tree reads: 8 per node record, 8 per leaf value.
    sizes = 8 * (segments[trees[1:, 0]] - segments[trees[:-1, 0]]) + 8 * np.diff(trees[:, 1])
    tiles = simd.tiles_of_sizes(sizes, simd.default_tiles(int(sizes.sum())) if tile_bytes is None else tile_bytes)
    return BinnedForest(
        slots=slots,
        bounds=np.concatenate([thresholds[key] for key in keys]) if keys else np.zeros(0),
        nodes=np.concatenate(node_parts) if node_parts else np.zeros(0, dtype=np.int64),
        segments=segments,
        trees=trees,
        leaves=np.concatenate(leaf_parts) if leaf_parts else np.zeros(0),
        tiles=tiles,
    )
