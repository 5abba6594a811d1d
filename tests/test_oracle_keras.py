"""The NumPy oracle against real Keras 3 Adam (JAX backend, eager `apply`), bit for bit.

Every comparison is exact (float16/bfloat16 values are widened to float32 losslessly; -0 == +0
and NaN == NaN). Exactness needs XLA-CPU's own summation order (clipnorm/global_clipnorm) and its
pow (the bias corrections), both of which depend on the host CPU: the oracle has XLA-CPU compute
those two primitives, so the comparisons hold on any host and for tensors of any shape.
"""
from __future__ import annotations

import inspect
import types
import warnings

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import keras_ref  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
import jax.numpy as jnp
import keras

from adamgen import schedules
from adamgen import xla_cpu
from adamgen.oracle import Oracle
from tests.keras_ref import KerasRun
from adamgen.spec import AdamSpec

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
SLOTS = ("momentums", "velocities", "velocity_hats", "averages", "accumulators")
# Mixed shapes: one-element tensors, 2-D tensors with 2/4/8 rows, and
# tensors longer than 32 elements (XLA tree reduction).
SHAPES = [(), (1,), (7,), (40,), (3, 5), (4, 6), (2, 33), (100,), (8, 3), (16, 16)]


# ----------------------------------------------------------------------------- spec


def make_spec(**kwargs):
    """An AdamSpec from Keras-style kwargs."""
    return AdamSpec(**kwargs)


# ----------------------------------------------------------------------------- harness


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        a.astype(np.float32), b.astype(np.float32), equal_nan=True)


def _assert_matches(step, name, got, want):
    if want is None or got is None:
        assert got is None and want is None, f"step {step} {name}: {got} vs {want}"
        return
    assert len(got) == len(want)
    for j, (x, y) in enumerate(zip(got, want)):
        if not _same(x, y):
            x32, y32 = np.asarray(x, np.float32), np.asarray(y, np.float32)
            raise AssertionError(
                f"step {step} {name}[{j}] dtype {np.asarray(x).dtype}/{np.asarray(y).dtype}: "
                f"max|diff| {np.nanmax(np.abs(x32 - y32)) if x32.size else 0}\noracle {x32}\nkeras  {y32}")


def run_both(oracle_kw: dict, keras_kw: dict, params: list, grads_seq: list) -> None:
    """Apply grads_seq with both, compare params, every slot and the counter after each call."""
    orc = Oracle(make_spec(**oracle_kw))
    state = orc.init(params)
    ours = [np.array(p) for p in params]
    ref = KerasRun(keras_kw, params)
    for step, grads in enumerate(grads_seq):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours, state = orc.apply(grads, state, ours)
            snap = ref.step(grads)
        assert state.iterations == snap.iterations, f"step {step}"
        assert isinstance(state.iterations, np.int32)
        _assert_matches(step, "params", ours, snap.params)
        for slot in SLOTS:
            _assert_matches(step, slot, getattr(state, slot), getattr(snap, slot))
    _assert_matches("finalize", "params", orc.finalize(state, ours), ref.finalize())


def _params_and_grads(rng, shapes, dtype, steps, none_prob=0.0, zero_prob=0.0, gscale=1.0):
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    seq = []
    for _ in range(steps):
        grads = []
        for s in shapes:
            r = rng.random()
            if r < none_prob:
                grads.append(None)
            elif r < none_prob + zero_prob:
                grads.append(np.zeros(s, dtype))
            else:
                grads.append((rng.standard_normal(s) * gscale).astype(dtype))
        if all(g is None for g in grads):
            grads[0] = rng.standard_normal(shapes[0]).astype(dtype)
        seq.append(grads)
    return params, seq


# ----------------------------------------------------------------------------- hypothesis


