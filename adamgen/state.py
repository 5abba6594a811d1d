"""Optimizer state shared by every target: the raw counter and the slot pytrees."""
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
