"""Remote models against a real `scoreline serve` (v2 REST) on loopback, behind the fault proxy:
exact scores, one request per batch, retries only of what is safe, deadlines, the circuit breaker,
the three fallbacks, secrets from the environment, and the registration check of the endpoint."""

from __future__ import annotations

import time

import lightgbm as lgb
import msgspec
import numpy as np
import pyarrow as pa
import pytest

from scoreline.engine.models.model import load_lightgbm
from scoreline.engine.models.remote import RemoteError, RemoteModel
from scoreline.errors import RegistrationError, SchemaError
from scoreline.registry import manifest as M
from scoreline.server.app import create_app
from scoreline.server.settings import ServerSettings

from tests.support.faultproxy import FaultProxy
from tests.support.server import MODEL_ID, STATES, build_registry, customers, live_server, make_engine

TOKEN = "remote-test-token"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    registry = build_registry(tmp_path_factory.mktemp("remote") / "registry")
    engine = make_engine(registry["root"])
    app = create_app(engine, settings=ServerSettings(api_keys=(TOKEN,)))
    with live_server(app) as url:
        yield {"url": url, "engine": engine}
    engine.close()


@pytest.fixture
def proxy(served, monkeypatch):
    monkeypatch.setenv("SCORELINE_TEST_REMOTE_TOKEN", TOKEN)
    with FaultProxy(served["url"]) as p:
        yield p


def spec(url, **extra) -> M.RemoteSpec:
    body = {"url": url, "name": MODEL_ID, "version": "1", "output": "score",
            "token-env": "SCORELINE_TEST_REMOTE_TOKEN",
            "inputs": [{"name": "date-of-birth", "datatype": "BYTES", "date": True},
                       {"name": "state", "datatype": "BYTES", "categories": STATES},
                       {"name": "account-balance", "datatype": "FP64"}], **extra}
    return msgspec.json.decode(msgspec.json.encode(body), type=M.RemoteSpec)


def features(n=64, offset=0):
    """The plan's matrix for the remote's tensors (days, state code, balance) and the raw rows."""
    table = customers().slice(offset, n)
    days = table.column("date-of-birth").cast(pa.int32()).to_numpy().astype(np.float64)
    codes = np.array([STATES.index(s) for s in table.column("state").to_pylist()], dtype=np.float64)
    X = np.asfortranarray(np.column_stack([days, codes, table.column("account-balance").to_numpy()]))
    return X, table


def local_scores(engine, table):
    batch = table.select(["date-of-birth", "state", "account-balance"]).combine_chunks().to_batches()[0]
    return engine.deployment(MODEL_ID, 1).score(batch).column("score").to_numpy()


def test_scores_equal_the_served_model_exactly_with_one_request_per_batch(served, proxy):
    model = RemoteModel(spec(proxy.url))
    X, table = features(64)
    out = model.predict_rows(X)
    assert (out.source == "remote").all() and out.errors == {}
    np.testing.assert_array_equal(out.values, local_scores(served["engine"], table))
    assert proxy.requests == 1
    assert model.feature_names == ("date-of-birth", "state", "account-balance")
    assert model.categories == {1: tuple(STATES)}
    # the model interface of local models (engine/models/protocols.py): a table by tensor name
    named = pa.table({"date-of-birth": X[:, 0], "state": table.column("state"),
                      "account-balance": table.column("account-balance")})
    np.testing.assert_array_equal(model.predict(named), out.values)


def test_retries_502_503_504_then_scores(proxy):
    model = RemoteModel(spec(proxy.url, retry={"attempts": 4, "backoff": 0.001}))
    proxy.fail_next(1, status=502)
    proxy.fail_next(1, status=503)
    proxy.fail_next(1, status=504)
    out = model.predict_rows(features(8)[0])
    assert (out.source == "remote").all()
    assert (proxy.requests, proxy.forwarded) == (4, 1)


def test_never_retries_a_4xx_and_it_does_not_trip_the_breaker(proxy):
    model = RemoteModel(spec(proxy.url, breaker={"failures": 1, "reset": 60}))
    proxy.fail_next(1, status=400)
    out = model.predict_rows(features(4)[0])
    assert (out.source == "error").all() and proxy.requests == 1
    assert "HTTP 400" in out.errors[0].message and out.errors[0].kind == "remote"
    assert model.breaker.state == "closed"


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_reset_after_sending_is_retried_only_when_idempotent(proxy, idempotent):
    model = RemoteModel(spec(proxy.url, idempotent=idempotent, retry={"attempts": 3, "backoff": 0.001}))
    proxy.fail_next(1, mode="reset")
    out = model.predict_rows(features(4)[0])
    assert proxy.requests == (2 if idempotent else 1)
    assert (out.source == ("remote" if idempotent else "error")).all()


