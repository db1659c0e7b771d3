"""Faults a real `scoreline serve` recovers from on its own: an entity store file truncated at start
and restored (the watcher, or POST /admin/reload, loads the model), and a broken version promoted,
then rolled back across a restart (the server starts, serves what it can and names what it cannot)."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from scoreline.registry import Repository
from scoreline.registry.manifest import decode_manifest

from tests.faults.serve import serve, until
from tests.support.server import KEY, MODEL_ID, build_registry

pytestmark = pytest.mark.slow

REQUEST = {"model-id": MODEL_ID, KEY: 1000}
# the first request after a recovery may wait for the version's compilation
http = httpx.Client(timeout=120)


@pytest.fixture
def registry(tmp_path):
    return build_registry(tmp_path / "registry")


def truncate(path):
    saved = path.with_suffix(".saved")
    shutil.copyfile(path, saved)
    path.write_bytes(path.read_bytes()[:200])
    return saved


@pytest.mark.parametrize("how", ["watcher", "admin-reload"])
def test_a_truncated_store_recovers_when_restored(registry, how):
    store = registry["root"] / "customers.parquet"
    saved = truncate(store)
    interval = "0.3" if how == "watcher" else "0"
    with serve(registry["root"], "--reload-interval", interval, "--admin-key", "adm") as (_, url):
        ready = http.get(url + "/readyz").json()  # ready: it names the model it cannot serve
        assert [(f["model-id"], f["version"]) for f in ready["failed"]] == [(MODEL_ID, registry["v1"])], ready
        answer = http.post(url + "/v1/score", json=REQUEST)
        assert answer.status_code == 503 and "failed to load" in answer.json()["message"], answer.text
        shutil.copyfile(saved, store)
        if how == "admin-reload":
            assert http.post(url + "/admin/reload", headers={"x-api-key": "adm"}).status_code == 200
        assert until(lambda: http.post(url + "/v1/score", json=REQUEST).status_code == 200), \
            http.post(url + "/v1/score", json=REQUEST).text
        assert http.get(url + "/readyz").json() == {"ready": True}


def test_a_broken_version_promoted_then_rolled_back_across_a_restart(registry, tmp_path):
    root = registry["root"]
    repo = Repository(root)
    manifest = json.loads((repo.version_dir(MODEL_ID, registry["v1"]) / "manifest.json").read_text())
    manifest["entity"]["store"]["key-column"] = "no-such-column"
    artifact = repo.version_dir(MODEL_ID, registry["v1"]) / manifest["model"]["artifact"]
    # written as an older release would have (no validation), then promoted the same way
    broken = repo.add(MODEL_ID, decode_manifest(json.dumps(manifest).encode()), artifact, "broken")
    repo.promote(MODEL_ID, broken, "production", "oops")
    with serve(root, "--reload-interval", "0.3") as (_, url):
        ready = http.get(url + "/readyz").json()
        assert ready["ready"] is True and len(ready["failed"]) == 1, ready
        failure = ready["failed"][0]
        assert (failure["model-id"], failure["version"]) == (MODEL_ID, broken)
        assert "no-such-column" in failure["reason"]
        assert http.post(url + "/v1/score", json=REQUEST).status_code == 503
        # what it can serve, it serves
        assert http.post(url + "/v1/score", json={**REQUEST, "model-version": registry["v1"]}).status_code == 200
        repo.rollback(MODEL_ID, "production", "back to v1")
        assert until(lambda: http.post(url + "/v1/score", json=REQUEST).status_code == 200)
        assert http.post(url + "/v1/score", json=REQUEST).json()["model-version"] == registry["v1"]
    with serve(root) as (_, url):  # and after a restart
        assert http.get(url + "/readyz").json() == {"ready": True}
        assert http.post(url + "/v1/score", json=REQUEST).json()["model-version"] == registry["v1"]
