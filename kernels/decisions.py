"""Decision kernels: scores or class probabilities in, label indices out (-1 where no decision).

The engine turns indices into label strings with one Arrow `take`, so kernels never touch strings.
A row whose score is not finite gets -1 here; the engine reports it as a per-row error.
"""

from __future__ import annotations

import numpy as np

from .policy import jit

__all__ = ["bands", "argmax", "top_k", "gather_index", "select_score", "rule_table"]

# Bound kinds of a rule-table condition (rule_table's `kind` array): which comparisons apply.
LOWER_CLOSED = 1  # value >= lo
LOWER_OPEN = 2  # value > lo
UPPER_CLOSED = 4  # value <= hi
UPPER_OPEN = 8  # value < hi


@jit
def bands(score, mins, default, out):
    """Index of the first band whose `min` <= score (bands ordered by descending min), else
    `default` (the engine passes len(mins), the index of the default label); NaN gives -1."""
    n_bands = mins.shape[0]
    for i in range(score.shape[0]):
        s = score[i]
        if np.isnan(s):
            out[i] = -1
            continue
        label = default
        for b in range(n_bands):
            if s >= mins[b]:
                label = b
                break
        out[i] = label


@jit
def argmax(probs, out):
    """The most probable class per row; ties go to the lower class index (as np.argmax).
    A row holding NaN gives -1."""
    k = probs.shape[1]
    for i in range(probs.shape[0]):
        best = 0
        top = probs[i, 0]
        bad = np.isnan(top)
        for j in range(1, k):
            p = probs[i, j]
            if np.isnan(p):
                bad = True
            elif p > top:
                top = p
                best = j
        out[i] = -1 if bad else best


@jit
def top_k(probs, out):
    """The `out.shape[1]` most probable classes per row, best first; ties go to the lower class
    index (a stable descending sort). A row holding NaN gives -1 in every position.

    Selection by repeated scans: k is a handful of labels, so this beats sorting every row."""
    k = out.shape[1]
    n_class = probs.shape[1]
    for i in range(probs.shape[0]):
        bad = False
        for j in range(n_class):
            if np.isnan(probs[i, j]):
                bad = True
        if bad:
            for r in range(k):
                out[i, r] = -1
            continue
        for r in range(k):
            best = -1
            top = -np.inf
            for j in range(n_class):
                taken = False
                for q in range(r):
                    if out[i, q] == j:
                        taken = True
                if not taken and (best < 0 or probs[i, j] > top):
                    best = j
                    top = probs[i, j]
            out[i, r] = best


@jit
def gather_index(index, table, out):
    """`table[index]` per row (a segment's payload from its label index); -1 stays -1."""
    for i in range(index.shape[0]):
        j = index[i]
        out[i] = -1 if j < 0 else table[j]


@jit
def select_score(raw, column, out):
    """The score per row from an (n, k) prediction: column `column`, or for column -1 the top
    class's probability (the maximum; NaN if the row holds NaN)."""
    k = raw.shape[1]
    for i in range(raw.shape[0]):
        if column >= 0:
            out[i] = raw[i, column]
            continue
        top = raw[i, 0]
        for j in range(1, k):
            p = raw[i, j]
            if np.isnan(p) or p > top:
                top = p
                if np.isnan(p):
                    break
        out[i] = top


@jit
def rule_table(values, score, column, lo, hi, kind, rule_of, label_of, first_only, default, out, fired):
    """An ordered rule table per row: out[i] = the label of the first rule whose conditions all
    hold, else `default`; fired[i, r] = 1 where rule r fires (with `first_only`, only the first).

    Condition c belongs to rule rule_of[c] (conditions grouped by rule, in rule order) and bounds
    values[i, column[c]] (column -1: the score) by lo[c] / hi[c] as `kind[c]` says (the *_OPEN
    and *_CLOSED bits). A NaN value meets no condition; a row whose score is NaN gets -1.
    """
    rules = label_of.shape[0]
    conditions = rule_of.shape[0]
    for i in range(score.shape[0]):
        for r in range(rules):
            fired[i, r] = 0
        if np.isnan(score[i]):
            out[i] = -1
            continue
        out[i] = default
        found = False
        c = 0
        for r in range(rules):
            holds = True
            while c < conditions and rule_of[c] == r:
                v = score[i] if column[c] < 0 else values[i, column[c]]
                k = kind[c]
                ok = v == v
                if k & LOWER_CLOSED:
                    ok = ok and v >= lo[c]
                if k & LOWER_OPEN:
                    ok = ok and v > lo[c]
                if k & UPPER_CLOSED:
                    ok = ok and v <= hi[c]
                if k & UPPER_OPEN:
                    ok = ok and v < hi[c]
                holds = holds and ok
                c += 1
            if holds:
                fired[i, r] = 1
                if not found:
                    out[i] = label_of[r]
                    found = True
                    if first_only:
                        break
