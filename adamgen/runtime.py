"""The user-facing optimizer: init / apply / finalize over pytrees, for every target.

A target supplies an executor that runs one step on flat lists grouped by param dtype; this
module does the pytree bookkeeping, evaluates host-side callables, and builds AdamState.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Protocol

import jax
import numpy as np

from adamgen.dtypes import ir_dtype
from adamgen.lower import scalar_inputs_for, slots_for
from adamgen.state import (SLOT_TO_FIELD, AdamState, Packed, PackedLayout, check_slot_fields, checked_leaves,
                           require_adam_state)


class Executor(Protocol):
    """Runs one Keras Adam step over flat lists (the target-specific part)."""

    def step(self, params: list, grads: list, slots: dict[str, list], step: Any,
             runtime: dict[str, Any]) -> tuple[list, dict[str, list], Any]: ...


def host_callables(spec) -> tuple[tuple[str, Callable], ...]:
    """The zero-argument callables the host evaluates on every call, by IR input name.
    A one-argument learning-rate callable is traced with the step inside the computation."""
    out = []
    for key in scalar_inputs_for(spec):
        if key == "step" or (key == "lr" and spec.lr_callable_arity == 1):
            continue
        out.append((key, getattr(spec, "learning_rate" if key == "lr" else key)))
    return tuple(out)


def runtime_scalars(spec, step: int | None = None,
                    callables: tuple[tuple[str, Callable], ...] | None = None) -> dict[str, np.float32]:
    """Host-side values of callable hyper-parameters for this call (Keras calls them each use)."""
    pairs = host_callables(spec) if callables is None else callables
    out = {}
    for key, fn in pairs:
        value = fn()
        out[key] = _f32(value)
        if key == "lr" and not isinstance(value, jax.Array):
            out.update(lr_per_dtype(value))
    return out


def lr_per_dtype(value) -> dict[str, np.float32]:
    """A learning rate the host holds (a Python float is a double) as a float16 module takes
    it. Keras casts a callable's value with ops.cast: straight to float16 (one rounding), and
    through float32 to bfloat16. The IR's lr is a float32 cast to the param dtype, so float16
    groups are given, under `lr@f16`, the float32 that holds float16's rounding of the value:
    exact, so the cast gives that rounding back. A JAX array (Keras' float32 variable, a
    schedule's output) is a float32 already, as Keras has it: no entry."""
    return {"lr@f16": np.float32(np.asarray(value).astype(np.float16))}


def _f32(value):
    """A callable's value as a float32 scalar: NumPy for host numbers; a JAX array stays one (a
    value computed in the caller's jit, such as a Keras learning-rate variable read in a train step)."""
    if isinstance(value, jax.Array):
        return value.astype(np.float32)
    return np.float32(value)


def leaf_name(path) -> str:
    """A pytree leaf's name for exclude_from_weight_decay, as Keras' variable.name (which its
    var_names are searched in): the last key of its path, "bias" for {"dense": {"bias": x}},
    "0" for a list's first leaf, "" for a bare array."""
    return jax.tree_util.keystr(tuple(path[-1:]), simple=True, separator="/")


class Optimizer:
    """One compiled Adam optimizer.

    `apply(grads, state, params)` is exactly one Keras `optimizer.apply(grads, vars)`. On the JAX
    and native targets it DONATES `params` and the slot arrays of `state`: the arrays passed in
    are updated in place and must not be used afterwards; use the returned ones.
    """

    def __init__(self, spec, target: str, executor: Executor, *, donates: bool) -> None:
        self.spec = spec
        self.target = target
        self._executor = executor
        self.donates = donates
        self.slots = slots_for(spec)
        self._callables = host_callables(spec) if getattr(executor, "needs_runtime_scalars", True) else ()
        self._decay_masks: dict[Any, np.ndarray] = {}

    # -- state -----------------------------------------------------------------
    def init(self, params) -> AdamState:
        layout = self._layout_for(params)
        put = self._putter()
        if layout is not None:
            zeros = lambda: Packed(tuple(put(np.zeros(layout.slab_size(g), layout.dtypes[group[0]]))  # noqa: E731
                                         for g, group in enumerate(layout.groups)), layout)
        else:
            # Host zeros then one transfer each: jnp.zeros would compile one XLA program per
            # distinct shape (about 46 s for a 1000-tensor tree).
            zeros = lambda: jax.tree_util.tree_map(lambda x: put(np.zeros(np.shape(x), x.dtype)), params)  # noqa: E731
        fields = {SLOT_TO_FIELD[s]: zeros() for s in self.slots}
        return AdamState(iterations=self._counter(0, put), **fields)

    def restore(self, state: AdamState, params) -> AdamState:
        """`state` in this optimizer's own form for `params`: how to resume from a checkpoint
        (`adamgen.checkpoint.load`), carry a state to another target or layout, or pick up a
        Keras or optax run (`adamgen.interop`). The slots may be params-shaped trees or `Packed`
        (any layout), of NumPy or JAX arrays; every slot, shape and dtype is checked against
        this optimizer's options and the params before anything is copied. The result holds
        fresh arrays (apply donates them; the ones passed in are left as they are)."""
        layout = self._layout_for(params)
        k, slot_leaves = checked_leaves(state, params, self.slots)
        treedef = jax.tree_util.tree_structure(params)
        put = self._putter()

        def form(values: list):
            if layout is not None:
                return Packed(tuple(put(slab) for slab in layout.pack(values)), layout)
            return jax.tree_util.tree_unflatten(treedef, [put(v) for v in values])

        fields = {SLOT_TO_FIELD[s]: form(values) for s, values in slot_leaves.items()}
        return AdamState(iterations=self._counter(int(k), put), **fields)

    def _layout_for(self, params) -> PackedLayout | None:
        """Check the params' dtypes (warning where a hyper-parameter degenerates in one), then
        the packed layout this target gives their slots (None: one array per param)."""
        with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
        leaves = [leaf for _, leaf in with_path]
        for path, leaf in with_path:
            if not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
                raise TypeError(f"param {jax.tree_util.keystr(path) or '(the root)'} is a {type(leaf).__name__}, "
                                "not an array; params are arrays (np.asarray / jnp.asarray a number first)")
            self.spec.check_param_dtype(ir_dtype(leaf.dtype))
        pack = getattr(self._executor, "packed_layout", None)
        return pack(leaves, treedef) if pack is not None and leaves else None

    def _putter(self) -> Callable[[np.ndarray], Any]:
        """How the state's host arrays reach the device: JAX's default device (uncommitted, so
        the state follows the params into any jit, sharded ones included), unless the target's
        kernels run on another platform (a cpu target on a GPU host): then that platform's
        first device, where the kernels can read them."""
        if self.target == "numpy":
            return lambda x: x
        platform = getattr(self._executor, "jax_platform", None)
        device = None
        if platform is not None and jax.devices()[0].platform != platform:
            device = jax.devices(platform)[0]
        return lambda x: jax.device_put(x, device)

    def _counter(self, k, put):
        # device_put, not jnp.asarray: a typed jnp constant compiles a convert program (~0.2 s).
        return put(np.int32(k))

    # -- the step --------------------------------------------------------------
    def apply(self, grads, state: AdamState, params):
        """One optimizer step. Returns (new params, new state). May donate its inputs (see class doc)."""
        p_leaves, treedef = jax.tree_util.tree_flatten(params)
        if not p_leaves:
            return params, state
        g_leaves = self._grad_leaves(grads, treedef)
        self._check_state(state)
        slot_leaves = {s: self._slot_leaves(getattr(state, SLOT_TO_FIELD[s]), treedef) for s in self.slots}
        runtime = runtime_scalars(self.spec, callables=self._callables) if self._callables else {}
        mask = self._decay_mask(params, treedef)
        if mask is not None:
            runtime = {**runtime, "decay": mask}
        new_p, new_slots, new_step = self._executor.step(p_leaves, g_leaves, slot_leaves, state.iterations, runtime)
        unflat = lambda leaves: jax.tree_util.tree_unflatten(treedef, leaves)  # noqa: E731
        fields = {SLOT_TO_FIELD[s]: v if isinstance(v := new_slots[s], Packed) else unflat(v) for s in self.slots}
        return unflat(new_p), AdamState(iterations=new_step, **fields)

    def _decay_mask(self, params, treedef) -> np.ndarray | None:
        """Per leaf, 1.0 where weight decay applies and 0.0 where the spec excludes the leaf by
        name (leaf_name: its last path key); None when nothing is excluded. Cached per tree."""
        if self.spec.weight_decay is None or not self.spec.exclude_from_weight_decay:
            return None
        mask = self._decay_masks.get(treedef)
        if mask is None:
            with_path, _ = jax.tree_util.tree_flatten_with_path(params)
            mask = np.array([self.spec.uses_weight_decay(leaf_name(path)) for path, _ in with_path], np.float32)
            if len(with_path) == 1 and not with_path[0][0]:
                warnings.warn(f"exclude_from_weight_decay={list(self.spec.exclude_from_weight_decay)}: the params "
                              "are one bare array (e.g. adamgen.flat.ravel), named \"\", so all of it is "
                              f"{'decayed' if mask[0] else 'excluded'}; keep excluded params in leaves of their own",
                              UserWarning, stacklevel=3)
            self._decay_masks[treedef] = mask
        return mask

    def _check_state(self, state) -> None:
        """The state's slots are this optimizer's (a few attribute reads a call; `restore`
        checks every shape and dtype and converts a state between layouts and targets)."""
        require_adam_state(state)
        check_slot_fields(state, self.slots)
        if getattr(self._executor, "packed_layout", None) is None:
            for field in SLOT_TO_FIELD.values():
                if isinstance(getattr(state, field), Packed):
                    raise ValueError(f"the state's {field} are packed slabs of a native target; the {self.target} "
                                     "target takes one array per param: opt.restore(state, params) converts it")

    @staticmethod
    def _slot_leaves(value, treedef):
        if isinstance(value, Packed):
            if value.layout.treedef != treedef:
                raise ValueError(f"the packed state was made for params {value.layout.treedef}, got {treedef}; "
                                 "call opt.init(params) for these params")
            return value
        return treedef.flatten_up_to(value)

    def _grad_leaves(self, grads, treedef) -> list:
        leaves, gdef = jax.tree_util.tree_flatten(grads, is_leaf=lambda x: x is None)
        if gdef.num_leaves != treedef.num_leaves:
            raise ValueError(f"grads do not match params: {gdef} vs {treedef}")
        if any(g is None for g in leaves) and self.target != "numpy":
            raise ValueError("a gradient is None; compiled targets need every gradient "
                             "(target='numpy' implements Keras' skip-the-variable rule)")
        return leaves

    def finalize(self, state: AdamState, params):
        """Keras' finalize_variable_values: with use_ema, params become the averages."""
        if not self.spec.use_ema:
            return params
        if isinstance(state.averages, Packed):
            return state.averages.unpack()
        return jax.tree_util.tree_map(lambda a: a, state.averages)

    def learning_rate(self, state: AdamState):
        """The learning rate the next apply will use (Keras' optimizer.learning_rate)."""
        k = int(state.iterations)
        lr = self.spec.learning_rate
        if self.spec.lr_kind == "float":
            return np.float32(lr)
        if self.spec.lr_kind == "schedule":
            return lr(k)
        return np.float32(lr(k) if self.spec.lr_callable_arity == 1 else lr())

    def as_optax(self):
        from adamgen.optax_adapter import as_optax
        return as_optax(self)

    def __repr__(self) -> str:
        return f"adamgen.Optimizer(target={self.target!r}, spec={self.spec!r})"

