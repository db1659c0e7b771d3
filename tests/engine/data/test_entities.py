"""Tests for engine/data/entities.py: batch lookups in file, SQLite and PostgreSQL stores, and reloads."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoreline.engine.data.stores import open_store
from scoreline.errors import InputError, NotFoundError, SchemaError
from scoreline.registry.manifest import ArrowStore, ParquetStore, PostgresStore, SqliteStore

KINDS = ["parquet", "arrow", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def customers(n: int = 50, seed: int = 0, spread: int = 10) -> pa.Table:
    """n customers with distinct ids in [0, spread * n): dense ids get the direct index."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(spread * n, size=n, replace=False).astype(np.int64)
    balance = rng.normal(1000, 300, n)
    return pa.table({
        "customer_id": ids,
        "state": pa.array(rng.choice(["VIC", "NSW", "QLD"], n).tolist()),
        "balance": pa.array(balance, mask=rng.random(n) < 0.2),      # some nulls
        "dob": pa.array([f"19{60 + i % 40}-01-0{1 + i % 9}" for i in range(n)]),
    })


def write_arrow(table: pa.Table, path, stream: bool = False) -> None:
    with pa.OSFile(str(path), "wb") as sink:
        writer = pa.ipc.new_stream if stream else pa.ipc.new_file
        with writer(sink, table.schema) as w:
            w.write_table(table)


@pytest.fixture
def make_store(tmp_path, request):
    """make_store(kind, table, key) -> an open store holding `table`."""
    opened, dropped = [], []

    def make(kind, table, key="customer_id"):
        name = f"entities_{uuid.uuid4().hex[:10]}"
        if kind == "parquet":
            pq.write_table(table, tmp_path / f"{name}.parquet")
            spec = ParquetStore(path=f"{name}.parquet", key_column=key)
        elif kind == "arrow":
            write_arrow(table, tmp_path / f"{name}.arrow")
            spec = ArrowStore(path=f"{name}.arrow", key_column=key)
        elif kind == "sqlite":
            import adbc_driver_sqlite.dbapi as sq

            with sq.connect(str(tmp_path / "e.db"), autocommit=True) as c, c.cursor() as cur:
                cur.adbc_ingest(name, table, mode="create")
            spec = SqliteStore(path="e.db", table=name, key_column=key)
        else:
            import adbc_driver_postgresql.dbapi as pg

            uri = request.getfixturevalue("postgres_uri")
            with pg.connect(uri, autocommit=True) as c, c.cursor() as cur:
                cur.adbc_ingest(name, table, mode="create")
            dropped.append((uri, name))
            spec = PostgresStore(uri=uri, table=name, key_column=key)
        store = open_store(spec, tmp_path)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
    for uri, name in dropped:
        import adbc_driver_postgresql.dbapi as pg

        with pg.connect(uri, autocommit=True) as c, c.cursor() as cur:
            cur.execute(f'DROP TABLE IF EXISTS "{name}"')


def reference(table: pa.Table, keys: list, key: str, columns: list[str]) -> tuple[list, list]:
    rows = {r[key]: r for r in table.to_pylist()}
    found = [k in rows for k in keys]
    return [{c: rows[k][c] for c in columns} if k in rows else {c: None for c in columns}
            for k in keys], found


@pytest.mark.parametrize("spread", [2, 10**9])
@pytest.mark.parametrize("kind", KINDS)
def test_lookup_matches_a_dict_reference(make_store, kind, spread):
    table = customers(200, spread=spread)
    store = make_store(kind, table)
    rng = np.random.default_rng(1)
    keys = rng.choice(table.column("customer_id").to_numpy(), 100).tolist() + [-1, 2**40, 401]
    rng.shuffle(keys)
    got, found = store.lookup(pa.array(keys), ["balance", "state", "dob"])
    want, want_found = reference(table, keys, "customer_id", ["balance", "state", "dob"])
    assert found.tolist() == want_found
    assert got.to_pylist() == want
    assert got.column_names == ["balance", "state", "dob"]
    assert got.schema.field("balance").type == pa.float64()


@pytest.mark.parametrize("kind", KINDS)
def test_keys_of_other_types_nulls_and_duplicates(make_store, kind):
    table = customers(20)
    store = make_store(kind, table)
    k0, k1 = table.column("customer_id").to_pylist()[:2]
    got, found = store.lookup(pa.array([str(k0), None, "abc", str(k1), str(k0)]), ["state"])
    assert found.tolist() == [True, False, False, True, True]
    states = dict(zip(table.column("customer_id").to_pylist(), table.column("state").to_pylist()))
    assert got.column("state").to_pylist() == [states[k0], None, None, states[k1], states[k0]]
    got, found = store.lookup([float(k1), 1.5], ["state"])
    assert found.tolist() == [True, False]
    got, found = store.lookup(np.array([k1], dtype=np.int32))
    assert found.tolist() == [True] and "customer_id" not in got.column_names


