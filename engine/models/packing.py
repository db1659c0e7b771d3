"""EnsembleIR -> PackedEnsemble: the few flat arrays the tree kernels read (one 16-byte record per node)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scoreline.engine.models.lightgbm import EnsembleIR, TreeIR
from scoreline.engine.models.lockstep import lockstep_steps
from scoreline.kernels import links, rules
from scoreline.kernels.trees import (
    CATEGORICAL,
    CHILD_MASK,
    DEFAULT_RIGHT,
    FEATURE_MASK,
    FEATURE_SHIFT,
    MAX_FEATURES,
    NAN_RIGHT,
    TREE_CATEGORICAL,
    TREE_GENERAL,
    TREE_NUMERIC,
    TREE_PLAIN,
    TREE_WIDE,
    WIDE_SET,
    ZERO_MISSING,
)

from scoreline.errors import ModelFormatError

__all__ = ["BufferedLayout", "PackedEnsemble", "buffered_layout", "link_for", "pack"]


@dataclass(frozen=True, eq=False)
class PackedEnsemble:
    """Flat arrays for the kernels; plain numpy + scalars, so it pickles and travels to workers.

    nodes: float64 (N, 2). Column 0 is the threshold (numeric node), the category-set location
    (categorical node, read as int64: the set of categories 0..63 as 64 bits, or for a wider
    set start << 32 | words into cat_bits) or +inf (leaf). Column 1, read as
    int64, packs the left child's index (the right child is the next record), the feature and
    the flags in kernels/trees.py. A leaf is its own child, so walking ``depth`` levels from a
    tree's root always ends on that tree's leaf.
    """

    nodes: np.ndarray  # float64 (N, 2)
    leaf_value: np.ndarray  # float64 (N,), the leaf's output (0 on split nodes)
    leaf_index: np.ndarray  # int32 (N,), LightGBM's leaf number (-1 on split nodes)
    # int64 (T, 5): root record, depth, output column, walk kind (TREE_*), first-leg steps (<=
    # depth; engine/models/lockstep.py: eight rows go on to depth only if one is not on a leaf)
    trees: np.ndarray
    cat_bits: np.ndarray  # uint32 bitset words of every categorical split
    linear: np.ndarray  # int64 (N, 2): start, count into linear_feature/linear_coeff; empty if none
    linear_const: np.ndarray  # float64 (N,)
    linear_feature: np.ndarray  # int64
    linear_coeff: np.ndarray  # float64
    num_class: int
    num_features: int
    average_divisor: float  # number of iterations for average_output models, else 0.0
    link: int
    link_param: float
    # float64 (N,): training rows reaching each record (internal_count / leaf_count), read only
    # by pred_contrib (kernels/shap.py); empty when the file lacks the counts.
    cover: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def is_linear(self) -> bool:
        return self.linear.shape[0] > 0

    def readonly(self) -> PackedEnsemble:
        """Mark every array read-only (what Ray workers receive); returns self."""
        for name in ("nodes", "leaf_value", "leaf_index", "trees", "cat_bits", "linear", "linear_const",
                     "linear_feature", "linear_coeff", "cover"):
            getattr(self, name).flags.writeable = False
        return self


def link_for(objective: str, args: dict[str, str]) -> tuple[int, float]:
    """The output transform LightGBM's ObjectiveFunction::ConvertOutput applies for an objective."""
    if objective in ("binary", "multiclassova", "multiova", "ova"):
        try:
            sigmoid = float(args.get("sigmoid", "1"))
        except ValueError:
            raise ModelFormatError(
                f"Ill-formed LightGBM model: objective {objective} has sigmoid:{args['sigmoid']!r}",
                path="header.objective",
            ) from None
        return (links.LINK_SIGMOID if objective == "binary" else links.LINK_SIGMOID_EACH), sigmoid
    if objective in ("multiclass", "softmax"):
        return links.LINK_SOFTMAX, 0.0
    if objective in ("cross_entropy", "xentropy"):
        return links.LINK_SIGMOID, 1.0
    if objective in ("cross_entropy_lambda", "xentlambda"):
        return links.LINK_LOG1P_EXP, 0.0
    if objective in ("poisson", "gamma", "tweedie"):
        return links.LINK_EXP, 0.0
    if objective in ("regression", "regression_l2", "l2", "mean_squared_error", "mse", "regression_l1", "l1",
                     "mean_absolute_error", "mae", "huber", "fair", "quantile", "mape",
                     "mean_absolute_percentage_error"):
        return (links.LINK_SIGNED_SQUARE if "sqrt" in args else links.LINK_IDENTITY), 0.0
    if objective in ("lambdarank", "rank_xendcg", "xendcg", "xe_ndcg", "xe_ndcg_mart", "xendcg_mart", "custom",
                     "none", "null", "na", ""):
        return links.LINK_IDENTITY, 0.0
    raise ModelFormatError(
        f"Unsupported LightGBM objective {objective!r}: its output transform is unknown", path="header.objective"
    )


