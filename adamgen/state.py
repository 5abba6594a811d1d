"""Optimizer state shared by every target: the raw counter and the slot pytrees."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax

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
    """

    iterations: Any
    momentums: Any
    velocities: Any
    velocity_hats: Any = None
    averages: Any = None
    accumulators: Any = None

    def replace(self, **changes: Any) -> "AdamState":
        return dataclasses.replace(self, **changes)
