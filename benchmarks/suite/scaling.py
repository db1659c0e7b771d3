"""Scaling section: how Scoreline's cost per row grows with trees, leaves (depth), features and batch size.

Each point is timed against LightGBM in the same rounds (pairwise ratio), on one thread. The node
visits a row makes (sum over trees of the depth of the leaf it reaches, from LightGBM's pred_leaf)
are counted for every model, and Scoreline's cost per visit is summarised across the sweeps, so a
user can predict the cost of their own model from its shape.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from benchmarks.suite import models as bench_models
from benchmarks.suite.kernels import agreement, pairwise_ratio
from benchmarks.suite.peers import Context, Unavailable, make

__all__ = ["run_scaling", "node_visits"]

_TREES = bench_models.ModelSpec("scale-trees-800x31", "regression", 800, 31, num_features=20)
_TREE_COUNTS = {True: (50, 200, 800), False: (25, 50, 100, 200, 400, 800)}
_LEAVES = {True: (7, 31, 255), False: (7, 15, 31, 63, 127, 255)}
_FEATURES = {True: (5, 100), False: (5, 20, 100, 400)}
_BATCHES = {True: (1, 16, 256, 4096), False: (1, 4, 16, 64, 256, 1024, 4096, 16384)}


def node_visits(model_text: str, leaf_index: np.ndarray) -> float:
    """Mean node visits per row, given LightGBM's pred_leaf output (rows x trees) for the model."""
    depths = bench_models.leaf_depths(model_text)
    leaf_index = np.asarray(leaf_index, dtype=np.int64).reshape(leaf_index.shape[0], -1)
    total = np.zeros(leaf_index.shape[0])
    for t, d in enumerate(depths):
        total += d[leaf_index[:, t]]
    return float(total.mean())


def run_scaling(cfg, log) -> dict:
    ctx = Context(cache=cfg.cache, peers_dir=cfg.peers_dir, fresh_process_loads=False)
    try:
        engines = {name: make(name, ctx) for name in ("scoreline", "lightgbm")}
    except Unavailable as exc:
        cfg.skip(f"scaling: section skipped: {exc}")
        return {"status": str(exc)}
    quick = cfg.quick or not cfg.timing
    rows = 500 if not cfg.timing else (20_000 if cfg.quick else 100_000)
    points: list[dict] = []
    cache = cfg.cache / "bench-models"

    base = bench_models.build(_TREES, cache)
    text = base.path.read_text()
    for k in _TREE_COUNTS[quick]:
        points += _point(cfg, log, engines, _truncated(base, text, k), "trees", k, rows)
    for leaves in _LEAVES[quick]:
        spec = bench_models.ModelSpec(f"scale-leaves-100x{leaves}", "regression", 100, leaves, num_features=20)
        points += _point(cfg, log, engines, bench_models.build(spec, cache), "leaves", leaves, rows)
    for features in _FEATURES[quick]:
        spec = bench_models.ModelSpec(f"scale-features-100x31x{features}", "regression", 100, 31, num_features=features)
        points += _point(cfg, log, engines, bench_models.build(spec, cache), "features", features, rows)
    batch_model = bench_models.build(bench_models.KERNEL_MODELS[0], cache)
    for batch in _BATCHES[quick]:
        points += _point(cfg, log, engines, batch_model, "batch", batch, max(rows, 4 * batch), batch=batch)
    for engine in engines.values():
        engine.close()
    return _summarise(points)


def _truncated(base, text: str, trees: int):
    """The first `trees` boosting rounds of `base`, as its own model file (same rows)."""
    import lightgbm as lgb

    path = base.path.with_name(f"{base.path.stem}-first{trees}.txt")
    if not path.exists():
        path.write_text(lgb.Booster(model_str=text).model_to_string(num_iteration=trees))
    depths = bench_models.leaf_depths(path.read_text())
    stats = {"trees": len(depths), "mean_leaves": float(np.mean([d.size for d in depths])),
             "mean_leaf_depth": float(np.mean([d.mean() for d in depths]))}
    return dataclasses.replace(base, path=path, stats=stats)


