"""The generic tier's buffered walk (models with categorical splits) against LightGBM, to the bit."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

import scoreline
from scoreline.engine.models.packing import buffered_layout
from scoreline.kernels.rules import K_ZERO

SPECIALS = (np.nan, np.inf, -np.inf, 0.0, -0.0, K_ZERO, -K_ZERO, 1e-40, -1.0, -0.5, -1.5, 0.5, 2.9, 31.0, 32.0,
            63.0, 64.0, 65.0, 95.0, 96.0, 150.0, 199.0, 200.0, 1e3, 2.0**31 - 1, 2.0**31, 2.0**40, 1e300)


def _train(seed: int, num_features: int, cardinalities: tuple[int, ...], params: dict, rounds: int = 15):
    """A binary model whose last len(cardinalities) features are categorical (``missing``: False
    trains on nonnegative rows without NaN, so no numeric split sends NaN right)."""
    missing = params.pop("missing", True)
    rng = np.random.default_rng(seed)
    n = 3000
    X = rng.normal(size=(n, num_features))
    if not missing:
        X = np.abs(X)  # no NaN and thresholds >= 0: NaN, read as 0.0, goes left everywhere
    cats = list(range(num_features - len(cardinalities), num_features))
    signal = X[:, 0] + np.sin(X[:, 1] * 2)
    for c, size in zip(cats, cardinalities, strict=True):
        X[:, c] = rng.integers(0, size, size=n)
        signal += rng.normal(size=size)[X[:, c].astype(int)]
    if missing:
        X[rng.random(X.shape) < 0.05] = np.nan
    X[rng.random(X.shape) < 0.03] = 0.0
    y = (signal + rng.normal(scale=0.5, size=n) > np.median(signal)).astype(float)
    full = {"objective": "binary", "num_leaves": 31, "min_data_in_leaf": 5, "min_data_per_group": 5,
            "cat_smooth": 1, "max_cat_to_onehot": 4, "verbose": -1, "seed": seed, "deterministic": True,
            "num_threads": 1, **params}
    booster = lgb.train(full, lgb.Dataset(X, y, categorical_feature=cats), num_boost_round=rounds)
    return booster, X


def _rows(X: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n rows drawn from X with a quarter of the values replaced by special values."""
    rng = np.random.default_rng(seed)
    rows = X[rng.integers(0, len(X), size=n)].copy()
    mask = rng.random(rows.shape) < 0.25
    rows[mask] = rng.choice(np.array(SPECIALS), size=mask.sum())
    return rows


def _assert_same(model, booster, X):
    for raw in (False, True):
        ours = model.predict(X, raw_score=raw, num_threads=1)
        np.testing.assert_array_equal(ours, booster.predict(X, raw_score=raw, num_threads=1), err_msg=f"raw={raw}")


MODELS = {
    "narrow-sets": (8, (5, 20, 60), {}),
    "wide-sets": (8, (150, 300, 7), {}),
    "nan-right": (6, (120, 12), {"use_missing": True}),
    "zero-as-missing": (6, (90, 10), {"zero_as_missing": True}),
    "wide-rows": (400, (100, 9), {"feature_fraction": 0.5}),
    "no-missing": (8, (100, 30), {"missing": False}),
}


@pytest.fixture(scope="module", params=list(MODELS), ids=list(MODELS))
def trained(request):
    num_features, cards, params = MODELS[request.param]
    booster, X = _train(len(request.param), num_features, cards, dict(params))
    model = scoreline.load_lightgbm(booster.model_to_string(), compile="generic")
    return booster, model, X


def test_models_with_categorical_splits_take_the_buffered_walk(trained):
    _, model, _ = trained
    layout = buffered_layout(model.packed)
    assert layout is not None
    assert layout.cat_bits[0] == 0 and layout.categorical.any()


def test_the_nan_test_is_dropped_only_where_no_split_sends_nan_right():
    booster, _ = _train(1, 6, (100, 9), {"missing": False})
    assert not buffered_layout(scoreline.load_lightgbm(booster.model_to_string(), compile="generic").packed).nan_right
    booster, _ = _train(2, 6, (100, 9), {"use_missing": True})
    assert buffered_layout(scoreline.load_lightgbm(booster.model_to_string(), compile="generic").packed).nan_right


@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 64, 65, 130, 1000])
def test_buffered_walk_matches_lightgbm(trained, n):
    booster, model, X = trained
    _assert_same(model, booster, _rows(X, n, seed=n))


def test_every_special_value_in_every_column(trained):
    booster, model, X = trained
    rows = [np.full(X.shape[1], value) for value in SPECIALS]
    rng = np.random.default_rng(1)
    for value in SPECIALS:
        for column in range(X.shape[1] - 3, X.shape[1]):
            row = X[rng.integers(len(X))].copy()
            row[column] = value
            rows.append(row)
    _assert_same(model, booster, np.array(rows))


def test_float32_fortran_order_and_threads(trained):
    booster, model, X = trained
    rows = _rows(X, 5000, seed=5)
    expected = booster.predict(rows, num_threads=1)
    np.testing.assert_array_equal(model.predict(np.asfortranarray(rows), num_threads=1), expected)
    np.testing.assert_array_equal(model.predict(rows, num_threads=2), expected)
    with np.errstate(over="ignore"):
        small = rows.astype(np.float32)  # 1e300 and 2^40-ish values become inf: still rows to score
    np.testing.assert_array_equal(model.predict(small, num_threads=1),
                                  booster.predict(small.astype(np.float64), num_threads=1))


def test_numeric_models_keep_the_plain_walk():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 5))
    booster = lgb.train({"objective": "regression", "verbose": -1, "num_leaves": 7}, lgb.Dataset(X, X[:, 0]),
                        num_boost_round=3)
    assert buffered_layout(scoreline.load_lightgbm(booster.model_to_string(), compile="generic").packed) is None
