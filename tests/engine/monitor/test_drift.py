"""Data quality and drift: an unchanged stream stays quiet; shifted inputs, unseen categories,
out-of-range values and a store column going blank move the counters and PSI past thresholds."""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from scoreline.engine.monitor import PSI_ALERT, PSI_WARN, load_profile, psi

pytest.importorskip("lightgbm")

from scoreline.engine.data.request import RowBatch  # noqa: E402
from scoreline.engine.pipeline.router import Engine  # noqa: E402
from scoreline.errors import ScorelineError  # noqa: E402

MODEL = "customer-segmentation"


def _store(root) -> pa.Table:
    return pq.read_table(root / "store" / "customers.parquet")


def _tracker(engine, version=2):
    return engine.monitor.trackers[(MODEL, version)]


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift():
    ref = np.full(10, 0.1)
    assert psi(ref, ref) == 0
    small = np.array([0.12, 0.08] + [0.1] * 8)
    large = np.array([0.5, 0.0] + [0.0625] * 8)
    assert 0 < psi(ref, small) < PSI_WARN < PSI_ALERT < psi(ref, large)


def test_the_profile_is_kept_with_the_version_at_registration(root):
    profile = load_profile(root / "registry" / MODEL / "2")
    names = [c.name for c in profile.columns]
    assert names == ["date-of-birth", "state", "account-balance", "postcode", "score"]
    assert profile.source == "store" and profile.rows == 5000
    for column in profile.columns:
        assert abs(sum(column.shares) - 1) < 1e-9 and len(column.shares) == len(column.labels)
    state = profile.columns[1]
    assert state.kind == "category" and state.labels[1] == "NSW" and state.shares[0] == 0  # unseen


def test_an_unchanged_stream_stays_quiet(root):
    keys = _store(root).column("customer-id").to_numpy()
    rng = np.random.default_rng(5)
    with Engine(root / "registry", monitor=True) as engine:
        for _ in range(8):
            engine.score_batch(MODEL, pa.record_batch({"customer-id": rng.choice(keys, 500)}))
        for k in rng.choice(keys, 300).tolist():
            engine.score(MODEL, {"customer-id": k})
        engine.score_rows(MODEL, RowBatch(rng.choice(keys, 200).tolist(), None, [None] * 200))
        tracker = _tracker(engine)
        drift = tracker.drift()
        quality = tracker.quality()
    assert set(drift) == {"date-of-birth", "state", "account-balance", "postcode", "score"}
    assert max(drift.values()) < PSI_WARN, drift
    assert all(q["rows"] == 4500 for q in quality.values())
    assert all(q["missing"] == q["out_of_range"] == q["unseen"] == 0 for q in quality.values())


def test_shifted_inputs_move_their_psi_past_the_alert_and_only_theirs(root):
    table = _store(root).slice(0, 4000)
    shifted = table.drop(["customer-id"]).set_column(
        3, "account-balance", pc.multiply(table.column("account-balance"), 25.0))
    with Engine(root / "registry") as engine:
        engine.score_batch(MODEL, shifted)
        drift = _tracker(engine).drift()
    assert drift["account-balance"] > PSI_ALERT
    assert drift["state"] < PSI_WARN and drift["date-of-birth"] < PSI_WARN
    assert drift["score"] > PSI_WARN  # the model's answers moved with it


def test_unseen_categories_and_out_of_range_values_are_counted(root):
    table = _store(root).slice(0, 1000).drop(["customer-id"])
    state = pa.array(["XX"] * 100 + table.column("state").cast(pa.string()).to_pylist()[100:])
    pc_values = table.column("postcode").to_pylist()
    postcode = pa.array(pc_values[:100] + [99_999] * 40 + pc_values[140:], pa.int32())
    bad = table.set_column(1, "state", state).set_column(2, "postcode", postcode)
    with Engine(root / "registry") as engine:
        out = engine.score_batch(MODEL, bad)
        assert out.column("error").null_count == 860  # rows 0..139 refused, as before
        quality = _tracker(engine).quality()
        assert quality["state"]["unseen"] == 100 and quality["state"]["missing"] == 0
        assert quality["postcode"]["out_of_range"] == 40 and quality["postcode"]["missing"] == 0
        assert quality["account-balance"]["unseen"] == quality["account-balance"]["out_of_range"] == 0
        # the one-row path refuses before the model: counted the same way
        for state, postcode in (("XX", 3000), ("VIC", 99_999)):
            with pytest.raises(Exception, match="expected"):
                engine.score(MODEL, {"inputs": {"date-of-birth": "1970-01-01", "state": state,
                                                "account-balance": 10.0, "postcode": postcode}})
        quality = _tracker(engine).quality()
    assert quality["state"]["unseen"] == 101 and quality["postcode"]["out_of_range"] == 41


def test_a_store_column_going_blank_is_seen_on_every_path(root):
    table = _store(root)
    keys = table.column("customer-id").to_numpy()[:3000]
    blank = table.set_column(4, "account-balance", pa.nulls(table.num_rows, pa.float64()))
    pq.write_table(blank, root / "store" / "customers.parquet")
    with Engine(root / "registry") as engine:
        engine.score_batch(MODEL, pa.record_batch({"customer-id": keys}))
        for k in keys[:50].tolist():
            with pytest.raises(ScorelineError):
                engine.score(MODEL, {"customer-id": k})
        tracker = _tracker(engine)
        quality, drift = tracker.quality(), tracker.drift()
    assert quality["account-balance"]["missing"] == 3000 + 50  # the batch's, the one-row calls'
    assert quality["state"]["missing"] == 0
    assert drift["account-balance"] > PSI_ALERT and drift["state"] < PSI_WARN


def test_one_row_calls_are_counted_exactly_across_folds(root):
    keys = _store(root).column("customer-id").to_pylist()[:3000]
    calls = 9_000  # more than two folds of the one-row queue, and a remainder
    with Engine(root / "registry") as engine:
        for i in range(calls):
            engine.score(MODEL, {"customer-id": keys[i % len(keys)]})
        tracker = _tracker(engine)
        quality, (window, _), drift = tracker.quality(), tracker.window(), tracker.drift()
    assert {q["rows"] for q in quality.values()} == {calls}
    assert all(q["missing"] == q["out_of_range"] == q["unseen"] == 0 for q in quality.values())
    assert calls // 2 <= window <= calls  # the PSI bins a strided sample of each fold
    assert max(drift.values()) < PSI_WARN
