"""Linear models: coefficients from a JSON/TOML file or a fitted scikit-learn estimator -> LinearModel.

``load_linear`` reads the documented ``scoreline-linear`` format (docs/linear-models.md) or the
fitted attributes of a scikit-learn estimator (``coef_``, ``intercept_``, ``classes_``,
``feature_names_in_``; nothing is unpickled), and returns a ``LinearModel`` with the tree
model's contract (docs/contracts.md): ``predict`` returns what LightGBM would for the same
objective (``(n,)`` for regression and binary, ``(n, num_class)`` for multiclass).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np

from scoreline.engine.data.inputs import to_matrix
from scoreline.errors import InputError, ModelFormatError
from scoreline.kernels.linear import linear_predict, linear_predict_parallel
from scoreline.kernels.links import LINK_IDENTITY, LINK_SIGMOID, LINK_SIGMOID_EACH, LINK_SOFTMAX
from scoreline.kernels.policy import use_threads

__all__ = ["LinearFile", "LinearModel", "load_linear"]

FORMAT = "scoreline-linear"
VERSION = 1

Objective = Literal["regression", "binary", "multiclass", "multiclassova"]

_LINKS = {
    "regression": LINK_IDENTITY,
    "binary": LINK_SIGMOID,
    "multiclass": LINK_SOFTMAX,
    "multiclassova": LINK_SIGMOID_EACH,
}

# Go parallel from this many multiply-adds (rows x features x outputs), ~2,300 rows of 28
# features. Best of 200 on this 2-core machine, 28 features, one output, F order: 1,024 rows
# 15 us serial vs 19 us parallel (one 1,024-row task: nothing to share), 2,048 rows 30 vs 19 us,
# 4,096 rows 66 vs 40 us.
_PARALLEL_MIN_WORK = 1 << 16

# scikit-learn estimators whose predict is exactly X @ coef_.T + intercept_ (GLMs such as
# PoissonRegressor add a log link and are not accepted; SGDClassifier and OneVsRestClassifier
# normalise their one-vs-rest probabilities, which no objective here does).
_SKLEARN_REGRESSORS = frozenset(
    {
        "LinearRegression", "Ridge", "RidgeCV", "Lasso", "LassoCV", "ElasticNet", "ElasticNetCV",
        "Lars", "LarsCV", "LassoLars", "LassoLarsCV", "LassoLarsIC", "OrthogonalMatchingPursuit",
        "BayesianRidge", "ARDRegression", "HuberRegressor", "QuantileRegressor", "SGDRegressor",
    }
)
_SKLEARN_CLASSIFIERS = frozenset({"LogisticRegression", "LogisticRegressionCV"})


class LinearFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``scoreline-linear`` file, version 1 (JSON or TOML); see docs/linear-models.md."""

    format: Literal["scoreline-linear"]
    version: int
    objective: Objective
    feature_names: list[str]
    coefficients: list[float | list[float]]
    intercept: float | list[float]
    classes: list[str | int | float | bool] | None = None
    means: list[float] | None = None  # training means of the features, for pred_contrib


_JSON_DECODER = msgspec.json.Decoder(LinearFile)
_JSON_ENCODER = msgspec.json.Encoder()
_AT = re.compile(r" - at `(\$[^`]*)`$")


