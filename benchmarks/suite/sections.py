"""Pipeline and bulk sections: the suite's wrappers around benchmarks/test_bench_pipeline.py and
benchmarks/test_bench_bulk.py, so one `scoreline bench` run reports them beside the kernels.

The measuring code is theirs (the pipeline's `Bench` + `stage_table`, the bulk's `run_report`,
which runs every measurement in its own process for an honest peak RSS); this module picks the
sizes for a quick or full run, turns their figures into tables and checks the bulk targets.
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path

__all__ = ["run_pipeline", "run_bulk", "bulk_targets", "FLAT_MEMORY_SLACK"]

# "Flat memory": the largest file's peak RSS at most 10% + 64 MB above the smallest file's.
FLAT_MEMORY_SLACK = (1.10, 64.0)


def _import(cfg, module: str):
    try:
        return importlib.import_module(f"benchmarks.{module}")
    except Exception as exc:  # their file may be missing or broken: say so, run the rest
        cfg.skip(f"{module}: cannot be imported ({type(exc).__name__}: {exc})")
        return None


def run_pipeline(cfg, log) -> dict:
    mod = _import(cfg, "test_bench_pipeline")
    if mod is None:
        return {"status": "benchmarks/test_bench_pipeline.py could not be imported"}
    customers = 2_000 if not cfg.timing else (20_000 if cfg.quick else 100_000)
    rounds = 1 if not cfg.timing else (3 if cfg.quick else 7)
    calls = (3, 1) if not cfg.timing else ((500, 3) if cfg.quick else (2000, 5))
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        log(f"pipeline: demo registry with {customers:,} customers")
        bench = mod.Bench(Path(tmp), customers)
        try:
            log("pipeline: stage table")
            t = mod.stage_table(bench, rounds=rounds, single_calls=calls[0], batch_calls=calls[1])
        finally:
            bench.close()
    single = [{"stage": name, "us per call": t[name]} for name in mod.SINGLE]
    batch = [{"stage": name, "us per 10k rows": t[name], "us per row": t[name] / mod.BATCH_ROWS}
             for name in mod.BATCH]
    over1 = t["request1"] - t["model1"]
    over_logged = t["logged1"] - t["model1"]
    notes = [
        f"One request: {t['request1']:.1f} us end to end in-process ({t['logged1']:.1f} us with the decision log); "
        f"overhead beyond the bare model kernel {over1:.1f} us ({over_logged:.1f} us logged); aim: under 20 us.",
    ]
    for name in ("batch_inline", "batch_keys", "logged"):
        notes.append(f"Batch of {mod.BATCH_ROWS:,} ({name}): {(t[name] / t['model'] - 1) * 100:.0f}% beyond "
                     f"the bare kernel; aim: under 30%.")
    notes.append(f"Model: the demo's customer-segmentation over {customers:,} customers; medians of {rounds} "
                 "interleaved rounds (benchmarks/test_bench_pipeline.py's stage_table).")
    return {"stages_us": t, "notes": notes,
            "tables": {"One request, by stage (median us per call)": single,
                       f"A batch of {mod.BATCH_ROWS:,} rows, by stage": batch}}


def run_bulk(cfg, log) -> dict:
    mod = _import(cfg, "test_bench_bulk")
    if mod is None:
        return {"status": "benchmarks/test_bench_bulk.py could not be imported"}
    if not cfg.timing:
        plan = {"demo": [3_000]}
    elif cfg.quick:
        plan = {"demo": [200_000, 1_000_000], "1000x255": [50_000]}
    else:
        # The 1000-tree model at 10M rows would take LightGBM's loop over half an hour on one thread.
        plan = {"demo": [1_000_000, 10_000_000], "1000x255": [1_000_000]}
    folder = cfg.cache / "bench-bulk"
    results = []
    for model, sizes in plan.items():
        log(f"bulk: {model} at {', '.join(f'{n:,}' for n in sizes)} rows (one process per measurement)")
        results += mod.run_report([model], sizes, 1, folder, log=lambda line: log(f"bulk: {line}"))
    table = [{"model": r["model"], "file rows": r["file_rows"], "mode": r["mode"], "rows/s": r["rows_per_s"],
              "x kernel": r["vs_kernel"], "peak RSS MB": r["peak_rss_mb"],
              "RSS growth MB": r["peak_rss_mb"] - r["start_rss_mb"], "Arrow peak MB": r["arrow_peak_mb"]}
             for r in results]
    return {"runs": results, "targets": bulk_targets(results, cfg.timing),
            "tables": {"Bulk scoring of Parquet files, one thread": table},
            "notes": ["Modes: kernel = predict_matrix on an in-memory matrix of the same rows (the bare "
                      "kernel); bulk = scoreline.score_file on the file; loop = pyarrow batches + "
                      "Booster.predict(num_threads=1) + Parquet writer; deployment = the demo's full "
                      "pipeline from raw inputs. Each in its own process (benchmarks/test_bench_bulk.py)."]}


def bulk_targets(results: list[dict], timing: bool) -> list[dict]:
    """The issue's bulk-file targets from run_report's rows: speed vs the kernel, flat peak memory."""
    bulk = [r for r in results if r["mode"] == "bulk"]
    if not bulk or not timing:
        return []
    worst = min(bulk, key=lambda r: r["vs_kernel"])
    targets = [{
        "target": "Bulk files within 20% of the bare kernel's rows per second",
        "reached": bool(worst["vs_kernel"] >= 0.8),
        "figure": f"worst {worst['vs_kernel']:.2f}x the kernel ({worst['model']}, {worst['file_rows']:,} rows: "
                  f"{worst['rows_per_s']:,.0f} rows/s)",
    }]
    growth = []
    for model in dict.fromkeys(r["model"] for r in bulk):
        runs = sorted((r for r in bulk if r["model"] == model), key=lambda r: r["file_rows"])
        if len(runs) >= 2:
            small, large = runs[0], runs[-1]
            flat = large["peak_rss_mb"] <= small["peak_rss_mb"] * FLAT_MEMORY_SLACK[0] + FLAT_MEMORY_SLACK[1]
            growth.append((flat, f"{model}: {small['peak_rss_mb']:,.0f} MB at {small['file_rows']:,} rows -> "
                                 f"{large['peak_rss_mb']:,.0f} MB at {large['file_rows']:,}"))
    if growth:
        targets.append({"target": "Bulk files: flat memory as files grow (peak RSS, largest vs smallest file)",
                        "reached": all(ok for ok, _ in growth), "figure": "; ".join(text for _, text in growth)})
    return targets
