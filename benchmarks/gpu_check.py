"""The GPU check for a lent GPU machine, in one call: exactness and rows per second, CUDA vs CPU.

For each benchmark model (benchmarks/suite/models.py: 100 x 31, 500 x 63 with categorical
features, 1000 x 255, multiclass 5 x 100 x 31):
  1. exactness: GPU scores (``predict_gpu``: pinned batches, streams, host-side transform) against
     the CPU kernels bit for bit, and against LightGBM (when importable) on a slice;
  2. kernel rows/s with the rows already on the device (raw scores), for each kernel variant,
     against the naive figures the issue measured on an H200;
  3. end to end from a numpy matrix in host memory (copies in and out and the transform included),
     against the CPU kernels on all cores;
then Parquet files scored end to end (read, columns into pinned buffers, score, results back) on
the GPU and on all CPU cores, and how often CUDA's exp differs from the host's in a sigmoid.

Run on the GPU machine from the repository root (docs/gpu.md has the full command):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --models DIR --out "$OUT"

``--quick`` shrinks everything for a dry run; with NUMBA_ENABLE_CUDASIM=1 it runs the whole script
under Numba's CUDA simulator (what was done where no GPU was lent: timings there mean nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# numba-cuda on the lent machines' image still names numpy.row_stack, which numpy 2.5 removed.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

try:
    from numba import cuda
except ImportError as exc:  # the script needs numba-cuda; say so instead of a traceback
    sys.exit(f"numba-cuda is not importable here: {exc}")

# Naive kernel (one thread per row, node arrays in global memory, float64), measured on the lent
# H200 (issue 7): rows/s. The bar is twice these with exact agreement.
NAIVE = {"gen-100x31": 234e6, "gen-500x63-cat": 44e6, "gen-1000x255": 12e6}
NAIVE_ROW_MAJOR = {"gen-1000x255": 7.6e6}
MODELS = ("gen-100x31", "gen-500x63-cat", "gen-1000x255", "gen-multiclass-5x100x31")


def _import_scoreline():
    """scoreline installed, or straight from this checkout (engine/ and kernels/ are its packages)."""
    try:
        import scoreline.engine.models.model  # noqa: F401
    except ModuleNotFoundError:
        import scoreline

        scoreline.__path__.append(str(ROOT))
    import scoreline.engine.models.model  # noqa: F401,F811


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=str(ROOT / ".cache" / "bench-models"),
                        help="folder with the benchmark models (trained there if LightGBM is importable)")
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_check.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of every step")
    parser.add_argument("--only", nargs="*", help="model names to run (default: all four)")
    parser.add_argument("--ptx", action="store_true",
                        help="only compile the kernels to PTX for sm_90 (no GPU needed; needs libnvvm) and check "
                             "that no float64 multiply-add was fused")
    args = parser.parse_args(argv)
    _import_scoreline()
    if args.ptx:
        result = check_ptx()
        print(json.dumps(result, indent=1))
        return 0 if result["fused_multiply_adds"] == 0 else 1
    from benchmarks.suite import models as bench_models
    from scoreline.engine.gpu import backend as gpu

    ok, device = gpu.cuda_available()
    report = {"device": device, "environment": _environment(), "models": [], "parquet": [], "exp": None}
    print(f"device: {device}", flush=True)
    if not ok:
        print("no usable CUDA device: nothing to check", flush=True)
        return 2
    started = time.perf_counter()
    if not _simulated():
        report["ptx"] = check_ptx()
        print(f"PTX: {report['ptx']}", flush=True)
    specs = {s.name: s for s in bench_models.KERNEL_MODELS}
    names = args.only or list(MODELS)
    if args.quick:
        tiny = bench_models.tiny_spec()
        specs = {tiny.name: tiny}
        names = [tiny.name]
    sizes = _sizes(args.quick)
    loaded = {}
    for name in names:
        bench = bench_models.build(specs[name], Path(args.models))
        loaded[name] = bench
        entry = check_model(bench, sizes)
        report["models"].append(entry)
        _save(report, args.out)
    parquet_models = names[:1] if args.quick else [n for n in ("gen-100x31", "gen-500x63-cat") if n in loaded]
    for name in parquet_models:
        report["parquet"].append(check_parquet(loaded[name], sizes["parquet"][name if not args.quick else "quick"]))
        _save(report, args.out)
    binary = next((n for n in names if specs[n].objective == "binary"), None)
    if binary:
        report["exp"] = check_device_exp(loaded[binary], sizes["exp"])
    report["seconds"] = time.perf_counter() - started
    _save(report, args.out)
    _print_summary(report)
    exact = all(m["exact"]["identical"] for m in report["models"]) and all(p["identical"] for p in report["parquet"])
    return 0 if exact and report.get("ptx", {}).get("fused_multiply_adds", 0) == 0 else 1


def _sizes(quick: bool) -> dict:
    if quick:
        return {"exact": 300, "lgb": 100, "kernel": {"*": 512}, "host": 700, "reps": 2, "parquet": {"quick": 900},
                "exp": 2000}
    return {
        "exact": 1_000_000,
        "lgb": 20_000,
        # Enough rows that one launch runs for tens of milliseconds at twice the naive speed.
        "kernel": {"gen-100x31": 8_000_000, "gen-500x63-cat": 2_000_000, "gen-1000x255": 1_000_000,
                   "gen-multiclass-5x100x31": 2_000_000},
        "host": 4_000_000,
        "reps": 7,
        "parquet": {"gen-100x31": 8_000_000, "gen-500x63-cat": 2_000_000},
        "exp": 4_000_000,
    }


# --- per model -------------------------------------------------------------------------------------


def check_model(bench, sizes) -> dict:
    import scoreline
    from scoreline.engine.gpu import backend as gpu

    name = bench.name
    print(f"\n== {name}", flush=True)
    t = time.perf_counter()
    model = scoreline.load_lightgbm(str(bench.path))
    entry = {"model": name, "load_s": time.perf_counter() - t, "trees": model.num_trees,
             "features": model.num_features, "classes": model.num_class}
    exact_rows = sizes["exact"] if model.num_trees * model.num_class < 1000 else sizes["exact"] // 5
    X = make_rows(bench, exact_rows, seed=1)
    X[:2] = np.nan  # an all-missing row
    X[2:4] = 0.0  # an all-zero row

    # 1. exactness: the whole GPU path against the CPU kernels, then LightGBM on a slice.
    t = time.perf_counter()
    ours = gpu.predict_gpu(model, X, fallback=False)  # compiles the kernel for float64
    entry["first_gpu_call_s"] = time.perf_counter() - t
    cpu = model.predict(X)
    raw = gpu.predict_gpu(model, np.asfortranarray(X[:200_000]), raw_score=True, fallback=False)
    entry["exact"] = {
        "rows": int(X.shape[0]),
        "identical": bool(_identical(ours, cpu) and _identical(raw, model.predict(X[:200_000], raw_score=True))),
        "differing_values": int(_differing(ours, cpu)),
    }
    entry["exact"].update(_vs_lightgbm(bench, X[: sizes["lgb"]], ours[: sizes["lgb"]]))
    print(f"exact vs CPU on {X.shape[0]:,} rows: {entry['exact']}", flush=True)

    # 2. kernels with the rows on the device.
    n = sizes["kernel"].get(name, sizes["kernel"].get("*", 1_000_000))
    entry["kernels"] = time_kernels(model, make_rows(bench, n, seed=2), sizes["reps"])
    best = max(entry["kernels"], key=lambda k: k["rows_per_s"])
    entry["best_kernel"] = best["variant"]
    entry["best_rows_per_s"] = best["rows_per_s"]
    if name in NAIVE:
        entry["vs_naive"] = best["rows_per_s"] / NAIVE[name]

    # 3. end to end from host memory, against the CPU kernels on every core.
    Xh = make_rows(bench, min(sizes["host"], n), seed=3)
    entry["host"] = time_host(model, Xh, sizes["reps"])
    _print_model(entry)
    return entry


def time_kernels(model, X: np.ndarray, reps: int) -> list[dict]:
    """Raw-score kernel time per variant, rows resident on the device (CUDA events, median)."""
    from scoreline.engine.gpu import backend as gpu
    from scoreline.kernels import cuda_trees as kernels

    device = gpu._DeviceModel.of(model)
    n, width = X.shape
    k = model.num_class
    d_out = cuda.device_array((n, k), np.float64)
    layouts = {"row-major": cuda.to_device(X.reshape(-1)),
               "feature-major": cuda.to_device(np.ascontiguousarray(X.T).reshape(-1))}
    reference = None
    results = []
    variants = [("global", 128, None)] + [("staged", b, None) for b in (64, 128, 256)]
    for kind, block, _ in variants:
        shared = block * width * 8
        if kind == "staged" and shared > kernels.SHARED_BYTES:
            continue
        for layout, d_x in layouts.items():
            args = (d_x, n, width, 1 if layout == "feature-major" else 0, device.thresholds, device.words,
                    device.leaf_value, device.trees, device.cat_bits, device.linear, device.linear_const,
                    device.linear_feature, device.linear_coeff, device.is_linear, k, 0.0, d_out)
            grid = (n + block - 1) // block
            launch = (kernels.score_global[grid, block] if kind == "global"
                      else kernels.score_staged[grid, block, 0, shared])
            launch(*args)  # compile and warm
            cuda.synchronize()
            times = []
            for _ in range(reps):
                start, stop = cuda.event(), cuda.event()
                start.record()
                launch(*args)
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop) / 1e3)  # milliseconds
            out = d_out.copy_to_host()
            reference = out if reference is None else reference
            seconds = statistics.median(times)
            results.append({"variant": f"{kind}-{block} {layout}", "rows_per_s": n / seconds, "median_s": seconds,
                            "min_s": min(times), "agrees": bool(_identical(out, reference))})
            print(f"  {results[-1]['variant']:<28} {n / seconds / 1e6:10.1f} M rows/s", flush=True)
    return results


def time_host(model, X: np.ndarray, reps: int) -> dict:
    """predict_gpu from a host matrix (transfers, transform) vs the CPU kernels on all cores."""
    from scoreline.engine.gpu import backend as gpu

    out = np.empty((X.shape[0], model.num_class) if model.num_class > 1 else X.shape[0])
    result = {"rows": int(X.shape[0])}
    for streams in (2, 3):
        gpu.predict_gpu(model, X, fallback=False, out=out, streams=streams)
        seconds = _median_time(lambda: gpu.predict_gpu(model, X, fallback=False, out=out, streams=streams), reps)
        result[f"gpu_streams{streams}_rows_per_s"] = X.shape[0] / seconds
    model.predict_matrix(X, out=out)
    seconds = _median_time(lambda: model.predict_matrix(X, out=out), max(2, reps // 2))
    result["cpu_all_cores_rows_per_s"] = X.shape[0] / seconds
    result["gpu_over_cpu"] = max(result["gpu_streams2_rows_per_s"], result["gpu_streams3_rows_per_s"]) / (
        result["cpu_all_cores_rows_per_s"])
    return result


# --- Parquet end to end ---------------------------------------------------------------------------


def check_parquet(bench, rows: int) -> dict:
    """One Parquet file scored end to end on the GPU and on all CPU cores; same read loop for both."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import scoreline
    from scoreline.engine.gpu import backend as gpu
    from scoreline.engine.data.inputs import to_matrix

    model = scoreline.load_lightgbm(str(bench.path))
    print(f"\n== Parquet: {bench.name}, {rows:,} rows", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    path = folder / "rows.parquet"
    X = make_rows(bench, rows, seed=4)
    table = pa.table({name: pa.array(X[:, j], from_pandas=True) for j, name in enumerate(model.feature_names)})
    t = time.perf_counter()
    pq.write_table(table, path, row_group_size=1 << 20)
    written = time.perf_counter() - t
    del table
    batch_rows = 1 << 19

    def read():
        return _prefetch(pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=list(model.feature_names)))

    def on_gpu():
        return sum(len(r) for r in gpu.score_batches_gpu(model, read()))

    def on_cpu():
        total = 0
        for batch in read():
            total += len(model.predict_matrix(to_matrix(batch, model.feature_names, model.categories)))
        return total

    def read_only():
        return sum(b.num_rows for b in read())

    result = {"model": bench.name, "rows": rows, "file_mb": path.stat().st_size / 1e6, "write_s": written}
    first = np.concatenate(list(gpu.score_batches_gpu(model, read())))
    cpu = np.concatenate([model.predict_matrix(to_matrix(b, model.feature_names, model.categories))
                          for b in read()])
    result["identical"] = bool(_identical(first, cpu))
    for label, fn in (("read_only", read_only), ("gpu", on_gpu), ("cpu_all_cores", on_cpu)):
        seconds = _median_time(fn, 3)
        result[f"{label}_rows_per_s"] = rows / seconds
        print(f"  {label:<14} {rows / seconds / 1e6:8.2f} M rows/s", flush=True)
    result["gpu_over_cpu"] = result["gpu_rows_per_s"] / result["cpu_all_cores_rows_per_s"]
    path.unlink()
    folder.rmdir()
    return result


