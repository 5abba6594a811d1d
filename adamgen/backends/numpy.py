"""The `numpy` target: the oracle itself behind the common optimizer API."""
from __future__ import annotations

import numpy as np

from adamgen.oracle import Oracle, OracleState
from adamgen.state import SLOT_TO_FIELD as _FIELDS


class OracleExecutor:
    """Runs one step through `adamgen.oracle.Oracle` (which evaluates callables itself)."""

    needs_runtime_scalars = False

    def __init__(self, spec) -> None:
        self.oracle = Oracle(spec)

    def step(self, params, grads, slots, step, runtime):
        state = OracleState(iterations=np.int32(step), **{_FIELDS[k]: v for k, v in slots.items()})
        mask = runtime.get("decay")
        decayed = None if mask is None else [bool(x) for x in mask]
        new_params, new_state = self.oracle.apply(list(grads), state, [np.asarray(p) for p in params], decayed)
        new_slots = {k: getattr(new_state, _FIELDS[k]) for k in slots}
        return new_params, new_slots, new_state.iterations
