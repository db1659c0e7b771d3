"""Golden rows and provenance: what registration records, a load refused when the artifact on disk
no longer scores as registered (naming the golden row, the field and both values), a note (not a
refusal) under another environment, user-given rows, `registry verify`, the Ray/Spark worker path,
and the artifact hash on every decision-log row."""

from __future__ import annotations

import datetime as dt
import json
import logging
import pickle
import re
import subprocess
import sys

import pyarrow as pa
import pytest

pytest.importorskip("lightgbm")

from scoreline.engine.bulk.jobs import DeploymentScorer  # noqa: E402
from scoreline.engine.demo import FIRST_CUSTOMER_ID  # noqa: E402
from scoreline.engine.pipeline import golden  # noqa: E402
from scoreline.engine.pipeline.deployment import Deployment, validate_version  # noqa: E402
from scoreline.engine.pipeline.router import Engine  # noqa: E402
from scoreline.errors import NotReadyError, RegistrationError  # noqa: E402
from scoreline.registry.decision_log import DecisionLog  # noqa: E402
from scoreline.registry.provenance import file_sha256  # noqa: E402
from scoreline.registry.repository import Repository  # noqa: E402

MODEL = "credit-risk"


def _folder(registry, version=1):
    return registry / MODEL / str(version)


def _deployment(registry, version=1):
    repo = Repository(registry)
    return Deployment(repo.load_manifest(MODEL, version), repo.version_dir(MODEL, version), version=version,
                      store=False)


def _move_root_threshold(folder) -> tuple[str, str]:
    """Change the first tree's root threshold in the stored artifact; returns (before, after)."""
    path = folder / "model.txt"
    lines = path.read_text().splitlines()
    start = lines.index("Tree=0")
    decision = next(line for line in lines[start:] if line.startswith("decision_type="))
    assert int(decision.split("=")[1].split()[0]) & 1 == 0, "the root split must be numerical"
    i = next(i for i in range(start, len(lines)) if lines[i].startswith("threshold="))
    values = lines[i].split("=")[1].split()
    before, values[0] = values[0], repr(float(values[0]) * 2 + 1)
    lines[i] = "threshold=" + " ".join(values)
    path.write_text("\n".join(lines) + "\n")
    return before, values[0]


def test_registration_records_exact_outputs_and_provenance(demo):
    folder = _folder(demo / "registry")
    record = json.loads((folder / golden.GOLDEN_FILE).read_text())
    provenance = json.loads((folder / "provenance.json").read_text())
    assert record["source"] == "generated" and len(record["rows"]) == provenance["golden-rows"] >= 10
    assert provenance["artifact-sha256"] == file_sha256(folder / "model.txt")
    assert provenance["manifest-sha256"] == file_sha256(folder / "manifest.json")
    env = provenance["environment"]
    assert {"python", "numpy", "numba", "llvmlite", "pyarrow", "lightgbm", "cpu", "cpu-features"} <= set(env)
    # the edge rows reach the bounds and every allowed state
    states = {row["inputs"]["state"] for row in record["rows"]}
    assert states == set(Repository(demo / "registry").load_manifest(MODEL, 1).inputs[1].allowed)
    # the stored scores are the version's own, to the bit
    dep = _deployment(demo / "registry")
    first = record["rows"][0]
    again = dep.score(pa.RecordBatch.from_pylist([first["inputs"]]), now=dt.date.fromisoformat(record["scoring-date"]))
    assert again.column("score")[0].as_py().hex() == first["outputs"]["score"]
    assert first["outputs"]["application-decision"] == again.column("application-decision")[0].as_py()
    assert dep.artifact_sha256 == provenance["artifact-sha256"] and dep.provenance == provenance
    # the kernel choice made at registration: a tier for every timed batch size, with its figures
    tiers = provenance["tiers"]
    assert tiers["tier"] in {"generic", "simd", "bins", "model"} and tiers["tier"] == tiers["by_batch_rows"]["2048"]
    assert set(tiers["by_batch_rows"]) == {"1", "8", "64", "512", "2048"}
    assert all(tier in tiers["ns_per_row"] or tiers["source"] == "pinned" for tier in tiers["by_batch_rows"].values())


def test_a_changed_threshold_refuses_the_load_naming_the_row_and_the_difference(registry, caplog):
    _move_root_threshold(_folder(registry))
    with pytest.raises(RegistrationError) as err:
        _deployment(registry)
    message = err.value.message
    assert err.value.path.startswith("golden row ")
    assert f"model {MODEL!r} version 1 no longer scores as registered: golden row" in message
    before, after = (float.fromhex(h) for h in re.findall(r"\((-?0x[0-9a-f.p+-]+)\)", message))
    assert "score was" in message and before != after
    assert "the artifact's bytes changed too" in message
    # server start: the version is refused, not served (the others serve: the engine is ready and
    # names the failure); the detail goes to the server's log
    with caplog.at_level(logging.WARNING), Engine(registry, preload=True) as engine:
        assert [(f["model-id"], f["version"]) for f in engine.failures()] == [(MODEL, 1)]
        state = {v["version"]: v for m in engine.models() if m["model-id"] == MODEL for v in m["versions"]}
        assert state[1]["state"] == "failed"
        with pytest.raises(NotReadyError):
            engine.score(MODEL, {"customer-id": FIRST_CUSTOMER_ID})
    assert any("no longer scores as registered: golden row" in r.getMessage() for r in caplog.records)


