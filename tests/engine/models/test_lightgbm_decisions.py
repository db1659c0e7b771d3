"""Every decision type x missing type x default side, and categorical edge values, against LightGBM.

Hand-written one-split models put thresholds where LightGBM's rules bite (inside the zero band,
exactly on +-kZeroThreshold) and feed values at and around them; lightgbm loads the same text.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import scoreline

lgb = pytest.importorskip("lightgbm")

from tests.support.lightgbm_edges import CATEGORY_VALUES, K_ZERO, THRESHOLDS, VALUES  # noqa: E402

def one_split_model(decision_type: int, threshold: float, cat_lines: str = "", linear: bool = False) -> str:
    num_cat = 1 if cat_lines else 0
    linear_lines = (
        "is_linear=1\nleaf_const=0.25 -0.5\nnum_features=1 2\nleaf_features=1  0 1  \nleaf_coeff=2  -1 0.5  \n"
        if linear
        else "is_linear=0\n"
    )
    return f"""tree
version=v4
num_class=1
num_tree_per_iteration=1
label_index=0
max_feature_idx=1
objective=regression
feature_names=f0 f1
feature_infos=[-10:10] [-10:10]
tree_sizes=400

Tree=0
num_leaves=2
num_cat={num_cat}
split_feature=0
split_gain=1
threshold={threshold!r}
decision_type={decision_type}
left_child=-1
right_child=-2
leaf_value=1 2
leaf_weight=1 1
leaf_count=1 1
internal_value=0
internal_weight=0
internal_count=2
{cat_lines}{linear_lines}shrinkage=1


end of trees

feature_importances:
f0=1

parameters:
[objective: regression]
end of parameters

pandas_categorical:null
"""


def rows(values) -> np.ndarray:
    X = np.zeros((len(values), 2))
    X[:, 0] = values
    X[:, 1] = 0.75
    return X


@pytest.mark.parametrize(
    ("default_left", "missing_type"), list(itertools.product([False, True], [0, 1, 2]))
)
def test_numerical_decisions_match_lightgbm(default_left, missing_type):
    X = rows(VALUES)
    for threshold in THRESHOLDS:
        text = one_split_model((missing_type << 2) | (2 if default_left else 0), threshold)
        ours = scoreline.load_lightgbm(text).predict(X, pred_leaf=True)
        theirs = lgb.Booster(model_str=text).predict(X, pred_leaf=True)
        mismatch = np.flatnonzero(ours[:, 0] != theirs[:, 0])
        assert mismatch.size == 0, f"threshold {threshold!r}: values {X[mismatch, 0]} go the other way"


def test_numerical_decisions_in_float32_match_lightgbm():
    with np.errstate(over="ignore"):
        X = rows(VALUES).astype(np.float32)  # 1e300 and 1.7e308 become inf
    for threshold, missing_type, default_left in itertools.product(THRESHOLDS, [0, 1, 2], [0, 2]):
        text = one_split_model((missing_type << 2) | default_left, threshold)
        np.testing.assert_array_equal(
            scoreline.load_lightgbm(text).predict(X, pred_leaf=True),
            lgb.Booster(model_str=text).predict(X, pred_leaf=True),
        )


@pytest.mark.parametrize("words", ["5 1", "0 0 4294967295", "4294967295", "1"])
def test_categorical_decisions_match_lightgbm(words):
    count = len(words.split())
    text = one_split_model(1, 0.0, f"cat_boundaries=0 {count}\ncat_threshold={words}\n")
    X = rows(CATEGORY_VALUES)
    ours = scoreline.load_lightgbm(text).predict(X, pred_leaf=True)
    theirs = lgb.Booster(model_str=text).predict(X, pred_leaf=True)
    mismatch = np.flatnonzero(ours[:, 0] != theirs[:, 0])
    assert mismatch.size == 0, f"categories {X[mismatch, 0]} go the other way"


def test_linear_leaves_match_lightgbm_with_nan_and_tiny_values():
    text = one_split_model(2, 0.0, linear=True)
    X = np.array([[v, w] for v in [-1.0, 1.0, np.nan] for w in [0.3, np.nan, K_ZERO, -1e-40, 1e300]])
    ours = scoreline.load_lightgbm(text).predict(X)
    theirs = lgb.Booster(model_str=text).predict(X)
    np.testing.assert_array_equal(ours, theirs)


def _scores_match(text: str, X: np.ndarray) -> None:
    """Scores, not only leaf numbers: the batch kernels walk rows in lockstep groups of eight and
    the single-row path walks trees in groups, each a different code path from pred_leaf's."""
    model = scoreline.load_lightgbm(text)
    booster = lgb.Booster(model_str=text)
    expected = booster.predict(X, raw_score=True)
    np.testing.assert_array_equal(model.predict(X, raw_score=True), expected)
    np.testing.assert_array_equal(model.predict(np.asfortranarray(X), raw_score=True), expected)
    for i in range(X.shape[0]):  # one row at a time takes the single-row path
        assert model.predict(X[i : i + 1], raw_score=True)[0] == expected[i], f"row {X[i]}"


@pytest.mark.parametrize("missing_type", [0, 1, 2])
@pytest.mark.parametrize("default_left", [False, True])
def test_numerical_scores_match_lightgbm_in_every_walk(default_left, missing_type):
    X = rows(VALUES)
    for threshold in THRESHOLDS:
        _scores_match(one_split_model((missing_type << 2) | (2 if default_left else 0), threshold), X)


@pytest.mark.parametrize("words", ["5 1", "0 0 4294967295", "4294967295", "1", "0 0 0 0 1"])
def test_categorical_scores_match_lightgbm_in_every_walk(words):
    # "0 0 4294967295" and "0 0 0 0 1" reach past category 63: the wide-set walk
    count = len(words.split())
    _scores_match(one_split_model(1, 0.0, f"cat_boundaries=0 {count}\ncat_threshold={words}\n"), rows(CATEGORY_VALUES))
