"""The Redis entity store against the real Redis on 127.0.0.1:6379: typed decoding, pipelined batch
reads, freshness, the LRU+TTL cache, and a join with PostgreSQL; each test under its own key prefix."""

from __future__ import annotations

import datetime as dt
import time

import msgspec
import numpy as np
import pyarrow as pa
import pytest

from scoreline.engine.data.stores import open_store
from scoreline.engine.data.redis_store import StaleError, write_entities
from scoreline.engine.data.storecache import CachedStore, lookup_rows
from scoreline.errors import NotReadyError
from scoreline.registry.manifest import RedisStore, Store
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.redis

COLUMNS = {"date-of-birth": "date", "state": "string", "account-balance": "float",
           "postcode": "int", "active": "bool", "seen": "timestamp"}


def _spec(url, prefix, **extra) -> RedisStore:
    return msgspec.convert({"kind": "redis", "url": url, "key-prefix": prefix,
                            "key-column": "customer-id", "columns": COLUMNS, **extra},
                           RedisStore, from_attributes=False)


def _table(n=50) -> pa.Table:
    rng = np.random.default_rng(1)
    return pa.table({
        "customer-id": pa.array(np.arange(100, 100 + n), pa.int64()),
        "date-of-birth": pa.array([dt.date(1950, 1, 1) + dt.timedelta(days=int(d))
                                   for d in rng.integers(0, 20000, n)], pa.date32()),
        "state": pa.array(rng.choice(["NSW", "VIC", "QLD"], n).tolist()),
        "account-balance": pa.array(rng.normal(1000, 500, n)),
        "postcode": pa.array(rng.integers(2000, 7000, n), pa.int64()),
        "active": pa.array((rng.random(n) > 0.5).tolist()),
        "seen": pa.array([dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc)] * n,
                         pa.timestamp("us", tz="UTC")),
    })


def _client(url):
    import redis

    return redis.Redis.from_url(url)


def test_batch_lookup_round_trips_every_type_exactly(redis_url, redis_prefix):
    spec = _spec(redis_url, redis_prefix)
    table = _table()
    assert write_entities(spec, table) == 50
    store = open_store(spec, ".")
    keys = [149, 100, 5, None, 120, 100]
    got, found = store.lookup(pa.array(keys, pa.int64()), list(COLUMNS))
    assert found.tolist() == [True, True, False, False, True, True]
    assert got.schema.names == list(COLUMNS)
    want = table.take(pa.array([49, 0, 0, 0, 20, 0])).select(list(COLUMNS)).to_pylist()
    for i in (0, 1, 4, 5):   # floats survive the text form bit for bit
        assert got.to_pylist()[i] == want[i]
    assert got.to_pylist()[2] == dict.fromkeys(COLUMNS)
    store.close()


def test_one_round_trip_per_batch(redis_url, redis_prefix):
    spec = _spec(redis_url, redis_prefix)
    write_entities(spec, _table())
    # Through a proxy that delays every client-to-server write by 50 ms: 50 keys read one by one
    # would take 2.5 s; one pipelined round trip takes one delay.
    with FaultProxy(redis_url, kind="tcp") as proxy:
        store = open_store(msgspec.structs.replace(spec, url=proxy.url + "/0", timeout=2.0), ".")
        proxy.set(delay=0.05)
        started = time.perf_counter()
        table, found = store.lookup(np.arange(100, 150), ["state"])
        elapsed = time.perf_counter() - started
        store.close()
    assert found.all() and table.num_rows == 50
    assert 0.05 <= elapsed < 0.5


def test_a_value_that_does_not_parse_is_a_row_error(redis_url, redis_prefix):
    spec = _spec(redis_url, redis_prefix)
    write_entities(spec, _table(3))
    _client(redis_url).hset(f"{redis_prefix}101", "account-balance", "lots")
    store = open_store(spec, ".")
    table, found, errors = lookup_rows(store, [100, 101, 102], ["account-balance", "state"])
    assert found.all() and list(errors) == [1]
    assert "'account-balance'" in errors[1].message and "b'lots'" in errors[1].message
    assert table.column("account-balance")[1].as_py() is None
    assert table.column("account-balance")[0].as_py() is not None


def test_a_key_that_is_not_a_hash_is_a_row_error(redis_url, redis_prefix):
    spec = _spec(redis_url, redis_prefix)
    write_entities(spec, _table(2))
    _client(redis_url).set(f"{redis_prefix}100", "not a hash")
    _, found, errors = lookup_rows(open_store(spec, "."), [100, 101], ["state"])
    assert found.tolist() == [True, True] and list(errors) == [0]
    assert "WRONGTYPE" in errors[0].message


def test_string_keys_and_prefix(redis_url, redis_prefix):
    spec = _spec(redis_url, redis_prefix, **{"key-type": "string", "columns": {"state": "string"}})
    _client(redis_url).hset(f"{redis_prefix}ab-1", "state", "WA")
    store = open_store(spec, ".")
    table, found = store.lookup(["ab-1", "zz", None], ["state"])
    assert found.tolist() == [True, False, False]
    assert table.column("state").to_pylist() == ["WA", None, None]