def _prefetch(batches, depth: int = 4):
    """Read on a thread, a few batches ahead, so decoding overlaps scoring for both engines."""
    q: queue.Queue = queue.Queue(depth)
    done = object()

    def work():
        try:
            for b in batches:
                q.put(b)
        finally:
            q.put(done)

    threading.Thread(target=work, daemon=True).start()
    while (item := q.get()) is not done:
        yield item


# --- compiled code -----------------------------------------------------------------------------------


def check_ptx(cc=(9, 0)) -> dict:
    """Compile both kernels for float64 and float32 rows to PTX and count what exactness depends on:
    no fused float64 multiply-add (``fma.rn.f64``), IEEE division (``div.rn.f64``)."""
    import re

    from numba import types

    from scoreline.kernels import cuda_trees as kernels

    if not cuda.is_available():
        # Device functions compile for the current device's capability; without one, name it.
        import numba.cuda.dispatcher as dispatcher

        class _Target:
            compute_capability = cc

        dispatcher.get_current_device = lambda: _Target()
    f64, i64 = types.float64, types.int64

    def arr(t, ndim=1):
        return types.Array(t, ndim, "C")

    result = {"cc": f"{cc[0]}.{cc[1]}", "fused_multiply_adds": 0, "kernels": {}}
    for rows in (f64, types.float32):
        sig = (arr(rows), i64, i64, i64, arr(f64), arr(i64), arr(f64), arr(i64, 2), arr(types.uint32), arr(i64, 2),
               arr(f64), arr(i64), arr(f64), i64, i64, f64, arr(f64, 2))
        for name in ("score_staged", "score_global"):
            ptx, _ = cuda.compile_ptx(getattr(kernels, name).py_func, sig, cc=cc)
            counts = {op: len(re.findall(op.replace(".", r"\."), ptx))
                      for op in ("fma.rn.f64", "mul.rn.f64", "div.rn.f64", "ld.shared.f64")}
            result["kernels"][f"{name}[{rows}]"] = counts
            result["fused_multiply_adds"] += counts["fma.rn.f64"]
    return result


