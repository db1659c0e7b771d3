"""The HTTP benchmark's plumbing, without servers or timing: Arrow bodies, medians, targets, the table."""

from __future__ import annotations

import argparse

import pyarrow as pa

from benchmarks.http.run import arrow_body, markdown, summarise


def _point(server, c, rnd, rps, p50, p99):
    return {"server": server, "concurrency": c, "round": rnd, "rps": rps, "p50_ms": p50, "p99_ms": p99,
            "errors": 0, "tool": "wrk", "client_cpu_cores": 0.5, "server_cpu_cores": 1.0}


def test_arrow_body_is_a_stream_of_known_customers():
    table = pa.ipc.open_stream(arrow_body(5_000_000, 100, 500)).read_all()
    assert table.column_names == ["customer-id"] and table.num_rows == 500
    keys = table["customer-id"].to_pylist()
    assert min(keys) >= 5_000_000 and max(keys) < 5_000_100


def test_summary_takes_medians_and_pairs_ratios_within_rounds():
    args = argparse.Namespace(duration=1.0, rounds=3, concurrency=[1, 64], customers=100, arrow_rows=10)
    points = []
    for rnd, (ours, floor) in enumerate([(800, 1000), (900, 1000), (400, 500)]):
        points += [_point("scoreline", 64, rnd, ours, 5.0, 20.0 + rnd), _point("starlette-constant", 64, rnd, floor, 4.0, 9.0),
                   _point("starlette-lightgbm", 64, rnd, 300, 9.0, 30.0),
                   _point("scoreline", 1, rnd, 2000, 0.5, 1.0), _point("starlette-constant", 1, rnd, 5000, 0.1, 0.3),
                   _point("starlette-lightgbm", 1, rnd, 4000, 0.35, 0.6)]
    bulk = [{"round": 0, "concurrency": 1, "rows_per_s": 1e5, "p50_ms": 100.0, "errors": 0, "client_cpu_cores": 0.1}]
    result = summarise(points, bulk, args)
    row = {(r["server"], r["concurrency"]): r for r in result["single_row"]}
    assert row[("scoreline", 64)]["rps"] == 800 and row[("scoreline", 64)]["p99_ms"] == 21.0
    targets = {t["target"].split(" ")[0]: t for t in result["targets"]}
    assert targets["full"]["figure"].startswith("0.80x") and targets["full"]["reached"]  # pairs: 0.8, 0.9, 0.8
    assert targets["p99"]["reached"]
    # bound at concurrency 1: 1.2 * (0.1 + (0.35 - 0.1)) = 0.42 ms; ours 0.5 ms
    assert not targets["p50"]["reached"] and "0.420 ms" in targets["p50"]["figure"]
    text = markdown(result)
    assert "| scoreline | 64 | 800 |" in text and "| concurrency 1 | 10 | 100,000 |" in text
