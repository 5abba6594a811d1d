"""Carry optimizer state between adamgen and Keras or optax, to switch a run mid-training.

    spec = adamgen.AdamSpec.from_keras_config(keras_opt.get_config())
    opt = adamgen.build(spec, target="cpu")
    state = opt.restore(interop.from_keras(keras_opt, variables), params)
    ...
    interop.to_keras(state, keras_opt, variables)        # and back

Keras' slots mean exactly adamgen's (same counter, same m, v, v_hat, EMA average and gradient
accumulator), so a run continued on the other side takes the same steps. optax's
`ScaleByAdamState` holds the same first and second moments and step count as plain Adam (its
update puts epsilon elsewhere, so only the state carries over, not optax's arithmetic).
Keras' slots are read from the attributes its Adam builds (checked against keras 3.15).
"""
from __future__ import annotations

import warnings

import jax
import numpy as np

from adamgen.state import SLOT_TO_FIELD, AdamState, checked_leaves

# AdamState field -> (the Keras optimizer's attribute holding that slot per variable, the Keras
# option that makes it exist, or None: always)
KERAS_SLOTS = {"momentums": ("_momentums", None), "velocities": ("_velocities", None),
               "velocity_hats": ("_velocity_hats", "amsgrad"),
               "averages": ("_model_variables_moving_average", "use_ema"),
               "accumulators": ("_accumulated_gradients", "gradient_accumulation_steps")}
FIELD_SLOT = {field: slot for slot, field in SLOT_TO_FIELD.items()}


def _keras_leaves(optimizer, variables):
    """The Keras variables of the tree `variables` (default: the list `optimizer` was built on),
    its treedef, and each one's slot index in `optimizer`."""
    import keras

    if not isinstance(optimizer, keras.optimizers.Adam):
        raise TypeError(f"optimizer must be a keras.optimizers.Adam, got {type(optimizer).__name__}")
    if not optimizer.built:
        raise ValueError("the Keras optimizer is not built yet: call optimizer.build(variables) "
                         "(or apply it once) first")
    if variables is None:
        variables = list(optimizer._trainable_variables)
    leaves, treedef = jax.tree_util.tree_flatten(variables, is_leaf=lambda x: isinstance(x, keras.Variable))
    index = []
    for v in leaves:
        if not isinstance(v, keras.Variable):
            raise TypeError(f"variables must be a pytree of keras.Variable, found {type(v).__name__}")
        if getattr(v, "overwrite_with_gradient", False):
            raise ValueError(f"variable {v.path!r} is overwrite_with_gradient: Keras keeps no Adam slots for it, "
                             "and adamgen has no such variables")
        try:
            index.append(optimizer._get_variable_index(v))
        except KeyError:
            raise ValueError(f"variable {v.path!r} is not one the Keras optimizer was built on") from None
    return leaves, treedef, index


def _kept(optimizer) -> list[str]:
    return [field for field, (_, option) in KERAS_SLOTS.items()
            if option is None or getattr(optimizer, option)]


def slot_variables(optimizer, index: list[int]) -> dict[str, list]:
    """AdamState field -> the Keras optimizer's slot variables of the variables at `index`, for
    every slot its options keep."""
    return {field: [getattr(optimizer, KERAS_SLOTS[field][0])[i] for i in index] for field in _kept(optimizer)}


def from_keras(optimizer, variables=None) -> AdamState:
    """The state of a built `keras.optimizers.Adam` as an AdamState of NumPy arrays, its slots
    shaped like `variables` (a pytree of the Keras variables it was built on; default: the list
    of them in the optimizer's order). Pass it to `opt.restore(state, params)`."""
    leaves, treedef, index = _keras_leaves(optimizer, variables)
    if getattr(optimizer, "_exclude_from_weight_decay", None) or \
            getattr(optimizer, "_exclude_from_weight_decay_pattern", None) is not None:
        warnings.warn("the Keras optimizer excludes variables from weight decay, which its get_config() does not "
                      "carry: give the AdamSpec exclude_from_weight_decay=[...] (names) for the same exclusions",
                      UserWarning, stacklevel=2)
    fields = {field: jax.tree_util.tree_unflatten(treedef, [np.array(v.value) for v in slots])
              for field, slots in slot_variables(optimizer, index).items()}
    return AdamState(iterations=np.int32(np.asarray(optimizer._iterations.value)), **fields)


def to_keras(state: AdamState, optimizer, variables=None) -> None:
    """Write `state` (any target's, packed or not) into a built `keras.optimizers.Adam` whose
    variables are `variables` (as for `from_keras`). Every slot, shape and dtype is checked first;
    nothing is assigned unless all of them fit."""
    leaves, treedef, index = _keras_leaves(optimizer, variables)
    params = jax.tree_util.tree_unflatten(treedef, [v.value for v in leaves])
    k, slot_leaves = checked_leaves(state, params, tuple(FIELD_SLOT[f] for f in _kept(optimizer)))
    optimizer._iterations.assign(k)
    for field, slots in slot_variables(optimizer, index).items():
        for slot, value in zip(slots, slot_leaves[FIELD_SLOT[field]]):
            slot.assign(value)


def from_optax(opt_state) -> AdamState:
    """The moments and count of the one `optax.ScaleByAdamState` inside `opt_state` (the state
    of `optax.adam(...)` or a chain holding `scale_by_adam`) as an AdamState."""
    import optax

    found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(x, optax.ScaleByAdamState)]
    if len(found) != 1:
        raise ValueError(f"opt_state must hold exactly one optax.ScaleByAdamState, found {len(found)}")
    adam = found[0]
    return AdamState(iterations=np.int32(np.asarray(adam.count)), momentums=adam.mu, velocities=adam.nu)
