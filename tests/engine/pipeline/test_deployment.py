"""Deployment end to end: manifest transforms + model + decision against a numpy/LightGBM reference,
per-row input errors with their paths, entity lookups, and validation at registration."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

lgb = pytest.importorskip("lightgbm")

from scoreline.engine.pipeline.deployment import Deployment, validate_version  # noqa: E402
from scoreline.engine.pipeline.stages import Stage  # noqa: E402
from scoreline.errors import (  # noqa: E402
    InputError, NotFoundError, RegistrationError, SchemaError, ScorelineError,
)
from scoreline.registry.manifest import decode_manifest  # noqa: E402
from scoreline.registry.repository import Repository  # noqa: E402

TODAY = dt.date(2026, 3, 1)
TODAY_DAY = (TODAY - dt.date(1970, 1, 1)).days
STATES = ["NSW", "VIC", "QLD", "WA"]
TIERS = {"gold": 3.0, "silver": 2.0, "bronze": 1.0}
FEATURES = ["age", "tenure_days", "state_code", "state_NSW", "state_VIC", "state_QLD", "state_WA",
            "balance_z", "income_01", "log_balance", "balance_capped", "age_band", "income_filled",
            "debt_ratio", "tier_value", "vip", "raw_income"]

INPUTS = [
    {"name": "date-of-birth", "type": "date", "minimum": None},
    {"name": "joined", "type": "timestamp"},
    {"name": "state", "type": "string", "allowed": STATES},
    {"name": "balance", "type": "float", "minimum": -1000.0, "maximum": 1e7},
    {"name": "income", "type": "float", "required": False, "allow-nan": True},
    {"name": "debt", "type": "int", "default": 0},
    {"name": "tier", "type": "string", "required": False},
    {"name": "vip", "type": "bool", "default": False},
]
TRANSFORMS = [
    {"kind": "age-years", "input": "date-of-birth", "output": "age"},
    {"kind": "days-since", "input": "joined", "output": "tenure"},
    {"kind": "vocabulary", "input": "state", "output": "state-code", "vocabulary": STATES,
     "fallback": -1},
    {"kind": "one-hot", "input": "state", "output": "st", "categories": STATES},
    {"kind": "standardize", "input": "balance", "output": "balance-z", "mean": 5000, "std": 2500},
    {"kind": "min-max", "input": "income", "output": "income-01", "min": 0, "max": 200000},
    {"kind": "clip", "input": "balance", "output": "balance-floor", "lower": 0},
    {"kind": "log1p", "input": "balance-floor", "output": "log-balance"},
    {"kind": "clip", "input": "balance", "output": "balance-capped", "upper": 20000},
    {"kind": "bucketize", "input": "age", "output": "age-band", "edges": [25, 40, 65]},
    {"kind": "fill-missing", "input": "income", "output": "income-filled", "value": -1},
    {"kind": "ratio", "numerator": "debt", "denominator": "income", "output": "debt-ratio"},
    {"kind": "lookup", "input": "tier", "output": "tier-value", "table": TIERS, "default": 0},
    {"kind": "passthrough", "input": "vip", "output": "vip-flag"},
]
MAPPING = {"tenure_days": "tenure", "state_code": "state-code", "balance_z": "balance-z",
           "income_01": "income-01", "log_balance": "log-balance",
           "balance_capped": "balance-capped", "age_band": "age-band",
           "income_filled": "income-filled", "debt_ratio": "debt-ratio", "tier_value": "tier-value",
           "vip": "vip-flag", "raw_income": "income",
           **{f"state_{s}": f"st={s}" for s in STATES}}


def manifest(decision: dict, *, store=None, score="auto", output=None, **extra) -> bytes:
    entity = {"key": "customer-id"}
    if store:
        entity["store"] = {"kind": "parquet", "path": store, "key-column": "customer-id"}
    inputs = [{k: v for k, v in i.items() if v is not None} for i in INPUTS]
    body = {"model-id": "m", "inputs": inputs, "entity": entity, "transforms": TRANSFORMS,
            "model": {"format": "lightgbm", "artifact": "model.txt", "features": MAPPING,
                      "score": score},
            "decision": decision, **extra}
    if output:
        body["output"] = output
    return json.dumps(body).encode()


def reference_features(rows: list[dict]) -> np.ndarray:
    """The features computed the slow, obvious way from Python values."""
    out = []
    for r in rows:
        born = dt.date.fromisoformat(r["date-of-birth"])
        age = TODAY.year - born.year - ((TODAY.month, TODAY.day) < (born.month, born.day))
        joined = dt.datetime.fromisoformat(r["joined"]).replace(tzinfo=dt.timezone.utc)
        tenure = TODAY_DAY - math.floor(joined.timestamp() / 86400)
        code = STATES.index(r["state"])
        bal = r["balance"]
        inc = math.nan if r.get("income") is None else r["income"]
        debt = r.get("debt") or 0
        tier = r.get("tier")
        out.append([
            age, tenure, code, *[1.0 if code == k else 0.0 for k in range(4)],
            (bal - 5000) / 2500, inc / 200000, math.log1p(max(bal, 0.0)), min(bal, 20000),
            float(np.searchsorted([25, 40, 65], age, side="right")),
            -1.0 if math.isnan(inc) else inc,
            math.nan if inc == 0 else debt / inc,
            math.nan if tier is None else TIERS.get(tier, 0.0),
            1.0 if r.get("vip") else 0.0, inc,
        ])
    return np.array(out, dtype=np.float64)


def random_rows(rng: np.random.Generator, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        born = dt.date(1930, 1, 1) + dt.timedelta(days=int(rng.integers(0, 30000)))
        joined = dt.datetime(2000, 1, 1) + dt.timedelta(seconds=int(rng.integers(0, 8e8)))
        rows.append({
            "date-of-birth": born.isoformat(), "joined": joined.isoformat(),
            "state": STATES[int(rng.integers(0, 4))], "balance": float(rng.uniform(-1000, 30000)),
            "income": None if rng.random() < 0.2 else float(rng.uniform(0, 200000)),
            "debt": int(rng.integers(0, 50000)),
            "tier": [None, "gold", "silver", "bronze", "tin"][int(rng.integers(0, 5))],
            "vip": bool(rng.random() < 0.3),
        })
    return rows


def batch_of(rows: list[dict], key=None) -> pa.RecordBatch:
    columns = {"customer-id": key if key is not None else list(range(1, len(rows) + 1))}
    for spec in INPUTS:
        columns[spec["name"]] = [r.get(spec["name"]) for r in rows]
    return pa.RecordBatch.from_pydict(columns)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Regression, binary and 3-class LightGBM models trained on the reference features."""
    rng = np.random.default_rng(1)
    rows = random_rows(rng, 3000)
    X = reference_features(rows)
    signal = X[:, 0] / 30 + X[:, 9] / 5 + np.nan_to_num(X[:, 14]) - X[:, 2] / 2 + X[:, 15]
    made = {}
    root = tmp_path_factory.mktemp("models")
    for name, params, y in [
        ("regression", {"objective": "regression"}, signal),
        ("binary", {"objective": "binary"}, (signal > np.median(signal)).astype(int)),
        ("multiclass", {"objective": "multiclass", "num_class": 3},
         np.digitize(signal, np.quantile(signal, [0.33, 0.66]))),
    ]:
        data = lgb.Dataset(X, y, feature_name=FEATURES)
        booster = lgb.train({**params, "verbose": -1, "num_threads": 1, "num_leaves": 15},
                            data, num_boost_round=15)
        folder = root / name
        folder.mkdir()
        booster.save_model(str(folder / "model.txt"))
        made[name] = (folder, booster)
    return made


