"""Every stage of the IR (through the NumPy interpreter) and the JAX target against the oracle."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings

import adamgen
from adamgen import pipeline
from adamgen.lower import lower
from adamgen.ir.interp import run_module
from adamgen.lower import slots_for
from adamgen.oracle import Oracle
from adamgen.runtime import runtime_scalars
from adamgen.state import SLOT_TO_FIELD
from tests.strategies import configs, data, tolerance


def oracle_run(spec, params, grads_seq):
    orc = Oracle(spec)
    state = orc.init(params)
    for grads in grads_seq:
        params, state = orc.apply(grads, state, params)
    return params, state


FIELDS = SLOT_TO_FIELD


def interp_run(module, spec, params, grads_seq):
    slots = {s: [np.zeros_like(p) for p in params] for s in slots_for(spec)}
    step = np.int32(0)
    for grads in grads_seq:
        inputs = {"step": step, "param": params, "grad": grads, **slots, **runtime_scalars(spec, int(step)),
                  "single": np.array([p.size == 1 for p in params], np.float32)}
        if spec.lr_kind == "callable" and spec.lr_callable_arity == 1:
            inputs["lr"] = np.float32(spec.learning_rate(int(step)))
        out = run_module(module, inputs, len(params))
        params, step = out["param"], out["step"]
        slots = {s: out[s] for s in slots}
    return params, slots, step


def _exact_expected(spec) -> bool:
    # Sums of squares are summed in another order than XLA-CPU's (the oracle's), so norm clipping
    # can differ in the last bit; everything else is the same arithmetic, op for op.
    return spec.clip is None or spec.clip[0] == "clipvalue"


def _compare(got, want, exact, tol, what, start=None):  # noqa: C901
    """Exact, or within `tol`. For float16/bfloat16 under jit, XLA keeps fused intermediates in
    float32 instead of rounding after every op, and where v underflows (tiny clipped gradients,
    epsilon ~ 1e-7) the step m/(sqrt(v)+eps) is ill-conditioned: there a half-precision value
    may also differ by 5% of how far it moved from `start` (0 for slots)."""
    for i, (a, b) in enumerate(zip(got, want)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}[{i}]: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        a32, b32 = a.astype(np.float32), b.astype(np.float32)
        if exact:
            np.testing.assert_array_equal(a32, b32, err_msg=f"{what}[{i}]")
            continue
        np.testing.assert_array_equal(np.isnan(a32), np.isnan(b32), err_msg=f"{what}[{i}] NaN positions")
        allowed = tol["atol"] + tol["rtol"] * np.abs(b32)
        if a.dtype != np.float32:
            s0 = np.zeros_like(b32) if start is None else np.asarray(start[i]).astype(np.float32)
            allowed = allowed + 0.05 * np.abs(b32 - s0)
        bad = ~np.isnan(b32) & (np.abs(a32 - b32) > allowed)
        assert not bad.any(), f"{what}[{i}]: {bad.sum()} of {bad.size} differ; got {a32[bad][:5]} want {b32[bad][:5]}"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_interpreter_matches_oracle_after_every_pass(config):
    spec = adamgen.AdamSpec(**config["kw"])
    params, grads_seq = data(config)
    want_p, want_s = oracle_run(spec, params, grads_seq)
    stages = [("lowered", lower(spec, config["dtype"]))]
    collect = lambda name, module: stages.append((name, module))  # noqa: E731
    optimized = pipeline.run(stages[0][1], pipeline.OPTIMIZE, verify=True, dump_after=collect)
    pipeline.run(optimized, pipeline.FUSE, verify=True, dump_after=collect)
    assert [name for name, _ in stages] == ["lowered"] + [n for n, _ in pipeline.OPTIMIZE + pipeline.FUSE]
    for stage, module in stages:
        got_p, got_slots, step = interp_run(module, spec, params, grads_seq)
        exact = _exact_expected(spec)
        tol = tolerance(config["dtype"])
        _compare(got_p, want_p, exact, tol, f"{stage} param")
        for slot, values in got_slots.items():
            _compare(values, getattr(want_s, FIELDS[slot]), exact, tol, f"{stage} {slot}")
        assert int(step) == int(want_s.iterations)


# Found by CI: float16, tiny clipped gradients, v below float16's smallest normal.
ILL_CONDITIONED_F16 = dict(
    kw=dict(learning_rate=adamgen.schedules.InverseTimeDecay(0.1, decay_steps=2, decay_rate=0.5),
            beta_1=lambda: 0.9, loss_scale_factor=100.0, gradient_accumulation_steps=3, clipnorm=0.05),
    dtype="f16", shapes=[(3,)], steps=4, seed=0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
@example(ILL_CONDITIONED_F16)
def test_jax_target_matches_oracle(config):
    # Under jit XLA may contract a*b+c into an FMA (semantics page §10), so a few ulp apart.
    _target_matches_oracle(config, "jax")


def _well_conditioned(got, want, want_state, start):
    """Half precision under jit: where the oracle's velocity fell below the dtype's smallest normal
    number, the step m / (sqrt(v) + eps) divides by a subnormal or by eps alone, and rounding
    every op (the oracle, Keras eager) vs fused float32 intermediates (XLA) can move the param
    by a different large amount. Those elements are left out of the param comparison."""
    g2, w2, s2 = [], [], []
    for a, b, v, s0 in zip(got, want, want_state.velocities, start):
        a, b, s0 = np.asarray(a), np.asarray(b), np.asarray(s0)
        if b.dtype == np.float32:
            g2.append(a), w2.append(b), s2.append(s0)
            continue
        keep = np.asarray(v).astype(np.float32) >= np.finfo(np.float16).tiny
        g2.append(a[keep]), w2.append(b[keep]), s2.append(s0[keep])
    return g2, w2, s2


def _target_matches_oracle(config, target):
    spec = adamgen.AdamSpec(**config["kw"])
    params, grads_seq = data(config)
    want_p, want_s = oracle_run(spec, params, grads_seq)
    opt = adamgen.build(spec, target=target)
    p = [np.array(x) for x in params]
    state = opt.init(p)
    for grads in grads_seq:
        p, state = opt.apply(grads, state, p)
    state = state.unpacked()  # the native targets keep slots packed
    tol = tolerance(config["dtype"])
    got_p, want_p, start = _well_conditioned(p, want_p, want_s, params)
    _compare(got_p, want_p, False, tol, f"{target} param", start=start)
    for slot in slots_for(spec):
        _compare(getattr(state, FIELDS[slot]), getattr(want_s, FIELDS[slot]), False, tol, f"{target} {slot}")
    assert int(state.iterations) == int(want_s.iterations)


def _keras_kwargs(kw):
    """Keras cannot take callable betas (it crashes, semantics §12.1) nor adamgen schedules."""
    out = dict(kw)
    lr = out["learning_rate"]
    if hasattr(lr, "serialize"):
        import keras
        out["learning_rate"] = keras.optimizers.schedules.deserialize(lr.serialize())
    elif callable(lr):
        return None
    if any(callable(out[k]) for k in ("beta_1", "beta_2", "epsilon")):
        return None
    return out


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_jax_target_matches_real_keras(config):
    from tests.keras_ref import KerasRun

    keras_kw = _keras_kwargs(config["kw"])
    if keras_kw is None:  # callables: no Keras reference exists; covered against the oracle above
        return
    params, grads_seq = data(config)
    run = KerasRun(keras_kw, params)
    for grads in grads_seq:
        snap = run.step(grads)
    opt = adamgen.build(adamgen.AdamSpec(**config["kw"]), target="jax")
    p = [np.array(x) for x in params]
    state = opt.init(p)
    for grads in grads_seq:
        p, state = opt.apply(grads, state, p)
    tol = tolerance(config["dtype"])
    got_p, want_p, start = _well_conditioned(p, snap.params, snap, params)
    _compare(got_p, want_p, False, tol, "jax vs keras param", start=start)
    for slot in slots_for(opt.spec):
        _compare(getattr(state, FIELDS[slot]), getattr(snap, FIELDS[slot]), False, tol, f"jax vs keras {slot}")
    assert int(state.iterations) == int(snap.iterations)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_cpu_target_matches_oracle(config):
    """The native host kernel (the CUDA kernel's element body, compiled for the CPU). The body is
    op-for-op the IR with no FMA (-ffp-contract=off); the scalar kernels run under XLA's jit,
    which may contract, so compare with the JAX tolerance."""
    _target_matches_oracle(config, "cpu")


@pytest.mark.parametrize("n", [1, 2, 33, 70, 1000])
def test_global_sum_is_xlas_sum_of_the_stacked_values(n):
    """Keras adds the per-tensor sums as ops.sum(ops.stack(...)): XLA's order, in sequence up to
    32 values and in windows of 32 beyond. The JAX rule (inside a jit, where the values are
    computed in the same program, which XLA would otherwise fuse into the sum and reorder) and the
    interpreter give XLA's eager sum bit for bit. The values mix magnitudes so that another order
    (in sequence throughout) rounds differently."""
    import jax
    import jax.numpy as jnp

    from adamgen import xla_cpu
    from adamgen.backends.jax import _global_sum
    from adamgen.ir.builder import Builder
    from adamgen.ir.interp import run_function as interp_function
    from adamgen.ir.node import Function

    rng = np.random.default_rng(n)
    values = (rng.standard_normal(n) ** 2 * 10.0 ** rng.integers(-6, 6, n)).astype(np.float32)
    want = np.float32(xla_cpu.sum_f32(values))
    in_jit = jax.jit(lambda vs: _global_sum(jnp.stack([v * 1 for v in vs]), len(vs), np.float32))
    assert np.float32(in_jit([jnp.asarray(v) for v in values])).tobytes() == want.tobytes()
    b = Builder()
    fn = Function("total", (b.input("x", "f32", "T"),), (("total", b.global_sum(b.inputs[0])),), (("kind", "scalar"),))
    assert np.float32(interp_function(fn, {"x": values}, n)["total"]).tobytes() == want.tobytes()
    in_order = values[0]
    for v in values[1:]:
        in_order = np.float32(in_order + v)
    if n == 1000:  # the data tell the orders apart
        assert in_order != want


MIXED = {"f32+bf16": ("f32", "bf16", "f32", "bf16"), "f16+bf16": ("f16", "bf16", "bf16"),
         "f32+f16+bf16": ("bf16", "f32", "f16", "f32")}


@pytest.mark.parametrize("target", ["jax", "cpu"])
@pytest.mark.parametrize("mix", sorted(MIXED))
def test_global_clipnorm_over_several_param_dtypes(target, mix):
    """One global norm over a tree of several dtypes (the oracle, exact with Keras in
    test_oracle_keras, promotes the per-tensor sums to f32 and scales in f32): each compiled
    target runs its groups' kernels with the norm of the whole tree."""
    from adamgen.dtypes import numpy_dtype

    rng = np.random.default_rng(len(mix))
    spec = adamgen.AdamSpec(learning_rate=0.05, beta_2=0.99, global_clipnorm=1.0, amsgrad=True, weight_decay=0.01)
    shapes = [(40,), (3, 5), (7,), (2, 33)]
    dtypes = MIXED[mix]
    params = [rng.standard_normal(s).astype(numpy_dtype(d)) for s, d in zip(shapes, dtypes)]
    grads_seq = [[(rng.standard_normal(s) * scale).astype(numpy_dtype(d)) for s, d in zip(shapes, dtypes)]
                 for scale in (3.0, 0.05, 2.0)]
    want_p, want_s = oracle_run(spec, [p.copy() for p in params], grads_seq)
    opt = adamgen.build(spec, target=target)
    p = [np.array(x) for x in params]
    state = opt.init(p)
    for grads in grads_seq:
        p, state = opt.apply(grads, state, p)
    state = state.unpacked()
    # Every leaf's step depends on the norm, which depends on every group's sums: under jit XLA
    # keeps half-precision sums in float32 (excess precision; Keras eager rounds them), so on the
    # jax target even the f32 leaves are only as close as the tree's least precise dtype.
    loosest = "bf16" if "bf16" in dtypes else "f16"
    for i, d in enumerate(dtypes):
        tol = tolerance(loosest if target == "jax" else d)
        _compare([p[i]], [want_p[i]], False, tol, f"{target} param {i} ({d})", start=[params[i]])
        for slot in slots_for(spec):
            _compare([getattr(state, FIELDS[slot])[i]], [getattr(want_s, FIELDS[slot])[i]], False, tol,
                     f"{target} {slot} {i} ({d})")


def test_run_groups_sums_across_groups_in_leaf_order():
    """A global_sum over two dtype groups adds the per-tensor values in the tree's leaf order
    (Keras' stacked sum), and every group sees that one total. The values make the order visible
    in float32: 1 + 1e8 rounds to 1e8, so in leaf order [1, 1e8, 1, 1, 1, 1] every 1 after the
    first add is lost (total 1e8), while group order [1 x 5] then [1e8] gives 1e8 + 8."""
    import jax.numpy as jnp

    from adamgen.backends.jax import Group, run_groups
    from adamgen.ir.parser import parse_module

    module = parse_module('''module attributes {dtype = "f32", spec = "adam"} {
func @total(%x0: f32[T]) attributes {kind = "scalar"} {
  %0 = global_sum %x0 : f32
  return {total = %0}
}
}''')
    ones = Group(module, {"x0": jnp.ones(5, jnp.float32)}, (0, 2, 3, 4, 5))
    big = Group(module, {"x0": jnp.full(1, 1e8, jnp.float32)}, (1,))
    out = run_groups([ones, big])
    assert [float(o["total"]) for o in out] == [1e8, 1e8]
    grouped = np.float32(5) + np.float32(1e8)
    assert grouped != np.float32(1e8), "the values no longer tell the two orders apart"


@pytest.mark.parametrize("n", [33, 300])
def test_cpu_global_clipnorm_over_many_tensors_matches_the_oracle_exactly(n):
    """More than 32 tensors: the total of their sums is XLA's windowed sum, as in Keras (the
    oracle). The tensors have fewer elements than the host reduction's 16 summing lanes, so
    their own sums are in order on both sides too, and the whole step is exact."""
    rng = np.random.default_rng(n)
    params = [(rng.standard_normal(int(rng.integers(1, 16))) * 10.0 ** rng.integers(-3, 3)).astype(np.float32)
              for _ in range(n)]
    grads = [[(rng.standard_normal(p.shape) * 10.0 ** rng.integers(-3, 3)).astype(np.float32) for p in params]
             for _ in range(2)]
    spec = adamgen.AdamSpec(global_clipnorm=1.0, learning_rate=0.1)
    want, _ = oracle_run(spec, [p.copy() for p in params], grads)
    opt = adamgen.build(spec, target="cpu")
    p = [x.copy() for x in params]
    state = opt.init(p)
    for g in grads:
        p, state = opt.apply(g, state, p)
    _compare(p, want, True, None, "cpu param")


def test_module_variants_name_only_the_f32_norm_of_a_half_precision_group():
    from adamgen.lower import norm_dtype_for, parse_variant, variant

    assert [variant("bf16", "f32"), variant("f32", "f32"), variant("f16")] == ["bf16_f32norm", "f32", "f16"]
    assert parse_variant("bf16_f32norm") == ("bf16", "f32") and parse_variant("f16") == ("f16", "f16")
    for bad in ["f32_f32norm", "bf16_f16norm", "f32_bf16norm", "bf16_f32"]:
        with pytest.raises(ValueError, match="allowed are a param dtype, 'f16_f32norm' and 'bf16_f32norm'"):
            parse_variant(bad)
    glob, per = adamgen.AdamSpec(global_clipnorm=1.0), adamgen.AdamSpec(clipnorm=1.0)
    assert norm_dtype_for(glob, ["f32", "bf16"]) == "f32" and norm_dtype_for(glob, ["bf16", "bf16"]) is None
    assert norm_dtype_for(per, ["f32", "bf16"]) is None
    assert norm_dtype_for(adamgen.AdamSpec(global_clipnorm=0.0), ["f32", "bf16"]) is None  # clipping off
