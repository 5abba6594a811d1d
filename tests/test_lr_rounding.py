"""Host numbers that Keras casts to a variable's dtype reach half-precision params as Keras has them.

Keras' `ops.cast(x, dtype)` of a Python number (a double) rounds it straight to float16 (and
float32), one rounding, but through float32 to bfloat16 (its convert_to_tensor makes a float32
array first for bfloat16). It casts so the value of a callable `learning_rate()`, the bases of
the beta powers and the weight decay; every other site takes the number as a weakly typed
float32. The values used here are doubles whose float16 or bfloat16 rounding differs from the
rounding of their float32, so each test fails if the other rule is applied at one of those sites.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from tests import keras_ref  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
import jax
import jax.numpy as jnp
import keras

import adamgen
from adamgen.backends.jax import group_scalars
from adamgen.keras_optimizer import Adam
from adamgen.runtime import lr_per_dtype, runtime_scalars

HALVES = {"f16": np.float16, "bf16": ml_dtypes.bfloat16}


def double_rounding_values(dtype, n: int, low: float = 1e-3, high: float = 0.3, seed: int = 0) -> list[float]:
    """n doubles in [low, high) whose rounding to `dtype` differs from its rounding of their
    float32: just above the midpoint of two neighbours, closer than float32 can tell apart."""
    rng = np.random.default_rng(seed)
    out: list[float] = []
    while len(out) < n:
        below = dtype(rng.uniform(low, high))
        above = np.nextafter(below, dtype(2))
        x = (float(below) + float(above)) / 2 * (1 + 2.0 ** -40)
        if low <= x < high and dtype(x) != dtype(np.float32(x)):
            out.append(x)
    return out


@pytest.mark.parametrize("name", list(HALVES))
def test_the_values_are_double_rounding_cases(name):
    dtype = HALVES[name]
    for x in double_rounding_values(dtype, 5):
        assert dtype(x) != dtype(np.float32(x))


def test_runtime_scalars_round_a_host_value_once_for_f16_and_a_jax_array_not_at_all():
    x = double_rounding_values(np.float16, 1)[0]
    host = runtime_scalars(adamgen.AdamSpec(learning_rate=lambda: x))
    assert host["lr"] == np.float32(x) and host["lr@f16"] == np.float32(np.float16(x))
    assert lr_per_dtype(x) == {"lr@f16": host["lr@f16"]}
    assert group_scalars(host, "f16") == {"lr": host["lr@f16"]}
    assert group_scalars(host, "f32") == {"lr": host["lr"]}
    assert group_scalars(host, "bf16") == {"lr": host["lr"]}  # Keras: through float32
    device = runtime_scalars(adamgen.AdamSpec(learning_rate=lambda: jnp.float32(x)))
    assert set(device) == {"lr"}  # Keras' float32 variable: one rounding already, as Keras has it


def _keras_run(dtype, lr, params, grads_seq, **kw):
    variables = [keras.Variable(p) for p in params]
    opt = keras.optimizers.Adam(learning_rate=(lambda: lr) if lr is not None else 0.01, **kw)
    for grads in grads_seq:
        opt.apply([np.asarray(g) for g in grads], variables)
    return [np.asarray(v.value) for v in variables]


def _data(dtypes, seed):
    rng = np.random.default_rng(seed)
    shapes = [(5, 3), (17,), ()]
    params = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
    grads_seq = [[rng.standard_normal(p.shape).astype(p.dtype) for p in params] for _ in range(3)]
    return params, grads_seq


def _run(target, lr, params, grads_seq, **kw):
    opt = adamgen.build(adamgen.AdamSpec(learning_rate=(lambda: lr) if lr is not None else 0.01, **kw),
                        target=target)
    p = [np.array(x) for x in params]
    state = opt.init(p)
    for grads in grads_seq:
        p, state = opt.apply(grads, state, p)
    return [np.asarray(x) for x in p]


def _assert_same(got, want, what):
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.astype(np.float32), b.astype(np.float32), err_msg=f"{what}, tensor {i}")


@pytest.mark.parametrize("name", list(HALVES))
@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_half_precision_params_with_a_callable_lr_are_kerass_bit_for_bit(target, name):
    """The oracle and the cpu target (op for op the oracle's arithmetic) against real Keras,
    weight decay included (its lr is cast the same way), on lrs that round twice otherwise."""
    dtype = HALVES[name]
    for seed, lr in enumerate(double_rounding_values(dtype, 3)):
        params, grads_seq = _data([dtype] * 3, seed)
        want = _keras_run(dtype, lr, params, grads_seq, weight_decay=0.1)
        _assert_same(_run(target, lr, params, grads_seq, weight_decay=0.1), want, f"{target} lr={lr!r}")


@pytest.mark.parametrize("name", list(HALVES))
@pytest.mark.parametrize("key", ["beta_1", "beta_2", "weight_decay"])
@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_betas_and_weight_decay_are_cast_as_keras_casts_them(target, key, name):
    """beta_1/beta_2 (the bases of the bias-correction powers) and weight_decay, at values
    that round twice otherwise, against real Keras, bit for bit."""
    dtype = HALVES[name]
    low, high = {"beta_1": (0.5, 0.95), "beta_2": (0.9, 0.99), "weight_decay": (0.01, 0.3)}[key]
    values = double_rounding_values(dtype, 2, low, high, seed=4)
    for seed, value in enumerate(values):
        kw = {key: value, "beta_2": 0.9} if key != "beta_2" else {key: value}
        params, grads_seq = _data([dtype] * 3, 20 + seed)
        want = _keras_run(dtype, None, params, grads_seq, **kw)
        _assert_same(_run(target, None, params, grads_seq, **kw), want, f"{target} {key}={value!r}")


@pytest.mark.parametrize("target", ["jax", "cpu"])
def test_a_tree_of_three_dtypes_gives_each_group_its_own_rounding(target):
    """float32, float16 and bfloat16 params in one tree: each dtype's group takes its own
    rounding of the value; the targets agree with the oracle (the jax target within XLA's
    excess precision for half types, its documented tolerance)."""
    lr = double_rounding_values(np.float16, 1)[0]
    params, grads_seq = _data([np.float32, np.float16, ml_dtypes.bfloat16], 7)
    want = _run("numpy", lr, params, grads_seq)
    _assert_same(want, _keras_run(None, lr, params, grads_seq), "oracle vs keras")
    got = _run(target, lr, params, grads_seq)
    if target == "cpu":
        _assert_same(got, want, "cpu")
    else:
        for a, b in zip(got, want):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("target", ["jax", "cpu"])
def test_keras_optimizer_passes_a_callables_host_value_through(target):
    """adamgen.keras_optimizer.Adam with a Python-float callable on float16 variables: the
    fused step takes Keras' one rounding (bit for bit on the cpu target)."""
    lr = double_rounding_values(np.float16, 1, seed=3)[0]
    params, grads_seq = _data([np.float16] * 3, 11)
    ours = Adam(learning_rate=lambda: lr, target=target)
    variables = [keras.Variable(p) for p in params]
    for grads in grads_seq:
        ours.apply([np.asarray(g) for g in grads], variables)
    assert ours.fused_applies == len(grads_seq)
    got = [np.asarray(v.value) for v in variables]
    want = _keras_run(np.float16, lr, params, grads_seq)
    if target == "cpu":
        _assert_same(got, want, "keras optimizer, cpu")
    else:
        for a, b in zip(got, want):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=1e-2, atol=1e-3)
    assert jax.numpy.dtype(got[0].dtype) == np.float16
