"""Figures for remote models and the Redis entity store (issue 14), short runs, medians.

    .venv/bin/python -m benchmarks.remote.run [--repeats 300] [--rounds 3]

- remote overhead: a `scoreline serve` process (its own process, loopback) serves credit-risk v1
  over v2 REST; then MLServer 1.7.1 + mlserver-lightgbm (a peer's v2 server, when
  benchmarks/peers/setup.sh installed it) serves the same kind of model, called in matrix mode. "direct" POSTs the very body RemoteModel sends with a bare pooled httpx.Client;
  "remote-model" is RemoteModel.predict_rows (encode, one request, decode, breaker, deadline).
  The overhead is their difference at p50 and p99, for 1 row and a 64-row batch; the two are
  interleaved call by call so machine noise hits both alike.
- breaker: the remote goes down (the fault proxy answers 503); requests keep coming; the time
  from the first failed request until the breaker is open, and the answer latency of the
  declared fallback (a fixed decision) while it is open.
- Redis: lookups of 1 key and of a 1,000-key batch, Redis (pipelined HMGET) and Redis behind the
  LRU+TTL cache (all hits) against the in-memory Parquet store, interleaved.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _pcts(samples) -> tuple[float, float]:
    a = np.asarray(samples) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _serve(registry: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(REPO / ".cache" / "numba")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "scoreline"), "serve", "--registry", str(registry),
                             "--port", str(port), "--log", "none", "--log-level", "warning"], env=env)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("scoreline serve did not become ready")


def remote_overhead(url: str, repeats: int) -> dict:
    from scoreline.engine.models.remote import RemoteModel
    from tests.engine.models.test_remote import features, spec

    model = RemoteModel(spec(url, **{"token-env": None}))
    return _interleaved(model, model.infer_url, model._body, lambda n: features(n)[0], repeats)


def _interleaved(model, url: str, body_of, X_of, repeats: int) -> dict:
    """Direct POSTs of RemoteModel's own body against RemoteModel.predict_rows, call by call."""
    import httpx

    client = httpx.Client()
    out = {}
    for n in (1, 64):
        X = X_of(n)
        body = body_of(X)
        headers = {"content-type": "application/json"}
        for _ in range(20):
            client.post(url, content=body, headers=headers)
            model.predict_rows(X)
        direct, ours = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            client.post(url, content=body, headers=headers).json()
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            model.predict_rows(X)
            ours.append(time.perf_counter() - t)
        d50, d99 = _pcts(direct)
        o50, o99 = _pcts(ours)
        out[n] = {"direct": (d50, d99), "remote-model": (o50, o99), "overhead": (o50 - d50, o99 - d99)}
    return out


def mlserver_overhead(repeats: int, venv: Path) -> dict:
    """The same against MLServer 1.7.1 + mlserver-lightgbm (a peer's v2 server), in matrix mode;
    its answers checked against Booster.predict first."""
    import lightgbm as lgb
    import msgspec

    from benchmarks.suite.mlserver import MLServerPeer
    from scoreline.engine.models.remote import RemoteModel
    from scoreline.registry.manifest import RemoteSpec
    from tests.support.server import train

    with tempfile.TemporaryDirectory() as tmp:
        path = train(False, Path(tmp))
        booster = lgb.Booster(model_file=path)
        rng = np.random.default_rng(1)
        rows = np.column_stack([rng.uniform(18, 85, 64), rng.integers(0, 6, 64).astype(float),
                                np.log1p(rng.gamma(2.0, 2000.0, 64))])
        with MLServerPeer(Path(path), rows, batching=False, venv=venv) as server:
            base = server.url.split("/v2/")[0]
            model = RemoteModel(msgspec.convert({
                "url": base, "name": "bench-model", "output": "predict", "matrix": "input-0",
                "inputs": [{"name": n} for n in ("age", "state", "balance")]}, RemoteSpec))
            got = model.predict_rows(np.asfortranarray(rows))
            if not ((got.source == "remote").all() and np.array_equal(got.values, booster.predict(rows))):
                raise AssertionError("MLServer's answers through RemoteModel differ from Booster.predict")
            return _interleaved(model, server.url, model._body, lambda n: np.asfortranarray(rows[:n]), repeats)


