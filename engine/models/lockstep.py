"""How many levels eight rows walk a tree before one test for a row not yet on a leaf: a cost model per tree."""

from __future__ import annotations

import numpy as np
from scoreline.engine.models.lightgbm import TreeIR
from scoreline.kernels.trees import GROUP_ROWS, TREE_GENERAL

__all__ = ["leaf_depths", "lockstep_steps"]

# Costs of a group of eight rows on one tree, in lockstep steps of one row (kernels/trees.py
# _walk_group*_short): the leaf test after the first leg (eight loads, one branch), the
# mispredicted branch into the second leg, and the least a shortened walk must save to be taken
# (a margin for rows that end elsewhere than the training rows did). From forcing one step off
# every first leg: +0.5 step per row (4 a group) where the test is predictable, +2 per row (16)
# with column-resampled rows where it is not (breast cancer); MISS_STEPS leans to the latter.
CHECK_STEPS = 4.0
MISS_STEPS = 24.0
MARGIN_STEPS = 8.0


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
    """The levels eight rows walk together before one test sends them on to ``depth`` only if
    some row is not on a leaf: the choice that minimises a group's expected cost on this tree,
    or the tree's depth when no shorter first leg is expected to pay.

    Rows are assumed to reach the leaves as LightGBM's training rows did (leaf_count), or each
    leaf alike when the file has no counts. The counts only steer speed: the kernel takes the
    second leg for any group with a row not on a leaf, whatever the rows are.
    """
    depth = tree.depth
    if kind == TREE_GENERAL or depth < 2:
        return depth
    depths = leaf_depths(tree)
    weight = tree.leaf_count if tree.leaf_count is not None else None
    if weight is None or not np.isfinite(weight).all() or weight.sum() <= 0:
        weight = np.ones(tree.num_leaves)
    share = np.bincount(depths, weights=weight, minlength=depth + 1) / weight.sum()
    rows = GROUP_ROWS
    levels = np.arange(depth + 1)
    unfinished = 1.0 - np.cumsum(share) ** rows  # P(some row of eight is below level d)
    cost = rows * levels + CHECK_STEPS + unfinished * (MISS_STEPS + rows * (depth - levels))
    best = int(np.argmin(cost))
    return best if cost[best] + MARGIN_STEPS <= rows * depth else depth