def pack(ir: EnsembleIR) -> PackedEnsemble:
    """Lay the trees out for the kernels; raises ModelFormatError for what the kernels cannot hold."""
    if ir.num_features > MAX_FEATURES:
        raise ModelFormatError(
            f"LightGBM model has {ir.num_features} features; at most {MAX_FEATURES} are supported",
            path="header.max_feature_idx",
        )
    link, link_param = link_for(ir.objective, ir.objective_args)
    total = sum(2 * t.num_leaves - 1 for t in ir.trees)
    if total >= CHILD_MASK:
        raise ModelFormatError(f"LightGBM model has {total} nodes; too many to pack", path="trees")
    nodes = np.zeros((total, 2), dtype=np.float64)
    meta = nodes.view(np.int64)  # column 1 holds integers; same memory
    leaf_value = np.zeros(total, dtype=np.float64)
    leaf_index = np.full(total, -1, dtype=np.int32)
    trees = np.zeros((len(ir.trees), 5), dtype=np.int64)
    any_linear = any(t.is_linear for t in ir.trees)
    linear = np.zeros((total if any_linear else 0, 2), dtype=np.int64)
    linear_const = np.zeros(total if any_linear else 0, dtype=np.float64)
    linear_feature: list = []  # per-tree arrays, concatenated below
    linear_coeff: list = []
    linear_used = 0
    cat_words = []
    cat_used = 0
    has_counts = all(t.leaf_count is not None for t in ir.trees)
    cover = np.zeros(total if has_counts else 0, dtype=np.float64)
    base = 0
    for t, tree in enumerate(ir.trees):
        slots_of_nodes, slots_of_leaves = _layout(tree, base)
        trees[t, :3] = (base, tree.depth, t % ir.num_tree_per_iteration)
        _fill_splits(tree, slots_of_nodes, slots_of_leaves, nodes, meta, cat_used)
        trees[t, 3] = _walk_kind(meta[slots_of_nodes, 1])
        trees[t, 4] = lockstep_steps(tree, trees[t, 3])
        leaves = slots_of_leaves
        nodes[leaves, 0] = np.inf
        meta[leaves, 1] = leaves  # a leaf is its own child, feature 0, no flags
        leaf_value[leaves] = tree.leaf_value
        leaf_index[leaves] = np.arange(tree.num_leaves, dtype=np.int32)
        if has_counts:
            cover[leaves] = tree.leaf_count
            cover[slots_of_nodes] = tree.internal_count
        if tree.is_linear:
            counts = np.array([f.size for f in tree.leaf_features], dtype=np.int64)
            starts = linear_used + np.concatenate(([0], np.cumsum(counts)[:-1]))
            linear[leaves, 0] = starts
            linear[leaves, 1] = counts
            linear_const[leaves] = tree.leaf_const
            linear_feature.extend(tree.leaf_features)
            linear_coeff.extend(tree.leaf_coeff)
            linear_used += int(counts.sum())
        elif any_linear:
            # A plain tree in a linear model: constant leaves are leaf_const with no terms.
            linear_const[leaves] = tree.leaf_value
        cat_words.append(tree.cat_threshold)
        cat_used += tree.cat_threshold.size
        base += 2 * tree.num_leaves - 1
    iterations = len(ir.trees) // ir.num_tree_per_iteration
    return PackedEnsemble(
        nodes=nodes,
        leaf_value=leaf_value,
        leaf_index=leaf_index,
        trees=trees,
        cat_bits=np.concatenate(cat_words).astype(np.uint32) if cat_words else np.zeros(0, np.uint32),
        linear=linear,
        linear_const=linear_const,
        linear_feature=np.concatenate(linear_feature).astype(np.int64) if linear_feature else np.zeros(0, np.int64),
        linear_coeff=np.concatenate(linear_coeff).astype(np.float64) if linear_coeff else np.zeros(0),
        num_class=ir.num_tree_per_iteration,
        num_features=ir.num_features,
        average_divisor=float(iterations) if ir.average_output and iterations else 0.0,
        link=link,
        link_param=link_param,
        cover=cover,
    )


def _walk_kind(words: np.ndarray) -> int:
    """Which kernel walk a tree's split words need (kernels/trees.py TREE_*)."""
    if (words & ZERO_MISSING).any():
        return TREE_GENERAL
    if (words & WIDE_SET).any():
        return TREE_WIDE
    if (words & CATEGORICAL).any():
        return TREE_CATEGORICAL
    if (words & NAN_RIGHT).any():
        return TREE_NUMERIC
    return TREE_PLAIN


def _layout(tree: TreeIR, base: int) -> tuple[np.ndarray, np.ndarray]:
    """Record index of every split node and leaf: the root first, then node i's two children at
    ``base + 1 + 2i`` and the record after it (LightGBM numbers nodes in split order, so the
    first splits, which every row walks, sit together at the front)."""
    internal = tree.num_leaves - 1
    node_slot = np.zeros(internal, dtype=np.int64)
    leaf_slot = np.zeros(tree.num_leaves, dtype=np.int64)
    if internal == 0:
        leaf_slot[0] = base
        return node_slot, leaf_slot
    node_slot[0] = base
    first = base + 1 + 2 * np.arange(internal)
    for offset, children in ((0, tree.left_child), (1, tree.right_child)):
        is_node = children >= 0
        node_slot[children[is_node]] = first[is_node] + offset
        leaf_slot[~children[~is_node]] = first[~is_node] + offset
    return node_slot, leaf_slot


