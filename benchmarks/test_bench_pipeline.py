"""Pipeline benchmarks: one entity end to end, a 64-row batch (what the HTTP server's micro-batcher
hands the engine at concurrency 64) and a 10,000-row batch, by stage (lookup, transforms,
model, decision, log), against the bare model kernel on the same rows.

The model is the demo's `customer-segmentation` v2 (5 classes x 60 rounds, 4 features, from date
of birth, state, balance and postcode) over a generated Parquet entity store. Every benchmark
checks its answer, so the file runs as a correctness test with `--benchmark-disable`.

    .venv/bin/python -m pytest benchmarks/test_bench_pipeline.py                # pytest-benchmark
    .venv/bin/python benchmarks/test_bench_pipeline.py [--customers 1000000]   # stage table

The bar (issue 3): overhead beyond the bare kernel under 20 us for one request and under 30% for
a 10,000-row batch; a 64-row micro-batch should cost little more than the model itself. The stage table prints medians of interleaved rounds, so machine drift is shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

CUSTOMERS = int(os.environ.get("SCORELINE_BENCH_CUSTOMERS", "20000"))
BATCH_ROWS = 10_000
SMALL_ROWS = 64
MODEL = "customer-segmentation"


class Bench:
    """The demo registry, an engine with a decision log, and the rows every stage runs on."""

    def __init__(self, root: Path, customers: int) -> None:
        from scoreline.engine.demo import FIRST_CUSTOMER_ID, build_demo
        from scoreline.engine.pipeline.deployment import scoring_day
        from scoreline.engine.pipeline.router import Engine
        from scoreline.engine.pipeline.stages import Predict

        build_demo(root, customers=customers, train_rows=min(customers, 100_000),
                   log=lambda *a: None)
        self.engine = Engine(root / "registry", preload=True,
                             log=f"sqlite:///{root / 'decisions.db'}")
        self.plain = Engine(root / "registry", preload=True)  # no log
        self.dep = self.engine.deployment(MODEL)
        rng = np.random.default_rng(3)
        keys = FIRST_CUSTOMER_ID + rng.choice(customers, size=BATCH_ROWS, replace=customers < BATCH_ROWS)
        self.key = int(keys[0])
        self.request = {"customer-id": self.key}
        self.keys = pa.array(keys)
        self.key_batch = pa.RecordBatch.from_pydict({"customer-id": self.keys})
        table, _ = self.dep.store.lookup(self.keys, ["date-of-birth", "state", "account-balance",
                                                     "postcode"])
        self.inline_batch = pa.RecordBatch.from_arrays(
            [self.keys, *[table.column(c).combine_chunks() for c in table.column_names]],
            names=["customer-id", *table.column_names])
        self.columns = list(table.column_names)
        # A micro-batch of typed Arrow columns (the Arrow door): int64, float64, utf8, date32.
        small = self.inline_batch.slice(0, SMALL_ROWS)
        self.small_keys = pa.RecordBatch.from_arrays([small.column(0)], names=["customer-id"])
        self.small_inline = pa.RecordBatch.from_arrays(
            [_plain(small.column(i)) for i in range(small.num_columns)], names=small.schema.names)
        # The work matrices and feature matrices each stage starts from.
        self.today = scoring_day()  # what the engine scores with
        self.work1 = self.dep.plan.new_work(1)
        self.work = self.dep.plan.new_work(BATCH_ROWS)
        self._fill(self.work1, self.inline_batch.slice(0, 1))
        self._fill(self.work, self.inline_batch)
        self.X1 = np.asfortranarray(self.dep.plan.run(self.work1.copy(), self.today))
        self.X = np.asfortranarray(self.dep.plan.run(self.work.copy(), self.today))
        self.raw1 = self.dep.model.predict_matrix(self.X1)
        self.raw = self.dep.model.predict_matrix(self.X)
        self.X_small = np.asfortranarray(self.X[:SMALL_ROWS])
        self.raw_small = self.dep.model.predict_matrix(self.X_small)
        # Overhead measured directly, not as a difference of two noisy timings.
        self.stubbed = Engine(root / "registry", preload=True)
        stubbed = self.stubbed.deployment(MODEL)
        stub = _StubModel(stubbed.model, {1: self.raw1, SMALL_ROWS: self.raw_small,
                                          BATCH_ROWS: self.raw})
        for stage in stubbed.stages:  # the pipeline's model stage predicts with the stub
            if isinstance(stage, Predict):
                stage.model = stub

    def _fill(self, work, batch) -> None:
        # The pipeline's own fill stage (checks + codes), so the later stages start from real work.
        from scoreline.engine.pipeline.stages import State

        state = State(batch.num_rows, batch, self.today)
        self.dep.stages[0].run(state)
        assert not state.errors
        work[:] = state.work

    # --- single request stages ----------------------------------------------------------------
    def model1(self):
        return self.dep.model.predict_matrix(self.X1)

    def lookup1(self):
        return self.dep.store.lookup(np.array([self.key]), self.columns)

    def transforms1(self):
        return self.dep.plan.run(self.work1, self.today)

    def decision1(self):
        score = self.dep.decider.scores(self.raw1)
        return self.dep.decider.decide(self.raw1, score)

    def request1(self):
        return self.plain.score(MODEL, self.request)

    def logged1(self):
        return self.engine.score(MODEL, self.request)

    # --- micro-batch stages ---------------------------------------------------------------------
    def model64(self):
        return self.dep.model.predict_matrix(self.X_small)

    def batch64_keys(self):
        return self.plain.score_batch(MODEL, self.small_keys)

    def batch64_inline(self):
        return self.plain.score_batch(MODEL, self.small_inline)

    def overhead64(self):
        return self.stubbed.score_batch(MODEL, self.small_keys)

    # --- batch stages -------------------------------------------------------------------------
    def model(self):
        return self.dep.model.predict_matrix(self.X)

    def lookup(self):
        return self.dep.store.lookup(self.keys, self.columns)

    def transforms(self):
        return self.dep.plan.run(self.work, self.today)

    def decision(self):
        score = self.dep.decider.scores(self.raw)
        return self.dep.decider.decide(self.raw, score)

    def batch_inline(self):
        return self.plain.score_batch(MODEL, self.inline_batch)

    def batch_keys(self):
        return self.plain.score_batch(MODEL, self.key_batch)

    def logged(self):
        return self.engine.score_batch(MODEL, self.key_batch)

    # --- the pipeline alone: the model replaced by a stub that returns its answer at once -----
    def overhead1(self):
        return self.stubbed.score(MODEL, self.request)

    def overhead(self):
        return self.stubbed.score_batch(MODEL, self.key_batch)

    def close(self) -> None:
        self.engine.close()
        self.plain.close()
        self.stubbed.close()


def _plain(column: pa.Array) -> pa.Array:
    """A store column in the type the server sends: dictionaries decoded, ints as int64."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column.cast(pa.int64()) if pa.types.is_integer(column.type) else column


