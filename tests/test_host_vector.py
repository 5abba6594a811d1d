"""The host element loop on explicit vectors (templates/host/vector_ops.h, host/vector.h), which
float16 kernels run where the CPU has AVX2 and F16C: each vector op against its scalar twin in
the element header, bit for bit (NaN payloads too); which kernels take the vector loop; and
whole steps, vector loop against the scalar loop and against the oracle, over tensor sizes
that leave every possible tail and span chunks."""
from __future__ import annotations

import ctypes
from dataclasses import replace

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import adamgen
from adamgen import toolchain
from adamgen.backends.cpp import CUDA, HOST, vector_capable
from adamgen.backends.native import kernel_for, module_variant
from adamgen.compiler import compile_spec
from adamgen.ir.parser import parse_module
from adamgen.oracle import Oracle
from tests.test_half_conversions import _store_inputs
from tests.test_cpu_target import _cpu_optimizer
from tests.test_native import SPECS, _bits

# Entry points over n floats (n a multiple of 8): each vector op and its scalar twin.
ENTRY_POINTS = """
namespace adamgen_kernel {
extern "C" int test_host_vector() { return kHostVector ? 1 : 0; }
#if defined(__AVX2__) && defined(__F16C__)
template <typename F>
void each8(const float* in, float* out, std::int64_t n, F f) {
  for (std::int64_t i = 0; i < n; i += 8) {
    const adamgen_v8 r = f(adamgen_load8(in + i));
    adamgen_store8(out + i, r);
  }
}
extern "C" void vec_round_f16(const float* in, float* out, std::int64_t n) {
  each8(in, out, n, [](adamgen_v8 v) { return adamgen_round_f16(v); });
}
extern "C" void vec_round_bf16(const float* in, float* out, std::int64_t n) {
  each8(in, out, n, [](adamgen_v8 v) { return adamgen_round_bf16(v); });
}
extern "C" void vec_sqrt(const float* in, float* out, std::int64_t n) {
  each8(in, out, n, [](adamgen_v8 v) { return adamgen_sqrt(v); });
}
extern "C" void vec_max(const float* a, const float* b, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; i += 8) adamgen_store8(out + i, adamgen_max(adamgen_load8(a + i), adamgen_load8(b + i)));
}
extern "C" void vec_min(const float* a, const float* b, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; i += 8) adamgen_store8(out + i, adamgen_min(adamgen_load8(a + i), adamgen_load8(b + i)));
}
extern "C" void vec_splat(float f, float* out) { adamgen_store8(out, adamgen_splat<adamgen_v8>(f)); }
extern "C" void vec_load_f16(const adamgen_f16* in, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; i += 8) adamgen_store8(out + i, adamgen_load8(in + i));
}
extern "C" void vec_load_bf16(const adamgen_bf16* in, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; i += 8) adamgen_store8(out + i, adamgen_load8(in + i));
}
extern "C" void vec_store_f16(const float* in, adamgen_f16* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; i += 8) adamgen_store8(out + i, adamgen_load8(in + i));
}
extern "C" void vec_store_bf16(const float* in, adamgen_bf16* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; i += 8) adamgen_store8(out + i, adamgen_load8(in + i));
}
#endif
extern "C" void one_round_f16(const float* in, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = adamgen_round_f16(in[i]);
}
extern "C" void one_round_bf16(const float* in, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = adamgen_round_bf16(in[i]);
}
extern "C" void one_sqrt(const float* in, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = adamgen_sqrt(in[i]);
}
extern "C" void one_max(const float* a, const float* b, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = adamgen_max(a[i], b[i]);
}
extern "C" void one_min(const float* a, const float* b, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = adamgen_min(a[i], b[i]);
}
extern "C" void one_load_f16(const adamgen_f16* in, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = adamgen_load(in[i]);
}
extern "C" void one_load_bf16(const adamgen_bf16* in, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = adamgen_load(in[i]);
}
extern "C" void one_store_f16(const float* in, adamgen_f16* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) adamgen_store(out[i], in[i]);
}
extern "C" void one_store_bf16(const float* in, adamgen_bf16* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) adamgen_store(out[i], in[i]);
}
}  // namespace adamgen_kernel
"""
NO_VECTORS = ("the host vector loop is built only where the compiling CPU has AVX2 and F16C "
              "(x86-64 since 2013); elsewhere the scalar loop runs, which the other tests cover")


def _f16_source() -> str:
    module = compile_spec(adamgen.AdamSpec(), "f16").kernels
    return kernel_for(module, "f16", HOST, "update").source


@pytest.fixture(scope="module")
def lib():
    return ctypes.CDLL(str(toolchain.compile_host(_f16_source() + ENTRY_POINTS)))


