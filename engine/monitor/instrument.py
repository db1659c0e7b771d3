"""Watch a Deployment without changing its code: its plan, model and decider are wrapped by thin
proxies that note the stage times on this thread's clock and hand the filled work matrix and the
scores to the deployment's Tracker. Every scoring path of the deployment (batch, one row, several
keys) runs `plan.run` on the filled work matrix, `model.predict_matrix` and the decider, so the
three wraps see them all.

`Monitor` is the engine's registry of watched deployments and their figures.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .profile import Profile, build_profile, load_profile, tracked_columns
from .stages import StageHistograms, clock
from .tracker import Tracker

__all__ = ["Monitor", "instrument", "reference_profile"]


class _Plan:
    __slots__ = ("_plan", "_tracker")

    def __init__(self, plan, tracker: Tracker | None) -> None:
        self._plan = plan
        self._tracker = tracker

    def __getattr__(self, name):
        return getattr(self._plan, name)

    def run(self, work: np.ndarray, today: int) -> np.ndarray:
        c = clock
        t0 = time.perf_counter()
        # lookup: from the call's start to here (resolving, the store, checking inputs)
        c.lookup = t0 - c.started if c.started else 0.0
        if self._tracker is not None:
            c.work = work  # the scores' half comes from the decider
            c.row = 0
        out = self._plan.run(work, today)
        c.transforms += time.perf_counter() - t0
        c.timed = True
        return out


class _Model:
    __slots__ = ("_model",)

    def __init__(self, model) -> None:
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def predict_matrix(self, X, *args, **kwargs):
        t0 = time.perf_counter()
        out = self._model.predict_matrix(X, *args, **kwargs)
        clock.model += time.perf_counter() - t0
        return out


class _Decider:
    __slots__ = ("_decider", "_tracker")

    def __init__(self, decider, tracker: Tracker | None) -> None:
        self._decider = decider
        self._tracker = tracker

    def __getattr__(self, name):
        return getattr(self._decider, name)

    def scores(self, raw):
        t0 = time.perf_counter()
        score = self._decider.scores(raw)
        clock.decision += time.perf_counter() - t0
        if self._tracker is not None:
            self._tracker.observe(clock.work, score)
        return score

    def decide(self, raw, score):
        t0 = time.perf_counter()
        out = self._decider.decide(raw, score)
        clock.decision += time.perf_counter() - t0
        return out

    def decide_one(self, raw):
        t0 = time.perf_counter()
        out = self._decider.decide_one(raw)
        c = clock
        c.decision += time.perf_counter() - t0
        if self._tracker is not None:
            # score_keys calls this once per row of its work matrix, in order
            work = c.work
            i = c.row if work.shape[0] > 1 else 0
            self._tracker.observe_one(work[i], out[0])
            c.row = i + 1
        return out


def instrument(deployment, tracker: Tracker | None) -> None:
    """Wrap `deployment`'s plan, model and decider (once) so its calls are timed and tracked."""
    if isinstance(deployment.plan, _Plan):
        return
    deployment.plan = _Plan(deployment.plan, tracker)
    deployment.model = _Model(deployment.model)
    deployment.decider = _Decider(deployment.decider, tracker)


def reference_profile(deployment, rows=None, *, sample: int = 5000, seed: int = 0) -> Profile:
    """The reference profile of `deployment` from `rows` (an Arrow table or batch of raw inputs,
    or of keys), or else from `sample` entities drawn from its entity store; scored through the
    deployment itself, so the profile holds exactly what serving will see."""
    import pyarrow as pa

    source = "sample"
    if rows is None:
        keys = _draw_keys(deployment, sample, seed)
        rows = pa.record_batch({deployment.key_name: keys})
        source = "store"
    tracked = tracked_columns(deployment.plan, deployment.manifest)
    captured = {}

    class _Capture(Tracker):
        def __init__(self) -> None:
            pass

        def observe(self, work, score):
            captured["values"] = work[:, [t[2] for t in tracked]].copy()
            captured["score"] = np.asarray(score, dtype=np.float64).copy()

    plan, decider = deployment.plan, deployment.decider
    try:
        deployment.plan, deployment.decider = _Plan(plan, _Capture()), _Decider(decider, _Capture())
        out = deployment.score(rows)
    finally:
        deployment.plan, deployment.decider = plan, decider
    score = captured["score"]
    errors = out.column("error").is_valid().to_numpy(zero_copy_only=False)
    score[errors] = np.nan  # a row that failed has no score to compare with
    return build_profile(deployment.model_id, deployment.version, tracked, captured["values"],
                         score, source)


def _draw_keys(deployment, n: int, seed: int):
    from scoreline.errors import SchemaError

    deployment._need_store()
    table = getattr(getattr(deployment.store, "_state", None), "table", None)
    if table is None:
        raise SchemaError(f"model {deployment.model_id!r}: its entity store cannot be sampled "
                          "here; give sample rows for the reference profile", path="sample")
    keys = table.column(deployment.store.key_column)
    rng = np.random.default_rng(seed)
    take = rng.choice(len(keys), size=min(n, len(keys)), replace=False) if len(keys) else []
    return keys.take(np.sort(np.asarray(take, dtype=np.int64)))


class Monitor:
    """The engine's watched deployments: a Tracker per (model, version) and stage histograms."""

    def __init__(self) -> None:
        self.trackers: dict[tuple[str, int], Tracker] = {}
        self.stages = StageHistograms()
        self.shadow_errors: dict[tuple[str, int], int] = {}
        self.shadow_dropped: dict[str, int] = {}
        self._lock = threading.Lock()

    def watch(self, deployment) -> Tracker | None:
        """Instrument a freshly compiled deployment: its stored profile (or one drawn from its
        store, when it was registered without) becomes its Tracker's reference."""
        tracker = None
        try:
            profile = load_profile(deployment.version_dir)
            if profile is None:
                profile = reference_profile(deployment)
            tracker = Tracker(profile)
        except Exception:  # no profile and no store to draw one from: timed, not tracked
            tracker = None
        instrument(deployment, tracker)
        if tracker is not None:
            with self._lock:
                self.trackers[(deployment.model_id, deployment.version)] = tracker
        return tracker

    def shadow_failed(self, model_id: str, version: int) -> None:
        with self._lock:
            key = (model_id, version)
            self.shadow_errors[key] = self.shadow_errors.get(key, 0) + 1
