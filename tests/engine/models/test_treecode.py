"""The per-model compiled tier (load_lightgbm(..., compile="model")) against LightGBM and the generic kernel.

Each compile costs LLVM time (a fraction of a second for these models), so the decision rules are
checked with one hand-written model holding a tree per rule (leaf values 2^-i: the raw sum spells
out every tree's side exactly), and the objectives with a few small trained models.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import scoreline
from scoreline.engine.models import treecode
from scoreline.errors import InputError

lgb = pytest.importorskip("lightgbm")

RTOL = 1e-12
# The generic kernel's edge values (thresholds, the zero band, NaN/inf, category boundaries), plus
# the last category of a four-word set.
from tests.support.lightgbm_edges import CATEGORY_VALUES as _CATEGORY_VALUES  # noqa: E402
from tests.support.lightgbm_edges import K_ZERO, THRESHOLDS, VALUES  # noqa: E402

CATEGORY_VALUES = _CATEGORY_VALUES + [127.0]
# Category sets as LightGBM's uint32 words, the last three reaching past category 63.
CATEGORY_SETS = ["5 1", "1", "4294967295", "0 2147483648", "0 0 4294967295", "0 0 0 1", "1 0 0 2147483648"]


def _tree(index: int, body: str) -> str:
    return f"Tree={index}\n{body}is_linear=0\nshrinkage=1\n\n"


def decisions_model() -> str:
    """Feature 0 numeric, feature 1 categorical: one tree per (missing type, default side,
    threshold) and per category set, right leaf 2^-i, left 0, plus a single-leaf tree."""
    trees = []
    for missing in (0, 1, 2):
        for default_left in (False, True):
            for threshold in THRESHOLDS:
                decision = (missing << 2) | (2 if default_left else 0)
                trees.append(f"num_leaves=2\nnum_cat=0\nsplit_feature=0\nthreshold={threshold!r}\n"
                             f"decision_type={decision}\nleft_child=-1\nright_child=-2\n"
                             f"leaf_value=0 {2.0 ** -len(trees)!r}\n")
    for words in CATEGORY_SETS:
        count = len(words.split())
        trees.append(f"num_leaves=2\nnum_cat=1\nsplit_feature=1\nthreshold=0\ndecision_type=1\n"
                     f"left_child=-1\nright_child=-2\nleaf_value=0 {2.0 ** -len(trees)!r}\n"
                     f"cat_boundaries=0 {count}\ncat_threshold={words}\n")
    trees.append("num_leaves=1\nnum_cat=0\nsplit_feature=\nthreshold=\ndecision_type=\nleft_child=\n"
                  "right_child=\nleaf_value=0.125\n")
    body = "".join(_tree(i, t) for i, t in enumerate(trees))
    return ("tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=1\n"
            "objective=regression\nfeature_names=f0 f1\nfeature_infos=[-10:10] 0:1:2\n\n"
            f"{body}end of trees\n\nparameters:\n[objective: regression]\nend of parameters\n\n"
            "pandas_categorical:null\n")


def decision_rows() -> np.ndarray:
    grid = np.array(np.meshgrid(VALUES, CATEGORY_VALUES)).reshape(2, -1).T
    return np.ascontiguousarray(grid)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("treecode")


def test_every_decision_rule_matches_lightgbm_bit_for_bit(cache):
    text = decisions_model()
    model = scoreline.load_lightgbm(text, compile="model", cache_dir=cache)
    assert model.tier == "model"
    booster = lgb.Booster(model_str=text)
    X = decision_rows()
    expected = booster.predict(X, raw_score=True)
    for data in (X, np.asfortranarray(X)):
        np.testing.assert_array_equal(model.predict(data), expected)
    # float32 input is compared as the double of the float32, as LightGBM and the generic kernel do.
    with np.errstate(over="ignore"):  # 1e300 and 1.7e308 become inf in float32, as they do for LightGBM
        X32 = X.astype(np.float32)
    np.testing.assert_array_equal(model.predict(X32), booster.predict(X32, raw_score=True))
    np.testing.assert_array_equal(model.predict(X32), scoreline.load_lightgbm(text, compile="generic").predict(X32))


def _data(seed: int, n: int = 600) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    X[:, 4] = rng.integers(0, 12, n)  # categorical, few categories
    X[:, 5] = rng.integers(0, 100, n)  # categorical, sets past category 63
    X[:, 3] = np.round(X[:, 3], 1)  # exact zeros and repeated values
    X[rng.random(X.shape) < 0.08] = np.nan
    X[rng.random(X.shape) < 0.05] = 0.0
    return X


def _label(objective: str, X: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    signal = np.nan_to_num(X[:, 0]) + (np.nan_to_num(X[:, 5]) % 7 == 0) + (np.nan_to_num(X[:, 4]) % 3 == 0)
    noisy = signal + rng.normal(scale=0.3, size=len(X))
    if objective == "binary":
        return (noisy > 0.5).astype(float)
    if objective == "multiclass":
        return np.digitize(noisy, [0.0, 1.0]).astype(float)
    if objective == "poisson":
        return rng.poisson(np.exp(noisy / 2)).astype(float)
    return noisy


def _edge_rows(booster, X: np.ndarray) -> np.ndarray:
    """The first rows, rows sitting on every numeric threshold (and one ulp either side), and
    special values: NaN, +-inf, zeros, +-kZeroThreshold, unseen and out-of-range categories."""
    rng = np.random.default_rng(7)
    rows = []

    def walk(node):
        if "split_index" not in node:
            return
        if node["decision_type"] == "<=":
            t = node["threshold"]
            for value in (t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf)):
                row = X[rng.integers(len(X))].copy()
                row[node["split_feature"]] = value
                rows.append(row)
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, K_ZERO, -K_ZERO, 1e-35, -1e-35, 1e-40, -0.5, 12.0, 99.0, 150.0,
                2.0**31, 1e10]
    for value in specials:
        for column in range(X.shape[1]):
            row = X[rng.integers(len(X))].copy()
            row[column] = value
            rows.append(row)
        rows.append(np.full(X.shape[1], value))
    return np.ascontiguousarray(np.vstack([X[:300], np.array(rows)]))


CASES = [
    ("binary", {}),
    ("regression", {"zero_as_missing": True}),
    ("regression", {"use_missing": False, "boosting": "rf", "bagging_fraction": 0.7, "bagging_freq": 1}),
    ("multiclass", {"num_class": 3}),
    ("poisson", {"max_cat_to_onehot": 1, "max_cat_threshold": 64}),
]


@pytest.mark.parametrize(("objective", "params"), CASES, ids=[f"{o}-{'-'.join(p) or 'plain'}" for o, p in CASES])
def test_trained_models_match_lightgbm_and_the_generic_kernel(objective, params, cache):
    X = _data(3)
    full = {"objective": objective, "num_leaves": 15, "min_data_in_leaf": 5, "min_data_per_group": 5,
            "cat_smooth": 1, "verbose": -1, "seed": 3, "num_threads": 1, **params}
    data = lgb.Dataset(X, _label(objective, X, 3), categorical_feature=[4, 5])
    booster = lgb.train(full, data, num_boost_round=10)
    text = booster.model_to_string()
    model = scoreline.load_lightgbm(text, compile="model", cache_dir=cache)
    generic = scoreline.load_lightgbm(text, compile="generic")
    assert model.tier == "model" and generic.tier == "generic"
    rows = _edge_rows(booster, X)
    for raw in (False, True):
        expected = booster.predict(rows, raw_score=raw, num_threads=1)
        ours = model.predict(rows, raw_score=raw)
        np.testing.assert_allclose(ours, expected, rtol=RTOL, atol=0)
        np.testing.assert_array_equal(ours, generic.predict(rows, raw_score=raw))
    # float32, Fortran order, and the parallel path (>= PARALLEL_MIN_ROWS rows) agree as well.
    big = np.ascontiguousarray(np.tile(rows, (max(1, 4096 // len(rows) + 1), 1)))
    with np.errstate(over="ignore"):  # 1e10 and 2^31 stay finite; the tiled specials may not
        big32 = big.astype(np.float32)
    for data32 in (big32, np.asfortranarray(big)):
        expected = generic.predict(data32, num_threads=1)
        np.testing.assert_array_equal(model.predict(data32, num_threads=2), expected)
        np.testing.assert_array_equal(model.predict(data32, num_threads=1), expected)
    np.testing.assert_array_equal(model.predict(big, num_threads=2), generic.predict(big, num_threads=1))
    np.testing.assert_array_equal(model.predict(rows[:1]), generic.predict(rows[:1]))


def test_second_load_reads_the_cached_machine_code_and_pickles(tmp_path):
    text = decisions_model()
    first = scoreline.load_lightgbm(text, compile="model", cache_dir=tmp_path)
    files = sorted(tmp_path.iterdir())
    assert [f.suffix for f in files] == [".o"]
    assert first.treecode.cached is False and first.treecode.path == files[0]
    stamp = files[0].stat().st_mtime_ns
    second = scoreline.load_lightgbm(text, compile="model", cache_dir=tmp_path)
    assert second.treecode.cached is True and second.treecode.path == files[0]
    assert files[0].stat().st_mtime_ns == stamp and sorted(tmp_path.iterdir()) == files
    X = decision_rows()
    np.testing.assert_array_equal(second.predict(X), first.predict(X))
    clone = pickle.loads(pickle.dumps(first))
    assert clone.tier == "model" and clone.treecode.cached is True
    np.testing.assert_array_equal(clone.predict(X), first.predict(X))


def test_linear_trees_and_models_over_the_auto_limit_are_not_compiled(monkeypatch, tmp_path):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 3))
    X[rng.random(X.shape) < 0.05] = np.nan
    y = 2 * np.nan_to_num(X[:, 0]) + rng.normal(scale=0.1, size=300)
    params = {"objective": "regression", "linear_tree": True, "num_leaves": 4, "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=3)
    linear = scoreline.load_lightgbm(booster.model_to_string(), compile="model", cache_dir=tmp_path)
    assert linear.tier == "generic" and linear.treecode is None
    np.testing.assert_allclose(linear.predict(X), booster.predict(X), rtol=RTOL, atol=0)

    text = decisions_model()
    auto = scoreline.load_lightgbm(text, compile="auto", cache_dir=tmp_path)
    assert auto.wait_for_tiers(timeout=120) and "model" in auto.tiers["ready"]  # compiled in the background
    monkeypatch.setattr(treecode, "MAX_AUTO_LEAVES", 10)
    over = scoreline.load_lightgbm(text, compile="auto", cache_dir=tmp_path / "over")
    assert over.tier == "generic" and "over 10 leaves" in over.tiers["excluded"]["model"]
    np.testing.assert_array_equal(over.predict(decision_rows()), lgb.Booster(model_str=text).predict(
        decision_rows(), raw_score=True))


def test_an_unknown_compile_option_is_refused_by_name():
    with pytest.raises(InputError) as info:
        scoreline.load_lightgbm(decisions_model(), compile="fast")
    assert info.value.path == "compile"
