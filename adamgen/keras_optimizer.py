"""`adamgen.keras_optimizer.Adam`: keras.optimizers.Adam with adamgen's fused step inside.

    from adamgen.keras_optimizer import Adam
    model.compile(optimizer=Adam(learning_rate=1e-3, weight_decay=0.01, target="cpu"), loss="mse")
    model.fit(x, y)

It is a `keras.optimizers.Adam` (same constructor, variables, config, checkpoints, EMA
finalization, `exclude_from_weight_decay`), whose `apply` runs one adamgen step over all the
variables at once instead of Keras' per-variable ops: the same arithmetic (Keras' semantics,
the spec built from the optimizer's own options), one fused computation (`target="jax"`) or
native multi-tensor kernels (`target="cpu"` or `"cuda"`). It works eagerly and inside Keras' jitted train
step (`stateless_apply`). The learning rate stays Keras': its variable, schedule or callable is
read on every step, so changing `optimizer.learning_rate` takes effect as it does in Keras.

Cases the fused step does not express run Keras' own `apply` instead, with the same result:
a `None` gradient (Keras skips that variable), variables excluded from weight decay by object
(`var_list`), variables with `overwrite_with_gradient`, `beta_1`/`beta_2`/`epsilon` that are not
Python numbers (tensors), an apply over some of the variables with `use_ema` (Keras' EMA covers
all of them), and gradients whose dtype is not their variable's under norm clipping or a loss
scale (Keras divides and clips those in the gradient's dtype; adamgen casts first, as Keras'
`update_step` does). `fused_applies` counts the calls that took the fused step (traced calls
included).
"""
from __future__ import annotations

import numbers
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
from keras import ops  # noqa: E402

import adamgen  # noqa: E402
from adamgen.interop import slot_variables  # noqa: E402
from adamgen.state import AdamState  # noqa: E402

# Keras Adam attributes that are AdamSpec keywords of the same name.
SPEC_ATTRS = ("beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay", "clipnorm", "clipvalue",
              "global_clipnorm", "use_ema", "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
              "gradient_accumulation_steps", "name")
FUSED_TARGETS = ("jax", "cpu", "cuda")


@keras.saving.register_keras_serializable(package="adamgen")
class Adam(keras.optimizers.Adam):
    """keras.optimizers.Adam whose `apply` is adamgen's fused step (see the module docstring);
    `target`: "jax" (one fused XLA computation), "cpu" or "cuda" (native kernels; cuda wants the
    model's variables on an NVIDIA GPU, and says so when JAX has none)."""

    def __init__(self, *args, target: str = "jax", **kwargs) -> None:
        if target not in FUSED_TARGETS:
            raise ValueError(f"target must be one of {FUSED_TARGETS}, got {target!r}")
        if target == "cuda":
            from adamgen.backends.native import check_platform
            check_platform(target)  # before training starts, not at its first step
        super().__init__(*args, **kwargs)
        self.target = target
        self.fused_applies = 0
        self._fused: tuple | None = None  # (options key, adamgen Optimizer)

    def get_config(self) -> dict:
        return {**super().get_config(), "target": self.target}

    # -- the step ------------------------------------------------------------------
    def apply(self, grads, trainable_variables=None):
        if len(grads) == 0:
            return
        variables = self._built_variables(grads, trainable_variables)
        if not self._fusable(grads, variables):
            return super().apply(grads, trainable_variables)
        opt = self._fused_optimizer()
        params = [{v.name: v.value} for v in variables]
        state = self._state(variables)
        with keras.name_scope(self.name, caller=self):
            new_params, new_state = opt.apply([{v.name: g} for v, g in zip(variables, grads)], state, params)
            for v, new in zip(variables, new_params):
                v.assign(new[v.name])
            self._assign_state(variables, new_state)
            for v in variables:  # Keras applies constraints after the update (semantics page, step 8)
                if v.constraint is not None:
                    v.assign(v.constraint(v))
        self.fused_applies += 1

    def _built_variables(self, grads, trainable_variables) -> list:
        """Keras' apply's first part: the variables the grads belong to, building on first use."""
        if trainable_variables is None:
            if not self.built:
                raise ValueError("When passing `grads` without `variables`, the optimizer must already be built "
                                 "on a list of variables. Call `optimizer.build(trainable_variables)` first.")
            return list(self._trainable_variables)
        variables = list(trainable_variables)
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(variables)
            self.built = True
        self._check_variables_are_known(variables)
        return variables

    def _fusable(self, grads, variables) -> bool:
        """Whether the fused step computes exactly what Keras' apply would (see the module doc)."""
        if any(g is None for g in grads) or getattr(self, "_exclude_from_weight_decay", None):
            return False
        if any(getattr(v, "overwrite_with_gradient", False) for v in variables):
            return False
        if not all(isinstance(getattr(self, k), numbers.Real) for k in ("beta_1", "beta_2", "epsilon")):
            return False
        if self.use_ema and [id(v) for v in variables] != [id(v) for v in self._trainable_variables]:
            return False
        in_grad_dtype = self.loss_scale_factor is not None or bool(self.clipnorm or self.global_clipnorm)
        return not (in_grad_dtype and any(str(g.dtype) != str(v.dtype) for g, v in zip(grads, variables)))

    def _fused_optimizer(self):
        """The adamgen optimizer for the current options (rebuilt if one of them changed)."""
        pattern = getattr(self, "_exclude_from_weight_decay_pattern", None)
        kwargs = {attr: getattr(self, attr) for attr in SPEC_ATTRS}
        key = (tuple(kwargs.items()), None if pattern is None else pattern.pattern, self.target)
        if self._fused is None or self._fused[0] != key:
            spec = adamgen.AdamSpec(**kwargs, learning_rate=self._learning_rate_now,
                                    exclude_from_weight_decay=[] if pattern is None or self.weight_decay is None
                                    else [pattern.pattern])
            self._fused = (key, adamgen.build(spec, target=self.target))
        return self._fused[1]

    def _learning_rate_now(self):
        """Keras' own current learning rate (its variable, schedule(iterations) or callable). A
        callable's host number stays one: Keras casts it straight to each variable's dtype, and
        so does the fused step (runtime.lr_per_dtype)."""
        lr = self.learning_rate
        if isinstance(lr, numbers.Real) and not isinstance(lr, bool):
            return lr
        return ops.convert_to_tensor(lr, "float32")

    def _slots(self, variables) -> dict[str, list]:
        return slot_variables(self, [self._get_variable_index(v) for v in variables])

    def _state(self, variables) -> AdamState:
        fields = {f: [{v.name: s.value} for v, s in zip(variables, slots)] for f, slots in self._slots(variables).items()}
        return AdamState(iterations=self._iterations.value, **fields)

    def _assign_state(self, variables, state: AdamState) -> None:
        self._iterations.assign(state.iterations)
        for field, slots in self._slots(variables).items():
            for v, slot, new in zip(variables, slots, getattr(state, field)):
                slot.assign(new[v.name])


__all__ = ["Adam"]