def test_another_environment_is_a_note_when_the_rows_agree(registry, monkeypatch, caplog):
    other = {**golden.environment_fingerprint(), "numba": "0.1.0", "cpu": "other-cpu", "lightgbm": "1.0"}
    folder = _folder(registry)
    repo = Repository(registry)
    with monkeypatch.context() as m:
        m.setattr(golden, "environment_fingerprint", lambda: other)
        version = repo.add(MODEL, repo.load_manifest(MODEL, 1), folder / "model.txt", "again",
                           validate=validate_version)
    assert repo.provenance(MODEL, version)["environment"]["cpu"] == "other-cpu"
    with caplog.at_level(logging.WARNING, logger="scoreline.golden"):
        dep = _deployment(registry, version)
    assert dep.score_request({"inputs": {"date-of-birth": "1970-01-01", "state": "VIC", "account-balance": 10.0}})
    notes = [r.getMessage() for r in caplog.records if r.name == "scoreline.golden"]
    assert len(notes) == 1 and "numba 0.1.0 -> " in notes[0] and "cpu other-cpu -> " in notes[0]
    assert "lightgbm" not in notes[0]  # it trains, it never scores
    assert "score exactly as registered" in notes[0]


def test_given_rows_are_kept_and_a_row_that_does_not_score_refuses_the_version(registry, tmp_path):
    repo = Repository(registry)
    manifest, artifact = repo.load_manifest(MODEL, 1), _folder(registry) / "model.txt"
    rows = [{"date-of-birth": "1966-12-08", "state": "VIC", "account-balance": 1200.5},
            {"date-of-birth": "2001-01-31", "state": "NT", "account-balance": 0}]
    version = repo.add(MODEL, manifest, artifact, "given", validate=lambda d, m: validate_version(d, m, golden_rows=rows))
    record = json.loads((_folder(registry, version) / golden.GOLDEN_FILE).read_text())
    assert record["source"] == "given" and [r["inputs"] for r in record["rows"]] == rows
    bad = [rows[0], {**rows[1], "state": "Atlantis"}]
    with pytest.raises(RegistrationError, match=r"golden row 1 does not score: .*state"):
        repo.add(MODEL, manifest, artifact, "bad", validate=lambda d, m: validate_version(d, m, golden_rows=bad))
    with pytest.raises(RegistrationError, match="golden row 0.*'colour'"):
        repo.add(MODEL, manifest, artifact, "bad", validate=lambda d, m: validate_version(d, m, golden_rows=[{"colour": 1}]))


def test_a_deleted_golden_file_refuses_the_load(registry):
    (_folder(registry) / golden.GOLDEN_FILE).unlink()
    with pytest.raises(RegistrationError, match="golden.json is missing"):
        _deployment(registry)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "scoreline.cli", "registry", *args], capture_output=True,
                          text=True, timeout=300)


def test_registry_show_names_the_kernel_tier_chosen_at_registration(demo, capsys):
    from scoreline.cli import main

    recorded = Repository(demo / "registry").provenance(MODEL, 1)["tiers"]
    assert main(["registry", "show", MODEL, "--root", str(demo / "registry")]) == 0
    out = capsys.readouterr().out
    assert "kernel tier" in out
    # the one version's row (folded over lines): its last column, e.g. "simd (1-7 rows: model)"
    body = out.split("╇")[-1].splitlines()[1:]
    tier = " ".join(line.split("│")[-2].strip() for line in body if line.startswith("│"))
    assert tier.split(" ")[0] == recorded["tier"]
    for rows, chosen in recorded["by_batch_rows"].items():
        assert chosen == recorded["tier"] or f"{rows}" in tier and chosen in tier


