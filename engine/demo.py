"""The demo: generated customers in a Parquet entity store and three registered, validated models.

`build_demo(root)` writes `<root>/store/customers.parquet` (customer-id, date-of-birth, state,
postcode, account-balance) and `<root>/registry` with
- `customer-segmentation` v1: LightGBM multiclass on age (from date of birth), state and
  log balance; decision: segment -> product SKU; score: the top segment's probability;
- `customer-segmentation` v2: the same plus postcode (the client call does not change);
- `credit-risk` v1: LightGBM binary; decision bands accept / refer / decline in
  `application-decision`.
Both segmentation versions end up registered and `production` points at v2 (v1 stays one
`scoreline registry rollback` away). Needs lightgbm (the `test` extra) to train the models.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scoreline.errors import SchemaError
from scoreline.kernels.transforms import age_years, clip, log1p

__all__ = ["build_demo", "STATES", "SEGMENTS"]

# Australian states and territories, with roughly their share of the population.
STATES = ("NSW", "VIC", "QLD", "WA", "SA", "TAS", "ACT", "NT")
_STATE_SHARE = np.array([0.315, 0.26, 0.205, 0.107, 0.07, 0.021, 0.017, 0.01])
# Each state's main postcode range (ACT and NT use their own blocks).
_POSTCODES = {"NSW": (2000, 2999), "VIC": (3000, 3999), "QLD": (4000, 4999), "WA": (6000, 6797),
              "SA": (5000, 5799), "TAS": (7000, 7470), "ACT": (2600, 2620), "NT": (800, 886)}
SEGMENTS = {  # segment -> the product SKU it is offered
    "young-starter": "SKU-STARTER-SAVER",
    "family-builder": "SKU-FAMILY-OFFSET",
    "established-saver": "SKU-TERM-DEPOSIT",
    "affluent": "SKU-PRIVATE-WEALTH",
    "retiree": "SKU-PENSION-ACCOUNT",
}
FIRST_CUSTOMER_ID = 5_000_000
_MARKER = ".scoreline-demo"
_STORE_PATH = "../store/customers.parquet"  # relative to the registry root


def build_demo(root, *, customers: int = 1_000_000, seed: int = 7, train_rows: int = 100_000,
               today: dt.date | None = None, log=print) -> dict:
    """Build the demo under `root` (replacing an earlier demo there) and return a summary:
    {"registry", "store", "customers", "models": {model id: [versions]}, "example-key", "seconds"}.
    """
    import lightgbm  # noqa: F401  (fail early, before writing anything)

    from scoreline.engine.pipeline.deployment import validate_version
    from scoreline.registry.repository import Repository

    started = time.perf_counter()
    root = Path(root)
    _prepare(root)
    today = today or dt.datetime.now(dt.timezone.utc).date()
    rng = np.random.default_rng(seed)

    table = _customers(rng, customers, today)
    store = root / "store" / "customers.parquet"
    store.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, store, row_group_size=256 * 1024)
    log(f"entity store: {customers:,} customers -> {store} ({time.perf_counter() - started:.1f}s)")

    sample = rng.choice(customers, size=min(train_rows, customers), replace=False)
    cols = _features(table.take(pa.array(sample)), today)
    repo = Repository(root / "registry")
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        y_segment = _segments(rng, cols)
        for version, features in ((1, ("age", "state_code", "log_balance")),
                                  (2, ("age", "state_code", "log_balance", "postcode"))):
            path = tmp / f"segmentation-v{version}.txt"
            _train(cols, features, y_segment, {"objective": "multiclass",
                                               "num_class": len(SEGMENTS)}, path)
            v = repo.add("customer-segmentation", _segmentation_manifest(features), path,
                         message=f"demo: segments from {', '.join(features)}",
                         validate=validate_version)
            repo.promote("customer-segmentation", v, "production",
                         f"demo: v{v} goes live")
            models.setdefault("customer-segmentation", []).append(v)
        path = tmp / "credit-risk.txt"
        features = ("age", "log_balance", *(f"state_{s}" for s in STATES))
        _train(cols, features, _defaults(rng, cols), {"objective": "binary"}, path)
        v = repo.add("credit-risk", _credit_manifest(), path, message="demo: credit risk",
                     validate=validate_version)
        repo.promote("credit-risk", v, "production", "demo: credit risk goes live")
        models["credit-risk"] = [v]
    (root / _MARKER).write_text(json.dumps({"customers": customers, "seed": seed}))
    example = FIRST_CUSTOMER_ID + min(973_628, customers - 1)
    seconds = time.perf_counter() - started
    log(f"registry: {root / 'registry'} ({seconds:.1f}s in all)")
    return {"registry": str(root / "registry"), "store": str(store), "customers": customers,
            "models": models, "example-key": example, "seconds": seconds}


def _prepare(root: Path) -> None:
    """Refuse to overwrite a folder the demo did not make; clear an earlier demo."""
    if root.exists() and any(root.iterdir()):
        if not (root / _MARKER).exists():
            raise SchemaError(f"{str(root)!r} is not empty and holds no earlier demo; choose an "
                              "empty or new folder", path="--root")
        for name in ("registry", "store", _MARKER):
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    root.mkdir(parents=True, exist_ok=True)


# --- data -------------------------------------------------------------------------------------


def _customers(rng: np.random.Generator, n: int, today: dt.date) -> pa.Table:
    today_day = (today - dt.date(1970, 1, 1)).days
    age_days = rng.integers(18 * 365, 90 * 365, n)
    state = rng.choice(len(STATES), size=n, p=_STATE_SHARE / _STATE_SHARE.sum())
    lo = np.array([_POSTCODES[s][0] for s in STATES])[state]
    hi = np.array([_POSTCODES[s][1] for s in STATES])[state]
    postcode = (lo + (rng.random(n) * (hi - lo + 1))).astype(np.int32)
    # Balances grow with age; a few accounts are overdrawn.
    years = age_days / 365.25
    balance = np.round(rng.lognormal(6.5 + 0.045 * years, 1.2, n) - rng.exponential(200, n), 2)
    return pa.table({
        "customer-id": pa.array(FIRST_CUSTOMER_ID + np.arange(n, dtype=np.int64)),
        "date-of-birth": pa.array((today_day - age_days).astype(np.int32), pa.date32()),
        "state": pa.DictionaryArray.from_arrays(pa.array(state.astype(np.int32)),
                                                pa.array(STATES)),
        "postcode": pa.array(postcode),
        "account-balance": pa.array(balance),
    })


def _features(table: pa.Table, today: dt.date) -> dict[str, np.ndarray]:
    """The model features as the manifests' transforms compute them (the same kernels)."""
    days = table.column("date-of-birth").cast(pa.int32()).to_numpy().astype(np.float64)
    age = np.empty(len(days))
    age_years(days, (today - dt.date(1970, 1, 1)).days, age)
    state = np.asarray(table.column("state").combine_chunks().indices, dtype=np.float64)
    balance = table.column("account-balance").to_numpy()
    floor = np.empty(len(balance))
    clip(balance, 0.0, np.inf, floor)
    log_balance = np.empty(len(balance))
    log1p(floor, log_balance)  # the kernel, not np.log1p: numpy's SIMD log1p can differ by an ulp
    out = {"age": age, "state_code": state, "log_balance": log_balance,
           "postcode": table.column("postcode").to_numpy().astype(np.float64)}
    for i, s in enumerate(STATES):
        out[f"state_{s}"] = (state == i).astype(np.float64)
    return out


