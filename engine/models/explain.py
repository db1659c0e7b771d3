"""Feature contributions (SHAP values) for packed LightGBM ensembles and linear models.

``TreeContributions(packed)`` prepares what kernels/shap.py reads (leaf paths, zero-fractions,
per-leaf weight tables) and returns what ``lightgbm.Booster.predict(X, pred_contrib=True)``
returns: float64 (n, (num_features + 1) * num_class), per output the features' contributions
and then the expected value, each row summing to the raw score. ``linear_contributions`` does
the same for a linear model: coefficient x (value - mean), the bias being the score at the means.
"""

from __future__ import annotations

import math

import numpy as np

from scoreline.engine.models.packing import PackedEnsemble
from scoreline.errors import InputError, ModelFormatError
from scoreline.kernels import shap
from scoreline.kernels.trees import CHILD_MASK

__all__ = ["TreeContributions", "linear_contributions"]

# Leaves whose paths have at most this many distinct features get a table of Shapley sums for
# every agreement mask (2^d values, kernels/shap.py fill_tables), so a row costs O(d) per leaf
# instead of LightGBM's O(d^2) unwinding; longer paths compute their weights per row.
MAX_TABLE_FEATURES = 12
# Tables stop growing at this size per model (longer paths then compute per row).
TABLE_BUDGET_BYTES = 64 << 20
# Leaves whose d contributions for every mask (d x 2^d values, from the Shapley sums) fit in
# this much per model keep them too: a row then costs d additions per leaf, no products.
EXPANDED_BUDGET_BYTES = 16 << 20


# _SHAPLEY_WEIGHTS[d, k] = k! (d-1-k)! / d!: the Shapley weight of a coalition of k of a leaf
# path's other d - 1 features, each rounded once from the exact fraction.
_SHAPLEY_WEIGHTS = np.array([[math.factorial(k) * math.factorial(d - 1 - k) / math.factorial(d) if k < d else 0.0
                              for k in range(shap.MAX_PATH_FEATURES + 1)]
                             for d in range(shap.MAX_PATH_FEATURES + 1)])


