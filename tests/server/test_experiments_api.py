"""Experiments through the HTTP service: /admin/experiment changes apply without a restart while
requests flow (none dropped), answers follow the key's split, and /metrics shows the data-quality,
drift, stage-time and experiment families."""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np

from scoreline.registry.experiments import split
from scoreline.server.app import create_app
from scoreline.server.settings import ServerSettings

from tests.support.server import KEY, MODEL_ID, build_registry, live_server, make_engine

AB = {"name": "ab", "champion": 1, "challengers": [{"version": 2, "share": 0.5}]}
KEYS = list(range(1000, 1300))


def _admin(client, body):
    return client.post("/admin/experiment", headers={"x-api-key": "adm"}, json={"model-id": MODEL_ID, **body})


def test_experiment_changes_under_load_drop_no_request_and_answers_follow_the_split(tmp_path):
    registry = build_registry(tmp_path / "registry")
    engine = make_engine(registry["root"])
    expected = {k: (1, 2)[i] for k, i in zip(KEYS, split(np.array(KEYS), "ab", [0.5, 0.5]))}
    try:
        with live_server(create_app(engine, settings=ServerSettings(admin_keys=("adm",)))) as url:

            async def main():
                seen, after = [], []
                state = {"phase": "before"}
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    async def worker(w: int) -> None:
                        i = 0
                        while state["phase"] != "done":
                            key = KEYS[(w * 31 + i) % len(KEYS)]
                            phase = state["phase"]
                            r = await client.post("/v1/score", json={"model-id": MODEL_ID, KEY: key})
                            seen.append(r.status_code)
                            if phase == "ab" and state["phase"] == "ab":
                                after.append((key, r.json()["model-version"]))
                            i += 1

                    workers = [asyncio.ensure_future(worker(w)) for w in range(8)]
                    await asyncio.sleep(0.2)
                    r = await _admin(client, {"action": "set", "experiment": AB, "message": "try v2"})
                    assert r.status_code == 200 and r.json()["experiment"]["name"] == "ab"
                    state["phase"] = "ab"
                    while len(after) < 300:
                        await asyncio.sleep(0.01)
                    state["phase"] = "canary"
                    for share in (0.1, 0.3):
                        assert (await _admin(client, {"action": "canary", "version": 2, "share": share})).status_code == 422
                    assert (await _admin(client, {"action": "stop"})).status_code == 200
                    for share in (0.1, 0.3):
                        r = await _admin(client, {"action": "canary", "version": 2, "share": share})
                        assert r.status_code == 200
                    assert (await _admin(client, {"action": "canary", "rollback": True})).status_code == 200
                    shown = (await _admin(client, {"action": "show"})).json()["experiment"]
                    await asyncio.sleep(0.2)
                    state["phase"] = "done"
                    await asyncio.gather(*workers)
                    metrics = (await client.get("/metrics")).text
                return seen, after, shown, metrics

            seen, after, shown, metrics = asyncio.run(main())
        assert set(seen) == {200} and len(seen) > 300
        assert all(version == expected[key] for key, version in after)
        assert {v for _, v in after} == {1, 2}
        assert [(r["version"], r["role"], r["share"]) for r in shown["routes"]] == [
            (1, "champion", 0.9), (2, "canary", 0.1)]
        assert [h["action"] for h in engine.repository.history(MODEL_ID)][-5:] == [
            "experiment-set", "experiment-stopped", "canary", "canary", "canary-rolled-back"]
        for family in ("scoreline_input_missing_total", "scoreline_input_out_of_range_total",
                       "scoreline_input_unseen_category_total", "scoreline_input_drift_psi",
                       "scoreline_score_drift_psi", "scoreline_stage_duration_seconds",
                       "scoreline_experiment_share"):
            assert f"# TYPE {family} " in metrics, family
        assert re.search(r'scoreline_input_missing_total\{model="credit-risk",version="1",'
                         r'input="state",pid="\d+"\} 0', metrics)
        stages = set(re.findall(r'scoreline_stage_duration_seconds_count\{model="credit-risk",'
                                r'version="\d",stage="(\w+)"', metrics))
        assert stages == {"lookup", "transforms", "model", "decision", "log"}
        assert 'scoreline_experiment_share{model="credit-risk",experiment="credit-risk-canary",version="2",role="canary"' in metrics
    finally:
        engine.close()


def test_a_bad_experiment_change_is_refused_with_its_path(tmp_path):
    registry = build_registry(tmp_path / "registry")
    engine = make_engine(registry["root"])
    try:
        with live_server(create_app(engine, settings=ServerSettings(admin_keys=("adm",)))) as url:
            with httpx.Client(base_url=url) as client:
                r = _admin(client, {"action": "set", "experiment": {"name": "x", "champion": 9}})
                assert r.status_code == 404 and "version" in r.json()["message"]
                r = _admin(client, {"action": "launch"})
                assert r.status_code == 422 and r.json()["path"] == "$.action"
                r = client.post("/admin/experiment", json={"model-id": MODEL_ID, "action": "stop"})
                assert r.status_code == 401
                assert engine.experiment(MODEL_ID) is None
    finally:
        engine.close()
