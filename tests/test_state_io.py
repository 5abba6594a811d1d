"""Moving optimizer state: `opt.restore`, `adamgen.checkpoint` and `adamgen.interop`.

A run interrupted after a few steps and resumed from the saved state (on the same target, on
another one, or from/into real Keras) must take exactly the steps the uninterrupted run takes.
"""
from __future__ import annotations

import os
import warnings
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest

from tests import keras_ref  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
import adamgen
from adamgen import checkpoint, interop
from adamgen.state import Packed
from tests.keras_ref import KerasRun

FULL = dict(amsgrad=True, use_ema=True, gradient_accumulation_steps=2, weight_decay=0.01,
            global_clipnorm=1.0, learning_rate=0.01)
# Several param dtypes at once (one global norm over all of them): a beta_2 that bfloat16 does
# not round to 1.
MIXED = dict(FULL, beta_2=0.99)
STEPS, CUT = 5, 2


def _tree(rng, dtypes=("float32", "float32", "float32")):
    shapes = {"w": (5, 3), "b": (7,), "s": ()}
    return {k: rng.standard_normal(shape).astype(np.dtype(d) if d != "bfloat16" else ml_dtypes.bfloat16)
            for (k, shape), d in zip(shapes.items(), dtypes)}


def _grads(rng, params, n):
    return [jax.tree_util.tree_map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), params) for _ in range(n)]


def _on(target, tree):
    return jax.tree_util.tree_map(np.copy, tree) if target == "numpy" else jax.device_put(tree)


def _run(opt, params, state, grads):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for g in grads:
            params, state = opt.apply(g, state, params)
    return params, state


def _assert_same(got, want):
    a, b = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, f"leaf {i}"
        np.testing.assert_array_equal(x.astype(np.float32), y.astype(np.float32), err_msg=f"leaf {i}")


@pytest.mark.parametrize("target", ["numpy", "jax", "cpu"])
def test_resume_from_checkpoint_is_bit_exact(target, tmp_path):
    """Saved after CUT steps, loaded into a freshly built optimizer: the rest of the run is the
    uninterrupted run's, bit for bit (params, every slot, the counter), over three dtypes."""
    rng = np.random.default_rng(1)
    params = _tree(rng, ("float32", "bfloat16", "float16"))
    grads = _grads(rng, params, STEPS)
    spec = adamgen.AdamSpec(**MIXED)
    opt = adamgen.build(spec, target=target)
    p = _on(target, params)
    whole = _run(opt, p, opt.init(p), grads)

    p = _on(target, params)
    p, s = _run(opt, p, opt.init(p), grads[:CUT])
    checkpoint.save(tmp_path / "opt.npz", s)
    fresh = adamgen.build(spec, target=target)
    restored = fresh.restore(checkpoint.load(tmp_path / "opt.npz", p), p)
    assert isinstance(restored.momentums, Packed) == (target == "cpu")
    p, s = _run(fresh, p, restored, grads[CUT:])
    _assert_same((p, s.unpacked()), (whole[0], whole[1].unpacked()))
    assert int(s.iterations) == STEPS


@pytest.mark.parametrize("to", ["numpy", "jax"])
def test_packed_state_moves_to_another_target(to):
    """A cpu target's packed state, restored as it is into another target, continues the run."""
    rng = np.random.default_rng(2)
    params = _tree(rng)
    grads = _grads(rng, params, STEPS)
    spec = adamgen.AdamSpec(**FULL)
    cpu, other = adamgen.build(spec, target="cpu"), adamgen.build(spec, target=to)
    want = _run(other, _on(to, params), other.init(_on(to, params)), grads)

    p = _on("cpu", params)
    p, s = _run(cpu, p, cpu.init(p), grads[:CUT])
    p = _on(to, jax.device_get(p))
    p, s = _run(other, p, other.restore(s, p), grads[CUT:])
    _assert_same((p, s), want)


