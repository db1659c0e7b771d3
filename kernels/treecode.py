"""Machine code for one model's trees (the per-model compiled tier), and the drivers that call it.

engine/models/treecode.py reads a model into ``spec`` (below); ``build_module`` emits each tree as
straight branches on constants (compare, branch, ..., the leaf's value) directly as LLVM IR, the
way lleaves does, ``compile_object`` optimises it at -O3 for the host CPU, and ``LoadedCode``
puts the object code in memory. The drivers (``predict_serial`` ...) are ordinary Numba kernels,
compiled once for every model and kept in Numba's cache: they call a model's chunk functions by
address. Numba's own front end spent 10-20 ms per split node typing and lowering the same trees
written as Python if/else (a 200-tree model took 1-2 minutes); LLVM alone takes about a second.

spec: (tag, chunks, cat_words), where tag names the module, cat_words is the tuple of every
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

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from scoreline.kernels.links import apply_link
from scoreline.kernels.policy import jit, parallel_jit

__all__ = [
    "K_ZERO",
    "LEFT_LE",
    "LEFT_LE_OR_NAN",
    "ZERO_LEFT",
    "ZERO_RIGHT",
    "CATEGORY",
    "TILE_ROWS",
    "COPY_TILE_ROWS",
    "MIN_PARALLEL_TILE",
    "build_module",
    "compile_object",
    "host_key",
    "LoadedCode",
    "predict_serial",
    "predict_serial_copy",
    "predict_parallel",
    "predict_parallel_copy",
]

K_ZERO = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (1e-35f widened to double)

LEFT_LE, LEFT_LE_OR_NAN, ZERO_LEFT, ZERO_RIGHT, CATEGORY = range(5)

_DOUBLE = ir.DoubleType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


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
    table = ir.GlobalVariable(module, ir.ArrayType(_I32, len(values)), name=name)
    table.linkage = "internal"
    table.global_constant = True
    table.initializer = ir.Constant(ir.ArrayType(_I32, len(values)), [int(w) for w in values])
    return table


def _chunk_function(module, name, trees, cats, row_width, num_class):
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [_DOUBLE.as_pointer(), _I64, _DOUBLE.as_pointer()]),
                     name)
    fn.attributes.add("nounwind")
    xs0, n, acc0 = fn.args
    entry = fn.append_basic_block("entry")
    loop = fn.append_basic_block("row")
    done = fn.append_basic_block("done")
    builder = ir.IRBuilder(entry)
    builder.cbranch(builder.icmp_signed(">", n, ir.Constant(_I64, 0)), loop, done)
    builder.position_at_end(loop)
    row = builder.phi(_I64)
    row.add_incoming(ir.Constant(_I64, 0), entry)
    xs = builder.gep(xs0, [builder.mul(row, ir.Constant(_I64, row_width))])
    # Every feature the chunk reads, loaded once per row (lleaves passes them as arguments): a
    # mispredicted branch then resumes on a register, not on a load.
    slots = sorted({node[0] for tree in trees for node in tree[2]})
    xs = {slot: builder.load(builder.gep(xs, [ir.Constant(_I64, slot)])) for slot in slots}
    acc = builder.gep(acc0, [builder.mul(row, ir.Constant(_I64, num_class))])
    columns = sorted({tree[0] for tree in trees})
    sums = {c: builder.load(builder.gep(acc, [ir.Constant(_I64, c)])) for c in columns}
    for position, (column, leaf_values, nodes) in enumerate(trees):
        if not nodes:
            value = ir.Constant(_DOUBLE, float(leaf_values[0]))
        else:
            merge = fn.append_basic_block(f"t{position}")
            incoming = []
            _emit_node(fn, builder, xs, cats, nodes, leaf_values, 0, merge, incoming, position)
            builder.position_at_end(merge)
            value = builder.phi(_DOUBLE)
            for block, leaf in incoming:
                value.add_incoming(leaf if isinstance(leaf, ir.Value) else ir.Constant(_DOUBLE, float(leaf)), block)
        sums[column] = builder.fadd(sums[column], value)
    for c in columns:
        builder.store(sums[c], builder.gep(acc, [ir.Constant(_I64, c)]))
    following = builder.add(row, ir.Constant(_I64, 1))
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
        value = builder.select(goes_left, ir.Constant(_DOUBLE, float(leaf_values[~left])),
                               ir.Constant(_DOUBLE, float(leaf_values[~right])))
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
    t = ir.Constant(_DOUBLE, float(threshold))
    if kind == LEFT_LE:
        return builder.fcmp_ordered("<=", x, t)
    if kind == LEFT_LE_OR_NAN:
        return builder.fcmp_unordered("<=", x, t)
    if kind in (ZERO_LEFT, ZERO_RIGHT):
        in_band = builder.and_(
            builder.fcmp_ordered(">=", x, ir.Constant(_DOUBLE, -K_ZERO)),
            builder.fcmp_ordered("<=", x, ir.Constant(_DOUBLE, K_ZERO)),
        )
        if kind == ZERO_LEFT:
            return builder.or_(in_band, builder.fcmp_unordered("<=", x, t))
        return builder.and_(builder.fcmp_ordered("<=", x, t), builder.not_(in_band))
    if kind != CATEGORY:
        raise ValueError(f"unknown split kind {kind}")
    valid = builder.and_(
        builder.fcmp_ordered(">", x, ir.Constant(_DOUBLE, -1.0)),
        builder.fcmp_ordered("<", x, ir.Constant(_DOUBLE, 2147483648.0)),
    )
    # fptosi of NaN or out-of-range values is undefined: convert 0.0 instead and mask by valid.
    category = builder.fptosi(builder.select(valid, x, ir.Constant(_DOUBLE, 0.0)), _I64)
    slot = builder.lshr(category, ir.Constant(_I64, 5))
    in_set = builder.icmp_unsigned("<", slot, ir.Constant(_I64, cat_count))
    index = builder.add(ir.Constant(_I64, cat_start), builder.select(in_set, slot, ir.Constant(_I64, 0)))
    word = builder.load(builder.gep(cats, [ir.Constant(_I64, 0), index]))
    shift = builder.trunc(builder.and_(category, ir.Constant(_I64, 31)), _I32)
    bit = builder.trunc(builder.lshr(word, shift), ir.IntType(1))
    return builder.and_(builder.and_(valid, in_set), bit)


# -- machine code: LLVM -O3 for the host CPU, an object file that is cached and loaded by MCJIT

def _target_machine():
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                                        opt=3, reloc="default", codemodel="jitdefault")


def host_key() -> str:
    """What the object code depends on besides the model: the CPU it is compiled for, LLVM's version."""
    return f"{llvm.get_default_triple()}|{llvm.get_host_cpu_name()}|{llvm.get_host_cpu_features().flatten()}|" \
           f"{'.'.join(map(str, llvm.llvm_version_info))}"


