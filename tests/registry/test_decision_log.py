"""Tests for registry/decision_log.py against SQLite (WAL) and the real PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import uuid

import pyarrow as pa
import pytest

from scoreline.errors import InputError, NotReadyError, SchemaError
from scoreline.registry import DECISION_SCHEMA, DecisionLog


def rows(model_id="credit", version=1, n=3, start=0, **cols):
    base = {
        "request_id": [f"r{start + i}" for i in range(n)],
        "model_id": [model_id] * n,
        "model_version": [version] * n,
        "entity_key": [start + i for i in range(n)],          # ints: cast to string
        "score": [0.25 * ((start + i) % 4) for i in range(n)],
        "decision": ["accept"] * n,
        "latency_us": [float(start + i + 1) for i in range(n)],
    }
    base.update(cols)
    return pa.table(base)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def log_url(request, tmp_path):
    """A (url, table) pair; PostgreSQL tables get a unique name and are dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/decisions.db", "decisions"
        return
    uri = request.getfixturevalue("postgres_uri")
    table = f"test_decisions_{uuid.uuid4().hex[:10]}"
    yield uri, table
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture
def log(log_url):
    url, table = log_url
    log = DecisionLog(url, table=table, flush_interval=0.05)
    yield log
    log.close()


def test_append_flush_tail_round_trip(log):
    log.append(rows(n=3))
    log.append(rows(n=2, start=3, score=[None, None], decision=[None, None],
                    error=["entity 3 not found", "score is not finite"]).to_batches()[0])
    exact = pa.RecordBatch.from_pylist([{"ts": dt.datetime.now(dt.timezone.utc), "request_id": "r5",
                                         "model_id": "credit", "model_version": 1}],
                                       schema=DECISION_SCHEMA)
    log.append(exact)                                   # already the log's schema: no conversion
    log.flush()
    t = log.tail(10).slice(0, 5)
    assert t.schema.equals(DECISION_SCHEMA)
    assert log.tail(1).column("request_id").to_pylist() == ["r5"]
    assert t.column("request_id").to_pylist() == ["r0", "r1", "r2", "r3", "r4"]
    assert t.column("entity_key").to_pylist() == ["0", "1", "2", "3", "4"]
    assert t.column("score").to_pylist() == [0.0, 0.25, 0.5, None, None]
    assert t.column("error").to_pylist() == [None, None, None, "entity 3 not found", "score is not finite"]
    ts = t.column("ts").to_pylist()
    assert all(abs((dt.datetime.now(dt.timezone.utc) - x).total_seconds()) < 60 for x in ts)
    assert [r["request_id"] for r in log.tail(2).to_pylist()] == ["r4", "r5"]


def test_many_null_rows_then_a_string_read_back(log):
    # SQLite's driver infers result types from the first rows: all-null columns must not break reads
    log.append(rows(n=3000, error=[None] * 3000, decision=[None] * 3000, score=[None] * 3000))
    log.append(rows(n=1, start=3000, error=["boom"]))
    log.flush()
    t = log.tail(5000)
    assert t.num_rows == 3001 and t.column("error").to_pylist()[-1] == "boom"
    assert t.column("error").null_count == 3000


def test_tail_by_model_and_explicit_timestamps(log):
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    log.append(rows("credit", n=2, ts=[t0, t0 + dt.timedelta(seconds=1)]))
    log.append(rows("segments", n=1, start=5, ts=[t0 + dt.timedelta(seconds=2)]))
    log.flush()
    got = log.tail(10, model_id="credit")
    assert got.column("model_id").to_pylist() == ["credit", "credit"]
    assert got.column("ts").to_pylist() == [t0, t0 + dt.timedelta(seconds=1)]
    assert log.tail(10, model_id="nope").num_rows == 0


def test_stats_per_model_and_version(log):
    # latencies 1..100 for v1: mean 50.5, nearest-rank p50 = 50, p99 = 99
    log.append(rows("credit", 1, n=100, error=[None] * 98 + ["x", "y"]))
    log.append(rows("credit", 2, n=1, latency_us=[7.0]))
    log.flush()
    stats = log.stats().to_pylist()
    assert [(s["model_id"], s["model_version"], s["calls"], s["errors"]) for s in stats] == [
        ("credit", 1, 100, 2), ("credit", 2, 1, 0)]
    assert (stats[0]["mean_latency_us"], stats[0]["p50_latency_us"], stats[0]["p99_latency_us"]) == (
        50.5, 50.0, 99.0)
    assert stats[1]["p99_latency_us"] == 7.0 and stats[1]["last_call"] is not None
    old = dt.datetime(2020, 5, 1, tzinfo=dt.timezone.utc)
    log.append(rows("archived", 1, n=4, ts=[old] * 4, latency_us=[1.0, 2.0, 3.0, None]))
    log.flush()
    assert [s["model_id"] for s in log.stats(since=dt.timedelta(hours=1)).to_pylist()] == ["credit"] * 2
    recent = log.stats(since=dt.datetime(2020, 1, 1)).to_pylist()
    assert [(s["model_id"], s["calls"], s["p50_latency_us"], s["p99_latency_us"]) for s in recent][0] == (
        "archived", 4, 2.0, 3.0)                          # a null latency counts as a call only
    assert recent[0]["last_call"] == old


