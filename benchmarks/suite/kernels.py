"""Kernels section: Scoreline vs each peer on the same models and rows, agreement first, then timing.

For each model: load every engine (cold and warm), check each engine's predictions against
LightGBM's on the same rows, then time only the engines that agree, interleaved round by round
(the order rotates each round, so drift on a shared machine hits every engine alike). Ratios are
computed pair by pair within a round, then the median over rounds is reported.
"""

from __future__ import annotations

import os
import time
import numpy as np

from benchmarks.suite import models as bench_models
from benchmarks.suite.datasets import Missing
from benchmarks.suite.peers import Context, Unavailable, make

__all__ = ["run_kernels", "agreement", "pairwise_ratio", "default_threads", "EXACT_RTOL", "EXACT_ATOL"]

# "Exact" means float64 all the way: the bar for Scoreline is 1e-12 relative; peers that
# sum in another order may differ in the last bits, so the flag trips only well above that.
EXACT_RTOL = 1e-9
EXACT_ATOL = 1e-12


def agreement(pred: np.ndarray, ref: np.ndarray, exact: bool) -> dict:
    """Max abs/rel difference to the reference and the verdict: exact, approx (float32) or DISAGREES."""
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        return {"status": "DISAGREES", "max_abs": None, "max_rel": None,
                "why": f"shape {pred.shape} != LightGBM's {ref.shape}"}
    same_nan = np.isnan(pred) == np.isnan(ref)
    diff = np.abs(np.nan_to_num(pred - ref))
    rel = diff / np.maximum(np.abs(np.nan_to_num(ref)), 1e-300)
    out = {"max_abs": float(diff.max(initial=0.0)), "max_rel": float(rel.max(initial=0.0))}
    within = bool(same_nan.all() and np.all(diff <= EXACT_ATOL + EXACT_RTOL * np.abs(np.nan_to_num(ref))))
    if within:
        out["status"] = "exact"
    elif not exact and same_nan.all():
        out["status"] = "approx"  # a float32 engine: reported with its difference, not counted as exact
    else:
        out["status"] = "DISAGREES"
        out["why"] = "NaN pattern differs" if not same_nan.all() else "difference above float64 tolerance"
    return out


def _agreement_rows(model, X: np.ndarray, n: int) -> np.ndarray:
    """The first n benchmark rows plus an all-missing row and an all-zero row (missing-value paths)."""
    edge = np.vstack([np.full(model.num_features, np.nan), np.zeros(model.num_features)])
    return np.ascontiguousarray(np.vstack([X[:n], edge]))


def run_kernels(cfg, log) -> dict:
    """Run the kernels section for every model in cfg.models; returns its part of the results."""
    ctx = Context(cache=cfg.cache, peers_dir=cfg.peers_dir, compile_leaf_limit=cfg.compile_leaf_limit,
                  fresh_process_loads=cfg.timing, cold_every_model=not cfg.quick)
    result = {"models": [], "load": [], "agreement": [], "latency": [], "throughput": []}
    engines = {}
    for name in cfg.engines:
        try:
            engines[name] = make(name, ctx)
        except Unavailable as exc:
            cfg.skip(f"kernels: {name} skipped on every model: {exc}")
    if "scoreline" not in engines or "lightgbm" not in engines:
        cfg.skip("kernels: section skipped: it needs both scoreline and lightgbm (see the lines above)")
        return result
    try:
        for spec in cfg.models:
            _run_model(cfg, log, spec, engines, result)
    finally:
        for engine in engines.values():
            engine.close()
    return result


