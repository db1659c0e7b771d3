"""How many steps eight rows walk a tree together before each finishes alone: a cost model per tree."""

from __future__ import annotations

import numpy as np
from scoreline.engine.models.lightgbm import TreeIR
from scoreline.kernels.trees import GROUP_ROWS, TREE_GENERAL

__all__ = ["leaf_depths", "lockstep_steps"]

# Costs in ns, measured on the bulk kernel (kernels/trees.py _walk_group*, one thread): a step of
# one row in the lockstep walk, the leaf test after a shortened walk (per row), a group where some
# row is not on a leaf yet (the mispredicted branch into the one-row walk), and one more level of
# that one-row walk (a chain of dependent loads).
STEP_NS = 1.0
CHECK_NS = 1.0
MISS_NS = 15.0
SINGLE_NS = 5.0


def leaf_depths(tree: TreeIR) -> np.ndarray:
    """The depth of each leaf (by leaf index; a single-leaf tree's leaf is at depth 0)."""
    depths = np.zeros(tree.num_leaves, dtype=np.int64)
    frontier = np.zeros(1 if tree.num_leaves > 1 else 0, dtype=np.int64)
    level = 0
    while frontier.size:
        level += 1
        children = np.concatenate((tree.left_child[frontier], tree.right_child[frontier]))
        depths[~children[children < 0]] = level
        frontier = children[children >= 0]
    return depths


def lockstep_steps(tree: TreeIR, kind: int) -> int:
    """The steps that minimise a group's expected cost on this tree (the tree's depth when no
    shorter walk is expected to pay).

    Rows are assumed to reach the leaves as LightGBM's training rows did (leaf_count), or each
    leaf alike when the file has no counts. The counts only steer speed: the kernel finishes
    every row that is not on a leaf after the shortened walk, whatever the rows are.
    """
    depth = tree.depth
    if kind == TREE_GENERAL or depth < 2:
        return depth
    depths = leaf_depths(tree)
    weight = tree.leaf_count if tree.leaf_count is not None else None
    if weight is None or not np.isfinite(weight).all() or weight.sum() <= 0:
        weight = np.ones(tree.num_leaves)
    share = np.bincount(depths, weights=weight, minlength=depth + 1) / weight.sum()
    levels = np.arange(depth + 1)
    finished = np.cumsum(share)  # P(leaf depth <= d)
    beyond = np.array([(share * np.maximum(0, levels - d)).sum() for d in levels])  # E[max(0, D - d)]
    rows = GROUP_ROWS
    cost = rows * levels * STEP_NS + rows * CHECK_NS + (1 - finished**rows) * MISS_NS + rows * beyond * SINGLE_NS
    cost[depth] = rows * depth * STEP_NS  # the full walk needs no test
    return int(np.argmin(cost))