def test_restore_gives_the_init_layout_and_leaves_its_inputs_alone():
    rng = np.random.default_rng(3)
    params = _tree(rng)
    opt = adamgen.build(adamgen.AdamSpec(amsgrad=True), target="cpu")
    p = jax.device_put(params)
    host = jax.tree_util.tree_map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), params)
    kept = jax.tree_util.tree_map(np.copy, host)
    state = adamgen.AdamState(iterations=np.int32(3), momentums=host, velocities=jax.tree_util.tree_map(np.abs, host),
                              velocity_hats=jax.tree_util.tree_map(np.abs, host))
    restored = opt.restore(state, p)
    assert restored.momentums.layout == opt.init(p).momentums.layout
    _assert_same(restored.momentums.unpack(), host)
    leaves = jax.tree_util.tree_leaves(params)
    for g, (slab, group) in enumerate(zip(restored.momentums.slabs, restored.momentums.layout.groups)):
        used = np.zeros(slab.shape, bool)
        for i, start in zip(group, restored.momentums.layout.offsets(g)):
            used[start:start + leaves[i].size] = True
        assert not np.asarray(slab)[~used].any(), "the padding between tensors is not zero"
    opt.apply(host, restored, p)  # donates the restored arrays
    _assert_same(host, kept)


BAD = {
    "missing slot": (dict(velocity_hats=None), "velocity_hats is None.*amsgrad=True"),
    "extra slot": (dict(averages="same"), "averages is set.*use_ema=True"),
    "shape": (dict(momentums={"b": np.zeros(7, np.float32), "s": np.zeros((), np.float32),
                              "w": np.zeros((3, 5), np.float32)}), r"momentums\['w'\] has shape \(3, 5\)"),
    "dtype": (dict(velocities={"b": np.zeros(7, np.float16), "s": np.zeros((), np.float32),
                               "w": np.zeros((5, 3), np.float32)}), r"velocities\['b'\] is float16"),
    "structure": (dict(momentums=[np.zeros(7, np.float32)]), "momentums does not have the params' tree structure"),
    "negative counter": (dict(iterations=np.int32(-1)), "iterations must be a non-negative integer"),
    "float counter": (dict(iterations=np.float32(2.0)), "iterations must be a non-negative integer"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_restore_rejects_a_state_that_does_not_fit(case):
    rng = np.random.default_rng(4)
    params = _tree(rng)
    opt = adamgen.build(adamgen.AdamSpec(amsgrad=True), target="numpy")
    good = opt.init(params)
    change, message = BAD[case]
    change = {k: (good.momentums if v == "same" else v) for k, v in change.items()}
    with pytest.raises(ValueError, match=message):
        opt.restore(good.replace(**change), params)
    with pytest.raises(TypeError, match="adamgen.AdamState"):
        opt.restore({"momentums": good.momentums}, params)


def test_checkpoint_names_a_changed_model_and_rejects_other_files(tmp_path):
    rng = np.random.default_rng(5)
    params = _tree(rng)
    opt = adamgen.build(adamgen.AdamSpec(), target="numpy")
    path = checkpoint.save(tmp_path / "opt.npz", opt.init(params))
    renamed = {("W" if k == "w" else k): v for k, v in params.items()}
    with pytest.raises(ValueError, match=r"another params tree: leaf .* is \['b'\] in the checkpoint"):
        checkpoint.load(path, renamed)
    with pytest.raises(ValueError, match="the checkpoint has 3 leaves, the params 2"):
        checkpoint.load(path, {"b": params["b"], "s": params["s"]})
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not an adamgen checkpoint"):
        checkpoint.load(tmp_path / "junk.npz", params)
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="is not an adamgen checkpoint"):
        checkpoint.load(tmp_path / "plain.npz", params)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="is not an adamgen checkpoint: it holds one array"):
        checkpoint.load(tmp_path / "one.npy", params)
    with np.load(path) as z:
        torn = {k: z[k] for k in z.files if k != "velocities/1"}
    np.savez(tmp_path / "torn.npz", **torn)
    with pytest.raises(ValueError, match=r"is not an adamgen checkpoint: the arrays \['velocities/1'\] are missing"):
        checkpoint.load(tmp_path / "torn.npz", params)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask()), "not the mode the umask gives"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_save_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    params = _tree(rng)
    opt = adamgen.build(adamgen.AdamSpec(), target="numpy")
    path = checkpoint.save(tmp_path / "opt.npz", opt.init(params))
    before = path.read_bytes()

    def broken(f, **arrays):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    later = opt.init(params).replace(iterations=np.int32(7))
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, later)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["opt.npz"], "a temporary file was left behind"
    assert zipfile.is_zipfile(path)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_keras_run_continues_on_adamgen_and_back(target):
    """Real Keras trains CUT steps; adamgen (spec from its get_config) picks up its state and a
    second Keras optimizer picks up adamgen's: both finish exactly as Keras alone does."""
    rng = np.random.default_rng(7)
    params = list(_tree(rng).values())
    grads = [list(g.values()) for g in _grads(rng, dict(enumerate(params)), STEPS)]
    ref = KerasRun(FULL, params)
    for g in grads[:CUT]:
        ref.step(g)
    at_cut = [np.array(v.value) for v in ref.variables]
    state = interop.from_keras(ref.opt, ref.variables)
    for g in grads[CUT:]:
        want = ref.step(g)

    opt = adamgen.build(adamgen.AdamSpec.from_keras_config(ref.opt.get_config()), target=target)
    p = _on(target, at_cut)
    p, s = _run(opt, p, opt.restore(state, p), grads[CUT:])
    _assert_same(p, want.params)
    got = s.unpacked()
    for field in ("momentums", "velocities", "velocity_hats", "averages", "accumulators"):
        _assert_same(getattr(got, field), getattr(want, field))

    back = KerasRun(FULL, at_cut)
    back.opt.build(back.variables)
    p = _on(target, at_cut)
    p, s = _run(opt, p, opt.restore(state, p), grads[CUT:CUT + 1])
    for v, x in zip(back.variables, p):
        v.assign(np.asarray(x))
    interop.to_keras(s, back.opt, back.variables)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for g in grads[CUT + 1:]:
            last = back.step(g)
    _assert_same(last.params, want.params)
    assert last.iterations == want.iterations


