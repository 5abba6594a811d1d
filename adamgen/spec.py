"""`AdamSpec`: the immutable description of one `keras.optimizers.Adam` configuration.

Constructor keywords, their order and defaults are exactly `keras.optimizers.Adam`'s (except
`name`, which defaults to "adam" instead of Keras' auto-numbered "adam", "adam_1", ...).
Every Keras constructor check runs first, in Keras' order, with Keras' exception type and
message. adamgen's own checks (types it cannot compile, non-integer accumulation steps) and
its warnings (inputs Keras silently accepts but that break training) come after.

Extensions over Keras: `learning_rate` may also be a serialized schedule dict or a
one-argument callable `f(step)`; `beta_1`, `beta_2`, `epsilon` may be zero-argument
callables (Keras documents this but crashes at apply time); `exclude_from_weight_decay` (a
keyword here, Keras' `optimizer.exclude_from_weight_decay(var_names=...)` method) takes the
names whose params get no weight decay, matched as Keras does (see `uses_weight_decay`).
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from adamgen.dtypes import PARAM_DTYPES, numpy_dtype
from adamgen.schedules import Schedule
from adamgen.spec_checks import (CLIP_KINDS, adamgen_checks, exclusions, keras_checks, plain,
                                 resolve_learning_rate, warn, warn_nonsense, callable_arity)

# Constructor keywords, in keras.optimizers.Adam's order, with its defaults.
DEFAULTS: dict[str, Any] = {
    "learning_rate": 0.001,
    "beta_1": 0.9,
    "beta_2": 0.999,
    "epsilon": 1e-7,
    "amsgrad": False,
    "weight_decay": None,
    "clipnorm": None,
    "clipvalue": None,
    "global_clipnorm": None,
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
    "name": "adam",
}
# keras.optimizers.Adam.get_config() key order.
CONFIG_ORDER = (
    "name", "learning_rate", "weight_decay", "clipnorm", "global_clipnorm", "clipvalue",
    "use_ema", "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
    "gradient_accumulation_steps", "beta_1", "beta_2", "epsilon", "amsgrad",
)


class AdamSpec:
    """Immutable, hashable `keras.optimizers.Adam` configuration (see module docstring)."""

    __slots__ = ("_kw", "_raw_flags", "_lr_kind", "_lr_arity", "_key", "_exclude", "_exclude_re")

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: Any = 0.9,
        beta_2: Any = 0.999,
        epsilon: Any = 1e-7,
        amsgrad: Any = False,
        weight_decay: Any = None,
        clipnorm: Any = None,
        clipvalue: Any = None,
        global_clipnorm: Any = None,
        use_ema: Any = False,
        ema_momentum: Any = 0.99,
        ema_overwrite_frequency: Any = None,
        loss_scale_factor: Any = None,
        gradient_accumulation_steps: Any = None,
        name: str | None = "adam",
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("decay", None) is not None:
            warnings.warn("Argument `decay` is no longer supported and will be ignored.", UserWarning, stacklevel=2)
        exclude = kwargs.pop("exclude_from_weight_decay", ())
        if kwargs:
            raise ValueError(f"Argument(s) not recognized: {kwargs}")
        kw = {key: value for key, value in locals().items() if key in DEFAULTS}
        kw["name"] = "adam" if name is None else name
        keras_checks(kw)
        lr, lr_kind, lr_arity = resolve_learning_rate(learning_rate)
        kw = {key: plain(value) for key, value in kw.items()}
        kw["learning_rate"] = lr
        adamgen_checks(kw)
        exclude = exclusions(exclude)
        warn_nonsense(kw)
        if exclude and kw["weight_decay"] is None:
            warn(f"exclude_from_weight_decay={list(exclude)} without weight_decay has no effect", depth=1)
        # get_config reports these as given ('yes' stays 'yes'); the spec exposes bools.
        raw_flags = {"amsgrad": kw["amsgrad"], "use_ema": kw["use_ema"]}
        kw["amsgrad"], kw["use_ema"] = bool(kw["amsgrad"]), bool(kw["use_ema"])
        key = tuple((k, type(raw_flags.get(k, v)), raw_flags.get(k, v)) for k, v in kw.items()) + (exclude,)
        # Keras joins the names into one pattern and re.searches it in each variable's name.
        pattern = re.compile("|".join(exclude)) if exclude else None
        for slot, value in (("_kw", kw), ("_raw_flags", raw_flags), ("_lr_kind", lr_kind), ("_lr_arity", lr_arity),
                            ("_key", key), ("_exclude", exclude), ("_exclude_re", pattern)):
            object.__setattr__(self, slot, value)

    # ------------------------------------------------------------------ immutability, identity

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"AdamSpec is immutable; use spec.replace({name}=...)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("AdamSpec is immutable")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        kw = object.__getattribute__(self, "_kw")
        if name in kw:
            return kw[name]
        raise AttributeError(f"AdamSpec has no attribute {name!r}")

    def __copy__(self) -> "AdamSpec":
        return self

    def __deepcopy__(self, memo: dict) -> "AdamSpec":
        return self

    def __reduce__(self) -> tuple:
        return (_rebuild, (self.kwargs(),))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AdamSpec):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        changed = [f"{k}={v!r}" for k, v in self.kwargs().items()
                   if k not in DEFAULTS or self._differs_from_default(k)]
        return f"AdamSpec({', '.join(changed)})"

    def _reported(self, key: str) -> Any:
        return self._raw_flags.get(key, self._kw[key])

    def _differs_from_default(self, key: str) -> bool:
        value, default = self._reported(key), DEFAULTS[key]
        return type(value) is not type(default) or value != default

    def kwargs(self) -> dict[str, Any]:
        """The constructor keywords (as given, lr converted to its adamgen form)."""
        out = {k: self._reported(k) for k in DEFAULTS}
        return {**out, "exclude_from_weight_decay": list(self._exclude)} if self._exclude else out

    def replace(self, **changes: Any) -> "AdamSpec":
        return AdamSpec(**{**self.kwargs(), **changes})

    # ------------------------------------------------------------------ normalized views

    @property
    def lr_kind(self) -> str:
        """'float' | 'schedule' | 'callable'."""
        return self._lr_kind

    @property
    def lr_callable_arity(self) -> int | None:
        """0 for lr(), 1 for lr(step), None unless lr_kind == 'callable'."""
        return self._lr_arity

    @property
    def exclude_from_weight_decay(self) -> tuple[str, ...]:
        return self._exclude

    def uses_weight_decay(self, name: str) -> bool:
        """Whether the param called `name` is decayed: Keras' `_use_weight_decay` for var_names
        (the joined names re.searched in the variable's name; a pytree leaf's name is its last
        path key, "bias" for "dense/bias", see runtime.leaf_name). False without weight_decay."""
        if self._kw["weight_decay"] is None:
            return False
        return self._exclude_re is None or self._exclude_re.search(name) is None

    @property
    def accumulation_steps(self) -> int | None:
        steps = self._kw["gradient_accumulation_steps"]
        return int(steps) if steps else None

    @property
    def clip(self) -> tuple[str, float] | None:
        """(kind, value) for the one clip option in effect (Keras: value truthy and > 0)."""
        for kind in CLIP_KINDS:
            value = self._kw[kind]
            if value and value > 0:
                return kind, float(value)
        return None

    @property
    def ema_overwrite(self) -> int | None:
        """Overwrite frequency in effect: None without EMA or frequency; 0 stays 0 (every call)."""
        freq = self._kw["ema_overwrite_frequency"]
        if not self._kw["use_ema"] or freq is None:
            return None
        return int(freq)

    def check_param_dtype(self, dtype_name: str) -> list[str]:
        """Warn (and return the messages) when a hyper-parameter degenerates in `dtype_name`."""
        if dtype_name not in PARAM_DTYPES:
            raise ValueError(f"unsupported parameter dtype {dtype_name!r}; allowed: {list(PARAM_DTYPES)}")
        scalar = numpy_dtype(dtype_name).type
        messages = []
        for field, effect in (
            ("beta_2", "1 - beta_2**t = 0, so the step size is 0 and variables never move"),
            ("beta_1", "1 - beta_1**t = 0, so the bias correction divides by zero"),
        ):
            value = self._kw[field]
            if not callable(value) and float(scalar(value)) == 1.0:
                messages.append(f"{field}={value} rounds to exactly 1.0 in {dtype_name}: {effect}")
        eps = self._kw["epsilon"]
        if not callable(eps) and eps != 0 and float(scalar(eps)) == 0.0:
            messages.append(f"epsilon={eps} rounds to 0 in {dtype_name}: a zero gradient gives NaN")
        for message in messages:
            warnings.warn(f"AdamSpec: {message}", UserWarning, stacklevel=2)
        return messages

    # ------------------------------------------------------------------ Keras config

    def get_config(self) -> dict[str, Any]:
        """What `keras.optimizers.Adam(**same kwargs).get_config()` returns, in its key order."""
        values = {k: self._reported(k) for k in CONFIG_ORDER}
        values["learning_rate"] = self._reported_learning_rate()
        return values

    def _reported_learning_rate(self) -> Any:
        lr = self._kw["learning_rate"]
        if self._lr_kind == "float":
            return float(np.float32(lr))  # Keras reads it back from a float32 variable
        if self._lr_kind == "schedule":
            return lr.serialize()
        # Keras' serialize_keras_object for a plain function (for a lambda Keras instead
        # dumps its bytecode under class_name "__lambda__"; adamgen reports the name).
        return {
            "module": "builtins",
            "class_name": "function",
            "config": getattr(lr, "__name__", type(lr).__name__),
            "registered_name": "function",
        }

    @classmethod
    def from_keras_config(cls, cfg: Mapping[str, Any]) -> "AdamSpec":
        """From `Adam.get_config()` or `keras.optimizers.serialize(adam)`; `cfg` is not mutated."""
        if not isinstance(cfg, Mapping):
            raise ValueError(f"expected a Keras optimizer config dict, got {type(cfg).__name__}")
        if "class_name" in cfg and "config" in cfg:
            if cfg["class_name"] != "Adam":
                raise ValueError(f"only Adam configs are supported; got class_name={cfg['class_name']!r}")
            cfg = cfg["config"]
            if not isinstance(cfg, Mapping):
                raise ValueError(f"serialized Adam has a non-dict `config`: {cfg!r}")
        return cls(**dict(cfg))

    # ------------------------------------------------------------------ canonical JSON

    def to_json(self) -> str:
        """Canonical JSON of the constructor keywords (sorted keys, compact separators)."""
        data = {}
        for key in DEFAULTS:
            value = self._reported(key)
            if key == "learning_rate" and self._lr_kind == "schedule":
                value = value.serialize()
            elif callable(value):
                raise ValueError(
                    f"AdamSpec.{key} is a Python callable ({value!r}) and cannot be serialized to JSON; "
                    "use a float or a schedule to get JSON / a content hash"
                )
            data[key] = value
        if self._exclude:
            data["exclude_from_weight_decay"] = list(self._exclude)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "AdamSpec":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"AdamSpec JSON must be an object, got {type(data).__name__}")
        return cls(**data)

    def content_hash(self) -> str:
        """16 hex chars of sha256(to_json()); callables raise the same ValueError as to_json."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _rebuild(kwargs: dict[str, Any]) -> AdamSpec:
    """Unpickling: the spec was validated (and warned about) when first built."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AdamSpec(**kwargs)


__all__ = ["AdamSpec", "CLIP_KINDS", "CONFIG_ORDER", "DEFAULTS", "Schedule", "callable_arity"]
