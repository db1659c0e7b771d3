"""Experiments in the registry: the split (sticky, close to the shares, same on both paths), and the
metadata (checks, history, canary steps and rollback, stop)."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest

from scoreline.errors import NotFoundError, SchemaError
from scoreline.registry.experiments import (
    Experiment, Variant, load_experiment, set_canary, set_experiment, split, split_one,
    stop_experiment,
)
from scoreline.registry.repository import Repository

pytest.importorskip("lightgbm")

from scoreline.engine.demo import build_demo  # noqa: E402

N = 100_000


def test_split_is_close_to_the_declared_shares_over_100k_keys():
    keys = np.arange(5_000_000, 5_000_000 + N, dtype=np.int64)
    shares = [0.7, 0.2, 0.05, 0.05]
    counts = np.bincount(split(keys, "exp-a", shares), minlength=4) / N
    # binomial standard error at 100k keys is under 0.0015: 5 of them
    np.testing.assert_allclose(counts, shares, atol=0.0075)


def test_split_of_string_keys_is_close_to_the_shares():
    keys = pa.array([f"cust-{i:07d}" for i in range(N)])
    counts = np.bincount(split(keys, "exp-s", [0.9, 0.1]), minlength=2) / N
    np.testing.assert_allclose(counts, [0.9, 0.1], atol=0.0075)


def test_split_is_sticky_and_depends_on_the_experiment_name():
    keys = np.random.default_rng(1).integers(0, 2**62, N)
    first = split(keys, "exp-a", [0.5, 0.5])
    # same keys in another order, as Arrow, in a later call: the same variant per key
    order = np.random.default_rng(2).permutation(N)
    again = split(pa.array(keys[order]), "exp-a", [0.5, 0.5])
    np.testing.assert_array_equal(again, first[order])
    other = split(keys, "exp-b", [0.5, 0.5])
    assert 0.45 < np.mean(other != first) < 0.55  # a new name reshuffles independently


def test_raising_a_share_only_moves_keys_into_the_grown_variant():
    keys = np.arange(N, dtype=np.int64)
    before = split(keys, "canary", [0.95, 0.05])
    after = split(keys, "canary", [0.80, 0.20])
    assert np.all(after[before == 1] == 1)  # nobody on the canary is moved back


@pytest.mark.parametrize("keys", [[0, 1, 5973628, -3, 2**62], ["a", "", "customer-é", "x" * 40]])
def test_split_one_agrees_with_split(keys):
    shares = [0.6, 0.3, 0.1]
    vector = split(pa.array(keys), "exp", shares)
    assert [split_one(k, "exp", shares) for k in keys] == vector.tolist()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    build_demo(root, customers=500, train_rows=500, log=lambda *_: None)
    return root


@pytest.fixture
def repo(demo, tmp_path):
    shutil.copytree(demo / "registry", tmp_path / "registry")
    repo = Repository(tmp_path / "registry")
    stop_experiment(repo, "customer-segmentation")  # the demo's own shadow experiment
    return repo


def test_set_show_and_stop_are_recorded_in_the_history(repo):
    model = "customer-segmentation"
    assert load_experiment(repo, model) is None
    e = set_experiment(repo, model, {"name": "postcode-test", "champion": 2,
                                     "challengers": [{"version": 1, "share": 0.1}]}, "try v1 again")
    assert load_experiment(repo, model) == e
    assert [(r.version, r.role, r.share) for r in e.routes()] == [(2, "champion", 0.9),
                                                                   (1, "challenger", 0.1)]
    stop_experiment(repo, model, "done")
    assert load_experiment(repo, model) is None
    actions = [h["action"] for h in repo.history(model)]
    assert actions[-2:] == ["experiment-set", "experiment-stopped"]
    assert repo.history(model)[-2]["experiment"]["challengers"] == [{"version": 1, "share": 0.1}]


@pytest.mark.parametrize("bad, error", [
    ({"name": "x", "champion": 2, "challengers": [{"version": 7, "share": 0.1}]}, NotFoundError),
    ({"name": "x", "champion": 2, "challengers": [{"version": 1, "share": 1.5}]}, SchemaError),
    ({"name": "x", "champion": 2, "challengers": [{"version": 2, "share": 0.1}]}, SchemaError),
    ({"name": "x", "champion": 2, "shadows": [1], "canary": {"version": 1, "share": 0.1}}, SchemaError),
    ({"name": "", "champion": 2}, SchemaError),
    ({"name": "x", "champion": 2, "shadow": [1]}, SchemaError),
])
def test_a_bad_experiment_is_refused_and_nothing_changes(repo, bad, error):
    with pytest.raises(error):
        set_experiment(repo, "customer-segmentation", bad)
    assert load_experiment(repo, "customer-segmentation") is None


def test_variants_must_answer_the_same_contract(repo, demo, tmp_path):
    # credit-risk's contract differs: copy its version in as a third segmentation version
    model_dir = repo.root / "customer-segmentation"
    shutil.copytree(repo.root / "credit-risk" / "1", model_dir / "3")
    text = (model_dir / "3" / "manifest.json").read_text().replace('"credit-risk"', '"customer-segmentation"')
    (model_dir / "3" / "manifest.json").write_text(text)
    with pytest.raises(SchemaError, match="different contract"):
        set_experiment(repo, "customer-segmentation", Experiment("x", 2, shadows=[3]))


def test_canary_is_raised_step_by_step_and_rolled_back(repo):
    model = "customer-segmentation"
    for share in (0.01, 0.05, 0.25):
        e = set_canary(repo, model, 1, share)
    assert e.canary == Variant(1, 0.25) and e.champion is None  # follows production (v2)
    assert set_canary(repo, model, rollback=True).canary == Variant(1, 0.05)
    assert set_canary(repo, model, rollback=True).canary == Variant(1, 0.01)
    assert set_canary(repo, model, rollback=True).canary is None
    with pytest.raises(NotFoundError):
        set_canary(repo, model, rollback=True)
    assert load_experiment(repo, model).routes()[0].share == 1.0