class LinearModel:
    """A linear, logistic, softmax or one-vs-rest logistic model over named features.

    Attributes follow docs/contracts.md: ``kind`` ("linear"), ``feature_names``,
    ``num_features``, ``num_class`` (outputs per row: 1 for regression and binary),
    ``objective``, ``categories`` (always empty), plus ``coefficients`` (read-only
    ``(num_class, num_features)`` float64), ``intercept`` (``(num_class,)``) and ``classes`` (class
    labels or ``None``).
    """

    kind = "linear"

    def __init__(
        self,
        objective: str,
        feature_names,
        coefficients: np.ndarray,
        intercept: np.ndarray,
        classes: tuple | None = None,
        means=None,
    ) -> None:
        coef = np.array(coefficients, dtype=np.float64, order="C", ndmin=2)
        bias = np.array(intercept, dtype=np.float64, ndmin=1)
        coef.flags.writeable = False
        bias.flags.writeable = False
        self.objective = objective
        self.feature_names = tuple(feature_names)
        self.coefficients = coef
        self.intercept = bias
        self.classes = None if classes is None else tuple(classes)
        # Training means of the features: pred_contrib's reference point (None: not given).
        self.means = None if means is None else np.array(means, dtype=np.float64)
        self.categories: dict[int, tuple] = {}
        self._link = _LINKS[objective]

    @property
    def num_features(self) -> int:
        return self.coefficients.shape[1]

    @property
    def num_class(self) -> int:
        return self.coefficients.shape[0]

    def __repr__(self) -> str:
        return (
            f"LinearModel(objective={self.objective!r}, num_features={self.num_features}, "
            f"num_class={self.num_class})"
        )

    def __getstate__(self) -> dict:
        return dict(self.__dict__)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        # Pickle drops the read-only flag: restore it so a copy cannot be edited in place.
        self.coefficients.flags.writeable = False
        self.intercept.flags.writeable = False

    def predict(self, data, raw_score: bool = False, pred_leaf: bool = False, num_threads: int | None = None,
                pred_contrib: bool = False, means=None):
        """Score ``data`` like ``lightgbm.Booster.predict``.

        ``data``: a 2-D numpy array (columns in model order), a pyarrow Table/RecordBatch or a
        pandas DataFrame (columns by feature name). Returns float64 ``(n,)`` for regression and
        binary (the positive class probability), ``(n, num_class)`` otherwise; ``raw_score``
        returns the margins before the link. A NaN feature gives a NaN score. ``pred_leaf`` is
        refused: linear models have no leaves. ``pred_contrib``: coefficient x (value - mean) per
        feature then the bias, LightGBM's layout (engine/models/explain.py), with ``means`` or the
        artifact's; ``InputError`` when neither gives them.
        """
        if pred_leaf:
            raise InputError("pred_leaf is not available for linear models: they have no leaves", path="pred_leaf")
        X = to_matrix(data, self.feature_names, self.categories)
        if pred_contrib:
            from scoreline.engine.models.explain import linear_contributions

            return linear_contributions(X, self.coefficients, self.intercept, self.means if means is None else means,
                                        self.feature_names)
        return self.predict_matrix(X, raw_score=raw_score, num_threads=num_threads)

    def predict_matrix(self, X: np.ndarray, raw_score: bool = False, num_threads: int | None = None, out=None):
        """The hot path: score a C- or F-contiguous float64/float32 ``(n, num_features)`` matrix.

        ``out``: an optional C-contiguous float64 array of the result's shape to write into.
        ``num_threads``: ``None`` for all of Numba's threads (used only above the parallel
        threshold), 1 to stay on the calling thread.
        """
        if (
            X.ndim != 2
            or X.shape[1] != self.num_features
            or X.dtype not in (np.float64, np.float32)
            or not (X.flags.c_contiguous or X.flags.f_contiguous)
        ):
            # Checked even on the hot path: the kernel does no bounds checks, and a new dtype
            # would compile a new specialisation mid-request.
            raise InputError(
                f"expected a contiguous float64/float32 matrix of shape (rows, {self.num_features}), "
                f"got {X.dtype} {X.shape}"
            )
        n = X.shape[0]
        shape = (n,) if self.num_class == 1 else (n, self.num_class)
        if out is None:
            out = np.empty(shape, np.float64)
        elif out.shape != shape or out.dtype != np.float64 or not out.flags.c_contiguous:
            raise InputError(f"expected out to be a C-contiguous float64 array of shape {shape}", path="out")
        out2d = out.reshape(n, self.num_class)
        link = LINK_IDENTITY if raw_score else self._link
        if num_threads != 1 and n * self.num_features * self.num_class >= _PARALLEL_MIN_WORK:
            use_threads(num_threads)
            linear_predict_parallel(X, self.coefficients, self.intercept, link, 1.0, out2d)
        else:
            linear_predict(X, self.coefficients, self.intercept, link, 1.0, out2d)
        return out

    def to_file(self) -> LinearFile:
        """This model as a ``scoreline-linear`` file struct (floats round-trip exactly)."""
        rows = self.coefficients.tolist()
        single = self.objective in ("regression", "binary") and self.num_class == 1
        return LinearFile(
            format=FORMAT,
            version=VERSION,
            objective=self.objective,
            feature_names=list(self.feature_names),
            coefficients=rows[0] if single else rows,
            intercept=float(self.intercept[0]) if single else self.intercept.tolist(),
            classes=None if self.classes is None else list(self.classes),
            means=None if self.means is None else self.means.tolist(),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the model as a ``scoreline-linear`` JSON file (the registry's artifact)."""
        Path(path).write_bytes(_JSON_ENCODER.encode(self.to_file()))


def load_linear(path_or_estimator, *, feature_names=None) -> LinearModel:
    """Load a linear model.

    Parameters
    ----------
    path_or_estimator:
        A path to a ``scoreline-linear`` file (``.toml`` is read as TOML, anything else as JSON),
        JSON text, an already decoded mapping, or a fitted scikit-learn estimator
        (LinearRegression, Ridge, Lasso, ElasticNet and the other plain linear regressors,
        LogisticRegression binary or multinomial).
    feature_names:
        Names for an estimator fitted on a plain array (otherwise ``Column_0``, ``Column_1``, ...
        as LightGBM names them); must match ``feature_names_in_`` when the estimator has it.

    Raises
    ------
    ModelFormatError
        An ill-formed file (with the ``$.path`` of the bad field), an unsupported or unfitted
        estimator, inconsistent shapes, non-finite coefficients.
    """
    if isinstance(path_or_estimator, Mapping):
        return _from_file(_convert(path_or_estimator, "mapping"), "mapping")
    if isinstance(path_or_estimator, str) and path_or_estimator.lstrip().startswith("{"):
        return _from_file(_decode_json(path_or_estimator.encode(), "JSON text"), "JSON text")
    if isinstance(path_or_estimator, (str, os.PathLike)):
        return _from_path(Path(path_or_estimator))
    return _from_estimator(path_or_estimator, feature_names)


def _from_path(path: Path) -> LinearModel:
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"cannot read linear model file {source}: {exc.strerror}", path=source) from None
    if path.suffix.lower() == ".toml":
        try:
            document = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ModelFormatError(f"Ill-formed linear model {source}: not TOML: {exc}") from None
        return _from_file(_convert(document, source), source)
    return _from_file(_decode_json(raw, source), source)


def _decode_json(raw: bytes, source: str) -> LinearFile:
    try:
        return _JSON_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise _format_error(exc, source) from None
    except msgspec.DecodeError as exc:
        raise ModelFormatError(f"Ill-formed linear model {source}: not JSON: {exc}") from None


def _convert(document, source: str) -> LinearFile:
    try:
        return msgspec.convert(document, LinearFile, strict=True)
    except msgspec.ValidationError as exc:
        raise _format_error(exc, source) from None


def _format_error(exc: msgspec.ValidationError, source: str) -> ModelFormatError:
    text = str(exc)
    where = _AT.search(text)
    return ModelFormatError(f"Ill-formed linear model {source}: {text}", path=where.group(1) if where else "$")


def _from_file(doc: LinearFile, source: str) -> LinearModel:
    if doc.version != VERSION:
        raise ModelFormatError(
            f"Ill-formed linear model {source}: {FORMAT} version {doc.version} is not supported "
            f"(this build reads version {VERSION})",
            path="$.version",
        )
    rows = doc.coefficients
    nested = [isinstance(row, list) for row in rows]
    if any(nested) and not all(nested):
        bad = nested.index(not nested[0])
        raise ModelFormatError(
            f"Ill-formed linear model {source}: coefficients mix numbers and lists; expected a list "
            "of numbers (one output) or a list of lists (one per output)",
            path=f"$.coefficients[{bad}]",
        )
    if rows and nested[0]:
        width = len(rows[0])
        for k, row in enumerate(rows):
            if len(row) != width:
                raise ModelFormatError(
                    f"Ill-formed linear model {source}: coefficient row {k} has {len(row)} values, "
                    f"row 0 has {width}",
                    path=f"$.coefficients[{k}]",
                )
        coef = np.array(rows, dtype=np.float64).reshape(len(rows), width)
    else:
        coef = np.array(rows, dtype=np.float64).reshape(1, len(rows))
    intercept = np.array(doc.intercept, dtype=np.float64, ndmin=1)
    classes = None if doc.classes is None else tuple(doc.classes)
    model = _build(doc.objective, doc.feature_names, coef, intercept, classes, source, "$", bool(rows) and nested[0])
    if doc.means is not None:
        if len(doc.means) != len(doc.feature_names) or not np.isfinite(doc.means).all():
            raise ModelFormatError(f"Ill-formed linear model {source}: expected {len(doc.feature_names)} finite "
                                   f"means, one per feature", path="$.means")
        model.means = np.array(doc.means, dtype=np.float64)
    return model


def _build(objective, names, coef, intercept, classes, source, root, nested) -> LinearModel:
    """Check shapes, names and finiteness, then make the model."""

    def fail(message: str, path: str) -> ModelFormatError:
        return ModelFormatError(f"Ill-formed linear model {source}: {message}", path=path)

    # Paths name the file's fields ($.coefficients[2][5]) or the estimator's (coef_[2][5]).
    coef_path, intercept_path = ("$.coefficients", "$.intercept") if root == "$" else ("coef_", "intercept_")
    names_path = "$.feature_names" if root == "$" else "feature_names"

    outputs, width = coef.shape
    if width == 0:
        raise fail("no coefficients", coef_path)
    if len(names) != width:
        raise fail(f"{len(names)} feature names for {width} coefficients per output", names_path)
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise fail(f"feature name {i} is {name!r}, expected a non-empty string", f"{names_path}[{i}]")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise fail(f"feature name {name!r} appears twice (at {seen[name]} and {i})", f"{names_path}[{i}]")
        seen[name] = i
    if objective in ("binary",) and outputs != 1:
        raise fail(f"a binary model has one row of coefficients, got {outputs}", coef_path)
    if objective in ("multiclass", "multiclassova") and outputs < 2:
        raise fail(f"a {objective} model needs a row of coefficients per class (2 or more), got {outputs}", coef_path)
    if intercept.shape != (outputs,):
        raise fail(f"expected {outputs} intercept value(s), got {intercept.size}", intercept_path)
    expected_classes = {"regression": 0, "binary": 2}.get(objective, outputs)
    if classes is not None and len(classes) != expected_classes:
        raise fail(f"{len(classes)} class labels for a {objective} model with {outputs} output(s)", "$.classes")
    bad = np.argwhere(~np.isfinite(coef))
    if bad.size:
        k, j = bad[0]
        where = f"{coef_path}[{k}][{j}]" if nested else f"{coef_path}[{j}]"
        raise fail(f"coefficient {coef[k, j]} is not finite", where)
    bad = np.flatnonzero(~np.isfinite(intercept))
    if bad.size:
        raise fail(f"intercept {intercept[bad[0]]} is not finite", intercept_path)
    return LinearModel(objective, names, coef, intercept, classes)


def _from_estimator(estimator, feature_names) -> LinearModel:
    kind = type(estimator)
    name = kind.__name__
    source = f"{kind.__module__}.{name}"
    if not kind.__module__.startswith("sklearn.") or name not in _SKLEARN_REGRESSORS | _SKLEARN_CLASSIFIERS:
        supported = ", ".join(sorted(_SKLEARN_REGRESSORS | _SKLEARN_CLASSIFIERS))
        raise ModelFormatError(
            f"cannot read a linear model from {type(estimator).__module__}.{name}: expected a path, "
            f"JSON text, a mapping or a fitted scikit-learn estimator ({supported})"
        )
    if not hasattr(estimator, "coef_"):
        raise ModelFormatError(f"the {name} estimator is not fitted (it has no coef_)", path="coef_")
    coef = np.asarray(estimator.coef_, dtype=np.float64)
    intercept = np.array(estimator.intercept_, dtype=np.float64, ndmin=1)
    width = coef.shape[-1]
    names = _estimator_names(estimator, feature_names, width, name)
    if name in _SKLEARN_CLASSIFIERS:
        classes = tuple(np.asarray(estimator.classes_).tolist())
        objective = "binary" if len(classes) == 2 else "multiclass"
        coef = coef.reshape(-1, width)
    else:
        classes = None
        objective = "regression"
        coef = coef.reshape(-1, width)
        if intercept.size == 1 and coef.shape[0] > 1:
            intercept = np.full(coef.shape[0], intercept[0])  # fit_intercept=False stores 0.0
    nested = np.ndim(estimator.coef_) == 2
    return _build(objective, names, coef, intercept, classes, source, "estimator", nested)


def _estimator_names(estimator, feature_names, width: int, name: str) -> tuple[str, ...]:
    fitted = getattr(estimator, "feature_names_in_", None)
    fitted = None if fitted is None else tuple(str(x) for x in fitted)
    given = None if feature_names is None else tuple(feature_names)
    if given is not None and fitted is not None and given != fitted:
        raise ModelFormatError(
            f"feature_names {list(given)} differ from the {name} estimator's feature_names_in_ {list(fitted)}",
            path="feature_names",
        )
    names = given or fitted
    return names if names is not None else tuple(f"Column_{j}" for j in range(width))
