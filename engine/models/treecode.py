"""The per-model compiled tier: one LightGBM model's trees as machine code (like lleaves).

``compile_ensemble(ir)`` turns every tree into straight branches on constants (compare, branch,
..., the leaf's value), emitted as LLVM IR by ``build_module`` below, optimised at -O3 for the
host CPU and kept as an object file under ``default_cache_dir()``; a second load of the same
model, in any process, reads that file instead of compiling. The generic kernel
(kernels/trees.py) walks node records from memory; here each split is a compare against an
immediate constant and a branch the CPU learns, which wins on the shallow trees of real data
(docs/treecode.md has the figures). Semantics are LightGBM's, rule for rule as
docs/lightgbm-semantics.md writes them; raw sums agree with the generic kernel to the bit.

Layout (chosen by measurement): trees are grouped, class by class and in file order, into
chunks of about ``CHUNK_NODES`` split nodes; each chunk is one machine-code function that runs
a whole tile of rows (engine/models/treecode_run.py TILE_ROWS) before the next chunk starts, adding into
the output rows. Generic Numba drivers (compiled once for all models, Numba-cached, nogil) call
the chunks by address, serially or with tiles spread over threads, then apply the link.

Why not Numba-compiled Python source: the first version generated each tree as Python if/else
and compiled it with Numba; Numba's front end took 10-20 ms per split node (about 1-2 minutes
for the 200 x 15 breast-cancer model), LLVM alone takes about a second.

The emitter (``build_module``) reads a spec: (tag, chunks, cat_words), where tag names the module, cat_words is the tuple of every
categorical set's uint32 words, and chunks is a tuple of chunks, each a tuple of trees summed in
order into the output row's column:

    tree = (column, leaf_values, nodes)
    nodes = ((slot, kind, threshold, cat_start, cat_count, left, right), ...)   # node 0 = root

slot is the column of the (float64, C order) row the split reads. A child ``c >= 0`` is node c,
``c < 0`` leaf ``~c``. kind says when a row goes left (LightGBM's rules; thresholds already moved
out of the zero band as engine/models/packing.py ``effective_thresholds`` does):

    LEFT_LE           x <= t                       (NaN right)
    LEFT_LE_OR_NAN    not (x > t)                  (NaN left)
    ZERO_LEFT         |x| <= kZ or not (x > t)     (zero as missing, default left)
    ZERO_RIGHT        x <= t and not |x| <= kZ     (zero as missing, default right)
    CATEGORY          x's category is in the set of cat_count words at cat_start
                      (NaN, negatives, >= 2^31 go right; others truncate toward zero; a
                      category past the set's last word goes right)
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llvmlite import ir

from scoreline.engine.models import codegen
from scoreline.engine.models import treecode_run as run
from scoreline.engine.models.codegen import DOUBLE, I32, I64
from scoreline.engine.models.lightgbm import EnsembleIR, TreeIR
from scoreline.kernels import rules

__all__ = [
    "GENERATOR_VERSION",
    "MAX_AUTO_LEAVES",
    "MAX_DEPTH",
    "CHUNK_NODES",
    "CompiledTrees",
    "unsupported_reason",
    "total_leaves",
    "model_spec",
    "cached_path",
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


@dataclass(frozen=True, eq=False)
class CompiledTrees:
    """One model's machine code, loaded, and how to call it (engine/models/treecode_run.py drivers)."""

    code: codegen.LoadedCode  # holds the engine alive; .addresses are the chunks' entry points
    path: Path  # the cached object file
    cached: bool  # the object file was already there (nothing was compiled)
    compile_seconds: float  # load time of this tier: compile or cache read, plus loading

    def predict(self, X: np.ndarray, divisor: float, link: int, param: float, out: np.ndarray,
                threads: int = 1) -> None:
        """Scores of X's rows into out (n, num_class, C-contiguous float64); threads > 1 spreads
        tiles over that many of Numba's threads (the caller has set them)."""
        n = X.shape[0]
        direct = X.dtype == np.float64 and X.flags.c_contiguous
        largest = run.TILE_ROWS if direct else run.COPY_TILE_ROWS
        if threads > 1:
            # Enough tiles for every thread (a few each, for balance), none larger than the largest.
            tile = max(run.MIN_PARALLEL_TILE, min(largest, -(-n // (4 * threads))))
            kernel = run.predict_parallel if direct else run.predict_parallel_copy
        else:
            tile = largest
            kernel = run.predict_serial if direct else run.predict_serial_copy
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
    """LightGBM's numeric decision as one of the emitter's kinds; ``thr`` is the split's threshold
    already moved out of the zero band (rules.effective_thresholds), which sends 0.0 the same way
    as the file's threshold does."""
    if rules.needs_zero_band(decision, thr):
        return (ZERO_LEFT if rules.default_left(decision) else ZERO_RIGHT), thr
    return (LEFT_LE_OR_NAN if rules.nan_goes_left(decision, thr) else LEFT_LE), thr


def _tree_spec(tree: TreeIR, column: int, cat_base: int) -> tuple:
    nodes = []
    thresholds = rules.effective_thresholds(tree.threshold)
    for i in range(tree.num_leaves - 1):
        decision = int(tree.decision_type[i])
        start = count = 0
        if rules.is_categorical(decision):
            index = int(tree.threshold[i])
            low, high = int(tree.cat_boundaries[index]), int(tree.cat_boundaries[index + 1])
            kind, thr, start, count = CATEGORY, 0.0, cat_base + low, high - low
        else:
            kind, thr = _node_kind(decision, float(thresholds[i]))
        # rows are read in place: a split's slot is its feature's column
        nodes.append((int(tree.split_feature[i]), kind, thr, start, count,
                      int(tree.left_child[i]), int(tree.right_child[i])))
    return (column, tuple(float(v) for v in tree.leaf_value), tuple(nodes))


def model_spec(ir: EnsembleIR) -> tuple:
    """(row width, num_class, chunks, category words): everything the machine code depends on,
    as ``build_module`` reads it; plain tuples, so it pickles."""
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


def cached_path(spec: tuple, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``compile_spec`` keeps (or finds) the object file of ``spec``: named by the sha256 of
    GENERATOR_VERSION, this module's and codegen's source, the spec, the host CPU and LLVM's version."""
    width, num_class, chunks, cat_words = spec
    key = hashlib.sha256()
    key.update(f"{GENERATOR_VERSION}|{codegen.host_key()}|{width}|{num_class}\n".encode())
    key.update(Path(__file__).read_bytes())
    key.update(Path(codegen.__file__).read_bytes())
    key.update(repr((chunks, cat_words)).encode())
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return directory / f"tc_{key.hexdigest()[:40]}.o"


def compile_spec(spec: tuple, cache_dir: str | os.PathLike | None = None) -> CompiledTrees:
    """Compile a ``model_spec`` to machine code, or load it from the cache (``cached_path``);
    ready to call. The same model text maps to the same file in every process on one machine."""
    started = time.perf_counter()
    width, num_class, chunks, cat_words = spec
    path = cached_path(spec, cache_dir)
    digest = path.stem.removeprefix("tc_")
    directory = path.parent
    try:
        obj = path.read_bytes()
        cached = True
    except FileNotFoundError:
        obj = codegen.compile_object(build_module((digest[:16], chunks, cat_words), width, num_class))
        cached = False
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(obj)
        os.replace(tmp, path)  # whole files only: a concurrent reader never sees half an object
    code = codegen.LoadedCode(obj, len(chunks))
    return CompiledTrees(code=code, path=path, cached=cached, compile_seconds=time.perf_counter() - started)


# -- the emitter: one model as LLVM IR

LEFT_LE, LEFT_LE_OR_NAN, ZERO_LEFT, ZERO_RIGHT, CATEGORY = range(5)

DOUBLE = ir.DoubleType()
I32 = ir.IntType(32)
I64 = ir.IntType(64)


def build_module(spec, row_width: int, num_class: int) -> ir.Module:
    """The LLVM module of one model: ``chunk_<i>(double* x, i64 n, double* a)`` per chunk, each
    adding its trees for rows 0..n-1 of x (n x row_width, C order) into the
    accumulators a (n x num_class, C order). A chunk runs all its rows before the next chunk
    starts, so one chunk's code stays in the instruction cache (the 5 x 100 x 31 benchmark
    model's object file is 1.6 MB).
    """
    tag, chunks, cat_words = spec
    module = ir.Module(name=f"scoreline_treecode_{tag}")
    cats = _category_table(module, tag, cat_words)
    for i, chunk in enumerate(chunks):
        _chunk_function(module, f"chunk_{i}", chunk, cats, row_width, num_class)
    return module


def _category_table(module, tag, words):
    name = f"scoreline_treecode_{tag}_cats"
    values = list(words) or [0]
    table = ir.GlobalVariable(module, ir.ArrayType(I32, len(values)), name=name)
    table.linkage = "internal"
    table.global_constant = True
    table.initializer = ir.Constant(ir.ArrayType(I32, len(values)), [int(w) for w in values])
    return table


def _chunk_function(module, name, trees, cats, row_width, num_class):
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [DOUBLE.as_pointer(), I64, DOUBLE.as_pointer()]),
                     name)
    fn.attributes.add("nounwind")
    xs0, n, acc0 = fn.args
    entry = fn.append_basic_block("entry")
    loop = fn.append_basic_block("row")
    done = fn.append_basic_block("done")
    builder = ir.IRBuilder(entry)
    builder.cbranch(builder.icmp_signed(">", n, ir.Constant(I64, 0)), loop, done)
    builder.position_at_end(loop)
    row = builder.phi(I64)
    row.add_incoming(ir.Constant(I64, 0), entry)
    xs = builder.gep(xs0, [builder.mul(row, ir.Constant(I64, row_width))])
    # Every feature the chunk reads, loaded once per row (lleaves passes them as arguments): a
    # mispredicted branch then resumes on a register, not on a load.
    slots = sorted({node[0] for tree in trees for node in tree[2]})
    xs = {slot: builder.load(builder.gep(xs, [ir.Constant(I64, slot)])) for slot in slots}
    acc = builder.gep(acc0, [builder.mul(row, ir.Constant(I64, num_class))])
    columns = sorted({tree[0] for tree in trees})
    sums = {c: builder.load(builder.gep(acc, [ir.Constant(I64, c)])) for c in columns}
    for position, (column, leaf_values, nodes) in enumerate(trees):
        if not nodes:
            value = ir.Constant(DOUBLE, float(leaf_values[0]))
        else:
            merge = fn.append_basic_block(f"t{position}")
            incoming = []
            _emit_node(fn, builder, xs, cats, nodes, leaf_values, 0, merge, incoming, position)
            builder.position_at_end(merge)
            value = builder.phi(DOUBLE)
            for block, leaf in incoming:
                value.add_incoming(leaf if isinstance(leaf, ir.Value) else ir.Constant(DOUBLE, float(leaf)), block)
        sums[column] = builder.fadd(sums[column], value)
    for c in columns:
        builder.store(sums[c], builder.gep(acc, [ir.Constant(I64, c)]))
    following = builder.add(row, ir.Constant(I64, 1))
    row.add_incoming(following, builder.block)
    builder.cbranch(builder.icmp_signed("<", following, n), loop, done)
    builder.position_at_end(done)
    builder.ret_void()
    return fn


def _emit_node(fn, builder, xs, cats, nodes, leaf_values, node, merge, incoming, tree):
    """Branch on node's split at the builder's block; leaves jump to merge (phi incoming)."""
    slot, kind, threshold, cat_start, cat_count, left, right = nodes[node]
    x = xs[slot]
    goes_left = _goes_left(builder, x, kind, threshold, cat_start, cat_count, cats)
    if left < 0 and right < 0:
        # Two leaves: a select, not a branch (a conditional move where the CPU would mispredict
        # half the time on rows that split evenly; lleaves does the same).
        value = builder.select(goes_left, ir.Constant(DOUBLE, float(leaf_values[~left])),
                               ir.Constant(DOUBLE, float(leaf_values[~right])))
        incoming.append((builder.block, value))
        builder.branch(merge)
        return
    left_block = fn.append_basic_block(f"t{tree}n{node}l")
    right_block = fn.append_basic_block(f"t{tree}n{node}r")
    builder.cbranch(goes_left, left_block, right_block)
    for child, block in ((left, left_block), (right, right_block)):
        builder.position_at_end(block)
        if child < 0:
            builder.branch(merge)
            incoming.append((block, leaf_values[~child]))
        else:
            _emit_node(fn, builder, xs, cats, nodes, leaf_values, child, merge, incoming, tree)


def _goes_left(builder, x, kind, threshold, cat_start, cat_count, cats):
    t = ir.Constant(DOUBLE, float(threshold))
    if kind == LEFT_LE:
        return builder.fcmp_ordered("<=", x, t)
    if kind == LEFT_LE_OR_NAN:
        return builder.fcmp_unordered("<=", x, t)
    if kind in (ZERO_LEFT, ZERO_RIGHT):
        in_band = builder.and_(
            builder.fcmp_ordered(">=", x, ir.Constant(DOUBLE, -rules.K_ZERO)),
            builder.fcmp_ordered("<=", x, ir.Constant(DOUBLE, rules.K_ZERO)),
        )
        if kind == ZERO_LEFT:
            return builder.or_(in_band, builder.fcmp_unordered("<=", x, t))
        return builder.and_(builder.fcmp_ordered("<=", x, t), builder.not_(in_band))
    if kind != CATEGORY:
        raise ValueError(f"unknown split kind {kind}")
    valid = builder.and_(
        builder.fcmp_ordered(">", x, ir.Constant(DOUBLE, -1.0)),
        builder.fcmp_ordered("<", x, ir.Constant(DOUBLE, 2147483648.0)),
    )
    # fptosi of NaN or out-of-range values is undefined: convert 0.0 instead and mask by valid.
    category = builder.fptosi(builder.select(valid, x, ir.Constant(DOUBLE, 0.0)), I64)
    slot = builder.lshr(category, ir.Constant(I64, 5))
    in_set = builder.icmp_unsigned("<", slot, ir.Constant(I64, cat_count))
    index = builder.add(ir.Constant(I64, cat_start), builder.select(in_set, slot, ir.Constant(I64, 0)))
    word = builder.load(builder.gep(cats, [ir.Constant(I64, 0), index]))
    shift = builder.trunc(builder.and_(category, ir.Constant(I64, 31)), I32)
    bit = builder.trunc(builder.lshr(word, shift), ir.IntType(1))
    return builder.and_(builder.and_(valid, in_set), bit)
