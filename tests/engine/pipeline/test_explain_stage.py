"""Reason codes: contributions summed onto raw inputs (age from date of birth, a one-hot group from
state), ranked by direction, named by the manifest's codes, after the reasons of fired rules."""

from __future__ import annotations

import datetime as dt
import json
import pickle

import numpy as np
import pyarrow as pa
import pytest

lgb = pytest.importorskip("lightgbm")

from scoreline.engine.pipeline.deployment import Deployment  # noqa: E402
from scoreline.engine.pipeline.explain import Explainer  # noqa: E402
from scoreline.errors import InputError, SchemaError  # noqa: E402
from scoreline.registry.manifest import decode_manifest  # noqa: E402

STATES = ["NSW", "VIC", "QLD"]
FEATURES = ["age", "balance", "state_NSW", "state_VIC", "state_QLD"]
REASONS = {"account-balance": {"up": {"code": "R07", "text": "account balance too low"},
                               "down": {"code": "P07", "text": "healthy account balance"}},
           "date-of-birth": {"up": {"code": "R02", "text": "applicant age"}}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    rng = np.random.default_rng(2)
    n = 3000
    state = rng.integers(0, 3, n)
    X = np.column_stack([rng.uniform(18, 90, n), rng.uniform(-500, 5000, n), *(state == s for s in range(3))])
    z = -0.04 * (X[:, 0] - 40) - X[:, 1] / 1500 + 0.8 * X[:, 3]
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 15},
                        lgb.Dataset(X, y, feature_name=FEATURES), 30)
    folder = tmp_path_factory.mktemp("explain")
    booster.save_model(str(folder / "model.txt"))
    return folder


def deployment(model_dir, explain: dict, decision: dict | None = None) -> Deployment:
    return Deployment(decode_manifest(deployment_body(explain, decision)), model_dir, version=1, store=False)


def deployment_body(explain: dict | None = None, decision: dict | None = None) -> bytes:
    body = {
        "model-id": "e", "entity": {"key": "customer-id"},
        "inputs": [{"name": "date-of-birth", "type": "date"}, {"name": "account-balance", "type": "float"},
                   {"name": "state", "type": "string", "allowed": STATES}],
        "transforms": [{"kind": "age-years", "input": "date-of-birth", "output": "age-years"},
                       {"kind": "one-hot", "input": "state", "output": "st", "categories": STATES}],
        "model": {"format": "lightgbm", "artifact": "model.txt",
                  "features": {"age": "age-years", "balance": "account-balance",
                               **{f"state_{s}": f"st={s}" for s in STATES}}},
        "decision": decision or {"kind": "bands", "bands": [{"label": "decline", "min": 0.5}], "default": "accept"},
        "explain": explain or {},
    }
    return json.dumps(body).encode()


def rows(n=50):
    rng = np.random.default_rng(8)
    state = rng.integers(0, 3, n)
    return np.column_stack([rng.uniform(18, 90, n), rng.uniform(-500, 5000, n), *(state == s for s in range(3))])


def test_contributions_are_summed_onto_raw_inputs(model_dir):
    dep = deployment(model_dir, {"k": 2, "reasons": REASONS})
    explainer = Explainer(dep.manifest, dep.model, dep.plan, dep.decider)
    assert explainer.inputs == ("date-of-birth", "account-balance", "state")
    X = rows()
    raw = dep.model.predict_matrix(X)
    full = dep.model.predict(X, pred_contrib=True)
    by_input = explainer.contributions(X, raw)
    np.testing.assert_allclose(by_input, np.column_stack([full[:, 0], full[:, 1], full[:, 2:5].sum(axis=1)]),
                               rtol=1e-12, atol=1e-15)
    # With the bias, the inputs' contributions add up to the raw margin.
    margin = dep.model.predict(X, raw_score=True)
    np.testing.assert_allclose(by_input.sum(axis=1) + full[:, -1], margin, rtol=1e-9)


