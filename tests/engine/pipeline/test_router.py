"""The Engine over the demo registry: resolution, the contract dict, errors as exceptions, decision
logging, models(), reload and promotion while other threads score (hot swap)."""

from __future__ import annotations

import json
import threading

import pyarrow as pa
import pytest

pytest.importorskip("lightgbm")

from scoreline.engine.demo import FIRST_CUSTOMER_ID  # noqa: E402
from scoreline.engine.pipeline.router import Engine  # noqa: E402
from scoreline.errors import InputError, NotFoundError, NotReadyError, SchemaError  # noqa: E402
from scoreline.registry.decision_log import DecisionLog  # noqa: E402
from scoreline.registry.repository import Repository  # noqa: E402

from tests.engine.pipeline.conftest import DEMO_CUSTOMERS as CUSTOMERS  # noqa: E402

KEY = FIRST_CUSTOMER_ID + 1234
INLINE = {"date-of-birth": "1966-12-08", "state": "VIC", "account-balance": 1200, "postcode": 3000}


@pytest.fixture(scope="module")
def engine(demo):
    with Engine(demo / "registry", preload=True) as e:
        yield e


def _signatures() -> dict:
    """Every compiled signature of every Numba kernel loaded so far."""
    import sys

    from numba.core.registry import CPUDispatcher

    found = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("scoreline.kernels"):
            for attr, value in vars(module).items():
                if isinstance(value, CPUDispatcher):
                    found[f"{name}.{attr}"] = len(value.signatures)
    return found


def test_no_request_compiles_after_warm_up(engine):
    """Warm-up at load covers every shape a request can take: one row, a few, a parallel-size
    batch, keys and inline inputs, every decision kind of the demo."""
    before = _signatures()
    assert before
    for model_id in ("customer-segmentation", "credit-risk"):
        engine.score(model_id, {"customer-id": KEY})
        engine.score(model_id, {"inputs": INLINE})
        keys = [FIRST_CUSTOMER_ID + i for i in range(CUSTOMERS)] * 2
        engine.score_batch(model_id, pa.RecordBatch.from_pydict({"customer-id": keys}))
        engine.score_batch(model_id, pa.RecordBatch.from_pydict({"customer-id": keys[:3]}))
        inline = {k: [v] * 5 for k, v in INLINE.items()}
        engine.score_batch(model_id, pa.RecordBatch.from_pydict(inline))
    assert _signatures() == before


def test_the_call_and_its_contract(engine):
    assert engine.ready
    out = engine.score("customer-segmentation", {"customer-id": KEY})
    assert list(out) == ["model-id", "model-version", "customer-id", "score", "segment",
                         "product-sku"]
    assert out["model-id"] == "customer-segmentation" and out["model-version"] == 2
    assert out["customer-id"] == KEY and 0 < out["score"] <= 1
    # v1 needs no postcode; the same call works against it, by number or by alias
    v1 = engine.score("customer-segmentation", {"customer-id": KEY}, version=1)
    assert v1["model-version"] == 1 and v1["segment"] is not None
    credit = engine.score("credit-risk", {"customer-id": KEY})
    assert credit["application-decision"] in ("accept", "refer", "decline")
    inline = engine.score("credit-risk", {"inputs": INLINE})
    assert inline["customer-id"] is None and 0 < inline["score"] < 1


def test_batch_equals_single_calls(engine):
    keys = [FIRST_CUSTOMER_ID + i for i in range(0, CUSTOMERS, 97)]
    out = engine.score_batch("credit-risk", pa.RecordBatch.from_pydict({"customer-id": keys}))
    singles = [engine.score("credit-risk", {"customer-id": k}) for k in keys]
    assert out.column("score").to_pylist() == [s["score"] for s in singles]
    assert out.column("application-decision").to_pylist() == [
        s["application-decision"] for s in singles]


def test_errors_are_raised_with_their_kind_and_path(engine):
    with pytest.raises(NotFoundError) as err:
        engine.score("credit-risk", {"customer-id": 42})
    assert err.value.path == "$.customer-id" and "not found" in err.value.message
    with pytest.raises(InputError) as err:
        engine.score("credit-risk", {"inputs": {**INLINE, "date-of-birth": "yesterday"}})
    assert err.value.message == (
        "expected a date (YYYY-MM-DD) at `$.inputs.date-of-birth`, got 'yesterday'")
    with pytest.raises(InputError, match=r"\$.inputs.state"):
        engine.score("credit-risk", {"inputs": {**INLINE, "state": "XX"}})
    with pytest.raises(NotFoundError, match="unknown model"):
        engine.score("no-such-model", {"customer-id": KEY})
    with pytest.raises(NotFoundError, match="no version"):
        engine.score("credit-risk", {"customer-id": KEY}, version=9)
    with pytest.raises(NotFoundError, match="staging"):
        engine.score("credit-risk", {"customer-id": KEY}, version="staging")
    with pytest.raises(SchemaError):
        engine.score("credit-risk", {})


@pytest.mark.parametrize("model_id, version, kind", [
    ("1WC_", 4984, SchemaError),             # found by a fuzzer: was NotReadyError (503)
    ("1WC_", "4984", SchemaError),
    ("../registry", 1, SchemaError),
    ("no-such-model", 4984, NotFoundError),
    ("credit-risk", 4984, NotFoundError),
    ("credit-risk", -1, NotFoundError),
    ("credit-risk", True, SchemaError),
])
def test_a_bad_model_or_version_is_refused_before_any_compilation(registry, model_id, version,
                                                                  kind):
    """Client input never reaches the table of versions that failed to load: the same request
    is refused the same way every time, never as 'failed to load' (503), and nothing is listed."""
    with Engine(registry) as e:
        for _ in range(3):
            with pytest.raises(kind) as err:
                e.deployment(model_id, version)
            assert not isinstance(err.value, NotReadyError)
        assert all(v["state"] == "not-loaded" for m in e.models() for v in m["versions"])


