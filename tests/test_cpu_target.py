"""The cpu target through the optimizer API: packed slots against per-tensor ones, apply inside
the caller's jit, the packed layout's alignment, and the refusals (other params, other shapes,
another device, a slab of the wrong size)."""
from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamgen
from adamgen import ffi
from adamgen.backends.cpp import HOST
from adamgen.backends.native import kernel_for
from adamgen.compiler import compile_spec
from adamgen.state import SLAB_ALIGN_BYTES, Packed, PackedLayout
from tests.test_native import SPECS, _bits, _inputs, _role_arrays


def _cpu_optimizer(spec, **caps):
    from adamgen.backends.native import native_optimizer
    return native_optimizer(spec, "cpu", replace(HOST, **caps))


@pytest.mark.parametrize("name", ["plain", "full", "clipvalue"])
def test_packed_slots_equal_per_tensor_slots_over_steps(name):
    """The cpu target with slots packed into slabs (the default) and with one array per param:
    the same bits after several steps, on a mixed-dtype tree spread over several calls per dtype."""
    spec = adamgen.AdamSpec(**SPECS[name])
    rng = np.random.default_rng(3)
    shapes = [(rng.integers(1, 300),) for _ in range(9)] + [(4, 5), (1,)]
    dtypes = [np.float32] * 7 + [np.float16] * 4 if name != "full" else [np.float32] * 11
    params = {f"w{i}": rng.standard_normal(s).astype(dt) for i, (s, dt) in enumerate(zip(shapes, dtypes))}
    grads = [jax.tree_util.tree_map(lambda p: (rng.standard_normal(p.shape) * 0.1).astype(p.dtype), params)
             for _ in range(4)]
    results = []
    for packed in (True, False):
        opt = _cpu_optimizer(spec, packed_slots=packed, tensors_per_call=3)
        p = jax.tree_util.tree_map(jnp.asarray, params)
        state = opt.init(p)
        assert isinstance(state.momentums, Packed) == packed
        if packed:
            assert len(state.momentums.slabs) == (4 if name == "full" else 3 + 2)  # ceil(n/3) per dtype
        for g in grads:
            p, state = opt.apply(g, state, p)
        results.append((p, state.unpacked(), opt.finalize(state, p)))
    (p1, s1, f1), (p2, s2, f2) = results
    for a, b in zip(jax.tree_util.tree_leaves((p1, s1, f1)), jax.tree_util.tree_leaves((p2, s2, f2))):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    assert jax.tree_util.tree_structure(s1.momentums) == jax.tree_util.tree_structure(params)


@pytest.mark.parametrize("name", ["plain", "full"])
def test_cpu_target_apply_inside_the_callers_jit(name):
    """apply is traceable: two steps inside one jit give the bits of two standalone calls."""
    spec = adamgen.AdamSpec(**SPECS[name])
    rng = np.random.default_rng(8)
    params = {f"w{i}": rng.standard_normal(int(n)).astype(np.float32) for i, n in enumerate([5, 300, 1, 64])}
    grads = [jax.tree_util.tree_map(lambda x: (rng.standard_normal(x.shape) * 0.1).astype(np.float32), params)
             for _ in range(2)]
    opt = adamgen.build(spec, "cpu")

    def two_steps(p, s, g0, g1):
        p, s = opt.apply(g0, s, p)
        return opt.apply(g1, s, p)

    p = jax.tree_util.tree_map(jnp.asarray, params)
    p_jit, s_jit = jax.jit(two_steps)(p, opt.init(p), *grads)
    p = jax.tree_util.tree_map(jnp.asarray, params)
    s = opt.init(p)
    for g in grads:
        p, s = opt.apply(g, s, p)
    assert int(s_jit.iterations) == int(s.iterations) == 2
    for a, b in zip(jax.tree_util.tree_leaves((p_jit, s_jit.unpacked())), jax.tree_util.tree_leaves((p, s.unpacked()))):
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_cpu_target_refuses_params_on_another_device():
    class OnGpu:  # what a jax array on a GPU reports; this machine may have none
        shape, dtype = (3,), np.dtype(np.float32)

        def devices(self):
            return {type("Device", (), {"platform": "gpu"})()}

    opt = adamgen.build(adamgen.AdamSpec(), "cpu")
    state = opt.init([jnp.zeros(3)])
    with pytest.raises(ValueError, match=r"cpu target's kernels run on cpu devices, and the params are on \['gpu'\]"):
        opt.apply([jnp.zeros(3)], state, [OnGpu()])
    p, state = opt.apply([jnp.ones(3)], state, [jnp.zeros(3)])  # on the CPU it runs
    assert np.asarray(p[0]).shape == (3,)


