"""Contributions (pred_contrib) per second: scoreline vs LightGBM vs the shap package, one thread, side by side.

Models: the generated 100 x 31 and 500 x 63 (categorical) models of test_bench_kernels.py, with
data counts filled in from a sample (generated files have none), and two models trained on data
scikit-learn ships (breast cancer, diabetes). Peers, all on one thread:
  lightgbm    Booster.predict(pred_contrib=True, num_threads=1) (LightGBM's C++ TreeSHAP)
  shap        shap.TreeExplainer(booster).shap_values(X): for a LightGBM booster shap calls
              LightGBM's pred_contrib itself (here with num_threads=1)
  shap-cext   shap's own C++ TreeSHAP (_cext.dense_tree_shap) over the trees shap read from the
              booster, numeric models only (its reading of categorical splits differs; NaN
              rows are not compared: it sends NaN to the default side under every missing type)
With ``--benchmark-disable`` (the default) every case runs once and checks the values agree.

    .venv/bin/python -m pytest benchmarks/test_bench_explain.py --benchmark-enable \\
        --benchmark-group-by=group --benchmark-columns=median,ops
"""

from __future__ import annotations

import numpy as np
import pytest

import scoreline
from benchmarks.test_bench_kernels import SIZES, generate_model, generate_rows

lgb = pytest.importorskip("lightgbm")
pytest.importorskip("pytest_benchmark")

ROWS = {"100x31": 2_000, "500x63-cat": 200, "breast-cancer": 2_000, "diabetes": 2_000}
ENGINES = ["scoreline", "lightgbm", "shap", "shap-cext"]


def with_counts(text: str, X: np.ndarray) -> str:
    """The model text with leaf_count/internal_count from the leaves X's rows reach (+1 each, so
    no node is empty), written the way LightGBM writes them."""
    booster = lgb.Booster(model_str=text)
    leaves = booster.predict(X, pred_leaf=True, num_threads=1)
    out, tree = [], -1
    lines = text.splitlines()
    children = {}
    for line in lines:
        if line.startswith("Tree="):
            tree = int(line[5:])
        elif line.startswith(("left_child=", "right_child=")):
            children.setdefault(tree, []).append(np.array(line.split("=")[1].split(), dtype=np.int64))
    for line in lines:
        out.append(line)
        if line.startswith("Tree="):
            tree = int(line[5:])
        elif line.startswith("leaf_value="):
            leaf_count = np.bincount(leaves[:, tree], minlength=len(line.split())) + 1
            left, right = children[tree]
            internal = np.zeros(left.size, dtype=np.int64)
            for node in range(left.size - 1, -1, -1):  # children are numbered after their parent
                internal[node] = sum(internal[c] if c >= 0 else leaf_count[~c] for c in (left[node], right[node]))
            out.append("leaf_count=" + " ".join(map(str, leaf_count)))
            out.append("internal_count=" + " ".join(map(str, internal)))
    return "\n".join(out) + "\n"


def _sklearn_model(loader: str, objective: str, n: int):
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = getattr(datasets, loader)(return_X_y=True)
    rng = np.random.default_rng(3)
    X = X.copy()
    X[rng.random(X.shape) < 0.03] = np.nan
    params = {"objective": objective, "verbose": -1, "num_leaves": 31, "min_data_in_leaf": 3, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=100)
    rows = X[rng.integers(0, len(X), n)]
    return booster.model_to_string(), rows


@pytest.fixture(scope="module", params=list(ROWS), ids=lambda s: f"model={s}")
def case(request):
    name = request.param
    if name in SIZES:
        trees, leaves, features, categorical, objective = SIZES[name]
        raw = generate_model(trees, leaves, features, categorical, objective)
        text = with_counts(raw, generate_rows(4096, features, categorical, seed=9))
        X = generate_rows(ROWS[name], features, categorical)
    else:
        text, X = _sklearn_model("load_breast_cancer" if name == "breast-cancer" else "load_diabetes",
                                 "binary" if name == "breast-cancer" else "regression", ROWS[name])
    model = scoreline.load_lightgbm(text)
    booster = lgb.Booster(model_str=text)
    model.predict(X[:1], pred_contrib=True)  # paths, tables and kernels are load-time work
    return name, model, booster, np.ascontiguousarray(X), booster.predict(X, pred_contrib=True, num_threads=1)


def _shap_call(booster, X, internal: bool):
    shap = pytest.importorskip("shap")
    explainer = shap.TreeExplainer(booster, feature_perturbation="tree_path_dependent")
    if internal:
        explainer.model.model_type = "internal"  # skip the pred_contrib shortcut: shap's own C++ TreeSHAP
    else:
        explainer.model.original_model = _OneThread(booster)

    def call(rows):
        values = explainer.shap_values(rows, check_additivity=False)
        expected = np.broadcast_to(np.asarray(explainer.expected_value, dtype=np.float64).reshape(-1), (len(rows), 1))
        return np.hstack([np.asarray(values).reshape(len(rows), -1), expected])

    return call


class _OneThread:
    """The booster as shap sees it, predicting on one thread (shap passes no num_threads)."""

    def __init__(self, booster):
        self.params = booster.params
        self._booster = booster

    def predict(self, X, **kwargs):
        return self._booster.predict(X, num_threads=1, **kwargs)


@pytest.mark.benchmark(max_time=0.5)
@pytest.mark.parametrize("engine", ENGINES)
def test_contributions(benchmark, case, engine):
    name, model, booster, X, expected = case
    benchmark.group = f"pred_contrib {name} rows={len(X)}"
    benchmark.extra_info["rows"] = len(X)
    if engine == "scoreline":
        call = model.predict_contrib_matrix
    elif engine == "lightgbm":
        def call(rows):
            return booster.predict(rows, pred_contrib=True, num_threads=1)
    else:
        if engine == "shap-cext" and name == "500x63-cat":
            pytest.skip("shap's own TreeSHAP reads LightGBM's categorical splits differently")
        call = _shap_call(booster, X, internal=engine == "shap-cext")
    result = benchmark.pedantic(call, args=(X,), rounds=5, iterations=1, warmup_rounds=1)
    rtol = 1e-9
    if engine == "shap-cext":
        # shap's own TreeSHAP sends NaN to the default side whatever the missing type (LightGBM
        # compares it as 0.0 under missing type None) and sums in another order: rows without
        # NaN, to 1e-6.
        clean = ~np.isnan(X).any(axis=1)
        result, expected, rtol = result[clean], expected[clean], 1e-6
    scale = np.abs(expected).sum(axis=1, keepdims=True)
    np.testing.assert_array_less(np.abs(result - expected), rtol * np.abs(expected) + rtol * 1e-3 * scale + 1e-300)
