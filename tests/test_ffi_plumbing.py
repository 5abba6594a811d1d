"""The FFI multi-tensor kernel on the hand-written plain-Adam f32 body: numbers, in-place
updates under jit + donation, the CUDA element body compiled as host code, export."""
from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adamgen import ffi, toolchain

SHAPES = [(3, 5), (1,), (1000, 7), (0,), (70001,)]  # 70001: many chunks at 4096, odd tail
ALPHA = np.float32(1e-3)


def reference_step(p, g, m, v, alpha):
    """NumPy, in float32, the same operation order as the element body."""
    f = np.float32
    m = m + (g - m) * f(0.1)
    v = v + (g * g - v) * f(0.001)
    p = p - (m * alpha) / (np.sqrt(v) + f(1e-7))
    return p, m, v


@pytest.fixture(scope="module")
def kernel() -> ffi.Kernel:
    # Small chunks so the 5-tensor tree exercises the chunk table and the parallel path.
    return ffi.build(ffi.plain_adam_context(chunk_elems=4096, parallel_min_elems=1), "cpu")


def make_tree(seed: int):
    rng = np.random.default_rng(seed)
    p = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    g = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    m = [np.zeros(s, np.float32) for s in SHAPES]
    v = [np.zeros(s, np.float32) for s in SHAPES]
    return p, g, m, v


def jitted_step(kernel):
    def step(scalars, p, g, m, v):
        return tuple(ffi.call(kernel, scalars, [p, g, m, v]))
    return jax.jit(step, donate_argnums=(1, 3, 4))


def test_render_every_template_with_fixture_context():
    ctx = ffi.plain_adam_context()
    for platform in ffi.TEMPLATES:
        source = ffi.render(ctx, platform)
        assert "x[0] = x[0] - (m * s[0]) / (sqrtf(v) + 1e-07f);" in source
        # the exported FFI handler: the kernel's own (CUDA) or a forwarder to the linked binding (host)
        handler = {"cuda": "XLA_FFI_DEFINE_HANDLER_SYMBOL(adamgen_plain_adam_f32,",
                   "cpu": 'extern "C" XLA_FFI_Error* adamgen_plain_adam_f32(XLA_FFI_CallFrame* call)'}[platform]
        assert handler in source


def test_context_rejects_bad_values():
    with pytest.raises(ValueError, match="C identifier"):
        ffi.make_context("bad name", ffi.PLAIN_ADAM_ROLES, 2, ffi.PLAIN_ADAM_BODY)
    with pytest.raises(ValueError, match="template syntax"):
        ffi.make_context("k", ffi.PLAIN_ADAM_ROLES, 2, ("x[0] = 1; // {{ oops }}",))
    with pytest.raises(ValueError, match="positive int"):
        ffi.plain_adam_context(chunk_elems=0)


def test_call_layout_aliases_written_read_roles():
    ctx = ffi.plain_adam_context()
    assert (ctx.n_in, ctx.n_out) == (4, 3)
    assert ctx.role_arg == (0, 1, 2, 3) and ctx.role_ret == (0, -1, 1, 2)
    # T = 2: args [s, pt, p0, p1, g0, g1, m0, m1, v0, v1]; rets [p0, p1, m0, m1, v0, v1]
    assert ffi.aliases(ctx, 2) == {2: 0, 3: 1, 6: 2, 7: 3, 8: 4, 9: 5}


def test_target_name_carries_source_hash():
    ctx = ffi.plain_adam_context()
    other = ffi.plain_adam_context(chunk_elems=8192)
    a = ffi.target_name(ctx, ffi.render(ctx, "cpu"), "cpu")
    b = ffi.target_name(other, ffi.render(other, "cpu"), "cpu")
    assert a != b and a.startswith("adamgen_plain_adam_f32_cpu_")


def test_register_is_idempotent(kernel):
    ffi.register(kernel.lib_path, kernel.ctx.symbol, kernel.target, "cpu")
    again = ffi.build(kernel.ctx, "cpu")
    assert again.target == kernel.target


