"""Benchmark models and rows: LightGBM models trained once and cached under .cache/bench-models.

A `ModelSpec` names a model by what matters for speed (trees, leaves, features, classes,
categorical features) or by the bundled real dataset it is trained on (benchmarks/suite/datasets.py); `build(spec, cache)` returns a
`BenchModel` with the model file's path and a `rows(n)` function giving the same float64 rows to
every engine (saved as .npy so peers in other processes read the very same bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from benchmarks.suite import datasets

__all__ = ["ModelSpec", "BenchModel", "KERNEL_MODELS", "build", "tiny_spec", "leaf_depths"]

# Bump when the generating code changes in a way that changes the models.
_RECIPE = 1


@dataclass(frozen=True)
class ModelSpec:
    """What to train. `dataset` is None for generated data, else a key of datasets.SOURCES."""

    name: str
    objective: str  # "binary" | "regression" | "multiclass" | "poisson"
    num_trees: int  # boosting rounds (multiclass: trees per class)
    num_leaves: int
    num_features: int = 0  # generated data only; a real dataset has its own
    num_class: int = 1
    categorical: int = 0  # how many of the features are categorical (generated data only)
    dataset: str | None = None  # "breast_cancer", "diabetes", "flights", ... (datasets.SOURCES)
    # How benchmark rows are drawn from a real dataset (its held-out rows; a small dataset's every
    # row): "whole" rows resampled (a small dataset's with a little jitter on half of them; the
    # branch predictor can learn repeated rows, which flatters branchy code) or "columns"
    # resampled independently (every row new to the branch predictor).
    rows: str = "whole"
    train_rows: int = 20_000
    in_quick: bool = True  # included in `scoreline bench --quick`
    note: str = ""
    # The model whose file (and peers' compiled builds) this one shares: a column-resampled twin
    # is the very same model, and training flights' 300 trees took 222 s here.
    trained_as: str = ""

    def digest(self) -> str:
        fields = {**asdict(self), "recipe": _RECIPE, "in_quick": None, "note": None}
        del fields["trained_as"]
        if self.rows == "whole":
            del fields["rows"]  # the digest every cached model and row file had before "rows" existed
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def trained(self) -> ModelSpec:
        """The spec that names the model file: the whole-rows twin's, for a column-resampled one."""
        return replace(self, name=self.trained_as, rows="whole", trained_as="") if self.trained_as else self


def _real(name: str, objective: str, num_trees: int, num_leaves: int, dataset: str,
          in_quick: bool = False) -> tuple[ModelSpec, ModelSpec]:
    """A model trained on a real dataset, twice: benchmark rows resampled whole, and with each
    column resampled independently (the same model file, under another name)."""
    about = datasets.SOURCES[dataset].about
    return (ModelSpec(name, objective, num_trees, num_leaves, dataset=dataset, in_quick=in_quick,
                      note=f"{about}, whole rows"),
            ModelSpec(f"{name}-cols", objective, num_trees, num_leaves, dataset=dataset, rows="columns",
                      in_quick=in_quick, note="the same model; benchmark rows with each column resampled independently",
                      trained_as=name))


# The models of the issue: three generated sizes, a multiclass model, and real models trained on
# datasets bundled by installed packages (no download at run time): scikit-learn's two small ones,
# then larger ones from the optional bench-data extra, picked for variety: many rows with
# categorical features (flights), many features (grants: 1,502), few numeric features with many
# rows (diamonds), a count model (randhie, Poisson: the exp link). Their benchmark rows come from
# the 20% of rows held out of training (datasets.HOLDOUT).
KERNEL_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("gen-100x31", "binary", 100, 31, num_features=28),
    ModelSpec("gen-500x63-cat", "binary", 500, 63, num_features=30, categorical=5, in_quick=False),
    ModelSpec("gen-1000x255", "regression", 1000, 255, num_features=50, train_rows=30_000),
    ModelSpec("gen-multiclass-5x100x31", "multiclass", 100, 31, num_features=20, num_class=5),
    ModelSpec("gen-5-features-100x31", "regression", 100, 31, num_features=5, in_quick=False,
              note="few features: rows leave each tree after a few predictable branches (walking code wins)"),
    *_real("real-breast-cancer", "binary", 200, 15, "breast_cancer", in_quick=True),
    *_real("real-diabetes", "regression", 200, 15, "diabetes"),
    *_real("real-flights", "binary", 300, 63, "flights"),
    *_real("real-grants", "binary", 200, 31, "grants"),
    *_real("real-diamonds", "regression", 200, 63, "diamonds"),
    *_real("real-randhie", "poisson", 200, 31, "randhie"),
)


