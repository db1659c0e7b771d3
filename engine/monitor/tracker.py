"""Data quality and drift of one deployment: counts of missing, out-of-range and unseen-category
values per input, and PSI of every input and of the score over a sliding window against the
version's reference profile. Updated per batch with a handful of vectorised numpy calls; one-row
calls are buffered and folded in as a batch.

Costs are bounded: counts cover every row, the histograms a strided sample of at most
`sample_rows` rows of a batch (PSI over a window of thousands of rows does not need every row of
a 10k batch, and a fixed sample keeps a bulk run's overhead flat). One-row calls are queued
`buffer_rows` (4,096) at a time, so their PSI also bins a strided sample (every other row by
default); their counters stay exact. The queue is folded on the calling thread: the fold's CPU is
counted in the call's cost, not hidden on another thread.
"""

from __future__ import annotations

import array
import threading

import numpy as np

from .profile import Profile, bin_counts

__all__ = ["Tracker", "psi", "PSI_WARN", "PSI_ALERT"]

# The industry's usual reading of PSI: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.
PSI_WARN = 0.1
PSI_ALERT = 0.25
_EPS = 1e-4  # floor for empty bins, so a bin seen on one side only adds a large but finite term


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two share vectors (each adding up to 1)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), _EPS)
    a = np.maximum(np.asarray(actual, dtype=np.float64), _EPS)
    return float(np.sum((a - e) * np.log(a / e)))


