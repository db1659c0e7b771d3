"""The LightGBM model facade: load_lightgbm(path_or_text) -> LightGBMModel with a Booster-like predict."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from scoreline.engine.models import simd, simd_bins, simd_bins_run, simd_run, treecode
from scoreline.engine.models.lightgbm import pandas_categories, read_lightgbm
from scoreline.engine.models.packing import PackedEnsemble, buffered_layout, pack
from scoreline.engine.models.simd import SimdForest
from scoreline.engine.models.simd_bins import BinnedForest
from scoreline.engine.models.tiers import TierSet
from scoreline.kernels import trees as kernels
from scoreline.kernels.policy import PARALLEL_MIN_ROWS, use_threads

from scoreline.errors import InputError

__all__ = ["LightGBMModel", "load_lightgbm"]

_FLOATS = (np.dtype(np.float64), np.dtype(np.float32))
_TIERS = ("auto", "generic", "simd", "bins", "model")


def load_lightgbm(path_or_text: str | bytes | Path, compile: str = "auto", cache_dir: str | Path | None = None,
                  sample_rows: np.ndarray | None = None) -> LightGBMModel:
    """Load a LightGBM text model (a file path, or the text of ``Booster.model_to_string()``).

    compile: which kernel tier scores the model (engine/models/tiers.py; all give the same bits).
      "auto" (the default): each tier that can hold the model is timed at load on
        ``sample_rows`` (or rows drawn from the model's own thresholds) at a few batch sizes, and
        the fastest serves each batch size; the choice is cached by the model's content. The
        compiled tier takes part when its machine code is cached, or once a background thread
        has compiled it (models of at most ``treecode.MAX_AUTO_LEAVES`` leaves) while the
        others serve: nothing compiles on a request. ``model.tiers`` reports the choice.
      "generic": the shared tree walk (kernels/trees.py); nothing per model.
      "simd": the branch-free SIMD tier (engine/models/simd.py); models it cannot hold (category
        sets past category 4095, trees over 4096 leaves, linear trees) use the generic walk.
      "bins": the SIMD tier on 16-bit bins (engine/models/simd_bins.py): models without
        categorical splits; the others use the generic walk.
      "model": this model's trees compiled to machine code at load (engine/models/treecode.py, like
        lleaves), 1-2 s per few thousand split nodes, read back from ``cache_dir`` on the next
        load; linear trees and trees deeper than ``treecode.MAX_DEPTH`` use the generic walk.
    ``model.tier`` names the tier that scores large batches.
    cache_dir: where compiled models and tier choices are kept (default
      ``$NUMBA_CACHE_DIR/../treecode`` and ``../tiers``).
    sample_rows: representative rows (a (rows, num_features) matrix, e.g. a registry version's
      sample) for compile="auto" to time the tiers on; default: rows drawn from the thresholds.

    Raises ``ModelFormatError`` naming the tree and key for a truncated, inconsistent or
    unsupported file; ``InputError`` (path "compile") for an unknown ``compile``, (path
    "sample_rows") for sample rows of the wrong shape.
    """
    if compile not in _TIERS:
        raise InputError(f"compile must be one of {', '.join(map(repr, _TIERS))}, got {compile!r}", path="compile")
    ir = read_lightgbm(path_or_text)
    spec = forest = binned = None
    excluded = {}
    if compile in ("auto", "model"):
        reason = treecode.unsupported_reason(ir)
        if reason is None and compile == "auto" and treecode.total_leaves(ir) > treecode.MAX_AUTO_LEAVES:
            reason = f"over {treecode.MAX_AUTO_LEAVES} leaves"
        if reason is None:
            spec = treecode.model_spec(ir)
        excluded["model"] = reason
    if compile in ("auto", "simd"):
        excluded["simd"] = simd.unsupported_reason(ir)
        if excluded["simd"] is None:
            forest = simd.build_forest(ir)
    if compile in ("auto", "bins"):
        excluded["bins"] = simd_bins.unsupported_reason(ir)
        if excluded["bins"] is None:
            binned = simd_bins.build_binned(ir, simd_bins_run.LANES)
    return LightGBMModel(
        pack(ir),
        feature_names=ir.feature_names,
        objective=ir.objective,
        categories=pandas_categories(ir),
        treecode_spec=spec,
        simd_forest=forest,
        binned_forest=binned,
        compile=compile,
        cache_dir=cache_dir,
        sample_rows=sample_rows,
        excluded={k: v for k, v in excluded.items() if v is not None},
    )


class LightGBMModel:
    """A packed LightGBM ensemble; ``predict`` returns what ``lightgbm.Booster.predict`` returns."""

    kind = "lightgbm"

    def __init__(self, packed: PackedEnsemble, *, feature_names, objective: str, categories: dict[int, tuple],
                 treecode_spec: tuple | None = None, simd_forest: SimdForest | None = None,
                 binned_forest: BinnedForest | None = None, compile: str = "generic", cache_dir: str | Path | None = None,
                 sample_rows: np.ndarray | None = None, excluded: dict | None = None, choice: str | None = None):
        # Arrays that arrive read-only (Ray's object store, a memory map) are copied once: Numba
        # treats read-only arrays as other types, and a new specialization costs ~10 s to compile
        # while the copy of even a 1000 x 255 model takes milliseconds. Kernels never write them.
        packed = _writable(packed)
        self._packed = packed
        self.feature_names = tuple(feature_names)
        self.num_features = packed.num_features
        self.num_class = packed.num_class
        self.objective = objective
        self.categories = dict(categories)
        self.num_trees = packed.trees.shape[0]
        # Flat views of the node records: the kernels read thresholds and packed words from
        # the same 16-byte records, so one cache line holds four whole nodes.
        self._thresholds = packed.nodes.reshape(-1)
        self._words = packed.nodes.view(np.int64).reshape(-1)
        # Models with categorical splits walk a per-tile buffer of the columns the trees read.
        self._buffered = buffered_layout(packed)
        self._treecode_spec = treecode_spec
        self._simd = simd_forest if simd_forest is None else _writable(simd_forest)
        self._bins = binned_forest if binned_forest is None else _writable(binned_forest)
        self._compile = compile
        self._cache_dir = cache_dir
        # The tiers are loaded here (and their kernels called once by the choice), so no request
        # ever compiles; engine/models/tiers.py holds the choice.
        ready = {"simd"} if self._simd is not None else set()
        ready |= {"bins"} if self._bins is not None else set()
        self._tiers = TierSet(self._run, packed, mode=compile, ready=frozenset(ready),
                              spec=treecode_spec, cache_dir=cache_dir, sample_rows=sample_rows,
                              excluded=excluded or {}, choice_json=choice)
        self._tiers.load()
        self._contrib: Any = None  # engine/models/explain.py's TreeContributions, built on first use

    @property
    def tier(self) -> str:
        """The tier that scores large batches now ("generic", "simd", "bins" or "model"; see ``tiers``)."""
        return self._tiers.tier

    def __repr__(self) -> str:
        return (
            f"LightGBMModel(objective={self.objective!r}, trees={self.num_trees}, "
            f"features={self.num_features}, classes={self.num_class}, tier={self.tier!r})"
        )

    # -- pickling: plain arrays and metadata; the kernels come from Numba's cache on the other side
    def __getstate__(self) -> dict:
        # Plain arrays, metadata and the choice: the other side loads the kernels from Numba's
        # cache and the compiled tier from its object file (or compiles it again).
        return {
            "packed": self._packed,
            "feature_names": self.feature_names,
            "objective": self.objective,
            "categories": self.categories,
            "treecode_spec": self._treecode_spec,
            "simd_forest": self._simd,
            "binned_forest": self._bins,
            "compile": self._compile,
            "cache_dir": self._cache_dir,
            "excluded": self._tiers.excluded,
            "choice": self._tiers.choice_json(),
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(
            state["packed"],
            feature_names=state["feature_names"],
            objective=state["objective"],
            categories=state["categories"],
            treecode_spec=state.get("treecode_spec"),
            simd_forest=state.get("simd_forest"),
            binned_forest=state.get("binned_forest"),
            compile=state.get("compile", "model" if state.get("treecode_spec") else "generic"),
            cache_dir=state.get("cache_dir"),
            excluded=state.get("excluded"),
            choice=state.get("choice"),
        )

    @property
    def tiers(self) -> dict:
        """The kernel choice as plain data (for ``registry show`` and ``/v1/models``): the tier per
        batch size, ns per row of each candidate, excluded tiers and why, whether it was
        measured, cached or pinned, and whether a background compile is still running."""
        return self._tiers.report()

    def wait_for_tiers(self, timeout: float | None = None) -> bool:
        """Wait for a background compile (compile="auto") and its measurement; True once settled."""
        return self._tiers.wait(timeout)

    @property
    def treecode(self):
        """The compiled tier's ``engine.treecode.CompiledTrees`` (object file path, whether it came
        from the cache, load seconds), or None when the generic kernel scores this model."""
        return self._tiers.compiled

    @property
    def packed(self) -> PackedEnsemble:
        """The flat arrays the kernels read (see engine/models/packing.py)."""
        return self._packed

    def predict(self, data, raw_score: bool = False, pred_leaf: bool = False, num_threads: int | None = None,
                device: str = "cpu", pred_contrib: bool = False):
        """Score ``data`` like ``lightgbm.Booster.predict``: same shape, same values.

        data: a 2-D numpy array (columns in model order), a pyarrow Table or RecordBatch, or a
        pandas DataFrame (columns by feature name; nulls are missing values; string or dictionary
        columns of categorical features map through ``categories``).
        Returns float64 (n,) or (n, num_class); with ``pred_leaf`` int32 (n, num_trees); with
        ``pred_contrib`` float64 (n, (num_features + 1) * num_class), see ``predict_contrib_matrix``.
        Raises ``InputError`` naming a missing, misspelled or non-numeric column or a wrong shape.
        device: "cpu"; "cuda" scores on the GPU (same values; without a usable GPU it warns once
        and scores on the CPU); "auto" takes the GPU for batches of at least
        ``scoreline.engine.gpu.backend.GPU_MIN_ROWS`` rows when one is usable. pred_leaf always runs on the CPU.
        """
        if device != "cpu" and not (pred_leaf or pred_contrib):
            from scoreline.engine.gpu import backend as gpu  # numba.cuda only when a GPU is asked for

            rows = data.num_rows if hasattr(data, "num_rows") else len(data)
            if gpu.choose_device(device, rows) == "cuda":
                return gpu.predict_gpu(self, data, raw_score=raw_score, num_threads=num_threads)
        from scoreline.engine.data.inputs import to_matrix  # pyarrow only when data arrives

        X = to_matrix(data, self.feature_names, self.categories, dtype=_lightgbm_dtype(data))
        if pred_leaf:
            return self.predict_leaf_matrix(X)
        if pred_contrib:
            return self.predict_contrib_matrix(X)
        return self.predict_matrix(X, raw_score=raw_score, num_threads=num_threads)

    def predict_matrix(self, X: np.ndarray, raw_score: bool = False, num_threads: int | None = None, out=None):
        """The hot path: X is a C- or F-contiguous float64/float32 (n, num_features) matrix.

        Returns float64 (n,) for one output column, else (n, num_class); writes into ``out`` when
        given (same shape, float64, C-contiguous). No copies of X.
        """
        self._check_matrix(X)
        n = X.shape[0]
        if out is None:
            out = np.empty((n, self.num_class) if self.num_class > 1 else n, dtype=np.float64)
        elif out.dtype != np.float64 or not out.flags.c_contiguous or out.shape[0] != n or out.size != n * self.num_class:
            raise InputError(f"expected out as a C-contiguous float64 array of {n} x {self.num_class}", path="out")
        matrix = out.reshape(n, self.num_class)
        p = self._packed
        # LightGBM averages random-forest outputs only on the transformed path: its raw score is
        # the plain sum of the trees (GBDT::Predict divides, GBDT::PredictRaw does not).
        link, divisor = (0, 0.0) if raw_score else (p.link, p.average_divisor)
        threads = use_threads(num_threads) if n >= PARALLEL_MIN_ROWS and num_threads != 1 else 1
        self._run(self._tiers.pick(n), X, divisor, link, matrix, threads)
        return out

    def _run(self, tier: str, X: np.ndarray, divisor: float, link: int, matrix: np.ndarray, threads: int) -> None:
        """Score X into matrix (n, num_class) with one tier (all tiers give the same bits)."""
        p = self._packed
        parallel = threads > 1
        if tier == "model":
            self._tiers.compiled.predict(X, divisor, link, p.link_param, matrix, threads=threads)
        elif tier == "simd":
            f = self._simd
            kernel = simd_run.predict_parallel if parallel else simd_run.predict_serial
            kernel(X, f.slots, f.nodes, f.segments, f.trees, f.leaves, f.words, f.tiles, divisor, link, p.link_param,
                   matrix)
        elif tier == "bins":
            b = self._bins
            kernel = simd_bins_run.predict_parallel if parallel else simd_bins_run.predict_serial
            kernel(X, b.slots, b.bounds, b.nodes, b.segments, b.trees, b.leaves, b.tiles, divisor, link, p.link_param,
                   matrix)
        elif p.is_linear:
            kernel = kernels.predict_linear_parallel if parallel else kernels.predict_linear_serial
            kernel(X, self._thresholds, self._words, p.leaf_value, p.trees, p.cat_bits, p.linear, p.linear_const,
                   p.linear_feature, p.linear_coeff, divisor, link, p.link_param, matrix)
        elif self._buffered is not None:
            b = self._buffered
            kernel = kernels.predict_buffered_parallel if parallel else kernels.predict_buffered_serial
            kernel(X, b.columns, b.categorical, b.words, p.leaf_value, p.trees, b.cat_bits, divisor, link,
                   p.link_param, matrix, b.nan_right)
        else:
            kernel = kernels.predict_parallel if parallel else kernels.predict_serial
            kernel(X, self._thresholds, self._words, p.leaf_value, p.trees, p.cat_bits, divisor, link,
                   p.link_param, matrix)

    def warm(self, dtypes=(np.float64,), orders: str = "CF", parallel: bool = True) -> None:
        """Load (or compile, on a cold cache) the kernels for these input types before traffic.

        Each tier x dtype x order x serial/parallel is a separate machine-code specialization:
        from Numba's disk cache it takes well under a second, compiling it ~10 s. C order is what
        numpy callers pass, F order what Arrow and pandas input become. Every tier the choice
        uses for some batch size is warmed serially; the parallel path with the large-batch tier.
        """
        out = np.empty((1, self.num_class), dtype=np.float64)
        for dtype in dtypes:
            for order in orders:
                X = np.zeros((1, self.num_features), dtype=dtype, order=order)
                for tier in self._tiers.used:
                    self._run(tier, X, 0.0, 0, out, 1)
                if parallel:
                    big = np.zeros((PARALLEL_MIN_ROWS, self.num_features), dtype=dtype, order=order)
                    self.predict_matrix(big, num_threads=2)

    def predict_leaf_matrix(self, X: np.ndarray) -> np.ndarray:
        """LightGBM's ``pred_leaf``: int32 (n, num_trees), the leaf each tree sends each row to."""
        self._check_matrix(X)
        out = np.empty((X.shape[0], self.num_trees), dtype=np.int32)
        p = self._packed
        kernels.leaf_indices(X, self._thresholds, self._words, p.leaf_index, p.trees, p.cat_bits, out)
        return out

    def predict_contrib_matrix(self, X: np.ndarray) -> np.ndarray:
        """LightGBM's ``pred_contrib`` (engine/models/explain.py): per output the features' SHAP
        values then the expected value, each row summing to the raw score. The first call
        prepares the model's paths and tables; ``ModelFormatError`` for linear trees or a file
        without data counts."""
        self._check_matrix(X)
        if self._contrib is None:
            from scoreline.engine.models.explain import TreeContributions

            self._contrib = TreeContributions(self._packed)
        return self._contrib.contributions(X)

    def _check_matrix(self, X) -> None:
        # Cheap guards: the kernels index X without bounds checks.
        if not isinstance(X, np.ndarray) or X.ndim != 2 or X.shape[1] != self.num_features:
            shape = getattr(X, "shape", type(X).__name__)
            raise InputError(f"expected a (rows, {self.num_features}) matrix, got {shape}", path="X")
        if X.dtype not in _FLOATS or not (X.flags.c_contiguous or X.flags.f_contiguous):
            raise InputError(f"expected a C- or F-contiguous float64/float32 matrix, got {X.dtype}", path="X")


def _writable(arrays_of):
    """The same frozen dataclass with any read-only array copied (PackedEnsemble, SimdForest)."""
    arrays = {name: getattr(arrays_of, name) for name in type(arrays_of).__dataclass_fields__}
    if all(not isinstance(a, np.ndarray) or a.flags.writeable for a in arrays.values()):
        return arrays_of
    return type(arrays_of)(**{n: a.copy() if isinstance(a, np.ndarray) and not a.flags.writeable else a
                              for n, a in arrays.items()})


def _lightgbm_dtype(data):
    """The float type LightGBM's Python package converts ``data`` to, so decisions agree exactly.

    A numpy array of integers or booleans is scored as float32 there (large integers round);
    a DataFrame uses the common type of its columns and float32. Everything else is float64.
    """
    if isinstance(data, np.ndarray):
        return np.float32 if data.dtype.kind in "biu" else np.float64
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(data, pd.DataFrame):
        kinds = [d if isinstance(d, np.dtype) else np.dtype(np.float64) for d in data.dtypes]
        try:
            common = np.result_type(*kinds, np.float32)
        except TypeError:
            return np.float64
        return np.float32 if common == np.float32 else np.float64
    return np.float64