def test_bit_exact_against_numpy_over_steps(kernel):
    p, g, m, v = make_tree(0)
    step = jitted_step(kernel)
    jp, jg, jm, jv = ([jnp.asarray(x) for x in xs] for xs in (p, g, m, v))
    for t in range(1, 4):
        alpha = np.float32(ALPHA * t)
        jp, jm, jv = step(jnp.array([alpha, 1e-3], jnp.float32), jp, jg, jm, jv)
        for i in range(len(SHAPES)):
            p[i], m[i], v[i] = reference_step(p[i], g[i], m[i], v[i], alpha)
        for got, want in zip((jp, jm, jv), (p, m, v)):
            for a, b in zip(got, want):
                assert a.shape == b.shape
                np.testing.assert_array_equal(np.asarray(a), b)


def test_in_place_under_jit_with_donation(kernel):
    p, g, m, v = make_tree(1)
    step = jitted_step(kernel)
    jp, jg, jm, jv = ([jnp.asarray(x) for x in xs] for xs in (p, g, m, v))
    scalars = jnp.array([ALPHA, 1e-3], jnp.float32)
    hlo = step.lower(scalars, jp, jg, jm, jv).compile().as_text()
    # Zero-size tensors become constants that XLA copies (0 bytes); nothing else is copied.
    copies = [ln for ln in hlo.splitlines() if " copy(" in ln or "copy-start" in ln]
    assert all("f32[0]" in ln for ln in copies), copies
    assert "input_output_alias" in hlo
    nonempty = [i for i, s in enumerate(SHAPES) if np.prod(s) > 0]
    before = [[xs[i].unsafe_buffer_pointer() for i in nonempty] for xs in (jp, jm, jv)]
    jp, jm, jv = step(scalars, jp, jg, jm, jv)
    after = [[xs[i].unsafe_buffer_pointer() for i in nonempty] for xs in (jp, jm, jv)]
    assert before == after


def test_cuda_element_body_as_host_code(tmp_path):
    """The CUDA source's shared element section, compiled by g++ with __host__ __device__
    defined away, gives the NumPy numbers: the CUDA arithmetic tested without a GPU."""
    source = ffi.render(ffi.plain_adam_context(), "cuda")
    begin = source.index("// ADAMGEN-ELEMENT-BEGIN")
    end = source.index("// ADAMGEN-ELEMENT-END")
    driver = textwrap.dedent("""
        extern "C" void run(float* p, const float* g, float* m, float* v, long n, float alpha) {
          const float s[2] = {alpha, 0.0f};
          void* const ptrs[adamgen_kernel::kRoles] = {p, const_cast<float*>(g), m, v};
          const float pt[1] = {0.0f};
          for (long i = 0; i < n; ++i) adamgen_kernel::step_at(ptrs, i, s, pt);
        }
    """)
    lib_path = toolchain.compile_host(
        source[begin:end] + driver,
        ("-D__host__=", "-D__device__=", "-D__forceinline__=inline"), cache_dir=tmp_path)
    lib = ctypes.CDLL(str(lib_path))
    p, g, m, v = (x[4] for x in make_tree(2))
    m = np.random.default_rng(3).standard_normal(p.shape).astype(np.float32)
    v = np.abs(m)
    want = reference_step(p, g, m, v, ALPHA)
    fp = ctypes.POINTER(ctypes.c_float)
    lib.run.argtypes = [fp, fp, fp, fp, ctypes.c_long, ctypes.c_float]
    lib.run(*(a.ctypes.data_as(fp) for a in (p, g, m, v)), p.size, ALPHA)
    for got, exp in zip((p, m, v), want):
        np.testing.assert_array_equal(got, exp)