def test_reasons_rank_by_direction_and_carry_the_manifest_codes(model_dir):
    dep = deployment(model_dir, {"k": 2, "rank": "up", "reasons": REASONS})
    explainer = Explainer(dep.manifest, dep.model, dep.plan, dep.decider)
    X = rows()
    raw = dep.model.predict_matrix(X)
    by_input = explainer.contributions(X, raw)
    reasons = explainer.reasons(X, raw, 2)
    codes = {("date-of-birth", True): "R02", ("account-balance", True): "R07", ("state", True): "state"}
    for i, row in enumerate(reasons):
        positive = [j for j in np.argsort(-by_input[i], kind="stable") if by_input[i, j] > 0][:2]
        assert [r["input"] for r in row] == [explainer.inputs[j] for j in positive]
        for r in row:
            assert r["contribution"] > 0 and r["code"] == codes[(r["input"], True)]
    assert any(r["code"] == "R07" and r["text"] == "account balance too low" for row in reasons for r in row)
    both = Explainer(deployment(model_dir, {"reasons": REASONS}).manifest, dep.model, dep.plan, dep.decider)
    assert both.default_k == 0
    assert any(r["code"] == "P07" for row in both.reasons(X, raw, 3) for r in row)  # "abs" ranks both ways


def test_fired_rules_give_their_reasons_first(model_dir):
    rules = {"kind": "rules", "default": "accept", "hit-policy": "collect", "rules": [
        {"label": "decline", "when": [{"input": "age-years", "lt": 25}], "reason": {"code": "A01", "text": "young"}},
        {"label": "refer", "when": [{"input": "account-balance", "lt": 0}], "reason": {"code": "A02", "text": "overdrawn"}},
    ]}
    dep = deployment(model_dir, {"k": 1, "reasons": REASONS}, rules)
    explainer = Explainer(dep.manifest, dep.model, dep.plan, dep.decider)
    work = np.full((3, dep.plan.width), np.nan)
    work[:, dep.plan.columns["age-years"]] = [20.0, 30.0, 30.0]
    work[:, dep.plan.columns["account-balance"]] = [-10.0, -10.0, 100.0]
    score = np.array([0.5, 0.5, 0.5])
    fired = dep.decider.rules.decide(score, work)[1]
    X = np.array([[20.0, -10.0, 1, 0, 0], [30.0, -10.0, 1, 0, 0], [30.0, 100.0, 1, 0, 0]])
    reasons = explainer.reasons(X, dep.model.predict_matrix(X), 1, fired)
    assert [[r["code"] for r in row][:-1] for row in reasons] == [["A01", "A02"], ["A02"], []]
    assert all(len(row) >= 1 and row[-1]["input"] is not None for row in reasons)


def test_reason_codes_for_unknown_inputs_are_refused(model_dir):
    with pytest.raises(SchemaError) as info:
        deployment(model_dir, {"reasons": {"balance": {"up": {"code": "R1"}}}})
    assert info.value.path == "$.explain.reasons.balance"
    with pytest.raises(SchemaError) as info:
        deployment(model_dir, {"k": -1})
    assert info.value.path == "$.explain.k"


# --- the stage in the pipeline (every door reads its `reasons` extra) -----------------------------

INLINE = {"date-of-birth": "1990-05-01", "account-balance": -250.0, "state": "VIC"}


def test_a_request_asks_for_reasons_and_gets_them_in_the_answer(model_dir):
    dep = deployment(model_dir, {"rank": "up", "reasons": REASONS})
    assert "reasons" in dep.fields
    plain = dep.score_request({"inputs": INLINE})
    assert plain["reasons"] is None  # the manifest's default k is 0
    asked = dep.score_request({"inputs": INLINE, "explain": 2})
    assert plain["score"] == asked["score"] and 1 <= len(asked["reasons"]) <= 2
    assert all(r["contribution"] > 0 for r in asked["reasons"])
    assert {"code": "R07", "text": "account balance too low", "input": "account-balance"}.items() <= \
        asked["reasons"][0].items()
    with pytest.raises(SchemaError) as info:
        dep.score_request({"inputs": INLINE, "explain": 21})
    assert info.value.path == "$.explain"


