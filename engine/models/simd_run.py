"""The SIMD tier's machine code: the forest loop as vector LLVM IR in one Numba intrinsic, and its drivers.

``forest_block`` runs every tree of an ``engine.models.simd.SimdForest`` over one block of
``LANES`` rows already transposed into slots; the drivers (Numba, cached once for every model,
nogil) transpose blocks, call it, and write the rows. Per row and class the trees are added in
file order, as LightGBM does, so sums are bit-identical to the other tiers.

LANES is 64 rows where the CPU has AVX-512 (eight ``<8 x i64>`` bitvectors fit its 32 vector
registers) and 32 elsewhere (AVX2 has 16 registers of half the width); LLVM lowers the same
``<8 x double>`` IR to either. Numba's cache is per CPU, so each machine compiles its own.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic
from scoreline.engine.models.codegen import DOUBLE, I32, I64
from scoreline.engine.models.simd import (
    BAND_FLAG,
    BAND_HIGH,
    BAND_LOW,
    CATEGORY,
    NAN_FLAG,
    NAN_LOW,
)
from scoreline.kernels.links import apply_link
from scoreline.kernels.policy import jit, parallel_jit
from scoreline.kernels.rules import category_index, in_zero_band

__all__ = ["BLOCKS_PER_TASK", "LANES", "predict_parallel", "predict_serial"]


def _lanes() -> int:
    # NUMBA_CPU_NAME (e.g. "haswell" to check the AVX2 code here) names the target Numba compiles for.
    features = numba.config.CPU_FEATURES if numba.config.CPU_NAME else llvm.get_host_cpu_features().flatten()
    return 64 if "+avx512f" in (features or "") else 32


LANES = _lanes()
# Blocks one parallel task scores (with its own block buffers): 2,048 rows at 64 lanes.
BLOCKS_PER_TASK = 32

_V = LANES // 8
_VF = ir.VectorType(DOUBLE, 8)
_VI = ir.VectorType(I64, 8)
_ONES = ir.Constant(_VI, [-1] * 8)


def _splat(builder, value, vector_type):
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined), ir.Constant(ir.VectorType(I32, 8),
                                                                                            [0] * 8))


def _const(value):
    return ir.Constant(I64, value)


def _splat_const(value):
    return ir.Constant(_VI, [value] * 8)


def _node_loop(builder, name, start, stop, bits, body):
    """Emit ``for i in [start, stop): bits = body(i, bits)``; returns the bits after the loop."""
    before = builder.block
    loop = builder.function.append_basic_block(name)
    after = builder.function.append_basic_block(f"{name}_end")
    builder.cbranch(builder.icmp_signed("<", start, stop), loop, after)
    builder.position_at_end(loop)
    i = builder.phi(I64)
    current = [builder.phi(_VI) for _ in bits]
    updated = body(i, current)
    following = builder.add(i, _const(1))
    end = builder.block
    builder.cbranch(builder.icmp_signed("<", following, stop), loop, after)
    i.add_incoming(start, before)
    i.add_incoming(following, end)
    for phi, old, new in zip(current, bits, updated):
        phi.add_incoming(old, before)
        phi.add_incoming(new, end)
    builder.position_at_end(after)
    out = []
    for old, new in zip(bits, updated):
        phi = builder.phi(_VI)
        phi.add_incoming(old, before)
        phi.add_incoming(new, end)
        out.append(phi)
    return out


@intrinsic
def forest_block(typingctx, acc, xs, nodes, trees, leaves, num_trees):
    """Add every tree's leaf, per lane, into acc (num_class x LANES, slot-major like xs).

    xs: float64 (slots x LANES) block; nodes, trees, leaves: the SimdForest arrays. Per tree:
    bitvectors start all ones; each numeric node ANDs its mask into the lanes where ``x > t``
    (ordered: the slots hold no NaN), each categorical node where the lane's category is not in
    its set; the leaf is the lowest set bit, gathered and added to the tree's column. The
    bitvectors stay in vector registers through a tree's nodes.
    """
    sig = types.void(acc, xs, nodes, trees, leaves, num_trees)

    def codegen(context, builder, signature, args):
        data = [context.make_array(signature.args[k])(context, builder, args[k]).data for k in range(5)]
        p_acc, p_xs, p_nodes, p_trees, p_leaves = data
        p_meta = builder.bitcast(p_nodes, I64.as_pointer())
        count = args[5]
        fn = builder.function
        entry = builder.block
        head = fn.append_basic_block("simd_tree")
        end = fn.append_basic_block("simd_end")
        builder.cbranch(builder.icmp_signed(">", count, _const(0)), head, end)

        builder.position_at_end(head)
        t = builder.phi(I64)
        row = builder.mul(t, _const(4))
        field = lambda k: builder.load(builder.gep(p_trees, [builder.add(row, _const(k))]))
        first, first_category, leaf_start, column = field(0), field(1), field(2), field(3)
        stop = field(4)

        def record(i):
            at = builder.mul(i, _const(3))
            slot = builder.load(builder.gep(p_meta, [builder.add(at, _const(1))]))
            mask = _splat(builder, builder.load(builder.gep(p_meta, [builder.add(at, _const(2))])), _VI)
            return at, builder.mul(slot, _const(LANES)), mask

        def lanes(base, h):
            where = builder.bitcast(builder.gep(p_xs, [builder.add(base, _const(8 * h))]), _VF.as_pointer())
            return builder.load(where, align=8)

        def numeric(i, bits):
            at, base, mask = record(i)
            threshold = _splat(builder, builder.load(builder.gep(p_nodes, [at])), _VF)
            return [builder.and_(bits[h], builder.select(builder.fcmp_ordered(">", lanes(base, h), threshold),
                                                         mask, _ONES)) for h in range(_V)]

        def categorical(i, bits):
            at, base, mask = record(i)
            members = _splat(builder, builder.load(builder.gep(p_meta, [at])), _VI)
            out = []
            for h in range(_V):
                category = builder.fptosi(lanes(base, h), _VI)  # 0..63, or 64: not in any set
                bit = builder.and_(builder.lshr(members, builder.and_(category, _splat_const(63))), _splat_const(1))
                member = builder.and_(builder.icmp_unsigned("!=", bit, _splat_const(0)),
                                      builder.icmp_unsigned("<", category, _splat_const(64)))
                out.append(builder.and_(bits[h], builder.select(member, _ONES, mask)))
            return out

        bits = _node_loop(builder, "simd_numeric", first, first_category, [_ONES] * _V, numeric)
        bits = _node_loop(builder, "simd_category", first_category, stop, bits, categorical)

        cttz = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VI, [_VI, ir.IntType(1)]),
                                              "llvm.cttz.v8i64")
        pointers = ir.VectorType(DOUBLE.as_pointer(), 8)
        gather = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VF, [pointers, I32, ir.VectorType(ir.IntType(1), 8), _VF]),
            "llvm.masked.gather.v8f64.v8p0f64")
        leaf_base = _splat(builder, builder.ptrtoint(builder.gep(p_leaves, [leaf_start]), I64), _VI)
        acc_base = builder.mul(column, _const(LANES))
        everywhere = ir.Constant(ir.VectorType(ir.IntType(1), 8), [1] * 8)
        for h, final in enumerate(bits):
            # The exit leaf's bit is never cleared (the row went left at every node above it).
            leaf = builder.call(cttz, [final, ir.Constant(ir.IntType(1), 1)])
            where = builder.inttoptr(builder.add(leaf_base, builder.shl(leaf, _splat_const(3))), pointers)
            values = builder.call(gather, [where, ir.Constant(I32, 8), everywhere, ir.Constant(_VF, ir.Undefined)])
            target = builder.bitcast(builder.gep(p_acc, [builder.add(acc_base, _const(8 * h))]), _VF.as_pointer())
            builder.store(builder.fadd(builder.load(target, align=8), values), target, align=8)
        following_tree = builder.add(t, _const(1))
        builder.cbranch(builder.icmp_signed("<", following_tree, count), head, end)
        t.add_incoming(_const(0), entry)
        t.add_incoming(following_tree, builder.block)

        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen


@jit
def _aligned(size):
    """A float64 buffer of ``size`` starting on a 64-byte boundary (measured up to 40% faster)."""
    raw = np.zeros(size + 8, dtype=np.float64)
    skip = ((64 - raw.ctypes.data % 64) % 64) // 8
    return raw[skip:skip + size]


@jit
def _score_block(X, start, count, slots, nodes, trees, leaves, xs, acc, divisor, link, param, out):
    """Rows start..start+count-1 (count <= LANES): transpose into slots, run the forest, finish."""
    for s in range(slots.shape[0]):
        feature = slots[s, 0]
        kind = slots[s, 1]
        base = s * LANES
        band = kind == BAND_LOW or kind == BAND_HIGH or kind == BAND_FLAG
        if kind == CATEGORY:
            for j in range(count):
                category = category_index(np.float64(X[start + j, feature]))
                xs[base + j] = np.float64(category) if 0 <= category < 64 else 64.0
            continue
        if kind == NAN_FLAG or kind == BAND_FLAG:
            for j in range(count):
                x = np.float64(X[start + j, feature])
                xs[base + j] = 1.0 if np.isnan(x) or (band and in_zero_band(x)) else 0.0
            continue
        fill = -np.inf if kind == NAN_LOW or kind == BAND_LOW else np.inf
        if band:
            for j in range(count):
                x = np.float64(X[start + j, feature])
                xs[base + j] = fill if np.isnan(x) or in_zero_band(x) else x
        else:
            for j in range(count):
                x = np.float64(X[start + j, feature])
                xs[base + j] = fill if np.isnan(x) else x
    acc[:] = 0.0
    forest_block(acc, xs, nodes, trees, leaves, np.int64(trees.shape[0] - 1))
    columns = out.shape[1]
    for j in range(count):
        row = out[start + j]
        for k in range(columns):
            row[k] = acc[k * LANES + j]
            if divisor != 0.0:
                row[k] = row[k] / divisor
        apply_link(row, link, param)


@jit
def predict_serial(X, slots, nodes, trees, leaves, divisor, link, param, out):
    """Score every row of X (float64/float32, C or F order) into out (n, num_class) on this thread.

    divisor: iterations of an average_output model (0.0 otherwise); link/param: kernels/links.py.
    """
    n = X.shape[0]
    xs = _aligned(max(slots.shape[0], 1) * LANES)
    acc = _aligned(out.shape[1] * LANES)
    for start in range(0, n, LANES):
        _score_block(X, start, min(LANES, n - start), slots, nodes, trees, leaves, xs, acc, divisor, link, param,
                     out)


@parallel_jit
def predict_parallel(X, slots, nodes, trees, leaves, divisor, link, param, out):
    """``predict_serial`` with tasks of BLOCKS_PER_TASK blocks spread over Numba's threads."""
    n = X.shape[0]
    rows = BLOCKS_PER_TASK * LANES
    for task in numba.prange((n + rows - 1) // rows):
        xs = _aligned(max(slots.shape[0], 1) * LANES)
        acc = _aligned(out.shape[1] * LANES)
        stop = min(n, task * rows + rows)
        for start in range(task * rows, stop, LANES):
            _score_block(X, start, min(LANES, stop - start), slots, nodes, trees, leaves, xs, acc, divisor, link,
                         param, out)
