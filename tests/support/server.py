"""Shared pieces of the server tests (no tests here): a small real registry and a live server on loopback."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import threading
import time

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import uvicorn

from scoreline.registry.manifest import decode_manifest

MODEL_ID = "credit-risk"
KEY = "customer-id"
STATES = ["NSW", "VIC", "QLD", "WA", "SA", "TAS"]
N_CUSTOMERS = 300


def customers(n: int = N_CUSTOMERS, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    born = [dt.date(1940, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 60 * 365, n)]
    return pa.table({
        KEY: pa.array(np.arange(1000, 1000 + n), pa.int64()),
        "date-of-birth": pa.array(born, pa.date32()),
        "state": pa.array([STATES[i] for i in rng.integers(0, len(STATES), n)]),
        "account-balance": pa.array(np.round(rng.gamma(2.0, 2000.0, n), 2)),
        "postcode": pa.array(rng.integers(2000, 7000, n), pa.int64()),
    })


def _manifest(with_postcode: bool) -> bytes:
    inputs = [
        '{"name": "date-of-birth", "type": "date", "earliest": "1900-01-01", "latest": "today"}',
        '{"name": "state", "type": "string", "allowed": ["NSW", "VIC", "QLD", "WA", "SA", "TAS"]}',
        '{"name": "account-balance", "type": "float", "minimum": 0}',
    ]
    transforms = [
        '{"kind": "age-years", "input": "date-of-birth", "output": "age"}',
        '{"kind": "vocabulary", "input": "state", "output": "state-code", "vocabulary": %s}' % str(STATES).replace("'", '"'),
        '{"kind": "log1p", "input": "account-balance", "output": "log-balance"}',
    ]
    features = '{"age": "age", "state": "state-code", "balance": "log-balance"}'
    if with_postcode:
        inputs.append('{"name": "postcode", "type": "int", "required": false, "default": 2000}')
        transforms.append('{"kind": "passthrough", "input": "postcode", "output": "pc"}')
        features = '{"age": "age", "state": "state-code", "balance": "log-balance", "postcode": "pc"}'
    return ("""{
      "model-id": "%s",
      "inputs": [%s],
      "entity": {"key": "%s", "store": {"kind": "parquet", "path": "customers.parquet", "key-column": "%s"}},
      "transforms": [%s],
      "model": {"format": "lightgbm", "artifact": "model.txt", "features": %s},
      "decision": {"kind": "bands", "bands": [{"label": "accept", "min": 0.6}, {"label": "refer", "min": 0.3}],
                   "default": "decline"}
    }""" % (MODEL_ID, ",".join(inputs), KEY, KEY, ",".join(transforms), features)).encode()


def train(with_postcode: bool, folder) -> str:
    rng = np.random.default_rng(3 if with_postcode else 2)
    n = 800
    age = rng.uniform(18, 85, n)
    state = rng.integers(0, len(STATES), n).astype(float)
    balance = np.log1p(rng.gamma(2.0, 2000.0, n))
    columns = [age, state, balance]
    names = ["age", "state", "balance"]
    if with_postcode:
        columns.append(rng.integers(2000, 7000, n).astype(float))
        names.append("postcode")
    X = np.column_stack(columns)
    y = ((age - 50) / 20 + (balance - 8) + rng.normal(0, 0.7, n) > 0).astype(int)
    booster = lgb.train(dict(objective="binary", num_leaves=7, verbose=-1, num_threads=1, min_data_in_leaf=5),
                        lgb.Dataset(X, y, feature_name=names, categorical_feature=["state"]), num_boost_round=20)
    path = str(folder / ("model-v2.txt" if with_postcode else "model-v1.txt"))
    booster.save_model(path)
    return path


def build_registry(root) -> dict:
    """A registry with `credit-risk` v1 (production) and v2 (needs postcode), and its customer store."""
    from scoreline import Repository
    from scoreline.engine.pipeline.deployment import validate_version

    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(customers(), root / "customers.parquet")
    repo = Repository(root)
    work = root.parent / "artifacts"
    work.mkdir(exist_ok=True)
    v1 = repo.add(MODEL_ID, decode_manifest(_manifest(False)), train(False, work), "v1", validate=validate_version)
    v2 = repo.add(MODEL_ID, decode_manifest(_manifest(True)), train(True, work), "v2 needs postcode",
                  validate=validate_version)
    repo.promote(MODEL_ID, v1, "production", "v1 goes live")
    return {"root": root, "v1": v1, "v2": v2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app, *, ready_path: str = "/healthz"):
    """Run `app` under uvicorn (httptools) in a thread on a free loopback port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, http="httptools", loop="asyncio", log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def make_engine(root, **kwargs):
    """The real engine over `root`, every live version compiled and warmed, logging to SQLite."""
    from scoreline import Engine

    return Engine(root, log=f"sqlite:///{root.parent / 'decisions.db'}", preload=True, **kwargs)
