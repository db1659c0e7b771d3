"""Tests for linear models (engine/models/linear.py, kernels/linear.py) against numpy and scikit-learn."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import scoreline
from scoreline.errors import InputError, ModelFormatError

OBJECTIVES = ("regression", "binary", "multiclass", "multiclassova")


def _margins(X, coef, intercept):
    """Reference margins: per output, sum over features in order, intercept last (the kernel's
    documented order), so the comparison is bit for bit."""
    X = np.asarray(X, dtype=np.float64)
    out = np.zeros((X.shape[0], coef.shape[0]))
    with np.errstate(all="ignore"):  # inf * 0 and inf - inf are NaN by design
        for k in range(coef.shape[0]):
            for j in range(coef.shape[1]):
                out[:, k] += X[:, j] * coef[k, j]
            out[:, k] += intercept[k]
    return out


@np.errstate(all="ignore")
def _link(margins, objective):
    if objective == "regression":
        return margins[:, 0] if margins.shape[1] == 1 else margins
    if objective == "binary":
        return 1.0 / (1.0 + np.exp(-margins[:, 0]))
    if objective == "multiclassova":
        return 1.0 / (1.0 + np.exp(-margins))
    shifted = np.exp(margins - margins.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _assert_close_to_blas(ours, theirs, X, coef, intercept):
    """Agreement with a BLAS/scikit-learn margin: 1e-12 relative to the magnitude of the terms
    summed (sum_j |x_j w_j| + |b|), since BLAS adds them in another order and a margin near zero
    has no relative accuracy of its own."""
    scale = np.abs(np.asarray(X, np.float64)) @ np.abs(coef).T + np.abs(intercept)
    scale = scale.reshape(np.shape(ours))
    assert np.all(np.abs(ours - theirs) <= 1e-12 * scale)


def _model_dict(objective, coef, intercept, names=None):
    names = names or [f"f{j}" for j in range(coef.shape[1])]
    single = objective in ("regression", "binary") and coef.shape[0] == 1
    return {
        "format": "scoreline-linear",
        "version": 1,
        "objective": objective,
        "feature_names": names,
        "coefficients": coef[0].tolist() if single else coef.tolist(),
        "intercept": float(intercept[0]) if single else intercept.tolist(),
    }


def _random_model(objective, num_features, rng):
    outputs = 1 if objective in ("regression", "binary") else 3
    coef = rng.normal(size=(outputs, num_features))
    intercept = rng.normal(size=outputs)
    return scoreline.load_linear(_model_dict(objective, coef, intercept)), coef, intercept


# --- exactness against the reference order ------------------------------------------------


@given(
    objective=st.sampled_from(OBJECTIVES),
    data=st.data(),
    dtype=st.sampled_from([np.float64, np.float32]),
    order=st.sampled_from(["C", "F"]),
)
def test_matches_reference_bit_for_bit(objective, data, dtype, order):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    num_features = data.draw(st.integers(1, 12))
    model, coef, intercept = _random_model(objective, num_features, rng)
    values = st.one_of(
        st.floats(-1e6, 1e6, width=32 if dtype == np.float32 else 64),
        st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf]),
    )
    X = data.draw(hnp.arrays(dtype, st.tuples(st.integers(0, 600), st.just(num_features)), elements=values))
    X = np.asarray(X, order=order)
    margins = _margins(X, coef, intercept)
    raw = model.predict(X, raw_score=True, num_threads=1)
    np.testing.assert_array_equal(raw, margins[:, 0] if model.num_class == 1 else margins)
    # The link: the same formulas, but numpy's vectorised exp may differ from libm's by an ulp.
    np.testing.assert_allclose(model.predict(X, num_threads=1), _link(margins, objective), rtol=1e-14, atol=0)


def test_parallel_kernel_matches_serial_and_layouts():
    rng = np.random.default_rng(7)
    model, coef, intercept = _random_model("multiclass", 30, rng)
    X = rng.normal(size=(5_001, 30))  # 5,001 x 30 x 3 multiply-adds: parallel, with a ragged last block
    X[::97, 3] = np.nan
    serial = model.predict_matrix(X, num_threads=1)
    for candidate in (X, np.asfortranarray(X)):
        np.testing.assert_array_equal(model.predict_matrix(candidate), serial)
        np.testing.assert_array_equal(model.predict_matrix(candidate, num_threads=2), serial)
    np.testing.assert_allclose(serial, _link(_margins(X, coef, intercept), "multiclass"), rtol=1e-14)
    assert np.isnan(serial[::97]).all() and not np.isnan(serial[1::97]).any()


def test_nan_feature_gives_nan_score_for_that_row_only():
    model, _, _ = _random_model("binary", 4, np.random.default_rng(1))
    X = np.ones((3, 4))
    X[1, 2] = np.nan
    got = model.predict(X)
    assert np.isnan(got[1]) and np.isfinite(got[[0, 2]]).all()


# --- scikit-learn ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diabetes():
    datasets = pytest.importorskip("sklearn.datasets")
    return datasets.load_diabetes(return_X_y=True, as_frame=True)


@pytest.mark.parametrize("name", ["LinearRegression", "Ridge", "Lasso", "ElasticNet"])
def test_regressors_match_sklearn(diabetes, name):
    linear_model = pytest.importorskip("sklearn.linear_model")
    frame, y = diabetes
    estimator = getattr(linear_model, name)(**({} if name == "LinearRegression" else {"alpha": 0.01})).fit(frame, y)
    model = scoreline.load_linear(estimator)
    assert (model.kind, model.objective, model.num_class, model.categories) == ("linear", "regression", 1, {})
    assert model.feature_names == tuple(frame.columns)
    X = frame.to_numpy()
    expected = estimator.predict(frame)
    for data in (X, frame, pa.Table.from_pandas(frame)):
        got = model.predict(data)
        assert got.shape == expected.shape
        _assert_close_to_blas(got, expected, X, model.coefficients, model.intercept)


def test_multi_output_regression_matches_sklearn(diabetes):
    linear_model = pytest.importorskip("sklearn.linear_model")
    frame, y = diabetes
    targets = np.column_stack([y, -2.0 * y + 1.0])
    estimator = linear_model.Ridge(alpha=0.1).fit(frame.to_numpy(), targets)
    model = scoreline.load_linear(estimator, feature_names=list(frame.columns))
    got = model.predict(frame)
    assert got.shape == (len(frame), 2)
    _assert_close_to_blas(got, estimator.predict(frame.to_numpy()), frame.to_numpy(), model.coefficients, model.intercept)


def test_binary_logistic_matches_sklearn():
    datasets = pytest.importorskip("sklearn.datasets")
    linear_model = pytest.importorskip("sklearn.linear_model")
    X, y = datasets.load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    estimator = linear_model.LogisticRegression(max_iter=2000).fit(X, y)
    model = scoreline.load_linear(estimator)
    assert (model.objective, model.num_class, model.classes) == ("binary", 1, (0, 1))
    assert model.feature_names[:2] == ("Column_0", "Column_1")
    proba = model.predict(X)
    assert proba.shape == (len(X),)  # the positive class, like LightGBM's binary predict
    np.testing.assert_allclose(proba, estimator.predict_proba(X)[:, 1], rtol=1e-12)
    np.testing.assert_allclose(1.0 - proba, estimator.predict_proba(X)[:, 0], rtol=1e-12)
    raw = model.predict(X, raw_score=True)
    _assert_close_to_blas(raw, estimator.decision_function(X), X, model.coefficients, model.intercept)


@pytest.mark.parametrize("loader", ["load_iris", "load_wine"])
def test_multinomial_logistic_matches_sklearn(loader):
    datasets = pytest.importorskip("sklearn.datasets")
    linear_model = pytest.importorskip("sklearn.linear_model")
    X, y = getattr(datasets, loader)(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    estimator = linear_model.LogisticRegression(max_iter=2000).fit(X, y)
    model = scoreline.load_linear(estimator)
    assert (model.objective, model.num_class) == ("multiclass", 3)
    np.testing.assert_allclose(model.predict(X), estimator.predict_proba(X), rtol=1e-12)
    raw = model.predict(X, raw_score=True)
    _assert_close_to_blas(raw, estimator.decision_function(X), X, model.coefficients, model.intercept)
    # The saved file is the registry's artifact: it must reproduce the estimator exactly.
    assert np.array_equal(scoreline.load_linear(json.loads(_saved(model))).predict(X), model.predict(X))


def _saved(model) -> str:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.json"
        model.save(path)
        return path.read_text()


@pytest.mark.parametrize("labels", [[0.0, 1.0], ["no", "yes"], [False, True]])
def test_class_labels_survive_save_and_load(labels, tmp_path):
    linear_model = pytest.importorskip("sklearn.linear_model")
    X = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    y = np.array([labels[0], labels[1], labels[1], labels[0]], dtype=object if isinstance(labels[0], str) else None)
    model = scoreline.load_linear(linear_model.LogisticRegression().fit(X, y))
    model.save(tmp_path / "m.json")
    loaded = scoreline.load_linear(tmp_path / "m.json")
    assert loaded.classes == model.classes == tuple(labels)
    assert np.array_equal(loaded.predict(X), model.predict(X))


def test_unsupported_and_unfitted_estimators_are_refused():
    linear_model = pytest.importorskip("sklearn.linear_model")
    with pytest.raises(ModelFormatError, match="the LinearRegression estimator is not fitted"):
        scoreline.load_linear(linear_model.LinearRegression())
    glm = linear_model.PoissonRegressor().fit(np.eye(3), [1.0, 2.0, 3.0])
    with pytest.raises(ModelFormatError, match="cannot read a linear model from sklearn.*PoissonRegressor"):
        scoreline.load_linear(glm)
    with pytest.raises(ModelFormatError, match="cannot read a linear model from builtins.object"):
        scoreline.load_linear(object())


def test_feature_names_must_match_the_estimators(diabetes):
    linear_model = pytest.importorskip("sklearn.linear_model")
    frame, y = diabetes
    estimator = linear_model.LinearRegression().fit(frame, y)
    assert scoreline.load_linear(estimator, feature_names=list(frame.columns)).feature_names == tuple(frame.columns)
    with pytest.raises(ModelFormatError, match="differ from the LinearRegression estimator's feature_names_in_"):
        scoreline.load_linear(estimator, feature_names=[f"x{j}" for j in range(frame.shape[1])])


# --- files ---------------------------------------------------------------------------------


def test_json_and_toml_files(tmp_path):
    coef = np.array([[0.5, -1.25, 3.0], [0.1, 0.2, 0.3]])
    intercept = np.array([0.25, -0.5])
    doc = _model_dict("multiclassova", coef, intercept, names=["age", "income", "tenure"])
    (tmp_path / "m.json").write_text(json.dumps(doc))
    (tmp_path / "m.toml").write_text(
        'format = "scoreline-linear"\nversion = 1\nobjective = "multiclassova"\n'
        'feature_names = ["age", "income", "tenure"]\n'
        "coefficients = [[0.5, -1.25, 3], [0.1, 0.2, 0.3]]\nintercept = [0.25, -0.5]\n"
        'classes = ["low", "high"]\n'
    )
    X = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])
    expected = 1.0 / (1.0 + np.exp(-_margins(X, coef, intercept)))  # one sigmoid per class, unnormalised
    for source in (tmp_path / "m.json", str(tmp_path / "m.toml"), json.dumps(doc), doc):
        model = scoreline.load_linear(source)
        assert (model.objective, model.num_class, model.feature_names) == ("multiclassova", 2, ("age", "income", "tenure"))
        np.testing.assert_allclose(model.predict(X), expected, rtol=1e-15)
    assert scoreline.load_linear(tmp_path / "m.toml").classes == ("low", "high")


def _bad(**changes):
    doc = _model_dict("binary", np.array([[1.0, 2.0]]), np.array([0.5]), names=["a", "b"])
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    ("doc", "message", "path"),
    [
        (_bad(format="lightgbm"), "Invalid enum value 'lightgbm'", "$.format"),
        (_bad(version=2), "scoreline-linear version 2 is not supported (this build reads version 1)", "$.version"),
        (_bad(objective="poisson"), "Invalid enum value 'poisson'", "$.objective"),
        (_bad(extra=1), "Object contains unknown field `extra`", "$"),
        (_bad(coefficients=[1.0, "x"]), "Expected `float | array`, got `str`", "$.coefficients[1]"),
        (_bad(coefficients=[[1.0, 2.0], 3.0], objective="regression"), "coefficients mix numbers and lists", "$.coefficients[1]"),
        (_bad(coefficients=[[1.0, 2.0], [3.0]], objective="multiclass", intercept=[0, 0]), "coefficient row 1 has 1 values, row 0 has 2", "$.coefficients[1]"),
        (_bad(coefficients=[1.0, 2.0, 3.0]), "2 feature names for 3 coefficients per output", "$.feature_names"),
        (_bad(feature_names=["a", "a"]), "feature name 'a' appears twice (at 0 and 1)", "$.feature_names[1]"),
        (_bad(feature_names=["a", ""]), "feature name 1 is '', expected a non-empty string", "$.feature_names[1]"),
        (_bad(coefficients=[[1.0, 2.0], [3.0, 4.0]], intercept=[0, 0]), "a binary model has one row of coefficients, got 2", "$.coefficients"),
        (_bad(objective="multiclass"), "a multiclass model needs a row of coefficients per class (2 or more), got 1", "$.coefficients"),
        (_bad(intercept=[1.0, 2.0]), "expected 1 intercept value(s), got 2", "$.intercept"),
        (_bad(coefficients=[]), "no coefficients", "$.coefficients"),
        (_bad(classes=["yes"]), "1 class labels for a binary model with 1 output(s)", "$.classes"),
        (_bad(coefficients=[1e308 * 10, 1.0]), "coefficient inf is not finite", "$.coefficients[0]"),
    ],
)
def test_bad_files_are_refused_with_the_field(doc, message, path):
    with pytest.raises(ModelFormatError) as info:
        scoreline.load_linear(doc)
    assert message in info.value.message
    assert info.value.path == path


def test_bad_file_contents(tmp_path):
    (tmp_path / "nan.toml").write_text(
        'format = "scoreline-linear"\nversion = 1\nobjective = "regression"\nfeature_names = ["a"]\n'
        "coefficients = [[nan]]\nintercept = [0.0]\n"
    )
    with pytest.raises(ModelFormatError, match="coefficient nan is not finite") as info:
        scoreline.load_linear(tmp_path / "nan.toml")
    assert info.value.path == "$.coefficients[0][0]"
    (tmp_path / "broken.json").write_text('{"format": "scoreline-linear", ')
    with pytest.raises(ModelFormatError, match="not JSON"):
        scoreline.load_linear(tmp_path / "broken.json")
    (tmp_path / "broken.toml").write_text("format = ")
    with pytest.raises(ModelFormatError, match="not TOML"):
        scoreline.load_linear(tmp_path / "broken.toml")
    with pytest.raises(ModelFormatError, match="cannot read linear model file .*missing.json"):
        scoreline.load_linear(tmp_path / "missing.json")


# --- the model contract --------------------------------------------------------------------


def test_contract_errors_and_out():
    model, coef, intercept = _random_model("multiclass", 3, np.random.default_rng(3))
    with pytest.raises(InputError, match="pred_leaf is not available for linear models") as info:
        model.predict(np.zeros((1, 3)), pred_leaf=True)
    assert info.value.path == "pred_leaf"
    with pytest.raises(InputError, match="expected 3 features, got 2"):
        model.predict(np.zeros((1, 2)))
    with pytest.raises(InputError, match="column 'f2' is missing"):
        model.predict(pa.table({"f0": [1.0], "f1": [2.0]}))
    with pytest.raises(InputError, match=r"expected a contiguous float64/float32 matrix of shape \(rows, 3\)"):
        model.predict_matrix(np.zeros((2, 3), dtype=np.int64))
    X = np.arange(6.0).reshape(2, 3)
    out = np.empty((2, 3))
    assert model.predict_matrix(X, out=out) is out
    np.testing.assert_array_equal(out, model.predict(X))
    with pytest.raises(InputError, match=r"expected out to be a C-contiguous float64 array of shape \(2, 3\)"):
        model.predict_matrix(X, out=np.empty((2, 2)))
    assert model.predict(np.zeros((0, 3))).shape == (0, 3)


def test_pickle_round_trip_keeps_predictions_and_read_only_arrays():
    model, _, _ = _random_model("binary", 5, np.random.default_rng(4))
    clone = pickle.loads(pickle.dumps(model))
    X = np.random.default_rng(5).normal(size=(50, 5))
    np.testing.assert_array_equal(clone.predict(X), model.predict(X))
    assert (clone.kind, clone.objective, clone.feature_names) == (model.kind, model.objective, model.feature_names)
    with pytest.raises(ValueError):
        clone.coefficients[0, 0] = 1.0
