"""The branch-free SIMD tiers (compile="simd", and "bins" where it applies) against LightGBM, bit for bit.

The decision rules are checked with one hand-written model holding a one-split tree per (missing
type, default side, threshold), right leaf 2^-i and left 0, so the raw sum spells out every tree's
side exactly; trained models cover binary, regression, multiclass, zero_as_missing and
use_missing=False and a categorical feature, float32/float64 input in C and F order, and batch
sizes around the 64-row block.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scoreline.engine.models.lightgbm import read_lightgbm
from scoreline.engine.models import simd
from scoreline.engine.models.simd import MAX_CATEGORY, TABLE, build_forest, unsupported_reason

import scoreline

lgb = pytest.importorskip("lightgbm")

from tests.support.lightgbm_edges import CATEGORY_VALUES, K_ZERO, THRESHOLDS, VALUES  # noqa: E402

BATCHES = (1, 7, 63, 64, 65, 10_000)


def _tree(index: int, body: str) -> str:
    return f"Tree={index}\n{body}is_linear=0\nshrinkage=1\n\n"


def decisions_model() -> str:
    """Feature 0 read by one tree per (missing type, default side, threshold), feature 1 by the
    same with +-inf thresholds too (at +inf only missing values can go right), and a single-leaf tree."""
    trees = []
    for feature, sides in ((0, (False, True)), (1, (True, False))):
        for missing in (0, 1, 2):
            for default_left in sides:
                for threshold in THRESHOLDS + [np.inf, -np.inf] if feature else THRESHOLDS:
                    decision = (missing << 2) | (2 if default_left else 0)
                    trees.append(f"num_leaves=2\nnum_cat=0\nsplit_feature={feature}\nthreshold={threshold!r}\n"
                                 f"decision_type={decision}\nleft_child=-1\nright_child=-2\n"
                                 f"leaf_value=0 {2.0 ** -(len(trees) % 50)!r}\n")
    trees.append("num_leaves=1\nnum_cat=0\nsplit_feature=\nthreshold=\ndecision_type=\nleft_child=\n"
                 "right_child=\nleaf_value=0.125\n")
    body = "".join(_tree(i, t) for i, t in enumerate(trees))
    return ("tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=1\n"
            "objective=regression\nfeature_names=f0 f1\nfeature_infos=[-10:10] [-10:10]\n\n"
            f"{body}end of trees\n\nparameters:\n[objective: regression]\nend of parameters\n\n"
            "pandas_categorical:null\n")


@pytest.mark.parametrize("tier", ["simd", "bins"])
def test_every_numeric_decision_rule_matches_lightgbm_bit_for_bit(tier):
    text = decisions_model()
    model = scoreline.load_lightgbm(text, compile=tier)
    generic = scoreline.load_lightgbm(text, compile="generic")
    assert model.tier == tier
    booster = lgb.Booster(model_str=text)
    grid = np.array(np.meshgrid(VALUES, VALUES)).reshape(2, -1).T
    for X in (np.ascontiguousarray(grid), np.asfortranarray(grid)):
        expected = booster.predict(X, raw_score=True, num_threads=1)
        np.testing.assert_array_equal(model.predict(X, raw_score=True), expected)
        np.testing.assert_array_equal(model.predict(X, raw_score=True), generic.predict(X, raw_score=True))
    with np.errstate(over="ignore"):
        X32 = grid.astype(np.float32)  # 1.7e308 becomes inf
    np.testing.assert_array_equal(model.predict(X32), booster.predict(X32, num_threads=1))


def _data(seed: int, n: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    X[:, 2] = rng.integers(-3, 4, n)  # many exact zeros: the zero band matters
    X[rng.random(X.shape) < 0.08] = np.nan
    X[rng.random(n) < 0.02, 3] = np.inf
    X[rng.random(n) < 0.02, 4] = K_ZERO / 2
    return X


def _label(objective: str, X: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    signal = np.nan_to_num(X[:, 0]) + 0.5 * np.nan_to_num(X[:, 2], posinf=3) - np.isnan(X[:, 1])
    if objective == "binary":
        return (signal + rng.normal(size=len(X)) > 0).astype(float)
    if objective == "multiclass":
        return np.digitize(signal, [-0.7, 0.7]).astype(float)
    return signal + 0.1 * rng.normal(size=len(X))


CASES = [
    ("binary", {}),
    ("binary", {"categorical": 40}),  # a categorical feature of 40 categories (sets within 0..63)
    ("regression", {"categorical": 150}),  # sets reaching past category 63: words selected
    ("binary", {"categorical": 700}),  # sets reaching past category 255: words gathered
    ("regression", {"num_leaves": 64, "min_data_in_leaf": 3}),
    ("multiclass", {"num_class": 3}),
    ("regression", {"zero_as_missing": True}),
    ("binary", {"use_missing": False}),
    ("regression", {"boosting": "rf", "bagging_fraction": 0.7, "bagging_freq": 1}),
    # Over 64 leaves: several words per bitvector (engine/models/simd.py).
    ("regression", {"num_leaves": 65, "min_data_in_leaf": 3}),
    ("binary", {"num_leaves": 129, "min_data_in_leaf": 3, "categorical": 40}),
    ("regression", {"num_leaves": 255, "min_data_in_leaf": 2, "categorical": 150}),
    ("regression", {"num_leaves": 128, "min_data_in_leaf": 3, "zero_as_missing": True}),
    ("multiclass", {"num_class": 3, "num_leaves": 127, "min_data_in_leaf": 3}),
    ("regression", {"boosting": "rf", "bagging_fraction": 0.7, "bagging_freq": 1, "num_leaves": 200,
                    "min_data_in_leaf": 3}),
]


CASE_IDS = [f"{o}-{'-'.join(p) or 'plain'}" for o, p in CASES]


@pytest.fixture(scope="module", params=range(len(CASES)), ids=CASE_IDS)
def trained(request):
    return _train(request.param)


@functools.cache
def _train(case: int):
    objective, params = CASES[case]
    params = dict(params)
    X = _data(5)
    y = _label(objective, X, 5)
    categories = params.pop("categorical", 0)
    if categories:
        X[:, 5] = np.where(np.isnan(X[:, 5]), np.nan, np.random.default_rng(5).integers(0, categories, len(X)))
        y = y + (np.nan_to_num(X[:, 5]) % 3 == 1)
    full = {"objective": objective, "num_leaves": 31, "min_data_in_leaf": 10, "verbose": -1, "seed": 5,
            "num_threads": 1, "min_data_per_group": 5, "cat_smooth": 1, **params}
    data = lgb.Dataset(X, y, categorical_feature=[5] if categories else "auto")
    booster = lgb.train(full, data, num_boost_round=25)
    if categories:  # category edge values: fractions, negatives, past the set, beyond int range
        X = X.copy()
        X[: len(CATEGORY_VALUES) * 40, 5] = np.tile(CATEGORY_VALUES, 40)
    return booster, X


def _edge_rows(booster, X: np.ndarray, n: int) -> np.ndarray:
    """n rows: sample rows, with values put exactly on (and one ulp around) split thresholds."""
    rng = np.random.default_rng(11)
    rows = X[rng.integers(0, len(X), n)].copy()
    dump = booster.dump_model()["tree_info"]
    splits = []

    def walk(node):
        if "split_index" in node:
            if node["decision_type"] == "<=":
                splits.append((node["split_feature"], node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in dump:
        walk(tree["tree_structure"])
    for i in range(0, n, 3):
        feature, threshold = splits[rng.integers(len(splits))]
        rows[i, feature] = (threshold, np.nextafter(threshold, np.inf), np.nextafter(threshold, -np.inf))[i % 3]
    return rows


def test_trained_models_match_lightgbm_and_the_generic_kernel_bit_for_bit(trained):
    booster, X = trained
    text = booster.model_to_string()
    model = scoreline.load_lightgbm(text, compile="simd")
    generic = scoreline.load_lightgbm(text, compile="generic")
    assert model.tier == "simd", model.tiers
    wanted = booster.params.get("num_leaves", 31)  # the wide cases do grow trees over 64 leaves
    assert wanted <= 64 or max(t["num_leaves"] for t in booster.dump_model()["tree_info"]) > 64
    rows = _edge_rows(booster, X, max(BATCHES))
    for n in BATCHES:
        part = rows[:n]
        raw = booster.predict(part, raw_score=True, num_threads=1)
        ours = model.predict(part, raw_score=True, num_threads=1)
        np.testing.assert_array_equal(ours, raw, err_msg=f"{n} rows")
        np.testing.assert_array_equal(model.predict(part), generic.predict(part), err_msg=f"{n} rows")
        np.testing.assert_allclose(model.predict(part), booster.predict(part, num_threads=1), rtol=1e-12, atol=0)
        with np.errstate(over="ignore"):  # inf stays inf; 1e300-like values become inf
            part32 = part.astype(np.float32)
        for variant in (part32, np.asfortranarray(part), np.asfortranarray(part32)):
            np.testing.assert_array_equal(model.predict_matrix(variant, raw_score=True),
                                          generic.predict_matrix(variant, raw_score=True), err_msg=f"{n} rows")
    # Threads: the parallel driver gives the same bits.
    np.testing.assert_array_equal(model.predict(rows, num_threads=2), generic.predict(rows, num_threads=1))


def test_trained_models_on_16_bit_bins_match_lightgbm_bit_for_bit(trained):
    booster, X = trained
    text = booster.model_to_string()
    model = scoreline.load_lightgbm(text, compile="bins")
    if "categorical" in model.tiers["excluded"].get("bins", ""):
        assert model.tier == "generic"  # test_simd_bins.py checks the fallback's scores
        return
    assert model.tier == "bins", model.tiers
    rows = _edge_rows(booster, X, 2_000)
    for part in (rows[:1], rows[:127], rows[:129], rows):
        np.testing.assert_array_equal(model.predict(part, raw_score=True, num_threads=1),
                                      booster.predict(part, raw_score=True, num_threads=1))
    with np.errstate(over="ignore"):
        rows32 = rows.astype(np.float32)
    np.testing.assert_array_equal(model.predict(np.asfortranarray(rows32), raw_score=True),
                                  booster.predict(rows32, raw_score=True, num_threads=1))
    np.testing.assert_allclose(model.predict(rows, num_threads=2), booster.predict(rows, num_threads=1), rtol=1e-12,
                               atol=0)


def _one_categorical_split(words: list[int]) -> str:
    """A model of one categorical split on feature 0 whose set is ``words`` (uint32)."""
    return ("tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=0\n"
            "objective=regression\nfeature_names=f0\nfeature_infos=-1:1\n\nTree=0\nnum_leaves=2\nnum_cat=1\n"
            "split_feature=0\nthreshold=0\ndecision_type=1\nleft_child=-1\nright_child=-2\nleaf_value=1 2\n"
            f"cat_boundaries=0 {len(words)}\ncat_threshold={' '.join(map(str, words))}\nis_linear=0\nshrinkage=1\n\n"
            "end of trees\n\nparameters:\n[objective: regression]\nend of parameters\n\npandas_categorical:null\n")


def test_huge_category_sets_fall_back_to_the_generic_walk():
    # Trees over MAX_LEAVES leaves: test_simd_wide.py.
    booster = lgb.Booster(model_str=_one_categorical_split([5] + [0] * ((MAX_CATEGORY + 1) // 32) + [1]))
    rows = np.array([[v] for v in CATEGORY_VALUES + [MAX_CATEGORY + 33.0, 4.0]])
    why = f"past {MAX_CATEGORY}"
    text = booster.model_to_string()
    assert why in unsupported_reason(read_lightgbm(text))
    model = scoreline.load_lightgbm(text, compile="simd")
    assert model.tier == "generic" and why in model.tiers["excluded"]["simd"]
    np.testing.assert_array_equal(model.predict(rows, raw_score=True), booster.predict(rows, raw_score=True))
    with pytest.raises(ValueError, match=why):
        build_forest(read_lightgbm(text))


def test_category_sets_past_256_gather_the_right_word():
    # Categories 300 and 1000 (uint32 words 9 and 31): a table of 17 words, read by gathers.
    words = [0] * 32
    words[9], words[31] = 1 << 12, 1 << 8
    text = _one_categorical_split(words)
    model = scoreline.load_lightgbm(text, compile="simd")
    assert model.tier == "simd"
    rows = np.array([[v] for v in CATEGORY_VALUES + [300.0, 300.5, 299.0, 301.0, 1000.0, 1023.0, 1024.0, 4095.0]])
    np.testing.assert_array_equal(model.predict(rows, raw_score=True),
                                  lgb.Booster(model_str=text).predict(rows, raw_score=True))


def test_wide_category_sets_read_the_right_word():
    # Categories 0, 2, 95 and 127 (words 0, 2 and 3 of the set), nothing past it.
    text = _one_categorical_split([5, 0, 2147483648, 2147483648])
    model = scoreline.load_lightgbm(text, compile="simd")
    assert model.tier == "simd"
    rows = np.array([[v] for v in CATEGORY_VALUES + [127.0, 127.9, 128.0, 95.0, 94.0, 2.0, 1.0, 4096.0]])
    np.testing.assert_array_equal(model.predict(rows, raw_score=True),
                                  lgb.Booster(model_str=text).predict(rows, raw_score=True))


def _table_nodes(forest) -> int:
    """How many node records of ``forest`` are category tables (the wide group of each segment)."""
    meta = forest.nodes.view(np.int64)
    segments = forest.segments
    count = 0
    for g in range(segments.shape[0] - 1):
        wide = meta[segments[g, 2]:segments[g + 1, 0], 0]
        count += int(np.count_nonzero(wide & TABLE))
    return count


CATEGORICAL = [i for i, (_, params) in enumerate(CASES) if "categorical" in params]


@pytest.mark.parametrize("case", CATEGORICAL, ids=[CASE_IDS[i] for i in CATEGORICAL])
def test_category_tables_give_the_bits_of_per_split_sets(case, monkeypatch):
    # A segment's splits on one categorical feature folded into one table per category: the same
    # bits as testing every split's set, and as LightGBM.
    booster, X = _train(case)
    text = booster.model_to_string()
    ir = read_lightgbm(text)
    assert _table_nodes(build_forest(ir)) > 0
    rows = _edge_rows(booster, X, 3_000)
    tabled = scoreline.load_lightgbm(text, compile="simd").predict(rows, raw_score=True, num_threads=1)
    monkeypatch.setattr(simd, "TABLE_FROM", 10**9)
    assert _table_nodes(build_forest(ir)) == 0
    per_split = scoreline.load_lightgbm(text, compile="simd")
    assert per_split.tier == "simd"
    np.testing.assert_array_equal(tabled, per_split.predict(rows, raw_score=True, num_threads=1))
    np.testing.assert_array_equal(tabled, booster.predict(rows, raw_score=True, num_threads=1))


def test_features_past_the_table_limit_keep_per_split_sets():
    X = _data(7)
    X[:, 5] = np.where(np.isnan(X[:, 5]), np.nan, np.random.default_rng(7).integers(0, 1_500, len(X)))
    y = X[:, 0] + (np.nan_to_num(X[:, 5]) % 7 < 3)
    params = {"objective": "regression", "num_leaves": 31, "min_data_in_leaf": 3, "min_data_per_group": 2,
              "cat_smooth": 1, "max_cat_threshold": 800, "max_cat_to_onehot": 1, "verbose": -1, "seed": 7,
              "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=[5]), num_boost_round=10)
    text = booster.model_to_string()
    forest = build_forest(read_lightgbm(text))
    assert forest.slots[:, 2].max() > simd.TABLE_MAX_CATEGORY + 1  # the feature's sets reach past the limit
    assert _table_nodes(forest) == 0
    rows = X[:2_000].copy()
    rows[: len(CATEGORY_VALUES) * 20, 5] = np.tile(CATEGORY_VALUES, 20)
    model = scoreline.load_lightgbm(text, compile="simd")
    assert model.tier == "simd"
    np.testing.assert_array_equal(model.predict(rows, raw_score=True, num_threads=1),
                                  booster.predict(rows, raw_score=True, num_threads=1))