def _simulated() -> bool:
    from scoreline.kernels import cuda_trees as kernels

    return kernels.SIMULATED


# --- CUDA's exp against the host's ----------------------------------------------------------------


def check_device_exp(bench, rows: int) -> dict:
    """How many sigmoid outputs differ if the transform ran on the device (why it runs on the host)."""
    import scoreline
    from scoreline.engine.gpu import backend as gpu

    model = scoreline.load_lightgbm(str(bench.path))
    X = make_rows(bench, rows, seed=5)
    raw = gpu.predict_gpu(model, X, raw_score=True, fallback=False)
    host = model.predict(X)
    d_out = cuda.device_array(raw.shape[0])
    _sigmoid[(raw.shape[0] + 255) // 256, 256](cuda.to_device(raw), model.packed.link_param, d_out)
    device = d_out.copy_to_host()
    ulps = np.abs(device.view(np.int64) - host.view(np.int64))
    result = {"rows": rows, "differing": int((ulps != 0).sum()), "max_ulps": int(ulps.max(initial=0))}
    print(f"\n== device exp vs host exp on {rows:,} sigmoids: {result}", flush=True)
    return result


@cuda.jit
def _sigmoid(raw, param, out):
    """LightGBM's binary transform with CUDA's exp (libdevice), for the comparison above."""
    i = cuda.grid(1)
    if i < raw.shape[0]:
        out[i] = 1.0 / (1.0 + math.exp(-param * raw[i]))


# --- helpers ----------------------------------------------------------------------------------------


def make_rows(bench, n: int, seed: int) -> np.ndarray:
    """n benchmark-like rows (standard normal, integer categories, 1% NaN), drawn on all cores."""
    width = bench.num_features
    cats = set(bench.categorical_features)
    X = np.empty((n, width))
    chunks = [(a, min(a + 65536, n)) for a in range(0, n, 65536)]

    def fill(i):
        a, b = chunks[i]
        rng = np.random.default_rng([seed, i])
        block = rng.standard_normal((b - a, width))
        for c in cats:
            block[:, c] = rng.integers(0, (10, 30, 100)[c % 3], b - a)
        block[rng.random(block.shape) < 0.01] = np.nan
        X[a:b] = block

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(fill, range(len(chunks))))
    return X


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and _differing(a, b) == 0