def test_models_lists_versions_states_and_contract(engine):
    models = {m["model-id"]: m for m in engine.models()}
    seg = models["customer-segmentation"]
    assert seg["aliases"] == {"production": 2}
    assert {v["version"]: v["aliases"] for v in seg["versions"]} == {1: [], 2: ["production"]}
    assert seg["contract"]["decision"] == "segment"
    assert models["credit-risk"]["contract"]["decision"] == "application-decision"
    assert all(v["state"] in ("ready", "not-loaded") for v in seg["versions"])


def test_every_decision_is_logged(registry, tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    with Engine(registry, log=url) as e:
        e.score("credit-risk", {"customer-id": KEY, "request-id": "r-1"})
        with pytest.raises(NotFoundError):
            e.score("credit-risk", {"customer-id": 42, "request-id": "r-2"})
        e.score_batch("credit-risk", pa.RecordBatch.from_pydict({"customer-id": [KEY, 7]}),
                      request_ids=["b-1", "b-2"])
    with DecisionLog(url) as log:
        rows = {r["request_id"]: r for r in log.tail(10).to_pylist()}
    assert set(rows) == {"r-1", "r-2", "b-1", "b-2"}
    assert rows["r-1"]["entity_key"] == str(KEY) and rows["r-1"]["decision"] in (
        "accept", "refer", "decline")
    assert rows["r-1"]["model_version"] == 1 and rows["r-1"]["latency_us"] > 0
    assert rows["r-2"]["score"] is None and "not found" in rows["r-2"]["error"]
    assert rows["b-1"]["score"] == rows["r-1"]["score"]
    assert "not found" in rows["b-2"]["error"]


def test_lazy_compilation_and_ready(registry):
    with Engine(registry) as e:
        assert not e.ready
        e.deployment("customer-segmentation")
        e.deployment("credit-risk")
        assert not e.ready
        e.deployment("credit-risk-remote")     # the demo's remote model (its remote may be down)
        assert e.ready


def test_reload_picks_up_new_versions_and_keeps_a_broken_one_out(registry):
    repo = Repository(registry)
    with Engine(registry, preload=True) as e:
        v2 = repo.version_dir("customer-segmentation", 2)
        v3 = repo.add("customer-segmentation", v2 / "manifest.json", v2 / "model.txt",
                      message="same model again")
        repo.promote("customer-segmentation", v3, "production")
        assert e.score("customer-segmentation", {"customer-id": KEY})["model-version"] == 2
        e.reload()
        assert e.score("customer-segmentation", {"customer-id": KEY})["model-version"] == v3
        # A version that cannot load (registered without validation) never replaces the live one.
        broken = json.loads((v2 / "manifest.json").read_text())
        broken["model"]["features"]["age"] = "postcode"
        broken["model"]["features"]["postcode"] = "no-such-column"
        bad = tmp = registry.parent / "broken.json"
        tmp.write_text(json.dumps(broken))
        with pytest.raises(SchemaError):
            repo.add("customer-segmentation", bad, v2 / "model.txt")  # the schema refuses it
        broken["model"]["features"]["postcode"] = "postcode"
        broken["model"]["artifact"] = "model.txt"
        broken["transforms"].append({"kind": "standardize", "input": "postcode",
                                     "output": "z", "mean": 0, "std": 0})
        tmp.write_text(json.dumps(broken))
        v4 = repo.add("customer-segmentation", bad, v2 / "model.txt")
        repo.promote("customer-segmentation", v4, "production")
        e.reload()
        assert e.score("customer-segmentation", {"customer-id": KEY})["model-version"] == v3
        listing = {m["model-id"]: m for m in e.models()}
        states = {v["version"]: v for v in listing["customer-segmentation"]["versions"]}
        assert states[v4]["state"] == "failed" and "std" in states[v4]["error"]
        with pytest.raises(NotReadyError, match="failed to load"):
            e.score("customer-segmentation", {"customer-id": KEY}, version=v4)


def test_promote_while_threads_score(registry):
    """Hot swap: promotions back and forth while four threads score; no request fails."""
    with Engine(registry, preload=True) as e:
        e.deployment("customer-segmentation", 1)
        stop = threading.Event()
        seen: set[int] = set()
        failures: list[BaseException] = []

        def client(offset: int) -> None:
            i = 0
            while not stop.is_set():
                try:
                    # CUSTOMERS - 1: the batch below also scores key + 1, which must exist.
                    key = FIRST_CUSTOMER_ID + (offset * 131 + i) % (CUSTOMERS - 1)
                    if i % 2:
                        out = e.score("customer-segmentation", {"customer-id": key})
                        seen.add(out["model-version"])
                    else:
                        batch = pa.RecordBatch.from_pydict({"customer-id": [key, key + 1]})
                        out = e.score_batch("customer-segmentation", batch)
                        assert out.column("error").null_count == 2
                        seen.update(out.column("model-version").to_pylist())
                except BaseException as exc:  # noqa: BLE001 (any failure fails the test)
                    failures.append(exc)
                    return
                i += 1

        threads = [threading.Thread(target=client, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        try:
            for round_ in range(20):
                e.promote("customer-segmentation", 1 if round_ % 2 == 0 else 2)
                threading.Event().wait(0.01)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not failures, failures[0]
        assert seen == {1, 2}
        assert Repository(registry).aliases("customer-segmentation")["production"] == 2
