"""An experiment compiled for the router: which variant answers each row (the registry's split over
the entity key), and the shadows, scored from the answering variant's own pipeline call (its
lookup, and its features where the plans agree: engine/pipeline/shadows.py) on a small bounded
pool off the answer's path, whose failures are counted and logged, never raised.

A row without a key (inline inputs only) is answered by the champion: the split needs the key to
be sticky.
"""

from __future__ import annotations

import itertools
import os
import time

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoreline.errors import SchemaError, ScorelineError
from scoreline.registry import experiments as X
from scoreline.registry.experiments import Experiment, load_experiment, split, split_one

from scoreline.engine.data.request import RowBatch
from scoreline.engine.monitor import timed
from scoreline.engine.pipeline.shadows import Piece, ShadowPool, Tap, score_shadow, sharing

__all__ = ["Routing", "ShadowPool", "Experiments", "Combined"]


class Routing:
    """One model's experiment, ready to route: `routes` champion first, `shadows` versions."""

    __slots__ = ("experiment", "name", "routes", "shares", "shadows", "versions")

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.name = experiment.name
        self.routes = experiment.routes()
        self.shares = [r.share for r in self.routes]
        self.shadows = tuple(experiment.shadows)
        # every pinned version (a champion of None follows the default version)
        self.versions = {r.version for r in self.routes if r.version is not None} | set(self.shadows)

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