@pytest.fixture(scope="module")
def vlib(lib):
    if not lib.test_host_vector():
        pytest.skip(NO_VECTORS)
    return lib


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return a.ctypes.data_as(ctypes.c_void_p)


def _padded(values: np.ndarray) -> np.ndarray:
    """`values` made a whole number of 8-lane vectors (the vector entry points take those)."""
    pad = (-values.size) % 8
    return np.ascontiguousarray(np.concatenate([values, values[:pad] if pad <= values.size else np.zeros(pad, values.dtype)]))


def _unary(lib, name: str, values: np.ndarray, out_dtype) -> np.ndarray:
    out = np.empty(values.shape, out_dtype)
    getattr(lib, name)(_ptr(values), _ptr(out), ctypes.c_int64(values.size))
    return out


def _floats() -> np.ndarray:
    """Every float16 and bfloat16 value, the midpoints between neighbours and the floats either
    side, float32 subnormals, a million random bit patterns (NaNs of many payloads among them)."""
    return _padded(np.concatenate([_store_inputs(np.float16), _store_inputs(ml_dtypes.bfloat16)]).astype(np.float32))


@pytest.mark.parametrize("op", ["round_f16", "round_bf16", "sqrt"])
def test_vector_unary_ops_equal_their_scalar_twins(vlib, op):
    values = _floats()
    np.testing.assert_array_equal(_unary(vlib, f"vec_{op}", values, np.float32).view(np.uint32),
                                  _unary(vlib, f"one_{op}", values, np.float32).view(np.uint32))


@pytest.mark.parametrize("op", ["max", "min"])
def test_vector_max_min_equal_their_scalar_twins(vlib, op):
    """NumPy's NaN-propagating maximum/minimum, signed zeros and infinities included."""
    rng = np.random.default_rng(1)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1e-45], np.float32)
    a = np.concatenate([np.repeat(special, special.size), rng.standard_normal(4096).astype(np.float32)])
    b = np.concatenate([np.tile(special, special.size), rng.standard_normal(4096).astype(np.float32)])
    a, b = _padded(a), _padded(b)
    got, want = np.empty_like(a), np.empty_like(a)
    n = ctypes.c_int64(a.size)
    getattr(vlib, f"vec_{op}")(_ptr(a), _ptr(b), _ptr(got), n)
    getattr(vlib, f"one_{op}")(_ptr(a), _ptr(b), _ptr(want), n)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_vector_splat_fills_every_lane_with_the_same_bits(vlib):
    for f in (-0.0, 1.5, np.float32(3.4e38)):
        out = np.empty(8, np.float32)
        vlib.vec_splat(ctypes.c_float(f), _ptr(out))
        np.testing.assert_array_equal(out.view(np.uint32), np.full(8, np.float32(f)).view(np.uint32))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_vector_loads_and_stores_equal_their_scalar_twins(vlib, dtype):
    """Every half loads to the same float, but a signaling float16 NaN, which the hardware
    conversion makes quiet (every store quiets a NaN too, so what the kernels store agrees:
    test_vector_loop_steps_equal_the_scalar_loop feeds signaling NaNs)."""
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    want = _unary(vlib, f"one_load_{dtype}", halves, np.float32).view(np.uint32)
    if dtype == "f16":
        signaling = ((halves & 0x7C00) == 0x7C00) & ((halves & 0x3FF) != 0) & ((halves & 0x200) == 0)
        want = np.where(signaling, want | 0x00400000, want)
    np.testing.assert_array_equal(_unary(vlib, f"vec_load_{dtype}", halves, np.float32).view(np.uint32), want)
    values = _floats()
    np.testing.assert_array_equal(_unary(vlib, f"vec_store_{dtype}", values, np.uint16),
                                  _unary(vlib, f"one_store_{dtype}", values, np.uint16))


def test_float16_kernels_take_the_vector_loop_and_others_do_not():
    """Which rendered kernels run body_many on vectors (kVectorBody): the host's float16 update
    kernels, of every variant; not float32 or bfloat16 (the scalar loop vectorizes as well there,
    measured), nor reductions, nor CUDA kernels (a thread is one element)."""
    for kw in SPECS.values():
        spec = adamgen.AdamSpec(**kw)
        for dtype in ("f32", "f16", "bf16"):
            module = compile_spec(spec, dtype).kernels
            host = kernel_for(module, module_variant(module), HOST, "update")
            assert host.rendered.vector_many
            assert ("constexpr bool kVectorBody = true;" in host.source) == (dtype == "f16"), (kw, dtype)
            assert "run_vector<kVectorBody>" in host.source
            cuda = kernel_for(module, module_variant(module), CUDA, "update")
            assert "run_vector" not in cuda.source and not cuda.ctx.vector_body


