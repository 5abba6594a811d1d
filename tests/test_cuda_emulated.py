"""The rendered CUDA source run on the CPU: everything CUDA-only in it, checked without a GPU.

tests/cuda_emu/cuda_runtime.h stands in for the CUDA runtime (blocks of std::threads meeting at a
barrier for __syncthreads, a mutex for the reduction's block counter). The test rewrites three things g++ cannot
take (the `<<<...>>>` launch, the handler's stream parameter and its stream binding), compiles the
rest as it is and registers it as an XLA FFI CPU target, so the same Python call path feeds it.
That runs the CUDA-only code: the launch table and its splitting over several launches, the
grid-stride chunk walk, the 16-byte vector path and its alignment test, the scalar tails, packed
slabs, the block reduction in shared memory and the fixed-order combination of its partial sums. On a GPU, tests/test_native.py runs the real thing.
"""
from __future__ import annotations

import ctypes
import hashlib
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adamgen
from adamgen import ffi, toolchain
from adamgen.backends.cpp import CUDA, HOST
from adamgen.backends.native import kernel_for, one_element_conditions
from adamgen.compiler import compile_spec
from adamgen.ir.interp import run_function
from tests.strategies import configs
from tests.test_toolchain import HAS_NVCC
from tests.test_native import SPECS, _bits, _inputs, _role_arrays, _unpack

EMU_INCLUDE = Path(__file__).resolve().parent / "cuda_emu"
# Small enough that a few tensors need several chunks, several blocks per launch and several
# launches per call; SHAPES give full vectors, tails shorter than a vector and one-element tensors.
SHAPES = [(7,), (1,), (300,), (5, 6), (1000,), (130,), (64,)]
EMU = dict(chunk_elems=64, block_threads=32)
REWRITES = ((".Ctx<xla::ffi::PlatformStream<cudaStream_t>>()", ""),
            ("impl(cudaStream_t stream, ", "impl("))


def cuda_include_dir() -> Path | None:
    """Where cuda_fp16.h is (hw_half kernels include it; in host code it converts in software, to
    the same round-to-nearest-even bits): CUDA_HOME, the toolkit of nvcc, the PyPI runtime wheel."""
    import os
    import sysconfig

    roots = [Path(os.environ[k]) / "include" for k in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(k)]
    if HAS_NVCC:
        nvcc = toolchain.find_cuda_compiler().path.resolve()
        roots.append(nvcc.parent.parent / "include")
    roots += [Path(sysconfig.get_paths()["purelib"]) / "nvidia" / sub / "include" for sub in ("cu13", "cuda_runtime")]
    roots.append(Path("/usr/local/cuda/include"))
    return next((r for r in roots if (r / "cuda_fp16.h").is_file()), None)


def emulated(ctx: ffi.KernelContext, edit: Callable[[str], str] = lambda src: src) -> ffi.Kernel:
    """Render the CUDA flavour of `ctx` (then `edit` it), rewrite what g++ cannot compile, build it
    for the host against the emulation header and register it as a CPU FFI target."""
    source = edit(ffi.render(ctx, "cuda"))
    for old, new in REWRITES:
        assert source.count(old) == 1, f"the CUDA template changed: {old!r} no longer appears once"
        source = source.replace(old, new)
    vector_test = "if (all_aligned(AllRoles{}, p)) {"
    if ctx.n_reduce == 0:  # the update kernel: count the chunks that take the vector path
        assert source.count(vector_test) == 1, "the CUDA template changed: no single alignment test"
        source = source.replace(vector_test, "if (all_aligned(AllRoles{}, p) && adamgen_emu_count_vector()) {")
    # The compiler cache keys on the source text: name the stand-in header's contents in it, so
    # an edit of the header rebuilds the kernels.
    header = hashlib.sha256((EMU_INCLUDE / "cuda_runtime.h").read_bytes()).hexdigest()[:16]
    source = f"// emulated with cuda_runtime.h {header}\n{source}"
    source, launches = re.subn(r"(\w+)<<<([^;]*?)>>>\(([^;]*)\);", r"adamgen_emu_launch(\1, \2, \3);", source)
    assert launches == 1, "the CUDA template changed: expected one <<<...>>> launch"
    flags = ["-std=c++20", "-O1", f"-I{EMU_INCLUDE}", "-Wno-unknown-pragmas"]
    if ctx.hw_half:
        include = cuda_include_dir()
        if include is None:
            pytest.skip("hw_half kernels include cuda_fp16.h: no CUDA headers here (the test extra's "
                        "nvidia-cuda-nvcc and nvidia-cuda-cccl wheels bring them, so CI runs this)")
        flags += [f"-I{include}", "-DADAMGEN_EMU_CUDA_HEADERS"]
    lib = toolchain.compile_host(source, tuple(flags))
    name = ffi.target_name(ctx, source, "cpu")
    ffi.register(lib, ctx.symbol, name, "cpu")
    return ffi.Kernel(ctx, "cpu", name, lib, source)


