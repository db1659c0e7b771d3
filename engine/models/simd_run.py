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

import os

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic
from scoreline.engine.models.codegen import DOUBLE, I32, I64, add_leaf_values, splat
from scoreline.engine.models.simd import (
    BAND_FLAG,
    BAND_HIGH,
    BAND_LOW,
    CATEGORY,
    GATHER,
    NAN_FLAG,
    NAN_LOW,
    SELECT_WORDS,
    TABLE,
    WIDE_CATEGORY,
)
from scoreline.kernels.links import apply_link
from scoreline.kernels.policy import jit, parallel_jit
from scoreline.kernels.rules import category_index, in_zero_band

__all__ = ["BLOCKS_PER_TASK", "LANES", "TILE_BLOCKS", "aligned", "cpu_features", "finish_rows", "predict_parallel",
           "predict_serial"]


def _lanes() -> int:
    # SCORELINE_SIMD_LANES (32 or 64) forces the block width, for tests of the other width's code
    # on this CPU (LLVM lowers either to the vectors it has). Numba's cache does not key on it:
    # give such a process a NUMBA_CACHE_DIR of its own.
    forced = os.environ.get("SCORELINE_SIMD_LANES")
    if forced:
        if forced not in ("32", "64"):
            raise ValueError(f"SCORELINE_SIMD_LANES must be 32 or 64, got {forced!r}")
        return int(forced)
    return 64 if "+avx512f" in cpu_features() else 32


def cpu_features() -> str:
    """LLVM's feature string of the CPU Numba compiles for ("+avx2,+avx512f,...")."""
    # NUMBA_CPU_NAME (e.g. "haswell" to check the AVX2 code here) names the target Numba compiles for.
    features = numba.config.CPU_FEATURES if numba.config.CPU_NAME else llvm.get_host_cpu_features().flatten()  # type: ignore[attr-defined]  # numba.config sets these at import
    return features or ""


LANES = _lanes()
# Blocks one parallel task scores (with its own block buffers): 2,048 rows at 64 lanes.
BLOCKS_PER_TASK = 32
# Blocks (with their own transposed rows and sums) that go through one tile of trees before the
# next tile, for models with several tiles (engine/models/simd.py tile_bounds): each tile is read
# from memory once per TILE_BLOCKS blocks. 16 is a choice, not a measured optimum (one block's
# rows are slots x LANES x 8 bytes, 25 KB for 100 slots at 32 lanes, read once per tile).
TILE_BLOCKS = 16

_V = LANES // 8
_VF = ir.VectorType(DOUBLE, 8)
_VI = ir.VectorType(I64, 8)
_ONES = ir.Constant(_VI, [-1] * 8)


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
    return _merge(builder, (bits, before), (updated, end))


def _merge(builder, *incoming):
    """One phi per vector where control flow joins; incoming: (vectors, block they come from)."""
    out = []
    for values in zip(*(vectors for vectors, _ in incoming)):
        phi = builder.phi(_VI)
        for value, (_, block) in zip(values, incoming):
            phi.add_incoming(value, block)
        out.append(phi)
    return out


