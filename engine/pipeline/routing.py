"""An experiment compiled for the router: which variant answers each row (the registry's split over
the entity key), and the shadows, scored off the answer's path on a small bounded pool whose
failures are counted and logged, never raised.

A row without a key (inline inputs only) is answered by the champion: the split needs the key to
be sticky.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoreline.errors import ScorelineError
from scoreline.registry.experiments import Experiment, load_experiment, split, split_one

__all__ = ["Routing", "ShadowPool", "Experiments"]


class Routing:
    """One model's experiment, ready to route: `routes` champion first, `shadows` versions."""

    __slots__ = ("experiment", "name", "routes", "shares", "shadows", "versions")

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.name = experiment.name
        self.routes = experiment.routes()
        self.shares = [r.share for r in self.routes]
        self.shadows = tuple(experiment.shadows)
        self.versions = {r.version for r in self.routes} | set(self.shadows)

    def pick(self, key) -> int:
        """The route index answering `key` (None: the champion)."""
        if key is None or len(self.routes) == 1:
            return 0
        return split_one(key, self.name, self.shares)

    def pick_many(self, keys) -> np.ndarray:
        """Route index per key (numpy or Arrow; null keys go to the champion)."""
        if len(self.routes) == 1:
            return np.zeros(len(keys), dtype=np.int64)
        index = split(keys, self.name, self.shares)
        if isinstance(keys, (pa.Array, pa.ChunkedArray)) and keys.null_count:
            index[keys.is_null().to_numpy(zero_copy_only=False)] = 0
        return index

    def describe(self) -> dict:
        return {"name": self.name,
                "routes": [{"version": r.version, "role": r.role, "share": r.share}
                           for r in self.routes],
                "shadows": list(self.shadows)}


class ShadowPool:
    """Runs shadow scoring off the request path: at most `max_pending` jobs wait; beyond that a job
    is dropped and counted (a slow shadow must not pile up memory or delay answers)."""

    def __init__(self, threads: int = 1, max_pending: int = 256) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="scoreline-shadow")
        self._max = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self.dropped = 0
        self.failed = 0

    def submit(self, job, *args) -> bool:
        with self._lock:
            if self._pending >= self._max:
                self.dropped += 1
                return False
            self._pending += 1
        self._pool.submit(self._run, job, args)
        return True

    def _run(self, job, args) -> None:
        try:
            job(*args)
        except Exception:  # a failing shadow never reaches a request; it is counted here
            with self._lock:
                self.failed += 1
        finally:
            with self._lock:
                self._pending -= 1

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every submitted job has run (tests, flush, close)."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.001)

    def close(self) -> None:
        self.drain()
        self._pool.shutdown(wait=True)


