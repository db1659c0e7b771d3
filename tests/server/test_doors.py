"""The same inline request gets the same answer on every door: a table of edge values sent through
/v1/score on an idle server, /v1/score while requests coalesce into micro-batches, /v1/score/batch,
v2 infer, the engine's Arrow run (`Deployment.run`) and its one-row Python call
(`Deployment.score_request`). Each answer is reduced to ("ok", score) or ("error", HTTP status,
path relative to the row) and every door must agree, case by case."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pyarrow as pa
import pytest

from scoreline.errors import ScorelineError
from scoreline.server.app import create_app
from scoreline.server.errors import status_for
from scoreline.server.settings import ServerSettings

from tests.support.server import MODEL_ID, build_registry, live_server, make_engine

BASE = {"date-of-birth": "1970-01-01", "state": "VIC", "account-balance": 1200.0}
TOMORROW = (dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=1)).isoformat()
# (input, value): the base row with that one input replaced (None: sent as null)
CASES = [
    (None, None),  # the base row itself
    ("date-of-birth", "19661208"),
    ("date-of-birth", "1966-W49-4"),
    ("date-of-birth", "1966-12-8"),
    ("date-of-birth", "1966-342"),
    ("date-of-birth", "2020-02-30"),
    ("date-of-birth", "1966-12-08T00:00:00"),
    ("date-of-birth", TOMORROW),
    ("date-of-birth", "1899-12-31"),
    ("date-of-birth", "1966-12-08"),
    ("date-of-birth", 19661208),
    ("date-of-birth", ""),
    ("date-of-birth", None),
    ("state", "XX"),
    ("state", "vic"),
    ("state", 5),
    ("state", None),
    ("state", True),
    ("account-balance", -5.0),
    ("account-balance", 0),
    ("account-balance", 1200),
    ("account-balance", "1200"),
    ("account-balance", "NaN"),
    ("account-balance", "Infinity"),
    ("account-balance", True),
    ("account-balance", None),
    ("account-balance", 2**70),
    ("account-balance", 1e308),
    ("account-balance", [1]),
]


def _inputs(case) -> dict:
    name, value = case
    inputs = dict(BASE)
    if name is not None:
        inputs[name] = value
    return inputs


def _http(response: httpx.Response, path_prefix: str = "$") -> tuple:
    body = response.json()
    if response.status_code == 200:
        return ("ok", body["score"])
    return ("error", response.status_code, _relative(body.get("path"), path_prefix))


def _relative(path, prefix: str):
    if path is not None and path.startswith(prefix):
        return "$" + path[len(prefix):]
    return path


def _engine_outcome(error: ScorelineError | None, score) -> tuple:
    if error is None:
        return ("ok", score)
    return ("error", status_for(error), error.path)


class Recording:
    """The real engine, recording the size of every `score_rows` call."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.sizes: list[int] = []

    def score_rows(self, model_id, rows, version=None):
        self.sizes.append(rows.n)
        return self.engine.score_rows(model_id, rows, version=version)

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.fixture(scope="module")
def doors(tmp_path_factory):
    registry = build_registry(tmp_path_factory.mktemp("doors") / "registry")
    engine = make_engine(registry["root"])
    recording = Recording(engine)
    # a long wait budget: requests sent together travel together
    batching = ServerSettings(max_batch=64, max_wait_us=300_000, max_in_flight=1)
    try:
        with live_server(create_app(engine)) as idle, \
                live_server(create_app(recording, settings=batching)) as busy:
            yield {"engine": engine, "idle": idle, "busy": busy, "recording": recording}
    finally:
        engine.close()


def _v1_idle(url: str) -> list:
    with httpx.Client(base_url=url, timeout=30) as client:
        return [_http(client.post("/v1/score", json={"model-id": MODEL_ID, "inputs": _inputs(c)}))
                for c in CASES]


def _v1_while_batching(url: str, recording: Recording) -> list:
    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*[
                client.post("/v1/score", json={"model-id": MODEL_ID, "inputs": _inputs(c)})
                for c in CASES])

    recording.sizes.clear()
    answers = asyncio.run(main())
    assert max(recording.sizes) > 1, recording.sizes  # they did coalesce
    return [_http(r) for r in answers]