def _lr_pair(kind: str, value: float):
    """(oracle lr, keras lr) for one learning-rate kind."""
    if kind == "float":
        return value, value
    if kind == "exp":
        return (schedules.ExponentialDecay(value, 3, 0.7),
                keras.optimizers.schedules.ExponentialDecay(value, 3, 0.7))
    if kind == "exp_stair":
        return (schedules.ExponentialDecay(value, 2, 0.5, staircase=True),
                keras.optimizers.schedules.ExponentialDecay(value, 2, 0.5, staircase=True))
    if kind == "cosine":
        # decay_steps=6: adamgen.schedules' NumPy cos agrees with XLA's on steps 0..9 (for
        # decay_steps 5/8/20 it is 1 ulp off at one step; not an oracle matter).
        return (schedules.CosineDecay(value, 6, alpha=0.1),
                keras.optimizers.schedules.CosineDecay(value, 6, alpha=0.1))
    if kind == "callable":  # zero-arg, as Keras calls it
        fn = lambda: np.float32(value)  # noqa: E731
        return fn, fn
    raise AssertionError(kind)


@st.composite
def configs(draw):
    dtype = draw(st.sampled_from(list(DTYPES)))
    lr_kind = draw(st.sampled_from(["float", "exp", "exp_stair", "cosine", "callable"]))
    lr = draw(st.sampled_from([0.001, 0.01, 0.1, 0.37]))
    kw = dict(
        beta_1=draw(st.sampled_from([0.9, 0.8, 0.5, 0.0])),
        # bf16 rounds 0.999 to 1.0 (no updates); keep it in but favour moving values.
        beta_2=draw(st.sampled_from([0.999, 0.99, 0.95, 0.9])),
        epsilon=draw(st.sampled_from([1e-7, 1e-4, 1e-2])),
        amsgrad=draw(st.booleans()),
        weight_decay=draw(st.sampled_from([None, 0.004, 0.1])),
        use_ema=draw(st.booleans()),
        ema_momentum=draw(st.sampled_from([0.99, 0.9, 0.5])),
        ema_overwrite_frequency=draw(st.sampled_from([None, None, 0, 1, 2, 3])),
        loss_scale_factor=draw(st.sampled_from([None, 128.0, 100.0, 3.7])),
        gradient_accumulation_steps=draw(st.sampled_from([None, None, 2, 3])),
    )
    clip_kind = draw(st.sampled_from([None, "clipnorm", "clipvalue", "global_clipnorm"]))
    if clip_kind:
        kw[clip_kind] = draw(st.sampled_from([0.05, 0.5, 1.0, 3.0, 0.0, -1.0]))
    tensor_hypers = draw(st.booleans()) and draw(st.booleans())  # 1 in 4
    shapes = draw(st.lists(st.sampled_from(SHAPES), min_size=2, max_size=4))
    shapes.append((40,))  # always a tensor longer than 32 elements...
    shapes.insert(draw(st.integers(0, len(shapes))), ())  # ...and a one-element tensor
    steps = draw(st.integers(5, 7))
    seed = draw(st.integers(0, 2**32 - 1))
    none_prob = draw(st.sampled_from([0.0, 0.0, 0.15]))
    return dtype, lr_kind, lr, kw, tensor_hypers, shapes, steps, seed, none_prob


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_oracle_matches_keras_random(config):
    dtype, lr_kind, lr, kw, tensor_hypers, shapes, steps, seed, none_prob = config
    rng = np.random.default_rng(seed)
    params, grads_seq = _params_and_grads(rng, shapes, DTYPES[dtype], steps, none_prob=none_prob,
                                          zero_prob=0.05, gscale=float(rng.choice([0.01, 1.0, 30.0])))
    oracle_lr, keras_lr = _lr_pair(lr_kind, lr)
    oracle_kw = dict(kw, learning_rate=oracle_lr)
    keras_kw = dict(kw, learning_rate=keras_lr)
    if tensor_hypers:
        # Keras rejects callables (§6) but accepts scalar tensors; the oracle models a tensor
        # hyper-parameter as a zero-arg callable returning float32.
        for name in ("beta_1", "beta_2", "epsilon"):
            value = kw[name]
            oracle_kw[name] = lambda v=value: np.float32(v)
            keras_kw[name] = jnp.float32(value)
    run_both(oracle_kw, keras_kw, params, grads_seq)