def test_registry_verify_and_add_with_a_golden_file(registry, tmp_path):
    ok = _cli("verify", "--root", str(registry), "--json")
    assert ok.returncode == 0, ok.stderr
    assert {(r["model_id"], r["version"], r["result"]) for r in json.loads(ok.stdout)} == {
        (MODEL, 1, "ok"), ("customer-segmentation", 1, "ok"), ("customer-segmentation", 2, "ok"),
        ("credit-risk-remote", 1, "remote")}
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"date-of-birth": "1980-05-05", "state": "QLD", "account-balance": 77.0}]))
    folder = _folder(registry)
    added = _cli("add", MODEL, "--root", str(registry), "--manifest", str(folder / "manifest.json"),
                 "--artifact", str(folder / "model.txt"), "--golden", str(rows))
    assert added.returncode == 0, added.stderr
    assert json.loads((_folder(registry, 2) / golden.GOLDEN_FILE).read_text())["rows"][0]["inputs"]["state"] == "QLD"
    shown = json.loads(_cli("show", MODEL, "--root", str(registry), "--json").stdout)
    assert shown["versions"][1]["provenance"]["artifact-sha256"] == file_sha256(folder / "model.txt")
    _move_root_threshold(folder)
    failed = _cli("verify", MODEL, "--root", str(registry), "--json")
    assert failed.returncode == 1
    results = {r["version"]: r for r in json.loads(failed.stdout)}
    assert results[1]["result"] == "failed" and "no longer scores as registered: golden row" in results[1]["detail"]
    assert results[2]["result"] == "ok"  # a copy made before the change: its own artifact is intact


def test_a_worker_rebuilding_the_deployment_checks_the_golden_rows(demo):
    scorer = DeploymentScorer(_deployment(demo / "registry"))
    state = scorer.__getstate__()
    assert set(state["checks"]) == {golden.GOLDEN_FILE, "provenance.json"}
    rebuilt = pickle.loads(pickle.dumps(scorer))
    assert rebuilt.deployment.provenance == scorer.deployment.provenance
    record = json.loads(state["checks"][golden.GOLDEN_FILE])
    record["rows"][0]["outputs"]["application-decision"] = "something else"
    state["checks"][golden.GOLDEN_FILE] = json.dumps(record).encode()
    state["token"] = "tampered-" + state["token"]
    with pytest.raises(RegistrationError, match="golden row 0 .*application-decision was 'something else'"):
        DeploymentScorer.__new__(DeploymentScorer).__setstate__(state)


def test_every_decision_log_row_carries_the_artifact_hash(demo, tmp_path):
    expected = file_sha256(_folder(demo / "registry") / "model.txt")
    url = f"sqlite:///{tmp_path / 'log.db'}"
    with Engine(demo / "registry", log=url) as engine:
        engine.score(MODEL, {"customer-id": FIRST_CUSTOMER_ID, "request-id": "one"})
        engine.score_batch(MODEL, pa.RecordBatch.from_pylist([{"customer-id": FIRST_CUSTOMER_ID + 1}]),
                           request_ids=["batch"])
        engine.flush()
    with DecisionLog(url) as log:
        rows = log.tail(10).to_pylist()
    assert {r["request_id"]: r["artifact_sha256"] for r in rows} == {"one": expected, "batch": expected}


def test_models_and_the_v2_metadata_show_the_provenance(demo):
    import httpx

    from scoreline.server.app import create_app
    from tests.support.server import live_server

    recorded = Repository(demo / "registry").provenance(MODEL, 1)
    with Engine(demo / "registry", preload=True) as engine, live_server(create_app(engine=engine)) as url:
        models = httpx.get(f"{url}/v1/models", timeout=30).json()["models"]
        meta = httpx.get(f"{url}/v2/models/{MODEL}", timeout=30).json()
    version, = next(m for m in models if m["model-id"] == MODEL)["versions"]
    assert version["provenance"] == recorded
    # the choice this server made at load, per batch size (it may differ from the registering host's)
    assert version["tiers"]["tier"] in {"generic", "simd", "bins", "model"}
    assert set(version["tiers"]["by_batch_rows"]) == {"1", "8", "64", "512", "2048"}
    parameters = meta["parameters"]
    assert parameters["artifact-sha256"] == recorded["artifact-sha256"]
    assert parameters["manifest-sha256"] == recorded["manifest-sha256"]
    assert parameters["environment.numba"] == recorded["environment"]["numba"]
    assert all(isinstance(v, str) for v in parameters.values())  # the protocol's flat parameters


def test_an_experiments_batch_logs_each_rows_own_artifact(registry, tmp_path):
    segments = "customer-segmentation"
    repo = Repository(registry)
    hashes = {v: repo.provenance(segments, v)["artifact-sha256"] for v in (1, 2)}
    assert hashes[1] != hashes[2]
    url = f"sqlite:///{tmp_path / 'log.db'}"
    keys = [FIRST_CUSTOMER_ID + i for i in range(200)]
    with Engine(registry, log=url) as engine:
        engine.set_experiment(segments, {"name": "split", "champion": 2,
                                         "challengers": [{"version": 1, "share": 0.5}]})
        engine.score_batch(segments, pa.record_batch({"customer-id": keys}))
        engine.flush()
    with DecisionLog(url) as log:
        rows = [r for r in log.tail(1000).to_pylist() if r["experiment"] == "split"]
    assert {r["model_version"] for r in rows} == {1, 2}
    assert all(r["artifact_sha256"] == hashes[r["model_version"]] for r in rows)
