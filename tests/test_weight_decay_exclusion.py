"""exclude_from_weight_decay: Keras' `optimizer.exclude_from_weight_decay(var_names=...)` as a
spec keyword, matched against each pytree leaf's name (its last path key, as Keras matches
variable.name); exact against real Keras, and every target against the oracle."""
from __future__ import annotations

import json
import pickle
import warnings

import jax
import numpy as np
import pytest

from tests import keras_ref  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
import keras

import adamgen
from adamgen.cli import main
from adamgen.oracle import Oracle
from adamgen.runtime import leaf_name
from tests.keras_ref import snapshot

KW = dict(learning_rate=0.05, weight_decay=0.1, amsgrad=True, global_clipnorm=1.0)


def _tree(rng):
    return {"dense": {"kernel": rng.standard_normal((4, 3)).astype(np.float32),
                      "bias": rng.standard_normal(3).astype(np.float32)},
            "layer_norm": {"scale": rng.standard_normal(3).astype(np.float32)},
            "head": [rng.standard_normal(5).astype(np.float32)]}


def _grads(rng, params, n):
    return [jax.tree_util.tree_map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), params) for _ in range(n)]


def test_leaf_names_are_last_path_keys():
    names = [leaf_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(_tree(np.random.default_rng(0)))[0]]
    assert names == ["bias", "kernel", "0", "scale"]
    assert leaf_name(()) == ""


@pytest.mark.parametrize("names", [["dense"], ["^bias$"], ["gamma", "bias"], ["beta"]])
def test_real_keras_layers_exclude_the_same_variables(names):
    """A Dense and a LayerNormalization: their variables by Keras' own _use_weight_decay, and the
    same values as a {layer: {variable name: value}} tree by the spec."""
    dense, norm = keras.layers.Dense(3, name="dense"), keras.layers.LayerNormalization(name="layer_norm")
    dense.build((None, 4))
    norm.build((None, 3))
    opt = keras.optimizers.Adam(weight_decay=0.1)
    opt.exclude_from_weight_decay(var_names=names)
    variables = dense.weights + norm.weights
    keras_says = {v.path: opt._use_weight_decay(v) for v in variables}
    tree = {layer.name: {v.name: np.asarray(v.value) for v in layer.weights} for layer in (dense, norm)}
    spec = adamgen.AdamSpec(weight_decay=0.1, exclude_from_weight_decay=names)
    ours = {"/".join(str(k.key) for k in path): spec.uses_weight_decay(leaf_name(path))
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}
    assert ours == keras_says
    assert not all(ours.values()) or names == ["dense"], "the names exclude nothing"


@pytest.mark.parametrize("names", [["bias"], ["bia"], ["bias", "norm"], [r"^head_\d+$"], ["nothing"]])
def test_uses_weight_decay_is_keras_var_names(names):
    """Keras joins var_names into one pattern re.searched in the variable's name."""
    spec = adamgen.AdamSpec(weight_decay=0.1, exclude_from_weight_decay=names)
    opt = keras.optimizers.Adam(weight_decay=0.1)
    opt.exclude_from_weight_decay(var_names=names)
    # All alive at once: Keras caches its answer by id(variable), which a freed one's successor reuses.
    variables = [keras.Variable(np.zeros(1), name=n) for n in ["dense_bias", "dense_kernel", "head_0", "layer_norm_scale"]]
    for v in variables:
        assert spec.uses_weight_decay(v.name) == opt._use_weight_decay(v), v.name
    assert not adamgen.AdamSpec().uses_weight_decay("dense_kernel"), "no weight_decay: nothing is decayed"