# ----------------------------------------------------------------------------- edge cases


def _one(oracle_kw, params, grads_seq, keras_kw=None):
    run_both(oracle_kw, dict(oracle_kw) if keras_kw is None else keras_kw, params, grads_seq)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_zero_gradients_with_clipnorm(dtype):
    dt = DTYPES[dtype]
    params = [np.ones((5,), dt), np.ones((), dt), np.ones((40,), dt)]
    zeros = [np.zeros_like(p) for p in params]
    _one(dict(learning_rate=0.1, clipnorm=1.0), params, [zeros, zeros, [p * 0.5 for p in params]])


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_inf_gradient_with_global_clipnorm_gives_all_nan(dtype):
    dt = DTYPES[dtype]
    params = [np.ones((5,), dt), np.ones((3, 4), dt)]
    g_inf = [np.array([1, np.inf, 0, 0, 0], dt), np.ones((3, 4), dt)]
    kw = dict(learning_rate=0.1, global_clipnorm=1.0)
    _one(kw, params, [g_inf])
    orc = Oracle(make_spec(**kw))
    out, state = orc.apply(g_inf, orc.init(params), params)
    assert all(np.isnan(np.asarray(x, np.float32)).all() for x in out + state.momentums)
    assert state.iterations == 1


def test_global_clipnorm_sum_overflow_gives_all_nan():
    params = [np.ones((3,), np.float32), np.ones((2,), np.float32)]
    _one(dict(learning_rate=0.1, global_clipnorm=1.0), params,
         [[np.array([1e20, 0, 0], np.float32), np.ones(2, np.float32)]])


def test_clipnorm_nonfinite_and_overflow():
    params = [np.ones((4,), np.float32), np.ones((3,), np.float32)]
    _one(dict(learning_rate=0.1, clipnorm=2.0), params,
         [[np.array([1, np.inf, 2, 0], np.float32), np.array([3e19, 1, 1], np.float32)]])


def test_ema_first_window_copy_under_accumulation():
    params = [np.array([1.0, -2.0, 3.0], np.float32)]
    kw = dict(learning_rate=0.1, use_ema=True, ema_momentum=0.9, gradient_accumulation_steps=3)
    grads = [[np.array([0.3, -0.1, 0.2], np.float32)]] * 7
    _one(kw, params, grads)
    orc = Oracle(make_spec(**kw))
    ours, state = [p.copy() for p in params], orc.init(params)
    for g in grads[:3]:
        ours, state = orc.apply(g, state, ours)
    # k_eff == 0 for the whole first window: the average is an exact copy of the updated θ.
    assert np.array_equal(state.averages[0], ours[0]) and not np.array_equal(ours[0], params[0])


@pytest.mark.parametrize("freq, n_acc", [(2, None), (3, None), (1, None), (0, None), (2, 3), (1, 2)])
def test_ema_overwrite_frequency(freq, n_acc):
    params = [np.array([1.0, -2.0, 3.0], np.float32), np.float32(0.5).reshape(())]
    rng = np.random.default_rng(7)
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(8)]
    _one(dict(learning_rate=0.05, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=freq,
              gradient_accumulation_steps=n_acc), params, grads)


def test_bf16_default_beta2_never_moves_params():
    bf = ml_dtypes.bfloat16
    params = [np.array([1.0, -2.0, 3.0], bf), np.array(0.25, bf)]
    rng = np.random.default_rng(3)
    grads = [[rng.standard_normal(p.shape).astype(bf) for p in params] for _ in range(5)]
    kw = dict(learning_rate=0.1)
    _one(kw, params, grads)
    orc = Oracle(make_spec(**kw))
    ours, state = [p.copy() for p in params], orc.init(params)
    for g in grads:
        ours, state = orc.apply(g, state, ours)
    assert all(np.array_equal(a, b) for a, b in zip(ours, params))
    assert np.any(np.asarray(state.momentums[0], np.float32) != 0)


