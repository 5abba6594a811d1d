"""An optax.GradientTransformation view of an adamgen optimizer.

`update(grads, state, params)` returns updates = new_params - params, so
`optax.apply_updates(params, updates)` lands within an ulp of the compiled step's params (the
subtraction and re-addition round). The params are copied before the step, because optax callers
keep using them; the optimizer state is the AdamState itself.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def as_optax(optimizer):
    import optax

    def init_fn(params):
        return optimizer.init(params)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("adamgen's optax adapter needs params (Adam with weight decay and EMA reads them); "
                             "call tx.update(grads, state, params)")
        copies = jax.tree_util.tree_map(jnp.copy, params)
        new_params, new_state = optimizer.apply(updates, state, copies)
        deltas = jax.tree_util.tree_map(lambda n, p: (n - p).astype(p.dtype), new_params, params)
        return deltas, new_state

    return optax.GradientTransformation(init_fn, update_fn)
