"""The user API: pytrees, dtypes, state fields, finalize, optax, flat buffers, errors."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import adamgen
from adamgen import flat


def _tree(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {"dense": {"w": rng.standard_normal((4, 3)).astype(dtype), "b": rng.standard_normal(3).astype(dtype)},
            "emb": [rng.standard_normal((5, 2)).astype(dtype), rng.standard_normal(()).astype(dtype)]}


def _grads(tree, seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: (rng.standard_normal(np.shape(x)) * 0.3).astype(x.dtype), tree)


def _run(opt, params, steps=4):
    state = opt.init(params)
    for k in range(steps):
        params, state = opt.apply(_grads(params, k), state, params)
    return params, state


def _close(a, b, **tol):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(
        np.asarray(x, np.float32), np.asarray(y, np.float32), **(tol or dict(rtol=1e-5, atol=1e-6))), a, b)


@pytest.mark.parametrize("target", ["numpy", "jax"])
def test_nested_pytree_state_fields(target):
    spec = adamgen.AdamSpec(amsgrad=True, use_ema=True, gradient_accumulation_steps=2)
    params, state = _run(adamgen.build(spec, target), _tree())
    assert jax.tree_util.tree_structure(state.momentums) == jax.tree_util.tree_structure(_tree())
    for field in ("momentums", "velocities", "velocity_hats", "averages", "accumulators"):
        assert getattr(state, field) is not None
    assert int(state.iterations) == 4
    plain = adamgen.build(adamgen.AdamSpec(), target).init(_tree())
    assert plain.velocity_hats is None and plain.averages is None and plain.accumulators is None


def test_jax_and_numpy_targets_agree_on_a_tree():
    spec = adamgen.AdamSpec(weight_decay=0.01, clipnorm=0.5, learning_rate=0.01)
    want, _ = _run(adamgen.build(spec, "numpy"), _tree())
    got, _ = _run(adamgen.build(spec, "jax"), _tree())
    _close(got, want)


def test_mixed_dtypes_in_one_tree():
    tree = {"a": _tree()["dense"]["w"], "b": _tree(np.float16)["dense"]["b"],
            "c": _tree(ml_dtypes.bfloat16)["emb"][0]}
    spec = adamgen.AdamSpec(beta_2=0.99, learning_rate=0.01)
    want, _ = _run(adamgen.build(spec, "numpy"), tree)
    got, state = _run(adamgen.build(spec, "jax"), tree)
    assert state.momentums["b"].dtype == np.float16 and state.momentums["c"].dtype == ml_dtypes.bfloat16
    _close(got, want, rtol=1e-2, atol=1e-2)


def test_finalize_copies_the_average_only_with_ema():
    params = _tree()
    opt = adamgen.build(adamgen.AdamSpec(use_ema=True, ema_momentum=0.5), "jax")
    p, s = _run(opt, params)
    fin = opt.finalize(s, p)
    _close(fin, s.averages, rtol=0, atol=0)
    opt2 = adamgen.build(adamgen.AdamSpec(), "jax")
    p2, s2 = _run(opt2, params)
    assert opt2.finalize(s2, p2) is p2


def test_optax_adapter_matches_apply():
    import optax

    spec = adamgen.AdamSpec(learning_rate=0.01, amsgrad=True)
    tx = adamgen.build(spec, "jax").as_optax()
    params = jax.tree_util.tree_map(jnp.asarray, _tree())
    state = tx.init(params)
    for k in range(3):
        updates, state = tx.update(_grads(params, k), state, params)
        params = optax.apply_updates(params, updates)
    want, _ = _run(adamgen.build(spec, "numpy"), _tree(), steps=3)
    _close(params, want)


def test_flat_buffer_round_trip_and_step():
    params = _tree()
    buf, unravel = flat.ravel(params)
    assert buf.shape == (12 + 3 + 10 + 1,)
    _close(unravel(buf), params, rtol=0, atol=0)
    opt = adamgen.build(adamgen.AdamSpec(learning_rate=0.01), "jax")
    state = opt.init(buf)
    gbuf, _ = flat.ravel(_grads(params, 0))
    new, state = opt.apply(gbuf, state, buf)
    want, _ = _run(adamgen.build(adamgen.AdamSpec(learning_rate=0.01), "numpy"), params, steps=1)
    _close(unravel(new), want)
    with pytest.raises(ValueError, match="several dtypes"):
        flat.ravel({"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float16)})


def test_apply_donates_params_on_jax():
    opt = adamgen.build(adamgen.AdamSpec(), "jax")
    params = [jnp.ones(1024)]
    state = opt.init(params)
    new, state = opt.apply([jnp.ones(1024)], state, params)
    assert params[0].is_deleted()
    assert not new[0].is_deleted()


def test_bad_target_and_none_grad_errors():
    with pytest.raises(ValueError, match="target must be one of"):
        adamgen.build(adamgen.AdamSpec(), "tpu")
    opt = adamgen.build(adamgen.AdamSpec(), "jax")
    params = [np.ones(3, np.float32), np.ones(2, np.float32)]
    state = opt.init(params)
    with pytest.raises(ValueError, match="gradient is None"):
        opt.apply([np.ones(3, np.float32), None], state, params)


def test_numpy_target_skips_none_grads_like_keras():
    opt = adamgen.build(adamgen.AdamSpec(), "numpy")
    params = [np.ones(3, np.float32), np.ones(2, np.float32)]
    state = opt.init(params)
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        new, state = opt.apply([np.ones(3, np.float32), None], state, params)
    np.testing.assert_array_equal(new[1], params[1])
    assert not np.array_equal(new[0], params[0])


def test_build_accepts_a_keras_config_dict():
    cfg = adamgen.AdamSpec(amsgrad=True, learning_rate=0.01).get_config()
    opt = adamgen.build(cfg, "jax")
    assert opt.spec.amsgrad and opt.spec == adamgen.AdamSpec.from_keras_config(cfg)


def test_bf16_default_beta2_warns_at_init():
    opt = adamgen.build(adamgen.AdamSpec(), "jax")
    with pytest.warns(UserWarning, match="beta_2"):
        opt.init([np.ones(3, ml_dtypes.bfloat16)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.init([np.ones(3, np.float32)])


@pytest.mark.parametrize("target", ["jax", "cpu"])
def test_a_gradient_of_another_shape_is_refused_before_anything_is_donated(target):
    """Same size but another shape, or another size: a clear error naming the leaf, raised while
    the step is traced, so the params and state are still there and usable afterwards."""
    opt = adamgen.build(adamgen.AdamSpec(), target=target)
    params = {"b": jax.device_put(np.ones(3, np.float32)), "w": jax.device_put(np.ones((4, 3), np.float32))}
    state = opt.init(params)
    for bad in [(3, 4), (12,), (5, 5)]:
        with pytest.raises(ValueError, match=r"gradient of leaf 1 has shape"):
            opt.apply({"b": np.ones(3, np.float32), "w": np.ones(bad, np.float32)}, state, params)
    new, _ = opt.apply({"b": np.ones(3, np.float32), "w": np.ones((4, 3), np.float32)}, state, params)
    assert float(new["w"][0, 0]) < 1.0


def test_the_readme_submodules_are_reachable_from_a_plain_import():
    import subprocess
    import sys

    code = "import adamgen; adamgen.checkpoint.save; adamgen.interop.from_optax; adamgen.flat.ravel"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_apply_names_a_state_of_another_optimizer_before_any_work():
    p, g = {"w": np.ones(4, np.float32)}, {"w": np.ones(4, np.float32)}
    plain, ams = adamgen.build(adamgen.AdamSpec(), "jax"), adamgen.build(adamgen.AdamSpec(amsgrad=True), "jax")
    cpu = adamgen.build(adamgen.AdamSpec(), "cpu")
    with pytest.raises(ValueError, match=r"state.velocity_hats is set, but this optimizer keeps none"):
        plain.apply(g, ams.init(p), dict(p))
    with pytest.raises(ValueError, match=r"state.velocity_hats is None, but this optimizer keeps it \(amsgrad=True\)"):
        ams.apply(g, plain.init(p), dict(p))
    with pytest.raises(ValueError, match="packed slabs"):
        plain.apply(g, cpu.init(p), dict(p))
    with pytest.raises(TypeError, match="AdamState"):
        plain.apply(g, None, dict(p))
    state = plain.restore(cpu.init(p), p)  # what the messages point to
    new, _ = plain.apply(g, state, dict(p))
    assert float(new["w"][0]) < 1.0


def test_init_names_a_leaf_that_is_not_an_array():
    with pytest.raises(TypeError, match=r"param \['w'\] is a float, not an array"):
        adamgen.build(adamgen.AdamSpec(), "jax").init({"b": np.ones(2, np.float32), "w": 1.0})


class _OtherDefault:
    platform = "gpu"


@pytest.mark.parametrize("packed", [True, False])
def test_a_cpu_target_state_lands_on_the_cpu_where_the_default_device_is_another(monkeypatch, packed):
    """On a GPU host JAX's default device is the GPU, where a cpu target's kernels cannot read
    the state: init and restore put it on the cpu instead (here the default is faked, as this
    machine has no GPU). With the default on the cpu it stays uncommitted, free to follow
    sharded params into a jit."""
    from dataclasses import replace

    from adamgen.backends.cpp import CAPABILITIES
    from adamgen.backends.native import native_optimizer

    opt = native_optimizer(adamgen.AdamSpec(amsgrad=True), "cpu", replace(CAPABILITIES["cpu"], packed_slots=packed))
    params = jax.tree_util.tree_map(jnp.asarray, _tree())
    plain = jax.tree_util.tree_leaves(opt.init(params))
    assert plain and not any(x.committed for x in plain)
    real = jax.devices
    monkeypatch.setattr(jax, "devices", lambda backend=None: [_OtherDefault()] if backend is None else real(backend))
    state = opt.init(params)
    restored = opt.restore(opt.init(params), params)
    monkeypatch.undo()
    for leaves in (jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
        assert leaves and all(x.committed and {d.platform for d in x.devices()} == {"cpu"} for x in leaves)
    fresh = lambda: jax.tree_util.tree_map(jnp.asarray, _tree())  # noqa: E731  (apply donates its params)
    _close(opt.apply(_grads(params, 0), state, fresh())[0], opt.apply(_grads(params, 0), opt.init(params), fresh())[0])
