"""The binned SIMD kernel's machine code (engine/models/simd_bins.py): 16-bit compares, 16-leaf words.

``binned_block`` runs trees first_tree..stop_tree-1 of a ``BinnedForest`` over one block of
LANES rows whose slot values are already bins (int16, slot-major); the drivers (Numba, cached
once for every model, nogil) bin and transpose blocks, call it, and write the rows, tile by tile
as engine/models/simd_run.py's drivers do. Sums per row and class are added in file order, so the
bits are those of the other tiers.

LANES is 128 rows: eight ``<16 x i16>`` words of bits (one AVX2 register each) stay in registers
through a word's nodes, and each node record (one 64-bit load, three fields) serves 128 rows.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic
from scoreline.engine.models.codegen import DOUBLE, I32, I64, add_leaf_values, splat
from scoreline.engine.models.simd import BAND_FLAG, BAND_HIGH, BAND_LOW, NAN_FLAG, NAN_LOW
from scoreline.engine.models.simd_bins import WORD
from scoreline.engine.models.simd_run import LANES as SIMD_LANES
from scoreline.engine.models.simd_run import aligned, cpu_features, finish_rows, group_blocks
from scoreline.kernels.policy import jit, parallel_jit
from scoreline.kernels.rules import in_zero_band

__all__ = ["LANES", "predict_parallel", "predict_serial"]

LANES = 128
# Rows one parallel task scores: 8 blocks, so 10k rows are ten tasks (two threads share them 5:5).
TASK_ROWS = 1024
# Rows per vector: a 512-bit register of 16-bit lanes where the CPU has AVX-512 (the float64
# kernel's 64-lane width: with AVX-512BW, as every AVX-512 x86 CPU since Skylake-SP), 256 bits
# else. SCORELINE_SIMD_LANES forces both (tests of the other width, engine/models/simd_run.py).
_R = 32 if SIMD_LANES == 64 and ("+avx512bw" in cpu_features() or os.environ.get("SCORELINE_SIMD_LANES")) else 16
_V = LANES // _R
_I16 = ir.IntType(16)
_VB = ir.VectorType(_I16, _R)
_VQ = ir.VectorType(I64, _R)


def _const(value):
    return ir.Constant(I64, value)


@intrinsic
def binned_block(typingctx, acc, xq, nodes, segments, trees, leaves, first_tree, stop_tree):
    """Add the leaf of trees first_tree..stop_tree-1, per lane, into acc (num_class x LANES).

    xq: int16 (slots x LANES) bins. Per tree, its words from the last to the first: bits start
    all ones, each node clears its left subtree's leaves in the lanes where ``bin > threshold``;
    a word with a bit left replaces the leaf found so far by 16 * word + its lowest set bit.
    """
    sig = types.void(acc, xq, nodes, segments, trees, leaves, first_tree, stop_tree)

    def codegen(context, builder, signature, args):
        p_acc, p_xq, p_nodes, p_segments, p_trees, p_leaves = (
            context.make_array(signature.args[k])(context, builder, args[k]).data for k in range(6))
        tree_start, tree_stop = args[6], args[7]
        fn = builder.function
        ones = ir.Constant(_VB, [-1] * _R)
        zeros = ir.Constant(_VB, [0] * _R)

        def load(pointer, at):
            return builder.load(builder.gep(pointer, [at]))

        entry = builder.block
        head = fn.append_basic_block("bins_tree")
        end = fn.append_basic_block("bins_end")
        builder.cbranch(builder.icmp_signed("<", tree_start, tree_stop), head, end)
        builder.position_at_end(head)
        t = builder.phi(I64)
        row = builder.mul(t, _const(3))
        first_segment = load(p_trees, row)
        last_segment = builder.sub(load(p_trees, builder.add(row, _const(3))), _const(1))
        leaf_start = load(p_trees, builder.add(row, _const(1)))
        column = load(p_trees, builder.add(row, _const(2)))

        # Words, last to first.
        word_head = fn.append_basic_block("bins_word")
        builder.branch(word_head)
        builder.position_at_end(word_head)
        w = builder.phi(I64)
        found = [builder.phi(_VB) for _ in range(_V)]
        node_start, node_stop = load(p_segments, w), load(p_segments, builder.add(w, _const(1)))
        before = builder.block
        nodes_loop = fn.append_basic_block("bins_node")
        nodes_end = fn.append_basic_block("bins_node_end")
        builder.cbranch(builder.icmp_signed("<", node_start, node_stop), nodes_loop, nodes_end)
        builder.position_at_end(nodes_loop)
        i = builder.phi(I64)
        bits = [builder.phi(_VB) for _ in range(_V)]
        record = load(p_nodes, i)
        span = splat(builder, builder.trunc(record, _I16), _VB)
        threshold = splat(builder, builder.trunc(builder.lshr(record, _const(16)), _I16), _VB)
        base = builder.ashr(record, _const(32))
        updated = []
        for h in range(_V):
            where = builder.bitcast(builder.gep(p_xq, [builder.add(base, _const(_R * h))]), _VB.as_pointer())
            right = builder.icmp_signed(">", builder.load(where, align=2), threshold)
            cleared = builder.select(right, span, zeros)
            updated.append(builder.and_(bits[h], builder.xor(cleared, ones)))
        following = builder.add(i, _const(1))
        loop_end = builder.block
        builder.cbranch(builder.icmp_signed("<", following, node_stop), nodes_loop, nodes_end)
        i.add_incoming(node_start, before)
        i.add_incoming(following, loop_end)
        for phi, new in zip(bits, updated):
            phi.add_incoming(ones, before)
            phi.add_incoming(new, loop_end)
        builder.position_at_end(nodes_end)
        final = []
        for old, new in zip([ones] * _V, updated):
            phi = builder.phi(_VB)
            phi.add_incoming(old, before)
            phi.add_incoming(new, loop_end)
            final.append(phi)
        cttz = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VB, [_VB, ir.IntType(1)]),
                                              f"llvm.cttz.v{_R}i16")
        offset = splat(builder, builder.trunc(builder.mul(builder.sub(w, first_segment), _const(WORD)), _I16), _VB)
        leaf = [builder.select(builder.icmp_unsigned("!=", bits_h, zeros),
                               builder.add(offset, builder.call(cttz, [bits_h, ir.Constant(ir.IntType(1), 0)])), old)
                for bits_h, old in zip(final, found)]
        previous = builder.sub(w, _const(1))
        word_end = builder.block
        leaf_block = fn.append_basic_block("bins_leaf")
        builder.cbranch(builder.icmp_signed(">=", previous, first_segment), word_head, leaf_block)
        w.add_incoming(last_segment, head)
        w.add_incoming(previous, word_end)
        for phi, new in zip(found, leaf):
            phi.add_incoming(zeros, head)
            phi.add_incoming(new, word_end)

        builder.position_at_end(leaf_block)
        add_leaf_values(builder, builder.gep(p_leaves, [leaf_start]), builder.gep(p_acc, [builder.mul(column, _const(LANES))]),
                        [builder.zext(index, _VQ) for index in leaf])
        following_tree = builder.add(t, _const(1))
        builder.cbranch(builder.icmp_signed("<", following_tree, tree_stop), head, end)
        t.add_incoming(tree_start, entry)
        t.add_incoming(following_tree, builder.block)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen


# Lanes one call of ``_search`` or ``_count`` bins: eight <8 x double> vectors of values.
_SEARCH = 64
# Slots with at most this many thresholds are binned by ``_count``, the others by ``_search``.
COUNT_MAX = 64


@intrinsic
def _count(typingctx, xq, at, values, bounds, first, count):
    """``_search``'s result by counting: for each threshold, one broadcast compare and subtract
    per 8 lanes (no gathers; cheaper than the search's levels for a few thresholds)."""
    sig = types.void(xq, at, values, bounds, first, count)
    vectors = _SEARCH // 8

    def codegen(context, builder, signature, args):
        p_xq, _, p_values, p_bounds = (context.make_array(signature.args[k])(context, builder, args[k]).data
                                       if k != 1 else None for k in range(4))
        at, first, count = args[1], args[4], args[5]
        vf, vi = ir.VectorType(DOUBLE, 8), ir.VectorType(I64, 8)
        values = [builder.load(builder.bitcast(builder.gep(p_values, [_const(8 * h)]), vf.as_pointer()), align=8)
                  for h in range(vectors)]
        fn = builder.function
        entry = builder.block
        loop = fn.append_basic_block("count_threshold")
        done = fn.append_basic_block("count_done")
        zero = ir.Constant(vi, [0] * 8)
        stop = builder.add(first, count)
        builder.cbranch(builder.icmp_signed("<", first, stop), loop, done)
        builder.position_at_end(loop)
        i = builder.phi(I64)
        sums = [builder.phi(vi) for _ in range(vectors)]
        threshold = splat(builder, builder.load(builder.gep(p_bounds, [i])), vf)
        # sext of a true compare is -1: subtracting it counts the thresholds below each value.
        added = [builder.sub(sums[h], builder.sext(builder.fcmp_ordered("<", threshold, values[h]), vi))
                 for h in range(vectors)]
        following = builder.add(i, _const(1))
        builder.cbranch(builder.icmp_signed("<", following, stop), loop, done)
        i.add_incoming(first, entry)
        i.add_incoming(following, loop)
        for phi, new in zip(sums, added):
            phi.add_incoming(zero, entry)
            phi.add_incoming(new, loop)
        builder.position_at_end(done)
        totals = [builder.phi(vi) for _ in range(vectors)]
        for h, total in enumerate(totals):
            total.add_incoming(zero, entry)
            total.add_incoming(added[h], loop)
            where = builder.bitcast(builder.gep(p_xq, [builder.add(at, _const(8 * h))]), ir.VectorType(_I16, 8).as_pointer())
            builder.store(builder.trunc(total, ir.VectorType(_I16, 8)), where, align=2)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _search(typingctx, xq, at, values, bounds, first, count):
    """xq[at + j] = how many of bounds[first:first + count] (ascending, count >= 1) are < values[j],
    for j < _SEARCH: a binary search of every lane at once, one gather and compare per level.

    (Written as vectors because LLVM turned the scalar search's select into a branch, which
    mispredicts on real data: 790 ns a row for the breast-cancer model's 30 slots, against 36 ns
    for the whole float64 transpose.)
    """
    sig = types.void(xq, at, values, bounds, first, count)
    vectors = _SEARCH // 8

    def codegen(context, builder, signature, args):
        p_xq, _, p_values, p_bounds = (context.make_array(signature.args[k])(context, builder, args[k]).data
                                       if k != 1 else None for k in range(4))
        at, first, count = args[1], args[4], args[5]
        vf, vi = ir.VectorType(DOUBLE, 8), ir.VectorType(I64, 8)
        pointers = ir.VectorType(DOUBLE.as_pointer(), 8)
        gather = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vf, [pointers, I32, ir.VectorType(ir.IntType(1), 8), vf]),
            "llvm.masked.gather.v8f64.v8p0f64")
        everywhere = ir.Constant(ir.VectorType(ir.IntType(1), 8), [1] * 8)
        base = splat(builder, builder.ptrtoint(p_bounds, I64), vi)
        values = [builder.load(builder.bitcast(builder.gep(p_values, [_const(8 * h)]), vf.as_pointer()), align=8)
                  for h in range(vectors)]

        def compare(positions, value):
            where = builder.inttoptr(builder.add(base, builder.shl(positions, ir.Constant(vi, [3] * 8))), pointers)
            below = builder.call(gather, [where, ir.Constant(I32, 8), everywhere, ir.Constant(vf, ir.Undefined)])
            return builder.fcmp_ordered("<", below, value)

        start = [splat(builder, first, vi)] * vectors
        fn = builder.function
        entry = builder.block
        level = fn.append_basic_block("bins_level")
        done = fn.append_basic_block("bins_found")
        builder.cbranch(builder.icmp_signed(">", count, _const(1)), level, done)
        builder.position_at_end(level)
        n = builder.phi(I64)
        positions = [builder.phi(vi) for _ in range(vectors)]
        half = builder.lshr(n, _const(1))
        halves = splat(builder, half, vi)
        moved = []
        for h in range(vectors):
            probe = builder.add(positions[h], halves)
            moved.append(builder.select(compare(probe, values[h]), probe, positions[h]))
        remaining = builder.sub(n, half)
        builder.cbranch(builder.icmp_signed(">", remaining, _const(1)), level, done)
        n.add_incoming(count, entry)
        n.add_incoming(remaining, level)
        for phi, old, new in zip(positions, start, moved):
            phi.add_incoming(old, entry)
            phi.add_incoming(new, level)
        builder.position_at_end(done)
        finals = [builder.phi(vi) for _ in range(vectors)]
        offset = splat(builder, first, vi)
        for h, final in enumerate(finals):
            final.add_incoming(start[h], entry)
            final.add_incoming(moved[h], level)
            found = builder.add(builder.sub(final, offset), builder.zext(compare(final, values[h]), vi))
            where = builder.bitcast(builder.gep(p_xq, [builder.add(at, _const(8 * h))]), ir.VectorType(_I16, 8).as_pointer())
            builder.store(builder.trunc(found, ir.VectorType(_I16, 8)), where, align=2)
        return context.get_dummy_value()

    return sig, codegen


