"""Freshly trained LightGBM models vs scoreline: raw, transformed and leaf indices compared apart."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import scoreline
from scoreline.engine.models.model import LightGBMModel

lgb = pytest.importorskip("lightgbm")

RTOL = 1e-12
K_ZERO = float(np.float32(1e-35))
NUM_FEATURES = 6
CATEGORICAL = 4  # feature holding integer categories 0..11


def make_data(seed: int, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, NUM_FEATURES))
    X[:, CATEGORICAL] = rng.integers(0, 12, n)
    X[:, 5] = np.round(X[:, 5], 1)  # many exact zeros and repeated values
    X[rng.random((n, NUM_FEATURES)) < 0.08] = np.nan
    X[rng.random((n, NUM_FEATURES)) < 0.08] = 0.0
    return X


def make_label(objective: str, X: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    signal = np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) * (np.nan_to_num(X[:, CATEGORICAL]) % 3 == 0)
    noisy = signal + rng.normal(scale=0.3, size=len(X))
    if objective in ("binary", "cross_entropy"):
        return (noisy > 0).astype(float)
    if objective == "cross_entropy_lambda":
        return 1 / (1 + np.exp(-noisy))
    if objective in ("multiclass", "multiclassova"):
        return np.digitize(noisy, [-0.5, 0.5]).astype(float)
    if objective in ("poisson", "tweedie"):
        return rng.poisson(np.exp(noisy / 2)).astype(float)
    if objective == "gamma":
        return np.exp(noisy / 2) + 0.01
    if objective in ("lambdarank", "rank_xendcg"):
        return np.digitize(noisy, [-1, 0, 1]).astype(float)
    if objective == "mape":
        return noisy + 5.0
    return noisy


def train(objective: str, params: dict | None = None, seed: int = 0, rounds: int = 12, n: int = 400):
    X = make_data(seed, n)
    y = make_label(objective, X, seed)
    full = {"objective": objective, "num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1, "seed": seed,
            "num_threads": 1, **(params or {})}
    if objective in ("multiclass", "multiclassova"):
        full["num_class"] = 3
    data = lgb.Dataset(X, y, categorical_feature=[CATEGORICAL] if full.pop("categorical", True) else "auto")
    if objective in ("lambdarank", "rank_xendcg"):
        data.set_group([20] * (n // 20))
    return lgb.train(full, data, num_boost_round=rounds), X


def edge_rows(booster, X: np.ndarray) -> np.ndarray:
    """Rows sitting exactly on every threshold (and one ulp either side), plus special values."""
    rng = np.random.default_rng(7)
    dump = booster.dump_model()["tree_info"]
    rows = []

    def walk(node):
        if "split_index" not in node:
            return
        if node["decision_type"] == "<=":
            for value in (node["threshold"], np.nextafter(node["threshold"], np.inf),
                          np.nextafter(node["threshold"], -np.inf)):
                row = X[rng.integers(len(X))].copy()
                row[node["split_feature"]] = value
                rows.append(row)
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in dump[:40]:
        walk(tree["tree_structure"])
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, K_ZERO, -K_ZERO, 1e-40, -1.0, -0.5, 12.0, 40.0, 1e10, 2.0**31]
    for value in specials:
        row = X[rng.integers(len(X))].copy()
        row[rng.integers(NUM_FEATURES)] = value
        rows.append(row)
        rows.append(np.full(NUM_FEATURES, value))
    return np.vstack([X[:200], np.array(rows)])


def assert_same(model, booster, X):
    for raw in (False, True):
        ours = model.predict(X, raw_score=raw)
        theirs = booster.predict(X, raw_score=raw, num_threads=1)
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=0, err_msg=f"raw_score={raw}")
    np.testing.assert_array_equal(model.predict(X, pred_leaf=True), booster.predict(X, pred_leaf=True))


OBJECTIVES = [
    ("regression", {}),
    ("regression", {"reg_sqrt": True}),
    ("regression_l1", {}),
    ("huber", {}),
    ("fair", {}),
    ("quantile", {"alpha": 0.7}),
    ("mape", {}),
    ("binary", {}),
    ("binary", {"sigmoid": 0.7}),
    ("cross_entropy", {}),
    ("cross_entropy_lambda", {}),
    ("multiclass", {}),
    ("multiclassova", {"sigmoid": 1.3}),
    ("poisson", {}),
    ("gamma", {}),
    ("tweedie", {"tweedie_variance_power": 1.3}),
    ("lambdarank", {}),
    ("rank_xendcg", {}),
]


@pytest.mark.parametrize(("objective", "params"), OBJECTIVES, ids=[f"{o}-{p}" for o, p in OBJECTIVES])
def test_objectives_match_lightgbm(objective, params):
    booster, X = train(objective, params)
    assert_same(scoreline.load_lightgbm(booster.model_to_string()), booster, edge_rows(booster, X))


SETTINGS = [
    {"use_missing": False},
    {"zero_as_missing": True},
    {"use_missing": False, "zero_as_missing": True},
    {"categorical": False},
    {"max_cat_to_onehot": 16},  # one-vs-rest categorical splits
    {"linear_tree": True},
    {"linear_tree": True, "use_missing": False, "categorical": False},
    {"boosting": "rf", "bagging_freq": 1, "bagging_fraction": 0.6},
    {"boosting": "dart"},
    {"num_leaves": 63, "max_bin": 15},
    {"min_data_in_leaf": 1000},  # every tree a single leaf
]


@pytest.mark.parametrize("params", SETTINGS, ids=[str(p) for p in SETTINGS])
@pytest.mark.parametrize("objective", ["binary", "multiclass"])
def test_settings_match_lightgbm(objective, params):
    booster, X = train(objective, params)
    assert_same(scoreline.load_lightgbm(booster.model_to_string()), booster, edge_rows(booster, X))


@settings(max_examples=12)
@given(
    objective=st.sampled_from(["regression", "binary", "multiclass", "poisson", "cross_entropy"]),
    use_missing=st.booleans(),
    zero_as_missing=st.booleans(),
    categorical=st.booleans(),
    linear_tree=st.booleans(),
    num_leaves=st.integers(2, 40),
    seed=st.integers(0, 2**16),
)
def test_drawn_models_match_lightgbm(objective, use_missing, zero_as_missing, categorical, linear_tree, num_leaves,
                                     seed):
    params = {"use_missing": use_missing, "zero_as_missing": zero_as_missing, "categorical": categorical,
              "linear_tree": linear_tree and not zero_as_missing, "num_leaves": num_leaves}
    booster, X = train(objective, params, seed=seed, rounds=5, n=300)
    assert_same(scoreline.load_lightgbm(booster.model_to_string()), booster, edge_rows(booster, X))


@pytest.fixture(scope="module")
def categorical_binary():
    booster, X = train("binary", {"zero_as_missing": False, "num_leaves": 31}, seed=3, rounds=20)
    return booster, scoreline.load_lightgbm(booster.model_to_string()), X


def _thresholds(booster) -> list[float]:
    found = []
    for line in booster.model_to_string().splitlines():
        if line.startswith("threshold="):
            found.extend(float(v) for v in line.split("=")[1].split())
    return found


VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, K_ZERO, -K_ZERO, np.nan, np.inf, -np.inf]),
    st.integers(-3, 40).map(float),  # categories, seen and unseen
)


@given(data=st.data())
def test_drawn_rows_match_lightgbm(categorical_binary, data):
    booster, model, _ = categorical_binary
    values = VALUES | st.sampled_from(_thresholds(booster))
    X = data.draw(arrays(np.float64, st.tuples(st.integers(1, 20), st.just(NUM_FEATURES)), elements=values))
    assert_same(model, booster, X)


@given(data=st.data())
def test_drawn_float32_rows_match_lightgbm(categorical_binary, data):
    booster, model, _ = categorical_binary
    X = data.draw(arrays(np.float32, st.tuples(st.integers(1, 20), st.just(NUM_FEATURES)),
                         elements=st.floats(width=32, allow_nan=True, allow_infinity=True) | st.integers(-2, 20)))
    assert_same(model, booster, X)


def test_layouts_threads_and_readonly_arrays_agree(categorical_binary):
    booster, model, _ = categorical_binary
    X = make_data(11, 5000)  # above the parallel threshold
    expected = booster.predict(X, num_threads=1)
    np.testing.assert_allclose(model.predict(X), expected, rtol=RTOL, atol=0)
    np.testing.assert_allclose(model.predict(X, num_threads=1), expected, rtol=RTOL, atol=0)
    np.testing.assert_allclose(model.predict(np.asfortranarray(X)), expected, rtol=RTOL, atol=0)
    # Arrays that arrive read-only (Ray workers, memory maps) score the same.
    packed = pickle.loads(pickle.dumps(model)).packed.readonly()
    frozen = LightGBMModel(packed, feature_names=model.feature_names, objective=model.objective,
                           categories=model.categories)
    np.testing.assert_allclose(frozen.predict(X), expected, rtol=RTOL, atol=0)
    np.testing.assert_array_equal(frozen.predict(X[:50], pred_leaf=True), booster.predict(X[:50], pred_leaf=True))
    X.flags.writeable = False
    np.testing.assert_allclose(frozen.predict(X[:3], num_threads=1), expected[:3], rtol=RTOL, atol=0)


def test_kernels_never_write_model_arrays(categorical_binary):
    _, model, X = categorical_binary
    before = {name: getattr(model.packed, name).copy() for name in ("nodes", "leaf_value", "trees", "cat_bits")}
    model.predict(X)
    model.predict(X[:5], raw_score=True)
    model.predict(X[:5], pred_leaf=True)
    for name, array in before.items():
        np.testing.assert_array_equal(getattr(model.packed, name), array, err_msg=name)


def test_predict_matrix_writes_into_out(categorical_binary):
    booster, model, X = categorical_binary
    out = np.full(len(X), -1.0)
    assert model.predict_matrix(X, out=out) is out
    np.testing.assert_allclose(out, booster.predict(X, num_threads=1), rtol=RTOL, atol=0)


@pytest.mark.parametrize(
    ("loader", "objective"),
    [("load_breast_cancer", "binary"), ("load_diabetes", "regression"), ("load_iris", "multiclass"),
     ("load_wine", "multiclassova")],
)
def test_sklearn_datasets_match_lightgbm(loader, objective):
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = getattr(datasets, loader)(return_X_y=True)
    params = {"objective": objective, "verbose": -1, "num_leaves": 31, "min_data_in_leaf": 3}
    if objective.startswith("multiclass"):
        params["num_class"] = 3
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=30)
    assert_same(scoreline.load_lightgbm(booster.model_to_string()), booster, X)