@intrinsic
def forest_block(typingctx, acc, xs, nodes, segments, trees, leaves, words, first_tree, stop_tree):
    """Add the leaf of trees first_tree..stop_tree-1, per lane, into acc (num_class x LANES,
    slot-major like xs), tree by tree.

    xs: float64 (slots x LANES) block; nodes, segments, trees, leaves, words: the SimdForest
    arrays. Per tree and word: bitvectors start all ones; each numeric node ANDs its mask into the
    lanes where ``x > t`` (ordered: the slots hold no NaN), each categorical node where the lane's
    category is not in its set (narrow: a 64-bit set in the node; wide: word ``c >> 6``
    gathered). A one-word tree's leaf is the lowest set bit; a wider tree's words are evaluated
    from the last to the first, each keeping 64 * word + its lowest set bit where it has one. The
    leaf value is gathered and added to the tree's column. A word's bitvectors stay in vector
    registers through its nodes.
    """
    sig = types.void(acc, xs, nodes, segments, trees, leaves, words, first_tree, stop_tree)

    def codegen(context, builder, signature, args):
        data = [context.make_array(signature.args[k])(context, builder, args[k]).data for k in range(7)]
        p_acc, p_xs, p_nodes, p_segments, p_trees, p_leaves, p_words = data
        p_meta = builder.bitcast(p_nodes, I64.as_pointer())
        tree_start, tree_stop = args[7], args[8]
        fn = builder.function
        entry = builder.block
        head = fn.append_basic_block("simd_tree")
        end = fn.append_basic_block("simd_end")
        builder.cbranch(builder.icmp_signed("<", tree_start, tree_stop), head, end)

        builder.position_at_end(head)
        t = builder.phi(I64)
        row = builder.mul(t, _const(6))

        def field(pointer, at, k):
            return builder.load(builder.gep(pointer, [builder.add(at, _const(k))]))

        first, first_narrow, first_wide, leaf_start, column, first_segment = (field(p_trees, row, k) for k in range(6))
        n_words = builder.sub(field(p_trees, row, 11), first_segment)  # the next tree's first segment

        def record(i):
            at = builder.mul(i, _const(3))
            slot = builder.load(builder.gep(p_meta, [builder.add(at, _const(1))]))
            mask = splat(builder, builder.load(builder.gep(p_meta, [builder.add(at, _const(2))])), _VI)
            return at, builder.mul(slot, _const(LANES)), mask

        def lanes(base, h):
            where = builder.bitcast(builder.gep(p_xs, [builder.add(base, _const(8 * h))]), _VF.as_pointer())
            return builder.load(where, align=8)

        def numeric(i, bits):
            at, base, mask = record(i)
            threshold = splat(builder, builder.load(builder.gep(p_nodes, [at])), _VF)
            return [builder.and_(bits[h], builder.select(builder.fcmp_ordered(">", lanes(base, h), threshold),
                                                         mask, _ONES)) for h in range(_V)]

        def categorical(i, bits):
            at, base, mask = record(i)
            members = splat(builder, builder.load(builder.gep(p_meta, [at])), _VI)
            out = []
            for h in range(_V):
                category = builder.bitcast(lanes(base, h), _VI)  # 0..63, or 64: not in any set
                bit = builder.and_(builder.lshr(members, builder.and_(category, _splat_const(63))), _splat_const(1))
                member = builder.and_(builder.icmp_unsigned("!=", bit, _splat_const(0)),
                                      builder.icmp_signed("<", category, _splat_const(64)))  # AVX2: signed only
                out.append(builder.and_(bits[h], builder.select(member, _ONES, mask)))
            return out

        everywhere = ir.Constant(ir.VectorType(ir.IntType(1), 8), [1] * 8)
        word_pointers = ir.VectorType(I64.as_pointer(), 8)
        gather_words = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VI, [word_pointers, I32, ir.VectorType(ir.IntType(1), 8), _VI]),
            "llvm.masked.gather.v8i64.v8p0i64")

        def wide(i, bits):
            # Word c >> 6 of the node's table holds category c's bit: tables of at most
            # SELECT_WORDS words pick it per lane with selects among broadcast words, wider
            # ones (GATHER) gather it. The branch goes the same way for every node of a feature.
            # A TABLE node stands for all of a segment's splits on one feature: the lane's word of
            # the table (category c at word c) is already the AND of their masks.
            at, base, mask = record(i)
            location = builder.load(builder.gep(p_meta, [at]))
            start = builder.and_(location, _const(GATHER - 1))
            tabling, testing = fn.append_basic_block("simd_table"), fn.append_basic_block("simd_sets")
            selecting, gathering = fn.append_basic_block("simd_select"), fn.append_basic_block("simd_gather")
            joined = fn.append_basic_block("simd_wide_node")
            builder.cbranch(builder.icmp_signed("==", builder.and_(location, _const(TABLE)), _const(0)),
                            testing, tabling)

            builder.position_at_end(tabling)
            table_address = splat(builder, builder.ptrtoint(
                builder.gep(p_words, [builder.and_(location, _const(TABLE - 1))]), I64), _VI)
            looked_up = []
            for h in range(_V):
                category = builder.bitcast(lanes(base, h), _VI)  # 0..limit, the table's last word
                where = builder.add(table_address, builder.shl(category, _splat_const(3)))
                looked_up.append(builder.and_(bits[h], builder.call(
                    gather_words, [builder.inttoptr(where, word_pointers), ir.Constant(I32, 8), everywhere,
                                   ir.Constant(_VI, ir.Undefined)])))
            tabled_end = builder.block
            builder.branch(joined)

            builder.position_at_end(testing)
            builder.cbranch(builder.icmp_signed("==", builder.and_(location, _const(GATHER)), _const(0)),
                            selecting, gathering)

            def members(word_of):
                out = []
                for h in range(_V):
                    category = builder.bitcast(lanes(base, h), _VI)  # 0..limit; limit reads the zero word
                    word = word_of(category)
                    bit = builder.and_(builder.lshr(word, builder.and_(category, _splat_const(63))),
                                       _splat_const(1))
                    member = builder.icmp_unsigned("!=", bit, _splat_const(0))
                    out.append(builder.and_(bits[h], builder.select(member, _ONES, mask)))
                return out, builder.block

            builder.position_at_end(selecting)
            table = [splat(builder, builder.load(builder.gep(p_words, [builder.add(start, _const(k))])), _VI)
                     for k in range(SELECT_WORDS)]

            def select_word(category):
                index = builder.lshr(category, _splat_const(6))
                word = table[0]
                for k in range(1, SELECT_WORDS):
                    word = builder.select(builder.icmp_unsigned("==", index, _splat_const(k)), table[k], word)
                return word

            selected, selected_end = members(select_word)
            builder.branch(joined)

            builder.position_at_end(gathering)
            base_address = splat(builder, builder.ptrtoint(builder.gep(p_words, [start]), I64), _VI)

            def gather_word(category):
                where = builder.add(base_address, builder.shl(builder.lshr(category, _splat_const(6)), _splat_const(3)))
                return builder.call(gather_words, [builder.inttoptr(where, word_pointers), ir.Constant(I32, 8),
                                                   everywhere, ir.Constant(_VI, ir.Undefined)])

            gathered, gathered_end = members(gather_word)
            builder.branch(joined)
            builder.position_at_end(joined)
            return _merge(builder, (looked_up, tabled_end), (selected, selected_end), (gathered, gathered_end))

        def run_nodes(first, first_narrow, first_wide, stop):
            """The bitvectors of one (tree, word) segment after all its nodes."""
            bits = _node_loop(builder, "simd_numeric", first, first_narrow, [_ONES] * _V, numeric)
            bits = _node_loop(builder, "simd_category", first_narrow, first_wide, bits, categorical)
            return _node_loop(builder, "simd_wide", first_wide, stop, bits, wide)

        cttz = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VI, [_VI, ir.IntType(1)]),
                                              "llvm.cttz.v8i64")
        one_word = fn.append_basic_block("simd_one_word")
        many_words = fn.append_basic_block("simd_words")
        exit_leaf = fn.append_basic_block("simd_exit")
        builder.cbranch(builder.icmp_signed("==", n_words, _const(1)), one_word, many_words)

        # One word (trees of up to 64 leaves), read from the tree's row as before there were
        # several: the exit leaf's bit is never cleared (the row went left at every node above
        # it), so cttz never sees zero.
        builder.position_at_end(one_word)
        stop = field(p_trees, row, 6)  # the next tree's first node
        single = [builder.call(cttz, [final, ir.Constant(ir.IntType(1), 1)])
                  for final in run_nodes(first, first_narrow, first_wide, stop)]
        single_end = builder.block
        builder.branch(exit_leaf)

        # Several words, last to first: a word with a set bit replaces the leaf found so far.
        builder.position_at_end(many_words)
        word_loop = fn.append_basic_block("simd_word")
        last_word = builder.sub(n_words, _const(1))
        builder.branch(word_loop)
        builder.position_at_end(word_loop)
        w = builder.phi(I64)
        found = [builder.phi(_VI) for _ in range(_V)]
        at = builder.mul(builder.add(first_segment, w), _const(3))
        bits = run_nodes(*(field(p_segments, at, k) for k in range(4)))
        offset = splat(builder, builder.shl(w, _const(6)), _VI)
        updated = [builder.select(builder.icmp_unsigned("!=", final, _splat_const(0)),
                                  builder.add(offset, builder.call(cttz, [final, ir.Constant(ir.IntType(1), 0)])),
                                  leaf) for final, leaf in zip(bits, found)]
        previous_word = builder.sub(w, _const(1))
        word_end = builder.block
        builder.cbranch(builder.icmp_signed(">=", previous_word, _const(0)), word_loop, exit_leaf)
        w.add_incoming(last_word, many_words)
        w.add_incoming(previous_word, word_end)
        for phi, new in zip(found, updated):
            phi.add_incoming(_splat_const(0), many_words)
            phi.add_incoming(new, word_end)

        builder.position_at_end(exit_leaf)
        leaves_found = _merge(builder, (single, single_end), (updated, word_end))
        add_leaf_values(builder, builder.gep(p_leaves, [leaf_start]), builder.gep(p_acc, [builder.mul(column, _const(LANES))]),
                        leaves_found)
        following_tree = builder.add(t, _const(1))
        builder.cbranch(builder.icmp_signed("<", following_tree, tree_stop), head, end)
        t.add_incoming(tree_start, entry)
        t.add_incoming(following_tree, builder.block)

        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen


