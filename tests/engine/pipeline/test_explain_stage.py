"""Reason codes: contributions summed onto raw inputs (age from date of birth, a one-hot group from
state), ranked by direction, named by the manifest's codes, after the reasons of fired rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

lgb = pytest.importorskip("lightgbm")

from scoreline.engine.pipeline.deployment import Deployment  # noqa: E402
from scoreline.engine.pipeline.explain import Explainer  # noqa: E402
from scoreline.errors import SchemaError  # noqa: E402
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
        "explain": explain,
    }
    return Deployment(decode_manifest(json.dumps(body).encode()), model_dir, version=1, store=False)


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