class _StubModel:
    """A model whose predict_matrix returns a stored answer: what remains is the pipeline."""

    def __init__(self, model, answers: dict) -> None:
        self._model = model
        self._answers = answers

    def __getattr__(self, name):
        return getattr(self._model, name)

    def predict_matrix(self, X, raw_score=False, num_threads=None, out=None):
        return self._answers[X.shape[0]]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    pytest.importorskip("lightgbm")
    b = Bench(tmp_path_factory.mktemp("pipeline"), CUSTOMERS)
    yield b
    b.close()


def _check_one(out: dict, bench: Bench) -> None:
    assert out["customer-id"] == bench.key and out["model-version"] == bench.dep.version
    assert 0 < out["score"] <= 1 and out["product-sku"]


def test_single_model_kernel(benchmark, bench):
    assert benchmark(bench.model1).shape == (1, 5)


def test_single_lookup(benchmark, bench):
    table, found = benchmark(bench.lookup1)
    assert found.all() and table.num_rows == 1


def test_single_transforms(benchmark, bench):
    np.testing.assert_array_equal(benchmark(bench.transforms1), bench.X1)


def test_single_decision(benchmark, bench):
    index, payload = benchmark(bench.decision1)
    assert index[0] == bench.raw1[0].argmax() and payload[0] >= 0


def test_single_request(benchmark, bench):
    _check_one(benchmark(bench.request1), bench)


def test_single_request_logged(benchmark, bench):
    _check_one(benchmark(bench.logged1), bench)


def test_batch64_model_kernel(benchmark, bench):
    assert benchmark(bench.model64).shape == (SMALL_ROWS, 5)


def _check_small(out: pa.RecordBatch, bench: Bench) -> None:
    assert out.column("error").null_count == SMALL_ROWS
    np.testing.assert_allclose(out.column("score").to_numpy(), bench.raw_small.max(axis=1),
                               rtol=1e-12)


def test_batch64_keys(benchmark, bench):
    _check_small(benchmark(bench.batch64_keys), bench)


def test_batch64_inline(benchmark, bench):
    _check_small(benchmark(bench.batch64_inline), bench)


def test_batch64_pipeline_overhead(benchmark, bench):
    _check_small(benchmark(bench.overhead64), bench)


def test_batch_model_kernel(benchmark, bench):
    assert benchmark(bench.model).shape == (BATCH_ROWS, 5)


