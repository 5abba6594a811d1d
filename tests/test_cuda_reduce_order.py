"""The CUDA reduction's summation order, bit for bit (run on the CPU through the emulated CUDA
runtime of tests/test_cuda_emulated.py).

templates/cuda/reduce.cu.j2 sums a tensor chunk by chunk: in a chunk, thread t adds elements
t, t + kThreads, ... one after another; the block then halves its kThreads sums in shared memory
(s[t] += s[t + stride], stride = kThreads / 2 down to 1); the chunks' sums are added in chunk
order from zero. `cuda_tensor_sum` writes that order in NumPy; given the values each element
adds (the IR interpreter's, one tensor per element), the kernel's per-tensor sums must be its
bits exactly, for tensors that leave a thread's stride, a chunk and a block's grid partly full.
With it the CUDA norm is as well defined as the host's (tests/test_host_norm_order.py).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import adamgen
from adamgen import ffi
from adamgen.backends.cpp import CUDA
from adamgen.backends.native import kernel_for
from adamgen.compiler import compile_spec
from adamgen.ir.interp import run_function
from tests.test_cuda_emulated import EMU, _scalars, emulated
from tests.test_native import SPECS, _bits, _inputs, _role_arrays

# one element, a partial thread stride, several chunks (EMU: 64 elements, 32 threads) with a tail
SHAPES = [(1,), (5,), (32,), (45,), (64,), (200,), (7, 19), (1000,)]


def cuda_tensor_sum(values: np.ndarray, chunk: int = EMU["chunk_elems"], threads: int = EMU["block_threads"]) -> np.float32:
    """The CUDA reduce kernel's float32 sum of one tensor's per-element values, in its order."""
    values = np.asarray(values, np.float32).ravel()
    total = np.float32(0)
    for begin in range(0, values.size, chunk):
        part = values[begin:begin + chunk]
        acc = np.zeros(threads, np.float32)
        for i in range(0, part.size, threads):  # every thread adds its next element
            seg = part[i:i + threads]
            acc[:seg.size] = acc[:seg.size] + seg
        stride = threads // 2
        while stride > 0:
            acc[:stride] = acc[:stride] + acc[stride:2 * stride]
            stride //= 2
        total = np.float32(total + acc[0])
    return total


def element_values(fn, inputs: dict, shapes) -> dict[str, list[np.ndarray]]:
    """Per reduced output and tensor, the float32 value each element adds: the interpreter on
    one tensor per element, each given its own tensor's per-tensor inputs (a one-element sum is
    the value itself; the value is already in the output's dtype, so nothing rounds)."""
    owners = np.repeat(np.arange(len(shapes)), [int(np.prod(s)) for s in shapes])
    split = {}
    for node in fn.inputs:
        name, value = node.attr("name"), inputs[node.attr("name")]
        if node.shape == "N":
            split[name] = [e.reshape(1) for x in value for e in np.asarray(x).ravel()]
        elif node.shape == "T":
            split[name] = np.asarray(value)[owners]
        else:
            split[name] = value
    out = run_function(fn, split, len(owners))
    bounds = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    return {name: [np.asarray(out[name], np.float32)[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            for name, _ in fn.outputs}


@pytest.mark.parametrize("name, dtype, hw_half", [(n, d, 0) for n in ("full", "clipnorm") for d in ("f32", "f16", "bf16")]
                         + [("full", "f16", 1), ("full", "bf16", 1)])
def test_the_cuda_reduction_adds_in_its_documented_order(name, dtype, hw_half):
    module = compile_spec(adamgen.AdamSpec(**SPECS[name]), dtype).kernels
    fn = module.function("reduce1")
    native = kernel_for(module, dtype, replace(CUDA, hw_half=hw_half, **EMU), "reduce1")
    assert native.ctx.hw_half == hw_half
    r = native.rendered
    kernel = emulated(replace(native.ctx, launch_param_bytes=ffi.launch_param_bytes(len(r.roles), 3), max_grid=2))
    inputs = _inputs(fn, dtype, np.random.default_rng(sum(map(ord, name + dtype))), SHAPES, module=module)
    sums = np.asarray(ffi.call_reduce(kernel, _scalars(r, inputs),
                                      [_role_arrays(role, inputs[role.name]) for role in r.roles if role.read]))
    values = element_values(fn, inputs, SHAPES)
    for j, (out, _) in enumerate(fn.outputs):
        want = np.array([cuda_tensor_sum(v) for v in values[out]], np.float32)
        np.testing.assert_array_equal(_bits(sums[:, j]), _bits(want), err_msg=f"{name} {dtype} {out}")


def test_the_order_is_not_numpys():
    """The check above could not pass with another order: on these values the CUDA order and a
    sequential sum differ."""
    rng = np.random.default_rng(3)
    values = (rng.standard_normal(1000) ** 2).astype(np.float32)
    sequential = np.float32(0)
    for v in values:
        sequential = np.float32(sequential + v)
    assert cuda_tensor_sum(values) != sequential