def tiny_spec() -> ModelSpec:
    """A model that trains in well under a second: for tests of the suite's plumbing."""
    return ModelSpec("tiny-10x7", "binary", 10, 7, num_features=6, categorical=1, train_rows=2_000)


@dataclass
class BenchModel:
    """A trained model on disk plus the rows every engine scores."""

    spec: ModelSpec
    path: Path  # LightGBM text model
    cache: Path
    num_features: int
    categorical_features: tuple[int, ...]
    stats: dict = field(default_factory=dict)  # trees, mean leaves, mean leaf depth

    @property
    def name(self) -> str:
        return self.spec.name

    def rows(self, n: int) -> np.ndarray:
        """n rows (C-contiguous float64, 1% NaN), cached as .npy so peers in other processes
        score the very same bytes; any n rows are a prefix of a larger draw."""
        path = self.rows_path(n)
        if not path.exists():
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, np.ascontiguousarray(_sample_rows(self, n)))
            os.replace(tmp, path)
        return np.load(path)

    def rows_path(self, n: int) -> Path:
        return self.cache / f"{self.spec.name}-{self.spec.digest()}-rows{n}.npy"


def build(spec: ModelSpec, cache: Path) -> BenchModel:
    """Train `spec` (or reuse the cached model file) and return it; LightGBM is needed only to train.
    Raises datasets.Missing when the package bundling the model's dataset is not installed."""
    if spec.dataset is not None:
        datasets.require(spec.dataset)  # before any work: its rows are drawn from the dataset too
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{spec.trained.name}-{spec.trained.digest()}.txt"
    meta_path = path.with_suffix(".json")
    if not (path.exists() and meta_path.exists()):
        X, y, cats = _training_data(spec)
        text = _train(spec, X, y, cats, min_data_in_leaf=5 if spec.dataset and X.shape[0] < 1000 else 20)
        stats = _structure_stats(text)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        tmp.write_text(json.dumps({"num_features": X.shape[1], "categorical": cats, "stats": stats}))
        os.replace(tmp, meta_path)
    meta = json.loads(meta_path.read_text())
    return BenchModel(spec, path, cache, meta["num_features"], tuple(meta["categorical"]), meta["stats"])


def _training_data(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray, list[int]]:
    if spec.dataset is not None:
        data = datasets.load(spec.dataset)
        X, y = data.train
        return np.ascontiguousarray(X), y, list(data.categorical)
    rng = np.random.default_rng(20_260_127)
    X = _generated_features(spec, rng, spec.train_rows)
    cats = list(range(spec.num_features - spec.categorical, spec.num_features))
    # A smooth signal with interactions plus per-category offsets, so the trees grow deep and
    # the categorical splits carry weight.
    w = rng.normal(size=spec.num_features)
    Z = np.nan_to_num(X[:, : spec.num_features - spec.categorical])
    signal = np.sin(Z[:, :8].sum(axis=1)) + Z @ w[: Z.shape[1]] * 0.3 + Z[:, 0] * Z[:, 1]
    for c in cats:
        offsets = rng.normal(size=_cardinality(c))
        codes = np.nan_to_num(X[:, c], nan=0).astype(int)
        signal = signal + offsets[codes]
    noise = rng.normal(scale=0.5, size=spec.train_rows)
    if spec.objective == "regression":
        y = signal + noise
    elif spec.objective == "binary":
        y = (signal + noise > np.median(signal)).astype(np.float64)
    else:
        y = np.digitize(signal + noise, np.quantile(signal, np.linspace(0, 1, spec.num_class + 1)[1:-1]))
        y = y.astype(np.float64)
    return X, y, cats