def compile_object(module: ir.Module) -> bytes:
    """Optimise the module at -O3 for the host CPU and return its object code."""
    machine = _target_machine()
    parsed = llvm.parse_assembly(str(module))
    parsed.triple = machine.triple
    parsed.data_layout = str(machine.target_data)
    parsed.verify()
    tuning = llvm.create_pipeline_tuning_options(speed_level=3)
    builder = llvm.create_pass_builder(machine, tuning)
    builder.getModulePassManager().run(parsed, builder)
    return machine.emit_object(parsed)


class LoadedCode:
    """Object code loaded into its own MCJIT engine; keeps the engine (and so the code) alive."""

    def __init__(self, obj: bytes, num_chunks: int):
        machine = _target_machine()
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), machine)
        self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self._engine.finalize_object()
        self.addresses = np.array([self._engine.get_function_address(f"chunk_{i}") for i in range(num_chunks)],
                                  dtype=np.int64)
        if (self.addresses == 0).any():
            raise RuntimeError("compiled tree code lacks a chunk function")


# -- the drivers: generic Numba kernels (compiled once, cached) calling a model's chunks by address

_CHUNK_TYPE = ir.FunctionType(ir.VoidType(), [_DOUBLE.as_pointer(), _I64, _DOUBLE.as_pointer()])


