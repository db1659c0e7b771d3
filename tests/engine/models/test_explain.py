"""pred_contrib (TreeSHAP, linear contributions) vs lightgbm.Booster.predict(pred_contrib=True) and the sum rule."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import scoreline
from scoreline.engine.models.explain import TreeContributions
from scoreline.errors import InputError, ModelFormatError
from tests.engine.models.test_lightgbm_exactness import edge_rows, train

lgb = pytest.importorskip("lightgbm")
datasets = pytest.importorskip("sklearn.datasets")

RTOL = 1e-9
# Contributions that cancel to about zero are compared against the row's scale instead.
ATOL_OF_ROW = 1e-12


def assert_contributions(model, booster, X):
    theirs = booster.predict(X, pred_contrib=True, num_threads=1)
    ours = model.predict(X, pred_contrib=True)
    assert ours.dtype == np.float64 and ours.shape == theirs.shape
    scale = np.abs(theirs).sum(axis=1, keepdims=True)
    np.testing.assert_array_less(np.abs(ours - theirs), RTOL * np.abs(theirs) + ATOL_OF_ROW * scale + 1e-300)
    assert_sum_rule(model, X, ours)


def assert_sum_rule(model, X, contributions):
    raw = model.predict(X, raw_score=True).reshape(len(X), -1)
    sums = contributions.reshape(len(X), raw.shape[1], -1).sum(axis=2)
    np.testing.assert_allclose(sums, raw, rtol=1e-9, atol=1e-12 * np.abs(contributions).sum())


def spoiled(X: np.ndarray, seed: int) -> np.ndarray:
    """X with NaN and exact zeros injected (5% each), plus values inside LightGBM's zero band."""
    rng = np.random.default_rng(seed)
    X = X.astype(np.float64, copy=True)
    X[rng.random(X.shape) < 0.05] = np.nan
    X[rng.random(X.shape) < 0.05] = 0.0
    X[rng.random(X.shape) < 0.01] = 1e-40
    return X


@pytest.mark.parametrize(
    ("loader", "params"),
    [("load_breast_cancer", {"objective": "binary"}),
     ("load_breast_cancer", {"objective": "binary", "zero_as_missing": True}),
     ("load_diabetes", {"objective": "regression"}),
     ("load_diabetes", {"objective": "huber", "use_missing": False}),
     ("load_diabetes", {"objective": "poisson"}),
     ("load_iris", {"objective": "multiclass", "num_class": 3}),
     ("load_wine", {"objective": "multiclassova", "num_class": 3})],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()),
)
def test_sklearn_datasets_match_lightgbm(loader, params):
    X, y = getattr(datasets, loader)(return_X_y=True)
    X = spoiled(X, seed=1)
    booster = lgb.train({**params, "verbose": -1, "num_leaves": 31, "min_data_in_leaf": 3, "num_threads": 1},
                        lgb.Dataset(X, y), num_boost_round=40)
    model = scoreline.load_lightgbm(booster.model_to_string())
    assert_contributions(model, booster, X)
    assert_contributions(model, booster, spoiled(X, seed=2))  # rows it was not trained on


SETTINGS = [
    {},
    {"use_missing": False},
    {"zero_as_missing": True},
    {"max_cat_to_onehot": 16},  # one-vs-rest categorical splits
    {"max_depth": 20, "num_leaves": 63, "max_bin": 15},
    {"boosting": "rf", "bagging_freq": 1, "bagging_fraction": 0.6},  # contributions are not averaged
    {"min_data_in_leaf": 1000},  # every tree a single leaf: only the expected value
]


@pytest.mark.parametrize("params", SETTINGS, ids=[str(p) for p in SETTINGS])
@pytest.mark.parametrize("objective", ["binary", "multiclass", "regression"])
def test_settings_match_lightgbm(objective, params):
    """Categorical splits (feature 4; unseen categories 12, 40, -1 and NaN in the edge rows),
    missing types and rows exactly on every threshold."""
    booster, X = train(objective, params, rounds=15)
    assert_contributions(scoreline.load_lightgbm(booster.model_to_string()), booster, edge_rows(booster, X))


def test_wide_category_sets_match_lightgbm():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(600, 3))
    X[:, 0] = rng.integers(0, 200, 600)
    y = (X[:, 0] % 7 < 3) + rng.normal(scale=0.2, size=600)
    booster = lgb.train({"objective": "regression", "verbose": -1, "num_leaves": 15, "min_data_per_group": 2,
                         "cat_smooth": 1, "max_cat_threshold": 128},
                        lgb.Dataset(X, y, categorical_feature=[0]), num_boost_round=10)
    test = X.copy()
    test[:20, 0] = [250, 1e9, -3, np.nan, 64, 63, 65, 127, 128, 199] * 2
    assert_contributions(scoreline.load_lightgbm(booster.model_to_string()), booster, test)


