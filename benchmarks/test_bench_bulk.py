"""Bulk scoring benchmarks: rows/s and peak memory of `score_file` on Parquet files, against a plain
loop of pyarrow reading + `lightgbm.Booster.predict(num_threads=1)` + Parquet writing, and against
the bare kernel (`predict_matrix` on an in-memory matrix of the same rows).

Models: the demo's `customer-segmentation` (5 classes x 60 rounds, 4 features; also scored through
its deployment, from raw inputs) and a generated 1000-tree x 255-leaf regression model.
Each measurement runs in its own process, so `ru_maxrss` is that job's peak; Arrow's own peak
(`pyarrow.default_memory_pool().max_memory()`) is reported too, since tracemalloc cannot see it.

CI runs tiny files (correctness of every path, the harness itself). Larger runs:

    .venv/bin/python benchmarks/test_bench_bulk.py --rows 1000000,10000000 [--models demo] [--threads 1]
    SCORELINE_BENCH_BULK_ROWS=1000000 .venv/bin/python -m pytest benchmarks/test_bench_bulk.py -s

The bar: `bulk` within 20% of `kernel` rows/s at the same threads, and peak memory that does not
grow with the row count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS = [int(n) for n in os.environ.get("SCORELINE_BENCH_BULK_ROWS", "3000").split(",")]
BATCH = 65_536
_CHUNK = 1 << 20  # rows generated and written at a time: input files of any size, bounded memory
_KERNEL_ROWS = 1_000_000  # the bare kernel's rows: enough for a steady rate
_ROW_GROUP = 131_072  # rows per Parquet row group in the input files (readers hold about one)
MODELS = ("demo", "1000x255")


@dataclass(frozen=True)
class Case:
    name: str
    model: Path  # LightGBM text model
    registry: Path | None  # the demo's registry (deployment runs)
    model_id: str | None


def prepare(name: str, folder: Path) -> Case:
    """Build (or reuse) a benchmark model under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "demo":
        from scoreline.engine.demo import build_demo
        from scoreline.registry.repository import Repository

        root = folder / "demo"
        registry = root / "registry"
        if not registry.exists():
            build_demo(root, customers=2_000, train_rows=2_000, log=lambda *a: None)
        repo = Repository(registry)
        version_dir = repo.version_dir("customer-segmentation", repo.resolve("customer-segmentation"))
        return Case(name, version_dir / "model.txt", registry, "customer-segmentation")
    sys.path.insert(0, str(Path(__file__).parent))
    from test_bench_kernels import generate_model

    path = folder / "gen-1000x255.txt"
    if not path.exists():
        path.write_text(generate_model(1000, 255, 50, 0, "regression"))
    return Case(name, path, None, None)


def _feature_ranges(model: Path) -> tuple[list[str], list[tuple[float, float]]]:
    """Feature names and their [min:max] from the model file, so rows walk realistic paths."""
    names, ranges = [], []
    with open(model) as f:
        for line in f:
            if line.startswith("feature_names="):
                names = line.split("=", 1)[1].split()
            elif line.startswith("feature_infos="):
                for info in line.split("=", 1)[1].split():
                    lo, hi = (info.strip("[]").split(":") + ["1"])[:2] if info.startswith("[") else ("0", "7")
                    ranges.append((float(lo), float(hi)))
                break
    return names, ranges


def features_file(case: Case, n: int, folder: Path) -> Path:
    """An ``id`` column and the model's features, n rows (1% missing), written chunk by chunk."""
    path = folder / f"{case.name}-features-{n}-rg{_ROW_GROUP}.parquet"
    if path.exists():
        return path
    names, ranges = _feature_ranges(case.model)
    rng = np.random.default_rng(n)
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, _features_schema(names)) as writer:
        for start in range(0, n, _CHUNK):
            m = min(_CHUNK, n - start)
            columns = {"id": np.arange(start, start + m)}
            for name, (lo, hi) in zip(names, ranges):
                values = rng.uniform(lo, hi, m)
                values[rng.random(m) < 0.01] = np.nan
                columns[name] = values
            writer.write_table(pa.table(columns, schema=_features_schema(names)), row_group_size=_ROW_GROUP)
    os.replace(tmp, path)
    return path


def _features_schema(names: list[str]) -> pa.Schema:
    return pa.schema([pa.field("id", pa.int64())] + [pa.field(n, pa.float64()) for n in names])


def raw_file(n: int, folder: Path) -> Path:
    """Raw inputs of the demo's customers (the deployment computes the features), n rows."""
    from scoreline.engine.demo import STATES

    path = folder / f"demo-raw-{n}-rg{_ROW_GROUP}.parquet"
    if path.exists():
        return path
    rng = np.random.default_rng(n)
    tmp = path.with_suffix(".tmp")
    schema = pa.schema([("customer-id", pa.int64()), ("date-of-birth", pa.date32()), ("state", pa.string()),
                        ("account-balance", pa.float64()), ("postcode", pa.int64())])
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, n, _CHUNK):
            m = min(_CHUNK, n - start)
            born = np.datetime64("1940-01-01") + rng.integers(0, 65 * 365, m).astype("timedelta64[D]")
            writer.write_table(pa.table({
                "customer-id": np.arange(start, start + m),
                "date-of-birth": pa.array(born, pa.date32()),
                "state": pa.array(np.array(STATES)[rng.integers(0, len(STATES), m)]),
                "account-balance": rng.gamma(2.0, 5000.0, m),
                "postcode": rng.integers(800, 9999, m),
            }, schema=schema), row_group_size=_ROW_GROUP)
    os.replace(tmp, path)
    return path


