"""Micro-batching through the live server over a real registry: coalesced requests give the same answers
as unbatched ones, a bad request fails alone, and every request is logged once with its request id."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from scoreline.registry.decision_log import DecisionLog
from scoreline.server.app import create_app
from scoreline.server.settings import ServerSettings

from tests.support.server import KEY, MODEL_ID, build_registry, live_server, make_engine


class GatedEngine:
    """The real engine, with its first scoring call (`score_rows`, which every JSON request
    takes) held until the test opens the gate, and the rows of every call recorded. Everything
    else is delegated."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.gate = threading.Event()
        self.first_started = threading.Event()
        self.batch_sizes: list[int] = []

    def _hold(self, rows: int) -> None:
        self.batch_sizes.append(rows)
        if len(self.batch_sizes) == 1:
            self.first_started.set()
            self.gate.wait(30)

    def score_rows(self, model_id, rows, version=None):
        self._hold(rows.n)
        return self.engine.score_rows(model_id, rows, version=version)

    def __getattr__(self, name):
        return getattr(self.engine, name)


async def _sent_behind_a_held_request(client, gated: GatedEngine, bodies: list[dict]) -> list:
    """Send one request and let the engine hold it; send `bodies` meanwhile, wait until all of them
    are queued (visible in /metrics), release the engine; return their answers, in order."""
    first = asyncio.ensure_future(client.post("/v1/score", json={"model-id": MODEL_ID, KEY: 1000}))
    deadline = time.monotonic() + 30  # a broken gate fails the test, never hangs it
    while not gated.first_started.is_set():
        assert time.monotonic() < deadline, "the first request never reached the engine"
        await asyncio.sleep(0.005)
    rest = [asyncio.ensure_future(client.post("/v1/score", json=b)) for b in bodies]
    while True:
        text = (await client.get("/metrics")).text
        line = [l for l in text.splitlines() if l.startswith("scoreline_queue_rows{")]
        if line and float(line[0].rsplit(" ", 1)[1]) == len(bodies):
            break
        assert time.monotonic() < deadline, f"requests were not all queued: {line}"
        await asyncio.sleep(0.01)
    gated.gate.set()
    await first
    return await asyncio.gather(*rest)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return build_registry(tmp_path_factory.mktemp("batching") / "registry")


def test_coalesced_requests_match_unbatched_and_a_bad_one_fails_alone(registry):
    engine = make_engine(registry["root"])
    gated = GatedEngine(engine)
    # one batch at a time and a long wait budget: everything sent while the first request is held
    # must travel together in the second batch
    settings = ServerSettings(max_batch=64, max_wait_us=10_000_000, max_in_flight=1)
    keys = [1000 + i for i in range(30)]
    bodies = [{"model-id": MODEL_ID, KEY: k, "request-id": f"batched-{k}"} for k in keys]
    bodies.insert(7, {"model-id": MODEL_ID, KEY: 999_999, "request-id": "batched-unknown"})
    bodies.insert(12, {"model-id": MODEL_ID, "request-id": "batched-bad-value",
                       "inputs": {"date-of-birth": "1970-01-01", "state": "VIC", "account-balance": -1.0}})
    try:
        with live_server(create_app(gated, settings=settings)) as url:

            async def main():
                async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                    return await _sent_behind_a_held_request(client, gated, bodies)

            answers = asyncio.run(main())
            assert gated.batch_sizes == [1, len(bodies)]
            by_id = {b["request-id"]: r for b, r in zip(bodies, answers)}
            assert by_id["batched-unknown"].status_code == 404
            assert by_id["batched-unknown"].json()["path"] == f"$.{KEY}"
            assert by_id["batched-bad-value"].status_code == 422
            assert by_id["batched-bad-value"].json()["path"] == "$.inputs.account-balance"
            with httpx.Client(base_url=url) as client:  # now one at a time: unbatched
                for k in keys:
                    alone = client.post("/v1/score", json={"model-id": MODEL_ID, KEY: k}).json()
                    batched = by_id[f"batched-{k}"]
                    assert batched.status_code == 200
                    assert batched.json() == {**alone, "request-id": f"batched-{k}"}
            assert gated.batch_sizes[2:] == [1] * len(keys)
        engine.flush()
        logged = DecisionLog(f"sqlite:///{registry['root'].parent / 'decisions.db'}").tail(10_000)
        ids = [i for i in logged.column("request_id").to_pylist() if i and i.startswith("batched-")]
        assert sorted(ids) == sorted(b["request-id"] for b in bodies)  # each exactly once
    finally:
        engine.close()


def test_coalesced_key_only_requests_served_from_memory_match_unbatched_answers(registry):
    engine = make_engine(registry["root"])
    assert engine.deployment(MODEL_ID).serves_from_memory()  # else this test would not reach the path
    gated = GatedEngine(engine)
    settings = ServerSettings(max_batch=64, max_wait_us=10_000_000, max_in_flight=1)
    keys = [1100 + i for i in range(20)]
    bodies = [{"model-id": MODEL_ID, KEY: k, "request-id": f"keys-{k}"} for k in keys]
    bodies.insert(5, {"model-id": MODEL_ID, KEY: 999_998, "request-id": "keys-unknown"})
    try:
        with live_server(create_app(gated, settings=settings)) as url:

            async def main():
                async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                    answers = await _sent_behind_a_held_request(client, gated, bodies)
                    metrics = (await client.get("/metrics")).text
                    return answers, metrics

            answers, metrics = asyncio.run(main())
            assert gated.batch_sizes == [1, len(bodies)]
            # the batch's size is observed once, in the bucket of up to 32 rows
            assert any(l.startswith("scoreline_batch_rows_bucket{") and 'le="32"' in l and l.endswith(" 2")
                       for l in metrics.splitlines()), metrics
            by_id = {b["request-id"]: r for b, r in zip(bodies, answers)}
            assert by_id["keys-unknown"].status_code == 404
            assert by_id["keys-unknown"].json()["path"] == f"$.{KEY}"
            with httpx.Client(base_url=url) as client:
                for k in keys:
                    alone = client.post("/v1/score", json={"model-id": MODEL_ID, KEY: k})
                    batched = by_id[f"keys-{k}"]
                    assert batched.status_code == 200
                    assert batched.json() == {**alone.json(), "request-id": f"keys-{k}"}
                    # the same bytes too: the contract fields in the same order, the id last
                    assert batched.content == alone.content[:-1] + f',"request-id":"keys-{k}"}}'.encode()
        engine.flush()
        logged = DecisionLog(f"sqlite:///{registry['root'].parent / 'decisions.db'}").tail(10_000)
        ids = [i for i in logged.column("request_id").to_pylist() if i and i.startswith("keys-")]
        assert sorted(ids) == sorted(b["request-id"] for b in bodies)  # each exactly once
    finally:
        engine.close()
