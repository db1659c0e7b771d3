"""Loading LightGBM text: what is read, and malformed files refused with the tree and key named."""

from __future__ import annotations

import re

import numpy as np
import pytest

import scoreline
from scoreline.engine.models.lightgbm import parse_lightgbm
from scoreline.errors import InputError, ModelFormatError

lgb = pytest.importorskip("lightgbm")


@pytest.fixture(scope="module")
def model_text() -> str:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    X[:, 2] = rng.integers(0, 6, 300)
    y = X[:, 0] + 3 * (X[:, 2] == 3) + rng.normal(scale=0.1, size=300)
    params = {"objective": "regression", "num_leaves": 7, "verbose": -1, "min_data_in_leaf": 5,
              "min_data_per_group": 5, "cat_smooth": 1}
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=[2]), num_boost_round=4)
    return booster.model_to_string()


def test_reads_header_and_trees(model_text):
    ir = parse_lightgbm(model_text)
    assert ir.version == "v4"
    assert ir.num_class == 1 and ir.num_tree_per_iteration == 1
    assert ir.feature_names == ("Column_0", "Column_1", "Column_2", "Column_3")
    assert ir.objective == "regression" and not ir.average_output
    assert len(ir.trees) == 4
    assert ir.parameters["categorical_feature"] == "2"
    assert all(t.num_leaves == 7 and t.depth >= 3 for t in ir.trees)


def test_loads_from_a_file_path_and_bytes(model_text, tmp_path):
    path = tmp_path / "model.txt"
    path.write_text(model_text)
    X = np.random.default_rng(1).normal(size=(20, 4))
    expected = lgb.Booster(model_str=model_text).predict(X)
    for source in (path, str(path), model_text.encode()):
        np.testing.assert_allclose(scoreline.load_lightgbm(source).predict(X), expected, rtol=1e-12)


def test_model_metadata(model_text):
    model = scoreline.load_lightgbm(model_text)
    assert model.kind == "lightgbm"
    assert model.num_features == 4 and model.num_class == 1 and model.objective == "regression"
    assert model.categories == {}


def test_warm_then_predict(model_text):
    model = scoreline.load_lightgbm(model_text)
    model.warm(orders="C", parallel=False)
    X = np.random.default_rng(5).normal(size=(3, 4))
    np.testing.assert_allclose(model.predict(X), lgb.Booster(model_str=model_text).predict(X), rtol=1e-12)


def test_missing_file_is_a_model_format_error(tmp_path):
    with pytest.raises(ModelFormatError, match="does not exist"):
        scoreline.load_lightgbm(tmp_path / "absent.txt")


def _replace_in_tree(text: str, tree: int, key: str, value: str) -> str:
    start = text.index(f"Tree={tree}\n")
    line = re.compile(rf"^{key}=.*$", re.M).search(text, start)
    return text[: line.start()] + f"{key}={value}" + text[line.end():]


def _drop_in_tree(text: str, tree: int, key: str) -> str:
    start = text.index(f"Tree={tree}\n")
    line = re.compile(rf"^{key}=.*\n", re.M).search(text, start)
    return text[: line.start()] + text[line.end():]