BANDS = {"kind": "bands", "bands": [{"label": "decline", "min": 0.7},
                                    {"label": "refer", "min": 0.4}], "default": "accept"}


def deploy(models, kind: str, decision: dict, **kw) -> Deployment:
    folder, _ = models[kind]
    return Deployment(decode_manifest(manifest(decision, **kw)), folder, version=3, store=False)


def test_every_transform_matches_the_reference(models):
    dep = deploy(models, "regression", BANDS)
    rows = random_rows(np.random.default_rng(2), 500)
    out = dep.score(batch_of(rows), now=TODAY)
    assert out.column("error").null_count == 500
    want = models["regression"][1].predict(reference_features(rows))
    assert np.std(want) > 0.1  # the model really depends on the transformed features
    np.testing.assert_allclose(out.column("score").to_numpy(), want, rtol=1e-12, atol=1e-12)
    one = [dep.score_request({"customer-id": 9, "inputs": r}, now=TODAY)["score"] for r in rows[:20]]
    np.testing.assert_allclose(one, want[:20], rtol=1e-12, atol=1e-12)


@settings(max_examples=15)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40))
def test_batch_and_one_row_paths_agree(models, seed, n):
    dep = _shared(models, "multiclass", {"kind": "top-k", "labels": ["lo", "mid", "hi"], "k": 2})
    rows = random_rows(np.random.default_rng(seed), n)
    out = dep.score(batch_of(rows), now=TODAY).to_pylist()
    for row, got in zip(rows, out):
        one = dep.score_request({"customer-id": got["customer-id"], "inputs": row}, now=TODAY)
        assert one == {k: v for k, v in got.items() if k != "error"}


