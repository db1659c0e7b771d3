"""The SIMD tier's other block width, run on this CPU: 64 lanes where it has AVX2 only, 32 where it
has AVX-512.

The width is chosen from the CPU when simd_run is imported, so one machine only ever runs one of
the two widths' drivers and forest loop. SCORELINE_SIMD_LANES forces the other (LLVM lowers the
same vector IR to whatever registers the CPU has), in a child process with a Numba cache of its
own (the width is a compile-time constant that Numba's cache does not key on). The child scores
trees around the word boundaries (1-300 leaves, one and two classes), with and without tiles of
trees, categorical splits read through category tables and as sets, by select (150 categories)
and by gather (700), and the binned tier (engine/models/simd_bins_run.py, whose vectors follow the
width: 32 or 16 rows of 16 bits), on 1 and 2 threads, and compares every score with LightGBM's to
the bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightgbm")

ROOT = Path(__file__).resolve().parents[3]

CHILD = r"""
import sys

import lightgbm as lgb
import numpy as np

import scoreline
from scoreline.engine.models import simd, simd_bins_run, simd_run
from tests.support.lightgbm_edges import CATEGORY_VALUES
from tests.support.lightgbm_shapes import shaped_model, shaped_rows

assert simd_run.LANES == int(sys.argv[1]), simd_run.LANES


def same(model, booster, X):
    for threads in (1, 2):
        got = model.predict(X, raw_score=True, num_threads=threads)
        want = booster.predict(X, raw_score=True, num_threads=1)
        bad = np.flatnonzero(got.reshape(len(X), -1).astype(np.float64).view(np.int64)
                             != want.reshape(len(X), -1).view(np.int64))
        assert bad.size == 0, f"{bad.size} values differ, first at {bad[0]}: {got.flat[bad[0]]} vs {want.flat[bad[0]]}"


leaves = [1, 3, 31, 64, 65, 127, 128, 129, 255, 256, 300, 7]
X = np.tile(shaped_rows(max(leaves), seed=4), (6, 1))  # 5.6k rows: partial blocks, the parallel driver
for tile_bytes in (None, 8192):  # the default (one tile here) and tiles of a few trees each
    simd.default_tile_bytes = (lambda: 8192) if tile_bytes else simd.default_tile_bytes
    for num_class in (1, 2):
        text = shaped_model(leaves, seed=3, num_class=num_class)
        model = scoreline.load_lightgbm(text, compile="simd")
        assert model.tier == "simd", model.tiers
        same(model, lgb.Booster(model_str=text), X)

rng = np.random.default_rng(7)
X = rng.normal(size=(4000, 6))
X[:, 4] = rng.integers(0, 150, len(X))  # sets within 0..255: words selected
X[:, 5] = rng.integers(0, 700, len(X))  # sets past 255: words gathered
X[rng.random(X.shape) < 0.05] = np.nan
y = (X[:, 0] > 0) ^ (np.nan_to_num(X[:, 4]) % 3 == 1) ^ (np.nan_to_num(X[:, 5]) % 5 == 2)
booster = lgb.train({"objective": "binary", "num_leaves": 96, "min_data_in_leaf": 3, "min_data_per_group": 3,
                     "cat_smooth": 1, "max_cat_threshold": 256, "verbose": -1, "seed": 7, "num_threads": 1},
                    lgb.Dataset(X, y, categorical_feature=[4, 5]), num_boost_round=20)
edges = np.array(CATEGORY_VALUES + [149.0, 150.0, 255.0, 256.0, 699.0, 700.0, 4095.0])
X[: edges.size * 10, 4] = np.tile(edges, 10)
X[: edges.size * 10, 5] = np.roll(np.tile(edges, 10), 3)
model = scoreline.load_lightgbm(booster.model_to_string(), compile="simd")
assert model.tier == "simd", model.tiers
same(model, booster, X)
tables_from = simd.TABLE_FROM
simd.TABLE_FROM = 10**9  # every split tests its own set: the select and gather paths
model = scoreline.load_lightgbm(booster.model_to_string(), compile="simd")
assert model.tier == "simd", model.tiers
same(model, booster, X)
simd.TABLE_FROM = tables_from

# The binned tier's vectors follow the width: 32 rows of 16 bits at 64 lanes, 16 at 32.
assert simd_bins_run._R == simd_run.LANES // 2, simd_bins_run._R
leaves = [1, 2, 15, 16, 17, 31, 33, 64, 65, 129, 7]
X = np.tile(shaped_rows(max(leaves), seed=5), (8, 1))
for tile_bytes in (None, 256):  # past TILED_FROM tiles of 256 bytes: tiled
    simd.default_tile_bytes = (lambda: 256) if tile_bytes else simd.default_tile_bytes
    text = shaped_model(leaves, seed=6, num_class=1)
    model = scoreline.load_lightgbm(text, compile="bins")
    assert model.tier == "bins", model.tiers
    assert (len(model._bins.tiles) > 2) == bool(tile_bytes), model._bins.tiles
    same(model, lgb.Booster(model_str=text), X)
print("ok", simd_run.LANES)
"""


def test_the_other_block_width_scores_like_lightgbm(tmp_path):
    from scoreline.engine.models import simd_run

    other = 64 if simd_run.LANES == 32 else 32
    env = {**os.environ, "SCORELINE_SIMD_LANES": str(other), "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", CHILD, str(other)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.split() == ["ok", str(other)]


def test_a_forced_width_must_be_32_or_64(tmp_path):
    env = {**os.environ, "SCORELINE_SIMD_LANES": "48", "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    done = subprocess.run([sys.executable, "-c", "import scoreline.engine.models.simd_run"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "SCORELINE_SIMD_LANES must be 32 or 64, got '48'" in done.stderr