def _segments(rng: np.random.Generator, c: dict) -> np.ndarray:
    age, bal, state = c["age"], c["log_balance"], c["state_code"]
    metro = (c["postcode"] % 1000) < 200  # inner-city postcodes: v2 learns this
    logits = np.column_stack([
        -0.15 * (age - 25) + 0.2 * (state == 1),
        -np.abs(age - 38) / 6 + 0.3 * (state == 2),
        -np.abs(age - 55) / 8 + 0.1 * (bal - 9),
        1.2 * (bal - 10.5) + 1.5 * metro,
        0.2 * (age - 66),
    ])
    logits += rng.gumbel(size=logits.shape) * 0.7
    return np.argmax(logits, axis=1)


def _defaults(rng: np.random.Generator, c: dict) -> np.ndarray:
    z = -2.2 - 0.035 * (c["age"] - 40) - 0.45 * (c["log_balance"] - 8) + 0.4 * (c["state_code"] == 7)
    return (rng.random(len(z)) < 1 / (1 + np.exp(-z))).astype(np.int32)


def _train(cols: dict, features, y: np.ndarray, params: dict, path: Path) -> None:
    import lightgbm as lgb

    X = np.column_stack([cols[f] for f in features])
    data = lgb.Dataset(X, y, feature_name=list(features), free_raw_data=True)
    params = {**params, "num_leaves": 31, "learning_rate": 0.1, "min_data_in_leaf": 50,
              "num_threads": 1, "verbose": -1, "seed": 7, "deterministic": True}
    booster = lgb.train(params, data, num_boost_round=60)
    booster.save_model(str(path))