def test_none_grads_are_skipped_with_warning():
    params = [np.ones((3,), np.float32), np.ones((2,), np.float32)]
    g = [np.full((3,), 0.5, np.float32), None]
    kw = dict(learning_rate=0.1, weight_decay=0.1, use_ema=True)
    _one(kw, params, [g, g, [None, np.ones(2, np.float32)]])
    orc = Oracle(make_spec(**kw))
    with pytest.warns(UserWarning, match=r"Gradients do not exist for variables \['variable_1'\]"):
        out, state = orc.apply(g, orc.init(params), params)
    assert np.array_equal(out[1], params[1]) and not np.any(state.momentums[1])
    with pytest.raises(ValueError, match="No gradients provided for any variable."):
        orc.apply([None, None], state, out)


def test_empty_grads_is_a_no_op():
    params = [np.ones((3,), np.float32)]
    orc = Oracle(make_spec(learning_rate=0.1))
    state = orc.init(params)
    out, state2 = orc.apply([], state, params)
    assert state2.iterations == 0 and np.array_equal(out[0], params[0]) and out[0] is not params[0]


def test_apply_never_mutates_inputs():
    params = [np.ones((3,), np.float32)]
    grads = [np.full((3,), 0.5, np.float32)]
    orc = Oracle(make_spec(learning_rate=0.1, amsgrad=True, use_ema=True, gradient_accumulation_steps=2))
    state = orc.init(params)
    before = [p.copy() for p in params], [a.copy() for a in state.accumulators]
    for _ in range(3):
        orc.apply(grads, state, params)
    assert np.array_equal(before[0][0], params[0]) and np.array_equal(before[1][0], state.accumulators[0])


def test_loss_scale_and_accumulation_one_element_tensors():
    # x/s is a true division for one-element tensors but the accumulation mean is a
    # reciprocal multiplication for every shape (§10.2/10.3).
    for dt in DTYPES.values():
        params = [np.array([0.3], dt), np.array(0.7, dt), np.ones((1, 1), dt), np.ones((6,), dt)]
        rng = np.random.default_rng(11)
        grads = [[(rng.standard_normal(p.shape) * 3).astype(dt) for p in params] for _ in range(6)]
        _one(dict(learning_rate=0.01, loss_scale_factor=3.7, gradient_accumulation_steps=3), params, grads)


def test_one_arg_callable_lr_sees_raw_counter():
    seen = []
    orc = Oracle(make_spec(learning_rate=lambda step: seen.append(step) or np.float32(0.1),
                           gradient_accumulation_steps=2))
    params = [np.ones((2,), np.float32)]
    state = orc.init(params)
    for _ in range(4):
        params, state = orc.apply([np.ones((2,), np.float32)], state, params)
    assert seen == [0, 1, 2, 3]
    assert orc.learning_rate_at(5) == np.float32(0.1)


def test_schedule_learning_rate_at_matches_keras():
    # The oracle evaluates the schedule at the raw counter k (jnp.int32, as Keras passes it).
    ours = schedules.CosineDecay(0.01, 6, alpha=0.1)
    theirs = keras.optimizers.schedules.CosineDecay(0.01, 6, alpha=0.1)
    orc = Oracle(make_spec(learning_rate=ours))
    for k in range(10):
        assert orc.learning_rate_at(k) == np.float32(np.asarray(theirs(jnp.int32(k))))