def _fill_splits(tree, node_slot, leaf_slot, nodes, meta, cat_base) -> None:
    if tree.num_leaves == 1:
        return
    first_child = node_slot[0] + 1 + 2 * np.arange(tree.num_leaves - 1)
    decision = tree.decision_type
    categorical = rules.is_categorical(decision)
    default_left = rules.default_left(decision)
    thr = tree.threshold
    nan_right = ~rules.nan_goes_left(decision, thr)
    # A Zero-missing split whose threshold already sends 0.0 to the default side needs nothing
    # more; otherwise the kernel tests the zero band at that node.
    zero_missing = rules.needs_zero_band(decision, thr)
    flags = (
        np.where(nan_right & ~categorical, NAN_RIGHT, 0)
        | np.where(categorical, CATEGORICAL, 0)
        | np.where(zero_missing & ~categorical, ZERO_MISSING, 0)
        | np.where(~default_left, DEFAULT_RIGHT, 0)
    )
    meta[node_slot, 1] = first_child | (tree.split_feature << FEATURE_SHIFT) | flags
    nodes[node_slot, 0] = rules.effective_thresholds(thr)
    for node in np.flatnonzero(categorical):
        index = int(thr[node])
        low, high = int(tree.cat_boundaries[index]), int(tree.cat_boundaries[index + 1])
        bits = tree.cat_threshold[low:high].astype(np.uint64)
        if (bits[2:] == 0).all():
            # Categories 0..63 only: the set itself goes in the record, no second lookup.
            packed = (int(bits[1]) << 32 if bits.size > 1 else 0) | (int(bits[0]) if bits.size else 0)
            meta[node_slot[node], 0] = np.uint64(packed).view(np.int64)
        else:
            meta[node_slot[node], 1] |= WIDE_SET
            meta[node_slot[node], 0] = ((cat_base + low) << 32) | (high - low)



@dataclass(frozen=True, eq=False)
class BufferedLayout:
    """The node records as kernels/trees.py's buffered walk reads them (predict_buffered_*).

    words: int64 (2N,), the packed records flattened, with each split's feature replaced by its
    buffer column and each categorical split's column 0 the location (start << 32 | words) of its
    set in cat_bits, WIDE_SET flagged. cat_bits: uint32, word 0 zero, then every categorical
    split's set followed by a zero word. columns: int64, the feature each buffer column copies;
    categorical: bool, whether the column holds that feature's category (rules.category_index)
    rather than its value. A feature that numeric and categorical splits both read gets both.
    nan_right: whether some numeric split sends NaN right (else the walk takes the step without
    the NaN test: 1.2x faster on the real-flights and real-grants benchmark models).
    """

    words: np.ndarray
    cat_bits: np.ndarray
    columns: np.ndarray
    categorical: np.ndarray
    nan_right: bool


def buffered_layout(packed: PackedEnsemble) -> BufferedLayout | None:
    """The buffered walk's layout for a model with categorical splits, else None (the plain walk
    is faster without them: see kernels/trees.py) or for linear trees (their leaves read X)."""
    records = packed.nodes.view(np.int64).copy()
    meta = records[:, 1]
    leaf = (meta & CHILD_MASK) == np.arange(meta.size)
    categorical = ((meta & CATEGORICAL) != 0) & ~leaf
    if packed.is_linear or not categorical.any():
        return None
    feature = (meta >> FEATURE_SHIFT) & FEATURE_MASK
    keys = np.unique((feature * 2 + categorical)[~leaf])
    if keys.size > FEATURE_MASK:
        return None
    column = np.searchsorted(keys, feature * 2 + categorical)
    column[leaf] = 0
    words = [np.zeros(1, np.uint32)]
    used = 1
    for node in np.flatnonzero(categorical):
        location = int(records[node, 0])
        if meta[node] & WIDE_SET:
            start, count = location >> 32, location & CHILD_MASK
            bits = packed.cat_bits[start:start + count]
        else:  # the set of categories 0..63 held in the record
            low = location & ((1 << 64) - 1)
            bits = np.array([low & 0xFFFFFFFF, low >> 32], dtype=np.uint32)
        words.append(bits.astype(np.uint32))
        words.append(np.zeros(1, np.uint32))
        records[node, 0] = (used << 32) | bits.size
        used += bits.size + 1
    meta[:] = (meta & ~(FEATURE_MASK << FEATURE_SHIFT)) | (column << FEATURE_SHIFT) | np.where(categorical, WIDE_SET, 0)
    return BufferedLayout(
        words=records.reshape(-1),
        cat_bits=np.concatenate(words),
        columns=(keys // 2).astype(np.int64),
        categorical=(keys % 2).astype(np.bool_),
        nan_right=bool(((meta & NAN_RIGHT) != 0).any()),
    )