_cache: dict = {}


def _shared(models, kind, decision):
    key = (kind, json.dumps(decision))
    if key not in _cache:
        _cache[key] = deploy(models, kind, decision)
    return _cache[key]


def test_output_contract_columns_and_decisions(models):
    dep = deploy(models, "binary", BANDS, output={"score": "risk", "decision": "application-decision"})
    assert dep.output_schema.names == ["customer-id", "model-id", "model-version", "risk",
                                       "application-decision", "error"]
    rows = random_rows(np.random.default_rng(3), 300)
    out = dep.score(batch_of(rows), now=TODAY)
    p = models["binary"][1].predict(reference_features(rows))
    want = np.where(p >= 0.7, "decline", np.where(p >= 0.4, "refer", "accept"))
    assert out.column("application-decision").to_pylist() == want.tolist()
    assert set(out.column("model-version").to_pylist()) == {3}
    assert out.column("customer-id").to_pylist() == list(range(1, 301))


def test_segment_payload_and_class_score(models):
    seg = {"kind": "segment", "labels": ["a", "b", "c"],
           "payload": {"a": "SKU-1", "b": "SKU-2", "c": "SKU-1"}, "payload-field": "sku"}
    dep = deploy(models, "multiclass", seg, score=2)
    rows = random_rows(np.random.default_rng(4), 200)
    out = dep.score(batch_of(rows), now=TODAY)
    p = models["multiclass"][1].predict(reference_features(rows))
    np.testing.assert_allclose(out.column("score").to_numpy(), p[:, 2], rtol=1e-12)
    labels = np.array(["a", "b", "c"])[p.argmax(axis=1)]
    assert out.column("application-decision").to_pylist() == labels.tolist()
    assert out.column("sku").to_pylist() == [{"a": "SKU-1", "b": "SKU-2", "c": "SKU-1"}[x]
                                              for x in labels]


BAD_VALUES = [
    ("date-of-birth", "yesterday", "expected a date (YYYY-MM-DD) at `$.inputs.date-of-birth`, got 'yesterday'"),
    ("date-of-birth", "2021-02-29", "expected a date (YYYY-MM-DD) at `$.inputs.date-of-birth`, got '2021-02-29'"),
    ("date-of-birth", None, "missing required input `$.inputs.date-of-birth` (a date)"),
    ("joined", "noon", "expected a timestamp at `$.inputs.joined`, got 'noon'"),
    ("state", "XX", "expected one of 'NSW', 'VIC', 'QLD', 'WA' at `$.inputs.state`, got 'XX'"),
    ("balance", -5000.0, "expected a float between -1000 and 10000000 at `$.inputs.balance`, got -5000"),
    ("balance", math.nan, "expected a finite number at `$.inputs.balance`, got nan (the input does not set allow-nan)"),
    ("balance", math.inf, "expected a finite number at `$.inputs.balance`, got inf (the input does not set allow-nan)"),
    ("debt", 1.5, "expected an int at `$.inputs.debt`, got 1.5"),
]


