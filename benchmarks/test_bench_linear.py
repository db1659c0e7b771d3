"""Linear-model scoring speed: scoreline vs numpy ``X @ coef`` and scikit-learn, batch 1 and 100k.

Run timed: ``pytest benchmarks/test_bench_linear.py --benchmark-only --benchmark-group-by=param:rows``;
in CI (``--benchmark-disable``) every case runs once and checks its result against numpy.
The model: logistic regression over 28 features (the size of the demo's feature plan), fitted by
scikit-learn where it is installed; every engine returns the positive-class probability.
"""

from __future__ import annotations

import numpy as np
import pytest

import scoreline

NUM_FEATURES = 28


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(2_000, NUM_FEATURES))
    y = (X @ rng.normal(size=NUM_FEATURES) + rng.normal(size=len(X)) > 0).astype(int)
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        estimator = None
        coef, intercept = rng.normal(size=(1, NUM_FEATURES)), rng.normal(size=1)
        model = scoreline.load_linear(
            {
                "format": "scoreline-linear", "version": 1, "objective": "binary",
                "feature_names": [f"f{j}" for j in range(NUM_FEATURES)],
                "coefficients": coef[0].tolist(), "intercept": float(intercept[0]),
            }
        )
    else:
        estimator = LogisticRegression(max_iter=1000).fit(X, y)
        model = scoreline.load_linear(estimator)
    model.predict_matrix(X[:1])  # compile (or load the on-disk cache) outside the timings
    model.predict_matrix(X)
    return model, estimator


def _numpy(model):
    coef = np.array(model.coefficients[0])
    intercept = float(model.intercept[0])
    return lambda X: 1.0 / (1.0 + np.exp(-(X @ coef + intercept)))


# scoreline-F-order: the matrix the Arrow adapter builds (feature-major), one thread.
ENGINES = ["scoreline", "scoreline-1-thread", "scoreline-F-order", "scoreline-predict", "numpy", "sklearn"]


@pytest.mark.parametrize("rows", [1, 100_000])
@pytest.mark.parametrize("engine", ENGINES)
def test_linear_predict(benchmark, fitted, engine, rows):
    model, estimator = fitted
    X = np.random.default_rng(rows).normal(size=(rows, NUM_FEATURES))
    benchmark.group = f"linear binary, {rows} rows"
    reference = _numpy(model)
    if engine == "scoreline":
        out = np.empty(rows)
        run = lambda: model.predict_matrix(X, out=out)  # noqa: E731
    elif engine == "scoreline-1-thread":
        run = lambda: model.predict_matrix(X, num_threads=1)  # noqa: E731
    elif engine == "scoreline-F-order":
        XF = np.asfortranarray(X)
        run = lambda: model.predict_matrix(XF, num_threads=1)  # noqa: E731
    elif engine == "scoreline-predict":
        run = lambda: model.predict(X)  # noqa: E731  (with the input adapter's checks)
    elif engine == "numpy":
        run = lambda: reference(X)  # noqa: E731
    else:
        if estimator is None:
            pytest.skip("scikit-learn is not installed")
        run = lambda: estimator.predict_proba(X)[:, 1]  # noqa: E731
    result = benchmark(run)
    np.testing.assert_allclose(result, reference(X), rtol=1e-12)