class TreeContributions:
    """Exact path-dependent TreeSHAP for one packed ensemble (what LightGBM's pred_contrib does).

    Raises ``ModelFormatError`` for what LightGBM cannot explain either (linear trees), for files
    without data counts (LightGBM always writes them), and for paths of more than
    ``kernels.shap.MAX_PATH_FEATURES`` distinct features.
    """

    def __init__(self, packed: PackedEnsemble, *, max_table_features: int = MAX_TABLE_FEATURES,
                 table_budget_bytes: int = TABLE_BUDGET_BYTES, expanded_budget_bytes: int = EXPANDED_BUDGET_BYTES):
        if packed.is_linear:
            raise ModelFormatError("pred_contrib is not available for linear trees (LightGBM does not "
                                   "implement SHAP values for them either)", path="trees.is_linear")
        n_records = packed.nodes.shape[0]
        if packed.cover.shape[0] != n_records:
            raise ModelFormatError("pred_contrib needs leaf_count and internal_count in every tree; "
                                   "this model file lacks them", path="trees.leaf_count")
        self.num_features = packed.num_features
        self.num_class = packed.num_class
        words = packed.nodes.view(np.int64).reshape(-1)
        self._packed = packed
        self._thresholds = packed.nodes.reshape(-1)
        self._words = words
        trees = packed.trees
        self._tree_stop = np.append(trees[1:, 0], n_records).astype(np.int64)
        parent = np.empty(n_records, dtype=np.int64)
        path_len = np.zeros(n_records, dtype=np.int64)
        shap.count_paths(words, trees, self._tree_stop, parent, path_len)
        if path_len.max(initial=0) > shap.MAX_PATH_FEATURES:
            leaf = int(np.argmax(path_len))
            tree = int(np.searchsorted(trees[:, 0], leaf, side="right") - 1)
            raise ModelFormatError(f"pred_contrib supports paths of at most {shap.MAX_PATH_FEATURES} distinct "
                                   f"features; tree {tree} has a longer one", path=f"tree {tree}")
        self._elem_bit = np.zeros(n_records, dtype=np.int64)
        self._leaf_path = np.zeros(n_records, dtype=np.int64)
        total = int(path_len.sum())
        self._path_feature = np.zeros(total, dtype=np.int64)
        self._path_zero = np.zeros(total, dtype=np.float64)
        shap.trace_paths(words, trees, self._tree_stop, packed.cover, parent, path_len, self._elem_bit,
                         self._leaf_path, self._path_feature, self._path_zero)
        leaves = np.flatnonzero((words[1::2] & CHILD_MASK) == np.arange(n_records))
        self._tree_bias = self._expected_values(leaves, parent)
        self._leaf_table, self._table = self._tables(leaves, path_len, max_table_features, table_budget_bytes)
        self._leaf_expanded, self._expanded = self._expand(leaves, path_len, expanded_budget_bytes)

    def _expected_values(self, leaves: np.ndarray, parent: np.ndarray) -> np.ndarray:
        """Per tree, LightGBM's Tree::ExpectedValue: sum over leaves of count / root count x value."""
        p = self._packed
        tree_of = np.searchsorted(p.trees[:, 0], leaves, side="right") - 1
        root_cover = p.cover[p.trees[tree_of, 0]]
        single = parent[leaves] < 0  # a one-leaf tree's expected value is its leaf
        share = np.where(single, 1.0, p.cover[leaves] / np.where(single, 1.0, root_cover))
        return np.bincount(tree_of, weights=share * p.leaf_value[leaves], minlength=p.trees.shape[0])

    def _tables(self, leaves, path_len, max_features, budget_bytes) -> tuple[np.ndarray, np.ndarray]:
        leaf_table = np.full(path_len.shape[0], -1, dtype=np.int64)
        d = path_len[leaves]
        sizes = np.where((d > 0) & (d <= max_features), np.int64(1) << np.minimum(d, 62), 0)
        # Within the budget, table the shortest paths first: they are the cheapest per entry.
        order = np.argsort(sizes, kind="stable")
        fits = np.cumsum(sizes[order]) * 8 <= budget_bytes
        chosen = order[fits & (sizes[order] > 0)]
        starts = np.concatenate(([0], np.cumsum(sizes[chosen])[:-1])).astype(np.int64)
        leaf_table[leaves[chosen]] = starts
        table = np.zeros(int(sizes[chosen].sum()), dtype=np.float64)
        shap.fill_tables(leaves[chosen], self._elem_bit, self._leaf_path, self._path_zero, _SHAPLEY_WEIGHTS,
                         leaf_table, table)
        return leaf_table, table

    def _expand(self, leaves, path_len, budget_bytes) -> tuple[np.ndarray, np.ndarray]:
        """Tabled leaves whose d contributions per mask fit the budget, shortest paths first."""
        leaf_expanded = np.full(path_len.shape[0], -1, dtype=np.int64)
        tabled = leaves[self._leaf_table[leaves] >= 0]
        d = path_len[tabled]
        sizes = (np.int64(1) << d) * d
        order = np.argsort(sizes, kind="stable")
        chosen = order[np.cumsum(sizes[order]) * 8 <= budget_bytes]
        starts = np.concatenate(([0], np.cumsum(sizes[chosen])[:-1])).astype(np.int64)
        leaf_expanded[tabled[chosen]] = starts
        expanded = np.zeros(int(sizes[chosen].sum()), dtype=np.float64)
        shap.expand_tables(tabled[chosen], self._elem_bit, self._leaf_path, self._path_zero, self._packed.leaf_value,
                           self._leaf_table, self._table, leaf_expanded, expanded)
        return leaf_expanded, expanded

    @property
    def table_bytes(self) -> int:
        """Memory the per-leaf tables take (Shapley sums and expanded contributions)."""
        return self._table.nbytes + self._expanded.nbytes

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """float64 (n, (num_features + 1) * num_class): LightGBM's pred_contrib layout. X is a C- or
        F-contiguous float64/float32 (n, num_features) matrix the caller has checked."""
        out = np.empty((X.shape[0], (self.num_features + 1) * self.num_class), dtype=np.float64)
        p = self._packed
        shap.contributions(X, self._thresholds, self._words, p.cat_bits, p.trees, self._tree_stop,
                           self._tree_bias, p.leaf_value, self._elem_bit, self._leaf_path, self._path_feature,
                           self._path_zero, self._leaf_table, self._table, self._leaf_expanded, self._expanded, out)
        return out


def linear_contributions(X: np.ndarray, coef: np.ndarray, intercept: np.ndarray, means: np.ndarray | None,
                         feature_names: tuple[str, ...]) -> np.ndarray:
    """coef[k, j] x (X[:, j] - means[j]) per output k, then the bias intercept[k] + coef[k] . means,
    in pred_contrib's layout (n, (num_features + 1) * num_class); each row sums to the raw score.

    Raises ``InputError`` (path "means") when no feature means were given: without them the
    split between a feature and the bias is arbitrary.
    """
    if means is None:
        raise InputError("pred_contrib on a linear model needs the training means of its features "
                         "(the artifact's 'means' or the manifest's explain.means)", path="means")
    means = np.asarray(means, dtype=np.float64)
    if means.shape != (len(feature_names),):
        raise InputError(f"expected {len(feature_names)} feature means, got shape {means.shape}", path="means")
    n, num_class = X.shape[0], coef.shape[0]
    stride = len(feature_names) + 1
    out = np.empty((n, stride * num_class), dtype=np.float64)
    centred = np.asarray(X, dtype=np.float64) - means
    for k in range(num_class):
        out[:, k * stride:(k + 1) * stride - 1] = centred * coef[k]
        out[:, (k + 1) * stride - 1] = intercept[k] + float(np.dot(coef[k], means))
    return out