@pytest.mark.parametrize("field, value, message", BAD_VALUES)
def test_a_bad_value_is_that_rows_error_with_its_path(models, field, value, message):
    dep = _shared(models, "binary", BANDS)
    rows = random_rows(np.random.default_rng(5), 3)
    rows[1][field] = value
    out = dep.score(batch_of(rows), now=TODAY)
    assert out.column("error").to_pylist() == [None, message, None]
    assert out.column("score").is_null().to_pylist() == [False, True, False]
    assert out.column("application-decision").is_null().to_pylist() == [False, True, False]
    with pytest.raises(InputError) as err:
        dep.score_request({"inputs": rows[1]}, now=TODAY)
    assert err.value.message == message
    assert err.value.path == f"$.inputs.{field}"


def test_wrong_json_types_defaults_and_optional_nulls(models):
    dep = _shared(models, "binary", BANDS)
    row = random_rows(np.random.default_rng(6), 1)[0]
    with pytest.raises(InputError, match=r"expected a float at `\$.inputs.balance`, got '12'"):
        dep.score_request({"inputs": {**row, "balance": "12"}}, now=TODAY)
    with pytest.raises(InputError, match=r"expected a bool at `\$.inputs.vip`, got 1"):
        dep.score_request({"inputs": {**row, "vip": 1}}, now=TODAY)
    # debt and vip have defaults, income and tier are optional: nulls are fine and equal defaults
    sparse = {**row, "debt": None, "vip": None, "income": None, "tier": None}
    filled = {**row, "debt": 0, "vip": False, "income": None, "tier": None}
    assert dep.score_request({"inputs": sparse}, now=TODAY) == dep.score_request(
        {"inputs": filled}, now=TODAY)
    out = dep.score(batch_of([sparse, filled]), now=TODAY)
    assert out.column("score")[0] == out.column("score")[1]
    with pytest.raises(SchemaError, match="unknown field"):
        dep.score_request({"customer_id": 5}, now=TODAY)


def test_a_batch_without_key_or_a_required_column_raises(models):
    dep = _shared(models, "binary", BANDS)
    rows = random_rows(np.random.default_rng(7), 2)
    batch = batch_of(rows).drop_columns(["customer-id", "state"])
    with pytest.raises(InputError, match="state"):
        dep.score(batch, now=TODAY)
    empty = dep.score(batch_of(rows).slice(0, 0), now=TODAY)
    assert empty.num_rows == 0 and empty.schema == dep.output_schema


def test_entity_lookup_mixes_with_inline_rows(models, tmp_path):
    rows = random_rows(np.random.default_rng(8), 50)
    store = tmp_path / "store.parquet"
    table = batch_of(rows, key=list(range(100, 150)))
    pq.write_table(pa.Table.from_batches([table]), store)
    folder, booster = models["binary"]
    dep = Deployment(decode_manifest(manifest(BANDS, store=str(store))), folder, version=1)
    inline = random_rows(np.random.default_rng(9), 1)[0]
    ask = {"customer-id": [100, 7, 149, None, 120]}
    for spec in INPUTS:
        ask[spec["name"]] = [None, None, None, inline[spec["name"]], None]
    out = dep.score(pa.RecordBatch.from_pydict(ask), now=TODAY)
    errors = out.column("error").to_pylist()
    assert errors[0] is None and errors[2] is None and errors[3] is None and errors[4] is None
    assert errors[1] == "customer-id 7 not found in the entity store of model 'm'"
    want = booster.predict(reference_features([rows[0], rows[49], inline, rows[20]]))
    got = out.column("score").to_numpy(zero_copy_only=False)[[0, 2, 3, 4]]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert dep.score_request({"customer-id": 149}, now=TODAY)["score"] == pytest.approx(want[1])
    with pytest.raises(NotFoundError) as err:
        dep.score_request({"customer-id": 7}, now=TODAY)
    assert err.value.path == "$.customer-id"
    keys_only = dep.score(pa.RecordBatch.from_pydict({"customer-id": [149, 100]}), now=TODAY)
    np.testing.assert_allclose(keys_only.column("score").to_numpy(), want[[1, 0]], rtol=1e-12)


