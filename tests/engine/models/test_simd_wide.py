"""The SIMD tier past 64 leaves (several 64-bit words per bitvector) and with tiles of trees, against LightGBM.

Hand-written trees of every size around the word boundaries (tests/support/lightgbm_shapes.py)
are checked on rows reaching each of their leaves, exactly on and one ulp around each threshold,
with every missing type; trained trees over 64 leaves (categorical, zero as missing, multiclass,
random forest) are in test_simd.py's trained cases. Tiles are forced small here, so a model a
little over one tile and batches that are not a multiple of the block run the tiled driver.
"""

from __future__ import annotations

import numpy as np
import pytest
from scoreline.engine.models import simd, simd_run
from scoreline.engine.models.lightgbm import read_lightgbm
from scoreline.engine.models.simd import MAX_LEAVES, build_forest, tile_bounds, unsupported_reason

import scoreline

lgb = pytest.importorskip("lightgbm")

from tests.support.lightgbm_shapes import shaped_model, shaped_rows  # noqa: E402

SIZES = [65, 127, 128, 129, 255, 256, 300]
MIXED = [1, 3, 31, 64, 65, 127, 128, 129, 255, 256, 300, 64, 7, 200]


@pytest.mark.parametrize("leaves", SIZES)
def test_trees_of_several_words_reach_every_leaf_like_lightgbm(leaves):
    text = shaped_model([leaves] * 3, seed=leaves)
    booster = lgb.Booster(model_str=text)
    X = shaped_rows(leaves, seed=leaves)
    assert all(np.unique(booster.predict(X, pred_leaf=True)[:, t]).size == leaves for t in range(3))
    model = scoreline.load_lightgbm(text, compile="simd")
    assert model.tier == "simd", model.tiers
    for rows in (X, np.asfortranarray(X), X[:1], X[:65]):
        np.testing.assert_array_equal(model.predict(rows, raw_score=True, num_threads=1),
                                      booster.predict(rows, raw_score=True, num_threads=1))
    np.testing.assert_array_equal(model.predict(X.astype(np.float32), num_threads=1),
                                  booster.predict(X.astype(np.float32), num_threads=1))


@pytest.mark.parametrize("num_class", [1, 2])
def test_mixed_tree_sizes_in_one_model(num_class):
    text = shaped_model(MIXED, seed=3, num_class=num_class)
    booster = lgb.Booster(model_str=text)
    X = np.tile(shaped_rows(max(MIXED), seed=4), (12, 1))  # 11k rows: the parallel driver too
    model = scoreline.load_lightgbm(text, compile="simd")
    assert model.tier == "simd"
    expected = booster.predict(X, raw_score=True, num_threads=1)
    for threads in (1, 2):
        np.testing.assert_array_equal(model.predict(X, raw_score=True, num_threads=threads), expected)
    np.testing.assert_allclose(model.predict(X), booster.predict(X, num_threads=1), rtol=1e-12, atol=0)


def test_a_wide_model_is_a_candidate_of_the_tier_choice(tmp_path):
    text = shaped_model([200, 129, 65], seed=5)
    report = scoreline.load_lightgbm(text, compile="auto", cache_dir=tmp_path).tiers
    assert "simd" in report["ns_per_row"] and "simd" not in report["excluded"], report


def test_trees_over_max_leaves_stay_on_the_other_tiers():
    text = shaped_model([3, MAX_LEAVES + 1], seed=6)
    assert "leaves" in unsupported_reason(read_lightgbm(text))
    model = scoreline.load_lightgbm(text, compile="simd")
    assert model.tier == "generic" and f"at most {MAX_LEAVES}" in model.tiers["excluded"]["simd"]
    X = shaped_rows(MAX_LEAVES + 1)
    np.testing.assert_array_equal(model.predict(X, raw_score=True), lgb.Booster(model_str=text).predict(X, raw_score=True))


def _run_tiled(forest, X, num_class, threads):
    out = np.empty((X.shape[0], num_class))
    kernel = simd_run.predict_parallel if threads > 1 else simd_run.predict_serial
    f = forest
    kernel(X, f.slots, f.nodes, f.segments, f.trees, f.leaves, f.words, f.tiles, 0.0, 0, 0.0, out)
    return out