class Experiments:
    """The engine's experiments: the routing table (model id -> Routing, replaced whole after its
    versions compiled), routing of rows to variants, and the shadows' scoring and logging.

    `engine` gives `_get(model_id, version)` (compiled Deployment), `_log` (LogBuffer),
    `repository`, `monitor` and `_live` (the models)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.table: dict[str, Routing] = {}
        self.pool = ShadowPool()
        self._shares: dict = {}  # (id(variant), id(shadow)) -> (variant, shadow, sharing)
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

    # --- changes (compile first, then record, then swap the table) ---------------------------

    def set(self, model_id: str, experiment: dict, message: str) -> None:
        try:
            spec = msgspec.convert(experiment, Experiment)
        except msgspec.ValidationError as exc:
            raise SchemaError(f"invalid experiment: {exc}", path="$") from None
        repo = self.engine.repository
        for v in Routing(spec).versions:
            self.engine._get(model_id, repo.resolve(model_id, int(v)))
        X.set_experiment(repo, model_id, spec, message)
        self.apply(model_id)

    def canary(self, model_id: str, version, share, rollback: bool, message: str) -> None:
        repo = self.engine.repository
        if version is not None:
            self.engine._get(model_id, repo.resolve(model_id, int(version)))
        X.set_canary(repo, model_id, version, share, rollback=rollback, message=message)
        self.apply(model_id)

    def stop(self, model_id: str, message: str) -> None:
        X.stop_experiment(self.engine.repository, model_id, message)
        self.apply(model_id)

    # --- routing ------------------------------------------------------------------------------

    def champion(self, model_id: str, routing: Routing):
        """The champion's deployment: the pinned version, or the model's default version."""
        version = routing.routes[0].version
        if version is None:
            return self.engine.deployment(model_id, None)
        return self.engine._get(model_id, version)

    def rows(self, model_id: str, routing: Routing, rows: RowBatch):
        """Score request rows by their variants -> (the Result, or a `Combined` of several, in
        row order; the logging parts [(deployment, role, result, request ids)]). Each variant's
        call is shared with the shadows (queued for the pool with the same request ids)."""
        get = self.engine._get
        ids = rows.request_ids
        if routing.shadows:
            ids = [self._pair_id(r) for r in ids]
            rows = RowBatch(rows.keys, rows.inputs, ids)
        index = [routing.pick(k) for k in rows.keys]
        champion = self.champion(model_id, routing)
        if not any(index):
            result = self._run(model_id, routing, champion, rows, ids)
            return result, [(champion, "champion", result, ids)]
        parts, logged = [], []
        for r, route in enumerate(routing.routes):
            at = [i for i, v in enumerate(index) if v == r]
            if not at:
                continue
            dep = champion if r == 0 else get(model_id, route.version)
            sub = RowBatch([rows.keys[i] for i in at],
                           None if rows.inputs is None else
                           {name: [col[i] for i in at] for name, col in rows.inputs.items()},
                           [ids[i] for i in at])
            result = self._run(model_id, routing, dep, sub, sub.request_ids)
            parts.append((result, at))
            logged.append((dep, route.role, result, sub.request_ids))
        return Combined(rows.n, parts), logged

    def _run(self, model_id: str, routing: Routing, dep, source, ids):
        """`dep`'s Result for `source` (RowBatch or Arrow batch); with shadows, the call is
        tapped and handed to the pool (RowBatch pieces coalesce across requests)."""
        if not routing.shadows:
            return timed(dep).score_rows(source) if isinstance(source, RowBatch) \
                else timed(dep).run(source)
        tap = Tap()
        if isinstance(source, RowBatch):
            result = timed(dep).score_rows(source, tap=tap)
            merge = (model_id, id(routing), id(dep), tap.state and tap.state.today)
        else:
            result = timed(dep).run(source, tap=tap)
            merge = None
        if result.n:
            self.pool.submit(self._shadow, model_id, routing, Piece(dep, source, ids, tap),
                             rows=result.n, merge=merge)
        return result

    def batch(self, model_id: str, routing: Routing, batch, request_ids):
        """(champion deployment, Result or Combined in input order, role per row, request ids)."""
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else \
                pa.RecordBatch.from_pylist([], schema=batch.schema)
        if routing.shadows:
            request_ids = self._pair_ids(request_ids, batch.num_rows)
        champion = self.champion(model_id, routing)
        if champion.key_name not in batch.schema.names:
            return (champion, self._run(model_id, routing, champion, batch, request_ids),
                    "champion", request_ids)
        index = routing.pick_many(batch.column(champion.key_name))
        roles = np.array([r.role for r in routing.routes], dtype=object)[index]
        if not index.any():
            return (champion, self._run(model_id, routing, champion, batch, request_ids), roles,
                    request_ids)
        parts = []
        for r, route in enumerate(routing.routes):
            mask = index == r
            if mask.any():
                dep = champion if r == 0 else self.engine._get(model_id, route.version)
                at = np.flatnonzero(mask)
                ids = None if request_ids is None else _take(request_ids, at)
                parts.append((self._run(model_id, routing, dep, batch.filter(pa.array(mask)), ids),
                              at.tolist()))
        return champion, Combined(batch.num_rows, parts), roles, request_ids

    # --- shadows (on the pool's thread) -------------------------------------------------------

    def _shadow(self, model_id, routing, piece: Piece) -> None:
        """Score each shadow version on the piece's call and log its rows as `shadow`."""
        ids = piece.ids
        if piece.n <= 64 and isinstance(ids, (pa.Array, pa.ChunkedArray)):
            ids = ids.to_pylist()
        for version in routing.shadows:
            started = time.perf_counter()
            try:
                dep = self.engine._get(model_id, version)
                result = score_shadow(dep, piece, self._sharing(piece.variant, dep))
            except Exception:  # counted, never raised: the answers are already on their way
                self._failed(model_id, version, piece.n)
                continue
            self.engine._log_result(dep, result, ids, time.perf_counter() - started,
                                    routing.name, "shadow")

    def _sharing(self, variant, shadow):
        """`sharing(variant, shadow)`, worked out once per pair of compiled deployments."""
        key = (id(variant), id(shadow))
        found = self._shares.get(key)
        if found is None or found[0] is not variant or found[1] is not shadow:
            found = self._shares[key] = (variant, shadow, sharing(variant, shadow))
        return found[2]

    def _failed(self, model_id: str, version: int, rows: int) -> None:
        monitor = self.engine.monitor
        if monitor is not None:
            monitor.shadow_failed(model_id, version, rows)

    def _pair_id(self, request_id):
        """A request id that pairs a row with its shadows' rows in the log."""
        return request_id if request_id is not None else f"{self._prefix}{next(self._ids)}"

    def _pair_ids(self, request_ids, n: int):
        if request_ids is not None:
            return request_ids
        base = f"{self._prefix}{next(self._ids)}:"
        return pc.binary_join_element_wise(pa.scalar(base),
                                           pa.array(np.arange(n)).cast(pa.string()), "")


def _take(ids, at: np.ndarray):
    """Request ids of rows `at` (an Arrow array or a sequence)."""
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        return ids.take(pa.array(at))
    return [ids[i] for i in at.tolist()]


class Combined:
    """The Result of rows answered by several variants, in the rows' order: `parts` are
    (Result, the row positions it answers). Offers what the doors read of a Result."""

    def __init__(self, n: int, parts: list) -> None:
        self.n = n
        self.parts = parts
        self.where = [None] * n  # row -> (part, its row there)
        self.errors: dict = {}
        for p, (result, at) in enumerate(parts):
            for j, i in enumerate(at):
                self.where[i] = (p, j)
            for j, error in result.errors.items():
                self.errors[at[j]] = error

    def error(self, i: int):
        return self.errors.get(i)

    def answer(self, i: int) -> dict:
        p, j = self.where[i]
        return self.parts[p][0].answer(j)

    def one(self) -> dict:
        p, j = self.where[0]
        return self.parts[p][0].one()

    def to_batch(self) -> pa.RecordBatch:
        positions = np.concatenate([np.asarray(at, dtype=np.int64) for _, at in self.parts])
        table = pa.Table.from_batches([result.to_batch() for result, _ in self.parts])
        return table.take(np.argsort(positions, kind="stable")).combine_chunks().to_batches()[0]