@pytest.mark.parametrize("change, path", [
    (lambda m: {**m, "model": {**m["model"], "features": {**m["model"]["features"],
                                                          "age": "no-such"}}}, "$.model"),
    (lambda m: {**m, "transforms": m["transforms"][:2] + [
        {"kind": "standardize", "input": "balance", "output": "x", "mean": 0, "std": 0}]},
     "$.transforms[2].std"),
    (lambda m: {**m, "decision": {"kind": "argmax", "labels": ["a", "b", "c", "d"]}},
     "$.decision.labels"),
    (lambda m: {**m, "transforms": [{"kind": "log1p", "input": "state", "output": "x"}]},
     "$.transforms[0]"),
    (lambda m: {**m, "inputs": [{**m["inputs"][0], "allowed": ["2000-01-01"]}, *m["inputs"][1:]]},
     "$.inputs[0].allowed"),
    (lambda m: {**m, "inputs": [*m["inputs"][:5], {**m["inputs"][5], "default": 1.5},
                                *m["inputs"][6:]]}, "$.inputs[5].default"),
])
def test_registration_refuses_a_broken_version(models, tmp_path, change, path):
    folder, _ = models["binary"]
    body = change(json.loads(manifest(BANDS)))
    repo = Repository(tmp_path / "registry")
    try:
        m = decode_manifest(json.dumps(body))
    except SchemaError as exc:  # caught by the manifest schema already: fine, same path rule
        assert exc.path.startswith(path.split(".")[0])
        return
    with pytest.raises(RegistrationError) as err:
        repo.add("m", m, folder / "model.txt", validate=validate_version)
    assert err.value.path == path
    assert repo.list() == [{"model_id": "m", "versions": [], "latest": None, "aliases": {}}]


def test_registration_refuses_a_corrupt_artifact(tmp_path, models):
    folder, _ = models["binary"]
    bad = tmp_path / "model.txt"
    text = (folder / "model.txt").read_text()
    bad.write_text(text[: text.index("Tree=1") + 40])  # cut inside the second tree
    with pytest.raises(RegistrationError):
        Repository(tmp_path / "r").add("m", manifest(BANDS), bad, validate=validate_version)
    version = Repository(tmp_path / "r").add("m", manifest(BANDS), folder / "model.txt",
                                             validate=validate_version)
    assert version == 1


def test_string_keys_and_a_changed_store_file(models, tmp_path):
    """String keys go through the store's own lookup; integer keys through the converted view,
    which follows the store when its file changes (converted in the background)."""
    from scoreline.engine.data.entities import open_store
    from scoreline.registry.manifest import ParquetStore

    rows = random_rows(np.random.default_rng(10), 3)
    folder, booster = models["regression"]
    store = tmp_path / "store.parquet"
    keyed = batch_of(rows, key=["a", "b", "c"])
    pq.write_table(pa.Table.from_batches([keyed]), store)
    body = json.loads(manifest(BANDS, store=str(store)))
    body["entity"]["key-type"] = "string"
    dep = Deployment(decode_manifest(json.dumps(body)), folder, version=1)
    want = booster.predict(reference_features(rows))
    assert dep.score_request({"customer-id": "c"}, now=TODAY)["score"] == pytest.approx(want[2])
    out = dep.score(pa.RecordBatch.from_pydict({"customer-id": ["b", "zz"]}), now=TODAY)
    assert out.column("score")[0].as_py() == pytest.approx(want[1])
    assert out.column("error")[1].as_py() == "customer-id 'zz' not found in the entity store of model 'm'"

    pq.write_table(pa.Table.from_batches([batch_of(rows, key=[1, 2, 3])]), store)
    int_store = open_store(ParquetStore(path=str(store), key_column="customer-id"), tmp_path,
                           reload_interval=0.0)
    dep = Deployment(decode_manifest(manifest(BANDS, store=str(store))), folder, version=1,
                     store=int_store)
    before = dep.score_request({"customer-id": 2}, now=TODAY)["score"]
    assert before == pytest.approx(want[1])
    changed = [dict(r, state=STATES[(STATES.index(r["state"]) + 1) % 4], tier="gold") for r in rows]
    pq.write_table(pa.Table.from_batches([batch_of(changed, key=[1, 2, 3])]), store)
    expected = booster.predict(reference_features(changed))[1]
    assert expected != pytest.approx(before)
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = dep.score_request({"customer-id": 2}, now=TODAY)["score"]
        if after != before:
            break
        time.sleep(0.05)
    assert after == pytest.approx(expected)
    batch = dep.score(pa.RecordBatch.from_pydict({"customer-id": [2]}), now=TODAY)
    assert batch.column("score")[0].as_py() == pytest.approx(expected)


