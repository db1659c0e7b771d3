"""Baseline ASGI apps for the HTTP section, served by uvicorn like Scoreline's own server.

- `constant_app`: POST / returns a constant JSON body: the floor of Starlette + uvicorn here.
- `lightgbm_app`: POST / {"features": [...]} -> {"score": Booster.predict(row, num_threads=1)},
  the model file named by $BENCH_MODEL_FILE: what a team would write by hand.
Both decode and encode with msgspec, as Scoreline's server does, so the comparison is of the
work behind the endpoint, not of JSON libraries.
"""

from __future__ import annotations

import contextlib
import os

import msgspec
import numpy as np
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["constant_app", "lightgbm_app"]

_CONSTANT = msgspec.json.encode({"model-id": "constant", "model-version": 1, "score": 0.5})


async def _constant(request):
    await request.body()
    return Response(_CONSTANT, media_type="application/json")


constant_app = Starlette(routes=[Route("/", _constant, methods=["POST"])])


class _Row(msgspec.Struct):
    features: list[float | None]


_decode = msgspec.json.Decoder(_Row).decode
_booster = None


async def _lightgbm(request):
    row = _decode(await request.body())
    X = np.array([[np.nan if v is None else v for v in row.features]], dtype=np.float64)
    score = float(_booster.predict(X, num_threads=1).reshape(-1)[0])
    return Response(msgspec.json.encode({"score": score}), media_type="application/json")


@contextlib.asynccontextmanager
async def _load_booster(app):
    global _booster
    import lightgbm as lgb

    _booster = lgb.Booster(model_file=os.environ["BENCH_MODEL_FILE"])
    yield


lightgbm_app = Starlette(routes=[Route("/", _lightgbm, methods=["POST"])], lifespan=_load_booster)