# --- manifests --------------------------------------------------------------------------------


def _entity() -> dict:
    return {"key": "customer-id", "key-type": "int",
            "store": {"kind": "parquet", "path": _STORE_PATH, "key-column": "customer-id"}}


def _customer_inputs(postcode: bool) -> list[dict]:
    inputs = [
        {"name": "date-of-birth", "type": "date", "earliest": "1900-01-01", "latest": "today"},
        {"name": "state", "type": "string", "allowed": list(STATES)},
        {"name": "account-balance", "type": "float"},
    ]
    if postcode:
        inputs.append({"name": "postcode", "type": "int", "minimum": 200, "maximum": 9999})
    return inputs


_BALANCE = [
    {"kind": "clip", "input": "account-balance", "output": "balance-floor", "lower": 0},
    {"kind": "log1p", "input": "balance-floor", "output": "log-balance"},
]


def _segmentation_manifest(features) -> bytes:
    postcode = "postcode" in features
    mapping = {"age": "age", "state_code": "state-code", "log_balance": "log-balance"}
    if postcode:
        mapping["postcode"] = "postcode"
    manifest = {
        "model-id": "customer-segmentation",
        "description": "Customer segment and the product to offer"
                       + (" (v2: also postcode)" if postcode else ""),
        "inputs": _customer_inputs(postcode),
        "entity": _entity(),
        "transforms": [
            {"kind": "age-years", "input": "date-of-birth", "output": "age"},
            {"kind": "vocabulary", "input": "state", "output": "state-code",
             "vocabulary": list(STATES)},
            *_BALANCE,
        ],
        "model": {"format": "lightgbm", "artifact": "model.txt", "features": mapping},
        "decision": {"kind": "segment", "labels": list(SEGMENTS), "payload": SEGMENTS,
                     "payload-field": "product-sku"},
        "output": {"score": "score", "decision": "segment"},
    }
    return json.dumps(manifest).encode()


def _credit_manifest() -> bytes:
    manifest = {
        "model-id": "credit-risk",
        "description": "Probability of default and the application decision",
        "inputs": _customer_inputs(False),
        "entity": _entity(),
        "transforms": [
            {"kind": "age-years", "input": "date-of-birth", "output": "age"},
            {"kind": "one-hot", "input": "state", "output": "state", "categories": list(STATES)},
            *_BALANCE,
        ],
        "model": {"format": "lightgbm", "artifact": "model.txt",
                  "features": {"log_balance": "log-balance",
                               **{f"state_{s}": f"state={s}" for s in STATES}}},
        "decision": {"kind": "bands", "bands": [{"label": "decline", "min": 0.25},
                                                {"label": "refer", "min": 0.12}],
                     "default": "accept"},
        "output": {"score": "score", "decision": "application-decision"},
        # Reason codes for adverse-action notices: the inputs that raised the risk most.
        "explain": {"rank": "up", "reasons": {
            "account-balance": {"up": {"code": "R07", "text": "account balance too low"},
                                "down": {"code": "P07", "text": "account balance"}},
            "date-of-birth": {"up": {"code": "R03", "text": "age of applicant"},
                              "down": {"code": "P03", "text": "age of applicant"}},
            "state": {"up": {"code": "R11", "text": "state of residence"},
                      "down": {"code": "P11", "text": "state of residence"}},
        }},
    }
    return json.dumps(manifest).encode()