class Tracker:
    """Counters and windowed histograms for one deployment (thread-safe).

    Parameters: `profile` (the reference), `width` (columns of the deployment's work matrix),
    `window` (rows the PSI looks back over, in `chunks` steps), `sample_rows` (rows of a batch
    binned), `buffer_rows` (one-row calls held before they are folded in).

    One-row calls are queued without a Python object per row: the work row's bytes are appended
    to a bytearray and the score to an array.array (each append one atomic C call under the
    GIL, so no lock on the request path); the fold takes the complete rows with two copies and
    no per-row loop (measured: 4,096 rows queued as (array, score) tuples took ~1.3 ms to fold,
    ~0.3 us a call). A row and a score queued by two threads at once may be paired across
    threads: harmless, as no figure joins an input with the score.
    """

    def __init__(self, profile: Profile, width: int, *, window: int = 10_000, chunks: int = 10,
                 sample_rows: int = 2048, buffer_rows: int = 4096) -> None:
        self.profile = profile
        self.width = int(width)
        inputs = [c for c in profile.columns if c.slot >= 0]
        self.names = [c.name for c in inputs]
        self.slots = np.array([c.slot for c in inputs], dtype=np.int64)
        self.columns = [*inputs, profile.columns[-1]]  # the score last
        self._edges = [np.asarray(c.edges, dtype=np.float64) for c in self.columns]
        sizes = [c.bins for c in self.columns]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._reference = [np.asarray(c.shares) for c in self.columns]
        self._lo = np.array([-np.inf if c.minimum is None else c.minimum for c in inputs])
        self._hi = np.array([np.inf if c.maximum is None else c.maximum for c in inputs])
        self._category = np.array([c.kind == "category" for c in inputs], dtype=bool)
        m = len(inputs)
        self.rows = 0
        self.missing = np.zeros(m, dtype=np.int64)
        self.out_of_range = np.zeros(m, dtype=np.int64)
        self.unseen = np.zeros(m, dtype=np.int64)
        self._chunk_rows = max(1, window // chunks)
        self._ring = np.zeros((chunks, int(self._offsets[-1])), dtype=np.int64)
        self._ring_rows = np.zeros(chunks, dtype=np.int64)
        self._chunk = 0
        self._sample = sample_rows
        self.queued_rows = bytearray()  # one-row calls not folded in: work rows (float64 bytes)
        self.queued_scores = array.array("d")  # ... and their scores
        self.buffer_rows = buffer_rows
        self._lock = threading.Lock()

    # --- updates ------------------------------------------------------------------------------

    def observe(self, work: np.ndarray, score: np.ndarray) -> None:
        """Fold in a batch: `work` the deployment's filled work matrix, `score` one per row
        (NaN where a row failed)."""
        values = work[:, self.slots]
        with self._lock:
            self._observe(values, score)

    def observe_one(self, work: np.ndarray, score: float) -> None:
        """Queue one row (a one-row call's (1, width) float64 work matrix) and its score; folded
        in as a batch every `buffer_rows` rows (see the class docstring)."""
        rows = self.queued_rows
        rows += work.tobytes()  # C order whatever its layout
        scores = self.queued_scores
        scores.append(np.nan if score is None else score)
        if len(scores) >= self.buffer_rows:
            self.flush()

    def flush(self) -> None:
        """Fold in the queued one-row calls now (before reading figures)."""
        rows, scores = self.queued_rows, self.queued_scores
        size = 8 * self.width
        with self._lock:  # one folder at a time
            n = min(len(rows) // size, len(scores))  # complete rows (another may be half queued)
            if not n:
                return
            values = np.frombuffer(rows[:n * size], dtype=np.float64).reshape(n, self.width)
            score = np.frombuffer(scores[:n], dtype=np.float64)
            del rows[:n * size]  # what was appended meanwhile stays queued
            del scores[:n]
            self._observe(values[:, self.slots], score)

    def _observe(self, values: np.ndarray, score: np.ndarray) -> None:
        n = values.shape[0]
        if n == 0:
            return
        missing = np.isnan(values)
        self.rows += n
        self.missing += missing.sum(axis=0)
        self.out_of_range += ((values < self._lo) | (values > self._hi)).sum(axis=0)
        if self._category.any():
            self.unseen += ((values == -1.0) & self._category).sum(axis=0)
        if n > self._sample:
            step = n // self._sample
            values, score = values[::step], score[::step]
        counts = self._ring[self._chunk]
        for j, edges in enumerate(self._edges):
            x = score if j == len(self._edges) - 1 else values[:, j]
            lo, hi = self._offsets[j], self._offsets[j + 1]
            counts[lo:hi] += bin_counts(x, edges)
        self._ring_rows[self._chunk] += len(score)
        if self._ring_rows[self._chunk] >= self._chunk_rows:
            self._chunk = (self._chunk + 1) % len(self._ring)
            self._ring[self._chunk] = 0
            self._ring_rows[self._chunk] = 0

    def refused(self, name: str, reason: str, reached_model: bool) -> None:
        """Count one value of input `name` refused by the manifest's checks (`reason`: missing,
        out_of_range, unseen); see `Monitor.refuse` for `reached_model`."""
        try:
            j = self.names.index(name)
        except ValueError:  # not a tracked input: nothing to count it under
            return
        counter = {"missing": self.missing, "out_of_range": self.out_of_range,
                   "unseen": self.unseen}.get(reason)
        if counter is None:
            return
        with self._lock:
            if reached_model:
                if reason == "missing":
                    return  # already counted: a null is NaN in the work matrix
                self.missing[j] -= 1  # blanked to NaN there, counted as missing: move it
            counter[j] += 1

    # --- reading ------------------------------------------------------------------------------

    def window(self) -> tuple[int, list[np.ndarray]]:
        """Rows in the sliding window, and per column (inputs, then the score) its shares."""
        self.flush()
        with self._lock:
            total = self._ring.sum(axis=0)
            rows = int(self._ring_rows.sum())
        shares = [total[self._offsets[j]:self._offsets[j + 1]] / max(rows, 1)
                  for j in range(len(self.columns))]
        return rows, shares

    def drift(self, min_rows: int = 200) -> dict[str, float]:
        """PSI per column name (inputs and "score") over the window; empty below `min_rows`."""
        rows, shares = self.window()
        if rows < min_rows:
            return {}
        return {c.name: psi(ref, now) for c, ref, now in zip(self.columns, self._reference, shares)}

    def quality(self) -> dict[str, dict[str, int]]:
        """Per input: rows seen, missing, out-of-range and unseen-category counts since start."""
        self.flush()
        with self._lock:
            return {name: {"rows": self.rows, "missing": int(self.missing[j]),
                           "out_of_range": int(self.out_of_range[j]), "unseen": int(self.unseen[j])}
                    for j, name in enumerate(self.names)}