@jit
def _bin_block(X, start, count, slots, bounds, xq, values):
    """Rows start..start+count-1 (count <= LANES) into xq as bins, one LANES-wide row per slot.

    A slot's values go to ``values``, then ``_search`` bins them _SEARCH lanes at a time (counting the
    thresholds below each value instead was slower at every threshold count measured: docs/treecode.md).
    """
    for s in range(slots.shape[0]):
        feature, kind, first, n = slots[s, 0], slots[s, 1], slots[s, 2], slots[s, 3]
        band = kind == BAND_LOW or kind == BAND_HIGH or kind == BAND_FLAG
        if kind == NAN_FLAG or kind == BAND_FLAG:
            for j in range(count):
                x = np.float64(X[start + j, feature])
                values[j] = 1.0 if np.isnan(x) or (band and in_zero_band(x)) else 0.0
        else:
            fill = -np.inf if kind == NAN_LOW or kind == BAND_LOW else np.inf
            if band:
                for j in range(count):
                    x = np.float64(X[start + j, feature])
                    values[j] = fill if np.isnan(x) or in_zero_band(x) else x
            else:
                for j in range(count):
                    x = np.float64(X[start + j, feature])
                    values[j] = fill if np.isnan(x) else x
        if n <= COUNT_MAX:
            for j in range(0, count, _SEARCH):
                _count(xq, s * LANES + j, values[j:], bounds, first, n)
        else:
            for j in range(0, count, _SEARCH):
                _search(xq, s * LANES + j, values[j:], bounds, first, n)


