"""Optimizer state shared by every target: the raw counter and the slot pytrees, their packed
form, and the checks that let a state move between optimizers."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

# Each tensor of a packed slab starts at a multiple of this many bytes: a whole GPU memory
# transaction, so the CUDA kernel's 16-byte vector path (which needs every role aligned) serves
# packed tensors of any size, and host SIMD loads start on a cache line.
SLAB_ALIGN_BYTES = 128

# IR slot name -> AdamState field
SLOT_TO_FIELD = {"momentum": "momentums", "velocity": "velocities", "velocity_hat": "velocity_hats",
                 "average": "averages", "accumulator": "accumulators"}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AdamState:
    """State of one Adam optimizer.

    iterations: the raw int32 counter, as Keras' `optimizer.variables[0]` (counts every
      `apply` call, accumulation micro-steps included).
    momentums, velocities: pytrees shaped like params, in the params' dtypes.
    velocity_hats (amsgrad), averages (use_ema), accumulators (gradient accumulation):
      pytrees shaped like params, or None when the option is off.
    On the native targets (cpu, cuda) each slot is `Packed` (a few 1-D slabs instead of one array
    per param); `state.unpacked()` gives the params-shaped trees.
    """

    iterations: Any
    momentums: Any
    velocities: Any
    velocity_hats: Any = None
    averages: Any = None
    accumulators: Any = None

    def replace(self, **changes: Any) -> "AdamState":
        return dataclasses.replace(self, **changes)

    def unpacked(self) -> "AdamState":
        """Every slot as a params-shaped pytree (the native targets keep slots `Packed`)."""
        changes = {f.name: getattr(self, f.name).unpack() for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), Packed)}
        return self.replace(**changes) if changes else self

# AdamState field -> the Keras option that makes an optimizer keep it (momentums and velocities
# are always kept).
FIELD_OPTION = {"velocity_hats": "amsgrad=True", "averages": "use_ema=True",
                "accumulators": "gradient_accumulation_steps"}
INT32_MAX = np.iinfo(np.int32).max


def require_adam_state(state) -> None:
    if not isinstance(state, AdamState):
        raise TypeError(f"state must be an adamgen.AdamState, got {type(state).__name__}")


def check_slot_fields(state: "AdamState", slots: tuple[str, ...]) -> None:
    """`state` keeps exactly the IR slots `slots` (the optimizer's options decide which)."""
    wanted = {SLOT_TO_FIELD[s] for s in slots}
    for field in SLOT_TO_FIELD.values():
        value = getattr(state, field)
        if field not in wanted and value is not None:
            raise ValueError(f"state.{field} is set, but this optimizer keeps none (only one made with "
                             f"{FIELD_OPTION[field]} does); drop it with state.replace({field}=None)")
        if field in wanted and value is None:
            raise ValueError(f"state.{field} is None, but this optimizer keeps it "
                             f"({FIELD_OPTION.get(field, 'always')})")


def checked_leaves(state: "AdamState", params, slots: tuple[str, ...]) -> tuple[np.int32, dict[str, list]]:
    """The counter and, per IR slot in `slots`, fresh host copies of the slot's leaves in the
    params' leaf order, after checking that `state` (slots params-shaped or `Packed`, any layout)
    keeps exactly those slots with the params' tree structure, shapes and dtypes. Raises before
    any copy is made into an optimizer's state."""
    require_adam_state(state)
    k = np.asarray(jax.device_get(state.iterations))
    if k.ndim != 0 or k.dtype.kind not in "iu" or not 0 <= int(k) <= INT32_MAX:
        raise ValueError(f"state.iterations must be a non-negative integer scalar (int32), got "
                         f"{k.dtype} of shape {k.shape} = {k if k.size == 1 else '...'}")
    check_slot_fields(state, slots)
    with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = {s: _slot_leaves(field, getattr(state, field), with_path, treedef)
           for s, field in SLOT_TO_FIELD.items() if s in slots}
    return np.int32(k), out


def _slot_leaves(field: str, value, with_path: list, treedef) -> list[np.ndarray]:
    tree = value.unpack() if isinstance(value, Packed) else value
    try:
        leaves = treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as err:
        detail = str(err) if len(str(err)) <= 300 else str(err)[:300] + " ..."
        raise ValueError(f"state.{field} does not have the params' tree structure: {detail}") from None
    out = []
    for (path, param), leaf in zip(with_path, leaves):
        arr = np.asarray(jax.device_get(leaf))
        where = f"state.{field}{jax.tree_util.keystr(path)}"
        if arr.shape != tuple(param.shape):
            raise ValueError(f"{where} has shape {arr.shape}, the param {tuple(param.shape)}")
        if arr.dtype != np.dtype(param.dtype):
            raise ValueError(f"{where} is {arr.dtype}, the param {np.dtype(param.dtype)} "
                             "(Keras keeps every slot in its variable's dtype)")
        out.append(np.array(arr, copy=True))
    return out


@dataclasses.dataclass(frozen=True)
class PackedLayout:
    """Where each leaf of a params tree lives in a packed slot: leaves are grouped by dtype (first
    appearance order), then in runs of `group_size` consecutive leaves; a run's values sit in one
    1-D slab, in leaf order, each starting at a multiple of SLAB_ALIGN_BYTES (the padding stays
    zero). Static (hashable): it travels as pytree aux data."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]                 # NumPy dtype name per leaf
    groups: tuple[tuple[int, ...], ...]     # leaf indices per slab

    @classmethod
    def for_leaves(cls, leaves: list, treedef, group_size: int) -> "PackedLayout":
        if group_size <= 0:
            raise ValueError(f"group_size must be positive, got {group_size}")
        by_dtype: dict[str, list[int]] = {}
        for i, leaf in enumerate(leaves):
            by_dtype.setdefault(str(leaf.dtype), []).append(i)
        groups = tuple(tuple(idx[a:a + group_size]) for idx in by_dtype.values()
                       for a in range(0, len(idx), group_size))
        return cls(treedef, tuple(tuple(int(d) for d in leaf.shape) for leaf in leaves),
                   tuple(str(leaf.dtype) for leaf in leaves), groups)

    def _padded(self, i: int) -> int:
        """Elements leaf i occupies in its slab: its size rounded up to SLAB_ALIGN_BYTES."""
        align = SLAB_ALIGN_BYTES // np.dtype(self.dtypes[i]).itemsize
        return -(-math.prod(self.shapes[i]) // align) * align

    def offsets(self, g: int) -> tuple[int, ...]:
        """Where each leaf of slab g starts, in elements (what the kernels' table computes)."""
        starts, at = [], 0
        for i in self.groups[g]:
            starts.append(at)
            at += self._padded(i)
        return tuple(starts)

    def slab_size(self, g: int) -> int:
        return sum(self._padded(i) for i in self.groups[g])

    def pack(self, leaves: list) -> tuple[np.ndarray, ...]:
        """Host slabs holding `leaves` (NumPy arrays in leaf order, of the layout's shapes and
        dtypes) at their offsets, the padding zero: the inverse of `Packed.unpack`."""
        slabs = []
        for g, group in enumerate(self.groups):
            slab = np.zeros(self.slab_size(g), self.dtypes[group[0]])
            for i, start in zip(group, self.offsets(g)):
                flat = np.asarray(leaves[i]).reshape(-1)
                slab[start:start + flat.size] = flat
            slabs.append(slab)
        return tuple(slabs)


@dataclasses.dataclass(frozen=True)
class Packed:
    """One optimizer slot (e.g. the momentums) of a whole params tree, packed into a few 1-D slabs
    (see PackedLayout). A pytree whose leaves are the slabs: a step passes a handful of arrays
    across the JAX call boundary instead of one per param. `unpack()` gives the params-shaped tree."""

    slabs: tuple
    layout: PackedLayout

    def unpack(self):
        leaves: list = [None] * len(self.layout.shapes)
        for g, (slab, group) in enumerate(zip(self.slabs, self.layout.groups)):
            for i, start in zip(group, self.layout.offsets(g)):
                size = math.prod(self.layout.shapes[i])
                leaves[i] = slab[start:start + size].reshape(self.layout.shapes[i])
        return jax.tree_util.tree_unflatten(self.layout.treedef, leaves)


jax.tree_util.register_pytree_node(
    Packed, lambda p: (p.slabs, p.layout), lambda layout, slabs: Packed(tuple(slabs), layout))
