"""GPU scoring of LightGBM models: detection that never raises, model arrays cached on the device,
and batches streamed through pinned host buffers with copies overlapped with compute.

    cuda_available() -> (bool, reason)          # never raises; cached
    predict_gpu(model, data, raw_score=False)   # numpy / Arrow / pandas, like model.predict
    score_batches_gpu(model, batches)           # Arrow RecordBatches in, one result per batch out
    on_gpu(model) -> GpuLightGBM                # the model's interface, scoring on the GPU
    choose_device(device, rows) -> "cuda" | "cpu"

Results equal the CPU path's bit for bit: the kernels (kernels/cuda_trees.py) follow the same
decisions and sum the trees in the same order in float64; the output transform runs on the host.
Without numba-cuda, a driver or a GPU, ``predict_gpu`` warns once with the reason and scores on
the CPU (``fallback=False`` raises ``NotReadyError`` instead).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
import weakref
from collections import deque

import numpy as np

from scoreline.engine.models.protocols import TreeModel
from scoreline.errors import InputError, ModelFormatError, NotReadyError
from scoreline.kernels.policy import PARALLEL_MIN_ROWS, use_threads

__all__ = [
    "GPU_MIN_ROWS",
    "GpuUnavailableWarning",
    "GpuLightGBM",
    "cuda_available",
    "choose_device",
    "on_gpu",
    "predict_gpu",
    "score_batches_gpu",
    "warn_unavailable",
]

# device="auto" sends a batch to the GPU from this many rows (env SCORELINE_GPU_MIN_ROWS): below
# it, a launch plus two PCIe copies cost more than the CPU kernels take (~1 ms per 2k rows of a
# 100-tree model on one core, against tens of microseconds of fixed cost per GPU batch).
GPU_MIN_ROWS = int(os.environ.get("SCORELINE_GPU_MIN_ROWS", "100000"))

# Rows per batch on the device and input bytes per pinned buffer: big enough that a launch and a
# copy's fixed costs vanish, small enough that two or three buffers stay cheap to pin.
_BATCH_ROWS = 1 << 19
_BATCH_BYTES = 64 << 20
_STREAMS = 2
_KEEP_SLOTS = 32  # free slots kept per model (bulk scoring runs a thread per CPU, a slot each)
_BLOCK = 128  # threads (rows) per block; rows staged in shared memory cap it below for wide models


_SIMULATOR_LOCK = threading.Lock()


class GpuUnavailableWarning(RuntimeWarning):
    """Scoring on the GPU was asked for but no usable GPU is present; the CPU scored instead."""


@functools.cache
def cuda_available() -> tuple[bool, str]:
    """Whether kernels can run on a CUDA GPU, and why not (or which device). Never raises."""
    try:
        cuda = _cuda()
    except Exception as exc:  # ImportError, or numba-cuda's own checks (no cuda-bindings)
        return False, f"numba-cuda is not usable ({exc}); install it with `pip install 'scoreline[gpu]'`"
    try:
        if not cuda.is_available():
            error = cuda.cuda_error()
            detail = " ".join(str(error).split()) if error else "no CUDA GPU was found"
            return False, f"no usable CUDA GPU: {detail}"
        device = cuda.get_current_device()
        name = getattr(device, "name", "simulated device")  # the simulator's device has no name
        name = name.decode() if isinstance(name, bytes) else str(name)
        major, minor = device.compute_capability
    except Exception as exc:  # a driver that loads but fails to initialise
        return False, f"CUDA failed to initialise: {' '.join(str(exc).split())}"
    simulated = " (Numba's CUDA simulator)" if _kernels().SIMULATED else ""
    return True, f"{name}, compute capability {major}.{minor}{simulated}"


def choose_device(device: str | None, rows: int) -> str:
    """``"cuda"`` or ``"cpu"`` for a batch of ``rows``: ``"auto"`` picks the GPU for large batches
    when one is usable; ``None`` reads ``SCORELINE_DEVICE`` (default ``"cpu"``)."""
    device = (device or os.environ.get("SCORELINE_DEVICE") or "cpu").lower()
    if device not in ("cpu", "cuda", "auto"):
        raise InputError(f"expected device 'cpu', 'cuda' or 'auto', got {device!r}", path="device")
    if device == "auto":
        return "cuda" if rows >= GPU_MIN_ROWS and cuda_available()[0] else "cpu"
    return device


def predict_gpu(model, data, raw_score: bool = False, *, fallback: bool = True, batch_rows: int | None = None,
                streams: int = _STREAMS, out=None, num_threads: int | None = None) -> np.ndarray:
    """Score ``data`` on the GPU; same shape and values as ``model.predict(data, raw_score)``.

    Parameters
    ----------
    model:
        A LightGBM model from ``load_lightgbm`` (or a ``GpuLightGBM``).
    data:
        A 2-D numpy array (columns in model order; integers are scored as float32, as LightGBM
        does), a pyarrow Table or RecordBatch (columns by name, copied straight into pinned
        buffers), or a pandas DataFrame.
    fallback:
        Without a usable GPU: True warns once (``GpuUnavailableWarning``) and scores on the CPU;
        False raises ``NotReadyError`` with the reason.
    batch_rows, streams:
        Rows per device batch and how many batches are in flight (each on its own stream).
    out:
        Optional float64 C-contiguous destination of the result's shape.
    num_threads:
        Host threads for the output transform (1: the calling thread only, as bulk workers ask).

    Raises
    ------
    InputError
        As ``model.predict``: wrong shape, a missing or non-numeric column.
    """
    cpu_model = getattr(model, "cpu_model", model)
    ok, reason = cuda_available()
    if not ok:
        if not fallback:
            raise NotReadyError(f"cannot score on the GPU: {reason}", path="device")
        warn_unavailable(reason)
        result = cpu_model.predict(data, raw_score=raw_score, num_threads=num_threads)
        if out is not None:
            out[...] = result
            return out
        return result
    return _DeviceModel.of(cpu_model).predict(data, raw_score, batch_rows, streams, out, num_threads)


def score_batches_gpu(model, batches, raw_score: bool = False, *, batch_rows: int | None = None,
                      streams: int = _STREAMS):
    """Yield, in order, the scores of each Arrow RecordBatch (or Table) of ``batches``.

    Each batch's feature columns are copied into a pinned buffer (feature-major, nulls as NaN)
    while earlier batches copy and compute on their own streams; a batch's result is yielded once
    its copy back is done, so up to ``streams`` batches are in flight. Raises ``NotReadyError``
    without a usable GPU (a streaming caller should choose the CPU up front).
    """
    ok, reason = cuda_available()
    if not ok:
        raise NotReadyError(f"cannot score on the GPU: {reason}", path="device")
    device = _DeviceModel.of(getattr(model, "cpu_model", model))
    yield from device.stream_arrow(batches, raw_score, batch_rows, streams, None)


def on_gpu(model) -> GpuLightGBM:
    """``model`` with its arrays uploaded, scoring on the GPU behind the usual model interface."""
    return model if isinstance(model, GpuLightGBM) else GpuLightGBM(model)


class GpuLightGBM:
    """A LightGBM model that scores on the GPU: the attributes and methods of ``LightGBMModel``.

    ``predict_matrix`` is what bulk scoring calls: concurrent callers each take their own streams
    and buffers, so batches from several threads overlap on the device. ``pred_leaf`` runs on the
    CPU. Pickles as the CPU model does (workers upload again on first use).
    """

    kind = "lightgbm"

    def __init__(self, model, *, batch_rows: int | None = None, streams: int = _STREAMS) -> None:
        if not (isinstance(model, TreeModel) and model.kind == "lightgbm"):
            raise InputError(f"expected a LightGBM model from load_lightgbm, got {type(model).__name__}", path="model")
        self.cpu_model = model
        self.feature_names = model.feature_names
        self.num_features = model.num_features
        self.num_class = model.num_class
        self.objective = model.objective
        self.categories = model.categories
        self.num_trees = model.num_trees
        self._batch_rows = batch_rows
        self._streams = streams
        ok, _ = cuda_available()
        if ok:
            _DeviceModel.of(model)  # upload now, not on the first request

    def __repr__(self) -> str:
        return f"GpuLightGBM({self.cpu_model!r})"

    def __getstate__(self) -> dict:
        return {"model": self.cpu_model, "batch_rows": self._batch_rows, "streams": self._streams}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"], batch_rows=state["batch_rows"], streams=state["streams"])

    @property
    def packed(self):
        return self.cpu_model.packed

    def predict(self, data, raw_score: bool = False, pred_leaf: bool = False, num_threads: int | None = None):
        """``LightGBMModel.predict`` on the GPU (``pred_leaf`` on the CPU)."""
        if pred_leaf:
            return self.cpu_model.predict(data, pred_leaf=True)
        return predict_gpu(self.cpu_model, data, raw_score, batch_rows=self._batch_rows, streams=self._streams,
                           num_threads=num_threads)

    def predict_matrix(self, X: np.ndarray, raw_score: bool = False, num_threads: int | None = None, out=None):
        """``LightGBMModel.predict_matrix`` on the GPU; ``num_threads`` bounds the host threads that
        apply the output transform (bulk workers pass 1)."""
        return predict_gpu(self.cpu_model, X, raw_score, batch_rows=self._batch_rows, streams=self._streams, out=out,
                           num_threads=num_threads)

    def predict_leaf_matrix(self, X: np.ndarray) -> np.ndarray:
        return self.cpu_model.predict_leaf_matrix(X)


# --- internals ----------------------------------------------------------------------------------

_warned = False


def warn_unavailable(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"scoring on the CPU: {reason}", GpuUnavailableWarning, stacklevel=3)


def _cuda():
    """numba.cuda, imported on first use (importing it costs ~0.3 s and needs numba-cuda)."""
    # numba-cuda's typing tables still name numpy.row_stack, which numpy 2.5 removed: restore the
    # alias before the first compile, or every kernel fails to compile (seen on the lent H200).
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack
    from numba import cuda

    return cuda


def _kernels():
    from scoreline.kernels import cuda_trees

    return cuda_trees


class _DeviceModel:
    """One model's arrays on the device, uploaded once, plus a pool of stream slots for its batches."""

    _cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    _cache_lock = threading.Lock()

    @classmethod
    def of(cls, model) -> _DeviceModel:
        packed = model.packed
        with cls._cache_lock:
            device = cls._cache.get(packed)
            if device is None:
                device = cls._cache[packed] = cls(model)
            return device

    def __init__(self, model) -> None:
        cuda = _cuda()
        p = model.packed
        k = p.num_class
        if not np.array_equal(p.trees[:, 2], np.arange(p.trees.shape[0]) % k):
            raise ModelFormatError("packed trees are not in LightGBM's iteration x class order", path="trees")
        # Names and categories only: holding the model (or its packed arrays) would keep the cache
        # entry, and the device memory, alive forever.
        self.feature_names = model.feature_names
        self.categories = model.categories
        self.num_features = p.num_features
        self.num_class = k
        self.link = p.link
        self.link_param = p.link_param
        self.divisor = p.average_divisor
        nodes = cuda.to_device(np.ascontiguousarray(p.nodes).reshape(-1))
        self.thresholds = nodes
        self.words = nodes.view(np.int64)  # the same 16-byte records, read as integers
        self.leaf_value = cuda.to_device(p.leaf_value)
        self.trees = cuda.to_device(np.ascontiguousarray(p.trees))
        # Kernels index these only where the model uses them; a one-element array stands in for an
        # empty one so no zero-size allocation reaches the driver.
        self.cat_bits = cuda.to_device(p.cat_bits if p.cat_bits.size else np.zeros(1, np.uint32))
        self.is_linear = 1 if p.is_linear else 0
        if p.is_linear:
            self.linear = cuda.to_device(p.linear)
            self.linear_const = cuda.to_device(p.linear_const)
            self.linear_feature = cuda.to_device(p.linear_feature if p.linear_feature.size else np.zeros(1, np.int64))
            self.linear_coeff = cuda.to_device(p.linear_coeff if p.linear_coeff.size else np.zeros(1))
        else:
            self.linear = cuda.to_device(np.zeros((1, 2), np.int64))  # never read: is_linear is 0
            self.linear_const = self.linear_coeff = cuda.to_device(np.zeros(1))
            self.linear_feature = cuda.to_device(np.zeros(1, np.int64))
        self._free: list[_Slot] = []
        self._lock = threading.Lock()
        self.block, self.shared_bytes = _launch_shape(self.num_features)

    # -- slots: a stream with pinned and device buffers, reused across calls -------------------

    def _take(self, rows: int, limit: int, dtype: np.dtype) -> _Slot:
        """A free slot for ``rows`` rows, or a new one sized to the next power of two (at most
        ``limit``), so bulk threads asking for 64k-row batches do not pin 512k-row buffers."""
        with self._lock:
            for i, slot in enumerate(self._free):
                if slot.dtype == dtype and slot.capacity >= rows:
                    return self._free.pop(i)
        capacity = min(limit, max(rows, 1 << max(10, (rows - 1).bit_length())))
        return _Slot(capacity, self.num_features, self.num_class, dtype)

    def _give(self, slots) -> None:
        with self._lock:
            self._free.extend(slots)
            # Pinning memory is slow: keep enough slots for every bulk thread's next batch.
            del self._free[: max(0, len(self._free) - _KEEP_SLOTS)]

    # -- scoring -------------------------------------------------------------------------------

    def predict(self, data, raw_score, batch_rows, streams, out, num_threads) -> np.ndarray:
        from scoreline.engine.data.inputs import to_matrix

        model = self
        pa = sys.modules.get("pyarrow")
        arrow = pa is not None and isinstance(data, (pa.Table, pa.RecordBatch))
        if arrow:
            to_matrix(data.slice(0, 0), model.feature_names, model.categories)  # names and types, no rows
            n = data.num_rows
        else:
            integers = isinstance(data, np.ndarray) and data.dtype.kind in "biu"
            data = to_matrix(data, model.feature_names, model.categories, np.float32 if integers else np.float64)
            n = data.shape[0]
        shape = (n, self.num_class) if self.num_class > 1 else (n,)
        if out is None:
            out = np.empty(shape, np.float64)
        elif out.dtype != np.float64 or not out.flags.c_contiguous or out.shape != shape:
            raise InputError(f"expected out as a C-contiguous float64 array of shape {shape}", path="out")
        matrix = out.reshape(n, self.num_class)
        if n == 0:
            return out
        rows = self._batch_rows(batch_rows)
        if arrow:
            batches = (data.to_batches(max_chunksize=rows) if isinstance(data, pa.Table)
                       else [data.slice(i, rows) for i in range(0, n, rows)])
            jobs = _arrow_jobs(model, batches, rows, matrix)
        else:
            jobs = _matrix_jobs(data, rows, matrix)
        for _ in self._run(jobs, raw_score, rows, streams, num_threads):
            pass
        return out

    def stream_arrow(self, batches, raw_score, batch_rows, streams, num_threads):
        from scoreline.engine.data.inputs import to_matrix

        model = self
        rows = self._batch_rows(batch_rows)
        pending: deque = deque()  # per input batch: its result and how many of its slices are still out

        def jobs():
            checked = None
            for batch in batches:
                if checked is None or not batch.schema.equals(checked):
                    to_matrix(batch.slice(0, 0), model.feature_names, model.categories)
                    checked = batch.schema
                n = batch.num_rows
                result = np.empty((n, self.num_class), np.float64)
                parts = (batch.to_batches(max_chunksize=rows) if hasattr(batch, "to_batches")
                         else [batch.slice(i, rows) for i in range(0, n, rows)])
                parts = [part for part in parts if part.num_rows]
                pending.append([result, len(parts)])
                if n == 0:
                    continue
                yield from _arrow_jobs(model, parts, rows, result, tag=pending[-1])

        def flush():
            while pending and pending[0][1] == 0:
                result = pending.popleft()[0]
                yield result if self.num_class > 1 else result.reshape(-1)

        for entry in self._run(jobs(), raw_score, rows, streams, num_threads):
            entry[1] -= 1
            yield from flush()
        yield from flush()

    def _batch_rows(self, batch_rows: int | None) -> int:
        if batch_rows is not None:
            if batch_rows < 1:
                raise InputError(f"batch rows must be at least 1, got {batch_rows}", path="batch_rows")
            return int(batch_rows)
        return max(1024, min(_BATCH_ROWS, _BATCH_BYTES // (8 * max(1, self.num_features))))

    def _run(self, jobs, raw_score: bool, rows: int, streams: int, num_threads: int | None):
        """Send each job (rows, dtype, fill, dest, tag) through the slots; yield its tag when its
        result is in ``dest`` (transformed). Up to ``streams`` jobs are on the device at once: while
        one computes, the host fills the next buffer and finishes the previous one."""
        k = _kernels()
        link = 0 if raw_score else self.link
        divisor = 0.0 if raw_score else self.divisor
        in_flight: deque = deque()
        taken: list[_Slot] = []
        try:
            for job in jobs:
                if len(in_flight) >= max(1, streams):
                    yield self._finish(in_flight.popleft(), link, k, num_threads)
                m, dtype, _, _, _ = job
                busy = {id(s) for s, _ in in_flight}
                slot = next((s for s in taken if id(s) not in busy and s.dtype == dtype and s.capacity >= m), None)
                if slot is None:
                    slot = self._take(m, rows, dtype)
                    taken.append(slot)
                self._launch(slot, job, divisor, k)
                in_flight.append((slot, job))
            while in_flight:
                yield self._finish(in_flight.popleft(), link, k, num_threads)
        finally:
            for slot, _ in in_flight:
                slot.stream.synchronize()
            self._give(taken)

    def _launch(self, slot: _Slot, job, divisor: float, k) -> None:
        m, _, fill, _, _ = job
        width = self.num_features
        feature_major = fill(slot.host_in[: m * width])
        stream = slot.stream
        slot.dev_in[: m * width].copy_to_device(slot.host_in[: m * width], stream=stream)
        args = (slot.dev_in, m, width, 1 if feature_major else 0, self.thresholds, self.words, self.leaf_value,
                self.trees, self.cat_bits, self.linear, self.linear_const, self.linear_feature, self.linear_coeff,
                self.is_linear, self.num_class, divisor, slot.dev_out)
        if self.block:
            grid = (m + self.block - 1) // self.block
            launch = k.score_staged[grid, self.block, stream, self.block * width * 8]
        else:
            grid = (m + _BLOCK - 1) // _BLOCK
            launch = k.score_global[grid, _BLOCK, stream]
        if k.SIMULATED:
            # The simulator runs a kernel by swapping module globals: one launch at a time.
            with _SIMULATOR_LOCK:
                launch(*args)
        else:
            launch(*args)
        slot.dev_out[:m].copy_to_host(slot.host_out[:m], stream=stream)

    def _finish(self, entry, link: int, k, num_threads: int | None):
        slot, (m, _, _, dest, tag) = entry
        slot.stream.synchronize()
        dest[...] = slot.host_out[:m]
        if link:
            # glibc's exp on the host, as the CPU path and LightGBM use: CUDA's may differ by an ulp.
            if m >= PARALLEL_MIN_ROWS and num_threads != 1 and use_threads(num_threads) > 1:
                k.link_rows_parallel(dest, link, self.link_param)
            else:
                k.link_rows(dest, link, self.link_param)
        return tag


class _Slot:
    """A stream with pinned host buffers and device buffers for batches of up to ``capacity`` rows."""

    def __init__(self, capacity: int, width: int, num_class: int, dtype: np.dtype) -> None:
        cuda = _cuda()
        self.capacity = capacity
        self.dtype = np.dtype(dtype)
        self.stream = cuda.stream()
        self.host_in = cuda.pinned_array(capacity * width, self.dtype)
        self.dev_in = cuda.device_array(capacity * width, self.dtype)
        self.host_out = cuda.pinned_array((capacity, num_class), np.float64)
        self.dev_out = cuda.device_array((capacity, num_class), np.float64)


def _launch_shape(width: int) -> tuple[int, int]:
    """(threads per block, shared bytes) for the staged kernel, or (0, 0) when rows are too wide
    to stage at least one warp's worth in the shared memory every device has."""
    limit = _kernels().SHARED_BYTES // (8 * max(1, width))
    block = min(_BLOCK, limit // 32 * 32)
    return (block, block * width * 8) if block >= 32 else (0, 0)


def _copy_pool():
    """Threads that copy into pinned buffers: one thread copies ~5-10 GB/s, a PCIe 5 link moves
    ~50 GB/s, and numpy releases the GIL while it copies."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(_COPY_THREADS, thread_name_prefix="scoreline-gpu-copy")
        return _POOL


_POOL = None
_POOL_LOCK = threading.Lock()
_COPY_THREADS = max(1, min(8, os.cpu_count() or 1))
_PARALLEL_COPY_BYTES = 8 << 20  # below this one thread copies faster than a hand-off costs


def _copy_rows(target: np.ndarray, source: np.ndarray) -> None:
    """target[...] = source for 2-D arrays, split along the first axis over the copy threads."""
    if target.nbytes < _PARALLEL_COPY_BYTES:
        target[...] = source
        return
    pool = _copy_pool()
    step = -(-target.shape[0] // _COPY_THREADS)
    spans = [(a, min(a + step, target.shape[0])) for a in range(0, target.shape[0], step)]

    def copy(span):
        target[span[0]:span[1]] = source[span[0]:span[1]]

    list(pool.map(copy, spans))


def _matrix_jobs(X: np.ndarray, rows: int, matrix: np.ndarray):
    """Jobs over a C- or F-contiguous matrix; each copy into the pinned buffer keeps X's layout
    (row-major rows are one memcpy; feature-major columns one memcpy each): the kernel stages
    either layout with coalesced loads, so nothing is transposed on the host."""
    n = X.shape[0]
    feature_major = X.flags.f_contiguous and not X.flags.c_contiguous
    for a in range(0, n, rows):
        b = min(a + rows, n)

        def fill(buf, a=a, b=b):
            if feature_major:
                _copy_rows(buf.reshape(X.shape[1], b - a), X[a:b].T)
            else:
                _copy_rows(buf.reshape(b - a, X.shape[1]), X[a:b])
            return feature_major

        yield b - a, X.dtype, fill, matrix[a:b], None


def _arrow_jobs(model, batches, rows: int, matrix: np.ndarray, tag=None):
    """Jobs over Arrow batches (each at most ``rows`` rows): column by column into the pinned
    buffer, feature-major, nulls as NaN; categorical columns map through the model's categories."""
    from scoreline.engine.data.inputs import column_as_float, to_matrix

    start = 0
    for batch in batches:
        m = batch.num_rows
        if m == 0:
            continue
        names = batch.schema.names

        def fill(buf, batch=batch, m=m):
            columns = buf.reshape(model.num_features, m)

            def copy(j):
                name = model.feature_names[j]
                position = names.index(name)
                if j in model.categories:
                    one = batch.select([position])
                    columns[j] = to_matrix(one, (name,), {0: model.categories[j]})[:, 0]
                else:
                    columns[j] = column_as_float(batch.column(position), name)

            if columns.nbytes < _PARALLEL_COPY_BYTES:
                for j in range(model.num_features):
                    copy(j)
            else:
                list(_copy_pool().map(copy, range(model.num_features)))
            return True

        yield m, np.dtype(np.float64), fill, matrix[start:start + m], tag
        start += m