def _scalars(r, inputs):
    return jnp.asarray([np.float32(inputs[k]) for k in r.scalars] or [0.0], jnp.float32)


def _pertensor(r, inputs, n):
    if not r.pertensor:
        return jnp.zeros((n, 0), jnp.float32)
    return jnp.stack([jnp.asarray(inputs[k], jnp.float32) for k in r.pertensor], axis=1)


@pytest.mark.parametrize("layout", ["per-tensor", "packed", "packed-unaligned"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "f16_f32norm"])
@pytest.mark.parametrize("name", ["plain", "full", "clipvalue"])
def test_cuda_update_kernel_bit_exact_against_interpreter(name, dtype, layout):
    """Bit for bit the interpreter's numbers, with 2 tensors per launch (so a call is 4 launches)
    and at most 3 blocks per launch (so blocks stride over chunks). "packed-unaligned" packs the
    slabs with no padding, so most tensors start off a 16-byte boundary: the scalar path."""
    _check_update_kernel(adamgen.AdamSpec(**SPECS[name]), dtype, layout, sum(map(ord, name + dtype + layout)))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs(), layout=st.sampled_from(["per-tensor", "packed", "packed-unaligned"]))
def test_cuda_update_kernel_bit_exact_on_random_configs(config, layout):
    """Random Keras configurations (every option, schedules, clipping kinds, dtypes, weight-decay
    exclusions through the random per-tensor decay mask) through the emulated CUDA kernel."""
    _check_update_kernel(adamgen.AdamSpec(**config["kw"]), config["dtype"], layout, config["seed"])


@pytest.mark.parametrize("dtype", ["f16", "bf16", "f16_f32norm", "bf16_f32norm"])
@pytest.mark.parametrize("name", ["plain", "full", "clipvalue"])
def test_cuda_hardware_half_conversions_bit_exact_against_interpreter(name, dtype):
    """hw_half=1: the half loads, stores and per-op roundings by cuda_fp16.h / cuda_bf16.h (here in
    their host form), the interpreter's bits as the bit-level form gives them."""
    _check_update_kernel(adamgen.AdamSpec(**SPECS[name]), dtype, "packed", sum(map(ord, name + dtype)), hw_half=1)


