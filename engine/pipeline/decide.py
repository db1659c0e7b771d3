"""A manifest's score selection and decision, compiled for one model: raw predictions in, the score,
the decision label and (for segments) the payload out, as label indices the kernels compute.

Binary models predict one probability p per row; decisions over classes see it as [1 - p, p].
A rule table (engine/pipeline/rules.py) also reads the work matrix: pass it as `work`.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoreline.errors import SchemaError
from scoreline.kernels import decisions as K
from scoreline.registry import manifest as M

__all__ = ["Decider"]


class Decider:
    """Score selection plus the decision of one manifest for one model."""

    def __init__(self, manifest: M.Manifest, num_class: int, objective: str, plan=None) -> None:
        d = manifest.decision
        self.kind = type(d).__struct_config__.tag
        self.binary = num_class == 1 and objective.startswith(("binary", "cross_entropy"))
        classes = 2 if self.binary else num_class
        score = manifest.model.score
        if score == "auto":
            self.column = -1 if num_class > 1 else 0
        else:
            if not 0 <= score < classes:
                raise SchemaError(f"model.score is class {score}, but the model has {classes} "
                                  "output(s)", path="$.model.score")
            self.column = score
        # Binary: class 1 is p itself; class 0 is 1 - p (see `scores`).
        self.complement = self.binary and score == 0
        self.payload_labels = None
        self.rules = None
        if isinstance(d, M.RuleTable):
            from scoreline.engine.pipeline.rules import compile_rules

            if plan is None:
                raise SchemaError("a rule table needs the feature plan", path="$.decision")
            self.rules = compile_rules(d, plan)
            labels = self.rules.labels
        elif isinstance(d, M.Bands):
            self.mins = np.array([b.min for b in d.bands], dtype=np.float64)
            self.mins_list = self.mins.tolist()
            labels = [b.label for b in d.bands] + [d.default]
        else:
            labels = list(d.labels)
            if len(labels) != classes:
                raise SchemaError(f"{self.kind} has {len(labels)} labels, but the model has "
                                  f"{classes} classes", path="$.decision.labels")
            if len(set(labels)) != len(labels):
                raise SchemaError("duplicate labels", path="$.decision.labels")
        if isinstance(d, M.TopK):
            self.k = d.k
        if isinstance(d, M.Segment):
            missing = [lab for lab in labels if lab not in d.payload]
            if missing:
                raise SchemaError(f"segment {missing[0]!r} has no payload", path="$.decision.payload")
            values = sorted(set(d.payload[lab] for lab in labels))
            self.payload_labels = pa.array(values, pa.string())
            self.payload_list = values
            self._payload_objects = np.array(values, dtype=object)
            self.payload_index = np.array([values.index(d.payload[lab]) for lab in labels],
                                          dtype=np.int64)
            self.payload_index_list = self.payload_index.tolist()
            self.payload_field = d.payload_field
        self.labels = pa.array(labels, pa.string())
        self.label_list = labels
        self._label_objects = np.array(labels, dtype=object)

    def scores(self, raw: np.ndarray) -> np.ndarray:
        """The score per row from `predict_matrix`'s output ((n,) or (n, k))."""
        if raw.ndim == 1:
            return 1.0 - raw if self.complement else raw
        out = np.empty(raw.shape[0])
        K.select_score(raw, self.column, out)
        return out

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        if raw.ndim == 2:
            return raw
        if not self.binary:
            return raw.reshape(-1, 1)
        probs = np.empty((raw.shape[0], 2))
        probs[:, 0] = 1.0 - raw
        probs[:, 1] = raw
        return probs

    def decide(self, raw: np.ndarray, score: np.ndarray, work: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """(label index per row, or (n, k) for top-k; payload index per row or None); -1: none.
        `work`: the work matrix after the transforms, which a rule table reads."""
        n = score.shape[0]
        if self.rules is not None:
            return self.rules.decide(score, work)[0], None
        if self.kind == "bands":
            out = np.empty(n, dtype=np.int64)
            K.bands(score, self.mins, len(self.mins), out)
            return out, None
        probs = self.probabilities(raw)
        if self.kind == "top-k":
            out = np.empty((n, self.k), dtype=np.int64)
            K.top_k(probs, out)
            return out, None
        out = np.empty(n, dtype=np.int64)
        K.argmax(probs, out)
        if self.kind == "segment":
            payload = np.empty(n, dtype=np.int64)
            K.gather_index(out, self.payload_index, payload)
            return out, payload
        return out, None

    def decide_one(self, raw: np.ndarray, work: np.ndarray | None = None) -> tuple[float, str | None, int]:
        """(score, label, payload index) for a one-row prediction, in Python scalars: the same
        rules as `scores` + `decide` (ties to the lower class, NaN -> no label), without three
        kernel dispatches for one row (a rule table: one)."""
        if self.rules is not None:
            score = self.scores(raw)
            index = int(self.rules.decide(score, work)[0][0])
            return float(score[0]), (self.label_list[index] if index >= 0 else None), -1
        row = raw.tolist()
        if raw.ndim == 1:
            p = row[0]
            score = 1.0 - p if self.complement else p
            probs = [1.0 - p, p] if self.binary else [p]
        else:
            probs = row[0]
        # A sum is NaN whenever a term is (and also for inf - inf: then look term by term).
        total = sum(probs)
        has_nan = total != total and any(q != q for q in probs)
        if raw.ndim == 2:
            if self.column >= 0:
                score = probs[self.column]
            else:
                score = math.nan if has_nan else max(probs)
        if self.kind == "bands":
            if score != score:
                return score, None, -1
            for b, low in enumerate(self.mins_list):
                if score >= low:
                    return score, self.label_list[b], -1
            return score, self.label_list[-1], -1
        if has_nan:
            return score, None, -1
        if self.kind == "top-k":
            order = sorted(range(len(probs)), key=lambda j: -probs[j])[: self.k]  # stable
            return score, ",".join(self.label_list[j] for j in order), -1
        best = probs.index(max(probs))  # the first maximum, as np.argmax
        payload = self.payload_index_list[best] if self.kind == "segment" else -1
        return score, self.label_list[best], payload

    def label_column(self, index: np.ndarray, bad: np.ndarray) -> pa.Array:
        """Label strings for label indices; null where `bad` or no decision."""
        if index.ndim == 2:
            parts = [self._take(index[:, r], bad) for r in range(index.shape[1])]
            return pc.binary_join_element_wise(*parts, ",") if len(parts) > 1 else parts[0]
        return self._take(index, bad)

    def payload_column(self, payload: np.ndarray, bad: np.ndarray) -> pa.Array:
        return _take(self.payload_labels, self._payload_objects, payload, bad)

    def _take(self, index: np.ndarray, bad: np.ndarray) -> pa.Array:
        return _take(self.labels, self._label_objects, index, bad)



# Below this many rows, strings picked from a numpy object array convert faster than an Arrow
# take (measured: 64 rows ~7 us against ~23 us; at 10,000 rows the take is ~3x faster).
_SMALL = 512


def _take(values: pa.Array, objects: np.ndarray, index: np.ndarray, bad: np.ndarray) -> pa.Array:
    """`values[index]` (`objects`: the same strings as a numpy object array); null where `bad`
    or the index is -1."""
    mask = bad | (index < 0)
    any_masked = mask.any()
    safe = np.where(mask, 0, index) if any_masked else index
    if len(index) <= _SMALL:
        return pa.array(objects[safe], pa.string(), mask=mask if any_masked else None)
    return values.take(pa.array(safe, mask=mask if any_masked else None))