def test_a_hung_remote_never_outlives_the_timeout_or_the_callers_deadline(proxy):
    proxy.set(mode="hang")
    model = RemoteModel(spec(proxy.url, timeout=0.4, retry={"attempts": 5}))
    started = time.monotonic()
    out = model.predict_rows(features(4)[0])
    took = time.monotonic() - started
    assert (out.source == "error").all() and 0.35 < took < 0.7
    started = time.monotonic()
    out = model.predict_rows(features(4)[0], deadline=time.monotonic() + 0.1)
    took = time.monotonic() - started
    assert (out.source == "error").all() and took < 0.3
    assert "ms" in out.errors[0].message or "deadline" in out.errors[0].message


def test_the_breaker_opens_fails_fast_then_probes_and_closes(proxy):
    model = RemoteModel(spec(proxy.url, retry={"attempts": 1}, breaker={"failures": 3, "reset": 0.3}))
    proxy.set(status=503)
    X = features(4)[0]
    for _ in range(3):
        model.predict_rows(X)
    assert model.breaker.state == "open" and proxy.requests == 3
    started = time.monotonic()
    out = model.predict_rows(X)
    assert time.monotonic() - started < 0.01 and proxy.requests == 3
    assert "circuit breaker is open" in out.errors[0].message
    time.sleep(0.35)
    assert model.breaker.state == "half-open"
    model.predict_rows(X)                            # the probe fails: open again
    assert model.breaker.state == "open" and proxy.requests == 4
    time.sleep(0.35)
    proxy.set(status=None)
    assert (model.predict_rows(X).source == "remote").all()
    assert model.breaker.state == "closed"


def test_fallback_to_a_fixed_decision_has_no_score(proxy):
    model = RemoteModel(spec(proxy.url, fallback={"kind": "decision", "decision": "refer"}))
    proxy.fail_next(1, status=500)
    out = model.predict_rows(features(3)[0])
    assert (out.source == "fallback-decision").all() and out.decision == "refer"
    assert np.isnan(out.values).all() and "HTTP 500" in out.errors[0].message


def test_fallback_to_a_local_version_scores_exactly_like_it(proxy, tmp_path):
    X, _ = features(64)
    rng = np.random.default_rng(0)
    booster = lgb.train(dict(objective="binary", num_leaves=7, verbose=-1, num_threads=1),
                        lgb.Dataset(X[:, [2, 0]], rng.integers(0, 2, 64),
                                    feature_name=["account-balance", "date-of-birth"]), 5)
    booster.save_model(str(tmp_path / "m.txt"))
    local = load_lightgbm(tmp_path / "m.txt")
    model = RemoteModel(spec(proxy.url, fallback={"kind": "version", "version": 1}), fallback=local,
                        fallback_version=1)
    proxy.set(mode="reset")
    out = model.predict_rows(X)
    assert (out.source == "fallback-version").all()
    np.testing.assert_array_equal(out.values, booster.predict(X[:, [2, 0]]))
    np.testing.assert_array_equal(model.predict_matrix(X), out.values)
    with pytest.raises(RegistrationError, match="postcode"):
        other = lgb.train(dict(objective="binary", verbose=-1), lgb.Dataset(
            X[:, [2]], rng.integers(0, 2, 64), feature_name=["postcode"]), 2)
        other.save_model(str(tmp_path / "o.txt"))
        RemoteModel(spec(proxy.url), fallback=load_lightgbm(tmp_path / "o.txt"), fallback_version=1)


def test_rows_json_cannot_carry_are_row_errors_and_the_rest_are_sent(served, proxy):
    model = RemoteModel(spec(proxy.url))
    X, table = features(5)
    X[1, 2] = np.nan
    X[3, 1] = -1.0                                   # an unseen state
    out = model.predict_rows(X)
    assert out.source.tolist() == ["remote", "error", "remote", "error", "remote"]
    assert "'account-balance' is missing" in out.errors[1].message
    assert "categories" in out.errors[3].message
    want = local_scores(served["engine"], table)
    np.testing.assert_array_equal(out.values[[0, 2, 4]], want[[0, 2, 4]])
    with pytest.raises(RemoteError):
        model.predict_matrix(X)