def test_packed_state_for_other_params_is_refused():
    opt = adamgen.build(adamgen.AdamSpec(), "cpu")
    state = opt.init({"a": jnp.zeros(3), "b": jnp.zeros(4)})
    with pytest.raises(ValueError, match="packed state was made for params"):
        opt.apply({"a": jnp.zeros(3)}, state, {"a": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"other shapes \(leaf 1: \(4,\) in the state, \(5,\) now\)"):
        opt.apply({"a": jnp.zeros(3), "b": jnp.zeros(5)}, state, {"a": jnp.zeros(3), "b": jnp.zeros(5)})


def test_packed_layout_starts_every_tensor_on_the_alignment():
    leaves = [np.zeros(s, dt) for s, dt in [((7,), np.float32), ((1,), np.float32), ((5, 6), np.float16),
                                            ((33,), np.float32), ((0,), np.float16), ((64,), np.float16)]]
    layout = PackedLayout.for_leaves(leaves, jax.tree_util.tree_structure(leaves), 2)
    assert layout.groups == ((0, 1), (3,), (2, 4), (5,))
    for g, group in enumerate(layout.groups):
        itemsize = np.dtype(layout.dtypes[group[0]]).itemsize
        starts = layout.offsets(g)
        assert all(a * itemsize % SLAB_ALIGN_BYTES == 0 for a in starts)
        assert layout.slab_size(g) * itemsize % SLAB_ALIGN_BYTES == 0
        assert layout.slab_size(g) >= starts[-1] + leaves[group[-1]].size
    assert layout.offsets(0) == (0, SLAB_ALIGN_BYTES // 4)
    values = [np.arange(x.size, dtype=x.dtype).reshape(x.shape) + i for i, x in enumerate(leaves)]
    slabs = []
    for g, group in enumerate(layout.groups):
        slab = np.zeros(layout.slab_size(g), layout.dtypes[group[0]])
        for i, a in zip(group, layout.offsets(g)):
            slab[a:a + values[i].size] = values[i].ravel()
        slabs.append(jnp.asarray(slab))
    for got, want in zip(Packed(tuple(slabs), layout).unpack(), values):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_host_kernel_refuses_a_slab_of_the_wrong_size():
    spec = adamgen.AdamSpec()
    module = compile_spec(spec, "f32").kernels
    native = kernel_for(module, "f32", HOST)
    kernel = ffi.build(native.ctx, "cpu")
    r = native.rendered
    inputs = _inputs(module.function("update"), "f32", np.random.default_rng(5))
    scalars = jnp.asarray([np.float32(inputs[k]) for k in r.scalars], jnp.float32)
    args = [_role_arrays(role, inputs[role.name]) for role in r.roles]
    ffi.call(kernel, scalars, args)  # the right size runs
    packed = next(k for k, role in enumerate(r.roles) if role.packed)
    args[packed] = [jnp.concatenate([args[packed][0], jnp.zeros(SLAB_ALIGN_BYTES // 4, jnp.float32)])]
    with pytest.raises(Exception, match="packed slab size differs"):
        jax.block_until_ready(ffi.call(kernel, scalars, args))
