"""Shadows scored from their variant's own pipeline call: the call's fill (lookup and checked
inputs) is shared, and its feature matrix too where the two feature plans agree; the shadow runs
only its own transforms (when the plans differ), predict and decide, on a pool thread off the
answer's path. A shadow whose inputs or entity store differ from the variant's runs its full
pipeline from the call's rows instead.

`Tap` is handed to `Deployment.run`/`run_one` (called once the fill is done); `Piece` is what a
shadow needs of the finished call; `ShadowPool` runs the shadows' jobs in coalesced batches.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import numpy as np

from scoreline.engine.pipeline.result import Result
from scoreline.engine.pipeline.stages import State, Transform

__all__ = ["Tap", "Piece", "ShadowPool", "sharing", "score_shadow"]

FEATURES = "features"  # sharing mode: the plans agree, the variant's feature matrix is used


class Tap:
    """Keeps the State of one pipeline call and the per-row errors of its fill."""

    __slots__ = ("state", "errors")

    def __init__(self) -> None:
        self.state: Any = None  # the call's State, once its fill ran
        self.errors: dict | None = None

    def __call__(self, state) -> None:
        self.state = state
        self.errors = dict(state.errors) if state.errors else {}


class Piece:
    """What a shadow scores of one finished call: the variant (deployment) that ran it, its rows
    (`source`, for a shadow that cannot share), keys, request ids, scoring day, and (when the
    fill ran) the filled work matrix, the feature matrix and the fill's row errors."""

    __slots__ = ("variant", "source", "keys", "ids", "today", "work", "X", "errors", "n")

    keys: Any
    today: Any
    work: Any
    X: Any
    errors: Any

    def __init__(self, variant, source, ids, tap: Tap | None) -> None:
        self.variant = variant
        self.source = source
        self.ids = ids
        self.n = len(ids)
        state = None if tap is None else tap.state
        if tap is None or state is None or state.X is None:  # the fill raised (one row): no state to share
            self.keys = self.today = self.work = self.X = self.errors = None
            return
        self.keys, self.today, self.work, self.X = state.keys, state.today, state.work, state.X
        self.errors = tap.errors

    @staticmethod
    def concat(pieces: list[Piece]) -> Piece:
        """Several calls' pieces (RowBatch sources, the same variant and day) as one."""
        if len(pieces) == 1:
            return pieces[0]
        from scoreline.engine.data.request import RowBatch

        first = pieces[0]
        out = Piece(first.variant, RowBatch.concat([p.source for p in pieces]),
                    [i for p in pieces for i in p.ids], None)
        if any(p.work is None for p in pieces):
            return out  # scored by the shadow's own run from the rows
        out.keys = [k for p in pieces for k in p.keys]
        out.today = first.today
        out.work = np.concatenate([p.work for p in pieces])
        out.X = np.concatenate([p.X for p in pieces])
        out.errors, at = {}, 0
        for p in pieces:
            for row, error in p.errors.items():
                out.errors[at + row] = error
            at += p.n
        return out


def _plans_agree(a, b) -> bool:
    return (a.width == b.width and a.num_features == b.num_features and a.inputs == b.inputs
            and np.array_equal(a.ops, b.ops)
            and np.array_equal(a.params, b.params, equal_nan=True))


def sharing(variant, shadow):
    """How `shadow` reuses `variant`'s calls: FEATURES (same lookup, same plan), (source
    columns, destination columns) of the work matrix (same lookup and inputs, other
    transforms), or None (its own full run)."""
    if variant.manifest.entity != shadow.manifest.entity:
        return None  # another store or key: the lookup is not the same
    if _plans_agree(variant.plan, shadow.plan):
        return FEATURES
    mine = {s.spec.name: s for s in variant.plan.inputs}
    src, dst = [], []
    for s in shadow.plan.inputs:
        c = mine.get(s.spec.name)
        if c is None or c.spec != s.spec:  # another input or other value rules
            return None
        if s.slot >= 0:
            if c.slot < 0:
                return None
            src.append(c.slot)
            dst.append(s.slot)
        codes = {code.keys: code.slot for code in c.codes}
        for code in s.codes:
            if code.keys not in codes:
                return None
            src.append(codes[code.keys])
            dst.append(code.slot)
    return np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64)


