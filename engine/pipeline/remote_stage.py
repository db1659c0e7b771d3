"""A remote model in the pipeline: its predict stage, its decide stage, and its registration check.

`RemotePredict` calls the remote once per batch (engine/models/remote.py) and says per row who
answered in the `fallback` field: null when the remote did, else what answered instead and why
("version 1: ..." or "decision 'refer': ..."). A row neither the remote nor a fallback version
scored is a per-row error of kind "remote" (the declared "error" fallback), never a made-up
score. `RemoteDecide` gives decision-fallback rows the declared decision with no score. The
decision log records the `fallback` text in its `error` column for those rows.

The caller's deadline travels through `call_deadline` (a context variable the scoring thread
sets): a remote call never outlives the wait of the request it serves.
"""

from __future__ import annotations

import contextlib
import contextvars
import time

import numpy as np
import pyarrow as pa

from scoreline.errors import RegistrationError, SchemaError
from scoreline.registry import manifest as M

from scoreline.engine.data.samples import sample_inputs
from scoreline.engine.pipeline.stages import Decide, Predict, Stage, State

__all__ = ["RemotePredict", "RemoteDecide", "remote_stages", "check_remote", "call_deadline",
           "first_fallback", "FALLBACK_FIELD"]

FALLBACK_FIELD = "fallback"
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("scoreline_deadline",
                                                                         default=None)


@contextlib.contextmanager
def call_deadline(seconds: float | None):
    """Remote calls made inside this block end within `seconds` from now (None or infinite: no
    limit but the remote's own timeout; zero or less: they fail at once)."""
    limit = None if seconds is None or seconds == float("inf") else time.monotonic() + seconds
    token = _deadline.set(limit)
    try:
        yield
    finally:
        _deadline.reset(token)


class RemotePredict(Stage):
    """The remote model's predict stage (see the module docstring)."""

    fields = (pa.field(FALLBACK_FIELD, pa.string()),)

    def __init__(self, model) -> None:
        self.model = model
        fb = model.spec.fallback
        self._what = (f"version {fb.version}" if isinstance(fb, M.VersionFallback)
                      else f"decision {fb.decision!r}" if isinstance(fb, M.DecisionFallback) else None)

    def run(self, state: State) -> None:
        outcome = self.model.predict_rows(state.X, deadline=_deadline.get())
        state.raw = outcome.values
        note: list[str | None] = [None] * state.n
        for i, error in outcome.errors.items():
            if outcome.source[i] == "error":
                state.errors.setdefault(i, error)
            else:
                note[i] = f"{self._what}: {error.message}"
        state.extras[FALLBACK_FIELD] = note
        state.extras["_source"] = outcome.source

    def run_one(self, state: State) -> None:
        self.run(state)
        if state.errors:
            raise state.errors[0]


class RemoteDecide(Decide):
    """Decide, and give decision-fallback rows the declared decision and no score."""

    def __init__(self, decider, fallback) -> None:
        super().__init__(decider)
        self.fixed: int | None = None
        if isinstance(fallback, M.DecisionFallback):
            if decider.kind == "top-k" or fallback.decision not in decider.label_list:
                raise SchemaError(f"the fallback decision {fallback.decision!r} is not one of the "
                                  f"decision's labels ({', '.join(decider.label_list)})",
                                  path="$.model.remote.fallback.decision")
            self.fixed = decider.label_list.index(fallback.decision)

    def _fixed_rows(self, state: State) -> np.ndarray:
        source = state.extras.pop("_source", None)
        if self.fixed is None or source is None:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(source == "fallback-decision")

    def run(self, state: State) -> None:
        rows = self._fixed_rows(state)
        super().run(state)
        if not len(rows):
            return
        d = self.decider
        for i in rows.tolist():
            state.errors.pop(i, None)        # the non-finite score of a row with no score
            state.index[i] = self.fixed
            if state.payload is not None:
                state.payload[i] = d.payload_index_list[self.fixed]
        state.score = np.asarray(state.score, dtype=np.float64)
        state.score[rows] = np.nan

    def run_one(self, state: State) -> None:
        if len(self._fixed_rows(state)):
            d = self.decider
            state.score = [None]
            state.labels = [d.label_list[self.fixed]]
            if d.payload_labels is not None:
                state.payloads = [d.payload_list[d.payload_index_list[self.fixed]]]
            return
        super().run_one(state)


def remote_stages(stages: list[Stage], model, decider) -> list[Stage]:
    """`stages` with Predict and Decide replaced by their remote versions."""
    out = []
    for stage in stages:
        if type(stage) is Predict:
            stage = RemotePredict(model)
        elif type(stage) is Decide:
            stage = RemoteDecide(decider, model.spec.fallback)
        out.append(stage)
    return out


def first_fallback(result) -> int | None:
    """The first row of `result` a remote's fallback answered, or None (for any model)."""
    notes = result.extras.get(FALLBACK_FIELD)
    return next((i for i, note in enumerate(notes) if note is not None), None) if notes else None


def check_remote(deployment, rows: int = 8) -> None:
    """The registration check of a remote version: its endpoint's metadata fits the manifest and
    a generated sample is scored by the remote itself (no fallback). Raises RegistrationError."""
    model = deployment.model
    model.check_endpoint()
    model.breaker.record(True)
    batch = pa.RecordBatch.from_pydict(sample_inputs(deployment.manifest, rows))
    result = deployment.run(batch)
    bad = min(result.errors) if result.errors else first_fallback(result)
    if bad is not None:
        why = result.errors[bad].message if bad in result.errors else \
            result.extras[FALLBACK_FIELD][bad]
        raise RegistrationError(f"the remote did not score a generated sample row: {why}",
                                path="$.model.remote")
