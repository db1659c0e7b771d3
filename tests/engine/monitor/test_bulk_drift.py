"""Bulk runs are tracked: a registered deployment's `score_file` / `score_batches` count missing,
out-of-range and unseen values per input exactly and measure the PSI of inputs and score against
the version's reference; an unchanged file stays quiet, injected drift moves past the thresholds,
and `scoreline score` prints the summary and writes `--drift-json`."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from scoreline.engine.monitor import PSI_ALERT, PSI_WARN

pytest.importorskip("lightgbm")

from scoreline.cli import main  # noqa: E402
from scoreline.engine.bulk.jobs import score_batches, score_file  # noqa: E402

MODEL = "customer-segmentation"
BLANK, UNSEEN, HIGH = 3000, 500, 700


def _rows(root) -> pa.Table:
    """The store's rows as a file of raw inputs (inline: no lookup)."""
    return pq.read_table(root / "store" / "customers.parquet")


def _drifted(table: pa.Table) -> pa.Table:
    """Balances shifted up, a postcode column going blank, unseen states."""
    n = table.num_rows
    balance = pc.add(pc.multiply(table["account-balance"], 10.0), 5000.0)
    postcode = table["postcode"].to_numpy().astype(object)
    postcode[:BLANK] = None
    state = table["state"].to_numpy(zero_copy_only=False).astype(object)
    state[BLANK:BLANK + UNSEEN] = "XX"
    table = table.set_column(table.schema.get_field_index("account-balance"), "account-balance", balance)
    table = table.set_column(table.schema.get_field_index("postcode"), "postcode",
                             pa.array(postcode, pa.int64()))
    table = table.set_column(table.schema.get_field_index("state"), "state", pa.array(state.tolist()))
    assert n > BLANK + UNSEEN
    return table


def _columns(report) -> dict:
    (version,) = report
    return {c["name"]: c for c in version["columns"]}


def test_an_unchanged_file_stays_quiet(root, tmp_path):
    pq.write_table(_rows(root), tmp_path / "in.parquet")
    result = score_file(MODEL, tmp_path / "in.parquet", tmp_path / "out.parquet",
                        registry=root / "registry", batch_size=4096, threads=2)
    columns = _columns(result.drift)
    assert result.drift[0]["rows"] == result.rows_read == 20_000
    for name, c in columns.items():
        assert c["psi"] < PSI_WARN, name
        if name != "score":
            assert c["missing"] == c["out_of_range"] == c["unseen"] == 0, name


def test_injected_drift_moves_counters_exactly_and_psi_past_the_alert(root, tmp_path):
    pq.write_table(_drifted(_rows(root)), tmp_path / "in.parquet")
    result = score_file(MODEL, tmp_path / "in.parquet", tmp_path / "out.parquet",
                        registry=root / "registry", batch_size=4096, threads=2)
    columns = _columns(result.drift)
    assert result.drift[0]["rows"] == 20_000
    assert columns["account-balance"]["psi"] > PSI_ALERT
    assert columns["postcode"]["missing"] == BLANK
    assert columns["state"]["unseen"] == UNSEEN
    assert columns["date-of-birth"]["psi"] < PSI_WARN
    assert columns["date-of-birth"]["missing"] == 0
    # score_batches reports the same counts on the same rows
    tracking: list = []
    for _ in score_batches(_drifted(_rows(root)).to_batches(max_chunksize=3000), MODEL,
                           registry=root / "registry", tracking=tracking):
        pass
    again = _columns(tracking[0].report())
    assert [again[n]["missing"] for n in columns] == [columns[n]["missing"] for n in columns]
    assert [again[n]["unseen"] for n in columns] == [columns[n]["unseen"] for n in columns]


def test_score_prints_the_summary_and_writes_drift_json(root, tmp_path, capsys):
    table = _drifted(_rows(root))
    postcode = table["postcode"].to_pylist()
    postcode[-HIGH:] = [12345] * HIGH  # above the manifest's maximum (9999): refused, counted
    table = table.set_column(table.schema.get_field_index("postcode"), "postcode",
                             pa.array(postcode, pa.int64()))
    pq.write_table(table, tmp_path / "in.parquet")
    code = main(["score", MODEL, str(tmp_path / "in.parquet"), "-o", str(tmp_path / "out.parquet"),
                 "--registry", str(root / "registry"), "--drift-json", str(tmp_path / "d.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "data quality and drift of customer-segmentation" in out and "MAJOR" in out
    report = json.loads((tmp_path / "d.json").read_text())
    columns = _columns(report)
    assert columns["postcode"]["missing"] == BLANK and columns["state"]["unseen"] == UNSEEN
    assert columns["postcode"]["out_of_range"] == HIGH
    assert [line for line in out.splitlines() if line.strip().startswith("postcode")][0].split()[-3:] \
        == [f"{BLANK:,}", f"{HIGH:,}", "0"]
    assert np.isfinite(columns["score"]["psi"])
