"""A remote model as one more predict stage, end to end: the demo registry's credit-risk-remote
calling the demo server's own v2 endpoint (through the fault proxy), registration checked for
real, fallbacks marked in the answer and in the decision log, and the demo on Redis."""

from __future__ import annotations

import json
import sqlite3

import httpx
import msgspec
import pytest

pytest.importorskip("lightgbm")

from scoreline.engine.demo import FIRST_CUSTOMER_ID, build_demo  # noqa: E402
from scoreline.engine.pipeline.deployment import validate_version  # noqa: E402
from scoreline.engine.pipeline.router import Engine  # noqa: E402
from scoreline.errors import RegistrationError  # noqa: E402
from scoreline.registry.manifest import decode_manifest  # noqa: E402
from scoreline.registry.repository import Repository  # noqa: E402
from scoreline.server.app import create_app  # noqa: E402

from tests.support.faultproxy import FaultProxy  # noqa: E402
from tests.support.server import live_server  # noqa: E402

CUSTOMERS = 1500


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo registry, its remote model pointed at a proxy in front of the demo's own server."""
    root = tmp_path_factory.mktemp("remote-demo")
    with FaultProxy("http://127.0.0.1:1") as proxy:
        build_demo(root, customers=CUSTOMERS, train_rows=CUSTOMERS, remote_url=proxy.url,
                   log=lambda *_: None)
        db = root / "decisions.db"
        engine = Engine(root / "registry", preload=True, log=f"sqlite:///{db}")
        with live_server(create_app(engine)) as url:
            proxy.upstream = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
            yield {"engine": engine, "url": url, "proxy": proxy, "db": db, "root": root}
        engine.close()


@pytest.fixture
def proxy(demo):
    demo["proxy"].heal()
    demo["engine"].deployment("credit-risk-remote").model.breaker.record(True)
    return demo["proxy"]


def test_the_remote_model_answers_exactly_what_the_local_one_does(demo, proxy):
    engine = demo["engine"]
    for key in range(FIRST_CUSTOMER_ID, FIRST_CUSTOMER_ID + CUSTOMERS, 97):
        local = engine.score("credit-risk", {"customer-id": key})
        remote = engine.score("credit-risk-remote", {"customer-id": key})
        assert remote["score"] == local["score"]
        assert remote["application-decision"] == local["application-decision"]
        assert remote["fallback"] is None
    before = proxy.requests
    batch = engine.score_batch("credit-risk-remote", _keys(64))
    assert proxy.requests == before + 1                       # one request per batch
    assert batch.column("fallback").null_count == 64 and batch.column("error").null_count == 64
    local = engine.score_batch("credit-risk", _keys(64))
    assert batch.column("score").to_pylist() == local.column("score").to_pylist()


def test_over_http_a_down_remote_is_the_declared_fallback_marked_and_logged(demo, proxy):
    proxy.set(status=503)
    key = FIRST_CUSTOMER_ID + 5
    r = httpx.post(demo["url"] + "/v1/score", json={"model-id": "credit-risk-remote", "customer-id": key})
    assert r.status_code == 200
    body = r.json()
    assert body["score"] is None and body["application-decision"] == "refer"
    assert body["fallback"].startswith("decision 'refer': ") and "HTTP 503" in body["fallback"]
    batch = demo["engine"].score_batch("credit-risk-remote", _keys(3))
    assert batch.column("score").null_count == 3
    r = httpx.post(demo["url"] + "/v1/score/batch", json={"model-id": "credit-risk-remote", "rows": [
        {"customer-id": key}, {"customer-id": key + 1}]})      # the row-by-row log of a small batch
    assert r.status_code == 200, r.text
    assert batch.column("application-decision").to_pylist() == ["refer"] * 3
    demo["engine"].flush()
    with sqlite3.connect(demo["db"]) as db:
        rows = db.execute("SELECT score, decision, error FROM decisions WHERE model_id = "
                          "'credit-risk-remote' ORDER BY ts DESC LIMIT 6").fetchall()
    assert all(s is None and d == "refer" and e.startswith("decision 'refer'") for s, d, e in rows)