def test_concurrent_appends_are_all_written(log):
    def worker(k):
        for i in range(50):
            log.append(rows(n=2, start=1000 * k + 2 * i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.flush()
    assert log.stats().column("calls").to_pylist() == [400]
    assert log.dropped_rows == 0


def test_close_writes_everything_queued(log_url):
    url, table = log_url
    log = DecisionLog(url, table=table, flush_interval=60.0)   # only close() can write them
    for i in range(20):
        log.append(rows(n=5, start=5 * i))
    log.close()
    log.close()                                                # idempotent
    with pytest.raises(NotReadyError, match="closed"):
        log.append(rows())
    with DecisionLog(url, table=table) as again:
        assert again.tail(1000).num_rows == 100


def test_clean_exit_without_close_loses_nothing(tmp_path):
    url = f"sqlite:///{tmp_path}/exit.db"
    code = (
        "import pyarrow as pa\n"
        "from scoreline.registry import DecisionLog\n"
        f"log = DecisionLog({url!r}, flush_interval=60.0)\n"
        "log.append(pa.table({'model_id': ['m'] * 7, 'model_version': [1] * 7}))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with DecisionLog(url) as log:
        assert log.tail(100).num_rows == 7


def test_failed_writes_are_retried_not_lost(tmp_path):
    import adbc_driver_sqlite.dbapi as sq

    path = tmp_path / "retry.db"
    log = DecisionLog(f"sqlite:///{path}", flush_interval=0.01)
    with sq.connect(str(path), autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE decisions RENAME TO hidden")
        log.append(rows(n=4))
        with pytest.raises(NotReadyError, match="not committed"):
            log.flush(timeout=0.3)
        assert log.last_error is not None
        cur.execute("ALTER TABLE hidden RENAME TO decisions")
    log.flush()
    assert log.tail(10).num_rows == 4 and log.last_error is None
    log.close()


def test_a_sqlite_file_locked_by_another_process_is_waited_for(tmp_path):
    """The workers of `serve --workers N` open the same new log file at once: one that finds it
    locked by another process setting it up waits for the lock (busy timeout) instead of failing
    to start."""
    path = tmp_path / "shared.db"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "c.execute('CREATE TABLE setup (step INTEGER)')\n"
        "c.execute('BEGIN EXCLUSIVE'); c.execute('INSERT INTO setup VALUES (1)')\n"
        "print('locked', flush=True); time.sleep(1.0); c.execute('COMMIT')\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        log = DecisionLog(f"sqlite:///{path}")
        log.append(rows(n=2))
        log.flush()
        assert log.tail(10).num_rows == 2
        log.close()
    finally:
        holder.wait(timeout=30)
    assert holder.returncode == 0


def test_bad_rows_and_urls(log):
    with pytest.raises(SchemaError, match="unknown columns"):
        log.append(rows(extra=[1, 2, 3]))
    with pytest.raises(InputError, match="'model_version'"):
        log.append(pa.table({"model_id": ["m"]}))
    with pytest.raises(InputError, match="'model_id' has nulls"):
        log.append(pa.table({"model_id": ["m", None], "model_version": [1, 1]}))
    with pytest.raises(InputError, match="'model_id' has nulls"):
        log.append(pa.RecordBatch.from_pylist(
            [{"ts": dt.datetime.now(dt.timezone.utc), "model_version": 1}], schema=DECISION_SCHEMA))
    with pytest.raises(InputError, match="'latency_us'"):
        log.append(rows(latency_us=["fast", "slow", "x"]))
    with pytest.raises(SchemaError, match="unsupported decision log URL"):
        DecisionLog("mysql://h/db")
    with pytest.raises(NotReadyError, match=r"cannot open the decision log 'postgresql://u:\*\*\*@"):
        DecisionLog("postgresql://u:secret@127.0.0.1:1/nowhere")
    with pytest.raises(SchemaError, match="table name"):
        DecisionLog("sqlite:///x.db", table="x; DROP TABLE y")


@pytest.mark.postgres
def test_writer_reconnects_after_the_server_drops_it(postgres_uri):
    import adbc_driver_postgresql.dbapi as pg

    table = f"test_decisions_{uuid.uuid4().hex[:10]}"
    log = DecisionLog(postgres_uri, table=table, flush_interval=0.01)
    try:
        log.append(rows(n=2))
        log.flush()
        with pg.connect(postgres_uri, autocommit=True) as conn, conn.cursor() as cur:
            # every other connection that touched the table: the writer's and the reader's
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> "
                        f"pg_backend_pid() AND query LIKE '%{table}%'")
            assert cur.fetchall()
        log.append(rows(n=3, start=2))
        log.flush()
        assert log.tail(10).num_rows == 5
    finally:
        log.close()
        with pg.connect(postgres_uri, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
