"""A deployment's view of an in-memory entity store: every stored row's inputs checked and turned
into work-matrix values once per store snapshot, so a lookup is a key-index probe and a row copy.

Why: through `store.lookup` one key costs an Arrow `select` + `take` (~20 us) and then reading
four Arrow scalars into Python (~17 us), about ten times the rest of the pipeline; and a batch
re-checks the same stored values on every request. Converting the store once at load (the
`compile at load` rule applied to data: ~100 ms and 8 bytes per row and input for 1M customers)
makes a one-key lookup ~3 us and a batch lookup one gather per work column.

It reads the store's public `snapshot()` (its table and key index); a store without one (a
database) keeps using `lookup`. A new snapshot (the files changed) is converted on a background
thread while the old one keeps serving, so no request waits for it.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from scoreline.errors import ScorelineError

from scoreline.engine.data.fields import check_column

if TYPE_CHECKING:  # data/ is below pipeline/: the plan is only handed in
    from scoreline.engine.pipeline.plan import Plan

__all__ = ["StoreView"]


class _Converted:
    """One snapshot's rows as work values: `values[row, j]` goes to work column `slots[j]`."""

    def __init__(self, state, values: np.ndarray, bad: np.ndarray, errors: dict) -> None:
        self.state = state
        self.index = state.index
        self.values = values
        self.bad = bad
        self.errors = errors


class StoreView:
    """Converted rows of `store` for `plan`; `store_columns` maps input name -> store column."""

    @staticmethod
    def supports(store) -> bool:
        """Whether `store` holds integer-keyed data in memory (`EntityStore.snapshot`)."""
        state = store.snapshot()
        return state is not None and state.index.is_int

    def __init__(self, store, plan: Plan, store_columns: dict[str, str], codes) -> None:
        self.store = store
        self.plan = plan
        self.store_columns = store_columns
        self._codes = codes  # deployment._codes: keys -> category codes
        # The work column of each converted value, in the plan's order; the converted rows keep
        # their values sorted by work column, so that where the columns are consecutive (the
        # usual plan) one stored row is copied by a slice assignment (`span`), cheaper than a
        # fancy one for a single request.
        planned = np.array(
            [s for i in plan.inputs for s in ([i.slot] if i.slot >= 0 else []) +
             [c.slot for c in i.codes]], dtype=np.int64)
        self._order = np.argsort(planned, kind="stable")
        self.slots = planned[self._order]
        consecutive = len(self.slots) and (np.diff(self.slots) == 1).all()
        self.span = slice(int(self.slots[0]), int(self.slots[-1]) + 1) if consecutive else self.slots
        self._lock = threading.Lock()
        self._building = False
        self._interval = float(getattr(store, "reload_interval", 2.0) or 2.0)
        self._poke_at = time.monotonic() + self._interval
        self.current = self._convert(store.snapshot())

    def snapshot(self) -> _Converted:
        """The converted snapshot to serve from now (starting a conversion if the store moved on)."""
        now = time.monotonic()
        if now >= self._poke_at:  # the store's own check, at most every reload interval
            self._poke_at = now + self._interval
            self.store.refresh()
        current = self.current
        state = self.store.snapshot()
        if state is not current.state and not self._building:
            with self._lock:
                if not self._building:
                    self._building = True
                    threading.Thread(target=self._rebuild, args=(state,), daemon=True,
                                     name="scoreline-store-view").start()
        return current

    def _rebuild(self, state) -> None:
        try:
            self.current = self._convert(state)
        finally:
            self._building = False

    def _convert(self, state) -> _Converted:
        table = state.table
        n = table.num_rows
        values = np.empty((n, len(self.slots)), dtype=np.float64)
        errors: dict[int, ScorelineError] = {}
        j = 0
        for slot in self.plan.inputs:
            column = table.column(self.store_columns[slot.spec.name])
            numbers, keys = check_column(slot.spec, column.combine_chunks()
                                         if isinstance(column, pa.ChunkedArray) else column, errors)
            if slot.slot >= 0:
                values[:, j] = numbers
                j += 1
            for code in slot.codes:
                values[:, j] = self._codes(keys, code.keys)
                j += 1
        bad = np.zeros(n, dtype=bool)
        if errors:
            bad[list(errors)] = True
        return _Converted(state, values[:, self._order], bad, errors)