def test_export_roundtrip_in_fresh_process(kernel, tmp_path):
    from jax import export

    def step(scalars, p, g, m, v):
        return tuple(ffi.call(kernel, scalars, [p, g, m, v]))

    p, g, m, v = make_tree(4)
    args = (jnp.array([ALPHA, 1e-3], jnp.float32), *[[jnp.asarray(x) for x in xs]
                                                     for xs in (p, g, m, v)])
    exported = export.export(
        jax.jit(step),
        disabled_checks=[export.DisabledSafetyCheck.custom_call(kernel.target)])(*args)
    blob = tmp_path / "step.bin"
    blob.write_bytes(exported.serialize())
    want = [reference_step(*xs, ALPHA) for xs in zip(p, g, m, v)]
    np.savez(tmp_path / "want.npz", *[w[0] for w in want])
    np.savez(tmp_path / "inputs.npz", *[x for xs in (p, g, m, v) for x in xs])
    script = textwrap.dedent(f"""
        import numpy as np, jax.numpy as jnp
        from jax import export
        from adamgen import ffi
        kernel = ffi.build(ffi.plain_adam_context(chunk_elems=4096, parallel_min_elems=1), "cpu")
        assert kernel.target == {kernel.target!r}
        exp = export.deserialize(open({str(blob)!r}, "rb").read())
        flat = list(np.load({str(tmp_path / "inputs.npz")!r}).values())
        T = {len(SHAPES)}
        roles = [[jnp.asarray(x) for x in flat[a * T:(a + 1) * T]] for a in range(4)]
        out = exp.call(jnp.array([{float(ALPHA)!r}, 1e-3], jnp.float32), *roles)
        want = list(np.load({str(tmp_path / "want.npz")!r}).values())
        for a, b in zip(out[0], want):
            np.testing.assert_array_equal(np.asarray(a), b)
        print("EXPORT-OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert "EXPORT-OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.gpu
@pytest.mark.skipif(not any(d.platform == "gpu" for d in jax.devices()),
                    reason="needs an NVIDIA GPU; runs on a lent H100/H200")
def test_cuda_kernel_on_gpu():
    kernel = ffi.build(ffi.plain_adam_context(chunk_elems=16384), "cuda")
    p, g, m, v = make_tree(5)
    step = jitted_step(kernel)
    gpu = jax.devices("gpu")[0]
    jp, jg, jm, jv = ([jax.device_put(x, gpu) for x in xs] for xs in (p, g, m, v))
    for t in range(1, 3):
        jp, jm, jv = step(jax.device_put(np.array([ALPHA, 1e-3], np.float32), gpu),
                          jp, jg, jm, jv)
        for i in range(len(SHAPES)):
            p[i], m[i], v[i] = reference_step(p[i], g[i], m[i], v[i], ALPHA)
    for got, want in zip((jp, jm, jv), (p, m, v)):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), b)  # --fmad=false: same rounding


@pytest.mark.parametrize("n_roles", [2, 4, 6, 7, 8, 10])
@pytest.mark.parametrize("n_tensors", [1, 31, 256, 400, 2000])
def test_cuda_launch_table_holds_a_call_in_one_launch_when_it_fits(n_roles, n_tensors):
    """cuda_chunks.h.j2 derives kMaxTensors from kParamBytes and asserts sizeof(LaunchArgs) fits;
    the bytes asked for must give room for every tensor of a call, within CUDA's limit."""
    p = ffi.launch_param_bytes(n_roles, n_tensors)
    assert p <= ffi.CUDA_MAX_PARAM_BYTES
    max_tensors = (p - 16) // (n_roles * 8 + 8 + 2 * 4)  # the template's formula
    # LaunchArgs in C layout: ptr[m][R], int32 tensor[m], (pad to 8) int64 size[m], int32 chunk_start[m + 1], int32 n
    m = max_tensors
    size = m * n_roles * 8 + m * 4
    size += -size % 8
    size += m * 8 + (m + 1) * 4 + 4
    size += -size % 8
    assert size <= p
    assert size + 3 * 8 <= ffi.CUDA_ARG_LIMIT_BYTES  # the table and the kernel's other pointers
    if p < ffi.CUDA_MAX_PARAM_BYTES:
        assert max_tensors >= n_tensors
    else:  # more than fits: later launches take the rest
        assert max_tensors >= 300