def test_tables_and_per_row_weights_agree():
    """Long paths compute their weights per row, short ones read a table of Shapley sums, the
    shortest also their expanded contributions: the same values every way."""
    booster, X = train("binary", {"num_leaves": 40}, rounds=10)
    model = scoreline.load_lightgbm(booster.model_to_string())
    rows = edge_rows(booster, X)
    expanded = TreeContributions(model.packed)
    sums = TreeContributions(model.packed, expanded_budget_bytes=0)
    per_row = TreeContributions(model.packed, max_table_features=0)
    assert expanded.table_bytes > sums.table_bytes > 0 and per_row.table_bytes == 0
    expected = per_row.contributions(rows)
    np.testing.assert_allclose(expected, booster.predict(rows, pred_contrib=True), rtol=RTOL, atol=1e-12)
    for tabled in (expanded, sums):
        np.testing.assert_allclose(tabled.contributions(rows), expected, rtol=1e-12, atol=1e-15)


def test_layouts_dtypes_and_pickles_agree():
    booster, X = train("multiclass", {}, rounds=8)
    model = scoreline.load_lightgbm(booster.model_to_string())
    expected = model.predict(X, pred_contrib=True)
    np.testing.assert_array_equal(model.predict(np.asfortranarray(X), pred_contrib=True), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict(X, pred_contrib=True), expected)
    X32 = X.astype(np.float32)
    np.testing.assert_allclose(model.predict(X32, pred_contrib=True), booster.predict(X32, pred_contrib=True),
                               rtol=RTOL, atol=1e-12)


def test_linear_trees_are_refused_like_lightgbm():
    booster, X = train("regression", {"linear_tree": True}, rounds=3)
    with pytest.raises(lgb.basic.LightGBMError, match="not implemented for linear trees"):
        booster.predict(X[:2], pred_contrib=True)
    model = scoreline.load_lightgbm(booster.model_to_string())
    with pytest.raises(ModelFormatError, match="linear trees"):
        model.predict(X[:2], pred_contrib=True)


def test_model_without_counts_is_refused_naming_them():
    booster, X = train("binary", {}, rounds=2)
    text = "\n".join(line for line in booster.model_to_string().splitlines() if not line.startswith("leaf_count="))
    model = scoreline.load_lightgbm(text)
    np.testing.assert_allclose(model.predict(X), booster.predict(X), rtol=1e-12)  # scoring does not need them
    with pytest.raises(ModelFormatError, match="leaf_count") as info:
        model.predict(X[:2], pred_contrib=True)
    assert info.value.path == "trees.leaf_count"


def test_linear_model_contributions_sum_to_the_margin():
    X, y = datasets.load_diabetes(return_X_y=True)
    linear_model = pytest.importorskip("sklearn.linear_model")
    estimator = linear_model.Ridge(alpha=0.5).fit(X, y)
    model = scoreline.load_linear(estimator, feature_names=[f"f{j}" for j in range(X.shape[1])])
    with pytest.raises(InputError, match="means") as info:
        model.predict(X[:2], pred_contrib=True)
    assert info.value.path == "means"
    means = X.mean(axis=0)
    contributions = model.predict(X, pred_contrib=True, means=means)
    assert contributions.shape == (len(X), X.shape[1] + 1)
    np.testing.assert_allclose(contributions[:, :-1], (X - means) * estimator.coef_, rtol=1e-12)
    np.testing.assert_allclose(contributions[:, -1], estimator.predict(means[None, :])[0], rtol=1e-12)
    assert_sum_rule(model, X, contributions)


def test_linear_model_reads_means_from_its_file(tmp_path):
    X, y = datasets.load_iris(return_X_y=True)
    linear_model = pytest.importorskip("sklearn.linear_model")
    estimator = linear_model.LogisticRegression(max_iter=500).fit(X, y)
    names = [f"f{j}" for j in range(X.shape[1])]
    model = scoreline.load_linear(estimator, feature_names=names)
    model.means = X.mean(axis=0)
    model.save(tmp_path / "m.json")
    loaded = scoreline.load_linear(tmp_path / "m.json")
    contributions = loaded.predict(X, pred_contrib=True)
    assert contributions.shape == (len(X), 3 * (X.shape[1] + 1))
    assert_sum_rule(loaded, X, contributions)