def test_batches_explain_each_row_to_its_own_k(model_dir):
    from scoreline.engine.data.request import RowBatch

    dep = deployment(model_dir, {"k": 1, "reasons": REASONS})
    rows = dep.request_schema.parse_rows([{"inputs": INLINE, "explain": 3}, {"inputs": INLINE},
                                          {"inputs": INLINE, "explain": 0},
                                          {"inputs": {**INLINE, "state": "XX"}, "explain": 3}], "$.rows", lambda: "id")
    result = dep.score_rows(rows)
    reasons = [result.answer(i)["reasons"] for i in range(4)]
    assert len(reasons[0]) == 3 and len(reasons[1]) == 1 and reasons[2] is None
    assert reasons[3] is None and result.error(3) is not None  # a row with an error has no reasons
    assert reasons[1] == reasons[0][:1]
    one = dep.score_rows(RowBatch([None], {k: [v] for k, v in INLINE.items()}, ["x"], [3]))
    assert one.answer(0)["reasons"] == reasons[0]  # the one-row run gives the same
    batch = dep.score(pa.RecordBatch.from_pylist([{"date-of-birth": dt.date(1990, 5, 1), "account-balance": -250.0,
                                                   "state": "VIC"}]))
    assert batch.column("reasons").to_pylist() == [reasons[1]]  # the manifest's k = 1


def test_models_without_explain_refuse_the_request(model_dir):
    body = json.loads(deployment_body())
    body.pop("explain")
    dep = Deployment(decode_manifest(json.dumps(body).encode()), model_dir, version=1, store=False)
    assert "reasons" not in dep.fields
    with pytest.raises(SchemaError, match="no `explain` section") as info:
        dep.score_request({"inputs": INLINE, "explain": 1})
    assert info.value.path == "$.explain"


def test_bulk_explain_gives_flat_reason_columns(model_dir):
    from scoreline.engine.bulk.scorers import as_scorer

    dep = deployment(model_dir, {"rank": "up", "reasons": REASONS})
    scorer = as_scorer(dep, explain=2)
    names = [f.name for f in scorer.output_schema]
    assert "reasons" not in names and names[-6:] == ["reason-1-code", "reason-1-input", "reason-1-contribution",
                                                    "reason-2-code", "reason-2-input", "reason-2-contribution"]
    batch = pa.RecordBatch.from_pylist([{"date-of-birth": dt.date(1990, 5, 1), "account-balance": -250.0,
                                         "state": "VIC"}] * 3)
    out = scorer.score(batch).to_pylist()
    expected = dep.score_request({"inputs": INLINE, "explain": 2})["reasons"]
    assert out[0]["reason-1-code"] == expected[0]["code"]
    assert out[0]["reason-1-contribution"] == expected[0]["contribution"]
    assert pickle.loads(pickle.dumps(scorer)).score(batch).to_pylist() == out
    with pytest.raises(InputError, match="--explain"):
        as_scorer(dep, explain=25)


def test_a_model_that_cannot_explain_is_refused_at_registration(model_dir, tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 5))
    booster = lgb.train({"objective": "regression", "linear_tree": True, "verbose": -1},
                        lgb.Dataset(X, X[:, 0] * 2 + X[:, 1], feature_name=FEATURES), 3)
    booster.save_model(str(tmp_path / "model.txt"))
    with pytest.raises(SchemaError, match="linear trees") as info:
        deployment(tmp_path, {"k": 1})
    assert info.value.path == "$.explain"


