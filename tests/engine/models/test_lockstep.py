"""Shortened lockstep walks: rows the training counts say are rare still reach their leaves, exactly.

Each model here is a chain (node i's left child is leaf i, its right child node i + 1) whose
training counts put almost every row on the first leaf, so the packer walks groups of eight a
step or two in lockstep and leaves the rest to the one-row finish; the rows scored go anywhere,
most of them to the deepest leaf, where a straggler left unfinished would score 0.
"""

from __future__ import annotations

import numpy as np
import pytest

import scoreline
from scoreline.engine.models.lightgbm import read_lightgbm
from scoreline.engine.models.lockstep import leaf_depths
from scoreline.engine.models.packing import pack
from scoreline.kernels import trees as kernels

lgb = pytest.importorskip("lightgbm")

from tests.support.lightgbm_edges import K_ZERO  # noqa: E402

DEPTH = 14
NUMERIC_NONE, NUMERIC_NAN_RIGHT, ZERO_DEFAULT_RIGHT, CATEGORICAL = 0, 8, 4, 1
# Per tree: the decision type of each node of the chain and the widest category used.
CHAINS = {
    "plain": [NUMERIC_NONE] * DEPTH,
    "numeric": [NUMERIC_NAN_RIGHT] * DEPTH,
    "categorical": [CATEGORICAL if i % 2 else NUMERIC_NAN_RIGHT for i in range(DEPTH)],
    "wide": [CATEGORICAL if i % 2 else NUMERIC_NONE for i in range(DEPTH)],
    "general": [ZERO_DEFAULT_RIGHT if i == 3 else NUMERIC_NAN_RIGHT for i in range(DEPTH)],
}


def _numbers(values) -> str:
    return " ".join(repr(v) if isinstance(v, float) else str(v) for v in values)