@jit
def aligned(size):
    """A float64 buffer of ``size`` starting on a 64-byte boundary (measured up to 40% faster)."""
    raw = np.zeros(size + 8, dtype=np.float64)
    skip = ((64 - raw.ctypes.data % 64) % 64) // 8
    return raw[skip:skip + size]


@jit
def _transpose(X, start, count, slots, xs):
    """Rows start..start+count-1 (count <= LANES) into xs, one LANES-wide row per slot."""
    for s in range(slots.shape[0]):
        feature = slots[s, 0]
        kind = slots[s, 1]
        base = s * LANES
        band = kind == BAND_LOW or kind == BAND_HIGH or kind == BAND_FLAG
        if kind == CATEGORY or kind == WIDE_CATEGORY:
            # As int64 bits: the nodes read them as integers. AVX2 has no vector conversion of
            # doubles to int64, so LLVM converted lane by lane: reading bits took real-flights from
            # 11.6 to 7.2 us a row (11.3 to 5.6 with columns drawn independently; busy machine).
            limit = slots[s, 2]
            as_int = xs.view(np.int64)
            for j in range(count):
                category = category_index(np.float64(X[start + j, feature]))
                as_int[base + j] = category if 0 <= category < limit else limit
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


@jit
def finish_rows(acc, lanes, start, count, divisor, link, param, out):
    """Rows start..start+count-1 of out from a block's sums (num_class x lanes), linked."""
    columns = out.shape[1]
    for j in range(count):
        row = out[start + j]
        for k in range(columns):
            row[k] = acc[k * lanes + j]
            if divisor != 0.0:
                row[k] = row[k] / divisor
        apply_link(row, link, param)