@pytest.mark.parametrize("names", [["bias"], ["bia", "scale"]])
def test_oracle_matches_keras_with_exclusions(names):
    """Real Keras variables named like the tree's leaves, excluded by var_names: the oracle, told
    which ones the spec excludes, takes the same steps bit for bit."""
    rng = np.random.default_rng(1)
    params = _tree(rng)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    names_of = [leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    spec = adamgen.AdamSpec(**KW, exclude_from_weight_decay=names)
    ref = keras.optimizers.Adam(**KW)
    ref.exclude_from_weight_decay(var_names=names)
    # Keras searches variable.name: give each variable its leaf's name (no "/" allowed there).
    variables = [keras.Variable(x, name=n.replace("/", "_")) for x, n in zip(leaves, names_of)]
    decayed = [spec.uses_weight_decay(n) for n in names_of]
    assert decayed == [ref._use_weight_decay(v) for v in variables]
    assert not all(decayed), "the names exclude nothing: the test would not see exclusion"
    orc = Oracle(spec)
    state, ours = orc.init(leaves), [x.copy() for x in leaves]
    for g in _grads(rng, params, 4):
        g = jax.tree_util.tree_leaves(g)
        ref.apply([jax.numpy.asarray(x) for x in g], variables)
        ours, state = orc.apply(g, state, ours, decayed)
        want = snapshot(ref, variables)
        for a, b in zip(ours, want.params):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(state.velocity_hats, want.velocity_hats):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("target", ["numpy", "jax", "cpu"])
def test_targets_exclude_by_leaf_name(target):
    """Each target against the oracle driven with the mask by hand, and excluded leaves moving
    differently from a run without exclusions (so the test sees the mask)."""
    rng = np.random.default_rng(2)
    params = _tree(rng)
    grads = _grads(rng, params, 3)
    spec = adamgen.AdamSpec(**KW, exclude_from_weight_decay=["bias", "scale"])
    leaves = jax.tree_util.tree_leaves(params)
    orc = Oracle(spec)
    want, state = [x.copy() for x in leaves], orc.init(leaves)
    for g in grads:
        want, state = orc.apply(jax.tree_util.tree_leaves(g), state, want, [False, True, True, False])  # bias, scale off
    results = {}
    for s in (spec, spec.replace(exclude_from_weight_decay=[])):
        opt = adamgen.build(s, target=target)
        p = jax.tree_util.tree_map(np.copy, params) if target == "numpy" else jax.device_put(params)
        st = opt.init(p)
        for g in grads:
            p, st = opt.apply(g, st, p)
        results[s] = [np.asarray(x) for x in jax.tree_util.tree_leaves(p)]
    got, plain = results[spec], results[spec.replace(exclude_from_weight_decay=[])]
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-7, err_msg=f"leaf {i}")
    assert not np.allclose(got[0], plain[0]) and not np.allclose(got[3], plain[3]), "exclusion changed nothing"
    np.testing.assert_allclose(got[1], plain[1], rtol=2e-6, atol=2e-7)


def test_exclusions_in_the_caller_jit_and_on_a_flat_artifact(tmp_path):
    rng = np.random.default_rng(3)
    params = _tree(rng)
    spec = adamgen.AdamSpec(**KW, exclude_from_weight_decay=["bias"])
    opt = adamgen.build(spec, target="cpu")
    g = _grads(rng, params, 1)[0]
    eager, _ = opt.apply(g, opt.init(jax.device_put(params)), jax.device_put(params))
    p = jax.device_put(params)
    jitted, _ = jax.jit(opt.apply)(g, opt.init(p), p)
    for a, b in zip(jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(eager)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    out = tmp_path / "adam_ex"
    assert main(["build", "--weight-decay", "0.1", "--exclude-from-weight-decay", "bias", "-o", str(out)]) == 0
    assert json.loads((out / "spec.json").read_text())["exclude_from_weight_decay"] == ["bias"]
    flat = adamgen.load(out)  # one flat leaf: the exported step, decayed (its path "" matches nothing)
    x = np.ones(7, np.float32)
    with pytest.warns(UserWarning, match='one bare array .*, named "", so all of it is decayed'):
        y, _ = flat.apply(np.zeros(7, np.float32), flat.init(x), x.copy())
    np.testing.assert_allclose(np.asarray(y), 1 - 0.1 * 0.001, rtol=1e-6)


def test_spec_keeps_and_checks_exclusions():
    spec = adamgen.AdamSpec(weight_decay=0.1, exclude_from_weight_decay=["norm", "bias", "norm"])
    assert spec.exclude_from_weight_decay == ("bias", "norm")  # Keras joins a set: order, repeats do not count
    assert spec == adamgen.AdamSpec(weight_decay=0.1, exclude_from_weight_decay=["bias", "norm"])
    assert adamgen.AdamSpec(weight_decay=0.1, exclude_from_weight_decay=None) == adamgen.AdamSpec(weight_decay=0.1)
    assert adamgen.AdamSpec.from_json(spec.to_json()) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert spec.replace(amsgrad=True).exclude_from_weight_decay == ("bias", "norm")
    assert spec != adamgen.AdamSpec(weight_decay=0.1)
    assert spec.content_hash() != adamgen.AdamSpec(weight_decay=0.1).content_hash()
    assert "exclude_from_weight_decay" not in adamgen.AdamSpec(weight_decay=0.1).to_json()
    assert "exclude_from_weight_decay=['bias', 'norm']" in repr(spec)
    for bad, message in [("bias", "must be a list of names"), ([3], "entries must be non-empty strings"),
                         ([""], "entries must be non-empty strings"), (["("], "is not a regular expression"),
                         (["(?P<n>a)", "(?P<n>b)"], "do not join into one regular expression")]:
        with pytest.raises(ValueError, match=message):
            adamgen.AdamSpec(weight_decay=0.1, exclude_from_weight_decay=bad)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        adamgen.AdamSpec(exclude_from_weight_decay=["bias"])
    assert any("without weight_decay has no effect" in str(w.message) for w in seen)