def test_the_token_comes_from_the_environment(proxy, monkeypatch):
    monkeypatch.setenv("SCORELINE_TEST_REMOTE_TOKEN", "wrong")
    out = RemoteModel(spec(proxy.url)).predict_rows(features(2)[0])
    assert "HTTP 401" in out.errors[0].message
    monkeypatch.delenv("SCORELINE_TEST_REMOTE_TOKEN")
    out = RemoteModel(spec(proxy.url)).predict_rows(features(2)[0])
    assert "'SCORELINE_TEST_REMOTE_TOKEN'" in out.errors[0].message and (out.source == "error").all()


def test_the_endpoint_check_compares_tensors_with_the_metadata(proxy):
    meta = RemoteModel(spec(proxy.url)).check_endpoint()
    assert meta["name"] == MODEL_ID
    wrong = spec(proxy.url, inputs=[{"name": "account-balance", "datatype": "FP32"}])
    with pytest.raises(RegistrationError, match="FP64 at the remote"):
        RemoteModel(wrong).check_endpoint()
    with pytest.raises(RegistrationError, match="no input tensor 'income'"):
        RemoteModel(spec(proxy.url, inputs=[{"name": "income"}])).check_endpoint()
    with pytest.raises(RegistrationError, match="no output tensor"):
        RemoteModel(spec(proxy.url, output="probability")).check_endpoint()
    with pytest.raises(RegistrationError, match="cannot be read"):
        RemoteModel(spec("http://127.0.0.1:1")).check_endpoint(timeout=0.5)


def test_the_manifest_refuses_what_cannot_work():
    base = {"model-id": "m", "inputs": [{"name": "x", "type": "float"}], "entity": {"key": "id"},
            "decision": {"kind": "bands", "bands": [], "default": "a"}}
    def manifest(model):
        return msgspec.json.encode({**base, "model": model})
    remote = {"url": "http://x", "name": "m", "output": "y", "inputs": [{"name": "x"}]}
    M.decode_manifest(manifest({"format": "remote", "remote": remote}))
    for bad, where in [({"format": "remote"}, "$.model.remote"),
                       ({"format": "lightgbm", "artifact": "m.txt", "remote": remote}, "$.model.remote"),
                       ({"format": "lightgbm"}, "$.model.artifact"),
                       ({"format": "remote", "remote": {**remote, "inputs": [{"name": "x", "datatype": "BYTES"}]}},
                        "$.model.remote.inputs[0]")]:
        with pytest.raises(SchemaError) as info:
            M.decode_manifest(manifest(bad))
        assert info.value.path == where


def test_matrix_mode_against_a_lightgbm_v2_server(tmp_path):
    """One [n, k] tensor, as MLServer's and Triton's LightGBM runtimes take it: a minimal v2
    server evaluating a real Booster (benchmarks/remote/run.py does the same against MLServer)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    rng = np.random.default_rng(3)
    X = rng.normal(size=(64, 3))
    X[5, 1] = 0.0
    booster = lgb.train(dict(objective="binary", num_leaves=7, verbose=-1, num_threads=1),
                        lgb.Dataset(X, rng.integers(0, 2, 64)), 5)

    async def metadata(request):
        return JSONResponse({"name": "m", "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 3]}],
                             "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}]})

    async def infer(request):
        tensor = (await request.json())["inputs"][0]
        rows = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        return JSONResponse({"model_name": "m", "outputs": [
            {"name": "predict", "datatype": "FP64", "shape": [len(rows)], "data": booster.predict(rows).tolist()}]})

    app = Starlette(routes=[Route("/v2/models/m", metadata), Route("/v2/models/m/infer", infer, methods=["POST"])])
    with live_server(app) as url:
        body = {"url": url, "name": "m", "output": "predict", "matrix": "input-0",
                "inputs": [{"name": n} for n in ("a", "b", "c")]}
        model = RemoteModel(msgspec.convert(body, M.RemoteSpec))
        model.check_endpoint()
        out = model.predict_rows(np.asfortranarray(X))
        assert (out.source == "remote").all()
        np.testing.assert_array_equal(out.values, booster.predict(X))
        wrong = msgspec.convert({**body, "inputs": [{"name": n, "datatype": "FP32"} for n in "abc"]}, M.RemoteSpec)
        with pytest.raises(RegistrationError, match="'input-0' is FP64 at the remote"):
            RemoteModel(wrong).check_endpoint()
    with pytest.raises(SchemaError, match="one datatype"):
        M.decode_manifest(msgspec.json.encode({
            "model-id": "m", "inputs": [{"name": "a", "type": "float"}], "entity": {"key": "id"},
            "decision": {"kind": "bands", "bands": [], "default": "x"},
            "model": {"format": "remote", "remote": {**body, "inputs": [{"name": "a"}, {"name": "b", "datatype": "INT64"}]}}}))