@pytest.fixture(scope="module")
def trained_wide():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(4000, 6))
    X[:, 5] = rng.integers(0, 90, 4000)  # categorical, sets past category 63
    X[rng.random(X.shape) < 0.05] = np.nan
    X[rng.random(4000) < 0.02, 2] = np.inf
    y = np.nan_to_num(X[:, 0]) * np.nan_to_num(X[:, 1]) + (np.nan_to_num(X[:, 5]) % 4 == 1) + rng.normal(size=4000) * .1
    params = {"objective": "regression", "num_leaves": 150, "min_data_in_leaf": 3, "verbose": -1, "num_threads": 1,
              "min_data_per_group": 5, "cat_smooth": 1, "seed": 9}
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=[5]), num_boost_round=12)
    return booster, X


def test_tiles_give_the_same_bits(trained_wide):
    booster, X = trained_wide
    ir = read_lightgbm(booster.model_to_string())
    assert max(tree.num_leaves for tree in ir.trees) > 128
    whole = build_forest(ir, tile_bytes=0)
    assert whole.tiles.tolist() == [0, len(ir.trees)]
    size = int(whole.nodes.nbytes + whole.leaves.nbytes)
    block = simd_run.LANES * simd_run.TILE_BLOCKS
    for tile_bytes, count in ((size - size // 20, 2), (1, len(ir.trees))):  # just over one tile; one tree each
        forest = build_forest(ir, tile_bytes=tile_bytes)
        assert len(forest.tiles) - 1 == count and forest.tiles[0] == 0 and forest.tiles[-1] == len(ir.trees)
        for n in (1, 63, 65, block - 1, block + 1, 3 * block + 17):
            rows = X[np.arange(n) % len(X)]
            expected = booster.predict(rows, raw_score=True, num_threads=1)[:, None]
            for threads in (1, 2):
                np.testing.assert_array_equal(_run_tiled(forest, rows, 1, threads), expected, err_msg=f"{n} rows")
        np.testing.assert_array_equal(_run_tiled(forest, rows.astype(np.float32), 1, 1),
                                      _run_tiled(whole, rows.astype(np.float32), 1, 1))


def test_tiles_of_a_multiclass_model():
    text = shaped_model(MIXED, seed=8, num_class=2)
    ir = read_lightgbm(text)
    forest = build_forest(ir, tile_bytes=20_000)
    assert len(forest.tiles) > 2
    X = np.tile(shaped_rows(max(MIXED), seed=8), (3, 1))
    expected = lgb.Booster(model_str=text).predict(X, raw_score=True, num_threads=1)
    for threads in (1, 2):
        np.testing.assert_array_equal(_run_tiled(forest, X, 2, threads), expected)


def test_tile_bounds_cover_the_trees_in_order():
    forest = build_forest(read_lightgbm(shaped_model(MIXED, seed=2)), tile_bytes=0)
    for tile_bytes in (1, 5_000, 30_000, 10**9):
        bounds = tile_bounds(forest.trees, tile_bytes)
        assert bounds[0] == 0 and bounds[-1] == len(MIXED) and np.all(np.diff(bounds) > 0)
    assert tile_bounds(forest.trees, 10**9).tolist() == [0, len(MIXED)]
    assert simd.default_tile_bytes() > 0


def test_large_forests_are_tiled_by_default():
    text = shaped_model([255] * 300 + [40] * 10, seed=10)  # about 2.5 MB of nodes and leaves
    forest = build_forest(read_lightgbm(text))
    size = forest.nodes.nbytes + forest.leaves.nbytes
    assert (len(forest.tiles) > 2) == (size > simd.TILED_FROM * simd.default_tile_bytes())
    assert len(build_forest(read_lightgbm(shaped_model([255] * 3))).tiles) == 2
    model = scoreline.load_lightgbm(text, compile="simd")
    X = np.tile(shaped_rows(255, seed=10), (6, 1))  # 4.8k rows: parallel tasks too
    booster = lgb.Booster(model_str=text)
    for threads in (1, 2):
        np.testing.assert_array_equal(model.predict(X, raw_score=True, num_threads=threads),
                                      booster.predict(X, raw_score=True, num_threads=1))
