"""The decision log's experiment columns: a log made before them is migrated on open (old rows
read as null), and new rows carry the experiment and role (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pytest

from scoreline.registry.decision_log import DecisionLog

_OLD = ("ts TEXT, request_id TEXT, model_id TEXT, model_version INTEGER, entity_key TEXT, "
        "score REAL, decision TEXT, latency_us REAL, error TEXT")
_OLD_PG = _OLD.replace("ts TEXT", "ts TIMESTAMPTZ").replace("INTEGER", "BIGINT").replace(
    "REAL", "DOUBLE PRECISION") + ", seq BIGSERIAL"


def _old_log(url: str, table: str, columns: str) -> None:
    if url.startswith("sqlite"):
        import adbc_driver_sqlite.dbapi as driver
        conn = driver.connect(url[len("sqlite:///"):], autocommit=True)
        values = "('2026-01-01T00:00:00', 'r1', 'm', 1, '7', 0.5, 'accept', 10.0, NULL)"
    else:
        import adbc_driver_postgresql.dbapi as driver
        conn = driver.connect(url, autocommit=True)
        values = "('2026-01-01T00:00:00Z', 'r1', 'm', 1, '7', 0.5, 'accept', 10.0, NULL)"
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE {table} ({columns})")
    cur.execute(f"INSERT INTO {table} (ts, request_id, model_id, model_version, entity_key, score, "
                f"decision, latency_us, error) VALUES {values}")
    cur.close()
    conn.close()


def _check(url: str, table: str) -> None:
    with DecisionLog(url, table=table) as log:
        log.append(pa.table({"model_id": ["m", "m"], "model_version": [2, 3],
                             "experiment": ["e", "e"], "role": ["challenger", "shadow"]}))
        log.flush()
        rows = log.tail(10).to_pylist()
    assert [(r["model_version"], r["experiment"], r["role"]) for r in rows] == [
        (1, None, None), (2, "e", "challenger"), (3, "e", "shadow")]


def test_an_old_sqlite_log_gets_the_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _old_log(url, "decisions", _OLD)
    _check(url, "decisions")


def test_an_old_postgres_log_gets_the_columns(postgres_uri):
    pytest.importorskip("adbc_driver_postgresql")
    table = f"old_{uuid.uuid4().hex[:8]}"
    _old_log(postgres_uri, table, _OLD_PG)
    _check(postgres_uri, table)
