"""The demo: generated customers in a Parquet entity store and three registered, validated models.

`build_demo(root)` writes `<root>/store/customers.parquet` (customer-id, date-of-birth, state,
postcode, account-balance) and `<root>/registry` with
- `customer-segmentation` v1: LightGBM multiclass on age (from date of birth), state and
  log balance; decision: segment -> product SKU; score: the top segment's probability;
- `customer-segmentation` v2: the same plus postcode (the client call does not change);
- `credit-risk` v1: LightGBM binary; decision bands accept / refer / decline in
  `application-decision`.
- `credit-risk-remote` v1: the same credit-risk model called over the Open Inference Protocol v2
  at the demo server's own endpoint (http://127.0.0.1:8000): a remote model next to the local
  ones; while it cannot be reached its declared fallback answers "refer" with no score.
Both segmentation versions end up registered and `production` points at v2 (v1 stays one
`scoreline registry rollback` away, and scores every request in v2's shadow: the experiment
`v1-shadow`). Each version keeps a reference profile of its inputs and score for drift.
With `store="redis"` the customers are also written to Redis
(one hash per customer under `scoreline-demo:customer:`) and the manifests read them from there,
through a small cache. Needs lightgbm (the `test` extra) to train the models.
"""

from __future__ import annotations

import contextlib
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

__all__ = ["build_demo", "STATES", "SEGMENTS", "REDIS_URL", "REDIS_PREFIX", "REMOTE_URL"]

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
REDIS_URL = "redis://127.0.0.1:6379/0"
REMOTE_URL = "http://127.0.0.1:8000"   # `scoreline serve`'s default address
REDIS_PREFIX = "scoreline-demo:customer:"


