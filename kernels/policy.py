"""Compile policy for every kernel: on-disk cache, GIL release, exact float flags, parallel threshold."""

from __future__ import annotations

import numba

__all__ = ["FASTMATH", "PARALLEL_MIN_ROWS", "jit", "parallel_jit", "use_threads"]

# Only "no signed zeros" is allowed. The other fast-math flags break LightGBM parity:
# nnan/ninf remove the NaN tests that route missing values, reassoc reorders the per-tree sum,
# contract fuses a*b+c into an FMA (linear leaves), arcp/afn change division and exp results.
FASTMATH = frozenset({"nsz"})

# Below this many rows a parallel launch costs more than it saves (thread wake-up is ~10-30 us,
# while 2,048 rows of a 100-tree model take ~1 ms on one core).
PARALLEL_MIN_ROWS = 2048

_OPTIONS = dict(cache=True, nogil=True, fastmath=set(FASTMATH), error_model="numpy")


def jit(func=None, **overrides):
    """``numba.njit`` with the project's policy (cache, nogil, exact fast-math flags)."""
    options = {**_OPTIONS, **overrides}
    if func is None:
        return numba.njit(**options)
    return numba.njit(**options)(func)


def parallel_jit(func=None, **overrides):
    """``jit`` with ``parallel=True`` for kernels that use ``numba.prange`` over row blocks."""
    return jit(func, parallel=True, **overrides)


def use_threads(num_threads: int | None) -> int:
    """Set Numba's thread count for this calling thread only when it changes; return the count.

    ``None`` or a value <= 0 means every thread Numba was started with. Setting threads costs
    ~1 us, so the hot path calls this only on the parallel branch.
    """
    wanted = numba.config.NUMBA_NUM_THREADS if not num_threads or num_threads <= 0 else num_threads  # type: ignore[attr-defined]  # set at import from the environment
    wanted = min(wanted, numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)
    return wanted