BROKEN = [
    (lambda t: t[: len(t) // 2], "end of trees", "trees"),
    (lambda t: t.replace("version=v4", "version=v9"), "version", "header.version"),
    (lambda t: t.replace("version=v4\n", ""), "version", "header.version"),
    (lambda t: t.replace("num_tree_per_iteration=1", "num_tree_per_iteration=2"), "num_tree_per_iteration",
     "header.num_tree_per_iteration"),
    (lambda t: t.replace("max_feature_idx=3", "max_feature_idx=7"), "feature_names", "header.feature_names"),
    (lambda t: _drop_in_tree(t, 2, "num_leaves"), "tree 2 lacks num_leaves", "tree 2.num_leaves"),
    (lambda t: _drop_in_tree(t, 1, "leaf_value"), "tree 1 lacks leaf_value", "tree 1.leaf_value"),
    (lambda t: _replace_in_tree(t, 3, "num_leaves", "x"), "integer", "tree 3.num_leaves"),
    (lambda t: _replace_in_tree(t, 1, "threshold", "1 2"), "threshold", "tree 1.threshold"),
    (lambda t: _replace_in_tree(t, 0, "threshold", "0.5 abc 1 1 1 1"), "threshold", "tree 0.threshold"),
    (lambda t: _replace_in_tree(t, 2, "split_feature", "0 1 9 0 1 0"), "feature 9", "tree 2.split_feature"),
    (lambda t: _replace_in_tree(t, 2, "split_feature", "0 1 -1 0 1 0"), "feature -1", "tree 2.split_feature"),
    (lambda t: _replace_in_tree(t, 1, "left_child", "1 -1 -2 -3 -4 40"), "child 40", "tree 1.left_child"),
    (lambda t: _replace_in_tree(t, 1, "left_child", "1 0 -2 -3 -4 -5"), "child 0", "tree 1.left_child"),
    (lambda t: _replace_in_tree(t, 1, "left_child", "1 1 1 1 1 1"), "twice", "tree 1.left_child"),
    (lambda t: _replace_in_tree(t, 0, "decision_type", "12 12 12 12 12 12"), "decision_type", "tree 0.decision_type"),
    (lambda t: t.replace("Tree=3\n", "Tree=7\n"), "Tree=7", "tree 3"),
    (lambda t: t.replace("tree_sizes=", "tree_sizes=1 "), "tree_sizes", "tree_sizes"),
    (lambda t: t.replace("pandas_categorical:null", "pandas_categorical:[oops"), "JSON", "pandas_categorical"),
    (lambda t: t.replace("objective=regression", "objective=telepathy"), "telepathy", "header.objective"),
    (lambda t: "garbage\n" + t, "start with 'tree'", "header"),
]


@pytest.mark.parametrize(("edit", "message", "path"), BROKEN, ids=[b[2] + ":" + b[1] for b in BROKEN])
def test_malformed_models_are_refused(model_text, edit, message, path):
    with pytest.raises(ModelFormatError, match=re.escape(message)) as info:
        scoreline.load_lightgbm(edit(model_text))
    assert info.value.path == path
    assert info.value.to_dict()["error"] == "model-format"


def test_categorical_split_pointing_past_its_sets_is_refused(model_text):
    ir = parse_lightgbm(model_text)
    tree = next(i for i, t in enumerate(ir.trees) if (t.decision_type & 1).any())
    node = int(np.flatnonzero(ir.trees[tree].decision_type & 1)[0])
    values = ir.trees[tree].threshold.copy()
    values[node] = 5
    edited = _replace_in_tree(model_text, tree, "threshold", " ".join(repr(float(v)) for v in values))
    with pytest.raises(ModelFormatError, match="category set") as info:
        scoreline.load_lightgbm(edited)
    assert info.value.path == f"tree {tree}.threshold"
    edited = _replace_in_tree(model_text, tree, "cat_boundaries", "0 99")
    with pytest.raises(ModelFormatError, match="cat_boundaries"):
        scoreline.load_lightgbm(edited)


def test_linear_tree_arrays_are_checked():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 3))
    booster = lgb.train({"objective": "regression", "linear_tree": True, "verbose": -1, "num_leaves": 4},
                        lgb.Dataset(X, X[:, 0] * 2 + X[:, 1]), num_boost_round=2)
    text = booster.model_to_string()
    assert scoreline.load_lightgbm(text).predict(X[:5]) == pytest.approx(booster.predict(X[:5]), rel=1e-12)
    with pytest.raises(ModelFormatError, match="leaf_coeff") as info:
        scoreline.load_lightgbm(_replace_in_tree(text, 1, "leaf_coeff", "1"))
    assert info.value.path == "tree 1.leaf_coeff"
    counts = _replace_in_tree(text, 0, "num_features", "1 1 1 1")
    with pytest.raises(ModelFormatError, match="tree 0"):
        scoreline.load_lightgbm(counts)


def test_single_leaf_trees_and_empty_models():
    X = np.random.default_rng(3).normal(size=(50, 2))
    booster = lgb.train({"objective": "regression", "verbose": -1, "min_data_in_leaf": 100},
                        lgb.Dataset(X, X[:, 0]), num_boost_round=3)
    model = scoreline.load_lightgbm(booster.model_to_string())
    np.testing.assert_array_equal(model.predict(X), booster.predict(X))
    np.testing.assert_array_equal(model.predict(X, pred_leaf=True), booster.predict(X, pred_leaf=True))


def test_wrong_feature_count_is_an_input_error(model_text):
    model = scoreline.load_lightgbm(model_text)
    with pytest.raises(InputError, match="4 features"):
        model.predict(np.zeros((2, 3)))
    with pytest.raises(InputError, match=r"\(rows, 4\)"):
        model.predict_matrix(np.zeros((2, 5)))
    with pytest.raises(InputError, match="contiguous"):
        model.predict_matrix(np.zeros((2, 8))[:, ::2])


def test_pandas_categorical_maps_to_feature_indices():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(4)
    n = 400
    frame = pd.DataFrame({
        "a": rng.normal(size=n),
        "colour": pd.Categorical(rng.choice(["red", "green", "blue"], n)),
        "b": rng.normal(size=n),
        "size": pd.Categorical(rng.choice(["S", "M", "L", "XL"], n), categories=["S", "M", "L", "XL"], ordered=True),
        "code": pd.Categorical(rng.choice([10, 20, 30], n)),
    })
    y = frame["a"] + (frame["colour"] == "red") * 2 + frame["size"].cat.codes * 0.5 + (frame["code"] == 20)
    booster = lgb.train({"objective": "regression", "verbose": -1, "num_leaves": 7, "min_data_in_leaf": 5},
                        lgb.Dataset(frame, y), num_boost_round=10)
    model = scoreline.load_lightgbm(booster.model_to_string())
    assert model.categories == {1: ("blue", "green", "red"), 3: ("S", "M", "L", "XL"), 4: (10, 20, 30)}
    test = frame.head(30).copy()
    test.loc[0:3, "colour"] = np.nan
    np.testing.assert_allclose(model.predict(test), booster.predict(test, num_threads=1), rtol=1e-12)
