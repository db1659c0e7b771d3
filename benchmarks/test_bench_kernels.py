"""Tree-kernel benchmarks: scoreline vs lightgbm.Booster.predict(num_threads=1), side by side.

Models are generated (random leaf-wise trees written in LightGBM's text format, the way lleaves
benchmarks), so no training is needed: 100 x 31 leaves, 500 x 63 with categorical splits,
1000 x 255. With ``--benchmark-disable`` every case still runs once and checks that both engines
agree, so this file doubles as a correctness test on big models.

    .venv/bin/python -m pytest benchmarks/test_bench_kernels.py --benchmark-group-by=param:size
"""

from __future__ import annotations

import heapq

import numpy as np
import pytest

import scoreline

lgb = pytest.importorskip("lightgbm")
pytest.importorskip("pytest_benchmark")

SIZES = {
    # name: (trees, leaves, features, categorical features, objective)
    "100x31": (100, 31, 28, 0, "binary"),
    "500x63-cat": (500, 63, 30, 5, "binary"),
    "1000x255": (1000, 255, 50, 0, "regression"),
}
# The bulk batch per size: about a second of LightGBM's time on one core, so a benchmark round
# stays short while the batch is far beyond the parallel threshold.
LARGE = {"100x31": 100_000, "500x63-cat": 20_000, "1000x255": 4_000}
BATCHES = [1, 16, 256, "large"]
# Distinct tree shapes generated per model; further trees reuse them with new leaf values
# (the records are still separate in memory), which keeps generating 1000 x 255 to seconds.
SHAPES = 100
NUM_CATEGORIES = 32