def build_demo(root, *, customers: int = 1_000_000, seed: int = 7, train_rows: int = 100_000,
               today: dt.date | None = None, log=print, store: str = "parquet",
               redis_url: str = REDIS_URL, redis_prefix: str = REDIS_PREFIX,
               remote_url: str = REMOTE_URL) -> dict:
    """Build the demo under `root` (replacing an earlier demo there) and return a summary:
    {"registry", "store", "customers", "models": {model id: [versions]}, "example-key", "seconds"}.

    store: "parquet" (the file, in memory) or "redis" (also loaded into Redis at `redis_url`,
        one hash per customer at `<redis_prefix><customer-id>`).
    remote_url: where `credit-risk-remote` calls credit-risk (the demo server's own address).
    """
    if store not in ("parquet", "redis"):
        raise SchemaError(f"store must be 'parquet' or 'redis', got {store!r}", path="--store")
    import lightgbm  # noqa: F401  (fail early, before writing anything)

    from scoreline.engine.monitor import profiling_validator
    from scoreline.registry.experiments import set_experiment
    from scoreline.registry.repository import Repository

    # the registration check, and each version's reference profile for drift (5,000 customers)
    validate_version = profiling_validator()

    started = time.perf_counter()
    root = Path(root)
    _prepare(root)
    today = today or dt.datetime.now(dt.timezone.utc).date()
    rng = np.random.default_rng(seed)

    table = _customers(rng, customers, today)
    path = root / "store" / "customers.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=256 * 1024)
    log(f"entity store: {customers:,} customers -> {path} ({time.perf_counter() - started:.1f}s)")
    entity = _entity()
    if store == "redis":
        entity = _load_redis(table, redis_url, redis_prefix, log)

    sample = rng.choice(customers, size=min(train_rows, customers), replace=False)
    cols = _features(table.take(pa.array(sample)), today)
    repo = Repository(root / "registry")
    models: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        y_segment = _segments(rng, cols)
        features: tuple[str, ...]
        for version, features in ((1, ("age", "state_code", "log_balance")),
                                  (2, ("age", "state_code", "log_balance", "postcode"))):
            path = tmp / f"segmentation-v{version}.txt"
            _train(cols, features, y_segment, {"objective": "multiclass",
                                               "num_class": len(SEGMENTS)}, path)
            v = repo.add("customer-segmentation", _segmentation_manifest(features, entity), path,
                         message=f"demo: segments from {', '.join(features)}",
                         validate=validate_version)
            repo.promote("customer-segmentation", v, "production",
                         f"demo: v{v} goes live")
            models.setdefault("customer-segmentation", []).append(v)
        path = tmp / "credit-risk.txt"
        features = ("age", "log_balance", *(f"state_{s}" for s in STATES))
        _train(cols, features, _defaults(rng, cols), {"objective": "binary"}, path)
        v = repo.add("credit-risk", _credit_manifest(entity), path, message="demo: credit risk",
                     validate=validate_version)
        repo.promote("credit-risk", v, "production", "demo: credit risk goes live")
        models["credit-risk"] = [v]
        # v1 keeps scoring every segmentation request in the shadow of v2 (logged, never answered):
        # `scoreline log compare customer-segmentation` shows how often they agree
        set_experiment(repo, "customer-segmentation",
                       {"name": "v1-shadow", "shadows": [1]},
                       "demo: v1 scores in the shadow of v2")
        models["credit-risk-remote"] = [_add_remote(repo, entity, remote_url)]
    (root / _MARKER).write_text(json.dumps({"customers": customers, "seed": seed}))
    example = FIRST_CUSTOMER_ID + min(973_628, customers - 1)
    seconds = time.perf_counter() - started
    log(f"registry: {root / 'registry'} ({seconds:.1f}s in all)")
    return {"registry": str(root / "registry"), "store": str(path), "customers": customers,
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
    inputs: list[dict] = [
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


def _segmentation_manifest(features, entity: dict) -> bytes:
    postcode = "postcode" in features
    mapping = {"age": "age", "state_code": "state-code", "log_balance": "log-balance"}
    if postcode:
        mapping["postcode"] = "postcode"
    manifest = {
        "model-id": "customer-segmentation",
        "description": "Customer segment and the product to offer"
                       + (" (v2: also postcode)" if postcode else ""),
        "inputs": _customer_inputs(postcode),
        "entity": entity,
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


def _credit_manifest(entity: dict) -> bytes:
    manifest = {
        "model-id": "credit-risk",
        "description": "Probability of default and the application decision",
        "inputs": _customer_inputs(False),
        "entity": entity,
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


# --- Redis and the remote model (issue 14) -------------------------------------------------


def _load_redis(table: pa.Table, url: str, prefix: str, log) -> dict:
    """Write the customers to Redis; the entity section that reads them (through a cache)."""
    import msgspec

    from scoreline.engine.data.redis_store import write_entities
    from scoreline.registry.manifest import RedisStore

    started = time.perf_counter()
    redis = {"kind": "redis", "url": url, "key-prefix": prefix, "key-column": "customer-id",
             "columns": {"date-of-birth": "date", "state": "string", "postcode": "int",
                         "account-balance": "float"}}
    written = write_entities(msgspec.convert(redis, RedisStore), table)
    log(f"redis: {written:,} customers -> {url} {prefix}* ({time.perf_counter() - started:.1f}s)")
    return {"key": "customer-id", "key-type": "int",
            "store": {"kind": "cached", "size": 100_000, "ttl": 5, "store": redis}}


def _remote_manifest(entity: dict, url: str) -> dict:
    return {
        "model-id": "credit-risk-remote",
        "description": "credit-risk called over the Open Inference Protocol v2 (a remote model); "
                       "while the remote cannot answer, the decision is 'refer' with no score",
        "inputs": _customer_inputs(False),
        "entity": entity,
        "model": {"format": "remote", "remote": {
            "url": url, "name": "credit-risk", "version": "1", "output": "score",
            "inputs": [{"name": "date-of-birth", "datatype": "BYTES", "date": True},
                       {"name": "state", "datatype": "BYTES", "categories": list(STATES)},
                       {"name": "account-balance", "datatype": "FP64"}],
            "timeout": 0.5, "retry": {"attempts": 2}, "breaker": {"failures": 5, "reset": 2.0},
            "fallback": {"kind": "decision", "decision": "refer"}}},
        "decision": {"kind": "bands", "bands": [{"label": "decline", "min": 0.25},
                                                {"label": "refer", "min": 0.12}],
                     "default": "accept"},
        "output": {"score": "score", "decision": "application-decision"},
    }


def _add_remote(repo, entity: dict, url: str) -> int:
    """Register credit-risk-remote, checked for real against a temporary server of this registry
    (the demo's own server, which it will call, is not running yet)."""
    import msgspec

    from scoreline.engine.pipeline.deployment import validate_version
    from scoreline.registry.manifest import decode_manifest

    manifest = json.dumps(_remote_manifest(entity, url)).encode()
    with _temporary_server(repo.root) as temporary:
        def validate(version_dir, m):
            remote = msgspec.structs.replace(m.model.remote, url=temporary)
            validate_version(version_dir, msgspec.structs.replace(
                m, model=msgspec.structs.replace(m.model, remote=remote)))

        v = repo.add("credit-risk-remote", decode_manifest(manifest), None,
                     message=f"demo: credit-risk over v2 REST at {url} (checked against this "
                             "registry's credit-risk on a temporary server)", validate=validate)
    repo.promote("credit-risk-remote", v, "production", "demo: the remote model goes live")
    return v


@contextlib.contextmanager
def _temporary_server(registry_root):
    """`scoreline serve` of this registry on a free loopback port, for the registration check."""
    from scoreline.engine.pipeline.router import Engine
    from scoreline.server.app import create_app
    from scoreline.server.background import serve_in_thread

    engine = Engine(registry_root, preload=True)
    try:
        with serve_in_thread(create_app(engine)) as url:
            yield url
    finally:
        engine.close()