def chain_tree(index: int, kind: str, first_count: float) -> str:
    decision = CHAINS[kind]
    leaves = DEPTH + 1
    threshold, features, words, boundaries = [], [], [], [0]
    for i, d in enumerate(decision):
        if d == CATEGORICAL:
            category = 64 + 3 * i if kind == "wide" and i > 6 else 3 * i  # past 63: a wide set
            features.append(1)
            threshold.append(len(boundaries) - 1)
            bits = [0] * (category // 32 + 1)
            bits[category // 32] = 1 << (category % 32)
            words.extend(bits)
            boundaries.append(len(words))
        else:
            features.append(0)
            threshold.append(i + 0.5)
    leaf_count = [first_count] + [1.0] * DEPTH
    internal_count = [sum(leaf_count[i:]) for i in range(DEPTH)]
    cats = len(boundaries) - 1
    cat_lines = f"cat_boundaries={_numbers(boundaries)}\ncat_threshold={_numbers(words)}\n" if cats else ""
    return f"""Tree={index}
num_leaves={leaves}
num_cat={cats}
split_feature={_numbers(features)}
split_gain={_numbers([1.0] * DEPTH)}
threshold={_numbers(threshold)}
decision_type={_numbers(decision)}
left_child={_numbers([-(i + 1) for i in range(DEPTH)])}
right_child={_numbers([i + 1 for i in range(DEPTH - 1)] + [-leaves])}
leaf_value={_numbers([0.125 * (i + 1) * (index + 1) for i in range(leaves)])}
leaf_weight={_numbers(leaf_count)}
leaf_count={_numbers(leaf_count)}
internal_value={_numbers([0.0] * DEPTH)}
internal_weight={_numbers(internal_count)}
internal_count={_numbers(internal_count)}
{cat_lines}is_linear=0
shrinkage=1

"""


def chain_model(first_count: float = 1e6) -> str:
    trees = "".join(chain_tree(i, kind, first_count) for i, kind in enumerate(CHAINS))
    return f"""tree
version=v4
num_class=1
num_tree_per_iteration=1
label_index=0
max_feature_idx=1
objective=regression
feature_names=f0 f1
feature_infos=[-10:10] [-10:10]

{trees}end of trees

parameters:
[objective: regression]
end of parameters

pandas_categorical:null
"""


def chain_rows(n: int, seed: int) -> np.ndarray:
    """Mostly rows past every split (the deepest leaf), the rest anywhere: on and around each
    threshold, every leaf's category, NaN, +-inf, the zero band, unseen categories."""
    rng = np.random.default_rng(seed)
    numeric = np.concatenate([np.arange(DEPTH + 1) + 0.5, np.arange(DEPTH + 1), np.arange(DEPTH + 1) + 0.25,
                              [np.nan, np.inf, -np.inf, 0.0, -0.0, K_ZERO / 2, -K_ZERO, 1e300]])
    categories = np.concatenate([3.0 * np.arange(DEPTH), 64 + 3.0 * np.arange(DEPTH),
                                 [np.nan, -1.0, 1000.0, 1e10, 2.0, 63.0, 64.0]])
    X = np.empty((n, 2))
    X[:, 0] = 1e300  # past every numeric split
    X[:, 1] = 1000.0  # in no set
    anywhere = rng.random(n) < 0.3
    X[anywhere, 0] = rng.choice(numeric, anywhere.sum())
    X[anywhere, 1] = rng.choice(categories, anywhere.sum())
    return X


def test_the_counts_shorten_the_lockstep_walk():
    """The premise of the tests below: these trees are walked a step or two in lockstep."""
    ir = read_lightgbm(chain_model())
    packed = pack(ir)
    steps, depth = packed.trees[:, 4], packed.trees[:, 1]
    assert (depth == DEPTH).all()
    assert (steps[:4] < 4).all()  # every lockstep kind
    assert steps[4] == DEPTH  # zero-band tests: walked a row at a time, steps unused
    assert list(leaf_depths(ir.trees[0])) == list(range(1, DEPTH + 1)) + [DEPTH]


def test_rows_past_the_lockstep_steps_reach_their_leaves():
    text = chain_model()
    model = scoreline.load_lightgbm(text, compile="generic")  # the tier this file is about
    booster = lgb.Booster(model_str=text)
    for n, seed in ((8, 0), (64, 1), (1000, 2), (203, 3)):
        X = chain_rows(n, seed)
        with np.errstate(over="ignore"):  # 1e300 is inf in float32, for both engines
            narrow = X.astype(np.float32)
        for layout in (X, np.asfortranarray(X), narrow):
            np.testing.assert_array_equal(model.predict(layout, raw_score=True),
                                          booster.predict(layout, raw_score=True))
    np.testing.assert_array_equal(model.predict(X, raw_score=True, num_threads=2), booster.predict(X, raw_score=True))


@pytest.mark.parametrize("first_count", [1e6, 1.0, 0.0, None])
def test_any_counts_give_lightgbm_scores(first_count):
    """Counts only steer speed: counts that favour the deep leaves, or none at all (each leaf
    alike), give the same scores."""
    text = chain_model(first_count or 0.0)
    if first_count is None:
        text = "\n".join(line for line in text.split("\n") if not line.startswith(("leaf_count", "internal_count")))
    X = chain_rows(512, 4)
    np.testing.assert_array_equal(scoreline.load_lightgbm(text, compile="generic").predict(X, raw_score=True),
                                  lgb.Booster(model_str=text).predict(X, raw_score=True))


def test_every_lockstep_depth_gives_lightgbm_scores():
    """The kernel finishes whatever rows a walk of any length leaves short of a leaf."""
    text = chain_model()
    packed = pack(read_lightgbm(text))
    X = chain_rows(256, 5)
    expected = lgb.Booster(model_str=text).predict(X, raw_score=True)
    nodes = packed.nodes
    for steps in range(DEPTH + 1):
        trees = packed.trees.copy()
        trees[:4, 4] = steps
        out = np.zeros((X.shape[0], 1))
        kernels.predict_serial(X, nodes.reshape(-1), nodes.view(np.int64).reshape(-1), packed.leaf_value, trees,
                               packed.cat_bits, 0.0, 0, 0.0, out)
        np.testing.assert_array_equal(out[:, 0], expected, err_msg=f"{steps} steps in lockstep")