@pytest.mark.parametrize("kind", KINDS)
def test_string_keys_and_empty_batches(make_store, kind):
    table = pa.table({"code": ["b", "a", "c", "é"], "value": [2.0, 1.0, 3.0, 4.0]})
    store = make_store(kind, table, key="code")
    got, found = store.lookup(pa.array(["c", "zz", "a", "é", "cc"]), ["value"])
    assert found.tolist() == [True, False, True, True, False]
    assert got.column("value").to_pylist() == [3.0, None, 1.0, 4.0, None]
    assert store.lookup(["ccc"])[1].tolist() == [False]        # longer than every stored key
    assert store.lookup([7])[1].tolist() == [False]
    got, found = store.lookup(pa.array([], pa.string()), ["value"])
    assert got.num_rows == 0 and found.shape == (0,)
    got, found = store.lookup(pa.array([None], pa.string()), ["value"])
    assert found.tolist() == [False] and got.column("value").to_pylist() == [None]


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_column_is_named(make_store, kind):
    store = make_store(kind, customers(5))
    with pytest.raises(SchemaError, match="no column 'postcode'"):
        store.lookup(pa.array([1]), ["postcode"])


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_lookups(make_store, kind):
    table = customers(100)
    store = make_store(kind, table)
    keys = table.column("customer_id").to_pylist()
    errors = []

    def worker(offset):
        try:
            for i in range(10):
                k = keys[(offset * 10 + i) % len(keys)]
                got, found = store.lookup(pa.array([k, -5]), ["state"])
                want, _ = reference(table, [k, -5], "customer_id", ["state"])
                if got.to_pylist() != want or found.tolist() != [True, False]:
                    errors.append((k, got.to_pylist()))
        except Exception as exc:  # reported below with the failing thread's details
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_sqlite_all_null_first_rows_and_declared_types(tmp_path):
    import adbc_driver_sqlite.dbapi as sq

    with sq.connect(str(tmp_path / "n.db"), autocommit=True) as c, c.cursor() as cur:
        cur.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, note TEXT, score REAL, dob DATE)")
        cur.execute("WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 3000) "
                    "INSERT INTO people SELECT i, NULL, NULL, NULL FROM s")
        cur.execute("UPDATE people SET note = 'late', score = 2, dob = '1966-12-08' WHERE id = 3000")
    store = open_store(SqliteStore(path="n.db", table="people", key_column="id"), tmp_path)
    keys = list(range(1, 3001))
    got, found = store.lookup(pa.array(keys))
    assert found.all()
    assert got.schema == pa.schema([("note", pa.string()), ("score", pa.float64()), ("dob", pa.string())])
    assert got.slice(2999).to_pylist() == [{"note": "late", "score": 2.0, "dob": "1966-12-08"}]
    assert got.column("note").null_count == 2999
    store.close()


def test_parquet_folder_and_glob(tmp_path):
    table = customers(40)
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(table.slice(0, 25), folder / "a.parquet")
    pq.write_table(table.slice(25), folder / "b.parquet")
    keys = table.column("customer_id").to_pylist()
    for path in ("parts", "parts/*.parquet"):
        with open_store(ParquetStore(path=path, key_column="customer_id"), tmp_path) as store:
            got, found = store.lookup(pa.array(keys[::-1]), ["state"])
            assert found.all()
            assert got.column("state").to_pylist() == table.column("state").to_pylist()[::-1]


def test_arrow_stream_format(tmp_path):
    table = customers(10)
    write_arrow(table, tmp_path / "s.arrows", stream=True)
    with open_store(ArrowStore(path=str(tmp_path / "s.arrows"), key_column="customer_id"), "/") as store:
        got, found = store.lookup(table.column("customer_id"), ["balance"])
        assert found.all() and got.column("balance").equals(table.column("balance"))


def test_store_problems_are_named(tmp_path):
    with pytest.raises(NotFoundError, match="no Parquet files"):
        open_store(ParquetStore(path="missing/*.parquet", key_column="id"), tmp_path)
    pq.write_table(pa.table({"id": [1, 2, 1], "x": [1, 2, 3]}), tmp_path / "dup.parquet")
    with pytest.raises(InputError, match="key 1 appears more than once"):
        open_store(ParquetStore(path="dup.parquet", key_column="id"), tmp_path)
    with pytest.raises(SchemaError, match="no key column 'customer'"):
        open_store(ParquetStore(path="dup.parquet", key_column="customer"), tmp_path)
    with pytest.raises(NotFoundError, match="no SQLite database"):
        open_store(SqliteStore(path="nope.db", table="t", key_column="id"), tmp_path)
    with pytest.raises(SchemaError, match="not a plain SQL identifier"):
        open_store(SqliteStore(path="nope.db", table="t; DROP", key_column="id"), tmp_path)


