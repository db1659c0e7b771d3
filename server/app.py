"""create_app(engine | load_engine, settings) -> the Starlette app: v1 JSON and Arrow, the v2 protocol,
models, health, metrics, OpenAPI and admin, with one error handler mapping Scoreline errors to statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Literal, cast

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from scoreline.errors import NotFoundError, NotReadyError, OverloadedError, SchemaError, ScorelineError, UnauthorizedError

from .asgi import JSON, Endpoint, decode_json, encode_json, read_body, send_bytes, send_error, send_json
from .auth import ApiKeyMiddleware, has_key
from .batcher import Admission
from .errors import error_body, error_headers, status_for
from .metrics import Metrics, MetricsMiddleware
from .openapi import openapi_document
from .protocol_v2 import v2_routes
from .scoring import Scorer
from .settings import ServerSettings
from .v1 import v1_routes

__all__ = ["create_app", "app_from_env", "ENV_CONFIG"]

log = logging.getLogger("scoreline.server")

# `scoreline serve --workers N` hands its options to each worker process through this variable.
ENV_CONFIG = "SCORELINE_SERVE_CONFIG"


class _Promote(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    model_id: str
    version: int
    alias: str = "production"


_decode_promote = msgspec.json.Decoder(_Promote).decode


class _ExperimentChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="kebab"):
    """POST /admin/experiment: `set` (with `experiment`), `canary` (version and share, or
    rollback), `stop`, or `show`; applied by the engine without a restart, recorded in the history."""

    model_id: str
    action: Literal["set", "canary", "stop", "show"]
    experiment: dict | None = None
    version: int | None = None
    share: float | None = None
    rollback: bool = False
    message: str = ""


_decode_experiment = msgspec.json.Decoder(_ExperimentChange).decode


def create_app(engine=None, *, load_engine: Callable[[], object] | None = None,
               settings: ServerSettings | None = None) -> Starlette:
    """The HTTP service in front of a `scoreline.Engine` (or anything following its contract).

    Give either `engine` (already built; the caller closes it) or `load_engine`, a callable that
    builds one: it runs in a thread at startup so `/healthz` answers while the registry compiles,
    and the app closes that engine (flushing the decision log) at shutdown.
    """
    if (engine is None) == (load_engine is None):
        raise ValueError("give exactly one of engine= and load_engine=")
    settings = settings or ServerSettings()
    metrics = Metrics()
    scorer = Scorer(settings, metrics)
    metrics.source(lambda: _engine_figures(scorer.engine))
    state = {"load_error": None}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        loading = None
        if engine is not None:
            scorer.engine = engine
        else:
            def build():
                try:
                    scorer.engine = load_engine()
                except BaseException as exc:  # shown by /readyz; the process keeps serving health
                    state["load_error"] = exc
                    log.exception("loading the registry failed")
            loading = loop.run_in_executor(None, build)
        try:
            yield
        finally:
            if loading is not None:
                await loading
                if scorer.engine is not None:
                    await loop.run_in_executor(None, scorer.engine.close)
            scorer.close()

    async def healthz(scope, receive, send) -> None:
        await send_json(send, 200, {"status": "ok"})

    async def readyz(scope, receive, send) -> None:
        current = scorer.engine
        if current is not None and current.ready:
            # Every live version was loaded; those that failed are named (they answer 503, the
            # others serve), so one broken version never holds the whole service back.
            failures: list = getattr(current, "failures", list)()
            await send_json(send, 200, {"ready": True, "failed": failures} if failures else {"ready": True})
            return
        reason = "compiling and warming the registry's deployments"
        if state["load_error"] is not None:
            reason = f"loading the registry failed: {state['load_error']}"
        await send_json(send, 503, {"ready": False, "reason": reason})

    async def metrics_text(scope, receive, send) -> None:
        await send_bytes(send, 200, metrics.render().encode(), b"text/plain; version=0.0.4; charset=utf-8")

    async def openapi(scope, receive, send) -> None:
        current = scorer.engine
        listing: list[dict] = await asyncio.get_running_loop().run_in_executor(None, current.models) if current is not None else []
        ids = [m.get("model-id") for m in listing]
        await send_json(send, 200, openapi_document(settings, model_ids=[i for i in ids if isinstance(i, str)]))

    async def models(scope, receive, send) -> None:
        current = scorer.require_engine()
        listing = await asyncio.get_running_loop().run_in_executor(None, current.models)
        await send_json(send, 200, {"models": listing})

    async def model(scope, receive, send) -> None:
        model_id = scope["path_params"]["model_id"]
        current = scorer.require_engine()
        listing = await asyncio.get_running_loop().run_in_executor(None, current.models)
        for item in listing:
            if item.get("model-id") == model_id:
                await send_json(send, 200, item)
                return
        raise NotFoundError(f"unknown model {model_id!r}", path="$.model-id")

    async def reload(scope, receive, send) -> None:
        current = scorer.require_engine()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, current.reload)  # compiles and warms before swapping
        await send_json(send, 200, {"models": await loop.run_in_executor(None, current.models)})

    async def promote(scope, receive, send) -> None:
        body = await read_body(scope, receive, settings.max_body_bytes)
        request = decode_json(body, _decode_promote, "the promote request")
        await scorer.entry(request.model_id, request.version)  # 404 for an unknown model or version
        current = scorer.require_engine()
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: current.promote(request.model_id, request.version, alias=request.alias))
        await send_json(send, 200, {"model-id": request.model_id, "alias": request.alias, "version": request.version})

    async def experiment(scope, receive, send) -> None:
        body = await read_body(scope, receive, settings.max_body_bytes)
        change = decode_json(body, _decode_experiment, "the experiment change")
        current = scorer.require_engine()
        await scorer.entry(change.model_id, None)  # 404 for an unknown model

        def apply():
            if change.action == "set":
                if change.experiment is None:
                    raise SchemaError("action 'set' needs `experiment`", path="$.experiment")
                return current.set_experiment(change.model_id, change.experiment, change.message)
            if change.action == "canary":
                return current.set_canary(change.model_id, change.version, change.share,
                                          rollback=change.rollback, message=change.message)
            if change.action == "stop":
                return current.stop_experiment(change.model_id, change.message)
            return current.experiment(change.model_id)

        # compiling a new variant takes seconds: off the event loop, then the routing swaps
        result = await asyncio.get_running_loop().run_in_executor(None, apply)
        await send_json(send, 200, {"model-id": change.model_id, "experiment": result})

    def route(path, handler, methods=("GET",)):
        return Route(path, Endpoint(handler), methods=list(methods))

    scoring, score_one = v1_routes(scorer)
    routes = [
        *scoring,  # first: the router tries routes in order
        *v2_routes(scorer),
        route("/healthz", healthz),
        route("/readyz", readyz),
        route("/metrics", metrics_text),
        route("/openapi.json", openapi),
        route("/v1/models", models),
        route("/v1/models/{model_id}", model),
        route("/admin/reload", reload, ("POST",)),
        route("/admin/promote", promote, ("POST",)),
        route("/admin/experiment", experiment, ("POST",)),
    ]

    def on_error(request: Request, exc: Exception) -> Response:
        v2 = request.url.path.startswith("/v2")
        if isinstance(exc, HTTPException):
            exc = _http_error(exc, request.url.path)
        metrics.errors.inc((getattr(exc, "kind", "internal"),))
        headers = error_headers(exc)
        if isinstance(exc, _MethodNotAllowed):
            headers["allow"] = exc.allow
        return Response(encode_json(error_body(exc, protocol_v2=v2)), status_code=status_for(exc),
                        headers=headers, media_type=JSON.decode())

    app = _App(
        routes=routes,
        middleware=[
            Middleware(MetricsMiddleware, metrics=metrics),
            Middleware(ApiKeyMiddleware, api_keys=settings.api_keys, admin_keys=settings.admin_keys),
        ],
        exception_handlers={ScorelineError: on_error, HTTPException: on_error, Exception: on_error},
        lifespan=lifespan,
    )
    # the hot call skips Starlette's middleware stack and does the middlewares' work itself
    app.fast_path = ScoreFastPath(route=scoring[0], compute=score_one, metrics=metrics, api_keys=settings.api_keys)
    app.durable = DurableAnswers(scorer, settings)
    app.admission = Admission(settings.max_active_requests, settings.max_waiting_requests,
                              settings.request_timeout_s / 2, settings.retry_after_s)
    app.metrics = metrics
    app.state.scorer = scorer
    app.state.metrics = metrics
    return app


def _engine_figures(engine):
    """The engine's own figures (data quality, drift, stage times, experiments), if it has any."""
    figures = getattr(engine, "figures", None)
    return figures() if figures is not None else ()


