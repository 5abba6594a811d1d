"""The rendered native kernels: bit-exact against the IR interpreter, CUDA arithmetic on the host,
CUDA compile checks, and (on a GPU machine) the CUDA target itself."""
from __future__ import annotations

import ctypes
import platform
import subprocess
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamgen
from adamgen import ffi, toolchain
from adamgen.backends.cpp import CPP_EXPR, CUDA, HOST
from adamgen.backends.native import kernel_for, one_element_conditions
from adamgen.compiler import compile_spec
from adamgen.dtypes import numpy_dtype
from adamgen.ir.interp import run_function
from adamgen.lower import parse_variant
from adamgen.ir.ops import Op
from adamgen.state import SLAB_ALIGN_BYTES

SPECS = {
    "plain": dict(),
    "full": dict(amsgrad=True, weight_decay=0.01, global_clipnorm=1.0, use_ema=True, ema_overwrite_frequency=3,
                 gradient_accumulation_steps=2, loss_scale_factor=100.0),
    "clipnorm": dict(clipnorm=0.5, beta_2=0.99),
    "clipvalue": dict(clipvalue=0.1, epsilon=1e-4, amsgrad=True),
}
SHAPES = [(7,), (1,), (300,), (5, 6)]
GPU = any(d.platform == "gpu" for d in jax.devices())


def test_cpp_table_covers_every_op():
    assert set(CPP_EXPR) == set(Op)


def _inputs(fn, dtype, rng, shapes=SHAPES, module=None):
    """Random values for every input of the update kernel (per-tensor values positive); `dtype`
    is a module variant (the param dtype, or e.g. bf16_f32norm). The one-element tensors' flags
    of `module` (native.one_element_conditions) are true exactly for the one-element shapes."""
    one_element = one_element_conditions(module) if module is not None else frozenset()
    dt = numpy_dtype(parse_variant(dtype)[0])
    out = {}
    for node in fn.inputs:
        name, kind = node.attr("name"), node.shape
        if kind == "N":
            out[name] = [(rng.standard_normal(s) * (0.1 if name != "param" else 1)).astype(dt) for s in shapes]
            if name in ("velocity", "velocity_hat"):
                out[name] = [np.abs(x) for x in out[name]]
        elif name == "single":  # the one-element tensors' flag, as step_inputs makes it
            out[name] = np.array([int(np.prod(s)) == 1 for s in shapes], np.float32)
        elif name in one_element:  # 0 < single, from the scalar kernel
            out[name] = np.array([int(np.prod(s)) == 1 for s in shapes])
        elif name == "decay":  # the weight-decay mask: some tensors excluded
            out[name] = rng.integers(0, 2, len(shapes)).astype(np.float32)
        elif kind == "T":
            out[name] = rng.uniform(0.1, 2, len(shapes)).astype(numpy_dtype(node.dtype))
        elif node.dtype == "bool":
            out[name] = np.bool_(rng.integers(0, 2))
        else:
            out[name] = numpy_dtype(node.dtype).type(rng.uniform(0.01, 0.9))
    return out


PAD_SENTINEL = 7.0  # what the padding of a test slab holds; the kernels must leave it alone


