"""A manifest's rule table (decision kind "rules") compiled against the feature plan: the arrays
`kernels.decisions.rule_table` reads, checked for unknown columns and rules that can never fire.

Conditions read the work matrix after the transforms (raw numeric and date inputs, transform
outputs; `Plan.columns` gives their slots) and the score (column -1). Every refusal is a
SchemaError with the path of the rule or condition at fault.
"""

from __future__ import annotations

import math

import numpy as np

from scoreline.errors import SchemaError
from scoreline.kernels import decisions as K
from scoreline.registry import manifest as M

__all__ = ["CompiledRules", "compile_rules"]

SCORE = "score"  # the condition column that reads the model's score


class CompiledRules:
    """The kernel's arrays for one rule table; `decide(score, work)` -> (label index, fired)."""

    def __init__(self, table: M.RuleTable, labels: list[str], column, lo, hi, kind, rule_of) -> None:
        self.labels = labels  # distinct rule labels in order, then the default
        self.reasons = [rule.reason for rule in table.rules]
        self.first_only = table.hit_policy == "first"
        self._column, self._lo, self._hi, self._kind, self._rule_of = column, lo, hi, kind, rule_of
        self._label_of = np.array([labels.index(rule.label) for rule in table.rules], dtype=np.int64)
        self._default = labels.index(table.default)

    def decide(self, score: np.ndarray, work: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(label index per row, -1 where the score is NaN; fired: uint8 (n, rules), 1 where a
        rule fired, only the first one under hit policy "first")."""
        n = score.shape[0]
        out = np.empty(n, dtype=np.int64)
        fired = np.empty((n, self._label_of.shape[0]), dtype=np.uint8)
        K.rule_table(work, score, self._column, self._lo, self._hi, self._kind, self._rule_of, self._label_of,
                     self.first_only, self._default, out, fired)
        return out, fired


def compile_rules(table: M.RuleTable, plan) -> CompiledRules:
    """Compile and check `table` against `plan` (engine/pipeline/plan.py)."""
    columns = plan.columns or {}
    if SCORE in columns:
        raise SchemaError(f"a column is named {SCORE!r}, so rule conditions on {SCORE!r} would be "
                          "ambiguous; rename it", path="$.decision.rules")
    if not table.rules:
        raise SchemaError("a rule table needs at least one rule", path="$.decision.rules")
    regions: list = []
    column, lo, hi, kind, rule_of = [], [], [], [], []
    for r, rule in enumerate(table.rules):
        region: dict[str, list] = {}
        for c, cond in enumerate(rule.when):
            path = f"$.decision.rules[{r}].when[{c}]"
            if cond.input != SCORE and cond.input not in columns:
                raise SchemaError(f"rule condition reads {cond.input!r}, which is neither {SCORE!r}, a "
                                  "numeric or date input nor a transform output", path=f"{path}.input")
            bounds = _bounds(cond, path)
            column.append(-1 if cond.input == SCORE else columns[cond.input])
            lo.append(bounds[0])
            hi.append(bounds[2])
            kind.append((K.LOWER_OPEN if bounds[1] else K.LOWER_CLOSED) * (bounds[0] > -math.inf)
                        | (K.UPPER_OPEN if bounds[3] else K.UPPER_CLOSED) * (bounds[2] < math.inf))
            rule_of.append(r)
            region[cond.input] = _intersect(region.get(cond.input), bounds)
        for name, (low, low_open, high, high_open) in region.items():
            if low > high or (low == high and (low_open or high_open)):
                raise SchemaError(f"rule {r} can never fire: its conditions on {name!r} exclude every value",
                                  path=f"$.decision.rules[{r}]")
        if table.hit_policy == "first":
            for earlier, other in enumerate(regions):
                if _covers(other, region):
                    raise SchemaError(f"rule {r} can never fire: rule {earlier} matches every row it matches "
                                      "and comes first", path=f"$.decision.rules[{r}]")
        regions.append(region)
    labels = list(dict.fromkeys([rule.label for rule in table.rules] + [table.default]))
    return CompiledRules(table, labels, np.array(column, dtype=np.int64), np.array(lo, dtype=np.float64),
                         np.array(hi, dtype=np.float64), np.array(kind, dtype=np.int64),
                         np.array(rule_of, dtype=np.int64))


def _bounds(cond: M.Condition, path: str) -> tuple[float, bool, float, bool]:
    """(lo, lo open, hi, hi open) of one condition."""
    if cond.ge is not None and cond.gt is not None:
        raise SchemaError("give ge or gt, not both", path=f"{path}.gt")
    if cond.le is not None and cond.lt is not None:
        raise SchemaError("give le or lt, not both", path=f"{path}.lt")
    if all(v is None for v in (cond.ge, cond.gt, cond.le, cond.lt)):
        raise SchemaError("a condition needs a bound: ge, gt, le or lt", path=path)
    for name in ("ge", "gt", "le", "lt"):
        value = getattr(cond, name)
        if value is not None and math.isnan(value):
            raise SchemaError("a bound must be a number, not NaN", path=f"{path}.{name}")
    low, low_open = (cond.gt, True) if cond.gt is not None else (-math.inf if cond.ge is None else cond.ge, False)
    high, high_open = (cond.lt, True) if cond.lt is not None else (math.inf if cond.le is None else cond.le, False)
    return low, low_open, high, high_open


def _intersect(a, b):
    if a is None:
        return b
    low = max((a[0], a[1]), (b[0], b[1]))  # the higher bound; open beats closed at a tie
    high = min((a[2], not a[3]), (b[2], not b[3]))  # the lower bound; open beats closed at a tie
    return low[0], low[1], high[0], not high[1]


def _covers(earlier: dict, later: dict) -> bool:
    """Whether every row the later rule matches is matched by the earlier one: each column the
    earlier rule bounds is bounded at least as tightly by the later (an unbounded column also
    admits missing values, which no bound admits)."""
    for name, (low, low_open, high, high_open) in earlier.items():
        other = later.get(name)
        if other is None:
            return False
        o_low, o_low_open, o_high, o_high_open = other
        if o_low < low or (o_low == low and low_open and not o_low_open):
            return False
        if o_high > high or (o_high == high and high_open and not o_high_open):
            return False
    return True
