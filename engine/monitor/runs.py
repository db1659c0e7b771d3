"""Data quality and drift of one bulk run (engine/bulk/): a Tracker over the whole run against
the version's reference profile, fed from each batch's pipeline call, and its summary for a
person (`summary`) or a machine (`report`, the same shape as `engine.drift()`).

Counters (rows, missing, out-of-range, unseen per input) cover every row of the run; the PSI
histograms bin a strided sample of at most `Tracker.sample_rows` rows per batch, over the whole
run (no sliding window: a file is one population)."""

from __future__ import annotations

import sys

from .figures import drift_report
from .instrument import Monitor, Track
from .tracker import PSI_ALERT, PSI_WARN

__all__ = ["RunTracking", "summary"]


class RunTracking:
    """The tracking of one bulk run of `deployment`: `observe(state)` per finished pipeline call
    (thread-safe), then `report()`. Raises what `Monitor.tracker_for` raises when the version
    has no profile and no store to draw one from."""

    def __init__(self, deployment) -> None:
        self.monitor = Monitor()
        self.model_id = deployment.model_id
        tracker = self.monitor.tracker_for(deployment, window=sys.maxsize, chunks=1)
        self.tracker = tracker

        def refuse(errors, *, reached_model: bool) -> None:
            self.monitor.refuse(deployment.model_id, deployment.version, errors,
                                reached_model=reached_model)

        self._track = Track(tracker, refuse)

    def observe(self, state) -> None:
        """A finished n-row call's State: its work matrix, scores and row errors."""
        if state is not None and state.n and state.score is not None:
            self._track.run(state)

    def report(self) -> list[dict]:
        return drift_report(self.monitor, self.model_id)


def summary(report: list[dict]) -> str:
    """A short table for the end of `scoreline score`: per input (and the score) the PSI against
    the reference and the missing / out-of-range / unseen counts of the run."""
    lines = []
    for v in report:
        lines.append(f"data quality and drift of {v['model']} v{v['version']} over {v['rows']:,} "
                     f"rows (PSI on {v['window_rows']:,} sampled; reference "
                     f"{v['reference_rows']:,} rows):")
        width = max(len(c["name"]) for c in v["columns"])
        lines.append(f"  {'input':<{width}}  {'PSI':>7}  {'drift':<8}  {'missing':>9}  "
                     f"{'out of range':>12}  {'unseen':>9}")
        for c in v["columns"]:
            psi = c["psi"]
            state = "" if psi is None else "MAJOR" if psi > PSI_ALERT else \
                "moderate" if psi > PSI_WARN else "stable"
            lines.append(f"  {c['name']:<{width}}  {'-' if psi is None else f'{psi:.3f}':>7}  "
                         f"{state:<8}  {_count(c['missing']):>9}  {_count(c['out_of_range']):>12}"
                         f"  {_count(c['unseen']):>9}")
    return "\n".join(lines)


def _count(value) -> str:
    return "" if value is None else f"{value:,}"
