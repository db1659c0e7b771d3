"""Rule tables (decision kind "rules"): first/collect hit policies over inputs and the score through a
Deployment, against a plain-Python reading of the table, and the registration checks with paths."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest

lgb = pytest.importorskip("lightgbm")

from scoreline.engine.pipeline.deployment import Deployment  # noqa: E402
from scoreline.errors import SchemaError  # noqa: E402
from scoreline.registry.manifest import decode_manifest  # noqa: E402

TODAY = dt.date(2026, 3, 1)
RULES = [
    {"label": "decline", "when": [{"input": "age", "lt": 18}], "reason": {"code": "R01", "text": "under 18"}},
    {"label": "decline", "when": [{"input": "score", "ge": 0.6}], "reason": {"code": "R02", "text": "high risk"}},
    {"label": "refer", "when": [{"input": "score", "ge": 0.4, "lt": 0.6}, {"input": "account-balance", "lt": 500}],
     "reason": {"code": "R03", "text": "medium risk, low balance"}},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    rng = np.random.default_rng(4)
    X = np.column_stack([rng.uniform(10, 90, 3000), rng.uniform(-500, 5000, 3000)])
    y = (rng.random(3000) < 1 / (1 + np.exp(0.05 * (X[:, 0] - 40) + X[:, 1] / 2000 - 0.5))).astype(float)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7}, lgb.Dataset(X, y), 20)
    folder = tmp_path_factory.mktemp("rules")
    booster.save_model(str(folder / "model.txt"))
    return folder


def manifest(decision: dict) -> bytes:
    return json.dumps({
        "model-id": "r", "entity": {"key": "customer-id"},
        "inputs": [{"name": "date-of-birth", "type": "date"}, {"name": "account-balance", "type": "float", "required": False},
                   {"name": "state", "type": "string", "required": False}],
        "transforms": [{"kind": "age-years", "input": "date-of-birth", "output": "age"}],
        "model": {"format": "lightgbm", "artifact": "model.txt",
                  "features": {"Column_0": "age", "Column_1": "account-balance"}},
        "decision": decision,
    }).encode()


def deploy(model_dir, rules=RULES, policy="first") -> Deployment:
    decision = {"kind": "rules", "rules": rules, "default": "accept", "hit-policy": policy}
    return Deployment(decode_manifest(manifest(decision)), model_dir, version=1, store=False)


def rows(n: int = 400) -> list[dict]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        born = TODAY - dt.timedelta(days=int(rng.uniform(10, 90) * 365.25))
        balance = None if i % 37 == 0 else float(rng.choice([rng.uniform(-500, 5000), 499.0, 500.0]))
        out.append({"customer-id": i, "date-of-birth": born.isoformat(), "account-balance": balance})
    return out


def expected_label(age: float, balance: float | None, score: float) -> str:
    """The table read by hand: first match wins, a missing balance meets no condition."""
    if age < 18 or score >= 0.6:
        return "decline"
    if 0.4 <= score < 0.6 and balance is not None and balance < 500:
        return "refer"
    return "accept"


def test_first_match_over_inputs_and_score(model_dir):
    dep = deploy(model_dir)
    data = rows()
    batch = pa.RecordBatch.from_pylist(
        [{**row, "date-of-birth": dt.date.fromisoformat(row["date-of-birth"])} for row in data],
        schema=pa.schema([("customer-id", pa.int64()), ("date-of-birth", pa.date32()), ("account-balance", pa.float64())]))
    out = dep.score(batch, now=TODAY).to_pylist()
    labels = set()
    for row, got in zip(data, out):
        born = dt.date.fromisoformat(row["date-of-birth"])
        age = TODAY.year - born.year - ((TODAY.month, TODAY.day) < (born.month, born.day))
        assert got["error"] is None
        assert got["application-decision"] == expected_label(age, row["account-balance"], got["score"]), (row, got)
        labels.add(got["application-decision"])
        one = dep.score_request({"customer-id": row["customer-id"], "inputs": {
            "date-of-birth": row["date-of-birth"], "account-balance": row["account-balance"]}}, now=TODAY)
        assert one["application-decision"] == got["application-decision"]
    assert labels == {"accept", "refer", "decline"}  # every rule and the default were exercised


def test_collect_fires_every_matching_rule(model_dir):
    dep = deploy(model_dir, policy="collect")
    rules = dep.decider.rules
    work = np.array([[10.0, 100.0], [30.0, 100.0], [30.0, np.nan]])
    index, fired = rules.decide(np.array([0.7, 0.5, 0.5]), work)
    assert [rules.labels[i] for i in index] == ["decline", "refer", "accept"]
    assert fired.tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
    first = deploy(model_dir).decider.rules.decide(np.array([0.7, 0.5, 0.5]), work)[1]
    assert first.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]


@pytest.mark.parametrize(
    ("rules", "path", "words"),
    [
        ([{"label": "x", "when": [{"input": "income", "lt": 1}]}], "$.decision.rules[0].when[0].input", "income"),
        ([{"label": "x", "when": [{"input": "state", "lt": 1}]}], "$.decision.rules[0].when[0].input", "state"),
        ([{"label": "x", "when": [{"input": "age"}]}], "$.decision.rules[0].when[0]", "needs a bound"),
        ([{"label": "x", "when": [{"input": "age", "ge": 1, "gt": 2}]}], "$.decision.rules[0].when[0].gt", "not both"),
        ([{"label": "x", "when": [{"input": "score", "ge": 0.6, "lt": 0.4}]}], "$.decision.rules[0]", "never fire"),
        ([{"label": "x", "when": [{"input": "age", "ge": 18}, {"input": "age", "lt": 18}]}], "$.decision.rules[0]",
         "never fire"),
        ([{"label": "x", "when": [{"input": "age", "lt": 30}]},
          {"label": "y", "when": [{"input": "age", "lt": 18}, {"input": "score", "ge": 0.5}]}],
         "$.decision.rules[1]", "rule 0 matches every row"),
        ([{"label": "x"}, {"label": "y", "when": [{"input": "age", "lt": 18}]}], "$.decision.rules[1]", "rule 0"),
    ],
)
def test_bad_tables_are_refused_with_paths(model_dir, rules, path, words):
    with pytest.raises(SchemaError, match=words) as info:
        deploy(model_dir, rules)
    assert info.value.path == path


def test_collect_allows_overlapping_rules(model_dir):
    rules = [{"label": "x", "when": [{"input": "age", "lt": 30}]},
             {"label": "y", "when": [{"input": "age", "lt": 18}]}]
    assert deploy(model_dir, rules, policy="collect").decider.rules.labels == ["x", "y", "accept"]
    # An open bound does not cover a closed one at the same value: both rules can fire.
    touching = [{"label": "x", "when": [{"input": "age", "gt": 18}]}, {"label": "y", "when": [{"input": "age", "ge": 18}]}]
    deploy(model_dir, touching)
