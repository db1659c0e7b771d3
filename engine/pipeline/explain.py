"""Reason codes per row: feature contributions (engine/models/explain.py) summed onto the raw inputs
the features are built from (plan.feature_inputs), ranked, and named by the manifest's codes.

A row's reasons are, in order: the reason of each rule-table rule that fired (decision kind
"rules"), then the k inputs with the largest contributions in the direction `explain.rank`
asks for ("abs": either way, "up": raising the score, "down": lowering it), each with the code
of its direction. Contributions are in the model's raw (margin) space, towards the score the
decision reads: a binary model scored as class 0 has them negated; a multiclass model's are
the scored class's (the top class's when the score is the top probability).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from scoreline.engine.pipeline.stages import Stage, State
from scoreline.errors import InputError, ModelFormatError, SchemaError
from scoreline.registry import manifest as M

__all__ = ["Explainer", "ExplainStage", "REASON_TYPE"]


# One reason: its code and text from the manifest, the raw input and its contribution.
REASON_TYPE = pa.list_(pa.struct([("code", pa.string()), ("text", pa.string()), ("input", pa.string()),
                                  ("contribution", pa.float64())]))


class Explainer:
    """Reason codes for one deployment: model + plan + decider + the manifest's `explain`."""

    def __init__(self, manifest: M.Manifest, model, plan, decider) -> None:
        spec = manifest.explain or M.Explain()
        self.default_k = spec.k
        self.rank = spec.rank
        self._model = model
        self._decider = decider
        self._num_features = model.num_features
        if model.kind == "linear":
            means = spec.means
            if means is not None:
                missing = [f for f in model.feature_names if f not in means]
                if missing:
                    raise SchemaError(f"explain.means lacks model feature {missing[0]!r}", path="$.explain.means")
                self._means = np.array([means[f] for f in model.feature_names], dtype=np.float64)
            else:
                self._means = model.means
        # Inputs in first-seen feature order, and each feature's input position.
        self.inputs = tuple(dict.fromkeys(plan.feature_inputs))
        self._group = np.array([self.inputs.index(name) for name in plan.feature_inputs], dtype=np.int64)
        self._codes = {}
        for name in self.inputs:
            reasons = spec.reasons.get(name) or M.InputReasons()
            self._codes[name] = (_pair(reasons.up, name), _pair(reasons.down, name))

    def contributions(self, X: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """float64 (n, inputs): each raw input's contribution to the scored output."""
        model = self._model
        if model.kind == "linear":
            from scoreline.engine.models.explain import linear_contributions

            full = linear_contributions(X, model.coefficients, model.intercept, self._means, model.feature_names)
        else:
            full = model.predict_contrib_matrix(X)
        n, stride = X.shape[0], self._num_features + 1
        classes = full.shape[1] // stride
        d = self._decider
        if classes == 1:
            per_feature = full[:, : self._num_features]
            if d.complement:
                per_feature = -per_feature
        else:
            column = d.column if d.column >= 0 else np.argmax(raw.reshape(n, classes), axis=1)
            columns = np.broadcast_to(np.asarray(column), (n,))
            offsets = columns[:, None] * stride + np.arange(self._num_features)[None, :]
            per_feature = np.take_along_axis(full, offsets, axis=1)
        out = np.zeros((n, len(self.inputs)), dtype=np.float64)
        for j in range(self._num_features):
            out[:, self._group[j]] += per_feature[:, j]
        return out

    def reasons(self, X: np.ndarray, raw: np.ndarray, k: int, fired: np.ndarray | None = None) -> list[list[dict]]:
        """Per row, the reasons (see the module docstring): dicts of code, text, input and
        contribution (None for a rule's reason)."""
        n = X.shape[0]
        rule_reasons = self._rule_reasons(fired, n)
        if k <= 0:
            return rule_reasons
        by_input = self.contributions(X, raw)
        key = {"abs": -np.abs(by_input), "up": -by_input, "down": by_input}[self.rank]
        order = np.argsort(key, axis=1, kind="stable")[:, :k]
        out = []
        for i in range(n):
            row = rule_reasons[i]
            for j in order[i].tolist():
                value = float(by_input[i, j])
                if (self.rank == "up" and value <= 0) or (self.rank == "down" and value >= 0) or value == 0:
                    continue  # nothing pushed that way
                name = self.inputs[j]
                code, text = self._codes[name][0 if value > 0 else 1]
                row.append({"code": code, "text": text, "input": name, "contribution": value})
            out.append(row)
        return out

    def _rule_reasons(self, fired, n: int) -> list[list[dict]]:
        rules = self._decider.rules
        if fired is None or rules is None:
            return [[] for _ in range(n)]
        out = []
        for i in range(n):
            out.append([{"code": rules.reasons[r].code, "text": rules.reasons[r].text, "input": None,
                         "contribution": None}
                        for r in np.flatnonzero(fired[i]).tolist() if rules.reasons[r] is not None])
        return out


def _pair(reason: M.Reason | None, name: str) -> tuple[str, str]:
    """(code, text); an input without a code for this direction is named by itself."""
    return (name, "") if reason is None else (reason.code, reason.text)


class ExplainStage(Stage):
    """The pipeline stage that adds `reasons` (REASON_TYPE) to rows that ask for them: a
    request's `"explain": k` (RowBatch.explain, per row), else the call's `explain` (bulk
    `--explain k`), else the manifest's `explain.k`. Rows with k = 0 or an error get null.

    Built only for manifests with an `explain` section; a model that cannot give contributions
    (linear trees, a file without data counts, a linear model without means) is refused here,
    at registration, with the manifest path.
    """

    fields = (pa.field("reasons", REASON_TYPE),)

    def __init__(self, manifest: M.Manifest, model, plan, decider) -> None:
        self.explainer = Explainer(manifest, model, plan, decider)
        self._rules = decider.rules
        try:  # prepare the paths and tables and load the kernels now, never on a request
            for order in "CF":
                X = np.zeros((2, model.num_features), order=order)
                self.explainer.contributions(X, model.predict_matrix(X))
            one = np.zeros((1, model.num_features))
            self.explainer.contributions(one, model.predict_matrix(one))
        except (ModelFormatError, InputError) as exc:
            raise SchemaError(f"explain: this model cannot give contributions: {exc.message}",
                              path="$.explain") from None

    def _wanted(self, state: State) -> list[int]:
        asked = getattr(state.source, "explain", None)
        fallback = state.explain if state.explain is not None else self.explainer.default_k
        if asked is None:
            return [fallback] * state.n
        return [fallback if k is None else k for k in asked]

    def run(self, state: State) -> None:
        wanted = self._wanted(state)
        rows = [i for i, k in enumerate(wanted) if k > 0 and i not in state.errors]
        if not rows:
            return
        index = np.array(rows, dtype=np.int64)
        X = state.X[index]
        raw = state.raw[index]
        fired = None
        if self._rules is not None:
            fired = self._rules.decide(np.asarray(state.score, dtype=np.float64)[index], state.work[index])[1]
        reasons = self.explainer.reasons(X, raw, max(wanted[i] for i in rows), fired)
        out = [None] * state.n
        for j, i in enumerate(rows):
            out[i] = _trim(reasons[j], wanted[i])
        state.extras["reasons"] = out

    def run_one(self, state: State) -> None:
        self.run(state)


def _trim(reasons: list[dict], k: int) -> list[dict]:
    """A row's rule reasons and at most k input reasons (the row was explained to the largest k)."""
    rules = [r for r in reasons if r["input"] is None]
    return rules + [r for r in reasons if r["input"] is not None][:k]
