"""The branch-free SIMD tier: every node of a tree evaluated for 32 or 64 rows at once, exit leaf by bitmask.

The technique (QuickScorer's relative "full evaluation", measured in shared/prototypes/forest-simd):
leaves of a tree are numbered left to right; every split node carries a mask that clears the
leaves of its left subtree, applied to a row's bitvector when the row goes right (``x > t``;
LightGBM sends ``x <= t`` left). After all nodes, the row's leaf is the lowest set bit (``cttz``).

A tree of L leaves has W = ceil(L / 64) words of 64 leaves; each word is a "segment" of the
tree's nodes, evaluated on its own: a node sits in the segment of every word its left subtree
touches (with that word of its mask), so a node whose left subtree crosses a word boundary is
repeated, once per word (a few nodes near the root; 1.5% more nodes on a 255-leaf tree). One
word's bitvector is all the kernel holds at a time, whatever W: the leaf is the lowest set bit of
the lowest word that kept one (no row clears every leaf, the leaf it reaches keeps its bit). Rows sit in SIMD lanes: a block of rows is transposed to slot-major, so one
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
    CATEGORY  LightGBM's category c of x where 0 <= c < limit, else limit (every set sends x right)

A categorical split on a feature whose sets stay within categories 0..63 holds its set as 64 bits
instead of a threshold (limit 64); a row goes right where its category's bit is clear. A feature
with wider sets (limit 64 * W, W words of 64 bits) gives each of its splits W + 1 words in
``words``, the last one zero, and the node reads word ``c >> 6`` (a gather). Where a segment
splits on one categorical feature more than once (TABLE_FROM), those splits become one table node
instead: a word per category holding the AND of the masks of the splits that send it right,
gathered per lane. A tree's numeric splits come first, then narrow categorical, then wide ones
and tables (the bitvector is an AND of masks, so the order of nodes does not matter).

Missing type None reads NaN as 0.0, so NaN goes where 0.0 goes (NAN_LOW iff 0 <= t); thresholds
inside the zero band are moved to its edge (kernels/rules.py effective_thresholds), so the band
reads as 0.0 everywhere else. The forest loop (trees x nodes) is emitted as vector LLVM IR
inside one Numba intrinsic; leaf values are added per class in LightGBM's tree order, so raw
scores are bit-identical to ``Booster.predict`` and to the generic kernel. Nothing is generated
per model: a model is a few flat arrays, the machine code comes from Numba's cache.

A forest larger than a few L2 caches (TILED_FROM) is cut into tiles of consecutive trees of about
half the L2 cache each (``tiles``): the drivers score a group of blocks tile by tile, so a tile is
read from memory once per group instead of once per block. Each block adds its trees into its own
sums in file order across the tiles, so the bits do not change.

Limits (the model stays on the other tiers; ``unsupported_reason`` says why): categorical
sets naming categories past MAX_CATEGORY, linear trees, trees over MAX_LEAVES leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scoreline.engine.models.lightgbm import EnsembleIR, TreeIR
from scoreline.kernels import rules

__all__ = [
    "BAND_FLAG",
    "BAND_HIGH",
    "BAND_LOW",
    "GATHER",
    "MAX_LEAVES",
    "NAN_FLAG",
    "NAN_HIGH",
    "NAN_LOW",
    "SELECT_WORDS",
    "TABLE",
    "TABLE_FROM",
    "TABLE_MAX_CATEGORY",
    "TILED_FROM",
    "SimdForest",
    "build_forest",
    "default_tile_bytes",
    "default_tiles",
    "leaf_ranges",
    "slot_kinds",
    "tile_bounds",
    "tiles_of_sizes",
    "unsupported_reason",
]

NAN_LOW, NAN_HIGH, BAND_LOW, BAND_HIGH, NAN_FLAG, BAND_FLAG, CATEGORY, WIDE_CATEGORY = range(8)
# Full evaluation costs every node of a tree per row (a walk: its depth), so bushy trees favour the
# walking tiers; past this the tier is not offered (the choice at load decides below it).
MAX_LEAVES = 4096
# Tiles of trees pay (engine/models/simd_run.py) once a forest's node records and leaf values
# exceed this many tiles of half the L2 cache, i.e. 4 x L2 (2 MiB on the 512 KiB L2 here).
# Measured: one thread, 10k-20k rows, gen-1000x255 cut to its first N trees, 256 KiB tiles vs
# one tile, 2-core AMD EPYC VM (AVX2 code, 32 lanes) at load 5-6: 0.5 and 1.1 MB 1.00x,
# 2.2 MB 0.89-1.01x, 2.7 MB 0.97x, 3.2 MB 0.94x, 4.3 MB 0.71x, 8.6 MB (all 1000 trees) 0.48-0.69x
# (128 KiB-1 MiB tiles: 0.60-0.67x); gen-500x63 (1.0 MB) 1.01-1.03x, noise. At load 4-5, 20k rows,
# 1000x255: tiled 29.2 us/row, one tile 42.1, compiled tier 32.8, generic 100.9, LightGBM 271.
TILED_FROM = 8
# Category sets up to this category (a wide split's words are a copy per node: 64 words = 512 bytes).
MAX_CATEGORY = 4095
# A wide split whose table (the feature's widest set plus the zero word) has at most this many
# words picks the lane's word by comparisons and selects on words broadcast from the table; wider
# ones gather it (GATHER, bit 62 of the table's start). On this Zen 3 machine (AVX2) selecting
# took the real-flights benchmark model (destination: 105 categories, two words; 2,785 of its
# 18,600 nodes) from 12.9 to 11.6 us a row on resampled rows and from 15.8 to 11.3 with columns
# drawn independently (one thread, 10k rows, medians of 7, load average 6 on 2 cores).
SELECT_WORDS = 5
GATHER = 1 << 62
# A segment with at least TABLE_FROM categorical splits on one feature reads them all with one
# lookup: a table of its own (in ``words``) holding, per category c of the slot (0..limit), the
# AND of the masks of those splits that send c right (TABLE, bit 61 of the table's start). Per
# lane that is one gathered word instead of every split's set test; the bitvector is an AND of
# masks, so folding them changes no bit.
# Tables are kept to features of at most TABLE_MAX_CATEGORY categories (8 KB a table; a choice,
# not measured: past it, a table per segment outgrows the per-split sets it replaces).
# Measured on real-flights (300 x 63; 16 carriers, 3 origins, 105 destinations), one thread, 20k
# rows, the same process, 2-core AMD EPYC (Zen 2, AVX2, 32 lanes): 4,104 -> 2,046 ns a row;
# gen-500x63-cat 10,835 -> 3,759; real-grants 2,441 -> 2,250; all bit-identical. TABLE_FROM 1
# and 3 read the same within noise.
TABLE = 1 << 61
TABLE_FROM = 2
TABLE_MAX_CATEGORY = 1023


@dataclass(frozen=True, eq=False)
class SimdForest:
    """One model as the SIMD kernel reads it (engine/models/simd_run.py); plain arrays, so it pickles.

    slots: int64 (S, 3), the feature, way of reading (NAN_LOW ...) and category limit of each slot.
    nodes: float64 (N, 3) records: threshold (narrow categorical: the 64-bit set; wide: its first
    word in ``words``, as int64), then as int64 the slot and the mask of the segment's word.
    segments: int64 (G + 1, 3): first node, first narrow and first wide categorical node of each
    (tree, word); row G closes the last.
    trees: int64 (T + 1, 6): first node, first narrow and first wide categorical node of word
    0 (a one-word tree reads no segment), first leaf value, output column, first segment (the
    tree's W words are the segments up to the next tree's); row T closes the last.
    words: int64, the sets of wide categorical splits.
    leaves: float64, every tree's leaf values numbered left to right.
    tiles: int64, tree boundaries (0, ..., T) of the tiles the drivers score a group of row
    blocks with before moving on (see ``tile_bounds``); (0, T) for one tile.
    """

    slots: np.ndarray
    nodes: np.ndarray
    segments: np.ndarray
    trees: np.ndarray
    leaves: np.ndarray
    words: np.ndarray
    tiles: np.ndarray


def unsupported_reason(ir: EnsembleIR) -> str | None:
    """Why the SIMD tier cannot score ``ir`` (None when it can)."""
    for i, tree in enumerate(ir.trees):
        if tree.is_linear:
            return f"linear trees (tree {i})"
        if tree.num_leaves > MAX_LEAVES:
            return f"a tree of {tree.num_leaves} leaves (tree {i}; at most {MAX_LEAVES})"
        for node in np.flatnonzero(rules.is_categorical(tree.decision_type)):
            if _category_words(tree, node).size * 64 > MAX_CATEGORY + 1:
                return f"a categorical set naming categories past {MAX_CATEGORY} (tree {i})"
    return None


def _category_words(tree: TreeIR, node: int) -> np.ndarray:
    """A categorical split's set as uint64 words (category c is bit c % 64 of word c // 64),
    without trailing zero words."""
    index = int(tree.threshold[node])
    words = np.asarray(tree.cat_threshold[int(tree.cat_boundaries[index]):int(tree.cat_boundaries[index + 1])],
                       dtype=np.uint64)
    nonzero = np.flatnonzero(words)
    words = words[: nonzero[-1] + 1] if nonzero.size else words[:0]
    if words.size % 2:
        words = np.append(words, np.uint64(0))
    return words[0::2] | (words[1::2] << np.uint64(32))


def _feature_words(ir: EnsembleIR) -> dict[int, int]:
    """64-bit words the widest set of each categorical feature needs."""
    widest: dict[int, int] = {}
    for tree in ir.trees:
        for node in np.flatnonzero(rules.is_categorical(tree.decision_type)):
            feature = int(tree.split_feature[node])
            widest[feature] = max(widest.get(feature, 0), _category_words(tree, node).size)
    return widest


def slot_kinds(tree: TreeIR, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def leaf_ranges(tree: TreeIR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _word_masks(low: np.ndarray, high: np.ndarray, word: int) -> tuple[np.ndarray, np.ndarray]:
    """Which nodes' left subtrees [low, high) touch leaves 64 * word .. 64 * word + 63, and the
    word of their masks that clears them there."""
    lo = np.clip(low - 64 * word, 0, 64)
    width = np.clip(high - 64 * word, 0, 64) - lo
    one = np.uint64(1)
    part = (np.left_shift(one, np.minimum(width, 63).astype(np.uint64)) - one) << np.minimum(lo, 63).astype(np.uint64)
    span = np.where(width >= 64, ~np.uint64(0), part)  # 1 << 64 would wrap
    return width > 0, (~span).view(np.int64)


def build_forest(ir: EnsembleIR, tile_bytes: int | None = None) -> SimdForest:
    """The SIMD arrays of ``ir``; raises ValueError when ``unsupported_reason(ir)`` names one.

    tile_bytes: the size of a tile of trees (0: one tile); by default half the L2 cache, for
    forests over TILED_FROM tiles (smaller ones are one tile).
    """
    reason = unsupported_reason(ir)
    if reason is not None:
        raise ValueError(f"the SIMD tier does not support this model: {reason}")
    k = ir.num_tree_per_iteration
    widest = _feature_words(ir)
    slot_of: dict[tuple[int, int, int], int] = {}
    node_parts, leaf_parts, word_parts = [], [], []
    segment_rows: list[tuple[int, int, int]] = []
    trees = np.zeros((len(ir.trees) + 1, 6), dtype=np.int64)
    nodes_used = leaves_used = words_used = 0
    for t, tree in enumerate(ir.trees):
        n_words = max(1, -(-tree.num_leaves // 64))
        trees[t, 3:] = (leaves_used, t % k, len(segment_rows))
        if tree.num_leaves == 1:
            trees[t, :3] = nodes_used
            segment_rows.append((nodes_used, nodes_used, nodes_used))
            leaf_parts.append(np.asarray(tree.leaf_value, dtype=np.float64))
            leaves_used += 1
            continue
        order, low, high = leaf_ranges(tree)
        kinds, thresholds = slot_kinds(tree, rules.effective_thresholds(tree.threshold))
        limits = np.zeros(kinds.size, dtype=np.int64)
        for node in np.flatnonzero(kinds == CATEGORY):
            n_category_words = widest[int(tree.split_feature[node])]
            kinds[node] = CATEGORY if n_category_words <= 1 else WIDE_CATEGORY
            limits[node] = 64 * max(n_category_words, 1)
        slots = np.array([slot_of.setdefault((int(f), int(kind), int(limit)), len(slot_of))
                          for f, kind, limit in zip(tree.split_feature, kinds, limits)], dtype=np.int64)
        record = np.zeros((tree.num_leaves - 1, 3), dtype=np.float64)
        record[:, 0] = thresholds
        meta = record.view(np.int64)
        meta[:, 1] = slots
        for node in np.flatnonzero(kinds == CATEGORY):
            words = _category_words(tree, node)
            meta[node, 0] = (words[0] if words.size else np.uint64(0)).view(np.int64)
        for node in np.flatnonzero(kinds == WIDE_CATEGORY):
            # The feature's widest set plus a zero word: categories at the limit (the slot's
            # "goes right") read the zero word.
            table = np.zeros(limits[node] // 64 + 1, dtype=np.uint64)
            words = _category_words(tree, node)
            table[: words.size] = words
            meta[node, 0] = words_used | (0 if table.size <= SELECT_WORDS else GATHER)
            word_parts.append(table.view(np.int64))
            words_used += table.size
        numeric, narrow, wide = kinds < CATEGORY, kinds == CATEGORY, kinds == WIDE_CATEGORY
        for word in range(n_words):
            # Masks clear the left subtree's leaves, applied when the row goes right.
            touched, masks = _word_masks(low, high, word)
            meta[:, 2] = masks
            tabled = np.zeros(kinds.size, dtype=bool)
            tables = []
            categorical = touched & (narrow | wide)
            for feature in np.unique(tree.split_feature[categorical]):
                group = np.flatnonzero(categorical & (tree.split_feature == feature))
                if group.size < TABLE_FROM or limits[group[0]] > TABLE_MAX_CATEGORY + 1:
                    continue
                table = _category_table(tree, group, masks, int(limits[group[0]]))
                tables.append((words_used | TABLE, slots[group[0]], -1))
                word_parts.append(table)
                words_used += table.size
                tabled[group] = True
            table_records = np.array(tables, dtype=np.int64).reshape(-1, 3).view(np.float64)
            parts = (record[touched & numeric], record[touched & narrow & ~tabled],
                     np.concatenate([record[touched & wide & ~tabled], table_records]))
            segment_rows.append((nodes_used, nodes_used + len(parts[0]), nodes_used + len(parts[0]) + len(parts[1])))
            node_parts.append(np.concatenate(parts))
            nodes_used += sum(len(part) for part in parts)
        trees[t, :3] = segment_rows[trees[t, 5]]
        leaf_parts.append(np.asarray(tree.leaf_value, dtype=np.float64)[order])
        leaves_used += tree.num_leaves
    segment_rows.append((nodes_used, nodes_used, nodes_used))
    trees[len(ir.trees)] = (nodes_used, nodes_used, nodes_used, leaves_used, 0, len(segment_rows) - 1)
    slots = np.array(sorted(slot_of, key=slot_of.get), dtype=np.int64).reshape(-1, 3)
    segments = np.array(segment_rows, dtype=np.int64)
    # SELECT_WORDS - 1 zero words past the last table: a selecting node reads SELECT_WORDS words
    # from its table's start, whatever its width.
    word_parts.append(np.zeros(SELECT_WORDS - 1, dtype=np.int64))
    words = np.concatenate(word_parts)
    return SimdForest(
        slots=slots,
        nodes=np.concatenate(node_parts) if node_parts else np.zeros((0, 3)),
        segments=segments,
        trees=trees,
        leaves=np.concatenate(leaf_parts) if leaf_parts else np.zeros(0),
        words=words,
        tiles=tile_bounds(trees, default_tiles(int(_tree_bytes(trees).sum())) if tile_bytes is None else tile_bytes),
    )


def _category_table(tree: TreeIR, group: np.ndarray, masks: np.ndarray, limit: int) -> np.ndarray:
    """int64 (limit + 1,): per category of a slot (limit: in no set), the AND of the ``masks`` of
    the categorical splits ``group`` (one feature's) that send it right."""
    table = np.full(limit + 1, -1, dtype=np.int64)
    categories = np.arange(limit + 1, dtype=np.uint64)
    word = categories >> np.uint64(6)
    for node in group:
        words = _category_words(tree, int(node))
        member = np.zeros(limit + 1, dtype=bool)
        inside = word < np.uint64(words.size)
        member[inside] = ((words[word[inside].astype(np.int64)] >> (categories[inside] & np.uint64(63)))
                          & np.uint64(1)).astype(bool)
        member[limit] = False
        table[~member] &= masks[node]
    return table


def default_tiles(forest_bytes: int) -> int:
    """The tile size for a forest of ``forest_bytes``: half the L2 past TILED_FROM tiles, else 0 (one tile)."""
    budget = default_tile_bytes()
    return budget if forest_bytes > TILED_FROM * budget else 0


def default_tile_bytes() -> int:
    """Half the L2 cache of CPU 0 (Linux sysfs), or 512 KiB where it cannot be read."""
    try:
        for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale // 2
    except (OSError, ValueError):
        pass
    return 512 << 10


def tile_bounds(trees: np.ndarray, tile_bytes: int) -> np.ndarray:
    """Tree boundaries of consecutive tiles of about ``tile_bytes`` of node records and leaf
    values each (a tree larger than that is a tile of its own); (0, T) when the whole forest fits
    or tile_bytes is 0."""
    return tiles_of_sizes(_tree_bytes(trees), tile_bytes)


def tiles_of_sizes(size: np.ndarray, tile_bytes: int) -> np.ndarray:
    """``tile_bounds`` from the bytes each tree reads."""
    count = size.shape[0]
    if tile_bytes <= 0 or size.sum() <= tile_bytes:
        return np.array([0, count], dtype=np.int64)
    bounds, used = [0], 0
    for t in range(count):
        if used and used + size[t] > tile_bytes:
            bounds.append(t)
            used = 0
        used += int(size[t])
    bounds.append(count)
    return np.array(bounds, dtype=np.int64)


def _tree_bytes(trees: np.ndarray) -> np.ndarray:
    """Bytes of node records and leaf values of each tree."""
    return 24 * np.diff(trees[:, 0]) + 8 * np.diff(trees[:, 3])