def test_a_remote_without_a_fallback_is_a_per_row_error_of_kind_remote(demo, proxy, tmp_path):
    reg = Repository(demo["root"] / "registry")
    manifest = json.loads((reg.version_dir("credit-risk-remote", 1) / "manifest.json").read_text())
    manifest["model"]["remote"]["fallback"] = {"kind": "error"}
    v = reg.add("credit-risk-remote", decode_manifest(json.dumps(manifest)), None, "no fallback",
                validate=validate_version)
    dep = demo["engine"].deployment("credit-risk-remote", v)
    proxy.set(mode="reset")
    result = dep.run(_keys(2))
    assert {e.kind for e in result.errors.values()} == {"remote"} and len(result.errors) == 2
    r = httpx.post(demo["url"] + "/v1/score", json={"model-id": "credit-risk-remote", "model-version": v,
                                                    "customer-id": FIRST_CUSTOMER_ID})
    assert r.status_code == 502 and r.json()["error"] == "remote"


def test_a_hung_remote_takes_no_scoring_thread_from_local_models(demo, proxy):
    import concurrent.futures
    import time

    reg = Repository(demo["root"] / "registry")
    manifest = json.loads((reg.version_dir("credit-risk-remote", 1) / "manifest.json").read_text())
    manifest["model"]["remote"]["timeout"] = 3.0   # far longer than a local answer, even here
    # more slow remote deployments than the server has scoring threads (2)
    versions = [reg.add("credit-risk-remote", json.dumps(manifest).encode(), None, "slow") for _ in range(3)]
    for v in versions:       # loaded (and warmed) while the remote answers
        demo["engine"].deployment("credit-risk-remote", v)
    proxy.set(mode="hang")
    body = {"model-id": "credit-risk-remote", "customer-id": FIRST_CUSTOMER_ID}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        # three remote deployments busy waiting on the hung remote (3 s each) ...
        waiting = [pool.submit(httpx.post, demo["url"] + "/v1/score", timeout=10,
                               json={**body, "model-version": v})
                   for v in versions for _ in range(3)]
        time.sleep(0.1)
        took = []                        # ... while a local model answers at once
        with httpx.Client() as client:
            for _ in range(5):
                started = time.monotonic()
                # inline inputs: scored on a thread (a key-only call may be answered on the loop)
                local = client.post(demo["url"] + "/v1/score", json={"model-id": "credit-risk", "inputs": {
                    "date-of-birth": "1966-12-08", "state": "VIC", "account-balance": 1200}})
                took.append(time.monotonic() - started)
                assert local.status_code == 200
        assert max(took) < 1.5, took       # blocked, it would wait for a remote call (~2.9 s)
        # each answered by its fallback, or (a batch queued behind another) past its deadline
        assert {f.result().status_code for f in waiting} <= {200, 503}, [f.result().text for f in waiting]


def test_registration_checks_the_remote_for_real(demo, proxy):
    reg = Repository(demo["root"] / "registry")
    manifest = json.loads((reg.version_dir("credit-risk-remote", 1) / "manifest.json").read_text())
    tensors = manifest["model"]["remote"]["inputs"]
    tensors[2]["datatype"] = "FP32"
    with pytest.raises(RegistrationError, match="FP64 at the remote"):
        reg.add("credit-risk-remote", decode_manifest(json.dumps(manifest)), None, "", validate=validate_version)
    tensors[2]["datatype"] = "FP64"
    tensors[1]["categories"] = [c.lower() for c in tensors[1]["categories"]]   # "nsw": refused
    with pytest.raises(RegistrationError, match="did not score a generated sample row"):
        reg.add("credit-risk-remote", decode_manifest(json.dumps(manifest)), None, "", validate=validate_version)
    proxy.set(status=None, mode="hang")
    manifest["model"]["remote"]["url"] = "http://127.0.0.1:1"
    with pytest.raises(RegistrationError, match="cannot be read"):
        reg.add("credit-risk-remote", decode_manifest(json.dumps(manifest)), None, "", validate=validate_version)


