"""LLVM machine code for the model tiers: host target, -O3 object code, MCJIT loading, a call-by-address intrinsic.

kernels/ holds pure Numba kernels; everything that emits or loads LLVM code lives here and in the
tiers that use it (engine/models/treecode.py per model, engine/models/simd.py for all models).
"""

from __future__ import annotations

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = [
    "CHUNK_TYPE",
    "DOUBLE",
    "I32",
    "I64",
    "LoadedCode",
    "add_leaf_values",
    "call_chunk",
    "compile_object",
    "host_key",
    "splat",
    "target_machine",
]

DOUBLE = ir.DoubleType()
I32 = ir.IntType(32)
I64 = ir.IntType(64)
# void chunk(double* rows, i64 n, double* sums): the per-model compiled tier's functions.
CHUNK_TYPE = ir.FunctionType(ir.VoidType(), [DOUBLE.as_pointer(), I64, DOUBLE.as_pointer()])


def target_machine():
    """LLVM's target machine for this host CPU at -O3."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                                        opt=3, reloc="default", codemodel="jitdefault")


def host_key() -> str:
    """What object code depends on besides its source: the CPU it is compiled for, LLVM's version."""
    return f"{llvm.get_default_triple()}|{llvm.get_host_cpu_name()}|{llvm.get_host_cpu_features().flatten()}|" \
           f"{'.'.join(map(str, llvm.llvm_version_info))}"


def compile_object(module: ir.Module) -> bytes:
    """Optimise the module at -O3 for the host CPU and return its object code."""
    machine = target_machine()
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
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), target_machine())
        self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self._engine.finalize_object()
        self.addresses = np.array([self._engine.get_function_address(f"chunk_{i}") for i in range(num_chunks)],
                                  dtype=np.int64)
        if (self.addresses == 0).any():
            raise RuntimeError("compiled tree code lacks a chunk function")


@intrinsic
def call_chunk(typingctx, address, x, n, a):
    """Call ``chunk(x.data, n, a.data)`` (CHUNK_TYPE) at a machine-code address (int64)."""
    sig = types.void(address, x, n, a)

    def codegen(context, builder, signature, args):
        xs = context.make_array(signature.args[1])(context, builder, args[1]).data
        acc = context.make_array(signature.args[3])(context, builder, args[3]).data
        fn = builder.inttoptr(args[0], CHUNK_TYPE.as_pointer())
        builder.call(fn, [xs, args[2], acc])
        return context.get_dummy_value()

    return sig, codegen


def splat(builder, value, vector_type):
    """``value`` in every lane of a ``vector_type``."""
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(I32, 0))
    lanes = vector_type.count
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))


def add_leaf_values(builder, leaves, acc, indices) -> None:
    """acc[w * h + j] += leaves[indices[h][j]] for each vector h of w int64 leaf indices (a gather each)."""
    width = indices[0].type.count
    values_type, offsets_type = ir.VectorType(DOUBLE, width), ir.VectorType(I64, width)
    pointers = ir.VectorType(DOUBLE.as_pointer(), width)
    gather = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(values_type, [pointers, I32, ir.VectorType(ir.IntType(1), width), values_type]),
        f"llvm.masked.gather.v{width}f64.v{width}p0f64")
    everywhere = ir.Constant(ir.VectorType(ir.IntType(1), width), [1] * width)
    base = splat(builder, builder.ptrtoint(leaves, I64), offsets_type)
    for h, index in enumerate(indices):
        where = builder.inttoptr(builder.add(base, builder.shl(index, ir.Constant(offsets_type, [3] * width))), pointers)
        values = builder.call(gather, [where, ir.Constant(I32, 8), everywhere, ir.Constant(values_type, ir.Undefined)])
        target = builder.bitcast(builder.gep(acc, [ir.Constant(I64, width * h)]), values_type.as_pointer())
        builder.store(builder.fadd(builder.load(target, align=8), values), target, align=8)