@intrinsic
def _call_chunk(typingctx, address, x, n, a):
    """Call ``chunk(x.data, n, a.data)`` at a machine-code address (int64)."""
    sig = types.void(address, x, n, a)

    def codegen(context, builder, signature, args):
        xs = context.make_array(signature.args[1])(context, builder, args[1]).data
        acc = context.make_array(signature.args[3])(context, builder, args[3]).data
        fn = builder.inttoptr(args[0], _CHUNK_TYPE.as_pointer())
        builder.call(fn, [xs, args[2], acc])
        return context.get_dummy_value()

    return sig, codegen


# Rows per tile: each chunk of trees runs over a whole tile before the next chunk starts. Larger
# tiles measured faster all the way up to whole batches (1 thread, 100k rows, CPU time; tiles of
# 128 / 4096 / 65536 rows): breast-cancer 1.6 / 2.1 / 2.5 M rows/s, 5 x 100 x 31 0.14 / 0.17 /
# 0.20 M rows/s. lleaves also runs each block of trees over the whole batch.
TILE_ROWS = 65536
# A tile copied first (float32 or F-order input) is at most this many rows: its float64 buffer
# stays small.
COPY_TILE_ROWS = 4096
# The smallest tile the parallel drivers split a batch into.
MIN_PARALLEL_TILE = 256


@jit
def _finish(out, start, stop, divisor, link, param):
    for r in range(start, stop):
        row = out[r]
        if divisor != 0.0:
            for c in range(row.shape[0]):
                row[c] = row[c] / divisor
        apply_link(row, link, param)


@jit
def _direct_tile(X, start, stop, addresses, divisor, link, param, out):
    out[start:stop] = 0.0
    rows = X[start:stop]
    sums = out[start:stop]
    for chunk in range(addresses.shape[0]):
        _call_chunk(addresses[chunk], rows, np.int64(stop - start), sums)
    _finish(out, start, stop, divisor, link, param)


@jit
def _copy_tile(X, start, stop, addresses, divisor, link, param, out, buffer):
    n = stop - start
    for i in range(n):
        for j in range(X.shape[1]):
            buffer[i, j] = X[start + i, j]
    out[start:stop] = 0.0
    sums = out[start:stop]
    for chunk in range(addresses.shape[0]):
        _call_chunk(addresses[chunk], buffer, np.int64(n), sums)
    _finish(out, start, stop, divisor, link, param)


@jit
def predict_serial(X, addresses, tile, divisor, link, param, out):
    """Score every row of a float64 C-order X into out (n, num_class, C-contiguous float64).

    addresses: int64 machine-code addresses of the model's chunks (``LoadedCode.addresses``),
    each run over a tile of ``tile`` rows read in place, in order.
    """
    n = X.shape[0]
    for start in range(0, n, tile):
        _direct_tile(X, start, min(start + tile, n), addresses, divisor, link, param, out)


@jit
def predict_serial_copy(X, addresses, tile, divisor, link, param, out):
    """``predict_serial`` for any other X (float32, F order): each tile is first copied into a
    float64 C buffer (float32 widens exactly, as LightGBM compares it)."""
    n = X.shape[0]
    buffer = np.empty((min(tile, n), X.shape[1]), dtype=np.float64)
    for start in range(0, n, tile):
        _copy_tile(X, start, min(start + tile, n), addresses, divisor, link, param, out, buffer)


@parallel_jit
def predict_parallel(X, addresses, tile, divisor, link, param, out):
    """``predict_serial`` with tiles spread over Numba's threads."""
    n = X.shape[0]
    for t in numba.prange((n + tile - 1) // tile):
        _direct_tile(X, t * tile, min(t * tile + tile, n), addresses, divisor, link, param, out)


@parallel_jit
def predict_parallel_copy(X, addresses, tile, divisor, link, param, out):
    """``predict_serial_copy`` with tiles spread over Numba's threads."""
    n = X.shape[0]
    for t in numba.prange((n + tile - 1) // tile):
        buffer = np.empty((tile, X.shape[1]), dtype=np.float64)
        _copy_tile(X, t * tile, min(t * tile + tile, n), addresses, divisor, link, param, out, buffer)
