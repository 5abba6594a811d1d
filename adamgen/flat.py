"""The flat fast path: keep a model's params (and so the optimizer state) in one flat buffer.

A 1000-tensor tree costs XLA one fusion per tensor to compile (about a minute on CPU); one flat
buffer compiles in a fraction of a second and runs at the memory floor. The model reads its
tensors back through `unravel`, which only slices and reshapes.

    flat, unravel = adamgen.flat.ravel(params)
    state = opt.init(flat)
    ...
    flat, state = opt.apply(adamgen.flat.ravel(grads)[0], state, flat)
    params = unravel(flat)
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


# One compiled concatenation for the whole tree; eager jnp.ravel would compile one program per
# distinct leaf shape (24 s for a 1000-tensor tree with 685 shapes).
_concat = jax.jit(lambda leaves: jnp.concatenate([jnp.ravel(x) for x in leaves]))


def ravel(tree: Any) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
    """One 1-D buffer holding every leaf of `tree` (all leaves must share one dtype)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if not leaves:
        raise ValueError("ravel: the tree has no leaves")
    dtypes = {jnp.result_type(x) for x in leaves}
    if len(dtypes) != 1:
        raise ValueError(f"ravel: leaves have several dtypes {sorted(map(str, dtypes))}; "
                         "ravel each dtype group separately")
    shapes = [np.shape(x) for x in leaves]
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.cumsum([0] + sizes)
    flat = _concat(leaves)

    def unravel(buffer: jax.Array) -> Any:
        if buffer.shape != flat.shape:
            raise ValueError(f"unravel: expected a buffer of shape {flat.shape}, got {buffer.shape}")
        parts = [buffer[offsets[i]:offsets[i + 1]].reshape(shapes[i]) for i in range(len(shapes))]
        return jax.tree_util.tree_unflatten(treedef, parts)

    return flat, unravel
