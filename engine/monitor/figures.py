"""The monitor's figures as metric families, read at scrape time, for any exposition format:
`(name, type, help, label names, samples, buckets)`; samples are (label values, value), or for a
histogram (label values, [count per bucket..., +Inf count, sum]). Names follow the Prometheus
conventions the serving peers use (`_total` counters, `_seconds` histograms, base units), and
every label set is bounded: models x versions x the inputs their manifests declare x 5 stages."""

from __future__ import annotations

from .stages import LATENCY_BUCKETS

__all__ = ["families", "drift_report"]

_MV = ("model", "version")
_MVI = ("model", "version", "input")


def drift_report(monitor, model_id: str | None = None) -> list[dict]:
    """Per watched version (of `model_id`, or all): rows, window rows and per input (and the
    score) its counters, PSI and window vs reference shares, for the CLI and the HTML report."""
    out = []
    for (m, v), tracker in sorted(monitor.trackers.items()):
        if model_id is not None and m != model_id:
            continue
        rows, shares = tracker.window()
        drift = tracker.drift()
        quality = tracker.quality()
        columns = []
        for column, now in zip(tracker.columns, shares):
            q = quality.get(column.name, {})
            columns.append({"name": column.name, "kind": column.kind,
                            "psi": drift.get(column.name), "missing": q.get("missing"),
                            "out_of_range": q.get("out_of_range"), "unseen": q.get("unseen"),
                            "labels": column.labels, "reference": list(column.shares),
                            "recent": [float(x) for x in now]})
        out.append({"model": m, "version": v, "rows": tracker.rows, "window_rows": rows,
                    "reference_rows": tracker.profile.rows, "columns": columns})
    return out


def families(monitor, experiments: dict | None = None):
    """Every figure of `monitor` (and the routing shares of `experiments`: model -> Routing)."""
    rows, missing, oor, unseen, psi_in, psi_score, window = [], [], [], [], [], [], []
    for (m, v), tracker in sorted(monitor.trackers.items()):
        labels = (m, str(v))
        quality = tracker.quality()
        count, _ = tracker.window()
        drift = tracker.drift()
        rows.append((labels, tracker.rows))
        window.append((labels, count))
        for name, q in quality.items():
            missing.append(((*labels, name), q["missing"]))
            oor.append(((*labels, name), q["out_of_range"]))
            unseen.append(((*labels, name), q["unseen"]))
        for name, value in drift.items():
            if name == "score":
                psi_score.append((labels, value))
            else:
                psi_in.append(((*labels, name), value))
    yield ("scoreline_input_rows_total", "counter",
           "Rows whose inputs were tracked, by model and version.", _MV, rows, None)
    yield ("scoreline_input_missing_total", "counter",
           "Input values missing (null, or refused as missing), by model, version and input.",
           _MVI, missing, None)
    yield ("scoreline_input_out_of_range_total", "counter",
           "Input values outside the manifest's minimum..maximum, by model, version and input.",
           _MVI, oor, None)
    yield ("scoreline_input_unseen_category_total", "counter",
           "Input values not among the manifest's allowed values or the vocabulary, by model, "
           "version and input.", _MVI, unseen, None)
    yield ("scoreline_input_drift_psi", "gauge",
           "Population stability index of an input over the recent window against the version's "
           "reference profile (0.1: moderate, 0.25: major shift).", _MVI, psi_in, None)
    yield ("scoreline_score_drift_psi", "gauge",
           "Population stability index of the score over the recent window against the "
           "reference profile.", _MV, psi_score, None)
    yield ("scoreline_drift_window_rows", "gauge",
           "Rows in the window the drift is measured over.", _MV, window, None)
    stages = sorted(monitor.stages.snapshot().items())
    yield ("scoreline_stage_duration_seconds", "histogram",
           "Time per scoring call in each stage (lookup, transforms, model, decision, log); every "
           "batch call and 1 in 64 one-row calls are timed.",
           ("model", "version", "stage"), stages, LATENCY_BUCKETS)
    yield ("scoreline_shadow_errors_total", "counter",
           "Rows a shadow failed to score (never seen by a client), by model and version.", _MV,
           [((m, str(v)), n) for (m, v), n in sorted(monitor.shadow_errors.items())], None)
    if experiments is not None:
        shares = [((m, r.name, "default" if route.version is None else str(route.version),
                    route.role), route.share)
                  for m, r in sorted(experiments.items()) for route in r.routes]
        shares += [((m, r.name, str(v), "shadow"), 1.0)
                   for m, r in sorted(experiments.items()) for v in r.shadows]
        yield ("scoreline_experiment_share", "gauge",
               "Share of a model's traffic each variant answers (shadows: 1, scored on every "
               "row, never answered).", ("model", "experiment", "version", "role"), shares, None)