# --- one measurement = one process -------------------------------------------------------------


def measure(mode: str, case: Case, data: Path, out: Path, threads: int) -> dict:
    """Run ``mode`` in a fresh process and return its figures (rows, seconds, memory)."""
    spec = {"mode": mode, "model": str(case.model), "registry": str(case.registry) if case.registry else None,
            "model_id": case.model_id, "data": str(data), "out": str(out), "threads": threads}
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "numba"))
    proc = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True, text=True,
                          env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_measurement(spec: dict) -> dict:
    import resource

    import scoreline
    from scoreline.engine.data.inputs import to_matrix

    def status_mb(field: str) -> float | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def peak_mb() -> float:
        hwm = status_mb("VmHWM")
        return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    mode, threads = spec["mode"], spec["threads"]
    model = scoreline.load_lightgbm(spec["model"])
    # Load the kernels (Numba's cache, or a compile) before the clock starts: the F-order matrix
    # that Arrow columns make, serial and, for threads > 1, parallel.
    for rows in (16, 4096):
        model.predict_matrix(np.zeros((rows, model.num_features), order="F"), num_threads=threads)
    # Imports and compiling peak higher than a bulk job may: reset the high-water mark (Linux's
    # clear_refs "5") so the peak below is the job's own.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    start_rss = status_mb("VmRSS") or peak_mb()
    started = time.perf_counter()
    if mode == "bulk":
        rows = scoreline.score_file(spec["model"], spec["data"], spec["out"], keep=["id"], threads=threads,
                                    batch_size=BATCH).rows_read
    elif mode == "deployment":
        rows = scoreline.score_file(spec["model_id"], spec["data"], spec["out"], registry=spec["registry"],
                                    keep=["customer-id"], threads=threads, batch_size=BATCH).rows_read
    elif mode == "loop":
        rows = _lightgbm_loop(spec, model.feature_names)
    elif mode == "kernel":
        # The same batches bulk scores (F-order float64, BATCH rows), converted before the clock
        # starts: what is left is the kernel. (One call on a 1M x 50 F-order matrix is slower
        # than batches: a row's features lie 8 MB apart.)
        reader = pq.ParquetFile(spec["data"]).iter_batches(batch_size=BATCH, columns=list(model.feature_names))
        matrices, rows = [], 0
        for batch in reader:
            matrices.append(to_matrix(batch, model.feature_names, model.categories))
            rows += batch.num_rows
            if rows >= _KERNEL_ROWS:
                break
        started = time.perf_counter()
        for X in matrices:
            model.predict_matrix(X, num_threads=threads)
    else:
        raise ValueError(mode)
    seconds = time.perf_counter() - started
    return {"mode": mode, "rows": int(rows), "seconds": seconds, "rows_per_s": rows / seconds,
            "start_rss_mb": start_rss, "peak_rss_mb": peak_mb(),
            "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20}


def _lightgbm_loop(spec: dict, features) -> int:
    """The plain loop a user would write: read a batch, to numpy, Booster.predict, write."""
    import lightgbm as lgb

    booster = lgb.Booster(model_file=spec["model"])
    rows = 0
    writer = None
    for batch in pq.ParquetFile(spec["data"]).iter_batches(batch_size=BATCH, columns=["id", *features]):
        X = np.column_stack([batch.column(name).to_numpy(zero_copy_only=False) for name in features])
        y = booster.predict(X, num_threads=1)
        y = y if y.ndim == 2 else y[:, None]
        out = pa.table({"id": batch.column("id"), **{f"score_{k}": y[:, k] for k in range(y.shape[1])}})
        if writer is None:
            writer = pq.ParquetWriter(spec["out"], out.schema, compression="zstd")
        writer.write_table(out)
        rows += batch.num_rows
    writer.close()
    return rows


# --- the report --------------------------------------------------------------------------------


def run_report(models, rows, threads: int, folder: Path, repeat: int = 1, log=print, only=None) -> list[dict]:
    """Every mode for every model and size, the modes interleaved ``repeat`` times (so machine
    drift hits all of them alike); a row per mode: the median rate and the largest peak."""
    results = []
    for name in models:
        case = prepare(name, folder)
        for n in rows:
            data = features_file(case, n, folder)
            modes = [("kernel", data), ("bulk", data), ("loop", data)]
            if case.registry is not None and (only is None or "deployment" in only):
                modes.append(("deployment", raw_file(n, folder)))
            modes = [(mode, path) for mode, path in modes if only is None or mode in only or mode == "kernel"]
            runs: dict[str, list[dict]] = {mode: [] for mode, _ in modes}
            for _ in range(repeat):
                for mode, path in modes:
                    runs[mode].append(measure(mode, case, path, folder / f"out-{mode}.parquet", threads))
            kernel = float(np.median([r["rows_per_s"] for r in runs["kernel"]]))
            for mode, _ in modes:
                r = dict(runs[mode][0])
                r["rows_per_s"] = float(np.median([x["rows_per_s"] for x in runs[mode]]))
                r["peak_rss_mb"] = max(x["peak_rss_mb"] for x in runs[mode])
                r["start_rss_mb"] = min(x["start_rss_mb"] for x in runs[mode])
                r["arrow_peak_mb"] = max(x["arrow_peak_mb"] for x in runs[mode])
                r.update(model=name, file_rows=n, threads=threads, repeat=repeat, vs_kernel=r["rows_per_s"] / kernel)
                results.append(r)
                log(_line(r))
    return results


def _line(r: dict) -> str:
    return (f"| {r['model']} | {r['file_rows']:,} | {r['mode']} | {r['rows_per_s']:,.0f} | {r['vs_kernel']:.2f} | "
            f"{r['peak_rss_mb']:,.0f} | {r['peak_rss_mb'] - r['start_rss_mb']:,.0f} | {r['arrow_peak_mb']:,.0f} |")


HEADER = ("| model | rows | mode | rows/s | x kernel | peak RSS MB | RSS growth MB | Arrow peak MB |\n"
          "|---|---|---|---|---|---|---|---|")


# --- pytest ------------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # run as a script without pytest
    pytest = None

if pytest is not None and __name__ != "__main__":
    lgb = pytest.importorskip("lightgbm")

    @pytest.fixture(scope="module")
    def bench_folder(tmp_path_factory) -> Path:
        return tmp_path_factory.mktemp("bulk-bench")

    @pytest.mark.parametrize("name", MODELS)
    def test_bulk_matches_the_lightgbm_loop(benchmark, bench_folder, name):
        import scoreline

        case = prepare(name, bench_folder)
        data = features_file(case, ROWS[0], bench_folder)
        out = bench_folder / f"{name}-bulk.parquet"
        benchmark.group = f"bulk {name} {ROWS[0]} rows"
        result = benchmark.pedantic(
            scoreline.score_file, args=(case.model, data, out), kwargs=dict(keep=["id"], threads=1, batch_size=BATCH),
            rounds=3, iterations=1,
        )
        assert result.rows_scored == ROWS[0]
        booster = lgb.Booster(model_file=str(case.model))
        table = pq.read_table(data)
        names = booster.feature_name()
        expected = booster.predict(np.column_stack([table[n].to_numpy() for n in names]), num_threads=1)
        got = pq.read_table(out)
        assert got["id"].to_pylist() == table["id"].to_pylist()
        scores = [c for c in got.column_names if c.startswith("score")]
        got = np.column_stack([got[c].to_numpy() for c in scores])
        np.testing.assert_allclose(got, expected.reshape(got.shape), rtol=1e-12, atol=1e-12)

    def test_measurement_harness(bench_folder):
        case = prepare("demo", bench_folder)
        r = measure("bulk", case, features_file(case, ROWS[0], bench_folder), bench_folder / "m.parquet", 1)
        assert r["rows"] == ROWS[0] and r["peak_rss_mb"] >= r["start_rss_mb"] > 0 and r["arrow_peak_mb"] > 0

    @pytest.mark.slow
    @pytest.mark.skipif("SCORELINE_BENCH_BULK_ROWS" not in os.environ,
                        reason="the full report runs when SCORELINE_BENCH_BULK_ROWS names the file sizes")
    def test_throughput_and_memory_report(bench_folder, capsys):
        results = run_report(MODELS, ROWS, 1, bench_folder, log=lambda line: None)
        with capsys.disabled():
            print("\n" + HEADER + "\n" + "\n".join(_line(r) for r in results))
        for r in results:
            kernel_rows = min(r["file_rows"], -(-_KERNEL_ROWS // BATCH) * BATCH)
            expected = kernel_rows if r["mode"] == "kernel" else r["file_rows"]
            assert r["rows"] == expected, r


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000000", help="file sizes, comma-separated")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved runs per mode (median rate)")
    parser.add_argument("--modes", help="kernel,bulk,loop,deployment (default: all; kernel always runs)")
    parser.add_argument("--folder", default=str(Path(__file__).resolve().parents[1] / ".cache" / "bench-bulk"))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(_run_measurement(json.loads(args.measure))))
        return 0
    print(f"bulk benchmark, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, threads={args.threads}, "
          f"batch={BATCH:,}\n{HEADER}", flush=True)
    results = run_report(args.models.split(","), [int(n) for n in args.rows.split(",")], args.threads,
                         Path(args.folder), repeat=args.repeat, log=lambda line: print(line, flush=True),
                         only=None if args.modes is None else set(args.modes.split(",")))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