def test_a_body_with_a_varying_condition_stays_scalar():
    """A value that varies per element and is no float made by + - * / sqrt max min (here a
    comparison that picks an arm) keeps the whole body on the scalar loop."""
    text = """module attributes {dtype = "f16", spec = "adam"} {
func @update(%param: f16[N], %grad: f16[N]) attributes {kind = "elementwise"} {
  %0 = const 0 : f16
  %1 = lt %grad, %0 : bool[N]
  %2 = sub %param, %grad : f16[N]
  %3 = select %1, %param, %2 : f16[N]
  return {param = %3}
}
}
"""
    fn = parse_module(text).function("update")
    assert not vector_capable([v for _, v in fn.outputs])
    uniform = text.replace("%1 = lt %grad, %0 : bool[N]", "%1 = const true : bool")
    assert vector_capable([v for _, v in parse_module(uniform).function("update").outputs])
    constant_output = text.replace("return {param = %3}", "return {param = %0}")
    assert not vector_capable([v for _, v in parse_module(constant_output).function("update").outputs])


def test_only_the_cpu_platform_takes_vector_dtypes():
    with pytest.raises(ValueError, match="only the cpu platform"):
        replace(CUDA, vector_dtypes=("f16",))
    with pytest.raises(ValueError, match="must be a tuple"):
        replace(HOST, vector_dtypes="f16")


# every tail length 0..7 around whole vectors, a one-element tensor, and two that span chunks
SIZES = [1, 2, 7, 8, 9, 15, 16, 17, 20, 23, 31, 65536 + 5, 2 * 65536 + 8]


def _tree(rng, specials: bool):
    params = [rng.standard_normal(n).astype(np.float16) for n in SIZES]
    grads = []
    for _ in range(4):
        g = [(rng.standard_normal(p.shape) * 0.1).astype(np.float16) for p in params]
        if specials:  # NaN, infinities, overflowing squares, subnormals, signed zeros
            for x in g:
                hits = rng.integers(0, x.size, 3)
                x[hits] = rng.choice(np.array([np.nan, np.inf, -np.inf, 300.0, 6e-8, -0.0], np.float16), 3)
                x.view(np.uint16)[rng.integers(0, x.size)] = 0x7C01  # a signaling NaN
        grads.append(g)
    return params, grads


def _steps(opt, params, grads):
    p = jax.tree_util.tree_map(jnp.asarray, params)
    state = opt.init(p)
    for g in grads:
        p, state = opt.apply(g, state, p)
    return jax.tree_util.tree_leaves((p, state.unpacked(), opt.finalize(state, p)))


@pytest.mark.parametrize("specials", [False, True], ids=["finite", "specials"])
@pytest.mark.parametrize("name", list(SPECS))
def test_vector_loop_steps_equal_the_scalar_loop(vlib, name, specials):
    """Whole float16 steps, vector loop vs scalar loop, on finite gradients and on gradients with
    NaN (signaling ones too), infinite, overflowing and subnormal elements (under a norm those
    make whole tensors NaN): the same values in every param, slot and the EMA, NaN where the
    other has NaN."""
    spec = adamgen.AdamSpec(**SPECS[name])
    params, grads = _tree(np.random.default_rng(5), specials=specials)
    got = _steps(_cpu_optimizer(spec, vector_dtypes=("f16",)), params, grads)
    want = _steps(_cpu_optimizer(spec, vector_dtypes=()), params, grads)
    for a, b in zip(got, want):
        _same_or_both_nan(np.asarray(a), np.asarray(b))