class _App(Starlette):
    """Starlette, with `POST /v1/score` handed to `fast_path` before the middleware stack (its
    error middleware included: the fast path answers every exception of its own)."""

    fast_path: ScoreFastPath
    durable: DurableAnswers
    admission: Admission
    metrics: Metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(_SCORING):
            try:
                await self.admission.__aenter__()  # before the body is read and decoded
            except OverloadedError as exc:
                self.metrics.errors.inc(("overloaded",))
                await send_error(send, exc, protocol_v2=scope["path"].startswith("/v2"))
                return
            try:
                if self.durable.applies(scope["path"]):
                    send = self.durable.wrap(send)
                await self._route(scope, receive, send)
            finally:
                await self.admission.__aexit__()
            return
        await self._route(scope, receive, send)

    async def _route(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/score" and scope["method"] == "POST":
            scope["app"] = self
            await self.fast_path(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


# POSTs to these paths score (and log) rows: admission control and durable answers apply
_SCORING = ("/v1/score", "/v1/models/", "/v2/models/")


class DurableAnswers:
    """Durable decisions: an answer to a scoring request is sent only once the decision log has
    committed every decision logged before it (so its own), when the server runs with
    `durable_log` or a version whose manifest sets `log.durable` has decisions in flight.

    Group commit: the answers that wait in one turn of the event loop share one commit barrier
    (one `engine.on_logged` call, one transaction for all their rows, one wake-up of the loop). An
    answer whose decision is not committed within `request_timeout_s` (the database is down) is
    replaced by 503: the client must not take a decision the log does not hold."""

    def __init__(self, scorer: Scorer, settings: ServerSettings) -> None:
        self.scorer = scorer
        self.always = settings.durable_log
        self.timeout = settings.request_timeout_s
        self._waiting: list[asyncio.Future] | None = None  # the open group, or None

    def applies(self, path: str) -> bool:
        return self.scorer.engine is not None

    def wrap(self, send):
        state = {"dropped": False}
        engine = self.scorer.engine

        async def durable_send(message) -> None:
            # decided when the answer is ready: its own decisions are logged by then
            if message["type"] == "http.response.start" and (
                    self.always or getattr(engine, "durable_pending", False)):
                try:
                    await asyncio.wait_for(self._committed(), self.timeout)
                except Exception as exc:  # noqa: BLE001 - not on record: refuse the answer instead
                    log.warning("decision log: an answer was held back, its decision is not committed (%s)",
                                type(exc).__name__)
                    state["dropped"] = True
                    error = NotReadyError("the decision could not be recorded in the decision log; retry")
                    await send_error(send, error)
                    return
            elif state["dropped"]:
                return
            await send(message)

        return durable_send

    def _committed(self) -> asyncio.Future:
        """A future set once everything logged so far is committed (shared by this loop turn)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._waiting is None:
            self._waiting = []
            loop.call_soon(self._barrier, loop)
        self._waiting.append(future)
        return future

    def _barrier(self, loop) -> None:
        # scheduled by the call that opened the group, so one is open
        group, self._waiting = cast("list[asyncio.Future]", self._waiting), None

        def release() -> None:
            for future in group:
                if not future.done():
                    future.set_result(None)

        try:
            registered = self.scorer.engine.on_logged(lambda: loop.call_soon_threadsafe(release))
        except Exception as exc:  # noqa: BLE001 - the log's queue is full: no durable answers now
            for future in group:
                if not future.done():
                    future.set_exception(NotReadyError(f"decision log: {type(exc).__name__}"))
            return
        if not registered:  # no decision log at all: nothing to wait for
            release()


class ScoreFastPath:
    """`POST /v1/score`, the hot call, straight to its handler (called by `_App` before anything
    else): it skips Starlette's router, error and exception middlewares and the metrics and
    API-key middlewares, whose work it does itself with the same answers and figures (the same
    error bodies come from `send_error`). Every other method on that path goes through the app."""

    def __init__(self, *, route: Route, compute, metrics: Metrics, api_keys: tuple[str, ...] = ()) -> None:
        self.route = route
        self.compute = compute
        self.metrics = metrics
        self.api_keys = tuple(k.encode() for k in api_keys)
        # label tuples built once, not per request
        self._ok = (route.path, "POST", "200")
        self._route = (route.path,)

    async def __call__(self, scope, receive, send) -> None:
        start = time.monotonic()
        metrics = self.metrics
        if self.api_keys and not has_key(scope, self.api_keys):
            # refused before routing, labelled as the API-key middleware's refusals are
            await send_error(send, UnauthorizedError("missing or wrong API key"))
            metrics.http_requests.inc(("unmatched", "POST", "401"))
            metrics.http_latency.observe(("unmatched",), time.monotonic() - start)
            return
        scope["route"] = self.route
        try:
            answer = await self.compute(scope, receive)
        except ClientDisconnect:  # nobody is left to answer
            metrics.http_requests.inc((self.route.path, "POST", "500"))
        except Exception as exc:
            metrics.errors.inc((getattr(exc, "kind", "internal"),))
            await send_error(send, exc)
            metrics.http_requests.inc((self.route.path, "POST", str(status_for(exc))))
        else:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", JSON), (b"content-length", str(len(answer)).encode())]})
            await send({"type": "http.response.body", "body": answer})
            metrics.http_requests.inc(self._ok)
        metrics.http_latency.observe(self._route, time.monotonic() - start)


class _MethodNotAllowed(ScorelineError):
    kind = "method"
    allow = ""  # the Allow header's methods


def _http_error(exc: HTTPException, path: str) -> ScorelineError:
    """Starlette's routing errors (404 no route, 405 wrong method) in the service's error format."""
    if exc.status_code == 405:
        error = _MethodNotAllowed(f"method not allowed on {path}")
        error.allow = (exc.headers or {}).get("Allow", "")
        return error
    if exc.status_code == 404:
        return NotFoundError(f"no endpoint at {path}", path="$")
    return ScorelineError(str(exc.detail))


def app_from_env() -> Starlette:
    """The app a `scoreline serve` worker runs: options from $SCORELINE_SERVE_CONFIG (JSON)."""
    config = msgspec.json.decode(os.environ[ENV_CONFIG])
    settings = msgspec.convert(config.get("settings", {}), ServerSettings)
    registry, log_url = config["registry"], config.get("log")
    interval = config.get("reload_interval")
    if config.get("switch_interval_us"):
        sys.setswitchinterval(config["switch_interval_us"] / 1e6)

    def load():
        import scoreline

        # preload: every live version compiled and warmed before the first request is taken;
        # reload_interval: workers pick up versions and alias moves made by any process.
        engine = scoreline.Engine(registry, log=log_url, preload=True, reload_interval=interval or None)
        _settle_gc()
        return engine

    return create_app(load_engine=load, settings=settings)


def _settle_gc() -> None:
    """After startup, keep the cyclic GC off the request path's tail latency (a worker process only).

    Compiling the registry leaves ~0.5M long-lived objects (Numba, Arrow, the registry), and a full
    collection scanning them paused the loop for 70-200 ms, measured: the p99 at every concurrency.
    `gc.freeze()` moves them out of the collector's sight; a higher first threshold makes the young
    collections, which each request's short-lived cycles (futures, tasks) trigger, rarer (in process
    at concurrency 64: ~20k instead of ~14k requests per second, no pause over 20 ms)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