def test_a_linear_model_explains_from_the_manifest_means(tmp_path):
    from scoreline.engine.models.linear import LinearModel

    coef = [0.02, -0.001, 0.3, -0.2, 0.1]
    means = {"age": 45.0, "balance": 1500.0, "state_NSW": 0.3, "state_VIC": 0.4, "state_QLD": 0.3}
    LinearModel("binary", FEATURES, np.array([coef]), np.array([-1.0])).save(
        tmp_path / "model.json")
    body = json.loads(deployment_body({"k": 3, "means": means, "reasons": REASONS}))
    body["model"]["format"], body["model"]["artifact"] = "linear", "model.json"
    dep = Deployment(decode_manifest(json.dumps(body).encode()), tmp_path, version=1, store=False)
    answer = dep.score_request({"inputs": INLINE})
    by_input = {r["input"]: r["contribution"] for r in answer["reasons"]}
    assert by_input["account-balance"] == pytest.approx(-0.001 * (-250.0 - 1500.0), rel=1e-12)
    assert by_input["state"] == pytest.approx(0.3 * -0.3 - 0.2 * 0.6 + 0.1 * -0.3, rel=1e-12)
    body["explain"].pop("means")
    with pytest.raises(SchemaError, match="means") as info:
        Deployment(decode_manifest(json.dumps(body).encode()), tmp_path, version=1, store=False)
    assert info.value.path == "$.explain"


def test_the_decision_log_keeps_the_codes_given(model_dir, tmp_path):
    import shutil

    from scoreline.engine.pipeline.router import Engine
    from scoreline.registry.decision_log import DecisionLog
    from scoreline.registry.repository import Repository

    shutil.copy(model_dir / "model.txt", tmp_path / "model.txt")
    repo = Repository(tmp_path / "registry")
    repo.add("e", decode_manifest(deployment_body({"rank": "up", "reasons": REASONS})), tmp_path / "model.txt",
             message="test")
    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine = Engine(tmp_path / "registry", log=url)
    try:
        given = engine.score("e", {"inputs": INLINE, "explain": 2})["reasons"]
        engine.score("e", {"inputs": INLINE})
        engine.flush()
    finally:
        engine.close()
    with DecisionLog(url) as log:
        rows = log.tail(2).column("reasons").to_pylist()
    assert sorted(rows, key=str) == sorted([",".join(r["code"] for r in given), None], key=str)


def test_a_decision_log_from_before_reasons_gains_the_column(tmp_path):
    import sqlite3

    from scoreline.registry.decision_log import DecisionLog

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE decisions (ts TEXT, request_id TEXT, model_id TEXT, model_version INTEGER, "
                     "entity_key TEXT, score REAL, decision TEXT, latency_us REAL, error TEXT)")
        conn.execute("INSERT INTO decisions VALUES ('2026-01-01 00:00:00', 'a', 'm', 1, '7', 0.5, 'x', 1.0, NULL)")
    with DecisionLog(f"sqlite:///{path}") as log:
        log.append(pa.table({"model_id": ["m"], "model_version": [1], "reasons": ["R1,R2"]}))
        log.flush()
        assert sorted(log.tail(5).column("reasons").to_pylist(), key=str) == [None, "R1,R2"]


def test_a_fired_rule_gives_its_reason_in_the_answer(model_dir):
    rules = {"kind": "rules", "default": "accept", "rules": [
        {"label": "refer", "when": [{"input": "account-balance", "lt": 0}], "reason": {"code": "A02", "text": "overdrawn"}},
    ]}
    dep = deployment(model_dir, {"rank": "up", "reasons": REASONS}, rules)
    answer = dep.score_request({"inputs": INLINE, "explain": 1})
    assert answer["application-decision"] == "refer"
    assert [r["code"] for r in answer["reasons"]][0] == "A02" and len(answer["reasons"]) == 2
    batch = dep.run(pa.RecordBatch.from_pylist([{"date-of-birth": dt.date(1990, 5, 1), "account-balance": -250.0,
                                                 "state": "VIC"}]), explain=1)
    assert batch.answer(0)["reasons"] == answer["reasons"]