def _differing(a: np.ndarray, b: np.ndarray) -> int:
    if a.shape != b.shape:
        return -1
    return int((~((a == b) | (np.isnan(a) & np.isnan(b)))).sum())


def _vs_lightgbm(bench, X: np.ndarray, ours: np.ndarray) -> dict:
    try:
        import lightgbm as lgb
    except Exception as exc:  # not installed, or its OpenMP runtime (libgomp) missing: an OSError
        return {"lightgbm": f"not importable here: {exc}"}
    theirs = lgb.Booster(model_file=str(bench.path)).predict(X, num_threads=os.cpu_count())
    diff = np.abs(np.nan_to_num(ours - theirs))
    return {"lightgbm_rows": int(X.shape[0]), "lightgbm_identical": bool(_identical(ours, theirs)),
            "lightgbm_max_abs": float(diff.max(initial=0.0))}


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _environment() -> dict:
    import numba

    env = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
           "cpus": os.cpu_count(), "machine": platform.machine()}
    try:
        from importlib.metadata import version

        env["numba_cuda"] = version("numba-cuda")
    except Exception:
        env["numba_cuda"] = None
    return env


def _save(report: dict, out: str) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "gpu_check.json").write_text(json.dumps(report, indent=1, default=float))


def _print_model(entry: dict) -> None:
    host = entry["host"]
    naive = f", {entry['vs_naive']:.2f}x naive" if "vs_naive" in entry else ""
    print(f"  best kernel {entry['best_kernel']}: {entry['best_rows_per_s'] / 1e6:.1f} M rows/s{naive}; "
          f"from host: GPU {max(host['gpu_streams2_rows_per_s'], host['gpu_streams3_rows_per_s']) / 1e6:.1f} M "
          f"vs CPU {host['cpu_all_cores_rows_per_s'] / 1e6:.2f} M rows/s", flush=True)


