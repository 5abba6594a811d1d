"""Drive real Keras (JAX backend, eager `apply`) and snapshot every piece of optimizer state.

Used by tests that compare against Keras. KERAS_BACKEND must be "jax" before keras is imported
(tests/conftest.py sets it).
"""
from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402


@dataclasses.dataclass(frozen=True)
class KerasSnapshot:
    """Keras' state after one call, with the same field names as adamgen's state."""

    params: list
    iterations: np.int32
    momentums: list
    velocities: list
    velocity_hats: list | None
    averages: list | None
    accumulators: list | None


def _values(variables) -> list[np.ndarray]:
    return [np.asarray(v.value) for v in variables]


def snapshot(opt: keras.optimizers.Adam, variables: list) -> KerasSnapshot:
    # Attribute names checked against keras 3.15.1 (base_optimizer.build, adam.Adam.build).
    return KerasSnapshot(
        params=_values(variables),
        iterations=np.int32(np.asarray(opt._iterations.value)),
        momentums=_values(opt._momentums),
        velocities=_values(opt._velocities),
        velocity_hats=_values(opt._velocity_hats) if opt.amsgrad else None,
        averages=_values(opt._model_variables_moving_average) if opt.use_ema else None,
        accumulators=_values(opt._accumulated_gradients) if opt.gradient_accumulation_steps else None,
    )


class KerasRun:
    """A keras Adam and its variables; `step(grads)` applies one eager update."""

    def __init__(self, kwargs: dict, params: list[np.ndarray]) -> None:
        self.opt = keras.optimizers.Adam(**kwargs)
        self.variables = [keras.Variable(p, dtype=str(p.dtype)) for p in params]

    def step(self, grads: list) -> KerasSnapshot:
        self.opt.apply([None if g is None else jnp.asarray(g) for g in grads], self.variables)
        return snapshot(self.opt, self.variables)

    def finalize(self) -> list[np.ndarray]:
        self.opt.finalize_variable_values(self.variables)
        return _values(self.variables)