def _v1_batch(url: str) -> list:
    with httpx.Client(base_url=url, timeout=30) as client:
        r = client.post("/v1/score/batch", json={
            "model-id": MODEL_ID, "rows": [{"inputs": _inputs(c)} for c in CASES]})
    assert r.status_code == 200, r.text
    out = []
    for i, row in enumerate(r.json()["results"]):
        error = row["error"]
        if error is None:
            out.append(("ok", row["score"]))
        else:
            status = 404 if error["error"] == "not-found" else 422
            out.append(("error", status, _relative(error["path"], f"$.rows[{i}]")))
    return out


def _tensor(name: str, value) -> dict | None:
    """A one-row v2 tensor carrying `value` as it is typed; None when v2 cannot carry it."""
    kind = type(value)
    if kind is str:
        datatype = "BYTES"
    elif kind is bool:
        datatype = "BOOL"
    elif kind is int:
        datatype = "INT64" if -(2**63) <= value < 2**63 else "FP64"
    elif kind is float:
        datatype = "FP64"
    else:
        return None
    return {"name": name, "shape": [1], "datatype": datatype, "data": [value]}


def _v2(url: str) -> list:
    out = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for case in CASES:
            tensors = []
            for name, value in _inputs(case).items():
                if value is None:
                    continue  # no tensor: the input is missing, as a null is
                tensor = _tensor(name, value)
                if tensor is None:
                    break
                tensors.append(tensor)
            else:
                r = client.post(f"/v2/models/{MODEL_ID}/infer", json={"inputs": tensors})
                if r.status_code == 200:
                    outputs = {o["name"]: o["data"][0] for o in r.json()["outputs"]}
                    out.append(("ok", outputs["score"]))
                else:
                    text = r.json()["error"]
                    # "<message> (at row 0: <path>)"
                    path = text.rsplit("(at row 0: ", 1)[1].rstrip(")") if "(at row 0: " in text else None
                    out.append(("error", r.status_code, path))
                continue
            out.append(None)  # not representable as a v2 tensor
    return out


def _arrow(dep) -> list:
    out = []
    for case in CASES:
        try:
            batch = pa.RecordBatch.from_pydict({k: pa.array([v]) for k, v in _inputs(case).items()})
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            out.append(None)  # not representable as an Arrow column
            continue
        result = dep.run(batch)
        out.append(_engine_outcome(result.error(0), float(result.score[0])))
    return out


def _python(dep) -> list:
    out = []
    for case in CASES:
        try:
            out.append(("ok", dep.score_request({"inputs": _inputs(case)})["score"]))
        except ScorelineError as exc:
            out.append(_engine_outcome(exc, None))
    return out


def test_every_door_gives_the_same_answer(doors):
    dep = doors["engine"].deployment(MODEL_ID)
    answers = {
        "v1 idle": _v1_idle(doors["idle"]),
        "v1 batching": _v1_while_batching(doors["busy"], doors["recording"]),
        "v1 batch": _v1_batch(doors["idle"]),
        "v2": _v2(doors["idle"]),
        "arrow": _arrow(dep),
        "python": _python(dep),
    }
    reference = answers["v1 idle"]
    for door, got in answers.items():
        for case, want, have in zip(CASES, reference, got):
            if have is None:
                continue  # the door cannot carry this value
            assert have == want, (door, case, have, want)
    # the table means something: valid rows score, and each refusal names its input
    outcomes = {repr(case): answer for case, answer in zip(CASES, reference)}
    assert outcomes[repr((None, None))][0] == "ok"
    assert outcomes[repr(("date-of-birth", "1966-12-08"))][0] == "ok"
    assert outcomes[repr(("account-balance", 2**70))][0] == "ok"
    for bad in ("19661208", "1966-W49-4", "1966-12-8", TOMORROW, "1899-12-31", 19661208):
        assert outcomes[repr(("date-of-birth", bad))] == ("error", 422, "$.inputs.date-of-birth"), bad
    assert outcomes[repr(("state", "XX"))] == ("error", 422, "$.inputs.state")
    assert outcomes[repr(("account-balance", "NaN"))] == ("error", 422, "$.inputs.account-balance")
    assert outcomes[repr(("account-balance", [1]))] == ("error", 422, "$.inputs.account-balance")
    # whatever is not representable somewhere is still answered by the others
    assert sum(a is None for a in answers["arrow"]) <= 3 and sum(a is None for a in answers["v2"]) <= 1