def _print_summary(report: dict) -> None:
    print("\n" + "=" * 100)
    print(f"device: {report['device']}; {report['environment']}")
    print(f"{'model':<26}{'exact':>7}{'best kernel':>30}{'M rows/s':>10}{'x naive':>9}{'host GPU':>10}"
          f"{'host CPU':>10}")
    for m in report["models"]:
        host = m["host"]
        gpu_host = max(host["gpu_streams2_rows_per_s"], host["gpu_streams3_rows_per_s"])
        naive = f"{m['vs_naive']:.2f}" if "vs_naive" in m else "-"
        print(f"{m['model']:<26}{str(m['exact']['identical']):>7}{m['best_kernel']:>30}"
              f"{m['best_rows_per_s'] / 1e6:>10.1f}{naive:>9}{gpu_host / 1e6:>10.1f}"
              f"{host['cpu_all_cores_rows_per_s'] / 1e6:>10.2f}")
    for p in report["parquet"]:
        print(f"Parquet {p['model']} {p['rows']:,} rows: GPU {p['gpu_rows_per_s'] / 1e6:.2f} M rows/s, "
              f"CPU {p['cpu_all_cores_rows_per_s'] / 1e6:.2f} M rows/s ({p['gpu_over_cpu']:.2f}x), "
              f"read alone {p['read_only_rows_per_s'] / 1e6:.2f} M rows/s, identical {p['identical']}")
    if report["exp"]:
        print(f"device exp: {report['exp']}")
    print(f"total {report.get('seconds', 0):.0f} s")


if __name__ == "__main__":
    sys.exit(main())
