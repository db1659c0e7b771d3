"""The stage protocol of a deployment's pipeline and its standard stages after the fill:
transforms (the plan), predict (the model), decide (score, decision, payload).

A pipeline is a list of `Stage` objects, each with `run(state)` over n rows (and `run_one(state)`,
the one-row specialisation, which by default is `run`). A stage reads and writes the `State` of
one call; a stage that adds output columns declares them in `fields` (Arrow fields) and writes
`state.extras[name]`, one value per row: the contract, the Arrow schema, the JSON answers and
the reject files pick them up from there. Per-row problems go to `state.errors` (row ->
ScorelineError); `run_one` may instead raise the row's error.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import numpy as np
import pyarrow as pa

from scoreline.errors import InputError

__all__ = ["State", "Stage", "Transform", "Predict", "Decide"]


class State:
    """One pipeline call in flight: its rows, the work and feature matrices, the model's raw
    output, the score and decision, the extras and the per-row errors."""

    __slots__ = ("n", "source", "today", "keys", "work", "X", "raw", "score", "index",
                 "payload", "labels", "payloads", "errors", "extras", "explain")

    def __init__(self, n: int, source, today: int) -> None:
        self.n = n
        self.source = source
        self.today = today
        # arrays or lists (a one-row call keeps lists), each set by the stage that computes it
        self.keys: Any = None
        self.work: Any = None
        self.X: Any = None
        self.raw: Any = None
        self.score: Any = None
        self.index: Any = None
        self.payload: Any = None
        self.labels: Any = None
        self.payloads: Any = None
        self.errors: dict = {}
        self.extras: dict = {}
        self.explain: int | None = None  # reasons per row the call asks for (bulk --explain), None: the default


class Stage(abc.ABC):
    """A pipeline stage; `fields`: the extra output columns it adds (see the module docstring)."""

    fields: tuple[pa.Field, ...] = ()

    @abc.abstractmethod
    def run(self, state: State) -> None:
        """Work on the call's n rows (see the module docstring)."""

    def run_one(self, state: State) -> None:
        self.run(state)


class Transform(Stage):
    """The manifest's transforms over the work matrix: `state.X`, the model's features."""

    def __init__(self, plan) -> None:
        self.plan = plan

    def run(self, state: State) -> None:
        state.X = self.plan.run(state.work, state.today)

    run_one = run


class Predict(Stage):
    """The model: `state.raw`, its output for every row."""

    def __init__(self, model) -> None:
        self.model = model

    def run(self, state: State) -> None:
        state.raw = self.model.predict_matrix(state.X)

    run_one = run


class Decide(Stage):
    """Score selection and decision; a non-finite score is the row's error (JSON cannot carry
    NaN, so a non-finite score is never returned)."""

    def __init__(self, decider) -> None:
        self.decider = decider

    def run(self, state: State) -> None:
        score = self.decider.scores(state.raw)
        state.score = score
        state.index, state.payload = self.decider.decide(state.raw, score, state.work)
        bad = ~np.isfinite(score)
        if bad.any():
            for row in np.flatnonzero(bad).tolist():
                state.errors.setdefault(row, non_finite(score[row]))

    def run_one(self, state: State) -> None:
        score, label, payload = self.decider.decide_one(state.raw, state.work)
        if not math.isfinite(score):
            raise non_finite(score)
        state.score = [score]
        state.labels = [label]
        if self.decider.payload_labels is not None:
            state.payloads = [self.decider.payload_list[payload] if payload >= 0 else None]


def non_finite(score) -> InputError:
    return InputError(f"the model gave a non-finite score ({score}) for this row", path="score")
