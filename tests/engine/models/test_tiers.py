"""Kernel choice at load (engine/models/tiers.py): measured per batch size, exact candidates only, cached, pinnable."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
from scoreline.engine.models import tiers

import scoreline
from scoreline.errors import InputError

lgb = pytest.importorskip("lightgbm")


@pytest.fixture(scope="module")
def booster():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(2000, 5))
    X[rng.random(X.shape) < 0.05] = np.nan
    y = np.nan_to_num(X[:, 0]) - np.nan_to_num(X[:, 1]) ** 2 + rng.normal(scale=0.1, size=2000)
    return lgb.train({"objective": "regression", "num_leaves": 31, "verbose": -1, "num_threads": 1},
                     lgb.Dataset(X, y), num_boost_round=30), X


def test_default_load_measures_the_exact_tiers_and_caches_the_choice(booster, tmp_path):
    model_booster, X = booster
    text = model_booster.model_to_string()
    model = scoreline.load_lightgbm(text, cache_dir=tmp_path)
    report = model.tiers
    assert report["source"] == "measured" and set(report["ns_per_row"]) >= {"generic", "simd", "bins"}
    assert set(report["by_batch_rows"]) == {str(size) for size in tiers.BATCH_SIZES}
    assert report["tier"] == model.tier == report["by_batch_rows"][str(tiers.BATCH_SIZES[-1])]
    assert model.wait_for_tiers(timeout=120) and model.tiers["ready"] == ["bins", "generic", "model", "simd"]
    for n in (1, 7, 64, 65, 3000):  # whichever tier serves each size, LightGBM's bits
        rows = X[:n]
        np.testing.assert_array_equal(model.predict(rows, raw_score=True), model_booster.predict(rows, raw_score=True))
    again = scoreline.load_lightgbm(text, cache_dir=tmp_path)
    assert again.tiers["source"] == "cached" and again.tiers["by_batch_rows"] == model.tiers["by_batch_rows"]
    clone = pickle.loads(pickle.dumps(model))
    assert clone.tiers["source"] == "cached" and clone.tier == model.tier
    np.testing.assert_array_equal(clone.predict(X), model.predict(X))


@pytest.mark.parametrize("pinned", ["generic", "simd", "bins", "model"])
def test_a_pinned_tier_serves_every_batch(booster, tmp_path, pinned):
    model_booster, X = booster
    model = scoreline.load_lightgbm(model_booster.model_to_string(), compile=pinned, cache_dir=tmp_path)
    assert model.tier == pinned and model.tiers["source"] == "pinned"
    assert set(model.tiers["by_batch_rows"].values()) == {pinned}
    np.testing.assert_array_equal(model.predict(X, raw_score=True), model_booster.predict(X, raw_score=True))


def test_sample_rows_are_checked_by_shape(booster, tmp_path):
    model_booster, X = booster
    text = model_booster.model_to_string()
    model = scoreline.load_lightgbm(text, compile="generic", sample_rows=X[:50], cache_dir=tmp_path)
    assert model.tier == "generic"
    with pytest.raises(InputError) as info:
        scoreline.load_lightgbm(text, sample_rows=X[:, :3], cache_dir=tmp_path)
    assert info.value.path == "sample_rows"


def test_measure_ranks_by_speed_per_batch_size_and_excludes_inexact_candidates():
    X = np.zeros((tiers.BATCH_SIZES[-1], 2))

    def slow_per_call(rows, out):  # a fixed cost per call: loses on single rows, wins on big batches
        time.sleep(0.0005)
        out[:] = 1.0

    def slow_per_row(rows, out):
        time.sleep(2e-6 * rows.shape[0])
        out[:] = 1.0

    def wrong(rows, out):
        out[:] = np.nextafter(1.0, 2.0)

    out = np.empty((X.shape[0], 1))
    choice = tiers.measure({"generic": slow_per_row, "simd": slow_per_call, "model": wrong}, X, out)
    assert "model" in choice.excluded and "model" not in choice.ns_per_row
    ready = frozenset({"generic", "simd", "bins", "model"})
    assert choice.best(1, ready) == "generic" and choice.best(tiers.BATCH_SIZES[-1], ready) == "simd"
    assert tiers.TierChoice.from_json(choice.to_json()).rankings == choice.rankings