def _cardinality(feature: int) -> int:
    return (10, 30, 100)[feature % 3]


def _generated_features(spec: ModelSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    """Standard normal numeric features, integer-coded categorical ones, 1% missing values."""
    X = rng.normal(size=(n, spec.num_features))
    for c in range(spec.num_features - spec.categorical, spec.num_features):
        X[:, c] = rng.integers(0, _cardinality(c), size=n)
    X[rng.random(size=X.shape) < 0.01] = np.nan
    return X


def _train(spec: ModelSpec, X: np.ndarray, y: np.ndarray, cats: list[int], min_data_in_leaf: int) -> str:
    import lightgbm as lgb

    params = {
        "objective": spec.objective,
        "num_leaves": spec.num_leaves,
        "learning_rate": 0.05,
        "min_data_in_leaf": min_data_in_leaf,
        "max_bin": 255,
        "verbose": -1,
        "num_threads": 2,
        "seed": 7,
        "deterministic": True,
    }
    if spec.num_class > 1:
        params["num_class"] = spec.num_class
    data = lgb.Dataset(X, y, categorical_feature=cats or "auto", free_raw_data=False)
    booster = lgb.train(params, data, num_boost_round=spec.num_trees)
    return booster.model_to_string()


# Benchmark rows are drawn in chunks with a seed per chunk, so any n rows are a prefix of any
# larger draw: a 10k-row run and a 1M-row run score the same first 10k rows.
_CHUNK = 10_000


def _sample_rows(model: BenchModel, n: int) -> np.ndarray:
    spec = model.spec
    base, small = None, False
    if spec.dataset is not None:
        data = datasets.load(spec.dataset)
        base, small = data.bench_rows, data.holdout == 0
    chunks = []
    for i in range(-(-n // _CHUNK)):
        rng = np.random.default_rng([12_345, i])
        if base is None:
            chunks.append(_generated_features(spec, rng, _CHUNK))
            continue
        if spec.rows == "columns":
            chunks.append(np.column_stack([base[rng.integers(0, base.shape[0], size=_CHUNK), j]
                                           for j in range(base.shape[1])]))
            continue
        out = base[rng.integers(0, base.shape[0], size=_CHUNK)]
        if not small:
            chunks.append(out)  # thousands of held-out rows, categorical codes among them: no jitter
            continue
        # A small dataset has a few hundred rows: jitter half of them so a batch is not the same
        # few hundred rows over and over (cache effects would flatter).
        jitter = rng.normal(scale=0.01, size=out.shape) * np.abs(base).mean(axis=0)
        out[::2] += jitter[::2]
        chunks.append(out)
    return np.concatenate(chunks)[:n]


def leaf_depths(text: str) -> list[np.ndarray]:
    """For each tree in a LightGBM model text, the depth of each leaf (by leaf index).

    With LightGBM's pred_leaf this gives the node visits a row makes: the sum over trees of the
    depth of the leaf it reaches (a single-leaf tree costs no visit).
    """
    out = []
    for block in text.split("\nTree=")[1:]:
        fields = dict(line.split("=", 1) for line in block.splitlines()[1:] if "=" in line)
        if "num_leaves" not in fields:
            continue
        depths = np.zeros(int(fields["num_leaves"]), dtype=np.int64)
        if depths.size > 1:
            left = [int(v) for v in fields["left_child"].split()]
            right = [int(v) for v in fields["right_child"].split()]
            stack = [(0, 0)]
            while stack:
                node, d = stack.pop()
                for child in (left[node], right[node]):
                    if child < 0:
                        depths[~child] = d + 1
                    else:
                        stack.append((child, d + 1))
        out.append(depths)
    return out


def _structure_stats(text: str) -> dict:
    """Trees, mean leaves per tree and mean (unweighted) leaf depth, read from the model text."""
    depths = leaf_depths(text)
    trees = len(depths)
    return {
        "trees": trees,
        "mean_leaves": sum(d.size for d in depths) / max(trees, 1),
        "mean_leaf_depth": sum(float(d.mean()) for d in depths) / max(trees, 1),
    }