def _slab_starts(values, align_bytes: int = SLAB_ALIGN_BYTES) -> list[int]:
    """Each tensor's start in a packed slab: sizes rounded up to `align_bytes`, computed here
    independently of adamgen.state.PackedLayout."""
    starts, at = [], 0
    for x in values:
        x = np.asarray(x)
        align = max(1, align_bytes // x.dtype.itemsize)
        starts.append(at)
        at += -(-x.size // align) * align
    return starts + [at]


def _role_arrays(role, values, align_bytes: int = SLAB_ALIGN_BYTES) -> list:
    """A role's call inputs: one array per tensor, or one slab of them all when packed."""
    if not role.packed:
        return [jnp.asarray(x) for x in values]
    starts = _slab_starts(values, align_bytes)
    slab = np.full(starts[-1], PAD_SENTINEL, np.asarray(values[0]).dtype)
    for x, a in zip(values, starts):
        slab[a:a + np.size(x)] = np.ravel(np.asarray(x))
    return [jnp.asarray(slab)]


def _unpack(role, values, shapes, align_bytes: int = SLAB_ALIGN_BYTES) -> list:
    if not role.packed:
        return values
    slab = np.asarray(values[0])
    starts = _slab_starts([np.zeros(s, slab.dtype) for s in shapes], align_bytes)
    padding = np.ones(slab.size, bool)
    for a, s in zip(starts, shapes):
        padding[a:a + int(np.prod(s))] = False
    assert (slab[padding] == PAD_SENTINEL).all(), "the kernel wrote into slab padding"
    assert padding.any() or align_bytes < SLAB_ALIGN_BYTES
    return [slab[a:a + int(np.prod(s))].reshape(s) for a, s in zip(starts, shapes)]


# bf16_f32norm: a bfloat16 group of a tree with several dtypes under global_clipnorm (the update
# casts each gradient to f32, scales it by the f32 norm factor and rounds it back).
@pytest.mark.parametrize("packed", [False, True], ids=["per-tensor-slots", "packed-slots"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "bf16_f32norm"])
@pytest.mark.parametrize("name", list(SPECS))
def test_host_kernel_bit_exact_against_interpreter(name, dtype, packed):
    spec = adamgen.AdamSpec(**SPECS[name])
    module = compile_spec(spec, dtype).kernels
    fn = module.function("update")
    rng = np.random.default_rng(hash((name, dtype)) % 2**32)
    for trial in range(3):
        inputs = _inputs(fn, dtype, rng, module=module)
        want = run_function(fn, inputs, len(SHAPES))
        native = kernel_for(module, dtype, replace(HOST, packed_slots=packed))
        kernel = ffi.build(native.ctx, "cpu")
        r = native.rendered
        assert any(role.packed for role in r.roles) == packed
        scalars = jnp.asarray([np.float32(inputs[k]) for k in r.scalars] or [0.0], jnp.float32)
        pt = (jnp.stack([jnp.asarray(inputs[k], jnp.float32) for k in r.pertensor], axis=1)
              if r.pertensor else jnp.zeros((len(SHAPES), 0), jnp.float32))
        outs = ffi.call(kernel, scalars, [_role_arrays(role, inputs[role.name]) for role in r.roles], pt)
        written = [role for role in r.roles if role.written]
        got = {role.name: _unpack(role, values, SHAPES) for role, values in zip(written, outs)}
        assert set(got) == set(want)
        for key in want:
            for a, b in zip(got[key], want[key]):
                np.testing.assert_array_equal(np.asarray(a).view(np.uint16 if dtype != "f32" else np.uint32),
                                              np.asarray(b).view(np.uint16 if dtype != "f32" else np.uint32),
                                              err_msg=f"{name} {dtype} {key}")


BIG_SHAPES = [(200_003,), (3,), (70_000,), (4096,), (1,), (99_999,)]


def _bits(x):
    x = np.asarray(x)
    return x.view(np.uint32 if x.dtype.itemsize == 4 else np.uint16)


@pytest.mark.parametrize("knobs", [{}, {"threads": 1, "unroll": 4}, {"unroll": 2}], ids=str)
@pytest.mark.parametrize("name", ["plain", "full"])
def test_host_kernel_shares_chunks_across_threads_bit_exact(name, knobs):
    """Tensors split into many chunks, worked on by XLA's thread pool, with two calls in one jit
    that XLA may run at the same time: every element still equals the interpreter's, for every
    thread limit and unroll factor the tuner may pick."""
    spec = adamgen.AdamSpec(**SPECS[name])
    module = compile_spec(spec, "f32").kernels
    fn = module.function("update")
    native = kernel_for(module, "f32", replace(HOST, chunk_elems=4096, **knobs))
    kernel = ffi.build(native.ctx, "cpu")
    r = native.rendered
    rng = np.random.default_rng(11)
    cases = [_inputs(fn, "f32", rng, BIG_SHAPES, module=module) for _ in range(2)]

    def args(inputs):
        scalars = jnp.asarray([np.float32(inputs[k]) for k in r.scalars] or [0.0], jnp.float32)
        pt = (jnp.stack([jnp.asarray(inputs[k], jnp.float32) for k in r.pertensor], axis=1)
              if r.pertensor else jnp.zeros((len(BIG_SHAPES), 0), jnp.float32))
        return scalars, [_role_arrays(role, inputs[role.name]) for role in r.roles], pt

    both = jax.jit(lambda a, b: (ffi.call(kernel, *a), ffi.call(kernel, *b)))
    written = [role for role in r.roles if role.written]
    for inputs, outs in zip(cases, both(args(cases[0]), args(cases[1]))):
        want = run_function(fn, inputs, len(BIG_SHAPES))
        for role, values in zip(written, outs):
            for t, (a, b) in enumerate(zip(_unpack(role, values, BIG_SHAPES), want[role.name])):
                np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=f"{name} {role.name} tensor {t}")


DRIVER = """
extern "C" void run_one(void** ptrs, long n, const float* s, const float* pt) {
  void* const p[adamgen_kernel::kRoles] = {%s};
  for (long i = 0; i < n; ++i) adamgen_kernel::step_at(p, i, s, pt);
}
"""


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
def test_cuda_element_body_as_host_code_matches_interpreter(dtype, tmp_path):
    """The CUDA source's element section, compiled by g++ with __host__ __device__ defined away:
    the CUDA kernel's arithmetic checked bit for bit on a machine with no GPU."""
    spec = adamgen.AdamSpec(**SPECS["full"])
    module = compile_spec(spec, dtype).kernels
    fn = module.function("update")
    native = kernel_for(module, dtype, CUDA)
    src = native.source
    section = src[src.index("// ADAMGEN-ELEMENT-BEGIN"):src.index("// ADAMGEN-ELEMENT-END")]
    roles = native.rendered.roles
    driver = DRIVER % ", ".join(f"ptrs[{i}]" for i in range(len(roles)))
    lib = ctypes.CDLL(str(toolchain.compile_host(
        section + driver, ("-D__host__=", "-D__device__=", "-D__forceinline__=inline"), cache_dir=tmp_path)))
    inputs = _inputs(fn, dtype, np.random.default_rng(7), module=module)
    want = run_function(fn, inputs, len(SHAPES))
    r = native.rendered
    for t, shape in enumerate(SHAPES):
        arrays = [np.ascontiguousarray(inputs[role.name][t]).copy() for role in roles]
        ptrs = (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
        s = np.array([np.float32(inputs[k]) for k in r.scalars] or [0.0], np.float32)
        pt = np.array([np.float32(inputs[k][t]) for k in r.pertensor] or [0.0], np.float32)
        lib.run_one(ptrs, ctypes.c_long(int(np.prod(shape))), s.ctypes.data_as(ctypes.c_void_p),
                    pt.ctypes.data_as(ctypes.c_void_p))
        for role, arr in zip(roles, arrays):
            if role.written:
                np.testing.assert_array_equal(arr.astype(np.float32), want[role.name][t].astype(np.float32),
                                              err_msg=f"{dtype} {role.name} tensor {t}")


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("name", ["full", "clipnorm"])
def test_host_reduce_kernel_against_interpreter(name, dtype):
    """Per-tensor sums of squares: float accumulation in another order than NumPy's, so close,
    not bit-exact; each sum is rounded once to the dtype like the IR's reduce_sum."""
    spec = adamgen.AdamSpec(**SPECS[name])
    module = compile_spec(spec, dtype).kernels
    fn = module.function("reduce1")
    inputs = _inputs(fn, dtype, np.random.default_rng(5), module=module)
    want = run_function(fn, inputs, len(SHAPES))
    native = kernel_for(module, dtype, HOST, "reduce1")
    kernel = ffi.build(native.ctx, "cpu")
    r = native.rendered
    scalars = jnp.asarray([np.float32(inputs[k]) for k in r.scalars] or [0.0], jnp.float32)
    if name == "full":  # gradient accumulation: the norm reads the (packed) accumulators
        assert any(role.packed and role.read for role in r.roles)
    sums = ffi.call_reduce(kernel, scalars, [_role_arrays(role, inputs[role.name]) for role in r.roles if role.read])
    for j, out in enumerate(r.outputs):
        np.testing.assert_allclose(np.asarray(sums[:, j]).astype(np.float32), want[out].astype(np.float32),
                                   rtol=1e-5 if dtype == "f32" else 1e-2)


@pytest.mark.parametrize("kernel_name, name, tensors_per_call, knobs", [
    ("update", "plain", None, {}), ("update", "full", None, {}), ("reduce1", "full", None, {}),
    ("update", "full", 5000, {}),  # the launch table at CUDA's kernel-argument limit
    # the tuner's largest unroll with a persistent grid, and with 512 threads (unroll lowered to fit)
    ("update", "full", None, {"unroll": 4, "blocks_per_sm": 4}),
    ("update", "full", None, {"unroll": 4, "block_threads": 512, "dtype": "bf16"}),
    # half conversions by cvt instructions (cuda_fp16.h / cuda_bf16.h)
    ("update", "full", None, {"hw_half": 1, "dtype": "f16"}), ("reduce1", "full", None, {"hw_half": 1, "dtype": "bf16"})])
def test_rendered_cuda_compiles_without_spills(kernel_name, name, tensors_per_call, knobs):
    """nvcc builds SASS for sm_80 and sm_90 plus PTX; ptxas reports no spills."""
    spec = adamgen.AdamSpec(**SPECS[name])
    knobs = dict(knobs)
    dtype = knobs.pop("dtype", "f32")
    caps = replace(CUDA, tensors_per_call=tensors_per_call or CUDA.tensors_per_call, **knobs)
    native = kernel_for(compile_spec(spec, dtype).kernels, dtype, caps, kernel_name)
    if tensors_per_call:
        assert native.ctx.launch_param_bytes == ffi.CUDA_MAX_PARAM_BYTES
    report = toolchain.ptxas_report(native.source)
    assert "sm_90" in report and "sm_80" in report
    assert "spill" in report
    for line in report.splitlines():
        if "spill stores" in line:
            assert " 0 bytes spill stores, 0 bytes spill loads" in line, line
    assert toolchain.compile_cuda(native.source).is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs an NVIDIA GPU; runs on a lent H100/H200 (device tool)")
@pytest.mark.parametrize("name", list(SPECS))
def test_cuda_target_matches_oracle_on_gpu(name):
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES + [(70001,)]]
    _cuda_steps_match_oracle(adamgen.AdamSpec(**SPECS[name]), params, 5, rng)


def _cuda_steps_match_oracle(spec, params: list, steps: int, rng, check_state=None, caps=None) -> None:
    """`steps` cuda-target steps on `params` against the NumPy oracle's, random grads each step."""
    from adamgen.backends.native import native_optimizer

    opt = native_optimizer(spec, "cuda", caps)
    ref = adamgen.build(spec, "numpy")
    p = [jnp.asarray(x) for x in params]
    s = opt.init(p)
    if check_state is not None:
        check_state(s)
    rp, rs = list(params), ref.init(params)
    for _ in range(steps):
        g = [(rng.standard_normal(x.shape) * 0.3).astype(np.float32) for x in params]
        p, s = opt.apply([jnp.asarray(x) for x in g], s, p)
        rp, rs = ref.apply(g, rs, rp)
    for a, b in zip(p, rp):
        np.testing.assert_allclose(np.asarray(a), b, rtol=2e-5, atol=2e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs an NVIDIA GPU; runs on a lent H100/H200 (device tool)")
def test_cuda_target_many_odd_sized_tensors_on_gpu():
    """600 tensors of odd sizes: several custom calls and packed slabs with padding on the device."""
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(1, 3000, 600)]

    def several_slabs(state):
        assert len(state.momentums.slabs) > 1
    _cuda_steps_match_oracle(adamgen.AdamSpec(**SPECS["full"]), params, 4, rng, several_slabs)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs an NVIDIA GPU; runs on a lent H100/H200 (device tool)")
@pytest.mark.parametrize("knobs", [{"unroll": 4, "blocks_per_sm": 4}, {"vector_bytes": 8, "unroll": 2},
                                   {"block_threads": 512, "chunk_elems": 16384, "blocks_per_sm": 16}], ids=str)
def test_cuda_tuning_knobs_match_oracle_on_gpu(knobs):
    """The tuner's CUDA candidates (vectors in flight, vector width, persistent grid) on the device."""
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES + [(70001,), (300_000,)]]
    _cuda_steps_match_oracle(adamgen.AdamSpec(**SPECS["full"]), params, 3, rng, caps=replace(CUDA, **knobs))


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs an NVIDIA GPU; runs on a lent H100/H200 (device tool)")
@pytest.mark.parametrize("dtype", [np.dtype(np.float16), np.dtype(jnp.bfloat16)], ids=str)
def test_cuda_hardware_half_conversions_give_the_bit_level_forms_bits_on_gpu(dtype):
    """hw_half=1 (cvt instructions) and the bit-level form: the same params and slots to the bit
    on the device, under the full variant (norm, AMSGrad, EMA, accumulation, loss scale)."""
    from adamgen.backends.native import native_optimizer

    spec = adamgen.AdamSpec(**SPECS["full"])
    rng = np.random.default_rng(6)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES + [(70001,)]]
    grads = [[(rng.standard_normal(x.shape) * 0.3).astype(dtype) for x in params] for _ in range(4)]
    results = []
    for hw in (0, 1):
        opt = native_optimizer(spec, "cuda", replace(CUDA, hw_half=hw))
        p = [jnp.asarray(x) for x in params]
        s = opt.init(p)
        for g in grads:
            p, s = opt.apply([jnp.asarray(x) for x in g], s, p)
        results.append([np.asarray(x) for x in p] + [np.asarray(x) for x in jax.tree_util.tree_leaves(s.unpacked())])
    for a, b in zip(*results):
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_cuda_target_without_a_gpu_says_so():
    if GPU:
        pytest.skip("this machine has a GPU; the error path is for machines without one")
    with pytest.raises(RuntimeError, match="needs an NVIDIA GPU|NVIDIA GPU visible to JAX"):
        adamgen.build(adamgen.AdamSpec(), "cuda")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="reads x86 assembly; runs on x86-64 hosts (CI)")