def score_shadow(shadow, piece: Piece, how) -> Result:
    """`shadow`'s Result for the piece's rows: after the shared fill (see `sharing`)."""
    if how is None or piece.work is None:
        return shadow.run(piece.source) if piece.today is None else \
            shadow.run(piece.source, now=np.datetime64(int(piece.today), "D"))
    n = piece.n
    state = State(n, piece.source, piece.today)
    state.keys = piece.keys
    state.errors = dict(piece.errors)
    if how == FEATURES:
        state.work, state.X = piece.work, piece.X
    else:
        src, dst = how
        state.work = shadow.plan.new_work(n)
        state.work[:, dst] = piece.work[:, src]
    for stage in shadow.stages[1:]:
        if how == FEATURES and isinstance(stage, Transform):
            continue
        stage.run(state)
    return Result(shadow.contract, n, state.keys, state.score, index=state.index,
                  payload=state.payload, errors=state.errors, extras=state.extras)


class ShadowPool:
    """Runs shadow scoring off the request path on one thread. Jobs wait at most `interval`
    seconds so that many requests' rows go in one call (`merge`: jobs with the same merge key
    have their last argument concatenated by its type's `concat`): one batch run per shadow
    instead of one run per request (measured: per-request shadow runs on their own thread made
    a lone request wait for the GIL, p50 0.7 -> 3 ms at concurrency 1). Past `max_rows` waiting
    rows a job is dropped and counted (a slow shadow must not pile up memory or delay answers)."""

    def __init__(self, *, interval: float = 0.02, max_rows: int = 65_536) -> None:
        self._queue: collections.deque = collections.deque()
        self._interval = interval
        self._max = max_rows
        self._waiting = 0  # rows queued (read without a lock: a bound, not a count to the row)
        self._wake = threading.Event()
        self._busy = False
        self._stop = False
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="scoreline-shadow", daemon=True)
        self._thread.start()

    def submit(self, job, *args, rows: int = 1, merge=None) -> bool:
        if self._waiting >= self._max:
            self.dropped += rows
            return False
        self._waiting += rows
        self._queue.append((job, args, rows, merge))
        if not self._wake.is_set():
            self._wake.set()
        return True

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait()
            if self._stop:
                break
            time.sleep(self._interval)  # let more requests' rows gather
            self._wake.clear()
            self._busy = True
            try:
                self._drain_once()
            finally:
                self._busy = False

    def _drain_once(self) -> None:
        queue = self._queue
        items = [queue.popleft() for _ in range(len(queue))]
        merged: dict = {}
        order: list = []  # (job, args, rows) alone, or a merged [job, args list, rows, head] entry
        for job, args, rows, merge in items:
            if merge is None:
                order.append((job, args, rows))
            elif merge in merged:
                merged[merge][1].append(args[-1])
                merged[merge][2] += rows
            else:
                entry = merged[merge] = [job, [args[-1]], rows, args[:-1]]
                order.append(entry)
        for item in order:
            if isinstance(item, list):
                job, parts, rows, head = item
                args = (*head, type(parts[0]).concat(parts))
            else:
                job, args, rows = item
            try:
                job(*args)
            except Exception:  # a failing shadow never reaches a request; it is counted here
                self.failed += 1
            self._waiting -= rows

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every submitted job has run (tests, flush, close)."""
        deadline = time.monotonic() + timeout
        while (self._queue or self._busy or self._wake.is_set()) and time.monotonic() < deadline:
            time.sleep(0.002)

    def close(self) -> None:
        self.drain()
        self._stop = True
        self._wake.set()
        self._thread.join(5)