def test_a_server_starts_while_its_remote_is_down(demo, proxy):
    proxy.set(mode="hang")
    engine = Engine(demo["root"] / "registry", preload=True)   # bounded by the remote's timeout
    assert engine.ready
    out = engine.score("credit-risk-remote", {"customer-id": FIRST_CUSTOMER_ID})
    assert out["application-decision"] == "refer" and out["score"] is None
    engine.close()


@pytest.mark.redis
def test_the_demo_on_redis_scores_like_the_parquet_demo(demo, tmp_path, redis_url, redis_prefix):
    build_demo(tmp_path / "d", customers=300, train_rows=300, store="redis", redis_url=redis_url,
               redis_prefix=redis_prefix, remote_url="http://127.0.0.1:1", log=lambda *_: None)
    manifest = Repository(tmp_path / "d" / "registry").show("credit-risk")
    with Engine(tmp_path / "d" / "registry", preload=True) as engine:
        store = engine.deployment("credit-risk").store
        assert type(store).__name__ == "CachedStore"
        keys = [FIRST_CUSTOMER_ID + i for i in range(0, 300, 11)] + [1]
        got = engine.score_batch("credit-risk", _keys(keys=keys))
        assert got.column("error").to_pylist()[-1].endswith("not found in the entity store of model 'credit-risk'")
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "d" / "store" / "customers.parquet")
    with Engine(tmp_path / "d" / "registry") as engine:
        inline = engine.score_batch("credit-risk", table.take([k - FIRST_CUSTOMER_ID for k in keys[:-1]])
                                    .drop_columns(["customer-id"]))
    assert got.column("score").to_pylist()[:-1] == inline.column("score").to_pylist()
    assert manifest is not None


def _keys(n: int = 0, keys=None):
    import pyarrow as pa

    keys = keys if keys is not None else [FIRST_CUSTOMER_ID + i for i in range(n)]
    return pa.RecordBatch.from_pydict({"customer-id": pa.array(keys, pa.int64())})


def test_manifest_round_trip_of_the_remote_spec(demo):
    reg = Repository(demo["root"] / "registry")
    raw = (reg.version_dir("credit-risk-remote", 1) / "manifest.json").read_bytes()
    m = decode_manifest(raw)
    assert m.model.remote.fallback.decision == "refer" and m.model.artifact == ""
    assert msgspec.json.decode(raw)["model"]["remote"]["url"].startswith("http://127.0.0.1:")


def test_the_callers_deadline_travels_to_the_remote_call(demo, proxy):
    import time

    from scoreline.engine.pipeline.remote_stage import call_deadline

    reg = Repository(demo["root"] / "registry")
    manifest = json.loads((reg.version_dir("credit-risk-remote", 1) / "manifest.json").read_text())
    manifest["model"]["remote"]["timeout"] = 5.0
    v = reg.add("credit-risk-remote", json.dumps(manifest).encode(), None, "slow")
    dep = demo["engine"].deployment("credit-risk-remote", v)
    proxy.set(mode="hang")
    started = time.monotonic()
    with call_deadline(0.2):           # the server sets this from the waiting clients' deadline
        result = dep.run(_keys(2))
    assert time.monotonic() - started < 1.0
    assert all(note.startswith("decision 'refer'") for note in result.extras["fallback"])


def test_a_slow_remote_never_blocks_the_event_loop(demo, proxy):
    """Key-only calls of a model whose store is in memory may be answered on the event loop;
    never a remote model's, whose answer comes over the network."""
    import concurrent.futures
    import time

    reg = Repository(demo["root"] / "registry")
    manifest = json.loads((reg.version_dir("credit-risk-remote", 1) / "manifest.json").read_text())
    manifest["model"]["remote"]["timeout"] = 3.0
    v = reg.add("credit-risk-remote", json.dumps(manifest).encode(), None, "slow")
    body = {"model-id": "credit-risk-remote", "model-version": v, "customer-id": FIRST_CUSTOMER_ID}
    url = demo["url"] + "/v1/score"
    assert httpx.post(url, json=body, timeout=10).status_code == 200   # loaded, batcher set up
    proxy.set(mode="hang")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(httpx.post, url, json=body, timeout=10)
        time.sleep(0.2)
        started = time.monotonic()
        assert httpx.get(demo["url"] + "/healthz").status_code == 200
        assert time.monotonic() - started < 1.0
        assert slow.result().json()["application-decision"] == "refer"


