"""adamgen.keras_optimizer.Adam: a keras.optimizers.Adam whose apply is adamgen's fused step,
against real Keras eagerly (bit for bit on the cpu target) and in model.fit."""
from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

from tests import keras_ref  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
import keras

from adamgen.keras_optimizer import Adam

FULL = dict(learning_rate=0.01, amsgrad=True, weight_decay=0.01, use_ema=True, ema_overwrite_frequency=3,
            gradient_accumulation_steps=2, loss_scale_factor=4.0, clipvalue=0.5)
# Norm clipping: the cpu target's sums of squares add in another order than XLA's (one ulp).
CLIPNORM = dict(learning_rate=keras.optimizers.schedules.CosineDecay(0.01, 10), global_clipnorm=1.0,
                weight_decay=0.02, beta_2=0.99)


def _variables(params):
    return [keras.Variable(p, name=n) for p, n in zip(params, ["kernel", "bias", "scale"])]


def _params(rng):
    return [rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32),
            rng.standard_normal(()).astype(np.float32)]


def _slots(opt):
    return [np.asarray(v.value) for v in opt.variables]


@pytest.mark.parametrize("target", ["jax", "cpu"])
@pytest.mark.parametrize("kw", [FULL, CLIPNORM], ids=["full", "schedule-global-clipnorm"])
def test_eager_apply_is_kerass_own(target, kw):
    """Seven eager applies with exclusions by name: every variable of the optimizer (counter,
    learning rate, slots, EMA, accumulators) and every param as Keras has them; bit for bit on
    the cpu target without norm clipping (the oracle's arithmetic), else within a few ulp (XLA
    contracts into FMAs on jax; sums of squares in another order on cpu)."""
    rng = np.random.default_rng(0)
    params = _params(rng)
    ours, ref = Adam(**kw, target=target), keras.optimizers.Adam(**kw)
    for opt in (ours, ref):
        opt.exclude_from_weight_decay(var_names=["bias"])
    va, vb = _variables(params), _variables(params)
    for _ in range(7):
        g = [(rng.standard_normal(p.shape) * 3).astype(np.float32) for p in params]
        ours.apply(g, va)
        ref.apply(g, vb)
    assert ours.fused_applies == 7
    got, want = [np.asarray(v.value) for v in va] + _slots(ours), [np.asarray(v.value) for v in vb] + _slots(ref)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        if target == "cpu" and kw is FULL:
            np.testing.assert_array_equal(a, b, err_msg=f"value {i}")
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=f"value {i}")


def _model(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])


@pytest.mark.parametrize("target", ["jax", "cpu"])
def test_model_fit_trains_as_keras_adam_does(target):  # cuda: below, where a GPU is lent
    """model.fit (Keras' jitted train step, stateless_apply) with the fused step and with Keras'
    Adam from the same weights: the same weights after two epochs, EMA finalized at the end."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((64, 5)).astype(np.float32), rng.standard_normal((64, 1)).astype(np.float32)
    kw = dict(FULL, loss_scale_factor=None)
    results = []
    for opt in (Adam(**kw, target=target), keras.optimizers.Adam(**kw)):
        model = _model(2)
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        results.append(model.get_weights())
        if isinstance(opt, Adam):
            assert opt.fused_applies >= 1, "the fused step never ran"
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_learning_rate_stays_a_keras_variable():
    """Changing optimizer.learning_rate between fits takes effect, as in Keras: at 0 (and no
    weight decay) a further epoch leaves the weights where they are."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((32, 5)).astype(np.float32), rng.standard_normal((32, 1)).astype(np.float32)
    opt = Adam(learning_rate=0.05, target="cpu")
    model = _model(3)
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    before = model.get_weights()
    opt.learning_rate = 0.0
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    opt.learning_rate = 0.05
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), before))


def test_a_missing_gradient_takes_kerass_own_apply():
    rng = np.random.default_rng(3)
    params = _params(rng)
    ours, ref = Adam(learning_rate=0.1, target="cpu"), keras.optimizers.Adam(learning_rate=0.1)
    va, vb = _variables(params), _variables(params)
    g = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    ours.apply(g, va)
    ref.apply(g, vb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.apply([g[0], None, g[2]], va)
        ref.apply([g[0], None, g[2]], vb)
    assert ours.fused_applies == 1
    for a, b in zip(va + list(ours.variables), vb + list(ref.variables)):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))


def test_config_round_trips_with_its_target():
    opt = Adam(learning_rate=0.002, amsgrad=True, target="cpu")
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is Adam and again.target == "cpu" and again.amsgrad
    assert again.get_config() == opt.get_config()
    with pytest.raises(ValueError, match=r"target must be one of \('jax', 'cpu', 'cuda'\)"):
        Adam(target="numpy")


GPU = any(d.platform == "gpu" for d in jax.devices())


@pytest.mark.skipif(GPU, reason="checks the message given where JAX has no GPU")
def test_cuda_target_without_a_gpu_says_so_at_construction():
    with pytest.raises(RuntimeError, match="the cuda target runs on an NVIDIA GPU visible to JAX"):
        Adam(target="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs an NVIDIA GPU visible to JAX (runs where the device tool lends one)")
def test_cuda_target_model_fit_trains_as_keras_adam_does():
    test_model_fit_trains_as_keras_adam_does("cuda")


def test_cases_keras_computes_otherwise_take_its_own_apply():
    """An EMA over variables left out of the call, gradients of another dtype under norm clipping,
    tensor betas: Keras' own apply runs (fused_applies stays 0) and the results are Keras'."""
    import jax.numpy as jnp

    rng = np.random.default_rng(4)
    params = _params(rng)
    cases = [(dict(use_ema=True), lambda g, v: ([g[0]], [v[0]])),
             (dict(global_clipnorm=1.0), lambda g, v: ([x.astype(jnp.bfloat16) for x in g], v)),
             (dict(beta_1=jnp.float32(0.8)), lambda g, v: (g, v))]
    for kw, pick in cases:
        ours, ref = Adam(learning_rate=0.1, **kw, target="cpu"), keras.optimizers.Adam(learning_rate=0.1, **kw)
        va, vb = _variables(params), _variables(params)
        ours.build(va)
        ref.build(vb)
        for _ in range(3):
            g = [jnp.asarray(rng.standard_normal(p.shape).astype(np.float32)) for p in params]
            ours.apply(*pick(g, va))
            ref.apply(*pick(g, vb))
        assert ours.fused_applies == 0, kw
        for a, b in zip(va + list(ours.variables), vb + list(ref.variables)):
            np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value), err_msg=str(kw))