def test_the_manifest_picks_the_compiled_tier(models):
    """`model.compile: "model"` scores through the model's own compiled trees: the same answers
    as the shared kernel; an unknown tier, or a tier for a linear model, is refused by its path."""
    body = json.loads(manifest(BANDS))
    body["model"]["compile"] = "model"
    folder, _ = models["binary"]
    compiled = Deployment(decode_manifest(json.dumps(body)), folder, version=1, store=False)
    generic = deploy(models, "binary", BANDS)
    assert (compiled.model.tier, generic.model.tier) == ("model", "generic")
    rows = random_rows(np.random.default_rng(5), 300)
    got, want = (d.score(batch_of(rows), now=TODAY) for d in (compiled, generic))
    assert got.column("score").to_pylist() == want.column("score").to_pylist()
    assert got.column("application-decision").to_pylist() == want.column("application-decision").to_pylist()
    one = compiled.score_request({"customer-id": 1, "inputs": rows[0]}, now=TODAY)
    assert one["score"] == want.column("score")[0].as_py()
    for model, message in (({**body["model"], "compile": "fast"}, "enum value 'fast'"),
                           ({"format": "linear", "artifact": "model.json", "compile": "auto"}, "lightgbm models only")):
        with pytest.raises(SchemaError, match=message) as caught:
            decode_manifest(json.dumps({**body, "model": model}))
        assert caught.value.path == "$.model.compile"


def test_a_linear_model_and_a_non_finite_score(tmp_path):
    """A linear artifact through the same pipeline; a score that is not finite (here from an
    infinite input the manifest allows) is that row's error, never a number in the answer."""
    (tmp_path / "model.json").write_text(json.dumps({
        "format": "scoreline-linear", "version": 1, "objective": "regression",
        "feature_names": ["x", "log_y"], "coefficients": [2.0, -0.5], "intercept": 1.0}))
    m = decode_manifest(json.dumps({
        "model-id": "lin", "entity": {"key": "id"},
        "inputs": [{"name": "x", "type": "float", "allow-nan": True},
                   {"name": "y", "type": "float", "minimum": 0}],
        "transforms": [{"kind": "log1p", "input": "y", "output": "log-y"}],
        "model": {"format": "linear", "artifact": "model.json", "features": {"log_y": "log-y"}},
        "decision": BANDS}))
    dep = Deployment(m, tmp_path, version=1, store=False)
    out = dep.score(pa.RecordBatch.from_pydict({"x": [1.5, math.inf, 0.0], "y": [3.0, 1.0, 0.0]}))
    want = 1.0 + 2.0 * 1.5 - 0.5 * math.log1p(3.0)
    assert out.column("score").to_pylist() == [pytest.approx(want), None, pytest.approx(1.0)]
    assert out.column("error").to_pylist() == [
        None, "the model gave a non-finite score (inf) for this row", None]
    assert out.column("application-decision").to_pylist() == ["decline", None, "decline"]
    with pytest.raises(InputError, match="non-finite score"):
        dep.score_request({"inputs": {"x": math.inf, "y": 1.0}})