@jit
def _score_rows(X, begin, end, slots, bounds, nodes, segments, trees, leaves, tiles, xq, acc, values, divisor,
                link, param, out):
    """Rows begin..end-1, at most ``group_blocks`` blocks: bin each block into its own part of
    xq, run the forest tile by tile over every block (each block's sums in file order), finish."""
    size = max(slots.shape[0], 1) * LANES
    width = out.shape[1] * LANES
    blocks = (end - begin + LANES - 1) // LANES
    for b in range(blocks):
        start = begin + b * LANES
        _bin_block(X, start, min(LANES, end - start), slots, bounds, xq[b * size:(b + 1) * size], values)
    acc[:blocks * width] = 0.0
    for k in range(tiles.shape[0] - 1):
        for b in range(blocks):
            binned_block(acc[b * width:(b + 1) * width], xq[b * size:(b + 1) * size], nodes, segments, trees, leaves,
                         tiles[k], tiles[k + 1])
    for b in range(blocks):
        start = begin + b * LANES
        finish_rows(acc[b * width:(b + 1) * width], LANES, start, min(LANES, end - start), divisor, link, param, out)


@jit
def _buffers(group, slots, columns):
    # float64 buffers viewed as int16: 64-byte aligned, zeros (rows past a partial block read 0).
    xq = aligned((group * max(slots.shape[0], 1) * LANES + 3) // 4).view(np.int16)
    return xq, aligned(group * columns * LANES), aligned(LANES)


@jit
def predict_serial(X, slots, bounds, nodes, segments, trees, leaves, tiles, divisor, link, param, out):
    """Score every row of X (float64/float32, C or F order) into out (n, num_class) on this thread.

    divisor: iterations of an average_output model (0.0 otherwise); link/param: kernels/links.py.
    """
    n = X.shape[0]
    group = group_blocks(tiles)
    xq, acc, values = _buffers(group, slots, out.shape[1])
    for start in range(0, n, group * LANES):
        _score_rows(X, start, min(n, start + group * LANES), slots, bounds, nodes, segments, trees, leaves, tiles, xq,
                    acc, values, divisor, link, param, out)


@parallel_jit
def predict_parallel(X, slots, bounds, nodes, segments, trees, leaves, tiles, divisor, link, param, out):
    """``predict_serial`` with tasks of TASK_ROWS rows spread over Numba's threads."""
    n = X.shape[0]
    rows = TASK_ROWS
    group = group_blocks(tiles)
    for task in numba.prange((n + rows - 1) // rows):
        xq, acc, values = _buffers(group, slots, out.shape[1])
        stop = min(n, task * rows + rows)
        for start in range(task * rows, stop, group * LANES):
            _score_rows(X, start, min(stop, start + group * LANES), slots, bounds, nodes, segments, trees, leaves,
                        tiles, xq, acc, values, divisor, link, param, out)