def _run_model(cfg, log, spec, engines, result) -> None:
    try:
        model = bench_models.build(spec, cfg.cache / "bench-models")
    except Missing as exc:
        cfg.skip(f"kernels: {spec.name} skipped: {exc}")
        return
    visits = model.stats["trees"] * model.stats["mean_leaf_depth"]  # estimate, before any predict
    bulk_sizes = cfg.bulk_sizes(visits, model.num_features)
    for n in sorted(set(cfg.bulk_rows) - set(bulk_sizes)):
        cfg.skip(f"kernels: {model.name} at {n:,} rows skipped: {cfg.over_caps(n, visits, model.num_features)}")
    max_rows = max(bulk_sizes + (cfg.agreement_rows,))
    path = model.rows_path(max_rows)
    X = model.rows(max_rows)
    result["models"].append({
        "model": model.name, "objective": spec.objective, "num_class": spec.num_class,
        "features": model.num_features, "categorical_features": len(model.categorical_features),
        "trees": model.stats["trees"], "mean_leaves": round(model.stats["mean_leaves"], 1),
        "mean_leaf_depth": round(model.stats["mean_leaf_depth"], 2), "note": spec.note,
    })
    log(f"kernels: {model.name}: loading engines")
    live = {}
    for name, engine in engines.items():
        try:
            info = engine.load(model)
        except Unavailable as exc:
            cfg.skip(f"kernels: {name} skipped on {model.name}: {exc}")
            continue
        except Exception as exc:  # a peer that cannot take this model is a finding, not a crash
            cfg.skip(f"kernels: {name} skipped on {model.name}: it failed to load it: {type(exc).__name__}: {exc}")
            continue
        result["load"].append({"model": model.name, "engine": name, "version": engine.version, **info})
        live[name] = engine

    if "lightgbm" not in live:
        cfg.skip(f"kernels: {model.name} not timed: LightGBM, the reference, could not load it")
        return
    # Agreement before any timing: an engine that disagrees with LightGBM is not timed at all.
    rows = _agreement_rows(model, X, cfg.agreement_rows)
    ref = live["lightgbm"].predict(rows, 1)
    timed = {}
    for name, engine in live.items():
        try:
            verdict = agreement(engine.predict(rows, 1), ref, engine.exact)
        except Exception as exc:
            verdict = {"status": "DISAGREES", "max_abs": None, "max_rel": None,
                       "why": f"predict failed: {type(exc).__name__}: {exc}"}
        result["agreement"].append({"model": model.name, "engine": name, "rows": rows.shape[0], **verdict})
        if verdict["status"] == "DISAGREES":
            cfg.skip(f"kernels: {name} NOT TIMED on {model.name}: it DISAGREES with LightGBM "
                     f"({verdict.get('why')}; max abs diff {verdict['max_abs']})")
            continue
        timed[name] = engine
    if "scoreline" not in timed:
        return

    for batch in cfg.batch_sizes:
        log(f"kernels: {model.name}: batch {batch}, one thread")
        samples = _interleave(cfg, timed, lambda e: e.time_calls(X, path, batch, 1, cfg.budget_s, cfg.fixed_calls))
        for name, per_round in samples.items():
            ns = np.concatenate(per_round)
            result["latency"].append({
                "model": model.name, "engine": name, "batch": batch, "threads": 1,
                "median_us": float(np.median(ns)) / 1e3, "p99_us": float(np.percentile(ns, 99)) / 1e3,
                "calls": int(ns.size),
                "round_medians_us": [float(np.median(r)) / 1e3 for r in per_round],
            })

    for threads in cfg.threads:  # untimed warm-up: thread pools, a parallel kernel's first call
        for engine in timed.values():
            engine.time_bulk(X[:2000], path, threads, 1)
    for n in bulk_sizes:
        Xn = X[:n]
        for threads in cfg.threads:
            log(f"kernels: {model.name}: {n} rows, {threads} thread(s)")
            # A 1M-row call takes seconds to minutes per engine: three rounds are enough there.
            rounds = min(cfg.rounds, 3) if n >= 1_000_000 else cfg.rounds
            repeats = {name: _bulk_repeats(cfg, engine, Xn, path, threads) for name, engine in timed.items()}
            samples = _interleave(cfg, timed, lambda e: e.time_bulk(Xn, path, threads, repeats[e.name]), rounds)
            for name, per_round in samples.items():
                secs = np.array([np.median(r) for r in per_round])
                result["throughput"].append({
                    "model": model.name, "engine": name, "rows": n, "threads": threads,
                    "rows_per_s": float(n / np.median(secs)),
                    "round_rows_per_s": [float(n / s) for s in secs],
                })


# Calls of all n rows per engine and round, the round's figure being their median: a call of a
# few milliseconds (10k rows on two threads) is at the mercy of one descheduled thread on this
# 2-core machine (single calls of the default path read 1.7-5.6M rows/s within one run), so calls
# shorter than BULK_ROUND_S / 7 are repeated up to 7 times per round; long ones run once.
BULK_ROUND_S = 0.1
BULK_MAX_REPEATS = 7


def _bulk_repeats(cfg, engine, X, path, threads) -> int:
    """How many calls of X fit BULK_ROUND_S for this engine (from one untimed call), 1..7."""
    if not cfg.timing or X.shape[0] >= 1_000_000:  # a call of a million rows is long: once
        return 1
    took = float(engine.time_bulk(X, path, threads, 1)[0])
    return int(max(1, min(BULK_MAX_REPEATS, BULK_ROUND_S // max(took, 1e-9))))


# Pause before each engine's measurement when timing: the peers' thread pools (OpenMP in LightGBM
# and TL2cgen, ONNX Runtime's intra-op threads) spin for a while after a call, and a two-thread
# call made meanwhile shares its cores with them: Scoreline's SIMD tier on gen-100x31 (100k rows,
# 2 threads) took 41 ms right after an ONNX Runtime call against 26 ms idle; 0.02 s later still
# 43 ms, 0.1 s later 22 ms. Rotating the order does not spread this: the cyclic order stays, so
# the same engine always followed ONNX Runtime (the default path, whose 2-thread figures read
# 0.6-0.7x the pinned SIMD tier's until this pause).
SETTLE_S = 0.1


def _interleave(cfg, engines: dict, measure, rounds: int | None = None) -> dict[str, list]:
    """Run `measure(engine)` for every engine, round after round, rotating the order each round,
    with SETTLE_S of quiet before each measurement."""
    names = list(engines)
    samples = {name: [] for name in names}
    for r in range(rounds or cfg.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if cfg.timing:
                time.sleep(SETTLE_S)
            samples[name].append(measure(engines[name]))
    return samples


def pairwise_ratio(scoreline_rounds: list[float], peer_rounds: list[float]) -> float:
    """Median over rounds of scoreline/peer, each ratio taken within one round (shared drift cancels)."""
    pairs = [s / p for s, p in zip(scoreline_rounds, peer_rounds) if p > 0]
    return float(np.median(pairs)) if pairs else float("nan")


def default_threads() -> tuple[int, ...]:
    """One thread and all of them (the machine's cores), without repeats on a 1-core machine."""
    n = os.cpu_count() or 1
    return (1,) if n == 1 else (1, n)
