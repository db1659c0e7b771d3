"""The SIMD tier on 16-bit bins (compile="bins", engine/models/simd_bins.py) against LightGBM, bit for bit.

Hand-written trees of every size around the 16-leaf words (tests/support/lightgbm_shapes.py) are
checked on rows reaching each of their leaves, exactly on and one ulp around each threshold, with
every missing type; test_simd.py runs the decision-rule model and the trained models (zero as
missing, use_missing=False, multiclass, random forest, wide trees) on this tier too. Tiles are
forced small here, and batches that are not a multiple of the 128-row block run every driver.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scoreline.engine.models import simd_bins, simd_bins_run, simd_run
from scoreline.engine.models.lightgbm import read_lightgbm
from scoreline.engine.models.simd_bins import WORD, build_binned, unsupported_reason

import scoreline

lgb = pytest.importorskip("lightgbm")

from tests.support.lightgbm_shapes import shaped_model, shaped_rows  # noqa: E402

SIZES = [2, 15, 16, 17, 31, 32, 33, 64, 65, 300]
MIXED = [1, 3, 15, 16, 17, 31, 33, 48, 49, 64, 65, 129, 7, 200]


def _same(model, booster, X, threads=(1, 2)):
    expected = booster.predict(X, raw_score=True, num_threads=1)
    for n in threads:
        got = model.predict(X, raw_score=True, num_threads=n)
        bad = np.flatnonzero(got.reshape(-1).view(np.int64) != expected.reshape(-1).view(np.int64))
        assert bad.size == 0, f"{bad.size} differ ({n} threads), first {bad[0]}: {got.flat[bad[0]]} vs {expected.flat[bad[0]]}"


@pytest.mark.parametrize("leaves", SIZES)
def test_trees_around_the_16_leaf_words_reach_every_leaf_like_lightgbm(leaves):
    text = shaped_model([leaves] * 3, seed=leaves)
    booster = lgb.Booster(model_str=text)
    X = shaped_rows(leaves, seed=leaves)
    assert all(np.unique(booster.predict(X, pred_leaf=True)[:, t]).size == leaves for t in range(3))
    model = scoreline.load_lightgbm(text, compile="bins")
    assert model.tier == "bins", model.tiers
    for rows in (X, np.asfortranarray(X), X[:1], X[:127], X[:129]):
        _same(model, booster, rows, threads=(1,))
    np.testing.assert_array_equal(model.predict(X.astype(np.float32), num_threads=1),
                                  booster.predict(X.astype(np.float32), num_threads=1))


@pytest.mark.parametrize("num_class", [1, 2])
def test_mixed_tree_sizes_and_classes(num_class):
    text = shaped_model(MIXED, seed=3, num_class=num_class)
    booster = lgb.Booster(model_str=text)
    X = np.tile(shaped_rows(max(MIXED), seed=4), (12, 1))  # 9k rows: the parallel driver too
    model = scoreline.load_lightgbm(text, compile="bins")
    assert model.tier == "bins"
    _same(model, booster, X)
    np.testing.assert_allclose(model.predict(X), booster.predict(X, num_threads=1), rtol=1e-12, atol=0)
    clone = pickle.loads(pickle.dumps(model))
    assert clone.tier == "bins"
    _same(clone, booster, X[:300], threads=(1,))


def test_slots_binned_by_counting_and_by_search_agree_with_lightgbm():
    # Slots of up to COUNT_MAX thresholds are binned by counting, larger ones by the vector binary
    # search: one-tree models whose slots fall on both sides of that line, near it.
    seen = set()
    for leaves in range(96, 200, 6):
        text = shaped_model([leaves], seed=leaves)
        seen.update(build_binned(read_lightgbm(text), simd_bins_run.LANES).slots[:, 3].tolist())
        booster = lgb.Booster(model_str=text)
        X = shaped_rows(leaves, seed=leaves)
        model = scoreline.load_lightgbm(text, compile="bins")
        assert model.tier == "bins"
        for rows in (X, X[:1], X[:65], X[:129]):
            _same(model, booster, rows, threads=(1,))
    line = simd_bins_run.COUNT_MAX
    assert seen & set(range(line - 8, line + 1)) and seen & set(range(line + 1, line + 9)), sorted(seen)


def test_every_node_has_its_bin_and_word():
    text = shaped_model([40, 1, 17], seed=12)
    ir = read_lightgbm(text)
    forest = build_binned(ir, simd_bins_run.LANES)
    # Per tree: one segment per 16-leaf word; a node of a word covers leaves of that word only.
    assert (np.diff(forest.trees[:, 0]) == [3, 1, 2]).all()
    spans = forest.nodes & 0xFFFF
    assert (spans > 0).all() and (spans < 1 << WORD).all()
    bins = (forest.nodes >> 16) & 0xFFFF
    slots = forest.nodes >> 32
    assert (slots % simd_bins_run.LANES == 0).all()
    for record_bin, slot in zip(bins, slots // simd_bins_run.LANES):
        first, count = forest.slots[slot, 2], forest.slots[slot, 3]
        assert 0 <= record_bin < count
        assert np.all(np.diff(forest.bounds[first:first + count]) > 0)


def test_tiles_give_the_same_bits():
    text = shaped_model(MIXED, seed=8, num_class=2)
    ir = read_lightgbm(text)
    booster = lgb.Booster(model_str=text)
    whole = build_binned(ir, simd_bins_run.LANES, tile_bytes=0)
    assert whole.tiles.tolist() == [0, len(ir.trees)]
    block = simd_bins_run.LANES * simd_run.TILE_BLOCKS  # the blocks group_blocks scores together
    X = np.tile(shaped_rows(max(MIXED), seed=8), (6, 1))
    for tile_bytes in (4_000, 1):
        forest = build_binned(ir, simd_bins_run.LANES, tile_bytes=tile_bytes)
        assert len(forest.tiles) > 3 and forest.tiles[-1] == len(ir.trees)
        for n in (1, 127, 129, block - 1, block + 1, len(X)):
            rows = X[:n]
            expected = booster.predict(rows, raw_score=True, num_threads=1)
            for threads in (1, 2):
                out = np.empty((n, 2))
                kernel = simd_bins_run.predict_parallel if threads > 1 else simd_bins_run.predict_serial
                f = forest
                kernel(rows, f.slots, f.bounds, f.nodes, f.segments, f.trees, f.leaves, f.tiles, 0.0, 0, 0.0, out)
                np.testing.assert_array_equal(out, expected, err_msg=f"{n} rows, {threads} threads, {tile_bytes}")


def test_categorical_models_stay_on_the_other_tiers():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 3))
    X[:, 2] = rng.integers(0, 10, 500)
    y = X[:, 0] + (X[:, 2] % 2)
    booster = lgb.train({"objective": "regression", "verbose": -1, "min_data_per_group": 5, "cat_smooth": 1,
                         "num_threads": 1}, lgb.Dataset(X, y, categorical_feature=[2]), num_boost_round=5)
    text = booster.model_to_string()
    assert "categorical splits" in unsupported_reason(read_lightgbm(text))
    model = scoreline.load_lightgbm(text, compile="bins")
    assert model.tier == "generic" and "categorical" in model.tiers["excluded"]["bins"]
    np.testing.assert_array_equal(model.predict(X, raw_score=True), booster.predict(X, raw_score=True))
    with pytest.raises(ValueError, match="categorical splits"):
        build_binned(read_lightgbm(text), simd_bins_run.LANES)


def test_slots_with_too_many_thresholds_stay_on_the_other_tiers(monkeypatch):
    text = shaped_model([31, 31], seed=2)
    monkeypatch.setattr(simd_bins, "MAX_BINS", 4)
    assert "distinct thresholds on feature" in unsupported_reason(read_lightgbm(text))
    model = scoreline.load_lightgbm(text, compile="bins")
    assert model.tier == "generic" and "at most 3" in model.tiers["excluded"]["bins"]


def test_the_binned_tier_is_a_candidate_of_the_choice(tmp_path):
    text = shaped_model([31] * 20, seed=5)
    report = scoreline.load_lightgbm(text, compile="auto", cache_dir=tmp_path).tiers
    assert {"bins", "simd", "generic"} <= set(report["ns_per_row"]), report
    assert all(report["ns_per_row"]["bins"][size] > 0 for size in report["ns_per_row"]["bins"])