def test_a_string_input_feeds_a_pandas_categorical_feature(tmp_path):
    """A model trained on a pandas category column takes the raw string: its position in the
    model's own category list (unseen -> missing), exactly as LightGBM does with pandas."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(11)
    n = 2000
    df = pd.DataFrame({
        "state": pd.Categorical(rng.choice(STATES, n), categories=["WA", "NSW", "QLD", "VIC"]),
        "balance": rng.normal(0, 1, n),
    })
    y = (df["state"].isin(["VIC", "QLD"]).to_numpy() + df["balance"].to_numpy() > 0.7).astype(int)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1,
                         "min_data_per_group": 5, "cat_smooth": 1}, lgb.Dataset(df, y), 10)
    booster.save_model(str(tmp_path / "model.txt"))
    m = decode_manifest(json.dumps({
        "model-id": "cat", "entity": {"key": "id"},
        "inputs": [{"name": "state", "type": "string", "required": False},
                   {"name": "balance", "type": "float"}],
        "model": {"format": "lightgbm", "artifact": "model.txt"}, "decision": BANDS}))
    dep = Deployment(m, tmp_path, version=1, store=False)
    states = ["VIC", "WA", "TAS", None, "QLD"]
    balances = [0.1, -0.3, 0.5, 0.2, 1.0]
    out = dep.score(pa.RecordBatch.from_pydict({"state": states, "balance": balances}))
    seen = [s if s in STATES else None for s in states]  # pandas' own code for unseen: missing
    frame = pd.DataFrame({"state": pd.Categorical(seen, categories=["WA", "NSW", "QLD", "VIC"]),
                          "balance": balances})
    want = booster.predict(frame)
    np.testing.assert_allclose(out.column("score").to_numpy(), want, rtol=1e-12)
    assert want[0] != pytest.approx(want[1])  # the category really matters
    one = [dep.score_request({"inputs": {"state": s, "balance": v}})["score"]
           for s, v in zip(states, balances)]
    np.testing.assert_allclose(one, want, rtol=1e-12)


def test_the_store_opens_on_first_lookup(models, tmp_path):
    """A deployment built straight from a manifest (as bulk jobs do) opens its entity store only
    when a row needs it: inline rows score even where the store is out of reach."""
    folder, booster = models["binary"]
    dep = Deployment(decode_manifest(manifest(BANDS, store="no/such/store.parquet")), folder,
                     version=1)
    rows = random_rows(np.random.default_rng(12), 4)
    out = dep.score(batch_of(rows), now=TODAY)
    assert out.column("error").null_count == 4
    with pytest.raises(ScorelineError):
        dep.score_request({"customer-id": 5}, now=TODAY)


class _Margin(Stage):
    """An added stage: the distance of each score to 0.5, as an extra output column."""

    fields = (pa.field("margin", pa.float64()),)

    def run(self, state):
        state.extras["margin"] = [abs(float(s) - 0.5) for s in state.score]


def test_an_added_stage_and_its_field_reach_every_encoding(models):
    dep = deploy(models, "binary", BANDS)
    dep.add_stage(_Margin())
    assert dep.fields[-1] == "margin" and dep.output_schema.names[-2:] == ["margin", "error"]
    rows = random_rows(np.random.default_rng(11), 3)
    rows[1]["balance"] = -5000.0  # below the minimum: a bad row, no score, no margin
    result = dep.run(batch_of(rows), now=TODAY)
    out = result.to_batch()
    scores = out.column("score").to_pylist()
    assert out.column("margin").to_pylist()[0] == pytest.approx(abs(scores[0] - 0.5))
    assert result.answer(2)["margin"] == pytest.approx(abs(scores[2] - 0.5))
    assert result.error(1).kind == "input" and result.error(1).path == "$.inputs.balance"
    assert result.error_columns()[1] == [None, "$.inputs.balance", None]
    one = dep.score_request({"inputs": rows[0]}, now=TODAY)
    assert one["margin"] == pytest.approx(abs(one["score"] - 0.5))
    assert list(one)[-1] == "margin"
    # a row with an error has no outputs, extras included
    assert out.column("margin")[1].as_py() is None and result.answer(1)["margin"] is None
