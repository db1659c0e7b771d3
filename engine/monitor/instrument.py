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

from .profile import load_profile
from .stages import StageHistograms, clock
from .tracker import Tracker

__all__ = ["Monitor", "instrument"]


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


class Monitor:
    """The engine's watched deployments: a Tracker per (model, version) and stage histograms."""

    def __init__(self) -> None:
        self.trackers: dict[tuple[str, int], Tracker] = {}
        self.stages = StageHistograms()
        self.shadow_errors: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def watch(self, deployment) -> Tracker | None:
        """Instrument a freshly compiled deployment: its stored profile (or one drawn from its
        store, when it was registered without) becomes its Tracker's reference."""
        tracker = None
        try:
            profile = load_profile(deployment.version_dir)
            if profile is None:
                from .reference import reference_profile

                profile = reference_profile(deployment)
            tracker = Tracker(profile)
        except Exception:  # no profile and no store to draw one from: timed, not tracked
            tracker = None
        instrument(deployment, tracker)
        if tracker is not None:
            deployment.on_errors = lambda errors: self.refuse(
                deployment.model_id, deployment.version, errors.values(), reached_model=True)
            with self._lock:
                self.trackers[(deployment.model_id, deployment.version)] = tracker
        return tracker

    def refuse(self, model_id: str, version: int, errors, *, reached_model: bool) -> None:
        """Count rows refused for an input's value (errors tagged with a `reason` by the input
        checks, whose path is `$.inputs.<name>`). `reached_model`: the batch path, where a
        refused value went on into the work matrix blanked, so the tracker counted it as
        missing; it is moved to its reason here."""
        tracker = self.trackers.get((model_id, version))
        if tracker is None:
            return
        for error in errors:
            reason = getattr(error, "reason", None)
            path = error.path or ""
            if reason is None or not path.startswith("$.inputs."):
                continue
            tracker.refused(path[len("$.inputs."):], reason, reached_model)

    def shadow_failed(self, model_id: str, version: int) -> None:
        with self._lock:
            key = (model_id, version)
            self.shadow_errors[key] = self.shadow_errors.get(key, 0) + 1