def test_v2_binary_answers_carry_no_made_up_score(demo, proxy):
    import numpy as np
    import tritonclient.http as triton

    proxy.set(status=503)
    client = triton.InferenceServerClient(demo["url"].removeprefix("http://"))
    keys = triton.InferInput("customer-id", [2], "INT64")
    keys.set_data_from_numpy(np.array([FIRST_CUSTOMER_ID, FIRST_CUSTOMER_ID + 1], dtype=np.int64))
    out = client.infer("credit-risk-remote", [keys], outputs=[
        triton.InferRequestedOutput(n, binary_data=True) for n in ("score", "application-decision", "fallback")])
    assert np.isnan(out.as_numpy("score")).all()
    assert out.as_numpy("application-decision").tolist() == [b"refer", b"refer"]
    assert all(f.startswith(b"decision 'refer'") for f in out.as_numpy("fallback"))
    client.close()


def test_a_remote_deployment_travels_to_bulk_workers_as_its_manifest(demo, proxy):
    import pickle

    from scoreline.engine.bulk.scorers import DeploymentScorer

    scorer = pickle.loads(pickle.dumps(DeploymentScorer(demo["engine"].deployment("credit-risk-remote", 1))))
    got = scorer.score(_keys(5))
    want = demo["engine"].deployment("credit-risk").score(_keys(5))
    assert got.column("score").to_pylist() == want.column("score").to_pylist()


def test_fallback_to_a_local_version_of_the_same_model(demo, proxy, tmp_path):
    """A local LightGBM version whose features are the remote's tensors (a pandas categorical
    state with the tensor's categories) answers, exactly as itself, while the remote is down."""
    import lightgbm as lgb
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    from scoreline.engine.demo import STATES

    table = pq.read_table(demo["root"] / "store" / "customers.parquet")
    frame = pd.DataFrame({
        "date-of-birth": table.column("date-of-birth").cast("int32").to_numpy().astype(float),
        "state": pd.Categorical(table.column("state").to_pylist(), categories=list(STATES)),
        "account-balance": table.column("account-balance").to_numpy()})
    y = (frame["account-balance"] > frame["account-balance"].median()).to_numpy().astype(int)
    booster = lgb.train(dict(objective="binary", num_leaves=7, verbose=-1, num_threads=1),
                        lgb.Dataset(frame, y), 10)
    booster.save_model(str(tmp_path / "local.txt"))
    reg = Repository(demo["root"] / "registry")
    remote = json.loads((reg.version_dir("credit-risk-remote", 1) / "manifest.json").read_text())
    local = {**remote, "model": {"format": "lightgbm", "artifact": "model.txt"}}
    v_local = reg.add("credit-risk-remote", json.dumps(local).encode(), tmp_path / "local.txt", "local",
                      validate=validate_version)
    remote["model"]["remote"]["fallback"] = {"kind": "version", "version": v_local}
    v_remote = reg.add("credit-risk-remote", json.dumps(remote).encode(), None, "remote, local fallback",
                       validate=validate_version)
    proxy.set(status=503)
    got = demo["engine"].deployment("credit-risk-remote", v_remote).score(_keys(20))
    want = demo["engine"].deployment("credit-risk-remote", v_local).score(_keys(20))
    assert got.column("score").to_pylist() == want.column("score").to_pylist()
    assert got.column("error").null_count == 20
    assert all(f.startswith(f"version {v_local}: ") for f in got.column("fallback").to_pylist())
    np.testing.assert_allclose(got.column("score").to_numpy(), booster.predict(
        frame.iloc[:20]), rtol=1e-12)