@pytest.mark.parametrize("march", ["native", "haswell"])  # haswell: AVX2 without AVX-512's masks
@pytest.mark.parametrize("name, dtype", [("plain", "f32"), ("full", "f32"), ("clipnorm", "f32"), ("full", "bf16"),
                                         ("plain", "f16"), ("one_element", "f32"), ("one_element", "bf16"),
                                         ("exclusion", "f32")])
def test_host_update_loop_is_vectorized(name, dtype, march, tmp_path):
    """The host element loop runs on packed vectors: its assembly has a packed square root
    (every Adam update takes sqrt(v)). A select's arm read or computed only on its side (the
    one-element tensors' true division, a weight-decay exclusion) once left the loop scalar,
    on AVX2 until -fno-trapping-math; float16 conversions with branches did everywhere. Only
    a scalar vsqrtss would show."""
    extra = {"one_element": dict(loss_scale_factor=100.0, clipnorm=0.5),
             "exclusion": dict(weight_decay=0.01, exclude_from_weight_decay=["bias"])}
    kw = SPECS[name] if name in SPECS else extra[name]
    native = kernel_for(compile_spec(adamgen.AdamSpec(**kw), dtype).kernels, dtype, HOST, "update")
    src = tmp_path / "update.cc"
    src.write_text(native.source)
    compiler = toolchain.find_host_compiler()
    flags = [f for f in toolchain.host_flags() if f not in ("-shared", "-fPIC") and not f.startswith("-Wl,")]
    flags = [f"-march={march}" if f == "-march=native" else f for f in flags]
    subprocess.run([str(compiler.path), *flags, "-S", "-o", str(tmp_path / "update.s"), str(src)], check=True)
    asm = (tmp_path / "update.s").read_text()
    start = asm.index("run_range")
    body = asm[asm.index(":\n", asm.index("\n", start)):]
    body = body[:body.index(".cfi_endproc")]
    assert "vsqrtps" in body, f"{name}/{dtype}, -march={march}: the element loop has no packed sqrt (scalar loop)"
