"""registry/decision_log.py's migration: a log created before the artifact_sha256 column gains it
when opened (SQLite and the real PostgreSQL), keeps its rows (null there) and takes new ones."""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid

import pyarrow as pa
import pytest

from scoreline.registry import DecisionLog

# the table as the first release created it
OLD_COLUMNS = ("ts {ts}, request_id TEXT, model_id TEXT, model_version {int}, entity_key TEXT, score {real}, "
               "decision TEXT, latency_us {real}, error TEXT")


def _new_row():
    return pa.table({"ts": [dt.datetime.now(dt.timezone.utc)], "request_id": ["new"], "model_id": ["m"],
                     "model_version": [1], "artifact_sha256": ["ab" * 32]})


def _check(url, table):
    for _ in range(2):  # a second open finds the column there already
        with DecisionLog(url, table=table) as log:
            log.append(_new_row())
            log.flush()
            rows = log.tail(10).to_pylist()
    assert [(r["request_id"], r["artifact_sha256"]) for r in rows] == [("old", None), ("new", "ab" * 32),
                                                                       ("new", "ab" * 32)]


def test_an_old_sqlite_log_gains_the_column(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE decisions ({OLD_COLUMNS.format(ts='TEXT', int='INTEGER', real='REAL')})")
        conn.execute("INSERT INTO decisions VALUES ('2026-01-01T00:00:00', 'old', 'm', 1, '5', 0.5, 'accept', "
                     "10.0, NULL)")
    _check(f"sqlite:///{path}", "decisions")


@pytest.mark.postgres
def test_an_old_postgresql_log_gains_the_column(postgres_uri):
    import adbc_driver_postgresql.dbapi as pg

    table = f"test_migrate_{uuid.uuid4().hex[:10]}"
    with pg.connect(postgres_uri, autocommit=True) as conn, conn.cursor() as cur:
        columns = OLD_COLUMNS.format(ts="TIMESTAMPTZ", int="BIGINT", real="DOUBLE PRECISION")
        cur.execute(f"CREATE TABLE {table} ({columns}, seq BIGSERIAL)")
        cur.execute(f"INSERT INTO {table} (ts, request_id, model_id, model_version) "
                    "VALUES ('2026-01-01T00:00:00Z', 'old', 'm', 1)")
    try:
        _check(postgres_uri, table)
    finally:
        with pg.connect(postgres_uri, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
