"""Decision kernels against a numpy reference: bands, argmax, top-k, payload gather, score choice."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scoreline.kernels import decisions as D

scores = arrays(np.float64, st.integers(0, 40), elements=st.floats(-2, 2) | st.just(np.nan))
probabilities = st.tuples(st.integers(0, 20), st.integers(2, 6)).flatmap(
    lambda shape: arrays(
        np.float64,
        shape,
        # few distinct values, so ties are common and their order is tested
        elements=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]) | st.floats(0, 1),
    )
)


def ref_bands(score, mins):
    out = np.full(score.shape, len(mins), dtype=np.int64)
    for b in reversed(range(len(mins))):
        out[score >= mins[b]] = b
    out[np.isnan(score)] = -1
    return out


@given(scores, st.lists(st.floats(-2, 2), max_size=5).map(lambda m: sorted(m, reverse=True)))
def test_bands_matches_reference(score, mins):
    m = np.array(mins, dtype=np.float64)
    out = np.empty(len(score), dtype=np.int64)
    D.bands(score, m, len(m), out)
    np.testing.assert_array_equal(out, ref_bands(score, m))


def test_bands_boundaries_belong_to_the_higher_band():
    out = np.empty(4, dtype=np.int64)
    D.bands(np.array([0.5, 0.4999, 0.2, 0.1]), np.array([0.5, 0.2]), 2, out)
    np.testing.assert_array_equal(out, [0, 1, 1, 2])


@given(probabilities)
def test_argmax_matches_numpy(p):
    out = np.empty(len(p), dtype=np.int64)
    D.argmax(p, out)
    np.testing.assert_array_equal(out, np.argmax(p, axis=1) if len(p) else [])


def test_argmax_and_top_k_flag_nan_rows():
    p = np.array([[0.2, np.nan, 0.8], [0.1, 0.6, 0.3]])
    out = np.empty(2, dtype=np.int64)
    D.argmax(p, out)
    np.testing.assert_array_equal(out, [-1, 1])
    top = np.empty((2, 2), dtype=np.int64)
    D.top_k(p, top)
    np.testing.assert_array_equal(top, [[-1, -1], [1, 2]])


@given(probabilities, st.integers(1, 6))
def test_top_k_matches_stable_descending_sort(p, k):
    k = min(k, p.shape[1])
    out = np.empty((len(p), k), dtype=np.int64)
    D.top_k(p, out)
    want = np.argsort(-p, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(out, want)


@given(arrays(np.int64, st.integers(0, 30), elements=st.integers(-1, 3)))
def test_gather_index_keeps_minus_one(index):
    table = np.array([7, 5, 3, 1], dtype=np.int64)
    out = np.empty(len(index), dtype=np.int64)
    D.gather_index(index, table, out)
    np.testing.assert_array_equal(out, np.where(index < 0, -1, table[np.maximum(index, 0)]))


@given(probabilities, st.integers(-1, 1))
def test_select_score(p, column):
    out = np.empty(len(p))
    D.select_score(p, column, out)
    want = p.max(axis=1) if column < 0 else p[:, column]
    np.testing.assert_array_equal(out, want if len(p) else [])


def test_select_score_top_class_of_a_nan_row_is_nan():
    out = np.empty(2)
    D.select_score(np.array([[0.3, np.nan, 0.5], [np.nan, 0.2, 0.1]]), -1, out)
    assert np.isnan(out).all()


# --- the engine's one-row decision equals the kernels' ----------------------------------------

DECISIONS = {
    "bands": {"kind": "bands", "bands": [{"label": "hi", "min": 0.5}, {"label": "mid", "min": 0.2}],
              "default": "lo"},
    "argmax": {"kind": "argmax", "labels": ["a", "b", "c"]},
    "top-k": {"kind": "top-k", "labels": ["a", "b", "c"], "k": 2},
    "segment": {"kind": "segment", "labels": ["a", "b", "c"],
                "payload": {"a": "P1", "b": "P2", "c": "P1"}, "payload-field": "sku"},
}


def _decider(kind: str, num_class: int, objective: str, score="auto"):
    import json

    from scoreline.engine.pipeline.decide import Decider
    from scoreline.registry.manifest import decode_manifest

    decision = dict(DECISIONS[kind])
    if num_class == 1 and kind != "bands":
        decision["labels"] = decision["labels"][:2]
        decision.get("payload", {}).pop("c", None)
        if kind == "top-k":
            decision["k"] = 1
    m = decode_manifest(json.dumps({
        "model-id": "m", "inputs": [], "entity": {"key": "id"}, "decision": decision,
        "model": {"format": "lightgbm", "artifact": "m.txt", "score": score}}))
    return Decider(m, num_class, objective)


@given(
    st.sampled_from(sorted(DECISIONS)),
    st.lists(st.sampled_from([0.0, 0.2, 0.5, 0.7, 1.0, np.nan]) | st.floats(0, 1),
             min_size=3, max_size=3),
    st.sampled_from(["auto", 0, 2]),
)
def test_one_row_decision_equals_the_kernels(kind, row, score):
    d = _decider(kind, 3, "multiclass", score)
    raw = np.array([row])
    s = d.scores(raw)
    index, payload = d.decide(raw, s)
    bad = np.zeros(1, dtype=bool)
    label = d.label_column(index, bad)[0].as_py()
    one_score, one_label, one_payload = d.decide_one(raw)
    assert (one_score == s[0]) or (np.isnan(one_score) and np.isnan(s[0]))
    assert one_label == label
    assert one_payload == (-1 if payload is None else payload[0])


@given(st.sampled_from(sorted(DECISIONS)), st.floats(0, 1) | st.just(np.nan), st.sampled_from(["auto", 0, 1]))
def test_one_row_binary_decision_equals_the_kernels(kind, p, score):
    d = _decider(kind, 1, "binary", score)
    raw = np.array([p])
    s = d.scores(raw)
    index, payload = d.decide(raw, s)
    label = d.label_column(index, np.zeros(1, dtype=bool))[0].as_py()
    one_score, one_label, one_payload = d.decide_one(raw)
    assert (one_score == s[0]) or (np.isnan(one_score) and np.isnan(s[0]))
    assert one_label == label
    assert one_payload == (-1 if payload is None else payload[0])