@pytest.mark.parametrize("clip", ["clipnorm", "global_clipnorm"])
def test_norm_clipping_matches_keras_on_shapes_whose_sum_order_is_the_hosts(clip):
    # XLA-CPU's summation order for these depends on the host CPU (a (16, 16) or (8, 16) tensor
    # sums in another order on an AVX-512 host than on an AVX2 one; 4097 elements and 2-D
    # tensors with both dims over 32 in an order no NumPy rule here reproduced): the oracle's
    # sums are XLA-CPU's own, so the trajectory stays bit-exact on every host.
    rng = np.random.default_rng(7)
    shapes = [(16, 16), (8, 16), (16, 32), (64, 64), (4097,), (40, 256)]
    params, seq = _params_and_grads(rng, shapes, np.float32, 4, gscale=3.0)
    _one(dict(learning_rate=0.01, **{clip: 0.5}), params, seq)


def test_bias_correction_powers_match_keras_on_every_host():
    # pow(0.9f, 4.0f) is 0.6560999 in XLA-CPU on an AVX-512 host and 0.6561 in NumPy: a scalar
    # parameter then moves one ulp differently at step 4 unless the oracle's beta ** t is XLA's.
    # (The case hypothesis found in test_oracle_matches_keras_random.)
    rng = np.random.default_rng(0)
    gscale = float(rng.choice([0.01, 1.0, 30.0]))
    params, seq = _params_and_grads(rng, [(), (), (), (40,)], np.float32, 5, zero_prob=0.05, gscale=gscale)
    _one(dict(learning_rate=0.01), params, seq)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_xla_cpu_power_is_xla_cpus_pow_in_the_dtype(dtype):
    dt = np.dtype(DTYPES[dtype])
    for beta in (0.9, 0.999, 0.5, 0.37):
        for t in range(1, 40):
            b, e = np.asarray(beta, dt), np.asarray(t, dt)
            got = xla_cpu.power(b, e)
            assert np.asarray(got).dtype == dt and np.shape(got) == ()
            assert _same(got, jnp.power(jnp.asarray(b), jnp.asarray(e))), (beta, t)
    with pytest.raises(TypeError, match="mixed dtypes"):
        xla_cpu.power(np.float32(0.9), np.float16(2))


def test_xla_cpu_sum_is_jnp_sum_and_unary_rejects_other_ops():
    x = np.square(np.random.default_rng(3).standard_normal((16, 16)).astype(np.float32) * 3)
    assert xla_cpu.sum_f32(x) == np.asarray(jnp.sum(jnp.asarray(x)))
    assert xla_cpu.unary("cos", np.float32(1.0)) == np.asarray(jnp.cos(jnp.float32(1.0)))
    with pytest.raises(ValueError, match="op must be one of"):
        xla_cpu.unary("exp", np.float32(1.0))


# Trees of several param dtypes under global_clipnorm: Keras stacks the per-tensor sums (promoted
# to float32) and scales every gradient in float32 before casting it back.
MIXED_TREES = {"f32+bf16": ("float32", "bfloat16", "float32", "bfloat16"),
               "f16+bf16": ("float16", "bfloat16", "bfloat16"),
               "f32+f16+bf16": ("bfloat16", "float32", "float16", "float32")}


@pytest.mark.parametrize("tree", sorted(MIXED_TREES))
@pytest.mark.parametrize("gscale", [0.05, 3.0])  # under and over the threshold
def test_global_clipnorm_over_several_dtypes(tree, gscale):
    rng = np.random.default_rng(len(tree) + int(gscale * 10))
    shapes = [(40,), (3, 5), (), (2, 33)]
    params, seq = [], [[] for _ in range(4)]
    for shape, dtype in zip(shapes, MIXED_TREES[tree]):
        p, grads = _params_and_grads(rng, [shape], DTYPES[dtype], 4, gscale=gscale)
        params += p
        for step, g in enumerate(grads):
            seq[step] += g
    _one(dict(learning_rate=0.05, beta_2=0.99, global_clipnorm=1.0, amsgrad=True), params, seq)