def _rewrite(path, table):
    pq.write_table(table, path)
    # make the change visible even on a filesystem with coarse timestamps
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_reload_swaps_in_changed_files_and_keeps_old_data_on_errors(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"id": [1, 2], "x": [1.0, 2.0]}), path)
    store = open_store(ParquetStore(path="e.parquet", key_column="id"), tmp_path, reload_interval=3600)
    assert store.reload() is False                              # unchanged
    _rewrite(path, pa.table({"id": [1, 3], "x": [10.0, 30.0]}))
    assert store.lookup([3])[1].tolist() == [False]             # not checked before the interval
    assert store.reload() is True
    got, found = store.lookup([1, 2, 3], ["x"])
    assert found.tolist() == [True, False, True] and got.column("x").to_pylist() == [10.0, None, 30.0]
    path.write_bytes(b"not parquet")
    assert store.reload() is False and store.last_error is not None
    assert store.lookup([3], ["x"])[0].column("x").to_pylist() == [30.0]
    _rewrite(path, pa.table({"id": [1], "other": ["a"]}))
    assert store.reload() is False and "different schema" in store.last_error.message


def test_lookup_triggers_a_background_reload(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"id": [1], "x": [1.0]}), path)
    store = open_store(ParquetStore(path="e.parquet", key_column="id"), tmp_path, reload_interval=0.0)
    _rewrite(path, pa.table({"id": [1], "x": [2.0]}))
    give_up = time.monotonic() + 30
    while store.lookup([1], ["x"])[0].column("x")[0].as_py() != 2.0:
        assert time.monotonic() < give_up, "the background reload never happened"
        time.sleep(0.01)


@given(
    store_keys=st.lists(st.integers(-2**62, 2**62), unique=True, max_size=60),
    extra=st.lists(st.integers(-2**62, 2**62), max_size=20),
    data=st.data(),
)
def test_in_memory_index_property(tmp_path_factory, store_keys, extra, data):
    folder = tmp_path_factory.mktemp("prop")
    table = pa.table({"k": pa.array(store_keys, pa.int64()), "row": list(range(len(store_keys)))})
    write_arrow(table, folder / "t.arrow")
    keys = data.draw(st.lists(st.sampled_from(store_keys), max_size=20)) if store_keys else []
    keys = keys + extra
    with open_store(ArrowStore(path="t.arrow", key_column="k"), folder) as store:
        got, found = store.lookup(pa.array(keys, pa.int64()), ["row"])
    pos = {k: i for i, k in enumerate(store_keys)}
    assert found.tolist() == [k in pos for k in keys]
    assert got.column("row").to_pylist() == [pos.get(k) for k in keys]


def test_dates_from_parquet_keep_their_type(tmp_path):
    table = pa.table({"id": [7], "dob": pa.array([dt.date(1966, 12, 8)])})
    pq.write_table(table, tmp_path / "d.parquet")
    with open_store(ParquetStore(path="d.parquet", key_column="id"), tmp_path) as store:
        got, _ = store.lookup([7])
        assert got.schema.field("dob").type == pa.date32()


def test_sqlite_store_that_cannot_be_read_is_not_ready(make_store, tmp_path):
    import adbc_driver_sqlite.dbapi as sq

    from scoreline.errors import NotReadyError

    store = make_store("sqlite", customers(5))
    with sq.connect(str(tmp_path / "e.db"), autocommit=True) as c, c.cursor() as cur:
        cur.execute(f'DROP TABLE "{store.table}"')
    with pytest.raises(NotReadyError, match="cannot be read"):
        store.lookup([1])


@pytest.mark.postgres
def test_postgres_store_reconnects_after_a_dropped_connection(make_store, postgres_uri):
    import adbc_driver_postgresql.dbapi as pg

    table = customers(5)
    store = make_store("postgres", table)
    key = table.column("customer_id")[0].as_py()
    assert store.lookup([key])[1].tolist() == [True]
    with pg.connect(postgres_uri, autocommit=True) as c, c.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> "
                    "pg_backend_pid() AND query LIKE %s" % f"'%{store.table}%'")
        assert cur.fetchall(), "the store's connection was not found"
    assert store.lookup([key])[1].tolist() == [True]


@pytest.mark.postgres
def test_postgres_store_problems(postgres_uri):
    from scoreline.errors import NotReadyError

    with pytest.raises(NotFoundError, match="cannot read PostgreSQL table 'no_such_table_x'"):
        open_store(PostgresStore(uri=postgres_uri, table="no_such_table_x", key_column="id"), "/")
    with pytest.raises(NotReadyError, match="cannot connect to PostgreSQL"):
        open_store(PostgresStore(uri="postgresql://postgres@127.0.0.1:1/test", table="t",
                                 key_column="id"), "/")