def test_keras_interop_checks_before_it_writes():
    rng = np.random.default_rng(8)
    params = list(_tree(rng).values())
    ref = KerasRun(dict(amsgrad=True), params)
    ref.opt.build(ref.variables)
    with pytest.raises(ValueError, match="velocity_hats is None"):
        interop.to_keras(adamgen.AdamState(np.int32(4), [p + 1 for p in params], [p * p for p in params]),
                         ref.opt, ref.variables)
    assert int(ref.opt._iterations.value) == 0 and not np.asarray(ref.opt._momentums[0].value).any()
    unbuilt = KerasRun({}, params)
    with pytest.raises(ValueError, match="not built yet"):
        interop.from_keras(unbuilt.opt)
    stranger = KerasRun({}, params).variables
    with pytest.raises(ValueError, match="is not one the Keras optimizer was built on"):
        interop.from_keras(ref.opt, stranger)
    ref.variables[1].overwrite_with_gradient = True
    with pytest.raises(ValueError, match="is overwrite_with_gradient"):
        interop.from_keras(ref.opt, ref.variables)


def test_optax_adam_state_carries_over():
    import optax

    rng = np.random.default_rng(9)
    params = _tree(rng)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    for g in _grads(rng, params, 3):
        updates, opt_state = tx.update(g, opt_state, params)
    state = interop.from_optax(opt_state)
    adam = opt_state[0]
    opt = adamgen.build(adamgen.AdamSpec(learning_rate=1e-2), target="cpu")
    p = jax.device_put(params)
    restored = opt.restore(state, p)
    assert int(restored.iterations) == 3
    _assert_same(restored.momentums.unpack(), adam.mu)
    _assert_same(restored.velocities.unpack(), adam.nu)
    with pytest.raises(ValueError, match="exactly one optax.ScaleByAdamState, found 0"):
        interop.from_optax(optax.sgd(0.1).init(params))


def test_a_params_shaped_state_runs_on_a_packing_target():
    """The cpu target packs its slots, and a params-shaped state (state.unpacked(), or Keras'
    own slot variables) still runs there, on kernels for per-tensor slots, with the same numbers."""
    rng = np.random.default_rng(10)
    params = _tree(rng)
    grads = _grads(rng, params, 3)
    opt = adamgen.build(adamgen.AdamSpec(**FULL), target="cpu")
    p, s = _run(opt, _on("cpu", params), opt.init(_on("cpu", params)), grads)
    q = _on("cpu", params)
    q, t = _run(opt, q, opt.init(q).unpacked(), grads)
    assert not isinstance(t.momentums, Packed)
    _assert_same((q, t), (p, s.unpacked()))
