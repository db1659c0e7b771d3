"""Hand-written LightGBM models of trees of any size and shape, whose every leaf a row can reach on purpose.

A tree of L leaves splits feature 0 only: leaf j (numbered left to right) takes x in (j - 1, j],
so the rows 0..L-1 reach every leaf, each one exactly on a threshold, and NaN, 0.0 and +-inf
follow each node's missing type and default side. Split points are drawn at random, so the
trees are lopsided in every way; LightGBM's own leaf numbers are a random permutation.
"""

from __future__ import annotations

import numpy as np

__all__ = ["shaped_model", "shaped_rows"]


def _tree_text(num_leaves: int, rng: np.random.Generator) -> str:
    if num_leaves == 1:
        return ("num_leaves=1\nnum_cat=0\nsplit_feature=\nthreshold=\ndecision_type=\nleft_child=\nright_child=\n"
                f"leaf_value={rng.normal()!r}\n")
    leaf_number = rng.permutation(num_leaves)
    threshold, decision, left, right = [], [], [], []

    def build(low: int, high: int) -> int:
        """Leaves low..high-1 under a new node (or a leaf): its child code."""
        if high - low == 1:
            return ~int(leaf_number[low])
        node = len(threshold)
        split = int(rng.integers(low + 1, high))
        threshold.append(float(split - 1))
        # Missing type None, Zero or NaN; default side at random.
        decision.append((int(rng.integers(0, 3)) << 2) | (2 if rng.random() < 0.5 else 0))
        left.append(0)
        right.append(0)
        left[node] = build(low, split)
        right[node] = build(split, high)
        return node

    build(0, num_leaves)
    values = rng.normal(size=num_leaves)

    def line(items) -> str:
        return " ".join(repr(v) if isinstance(v, float) else str(v) for v in items)

    return (f"num_leaves={num_leaves}\nnum_cat=0\nsplit_feature={line([0] * len(threshold))}\n"
            f"threshold={line(threshold)}\ndecision_type={line(decision)}\nleft_child={line(left)}\n"
            f"right_child={line(right)}\nleaf_value={line([float(v) for v in values])}\n")


def shaped_model(leaves: list[int], seed: int = 0, num_class: int = 1) -> str:
    """A LightGBM model text with one tree of each size in ``leaves`` (in that order; with
    num_class > 1, trees go to classes in turn, so len(leaves) must be a multiple of it)."""
    rng = np.random.default_rng(seed)
    body = "".join(f"Tree={i}\n{_tree_text(n, rng)}is_linear=0\nshrinkage=1\n\n" for i, n in enumerate(leaves))
    objective = f"multiclass num_class:{num_class}" if num_class > 1 else "regression"
    return (f"tree\nversion=v4\nnum_class={num_class}\nnum_tree_per_iteration={num_class}\nlabel_index=0\n"
            f"max_feature_idx=1\nobjective={objective}\nfeature_names=f0 f1\nfeature_infos=[-1:5000] [-1:1]\n\n"
            f"{body}end of trees\n\nparameters:\n[objective: regression]\nend of parameters\n\npandas_categorical:null\n")


def shaped_rows(max_leaves: int, seed: int = 0) -> np.ndarray:
    """Rows reaching every leaf of every shaped tree up to ``max_leaves`` leaves: each integer
    (exactly on a threshold) and one ulp either side, missing values, zeros and +-inf, shuffled."""
    values = np.arange(-1.0, max_leaves + 1)
    column = np.concatenate((values, np.nextafter(values, np.inf), np.nextafter(values, -np.inf),
                             [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-40, -1e-40] * 4))
    rng = np.random.default_rng(seed)
    column = rng.permutation(column)
    return np.column_stack((column, rng.normal(size=column.size)))
