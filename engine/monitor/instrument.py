"""Watch a Deployment's pipeline: each of its stages is wrapped to note its time on this thread's
clock (fill -> "lookup", transforms, predict -> "model", decide -> "decision"), and a last `Track`
stage hands the filled work matrix, the scores and the refusals (per-row errors tagged with a
reason by the input checks) to the deployment's Tracker. The n-row run and the one-row run
(`run_one`) of the pipeline both pass through them.

`Monitor` is the engine's registry of watched deployments and their figures.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from .profile import load_profile
from .stages import StageHistograms, clock
from .tracker import Tracker

if TYPE_CHECKING:  # only for annotations: the pipeline's package imports this module (see _slots)
    from scoreline.engine.pipeline.stages import Stage

__all__ = ["Monitor", "instrument", "timed", "Track"]


def _slots() -> dict:
    """Stage class -> its slot in the clock's times (engine/monitor/stages.py STAGES order);
    imported here, not at the top: the pipeline's package imports the router, which imports this."""
    from scoreline.engine.pipeline.fill import Fill
    from scoreline.engine.pipeline.stages import Decide, Predict, Transform

    return {Fill: 0, Transform: 1, Predict: 2, Decide: 3}


class Timed:
    """A stage (engine/pipeline/stages.py protocol) whose run time is added to this thread's clock."""

    def __init__(self, stage: Stage, slot: int) -> None:
        self.stage = stage
        self.slot = slot
        self.fields = stage.fields

    def run(self, state) -> None:
        t0 = time.perf_counter()
        try:
            self.stage.run(state)
        finally:
            clock.times[self.slot] += time.perf_counter() - t0

    def run_one(self, state) -> None:
        t0 = time.perf_counter()
        try:
            self.stage.run_one(state)
        finally:
            clock.times[self.slot] += time.perf_counter() - t0


_NAN = float("nan")


class Track:
    """The last stage: the rows' inputs (from the work matrix), scores and refusals to `tracker`."""

    fields = ()

    def __init__(self, tracker: Tracker, refuse) -> None:
        self.tracker = tracker
        self.refuse = refuse  # Monitor.refuse bound to the deployment
        self._rows = tracker.queued_rows  # the one-row queues, appended to here (no call)
        self._scores = tracker.queued_scores
        self._limit = tracker.buffer_rows

    def run(self, state) -> None:
        self.tracker.observe(state.work, state.score)
        if state.errors:
            # the n-row run blanks a refused value to NaN and carries on: the tracker counted it
            # as missing, and refuse() moves it to its reason
            self.refuse(state.errors.values(), reached_model=True)

    def run_one(self, state) -> None:
        # Tracker.observe_one inlined: this runs on every one-row call (a call less, ~0.1 us).
        rows = self._rows
        rows += state.work.tobytes()  # (~0.1 us; faster than its buffer through a memoryview)
        scores = self._scores
        score = state.score[0]
        scores.append(_NAN if score is None else score)  # None: a remote model's fallback row
        if len(scores) >= self._limit:
            self.tracker.flush()


class _TimedView:
    """The deployment seen with timed stages: its own `run`, `run_one` and `score_rows` are the
    Deployment's, run over `stages` (the timed twins); everything else is the deployment's."""

    def __init__(self, deployment, stages: list) -> None:
        self._deployment = deployment
        self.stages = stages

    def __getattr__(self, name):
        return getattr(self._deployment, name)

    def run(self, source, **kwargs):
        return type(self._deployment).run(self, source, **kwargs)

    def run_one(self, rows, **kwargs):
        return type(self._deployment).run_one(self, rows, **kwargs)

    def score_rows(self, rows, **kwargs):
        return type(self._deployment).score_rows(self, rows, **kwargs)


def timed(deployment):
    """The deployment to run this call on: its timed view when this thread's call is sampled
    (`clock.sampled`), else the deployment itself (no wrappers on an untimed call)."""
    return deployment.__dict__.get("timed", deployment) if clock.sampled else deployment


def instrument(deployment, tracker: Tracker | None, refuse=None) -> None:
    """End `deployment`'s pipeline with a `Track` stage when there is a tracker, and give it a
    `timed` view whose stages note their times (used through `timed()`); once."""
    if "timed" in deployment.__dict__:
        return
    if tracker is not None:
        deployment.add_stage(Track(tracker, refuse))
    slots = _slots()
    deployment.timed = _TimedView(deployment, [Timed(s, slots[type(s)]) if type(s) in slots
                                               else s for s in deployment.stages])


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
        try:
            tracker = self.tracker_for(deployment)
        except Exception:  # no profile and no store to draw one from: timed, not tracked
            tracker = None

        def refuse(errors, *, reached_model: bool) -> None:
            self.refuse(deployment.model_id, deployment.version, errors,
                        reached_model=reached_model)

        instrument(deployment, tracker, refuse)
        return tracker

    def tracker_for(self, deployment, **options) -> Tracker:
        """A Tracker (`options`: its window settings) of `deployment` against its stored
        profile, or one drawn from its store; registered under its model and version."""
        profile = load_profile(deployment.version_dir)
        if profile is None:
            from .reference import reference_profile

            profile = reference_profile(deployment)
        tracker = Tracker(profile, deployment.plan.width, **options)
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

    def shadow_failed(self, model_id: str, version: int, rows: int = 1) -> None:
        """Count `rows` a shadow failed to score (never seen by a client)."""
        with self._lock:
            key = (model_id, version)
            self.shadow_errors[key] = self.shadow_errors.get(key, 0) + rows