def generate_model(trees: int, leaves: int, features: int, categorical: int, objective: str, seed: int = 0) -> str:
    """A LightGBM v4 text model grown like LightGBM grows trees, without training.

    Each tree is grown leaf-wise on a sample of ``generate_rows``: the leaf holding the most
    sample rows splits next, on a random feature, at a random quantile of its rows (a random
    subset of the categories present for a categorical feature). Paths then have the depths
    trained models show (~7 splits per row for 31 leaves), in milliseconds instead of minutes.
    Features 0..categorical-1 hold integer categories; the rest are standard normal.
    """
    rng = np.random.default_rng(seed)
    sample = generate_rows(1024, features, categorical, seed=seed + 100)
    out = [
        "tree", "version=v4", "num_class=1", "num_tree_per_iteration=1", "label_index=0",
        f"max_feature_idx={features - 1}",
        f"objective={objective}" + (" sigmoid:1" if objective == "binary" else ""),
        "feature_names=" + " ".join(f"f{i}" for i in range(features)),
        "feature_infos=" + " ".join(["0:1:2"] * categorical + ["[-5:5]"] * (features - categorical)),
        "",
    ]
    shapes = []
    for t in range(trees):
        if t >= SHAPES:
            shape = shapes[t % SHAPES]
            values = " ".join(repr(float(v)) for v in np.round(rng.normal(scale=0.1, size=leaves), 8))
            out += [f"Tree={t}"] + shape[1:8] + [f"leaf_value={values}"] + shape[9:]
            continue
        left, right, feature, threshold, decision, cats = [], [], [], [], [], []
        members = {0: np.arange(len(sample))}  # leaf -> sample rows that reach it
        parent_slot = {0: None}  # leaf -> (node, side) that points at it
        biggest = [(-len(sample), 0.0, 0)]  # heap of (-rows, tie-break, leaf)
        for node in range(leaves - 1):
            leaf = heapq.heappop(biggest)[2]
            rows = members[leaf]
            f = int(rng.integers(features))
            values = sample[rows, f]
            seen = values[~np.isnan(values)]
            if f < categorical:
                present = np.unique(seen).astype(np.int64) if seen.size else np.array([0])
                chosen = rng.choice(present, size=max(1, len(present) // 2), replace=False)
                bits = np.zeros(NUM_CATEGORIES // 32 + 1, dtype=np.uint64)
                for c in chosen:
                    bits[c // 32] |= np.uint64(1) << np.uint64(c % 32)
                threshold.append(str(len(cats)))
                cats.append(bits)
                decision.append("1")
                go_left = np.isin(values, chosen)
            else:
                cut = float(np.quantile(seen, rng.uniform(0.2, 0.8))) if seen.size else 0.0
                threshold.append(repr(cut))
                kind = int(rng.choice([0, 2, 8, 10]))  # missing None or NaN, either default side
                decision.append(str(kind))
                nan_left = (kind & 2 == 2) if kind >= 8 else (0.0 <= cut)
                go_left = np.where(np.isnan(values), nan_left, values <= cut)
            slot = parent_slot[leaf]
            if slot is not None:
                (left if slot[1] == 0 else right)[slot[0]] = node
            new_leaf = node + 1
            left.append(~leaf)
            right.append(~new_leaf)
            parent_slot[leaf] = (node, 0)
            parent_slot[new_leaf] = (node, 1)
            feature.append(f)
            members[leaf], members[new_leaf] = rows[go_left], rows[~go_left]
            heapq.heappush(biggest, (-len(members[leaf]), rng.random(), leaf))
            heapq.heappush(biggest, (-len(members[new_leaf]), rng.random(), new_leaf))
        values = " ".join(repr(float(v)) for v in np.round(rng.normal(scale=0.1, size=leaves), 8))
        block = [
            f"Tree={t}", f"num_leaves={leaves}", f"num_cat={len(cats)}",
            "split_feature=" + " ".join(map(str, feature)), "threshold=" + " ".join(threshold),
            "decision_type=" + " ".join(decision), "left_child=" + " ".join(map(str, left)),
            "right_child=" + " ".join(map(str, right)), f"leaf_value={values}",
        ]
        if cats:
            words = np.concatenate(cats)
            block += ["cat_boundaries=" + " ".join(str(i * len(cats[0])) for i in range(len(cats) + 1)),
                      "cat_threshold=" + " ".join(str(int(w)) for w in words)]
        block += ["is_linear=0", "shrinkage=1", "", ""]
        shapes.append(block)
        out += block
    out += ["end of trees", "", "pandas_categorical:null", ""]
    return "\n".join(out)


def generate_rows(n: int, features: int, categorical: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features))
    X[:, :categorical] = rng.integers(0, NUM_CATEGORIES + 4, size=(n, categorical))  # some unseen
    X[rng.random(X.shape) < 0.02] = np.nan
    return X


@pytest.fixture(scope="module", params=list(SIZES), ids=lambda s: f"size={s}")
def case(request, tmp_path_factory):
    name = request.param
    trees, leaves, features, categorical, objective = SIZES[name]
    cache = tmp_path_factory.getbasetemp().parent / "scoreline-bench-models"
    cache.mkdir(exist_ok=True)
    path = cache / f"{name}.txt"
    if not path.exists():
        path.write_text(generate_model(trees, leaves, features, categorical, objective))
    text = path.read_text()
    X = generate_rows(LARGE[name], features, categorical)
    return name, scoreline.load_lightgbm(text), lgb.Booster(model_str=text), X


# One thread for every batch size; all threads for the bulk batch only.
RUNS = [(engine, batch) for batch in BATCHES for engine in ("scoreline", "lightgbm")] + [
    ("scoreline-all-threads", "large"),
    ("lightgbm-all-threads", "large"),
]


@pytest.mark.benchmark(max_time=0.3)  # short rounds: this file also runs inside the test suite
@pytest.mark.parametrize(("engine", "batch"), RUNS, ids=[f"{e}-batch={b}" for e, b in RUNS])
def test_bulk_prediction(benchmark, case, engine, batch):
    name, model, booster, X = case
    large = batch == "large"
    batch = LARGE[name] if large else batch
    rows = np.ascontiguousarray(X[:batch])
    threads = None if engine.endswith("all-threads") else 1
    benchmark.group = f"{name} batch={batch}"
    if engine.startswith("scoreline"):
        call, kwargs = model.predict_matrix, {"num_threads": threads}
        expected = booster.predict(rows, num_threads=1)
    else:
        call, kwargs = booster.predict, {"num_threads": threads or 0}
        expected = model.predict(rows, num_threads=1)
    if large:  # ~1 s per LightGBM round: a few rounds are enough
        result = benchmark.pedantic(call, args=(rows,), kwargs=kwargs, rounds=3, iterations=1)
    else:
        result = benchmark(call, rows, **kwargs)
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=0)