def _check_update_kernel(spec, dtype: str, layout: str, seed: int, **knobs) -> None:
    module = compile_spec(spec, dtype).kernels
    fn = module.function("update")
    native = kernel_for(module, dtype, replace(CUDA, packed_slots=layout != "per-tensor", **EMU, **knobs))
    assert native.ctx.hw_half == knobs.get("hw_half", 0)
    r = native.rendered
    align = 4 if layout == "packed-unaligned" else native.ctx.slab_align_bytes
    ctx = replace(native.ctx, launch_param_bytes=ffi.launch_param_bytes(len(r.roles), 2), max_grid=3,
                  slab_align_bytes=align)
    kernel = emulated(ctx)
    rng = np.random.default_rng(seed)
    inputs = _inputs(fn, dtype, rng, SHAPES, module=module)
    want = run_function(fn, inputs, len(SHAPES))
    args = [_role_arrays(role, inputs[role.name], align) for role in r.roles]
    counter = ctypes.CDLL(str(kernel.lib_path)).adamgen_emu_vector_count
    counter.restype = ctypes.c_long
    before = counter()
    outs = jax.block_until_ready(ffi.call(kernel, _scalars(r, inputs), args, _pertensor(r, inputs, len(SHAPES))))
    vector_chunks, n_chunks = counter() - before, sum(-(-int(np.prod(s)) // EMU["chunk_elems"]) for s in SHAPES)
    if layout == "packed-unaligned":  # tensors off a 16-byte boundary take the scalar path
        assert 0 < vector_chunks < n_chunks
    else:  # every chunk of every tensor takes the vector path
        assert vector_chunks == n_chunks
    written = [role for role in r.roles if role.written]
    got = {role.name: _unpack(role, values, SHAPES, align) for role, values in zip(written, outs)}
    assert set(got) == set(want)
    for key in want:
        for t, (a, b) in enumerate(zip(got[key], want[key])):
            np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=f"{key} tensor {t}")


KNOB_SHAPES = [(3000,), (1,), (1000,), (7,), (40, 13), (2048,)]


def _lib_counter(kernel: ffi.Kernel, name: str) -> Callable[[], int]:
    fn = getattr(ctypes.CDLL(str(kernel.lib_path)), name)
    fn.restype = ctypes.c_long if "count" in name else ctypes.c_int
    return fn


@pytest.mark.parametrize("knobs", [{"unroll": 2}, {"unroll": 4, "vector_bytes": 8},
                                   {"unroll": 2, "blocks_per_sm": 1}, {"vector_bytes": 4, "blocks_per_sm": 3}],
                         ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("name", ["plain", "full"])
def test_cuda_tuning_knobs_bit_exact_against_interpreter(name, dtype, knobs):
    """The tuner's CUDA knobs: vectors in flight per thread (the unrolled loop runs, then the
    one-vector loop and the scalar tail finish the chunk), narrower vectors, and a persistent grid
    capped at blocks_per_sm x the device's multiprocessors (the stand-in has 2), all bit exact."""
    spec = adamgen.AdamSpec(**SPECS[name])
    module = compile_spec(spec, dtype).kernels
    fn = module.function("update")
    native = kernel_for(module, dtype, replace(CUDA, chunk_elems=1024, block_threads=32, **knobs))
    itemsize = 2 if dtype == "bf16" else 4
    assert native.ctx.vec_elems == max(1, knobs.get("vector_bytes", CUDA.vector_bytes) // itemsize)
    r = native.rendered
    unrolled_loop = "i += kUnroll * kStride) vstep_unrolled<kMany>("

    def count_unrolled(source: str) -> str:
        assert source.count(unrolled_loop) == 1, "the CUDA template changed: no single unrolled loop"
        return source.replace(unrolled_loop, "i += kUnroll * kStride) adamgen_emu_count_unrolled(), vstep_unrolled<kMany>(")
    kernel = emulated(native.ctx, count_unrolled)
    rng = np.random.default_rng(sum(map(ord, name + dtype)) + len(knobs))
    inputs = _inputs(fn, dtype, rng, KNOB_SHAPES, module=module)
    want = run_function(fn, inputs, len(KNOB_SHAPES))
    args = [_role_arrays(role, inputs[role.name]) for role in r.roles]
    unrolled, max_grid = _lib_counter(kernel, "adamgen_emu_unrolled_count"), _lib_counter(kernel, "adamgen_emu_max_grid")
    before = unrolled()
    ctypes.CDLL(str(kernel.lib_path)).adamgen_emu_reset_grid()
    outs = jax.block_until_ready(ffi.call(kernel, _scalars(r, inputs), args, _pertensor(r, inputs, len(KNOB_SHAPES))))
    if knobs.get("unroll", 1) > 1:
        assert unrolled() > before
    n_chunks = sum(-(-int(np.prod(s)) // 1024) for s in KNOB_SHAPES)
    assert max_grid() == min(n_chunks, 2 * knobs.get("blocks_per_sm", n_chunks))
    written = [role for role in r.roles if role.written]
    got = {role.name: _unpack(role, values, KNOB_SHAPES, native.ctx.slab_align_bytes)
           for role, values in zip(written, outs)}
    for key in want:
        for t, (a, b) in enumerate(zip(got[key], want[key])):
            np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=f"{key} tensor {t}")


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("name", ["full", "clipnorm"])
def test_cuda_reduce_kernel_against_interpreter(name, dtype):
    """Per-tensor sums through the block reduction (shared memory, __syncthreads, partial sums per
    chunk that the last block to finish adds in chunk order): another summation order than the
    interpreter's, so close rather than equal."""
    spec = adamgen.AdamSpec(**SPECS[name])
    module = compile_spec(spec, dtype).kernels
    fn = module.function("reduce1")
    native = kernel_for(module, dtype, replace(CUDA, **EMU), "reduce1")
    r = native.rendered
    ctx = replace(native.ctx, launch_param_bytes=ffi.launch_param_bytes(len(r.roles), 3), max_grid=2)
    kernel = emulated(ctx)
    inputs = _inputs(fn, dtype, np.random.default_rng(9), SHAPES, module=module)
    want = run_function(fn, inputs, len(SHAPES))
    sums = ffi.call_reduce(kernel, _scalars(r, inputs),
                           [_role_arrays(role, inputs[role.name]) for role in r.roles if role.read])
    assert sums.shape == (len(SHAPES), len(r.outputs))
    for j, out in enumerate(r.outputs):
        np.testing.assert_allclose(np.asarray(sums[:, j]).astype(np.float32), want[out].astype(np.float32),
                                   rtol=1e-5 if dtype == "f32" else 1e-2)


def test_emulated_kernel_catches_a_broken_chunk_walk():
    """The harness can fail: a kernel whose blocks skip every other chunk leaves elements stale."""
    spec = adamgen.AdamSpec()
    module = compile_spec(spec, "f32").kernels
    fn = module.function("update")
    native = kernel_for(module, "f32", replace(CUDA, **EMU))
    walk = "c += gridDim.x)"

    def skip_chunks(source: str) -> str:
        assert source.count(walk) == 1
        return source.replace(walk, "c += 2 * gridDim.x)")
    kernel = emulated(replace(native.ctx, max_grid=2), skip_chunks)
    r = native.rendered
    inputs = _inputs(fn, "f32", np.random.default_rng(2), [(1000,)], module=module)
    want = run_function(fn, inputs, 1)
    outs = ffi.call(kernel, _scalars(r, inputs), [_role_arrays(role, inputs[role.name]) for role in r.roles])
    param = np.asarray(outs[[role.name for role in r.roles if role.written].index("param")][0])
    assert not np.array_equal(param, want["param"][0])


def test_cuda_one_element_tensors_take_the_general_body():
    """A one-element tensor divides by the loss scale and clipnorm's max(n, c) exactly; longer
    ones take element_many, the body without that division, in the vector path and the scalar
    tail alike. The data tells the two forms apart: the interpreter with every one-element flag
    false gives other bits for some of the one-element tensors."""
    spec = adamgen.AdamSpec(learning_rate=0.01, loss_scale_factor=100.0, clipnorm=100.0)
    module = compile_spec(spec, "f32").kernels
    fn = module.function("update")
    native = kernel_for(module, "f32", replace(CUDA, **EMU))
    assert "kOneElementBody = true;" in native.source
    r = native.rendered
    kernel = emulated(native.ctx)
    shapes = [(1,)] * 6 + [()] * 2 + [(3,), (130,), (1000,)]
    inputs = _inputs(fn, "f32", np.random.default_rng(5), shapes, module=module)
    want = run_function(fn, inputs, len(shapes))
    flipped = dict(inputs, **{name: np.zeros(len(shapes), bool) for name in one_element_conditions(module)})
    other = run_function(fn, flipped, len(shapes))
    one = [t for t, s in enumerate(shapes) if int(np.prod(s)) == 1]
    assert any(not np.array_equal(_bits(other["param"][t]), _bits(want["param"][t])) for t in one)
    args = [_role_arrays(role, inputs[role.name]) for role in r.roles]
    outs = jax.block_until_ready(ffi.call(kernel, _scalars(r, inputs), args, _pertensor(r, inputs, len(shapes))))
    written = [role for role in r.roles if role.written]
    got = {role.name: _unpack(role, values, shapes, native.ctx.slab_align_bytes) for role, values in zip(written, outs)}
    for key in want:
        for t, (a, b) in enumerate(zip(got[key], want[key])):
            np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=f"{key} tensor {t} of shape {shapes[t]}")


def test_a_spec_without_one_element_cases_renders_one_body():
    module = compile_spec(adamgen.AdamSpec(), "f32").kernels
    for target in (CUDA, HOST):
        assert "kOneElementBody = false;" in kernel_for(module, "f32", target).source