def _point(cfg, log, engines, model, sweep, x, rows, batch=None) -> list[dict]:
    log(f"scaling: {sweep} = {x}")
    X = model.rows(rows)
    path = model.rows_path(rows)
    for engine in engines.values():
        engine.load(model)
    check = X[:200]
    verdict = agreement(engines["scoreline"].predict(check, 1), engines["lightgbm"].predict(check, 1), True)
    if verdict["status"] != "exact":
        cfg.skip(f"scaling: point {sweep}={x} not timed: Scoreline DISAGREES with LightGBM "
                 f"(max abs diff {verdict['max_abs']})")
        return []
    booster = engines["lightgbm"].booster
    visits = node_visits(booster.model_to_string(), booster.predict(X[:2000], pred_leaf=True, num_threads=1))
    per_round = {name: [] for name in engines}
    names = list(engines)
    for r in range(cfg.rounds):
        for name in names[r % 2:] + names[: r % 2]:
            e = engines[name]
            if batch is None:
                secs = e.time_bulk(X, path, 1, 1)[0]
                per_round[name].append(secs / X.shape[0] * 1e9)
            else:
                ns = e.time_calls(X, path, batch, 1, cfg.budget_s, cfg.fixed_calls)
                per_round[name].append(float(np.median(ns)) / batch)
    out = []
    for name, series in per_round.items():
        ns_row = float(np.median(series))
        out.append({
            "sweep": sweep, "x": x, "engine": name, "ns_per_row": ns_row, "visits_per_row": visits,
            "ns_per_visit": ns_row / visits if visits else None,
            "round_ns_per_row": series, "trees": model.stats["trees"],
            "mean_leaves": model.stats["mean_leaves"], "features": model.num_features,
        })
    return out


def _summarise(points: list[dict]) -> dict:
    tables = {}
    by = {(p["sweep"], p["x"], p["engine"]): p for p in points}
    for sweep in dict.fromkeys(p["sweep"] for p in points):
        rows = []
        for x in dict.fromkeys(p["x"] for p in points if p["sweep"] == sweep):
            ours, lgb = by.get((sweep, x, "scoreline")), by.get((sweep, x, "lightgbm"))
            if ours is None:
                continue
            rows.append({
                sweep: x, "trees": ours["trees"], "visits/row": round(ours["visits_per_row"], 1),
                "scoreline ns/row": ours["ns_per_row"], "lightgbm ns/row": lgb["ns_per_row"] if lgb else None,
                "scoreline ns/visit": ours["ns_per_visit"],
                "speed vs LightGBM": 1 / pairwise_ratio(ours["round_ns_per_row"], lgb["round_ns_per_row"]) if lgb else None,
            })
        tables[f"Cost vs {sweep} (one thread)"] = rows
    notes = []
    fit = None
    per_visit = [p for p in points if p["engine"] == "scoreline" and p["sweep"] != "batch" and p["ns_per_visit"]]
    if per_visit:
        # A line with an intercept fitted across sweeps goes negative (the 800-tree point costs more
        # per visit: its nodes leave the cache), so the cost per visit is given with its range.
        costs = np.array([p["ns_per_visit"] for p in per_visit])
        lo = min(per_visit, key=lambda p: p["ns_per_visit"])
        hi = max(per_visit, key=lambda p: p["ns_per_visit"])
        fit = {"ns_per_visit_median": float(np.median(costs)), "min": lo["ns_per_visit"], "max": hi["ns_per_visit"],
               "points": len(per_visit)}
        notes.append(
            f"Predict a model's single-thread bulk cost: about {np.median(costs):.1f} ns per node visit "
            f"(median of {len(per_visit)} models; {lo['ns_per_visit']:.1f} ns at {lo['sweep']}={lo['x']} to "
            f"{hi['ns_per_visit']:.1f} ns at {hi['sweep']}={hi['x']}), where a row's visits ~ trees x the mean "
            "depth of the leaves it reaches. Small batches add the call overhead: see the batch sweep."
        )
    return {"points": points, "fit": fit, "tables": tables, "notes": notes}