@jit
def group_blocks(tiles):
    """Blocks scored together: one without tiles, TILE_BLOCKS with."""
    return 1 if tiles.shape[0] <= 2 else TILE_BLOCKS


@jit
def _score_rows(X, begin, end, slots, nodes, segments, trees, leaves, words, tiles, xs, acc, divisor, link, param,
                out):
    """Rows begin..end-1, at most ``group_blocks`` blocks: transpose each block into its own
    part of xs, run the forest tile by tile over every block, finish the rows.

    A block adds its trees into its own part of acc in file order across tiles (a tile is a
    consecutive range of trees), so sums are the same bits as one pass over the forest.
    """
    size = max(slots.shape[0], 1) * LANES
    width = out.shape[1] * LANES
    blocks = (end - begin + LANES - 1) // LANES
    for b in range(blocks):
        start = begin + b * LANES
        _transpose(X, start, min(LANES, end - start), slots, xs[b * size:(b + 1) * size])
    acc[:blocks * width] = 0.0
    for k in range(tiles.shape[0] - 1):
        for b in range(blocks):
            forest_block(acc[b * width:(b + 1) * width], xs[b * size:(b + 1) * size], nodes, segments, trees, leaves,
                         words, tiles[k], tiles[k + 1])
    for b in range(blocks):
        start = begin + b * LANES
        finish_rows(acc[b * width:(b + 1) * width], LANES, start, min(LANES, end - start), divisor, link, param, out)


@jit
def predict_serial(X, slots, nodes, segments, trees, leaves, words, tiles, divisor, link, param, out):
    """Score every row of X (float64/float32, C or F order) into out (n, num_class) on this thread.

    divisor: iterations of an average_output model (0.0 otherwise); link/param: kernels/links.py.
    """
    n = X.shape[0]
    group = group_blocks(tiles)
    xs = aligned(group * max(slots.shape[0], 1) * LANES)
    acc = aligned(group * out.shape[1] * LANES)
    for start in range(0, n, group * LANES):
        _score_rows(X, start, min(n, start + group * LANES), slots, nodes, segments, trees, leaves, words, tiles, xs,
                    acc, divisor, link, param, out)


@parallel_jit
def predict_parallel(X, slots, nodes, segments, trees, leaves, words, tiles, divisor, link, param, out):
    """``predict_serial`` with tasks of BLOCKS_PER_TASK blocks spread over Numba's threads."""
    n = X.shape[0]
    rows = BLOCKS_PER_TASK * LANES
    group = group_blocks(tiles)
    for task in numba.prange((n + rows - 1) // rows):
        xs = aligned(group * max(slots.shape[0], 1) * LANES)
        acc = aligned(group * out.shape[1] * LANES)
        stop = min(n, task * rows + rows)
        for start in range(task * rows, stop, group * LANES):
            _score_rows(X, start, min(stop, start + group * LANES), slots, nodes, segments, trees, leaves, words,
                        tiles, xs, acc, divisor, link, param, out)