def test_batch_lookup(benchmark, bench):
    table, found = benchmark(bench.lookup)
    assert found.all() and table.num_rows == BATCH_ROWS


def test_batch_transforms(benchmark, bench):
    np.testing.assert_array_equal(benchmark(bench.transforms), bench.X)


def test_batch_decision(benchmark, bench):
    index, _ = benchmark(bench.decision)
    np.testing.assert_array_equal(index, bench.raw.argmax(axis=1))


def test_batch_inline(benchmark, bench):
    out = benchmark(bench.batch_inline)
    assert out.column("error").null_count == BATCH_ROWS
    np.testing.assert_allclose(out.column("score").to_numpy(), bench.raw.max(axis=1), rtol=1e-12)


def test_batch_keys(benchmark, bench):
    out = benchmark(bench.batch_keys)
    assert out.column("error").null_count == BATCH_ROWS
    np.testing.assert_allclose(out.column("score").to_numpy(), bench.raw.max(axis=1), rtol=1e-12)


def test_single_pipeline_overhead(benchmark, bench):
    out = benchmark(bench.overhead1)
    assert out["score"] == bench.raw1.max()


def test_batch_pipeline_overhead(benchmark, bench):
    out = benchmark(bench.overhead)
    assert out.column("error").null_count == BATCH_ROWS


def test_batch_logged(benchmark, bench):
    assert benchmark(bench.logged).column("error").null_count == BATCH_ROWS


# --- the stage table --------------------------------------------------------------------------

SINGLE = ("model1", "lookup1", "transforms1", "decision1", "request1", "logged1", "overhead1")
SMALL = ("model64", "batch64_keys", "batch64_inline", "overhead64")
BATCH = ("model", "lookup", "transforms", "decision", "batch_inline", "batch_keys", "logged",
         "overhead")


def stage_table(b: Bench, rounds: int = 7, single_calls: int = 2000, batch_calls: int = 5,
                best: bool = False) -> dict:
    """Median (or, with `best`, minimum) microseconds per call of every stage, rounds interleaved
    across stages. On a busy machine the minimum is the better estimate of a stage's own cost."""
    times: dict[str, list[float]] = {name: [] for name in SINGLE + SMALL + BATCH}
    for _ in range(rounds):
        for name in SINGLE + SMALL + BATCH:
            f = getattr(b, name)
            calls = single_calls if name in SINGLE else (
                max(1, single_calls // 10) if name in SMALL else batch_calls)
            f()
            start = time.perf_counter()
            for _ in range(calls):
                f()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    pick = np.min if best else np.median
    return {name: float(pick(t)) for name, t in times.items()}


def format_table(t: dict) -> str:
    lines = ["one request (us):"]
    for name in SINGLE:
        lines.append(f"  {name:<14}{t[name]:>12.2f}")
    lines.append(f"  overhead beyond the kernel: {t['overhead1']:.2f} us measured with a stub "
                 f"model; {t['request1'] - t['model1']:.2f} us as request1 - model1 "
                 f"(logged: {t['logged1'] - t['model1']:.2f} us)")
    lines.append(f"micro-batch of {SMALL_ROWS} rows (us):")
    for name in SMALL:
        lines.append(f"  {name:<14}{t[name]:>12.1f}")
    lines.append(f"  overhead beyond the kernel (stub model, keys): {t['overhead64']:.1f} us = "
                 f"{t['overhead64'] / t['model64'] * 100:.1f}% of the kernel")
    for name in ("batch64_keys", "batch64_inline"):
        lines.append(f"  {name} - model64: {(t[name] / t['model64'] - 1) * 100:.1f}%")
    lines.append(f"batch of {BATCH_ROWS:,} rows (us):")
    for name in BATCH:
        lines.append(f"  {name:<14}{t[name]:>12.0f}")
    lines.append(f"  overhead beyond the kernel (stub model, keys): "
                 f"{t['overhead'] / t['model'] * 100:.1f}%")
    for name in ("batch_inline", "batch_keys", "logged"):
        lines.append(f"  {name} - model: {(t[name] / t['model'] - 1) * 100:.1f}%")
    return "\n".join(lines)


def test_stage_table_runs(bench):
    t = stage_table(bench, rounds=1, single_calls=3, batch_calls=1)
    assert set(t) == set(SINGLE + SMALL + BATCH) and all(v > 0 for v in t.values())
    assert "overhead" in format_table(t)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=CUSTOMERS)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--best", action="store_true", help="minimum of the rounds, not median")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        b = Bench(Path(tmp), args.customers)
        try:
            print(format_table(stage_table(b, rounds=args.rounds, best=args.best)))
        finally:
            b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
