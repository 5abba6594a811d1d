"""The step's scalar functions (learning-rate schedule, bias corrections) under jax.jit.

Keras computes them one eager op at a time. Inside one jit XLA would rewrite a division by a
constant as a product with its reciprocal (21 * (1/7) = 3.0000002, so a PolynomialDecay's
ceil(21 / 7) became 4 and (1 - p) ** 0.5 of a negative p NaN) and keep float16/bfloat16
values in float32 between ops; the jax backend keeps every scalar op behind a barrier and the
step's jits turn excess precision off. What stays is XLA's FMA contraction of a product into a
following sum (one rounding fewer: an ulp at most, at some steps).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import jax
import jax.numpy as jnp

import adamgen
from adamgen import pipeline, schedules
from adamgen.backends.jax import run_function
from adamgen.ir.interp import run_function as interpret
from adamgen.lower import lower

DIVIDING_SCHEDULES = [
    schedules.PolynomialDecay(0.01, 3, end_learning_rate=0.001, power=0.5),
    schedules.PolynomialDecay(0.01, 7, end_learning_rate=0.001, power=1.0, cycle=True),
    schedules.PolynomialDecay(0.02, 10, end_learning_rate=0.0, power=1.7),
    schedules.ExponentialDecay(0.1, 7, 0.5, staircase=True),
    schedules.InverseTimeDecay(0.1, 3, 0.5, staircase=True),
]


def _scalar_function(spec, dtype: str = "f32"):
    module = pipeline.fuse_kernels(pipeline.optimize(lower(spec, dtype)))
    return next(f for f in module.functions if f.attr("kind") == "scalar")


def _ulps(a, b) -> int:
    a, b = np.float32(a), np.float32(b)
    return abs(int(a.view(np.int32)) - int(b.view(np.int32)))


@pytest.mark.parametrize("schedule", DIVIDING_SCHEDULES, ids=lambda s: type(s).__name__)
def test_scalars_under_jit_are_the_interpreters_up_to_an_fma(schedule):
    fn = _scalar_function(adamgen.AdamSpec(learning_rate=schedule))
    jitted = jax.jit(lambda step: run_function(fn, {"step": step}, 1))
    for k in range(32):
        want = interpret(fn, {"step": np.int32(k)}, 1)
        got = jitted(jnp.int32(k))
        for name, value in want.items():
            if name == "step":
                assert int(got[name]) == k + 1
                continue
            assert np.isfinite(np.asarray(got[name])), f"step {k}: {name} is {got[name]}"
            assert _ulps(got[name], value) <= 1, f"step {k}: {name} {got[name]!r} vs {value!r}"


@pytest.mark.parametrize("target", ["jax", "cpu"])
def test_a_polynomial_decay_at_its_end_trains_as_the_oracle(target):
    """Steps past decay_steps: the lr is end_learning_rate; before the barriers the targets'
    params turned NaN at k = 3 here."""
    spec = adamgen.AdamSpec(learning_rate=DIVIDING_SCHEDULES[0])
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(33).astype(np.float32)]
    ours, oracle = adamgen.build(spec, target=target), adamgen.build(spec, target="numpy")
    p, q = [np.array(params[0])], [np.array(params[0])]
    s, t = ours.init(p), oracle.init(q)
    for _ in range(8):
        g = [rng.standard_normal(33).astype(np.float32)]
        p, s = ours.apply(g, s, p)
        q, t = oracle.apply(g, t, q)
        assert np.all(np.isfinite(np.asarray(p[0])))
        np.testing.assert_allclose(np.asarray(p[0]), q[0], rtol=1e-6, atol=1e-7)


def test_half_precision_scalars_round_after_every_op():
    """A bfloat16 bias correction computed under the step's jit options equals the
    interpreter's (XLA would otherwise carry float32 between the ops)."""
    from adamgen.backends.jax import STEP_COMPILER_OPTIONS

    fn = _scalar_function(adamgen.AdamSpec(learning_rate=0.01, beta_1=0.9394531250008544, beta_2=0.9), "bf16")
    jitted = jax.jit(lambda step: run_function(fn, {"step": step}, 1), compiler_options=STEP_COMPILER_OPTIONS)
    for k in range(16):
        want = interpret(fn, {"step": np.int32(k)}, 1)
        got = jitted(jnp.int32(k))
        for name, value in want.items():
            assert np.asarray(got[name]).astype(np.float32) == np.asarray(value).astype(np.float32), (k, name)
            if name != "step":
                assert np.asarray(got[name]).dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize("schedule", [schedules.CosineDecay(0.02231113681823181, 5, alpha=0.1), DIVIDING_SCHEDULES[0],
                                      DIVIDING_SCHEDULES[2]], ids=["cosine", "poly-sqrt", "poly-1.7"])
def test_cpu_target_with_a_schedule_is_the_oracle_bit_for_bit(schedule):
    """The cpu target's jit compiles its scalar ops at LLVM -O0 (HOST_COMPILER_OPTIONS), so no
    product and sum become an FMA there: with a schedule its params are the oracle's exactly
    (at -O2 they were 1-2 ulp apart from the second step on)."""
    spec = adamgen.AdamSpec(learning_rate=schedule, beta_1=0.5, beta_2=0.95)
    rng = np.random.default_rng(639931658)
    params = [(rng.standard_normal((3, 40)) * 3).astype(np.float32)]
    ours, oracle = adamgen.build(spec, target="cpu"), adamgen.build(spec, target="numpy")
    p, q = [np.array(params[0])], [np.array(params[0])]
    s, t = ours.init(p), oracle.init(q)
    for k in range(12):
        g = [(rng.standard_normal((3, 40)) * 3).astype(np.float32)]
        p, s = ours.apply(g, s, p)
        q, t = oracle.apply(g, t, q)
        np.testing.assert_array_equal(np.asarray(p[0]), q[0], err_msg=f"step {k}")