def breaker(url: str, repeats: int) -> dict:
    from scoreline.engine.models.remote import RemoteModel
    from tests.engine.models.test_remote import features, spec
    from tests.support.faultproxy import FaultProxy

    X, _ = features(1)
    with FaultProxy(url) as proxy:
        model = RemoteModel(spec(proxy.url, **{"token-env": None, "retry": {"attempts": 2, "backoff": 0.01},
                                               "breaker": {"failures": 5, "reset": 60},
                                               "fallback": {"kind": "decision", "decision": "refer"}}))
        model.predict_rows(X)
        proxy.set(status=503)
        started = time.perf_counter()
        calls = 0
        while model.breaker.state == "closed":
            model.predict_rows(X)
            calls += 1
        to_open = time.perf_counter() - started
        lat = []
        for _ in range(repeats):
            t = time.perf_counter()
            model.predict_rows(X)
            lat.append(time.perf_counter() - t)
    return {"open-after-s": to_open, "failed-calls": calls, "fallback": _pcts(lat)}


def redis_lookups(repeats: int) -> dict:
    import msgspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scoreline.engine.data.stores import open_store
    from scoreline.engine.data.redis_store import write_entities
    from scoreline.engine.data.storecache import CachedStore
    from scoreline.registry.manifest import ParquetStore, RedisStore
    from tests.support.server import customers

    table = customers(100_000)
    prefix = f"scoreline-bench:{os.getpid()}:"
    spec = msgspec.convert({"kind": "redis", "key-prefix": prefix, "key-column": "customer-id",
                            "columns": {"date-of-birth": "date", "state": "string",
                                        "account-balance": "float", "postcode": "int"}}, RedisStore)
    write_entities(spec, table)
    cols = ["date-of-birth", "state", "account-balance", "postcode"]
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(table, Path(tmp) / "c.parquet")
        stores = {"parquet (memory)": open_store(msgspec.convert(
                      {"kind": "parquet", "path": "c.parquet", "key-column": "customer-id"},
                      ParquetStore), tmp),
                  "redis": open_store(spec, tmp)}
        stores["redis + cache (hits)"] = CachedStore(open_store(spec, tmp), size=200_000, ttl=3600)
        rng = np.random.default_rng(0)
        out = {}
        for n in (1, 1000):
            keys = [pa.array(rng.integers(1000, 101_000, n)) for _ in range(repeats)]
            if n == 1000:
                keys = keys[: max(20, repeats // 10)]
            stores["redis + cache (hits)"].lookup(pa.concat_arrays(keys), cols)   # warm the cache
            samples = {name: [] for name in stores}
            for k in keys:
                for name, store in stores.items():
                    t = time.perf_counter()
                    store.lookup(k, cols)
                    samples[name].append(time.perf_counter() - t)
            out[n] = {name: _pcts(s) for name, s in samples.items()}
        import redis

        client = redis.Redis.from_url(spec.url)
        for chunk in range(0, table.num_rows, 10_000):
            client.delete(*[f"{prefix}{k}" for k in range(1000 + chunk, 1000 + min(chunk + 10_000, table.num_rows))])
    return out


def _report(server: str, rounds: list[dict]) -> None:
    for n in (1, 64):
        for what in ("direct", "remote-model", "overhead"):
            p50 = np.median([r[n][what][0] for r in rounds])
            p99 = np.median([r[n][what][1] for r in rounds])
            print(f"{server}: {n:>2} row(s) {what:<13} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    from tests.support.server import build_registry, free_port

    with tempfile.TemporaryDirectory() as tmp:
        info = build_registry(Path(tmp) / "registry")
        port = free_port()
        proc = _serve(info["root"], port)
        try:
            url = f"http://127.0.0.1:{port}"
            rounds = [remote_overhead(url, args.repeats) for _ in range(args.rounds)]
            _report("scoreline serve", rounds)
            b = [breaker(url, args.repeats) for _ in range(args.rounds)]
            print(f"breaker opens after {np.median([x['open-after-s'] for x in b]) * 1e3:.1f} ms "
                  f"({b[0]['failed-calls']} failed calls); fallback answer p50 "
                  f"{np.median([x['fallback'][0] for x in b]) * 1e3:.1f} us p99 "
                  f"{np.median([x['fallback'][1] for x in b]) * 1e3:.1f} us")
        finally:
            proc.terminate()
            proc.wait(30)
    venv = REPO / ".peers" / "mlserver-venv"
    if (venv / "bin" / "mlserver").exists():
        _report("MLServer", [mlserver_overhead(args.repeats, venv) for _ in range(args.rounds)])
    else:
        print("MLServer: not installed (benchmarks/peers/setup.sh mlserver); skipped")
    rr = [redis_lookups(args.repeats) for _ in range(args.rounds)]
    for n in (1, 1000):
        for name in rr[0][n]:
            p50 = np.median([r[n][name][0] for r in rr])
            p99 = np.median([r[n][name][1] for r in rr])
            print(f"lookup {n:>4} key(s) {name:<22} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
