"""The per-model compiled tier: one LightGBM model's trees as machine code (like lleaves).

``compile_ensemble(ir)`` turns every tree into straight branches on constants (compare, branch,
..., the leaf's value), emitted as LLVM IR by kernels/treecode.py, optimised at -O3 for the
host CPU and kept as an object file under ``default_cache_dir()``; a second load of the same
model, in any process, reads that file instead of compiling. The generic kernel
(kernels/trees.py) walks node records from memory; here each split is a compare against an
immediate constant and a branch the CPU learns, which wins on the shallow trees of real data
(docs/treecode.md has the figures). Semantics are LightGBM's, rule for rule as
docs/lightgbm-semantics.md writes them; raw sums agree with the generic kernel to the bit.

Layout (chosen by measurement): trees are grouped, class by class and in file order, into
chunks of about ``CHUNK_NODES`` split nodes; each chunk is one machine-code function that runs
a whole tile of rows (kernels/treecode.py TILE_ROWS) before the next chunk starts, adding into
the output rows. Generic Numba drivers (compiled once for all models, Numba-cached, nogil) call
the chunks by address, serially or with tiles spread over threads, then apply the link.

Why not Numba-compiled Python source: the first version generated each tree as Python if/else
and compiled it with Numba; Numba's front end took 10-20 ms per split node (about 1-2 minutes
for the 200 x 15 breast-cancer model), LLVM alone takes about a second.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoreline.engine.models.lightgbm import EnsembleIR, TreeIR
from scoreline.engine.models.packing import effective_thresholds
from scoreline.kernels import treecode as tc

__all__ = [
    "GENERATOR_VERSION",
    "MAX_AUTO_LEAVES",
    "MAX_DEPTH",
    "CHUNK_NODES",
    "CompiledTrees",
    "unsupported_reason",
    "total_leaves",
    "model_spec",
    "compile_spec",
    "compile_ensemble",
    "default_cache_dir",
]

# Bump whenever the generated code changes: the version is part of the file's hash.
GENERATOR_VERSION = 1
# compile="auto" compiles a model only up to this many leaves in all (beyond it the compile
# takes minutes and the generic kernel's memory layout wins anyway).
MAX_AUTO_LEAVES = 20_000
# The emitter recurses once per level; deeper trees (LightGBM allows num_leaves - 1 levels) stay
# on the generic kernel.
MAX_DEPTH = 500
# Split nodes per chunk function: a chunk runs over a tile of rows before the next one, so its
# code should stay in the instruction cache.
CHUNK_NODES = 500

_MISSING_NONE, _MISSING_ZERO, _MISSING_NAN = 0, 1, 2


@dataclass(frozen=True, eq=False)
class CompiledTrees:
    """One model's machine code, loaded, and how to call it (kernels/treecode.py drivers)."""

    code: tc.LoadedCode  # holds the engine alive; .addresses are the chunks' entry points
    path: Path  # the cached object file
    cached: bool  # the object file was already there (nothing was compiled)
    compile_seconds: float  # load time of this tier: compile or cache read, plus loading

    def predict(self, X: np.ndarray, divisor: float, link: int, param: float, out: np.ndarray,
                threads: int = 1) -> None:
        """Scores of X's rows into out (n, num_class, C-contiguous float64); threads > 1 spreads
        tiles over that many of Numba's threads (the caller has set them)."""
        n = X.shape[0]
        direct = X.dtype == np.float64 and X.flags.c_contiguous
        largest = tc.TILE_ROWS if direct else tc.COPY_TILE_ROWS
        if threads > 1:
            # Enough tiles for every thread (a few each, for balance), none larger than the largest.
            tile = max(tc.MIN_PARALLEL_TILE, min(largest, -(-n // (4 * threads))))
            kernel = tc.predict_parallel if direct else tc.predict_parallel_copy
        else:
            tile = largest
            kernel = tc.predict_serial if direct else tc.predict_serial_copy
        kernel(X, self.code.addresses, tile, divisor, link, param, out)


def default_cache_dir() -> Path:
    """``$NUMBA_CACHE_DIR/../treecode``, or ~/.cache/scoreline/treecode without NUMBA_CACHE_DIR."""
    numba_dir = os.environ.get("NUMBA_CACHE_DIR")
    if numba_dir:
        return Path(numba_dir).resolve().parent / "treecode"
    return Path.home() / ".cache" / "scoreline" / "treecode"


def unsupported_reason(ir: EnsembleIR) -> str | None:
    """Why this tier cannot compile ``ir`` (None when it can)."""
    if any(t.is_linear for t in ir.trees):
        return "linear trees"
    deepest = max((t.depth for t in ir.trees), default=0)
    if deepest > MAX_DEPTH:
        return f"a tree {deepest} levels deep (at most {MAX_DEPTH})"
    return None


def total_leaves(ir: EnsembleIR) -> int:
    return sum(t.num_leaves for t in ir.trees)


def _node_kind(decision: int, thr: float) -> tuple[int, float]:
    """LightGBM's numeric decision as one of kernels/treecode.py's kinds; ``thr`` is the split's
    threshold already moved out of the zero band (packing's ``effective_thresholds``: the band
    |x| <= kZ reads as 0.0, LightGBM drops those values from the row), which sends 0.0 the same
    way as the file's threshold does."""
    default_left = bool(decision & 2)
    missing = (decision >> 2) & 3
    zero_goes_left = 0.0 <= thr
    if missing == _MISSING_ZERO and zero_goes_left != default_left:
        return (tc.ZERO_LEFT if default_left else tc.ZERO_RIGHT), thr
    # None: NaN is 0.0; Zero (0.0 already reaches the default side) and NaN: the default side.
    nan_left = zero_goes_left if missing == _MISSING_NONE else default_left
    return (tc.LEFT_LE_OR_NAN if nan_left else tc.LEFT_LE), thr


def _tree_spec(tree: TreeIR, column: int, cat_base: int) -> tuple:
    nodes = []
    thresholds = effective_thresholds(np.asarray(tree.threshold, dtype=np.float64))
    for i in range(tree.num_leaves - 1):
        decision = int(tree.decision_type[i])
        start = count = 0
        if decision & 1:
            index = int(tree.threshold[i])
            low, high = int(tree.cat_boundaries[index]), int(tree.cat_boundaries[index + 1])
            kind, thr, start, count = tc.CATEGORY, 0.0, cat_base + low, high - low
        else:
            kind, thr = _node_kind(decision, float(thresholds[i]))
        # rows are read in place: a split's slot is its feature's column
        nodes.append((int(tree.split_feature[i]), kind, thr, start, count,
                      int(tree.left_child[i]), int(tree.right_child[i])))
    return (column, tuple(float(v) for v in tree.leaf_value), tuple(nodes))


def model_spec(ir: EnsembleIR) -> tuple:
    """(row width, num_class, chunks, category words): everything the machine code depends on,
    as kernels/treecode.py ``build_module`` reads it; plain tuples, so it pickles."""
    k = ir.num_tree_per_iteration
    chunks, chunk, nodes = [], [], 0
    cat_words: list[int] = []
    # Trees of one class together (stable, so each class still sums in file order): a chunk
    # then adds into one accumulator, and a class's trees share their features more often.
    order = sorted(range(len(ir.trees)), key=lambda position: position % k)
    for position in order:
        tree = ir.trees[position]
        if chunk and nodes + tree.num_leaves - 1 > CHUNK_NODES:
            chunks.append(tuple(chunk))
            chunk, nodes = [], 0
        chunk.append(_tree_spec(tree, position % k, len(cat_words)))
        cat_words.extend(int(w) for w in tree.cat_threshold)
        nodes += tree.num_leaves - 1
    if chunk:
        chunks.append(tuple(chunk))
    return ir.num_features, k, tuple(chunks), tuple(cat_words)


def compile_ensemble(ir: EnsembleIR, cache_dir: str | os.PathLike | None = None) -> CompiledTrees:
    """``compile_spec(model_spec(ir))``; raises ValueError when ``unsupported_reason(ir)`` names one."""
    reason = unsupported_reason(ir)
    if reason is not None:
        raise ValueError(f"the compiled tier does not support this model: {reason}")
    return compile_spec(model_spec(ir), cache_dir)


def compile_spec(spec: tuple, cache_dir: str | os.PathLike | None = None) -> CompiledTrees:
    """Compile a ``model_spec`` to machine code, or load it from the cache; ready to call.

    The object file is named by the sha256 of everything the code depends on: GENERATOR_VERSION,
    the emitter's source (kernels/treecode.py), the spec, the host CPU and LLVM's version; the
    same model text therefore maps to the same file in every process on the same machine.
    """
    started = time.perf_counter()
    width, num_class, chunks, cat_words = spec
    key = hashlib.sha256()
    key.update(f"{GENERATOR_VERSION}|{tc.host_key()}|{width}|{num_class}\n".encode())
    key.update(Path(tc.__file__).read_bytes())
    key.update(repr((chunks, cat_words)).encode())
    digest = key.hexdigest()
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / f"tc_{digest[:40]}.o"
    try:
        obj = path.read_bytes()
        cached = True
    except FileNotFoundError:
        obj = tc.compile_object(tc.build_module((digest[:16], chunks, cat_words), width, num_class))
        cached = False
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        tmp.write_bytes(obj)
        os.replace(tmp, path)  # whole files only: a concurrent reader never sees half an object
    code = tc.LoadedCode(obj, len(chunks))
    return CompiledTrees(code=code, path=path, cached=cached, compile_seconds=time.perf_counter() - started)