class Experiments:
    """The engine's experiments: the routing table (model id -> Routing, replaced whole after its
    versions compiled), routing of rows to variants, and the shadows' scoring and logging.

    `engine` gives `_get(model_id, version)` (compiled Deployment), `_log` (LogBuffer),
    `repository`, `monitor` and `_live` (the models)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.table: dict[str, Routing] = {}
        self.pool = ShadowPool()
        self._ids = itertools.count(1)
        self._prefix = f"x{os.getpid():x}-{time.time_ns() & 0xFFFFFFFF:x}-"

    def load(self, *, compile_now: bool) -> None:
        """Every model's experiment from the registry; with `compile_now`, one whose versions do
        not all compile keeps the routing it had (the failure shows in `models()`)."""
        previous, table = self.table, {}
        for model_id in self.engine._live:
            try:
                found = load_experiment(self.engine.repository, model_id)
            except ScorelineError:
                found = None
            if found is None:
                continue
            candidate = Routing(found)
            if compile_now:
                try:
                    for v in candidate.versions:
                        self.engine._get(model_id, v)
                except ScorelineError:
                    if model_id in previous:
                        table[model_id] = previous[model_id]
                    continue
            table[model_id] = candidate
        self.table = table

    def apply(self, model_id: str) -> None:
        """Route `model_id` by what the registry holds now (its versions already compiled)."""
        found = load_experiment(self.engine.repository, model_id)
        table = dict(self.table)
        if found is None:
            table.pop(model_id, None)
        else:
            table[model_id] = Routing(found)
        self.table = table

    # --- routing ------------------------------------------------------------------------------

    def one(self, model_id: str, routing: Routing, request: dict):
        """(deployment, role, request id) for a one-row request; its shadows are queued."""
        get = self.engine._get
        champion = get(model_id, routing.routes[0].version)
        route = routing.routes[routing.pick(request.get(champion.key_name))]
        dep = champion if route.version == champion.version else get(model_id, route.version)
        rid = request.get("request-id")
        if routing.shadows:
            rid = self._pair_id(rid)
            self.pool.submit(self._shadow_rows, model_id, routing, [rid],
                             [request.get(champion.key_name)], lambda d: [_catch(d.score_request, request)])
        return dep, route.role, rid

    def keys(self, model_id: str, routing: Routing, keys: list, request_ids):
        """Per key the answer or error (as `Deployment.score_keys`), and the logging groups
        [(deployment, role, keys, request ids, results)]."""
        if routing.shadows:
            request_ids = [self._pair_id(r) for r in (request_ids or [None] * len(keys))]
            self.pool.submit(self._shadow_rows, model_id, routing, request_ids, keys,
                             lambda d: d.score_keys(keys))
        index = routing.pick_many(np.asarray(keys, dtype=np.int64))
        results: list = [None] * len(keys)
        groups = []
        for r, route in enumerate(routing.routes):
            rows = np.flatnonzero(index == r).tolist()
            if not rows:
                continue
            dep = self.engine._get(model_id, route.version)
            part = [keys[i] for i in rows]
            answers = dep.score_keys(part)
            for i, out in zip(rows, answers):
                results[i] = out
            ids = None if request_ids is None else [request_ids[i] for i in rows]
            groups.append((dep, route.role, part, ids, answers))
        return results, groups

    def batch(self, model_id: str, routing: Routing, batch, request_ids):
        """(champion deployment, output batch in input order, role per row, request ids)."""
        if routing.shadows:
            request_ids = self._pair_ids(request_ids, batch.num_rows)
            self.pool.submit(self._shadow_batch, model_id, routing, batch, request_ids)
        champion = self.engine._get(model_id, routing.routes[0].version)
        if champion.key_name not in batch.schema.names:
            return champion, champion.score(batch), "champion", request_ids
        index = routing.pick_many(batch.column(champion.key_name))
        roles = np.array([r.role for r in routing.routes], dtype=object)[index]
        if not index.any():
            return champion, champion.score(batch), roles, request_ids
        parts, positions = [], []
        for r, route in enumerate(routing.routes):
            mask = index == r
            if mask.any():
                dep = champion if r == 0 else self.engine._get(model_id, route.version)
                parts.append(dep.score(batch.filter(pa.array(mask))))
                positions.append(np.flatnonzero(mask))
        order = np.argsort(np.concatenate(positions), kind="stable")
        out = pa.Table.from_batches(parts).take(order).combine_chunks().to_batches()[0]
        return champion, out, roles, request_ids

    # --- shadows (on the pool's thread) -------------------------------------------------------

    def _shadow_rows(self, model_id, routing, request_ids, keys, run) -> None:
        """Score each shadow version with `run(dep)` (per-row answers or errors) and log them."""
        log = self.engine._log.row
        for version in routing.shadows:
            started = time.perf_counter()
            try:
                dep = self.engine._get(model_id, version)
                results = run(dep)
            except Exception:  # counted, never raised: the answers are already on their way
                self._failed(model_id, version)
                continue
            seconds = time.perf_counter() - started
            for rid, key, out in zip(request_ids, keys, results):
                if isinstance(out, Exception):
                    log(rid, dep, key, None, None, seconds, _text(out), routing.name, "shadow")
                else:
                    log(rid, dep, out[dep.key_name], out[dep.score_name], out[dep.decision_name],
                        seconds, None, routing.name, "shadow")

    def _shadow_batch(self, model_id, routing, batch, request_ids) -> None:
        for version in routing.shadows:
            started = time.perf_counter()
            try:
                dep = self.engine._get(model_id, version)
                out = dep.score(batch)
            except Exception:
                self._failed(model_id, version)
                continue
            self.engine._log.batch(dep, out, request_ids, time.perf_counter() - started,
                                   routing.name, "shadow")

    def _failed(self, model_id: str, version: int) -> None:
        monitor = self.engine.monitor
        if monitor is not None:
            monitor.shadow_failed(model_id, version)

    def _pair_id(self, request_id):
        """A request id that pairs a row with its shadows' rows in the log."""
        return request_id if request_id is not None else f"{self._prefix}{next(self._ids)}"

    def _pair_ids(self, request_ids, n: int):
        if request_ids is not None:
            return request_ids
        base = f"{self._prefix}{next(self._ids)}:"
        return pc.binary_join_element_wise(pa.scalar(base),
                                           pa.array(np.arange(n)).cast(pa.string()), "")


def _catch(score, request):
    try:
        return score(request)
    except ScorelineError as exc:  # the shadow's own answer: logged as its row's error
        return exc


def _text(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ScorelineError) else f"{type(exc).__name__}: {exc}"