@pytest.mark.parametrize("stale", ["error", "default"])
def test_freshness(redis_url, redis_prefix, stale):
    spec = _spec(redis_url, redis_prefix, freshness={"field": "updated", "max-age": 60, "stale": stale})
    table = _table(3)
    write_entities(spec, table.slice(0, 2))                          # now: fresh
    write_entities(spec, table.slice(2, 1), event_time=time.time() - 3600)
    client = _client(redis_url)
    client.hset(f"{redis_prefix}100", "updated", dt.datetime.now(dt.timezone.utc).isoformat())
    client.hdel(f"{redis_prefix}101", "updated")                   # no event time: stale
    store = open_store(spec, ".")
    got, found, errors = lookup_rows(store, [100, 101, 102], ["state"])
    assert found.tolist() == [True, True, True]
    assert got.column("state")[0].as_py() == table.column("state")[0].as_py()
    assert got.column("state").to_pylist()[1:] == [None, None]
    if stale == "error":
        assert sorted(errors) == [1, 2] and all(isinstance(e, StaleError) for e in errors.values())
        assert "3600 s old" in errors[2].message or "s old" in errors[2].message
        assert "no readable event time" in errors[1].message
    else:
        assert errors == {}


def test_redis_down_is_not_ready(redis_prefix):
    spec = _spec("redis://127.0.0.1:1/0", redis_prefix, timeout=0.2)
    with pytest.raises(NotReadyError, match="cannot reach Redis"):
        open_store(spec, ".")


def test_password_comes_from_the_environment(redis_url, redis_prefix, monkeypatch):
    spec = _spec(redis_url, redis_prefix, **{"password-env": "SCORELINE_TEST_NO_SUCH_VAR"})
    monkeypatch.delenv("SCORELINE_TEST_NO_SUCH_VAR", raising=False)
    with pytest.raises(NotReadyError, match="SCORELINE_TEST_NO_SUCH_VAR"):
        open_store(spec, ".")


def test_cache_serves_repeats_until_the_ttl_passes(redis_url, redis_prefix):
    spec = _spec(redis_url, redis_prefix, columns={"state": "string"})
    client = _client(redis_url)
    client.hset(f"{redis_prefix}1", "state", "NSW")
    now = [0.0]
    store = CachedStore(open_store(spec, "."), size=2, ttl=5.0, clock=lambda: now[0])
    assert store.lookup([1, 2], ["state"])[0].column("state").to_pylist() == ["NSW", None]
    client.hset(f"{redis_prefix}1", "state", "VIC")
    client.hset(f"{redis_prefix}2", "state", "WA")
    table, found = store.lookup([2, 1], ["state"])          # both cached, absence included
    assert table.column("state").to_pylist() == [None, "NSW"] and found.tolist() == [False, True]
    assert (store.hits, store.misses) == (2, 2)
    now[0] = 5.1                                             # expired: read again
    assert store.lookup([1, 2], ["state"])[0].column("state").to_pylist() == ["VIC", "WA"]
    store.lookup([3], ["state"])                             # size 2: key 1, least recent, goes
    client.hset(f"{redis_prefix}1", "state", "SA")
    client.hset(f"{redis_prefix}2", "state", "TAS")
    assert store.lookup([1, 2], ["state"])[0].column("state").to_pylist() == ["SA", "WA"]


@pytest.mark.postgres
def test_join_postgres_profile_with_redis_balances(redis_url, redis_prefix, postgres_uri):
    import adbc_driver_postgresql.dbapi as pg

    table = f"profile_{redis_prefix.split(':')[1]}"
    with pg.connect(postgres_uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE TABLE "{table}" (customer_id BIGINT PRIMARY KEY, state TEXT)')
        cur.execute(f"INSERT INTO \"{table}\" VALUES (1, 'NSW'), (2, 'VIC'), (3, 'QLD')")
    try:
        _client(redis_url).hset(f"{redis_prefix}1", "balance", "12.5")
        _client(redis_url).hset(f"{redis_prefix}3", "balance", "7")
        spec = msgspec.json.decode(msgspec.json.encode({
            "kind": "join", "stores": [
                {"kind": "postgres", "uri": postgres_uri, "table": table, "key-column": "customer_id"},
                {"kind": "cached", "ttl": 1, "store": {
                    "kind": "redis", "url": redis_url, "key-prefix": redis_prefix,
                    "key-column": "customer-id", "columns": {"balance": "float"}}}]}),
            type=Store)
        store = open_store(spec, ".")
        assert store.schema.names == ["customer_id", "state", "balance"]
        got, found = store.lookup([3, 2, 9, 1], ["state", "balance"])
        assert found.tolist() == [True, True, False, True]
        assert got.to_pylist() == [{"state": "QLD", "balance": 7.0}, {"state": "VIC", "balance": None},
                                   {"state": None, "balance": None}, {"state": "NSW", "balance": 12.5}]
        store.close()
    finally:
        with pg.connect(postgres_uri, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(f'DROP TABLE "{table}"')


@pytest.mark.postgres
def test_the_cache_in_front_of_postgres(postgres_uri, redis_prefix):
    import adbc_driver_postgresql.dbapi as pg

    table = f"cached_{redis_prefix.split(':')[1]}"
    with pg.connect(postgres_uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE TABLE "{table}" (customer_id BIGINT PRIMARY KEY, state TEXT)')
        cur.execute(f"INSERT INTO \"{table}\" VALUES (1, 'NSW')")
    try:
        spec = msgspec.json.decode(msgspec.json.encode({"kind": "cached", "ttl": 60, "store": {
            "kind": "postgres", "uri": postgres_uri, "table": table, "key-column": "customer_id"}}),
            type=Store)
        store = open_store(spec, ".")
        assert store.lookup([1, 2], ["state"])[0].column("state").to_pylist() == ["NSW", None]
        with pg.connect(postgres_uri, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(f"UPDATE \"{table}\" SET state = 'VIC'")
        assert store.lookup([1], ["state"])[0].column("state").to_pylist() == ["NSW"]   # cached
        store.clear()
        assert store.lookup([1], ["state"])[0].column("state").to_pylist() == ["VIC"]
        store.close()
    finally:
        with pg.connect(postgres_uri, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(f'DROP TABLE "{table}"')
