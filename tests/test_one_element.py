"""A one-element tensor divided by a scalar: Keras' true division, not the reciprocal's product.

XLA-CPU rewrites `x / s` (a tensor by a scalar) as `x * (1/s)` for tensors of more than one
element; Keras' eager op on a one-element tensor (shape (), (1,), (1, 1)) divides exactly
(semantics §10.2). That reaches the loss-scale division and clipnorm's `/ max(n, c)`; the
accumulation mean, inside Keras' lax.cond, is the reciprocal form for every shape (§10.3).
The gradients here are ones whose two forms differ, so each test fails if a target takes the
other form for either kind of tensor.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests import keras_ref  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
import jax

import adamgen
from adamgen.lower import lower, takes_single
from tests.keras_ref import KerasRun

SCALE = 100.0


def _differing(n: int, seed: int, after=lambda y: y) -> np.ndarray:
    """n float32 values g with after(g / 100) != after(g * (1/100)) in float32."""
    rng = np.random.default_rng(seed)
    out: list[np.float32] = []
    recip = np.float32(1) / np.float32(SCALE)
    while len(out) < n:
        g = np.float32(rng.standard_normal())
        if after(g / np.float32(SCALE)) != after(g * recip):
            out.append(g)
    return np.array(out, np.float32)


def _first_momentum(y):
    """Keras' first momentum from zeros: 0 + (y - 0) * (1 - beta_1), beta_1 = 0.9."""
    return np.float32(0) + (y - np.float32(0)) * np.float32(1 - 0.9)


def _data(steps: int):
    """Params and gradients: a (1,) and a () tensor, then a (3,) one (the reciprocal form)."""
    shapes = [(1,), (), (3,)]
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[_differing(int(np.prod(s)), 10 * k + i, _first_momentum).reshape(s) for i, s in enumerate(shapes)]
             for k in range(steps)]
    return params, grads


def test_the_gradients_tell_the_two_forms_apart():
    for grads in _data(3)[1]:
        for g in grads:
            g = np.ravel(g)
            assert (g / np.float32(SCALE) != g * (np.float32(1) / np.float32(SCALE))).all()


def test_the_lowered_step_takes_a_per_tensor_single_flag_only_where_keras_divides_by_a_scalar():
    def takes(**kw):
        spec = adamgen.AdamSpec(**kw)
        fn = lower(spec, "f32").functions[0]
        has = "single" in {n.attr("name") for n in fn.inputs}
        assert has == takes_single(spec), kw  # what step_inputs asks for it by
        return has

    assert takes(loss_scale_factor=SCALE) and takes(clipnorm=1.0)
    assert not takes() and not takes(global_clipnorm=1.0) and not takes(clipvalue=1.0)
    assert not takes(gradient_accumulation_steps=3)  # the mean: the reciprocal for every shape


def _keras(kw, params, grads_seq):
    run = KerasRun(kw, params)
    for grads in grads_seq:
        snap = run.step(grads)
    return snap


def _ours(kw, target, params, grads_seq):
    opt = adamgen.build(adamgen.AdamSpec(**kw), target=target)
    p = [np.array(x) for x in params]
    state = opt.init(p)
    for grads in grads_seq:
        p, state = opt.apply(grads, state, p)
    return [np.asarray(x) for x in p], state.unpacked()


# clipnorm is large enough not to clip, so the division by max(n, c) = c is the one seen
CASES = {
    "loss scale": dict(learning_rate=0.01, loss_scale_factor=SCALE),
    "loss scale, accumulation": dict(learning_rate=0.01, loss_scale_factor=SCALE, gradient_accumulation_steps=2),
    "clipnorm": dict(learning_rate=0.01, clipnorm=SCALE),
}


@pytest.mark.parametrize("target", ["numpy", "cpu"])
@pytest.mark.parametrize("case", list(CASES))
def test_one_element_tensors_match_keras_to_the_bit(case, target):
    # The cpu target's element body is the IR op for op (no FMA), so bit-exact is expected;
    # the (3,) tensor checks that the longer tensors kept the reciprocal form.
    kw = CASES[case]
    params, grads_seq = _data(4)
    want = _keras(kw, params, grads_seq)
    got_p, got_s = _ours(kw, target, params, grads_seq)
    for i, (a, b) in enumerate(zip(got_p, want.params)):
        np.testing.assert_array_equal(a, b, err_msg=f"{case}: param {i}")
    for i, (a, b) in enumerate(zip(got_s.momentums, want.momentums)):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=f"{case}: momentum {i}")


def test_the_jax_targets_first_moment_divides_one_element_tensors_exactly():
    # The jax target may contract a product and a sum into an FMA elsewhere in the step, but the
    # first momentum after one step is (g / s) * (1 - beta_1), a division and one product.
    kw = CASES["loss scale"]
    params, grads_seq = _data(1)
    want = _keras(kw, params, grads_seq)
    _, got_s = _ours(kw, "jax", params, grads_seq)
    for i, (a, b) in enumerate(zip(got_s.momentums, want.momentums)):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=f"momentum {i}")


def test_an_exported_flat_step_of_one_element_divides_exactly(tmp_path):
    # A jax artifact's flat step is exported for a symbolic length n: the flag is computed from n.
    from adamgen import aot

    spec = adamgen.AdamSpec(**CASES["loss scale"])
    out = aot.write_artifact(spec, "jax", tmp_path / "art")
    opt = adamgen.load(out)
    for shape in [(1,), (3,)]:
        params = [np.zeros(shape, np.float32)]
        grads = [_differing(int(np.prod(shape)), 7, _first_momentum)]
        want = _keras(CASES["loss scale"], params, [grads])
        p, state = opt.apply(grads, opt.init(params), [jax.numpy.asarray(params[0])])
        np.testing.assert_array_equal(np.asarray(state.unpacked().momentums[0]), want.momentums[0],
                                      err_msg=f"shape {shape}")