def _same_or_both_nan(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    """Equal bits, but a NaN need only be a NaN: which operand's payload and sign an op on two
    NaNs passes on is the compiler's choice (it may swap the operands of + and *), in either loop."""
    nan = np.isnan(want.astype(np.float32))
    np.testing.assert_array_equal(np.isnan(got.astype(np.float32)), nan, err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(np.where(nan, 0, _bits(got)), np.where(nan, 0, _bits(want)), err_msg=what)


@pytest.mark.parametrize("name", ["plain", "clipvalue"])
def test_vector_loop_steps_equal_the_oracle(vlib, name):
    """The same steps against the NumPy oracle (specs without norms, whose sums of squares the
    oracle adds in another order): equal bits."""
    spec = adamgen.AdamSpec(**SPECS[name])
    params, grads = _tree(np.random.default_rng(6), specials=False)
    opt = _cpu_optimizer(spec, vector_dtypes=("f16",))
    p = jax.tree_util.tree_map(jnp.asarray, params)
    state = opt.init(p)
    orc = Oracle(spec)
    want_p = [np.array(x) for x in params]
    want_s = orc.init(want_p)
    for g in grads:
        p, state = opt.apply(g, state, p)
        want_p, want_s = orc.apply(g, want_s, want_p)
    for got, want in zip(p, want_p):
        np.testing.assert_array_equal(_bits(got), _bits(want))
    slots = state.unpacked()
    for got, want in zip(slots.momentums + slots.velocities, want_s.momentums + want_s.velocities):
        np.testing.assert_array_equal(_bits(got), _bits(want))


def test_the_tuners_probe_agrees_with_the_compiled_kernel(lib):
    """hostcpu.host_vector_loop (the compiler's -march=native macros) says what the kernel built
    here runs: the tuner trusts it to leave the unroll unsearched."""
    from adamgen import hostcpu
    assert hostcpu.host_vector_loop(toolchain.find_host_compiler().path) == bool(lib.test_host_vector())


# A hand-written float16 body that uses every op the vector loop takes (VECTOR_OPS), with
# uniform operands of max, min and select (broadcast), float32 math between casts, a runtime
# scalar: the ops no Adam spec combines this way.
EVERY_VECTOR_OP = """module attributes {dtype = "f16", spec = "adam"} {
func @update(%param: f16[N], %grad: f16[N], %momentum: f16[N], %x: f16) attributes {kind = "elementwise"} {
  %0 = neg %grad : f16[N]
  %1 = const 0.25 : f16
  %2 = min %0, %1 : f16[N]
  %3 = max %2, %x : f16[N]
  %4 = cast %grad : f32[N]
  %5 = mul %4, %4 : f32[N]
  %6 = const 1e-30 : f32
  %7 = add %5, %6 : f32[N]
  %8 = sqrt %7 : f32[N]
  %9 = cast %8 : f16[N]
  %10 = const true : bool
  %11 = select %10, %9, %3 : f16[N]
  %12 = div %param, %11 : f16[N]
  %13 = sub %param, %12 : f16[N]
  %14 = min %13, %momentum : f16[N]
  %15 = max %14, %3 : f16[N]
  %16 = mul %15, %x : f16[N]
  %17 = select %10, %1, %16 : f16[N]
  %18 = add %17, %16 : f16[N]
  return {param = %15, momentum = %18}
}
}
"""

RUN_RANGE = """
namespace adamgen_kernel {
extern "C" void test_run_range(void* const* ptrs, std::int64_t n, const float* s) {
  void* p[kRoles];
  for (int r = 0; r < kRoles; ++r) p[r] = ptrs[r];
  const float pt[1] = {0.0f};
  run_range(p, 0, n, s, pt);
}
}  // namespace adamgen_kernel
"""


def _run_hand_kernel(module, vector_dtypes: tuple, inputs: dict, x: float) -> dict:
    from adamgen.ir.verify import verify_module
    verify_module(module)
    caps = replace(HOST, vector_dtypes=vector_dtypes, packed_slots=False)
    native = kernel_for(module, "f16", caps, "update")
    assert native.ctx.vector_body == bool(vector_dtypes)
    lib = ctypes.CDLL(str(toolchain.compile_host(native.source + RUN_RANGE)))
    arrays = {name: np.array(value) for name, value in inputs.items()}
    ptrs = (ctypes.c_void_p * len(native.rendered.roles))(*[_ptr(arrays[r.name]) for r in native.rendered.roles])
    assert native.rendered.scalars == ("x",)
    scalars = np.array([x], np.float32)
    n = arrays["param"].size
    lib.test_run_range(ptrs, ctypes.c_int64(n), _ptr(scalars))
    return arrays


def test_a_body_of_every_vector_op_runs_the_vector_loop_as_the_scalar_loop_and_the_ir(vlib):
    """neg, cast both ways, min and max with uniform and varying operands, select on a uniform
    condition with a uniform arm, float32 math between casts, + - * / sqrt: the vector loop, the
    scalar loop and the IR's NumPy interpreter give the same bits, tails and specials included."""
    from adamgen.ir.interp import run_function
    from adamgen.ir.verify import verify_module

    module = parse_module(EVERY_VECTOR_OP)
    verify_module(module)
    fn = module.function("update")
    assert vector_capable([v for _, v in fn.outputs])
    rng = np.random.default_rng(11)
    n = 8 * 37 + 5  # whole vectors and a 5-element tail
    grad = (rng.standard_normal(n) * 0.5).astype(np.float16)
    grad[[3, 50, 99, 200, 298]] = np.array([np.nan, np.inf, -np.inf, 6e-8, -0.0], np.float16)
    inputs = {"param": rng.standard_normal(n).astype(np.float16), "grad": grad,
              "momentum": rng.standard_normal(n).astype(np.float16)}
    x = float(np.float16(-0.125))
    vec = _run_hand_kernel(module, ("f16",), inputs, x)
    scalar = _run_hand_kernel(module, (), inputs, x)
    want = run_function(fn, {**{k: [v] for k, v in inputs.items()}, "x": np.float16(x)}, 1)
    for role in ("param", "momentum"):
        _same_or_both_nan(vec[role], scalar[role])
        _same_or_both_nan(vec[role], np.asarray(want[role][0]))
