"""Experiments in the Engine: rows answered by the variant their key splits to (on the one-row,
several-keys and batch paths), shadows that never change or fail an answer and are logged with
their role, and experiment changes under load that drop no request."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("lightgbm")

from scoreline.engine.data.request import RowBatch  # noqa: E402
from scoreline.errors import NotFoundError  # noqa: E402
from scoreline.engine.demo import FIRST_CUSTOMER_ID  # noqa: E402
from scoreline.engine.pipeline.router import Engine  # noqa: E402
from scoreline.registry.decision_log import DecisionLog  # noqa: E402
from scoreline.registry.experiments import split, stop_experiment  # noqa: E402
from scoreline.registry.repository import Repository  # noqa: E402

MODEL = "customer-segmentation"
KEYS = list(range(FIRST_CUSTOMER_ID, FIRST_CUSTOMER_ID + 400))
SPLIT = {"name": "postcode-ab", "champion": 2, "challengers": [{"version": 1, "share": 0.5}]}
SHADOW = {"name": "v1-shadow", "champion": 2, "shadows": [1]}


@pytest.fixture
def registry(registry):
    """The private copy of the session's demo registry (conftest.py), with the demo's own shadow
    experiment stopped: each test sets its own."""
    stop_experiment(Repository(registry), MODEL)
    return registry


def _rows(engine, keys) -> list[dict]:
    """The answers of several key-only requests scored together (the micro-batched JSON path)."""
    result = engine.score_rows(MODEL, RowBatch(list(keys), None, [None] * len(keys)))
    return [result.answer(i) for i in range(len(keys))]


def _expected_versions(keys) -> list[int]:
    return [2 if i == 0 else 1 for i in split(np.array(keys), SPLIT["name"], [0.5, 0.5])]


def test_each_key_is_answered_by_its_split_variant_on_every_path(registry):
    with Engine(registry) as engine:
        engine.set_experiment(MODEL, SPLIT)
        expected = _expected_versions(KEYS)
        assert 0.35 < expected.count(1) / len(KEYS) < 0.65
        one = [engine.score(MODEL, {"customer-id": k})["model-version"] for k in KEYS]
        many = [a["model-version"] for a in _rows(engine, KEYS)]
        batch = engine.score_batch(MODEL, pa.record_batch({"customer-id": KEYS}))
        assert one == many == expected
        assert batch.column("model-version").to_pylist() == expected
        assert batch.column("customer-id").to_pylist() == KEYS  # input order kept
        again = [engine.score(MODEL, {"customer-id": k})["model-version"] for k in KEYS]
        assert again == expected  # sticky
        # a named version bypasses the experiment
        assert engine.score(MODEL, {"customer-id": KEYS[0]}, version=1)["model-version"] == 1
        # each variant answers exactly what it answers alone
        for k, v in zip(KEYS[:20], expected):
            assert engine.score(MODEL, {"customer-id": k}) == engine.score(
                MODEL, {"customer-id": k}, version=v)


def test_shadows_never_change_an_answer_and_are_logged_with_their_role(registry, tmp_path):
    log = DecisionLog(f"sqlite:///{tmp_path / 'log.db'}")
    with Engine(registry, log=log) as engine:
        plain_one = [engine.score(MODEL, {"customer-id": k}) for k in KEYS[:50]]
        plain_many = _rows(engine, KEYS[:50])
        plain_batch = engine.score_batch(MODEL, pa.record_batch({"customer-id": KEYS[:50]}))
        engine.set_experiment(MODEL, SHADOW)
        assert [engine.score(MODEL, {"customer-id": k}) for k in KEYS[:50]] == plain_one
        assert _rows(engine, KEYS[:50]) == plain_many
        assert engine.score_batch(MODEL, pa.record_batch({"customer-id": KEYS[:50]})).equals(plain_batch)
        engine.flush()
    rows = [r for r in log.tail(1000).to_pylist() if r["experiment"] == "v1-shadow"]
    log.close()
    answered = [r for r in rows if r["role"] == "champion"]
    shadows = [r for r in rows if r["role"] == "shadow"]
    assert len(answered) == len(shadows) == 150
    assert {r["model_version"] for r in answered} == {2} and {r["model_version"] for r in shadows} == {1}
    # every shadow row pairs with its answered row by request id
    assert {r["request_id"] for r in shadows} == {r["request_id"] for r in answered}
    assert all(r["score"] is not None and r["decision"] for r in shadows)


def test_a_failing_shadow_never_fails_a_request(registry):
    with Engine(registry) as engine:
        engine.set_experiment(MODEL, SHADOW)
        shadow = engine.deployment(MODEL, 1)

        def broken(*args, **kwargs):
            raise RuntimeError("the shadow's disk is gone")

        # its model (the shared path runs it) and its own run (a call it cannot share) both fail
        shadow.model.predict_matrix = shadow.score_rows = shadow.run = broken
        for k in KEYS[:20]:
            assert engine.score(MODEL, {"customer-id": k})["model-version"] == 2
        with pytest.raises(NotFoundError):  # unknown key: the fill raised, the shadow's own run
            engine.score(MODEL, {"customer-id": -5})
        assert all(a["model-version"] == 2 for a in _rows(engine, KEYS[:20]))
        out = engine.score_batch(MODEL, pa.record_batch({"customer-id": KEYS[:20]}))
        assert out.column("error").null_count == 20
        engine.flush()
        assert engine.monitor.shadow_errors[(MODEL, 1)] == 61  # rows: 20 + 1 one by one, 20, 20


def _add_copy_of_v2(registry) -> int:
    """A version with v2's artifact and manifest: its feature plan agrees with v2's."""
    repo = Repository(registry)
    v2 = repo.version_dir(MODEL, 2)
    return repo.add(MODEL, v2 / "manifest.json", v2 / "model.txt", "v2 again")


@pytest.mark.parametrize("shadow", ["other-transforms", "same-plan"])
def test_a_shadow_shares_the_call_and_scores_what_it_scores_alone(registry, tmp_path, shadow):
    version = 1 if shadow == "other-transforms" else _add_copy_of_v2(registry)
    log = DecisionLog(f"sqlite:///{tmp_path / 'log.db'}")
    inline = {"date-of-birth": "1980-02-29", "state": "VIC", "account-balance": 12.5,
              "postcode": 3000}
    with Engine(registry, log=log) as engine:
        engine.set_experiment(MODEL, {"name": "s", "champion": 2, "shadows": [version]})
        dep = engine.deployment(MODEL, version)
        own_fills = []
        fill = dep.stages[0]
        fill.run = lambda state, run=fill.run: own_fills.append(state.n) or run(state)
        fill.run_one = lambda state, run=fill.run_one: own_fills.append(1) or run(state)
        for k in KEYS[:30]:
            engine.score(MODEL, {"customer-id": k, "request-id": f"one-{k}"})
        engine.score(MODEL, {"inputs": inline, "request-id": "inline"})
        engine.score_rows(MODEL, RowBatch(KEYS[30:60], None, [f"rows-{k}" for k in KEYS[30:60]]))
        bad = dict(inline, state="XX")
        engine.score_rows(MODEL, RowBatch([None, None], {n: [inline[n], bad[n]] for n in inline},
                                          ["ok", "bad"]))
        engine.score_batch(MODEL, pa.record_batch({"customer-id": KEYS[60:160]}),
                           request_ids=[f"batch-{k}" for k in KEYS[60:160]])
        engine.flush()
        assert own_fills == []  # every row came from the champion's fill
        expected = {f"one-{k}": engine.score(MODEL, {"customer-id": k}, version=version)["score"]
                    for k in KEYS[:30]}
        expected.update({f"rows-{k}": engine.score(MODEL, {"customer-id": k}, version=version)["score"]
                         for k in KEYS[30:60]})
        expected.update({f"batch-{k}": engine.score(MODEL, {"customer-id": k}, version=version)["score"]
                         for k in KEYS[60:160]})
        expected["inline"] = expected["ok"] = engine.score(MODEL, {"inputs": inline},
                                                           version=version)["score"]
        engine.flush()
    logged = {r["request_id"]: r for r in log.tail(2000).to_pylist() if r["role"] == "shadow"}
    log.close()
    assert {r["model_version"] for r in logged.values()} == {version}
    assert set(logged) == set(expected) | {"bad"}
    for request_id, score in expected.items():
        assert logged[request_id]["score"] == pytest.approx(score, rel=1e-12, abs=0), request_id
    assert logged["bad"]["score"] is None and "state" in logged["bad"]["error"]


def test_experiment_changes_under_load_drop_no_request(registry):
    errors, answered = [], []
    stop = threading.Event()
    with Engine(registry, preload=True) as engine:
        def client(offset: int) -> None:
            i = 0
            while not stop.is_set():
                key = KEYS[(offset + i) % len(KEYS)]
                try:
                    if i % 3 == 0:
                        out = engine.score_batch(MODEL, pa.record_batch({"customer-id": [key, key + 1]}))
                        assert out.column("error").null_count == 2
                    else:
                        engine.score(MODEL, {"customer-id": key})
                    answered.append(key)
                except Exception as exc:  # any failure is the test's failure
                    errors.append(exc)
                i += 1

        threads = [threading.Thread(target=client, args=(n * 97,)) for n in range(4)]
        for t in threads:
            t.start()
        for share in (0.05, 0.2, 0.5):
            engine.set_canary(MODEL, 1, share)
        engine.set_canary(MODEL, rollback=True)
        engine.set_experiment(MODEL, SHADOW)
        engine.stop_experiment(MODEL)
        stop.set()
        for t in threads:
            t.join()
    assert not errors and len(answered) > 50


def test_the_watcher_picks_up_an_experiment_written_by_another_process(registry):
    from scoreline.registry.experiments import set_experiment

    with Engine(registry, reload_interval=0.05) as engine:
        set_experiment(Repository(registry), MODEL, SPLIT)
        for _ in range(200):
            if engine.experiment(MODEL) is not None:
                break
            threading.Event().wait(0.05)
        assert engine.experiment(MODEL)["name"] == "postcode-ab"
        assert [engine.score(MODEL, {"customer-id": k})["model-version"] for k in KEYS[:40]] \
            == _expected_versions(KEYS[:40])
