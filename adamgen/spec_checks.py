"""The checks an `AdamSpec` runs on its keywords: Keras' own (its order, exception types and
messages), adamgen's (what it cannot compile), and warnings for inputs Keras silently accepts
that break training. Each raises before any work, naming the field."""
from __future__ import annotations

import inspect
import numbers
import re
import warnings
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from adamgen.schedules import SCHEDULES, from_keras, is_schedule, schedule_from_config

CLIP_KINDS = ("clipnorm", "clipvalue", "global_clipnorm")
_HYPERS = ("beta_1", "beta_2", "epsilon")
_OPTIONAL_REALS = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "loss_scale_factor")


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def plain(x: Any) -> Any:
    """NumPy scalars -> Python scalars (Keras' serializer does the same), everything else as is."""
    return x.item() if isinstance(x, np.generic) else x


def callable_arity(fn: Callable, field: str) -> int:
    """0 for f(), 1 for f(step); anything else is a ValueError naming the field."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{field}`: cannot inspect the signature of {fn!r} ({exc}); pass a function f() or f(step)") from exc
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in params if p.default is p.empty and p.kind in positional]
    required_kw = [p.name for p in params if p.default is p.empty and p.kind is inspect.Parameter.KEYWORD_ONLY]
    if required_kw or len(required) > 1:
        raise ValueError(
            f"`{field}` callable must take no arguments or exactly one (the step); "
            f"{getattr(fn, '__qualname__', fn)!r} requires {required + required_kw}"
        )
    return len(required)


def _is_keras_schedule(x: Any) -> bool:
    return type(x).__name__ in SCHEDULES and callable(getattr(x, "get_config", None))


def resolve_learning_rate(lr: Any) -> tuple[Any, str, int | None]:
    """Keras' learning-rate check plus adamgen's forms -> (value, lr_kind, callable arity)."""
    if is_schedule(lr):
        return lr, "schedule", None
    if isinstance(lr, Mapping):
        if lr.get("class_name") in ("function", "__lambda__"):
            raise ValueError(
                f"`learning_rate` is a serialized Python callable ({lr!r}); a callable cannot be "
                "rebuilt from a config. Pass the function itself."
            )
        return schedule_from_config(dict(lr)), "schedule", None
    if _is_keras_schedule(lr):
        return from_keras(lr), "schedule", None
    if callable(lr):
        return lr, "callable", callable_arity(lr, "learning_rate")
    if not isinstance(lr, float):
        raise ValueError(
            "Argument `learning_rate` should be float, or an instance "
            "of LearningRateSchedule, or a callable "
            "(that takes in the current iteration value "
            "and returns the corresponding learning rate value). "
            f"Received instead: learning_rate={lr}"
        )
    return float(lr), "float", None


def keras_checks(kw: dict[str, Any]) -> None:
    """keras.optimizers.Optimizer.__init__'s checks, in its order, with its messages (E2-E5)."""
    steps = kw["gradient_accumulation_steps"]
    if steps and not steps >= 2:
        raise ValueError(
            "`gradient_accumulation_steps` must be an integer >= 2. "
            f"Received: gradient_accumulation_steps={steps}"
        )
    if kw["use_ema"]:
        momentum, freq = kw["ema_momentum"], kw["ema_overwrite_frequency"]
        if momentum > 1 or momentum < 0:
            raise ValueError(f"`ema_momentum` must be in the range [0, 1]. Received: ema_momentum={momentum}")
        if freq and (not isinstance(freq, int) or freq < 1):
            raise ValueError(
                "`ema_overwrite_frequency` must be an integer >= 1 or "
                f"None. Received: ema_overwrite_frequency={freq}"
            )
    clipnorm, clipvalue, global_clipnorm = kw["clipnorm"], kw["clipvalue"], kw["global_clipnorm"]
    if sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm)) > 1:
        raise ValueError(
            "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can "
            f"be set. Received: clipnorm={clipnorm}, "
            f"clipvalue={clipvalue}, global_clipnorm={global_clipnorm}"
        )


def adamgen_checks(kw: dict[str, Any]) -> None:
    """Inputs Keras accepts but adamgen cannot compile: clear ValueErrors naming the field."""
    steps = kw["gradient_accumulation_steps"]
    # Deliberate deviation: Keras accepts e.g. 2.5 (first update after 5 micro-steps, whose sum
    # is divided by 2.5, and a float32 `iterations`). adamgen requires an integer.
    if steps and (not isinstance(steps, numbers.Integral) or isinstance(steps, bool)):
        raise ValueError(
            "`gradient_accumulation_steps` must be an integer >= 2 (adamgen rejects non-integer "
            f"values, which Keras accepts with odd results). Received: gradient_accumulation_steps={steps!r}"
        )
    for field in _HYPERS:
        value = kw[field]
        if callable(value):
            if callable_arity(value, field) != 0:
                raise ValueError(f"`{field}` callable must take no arguments (Keras calls it as {field}())")
            continue
        if not _is_real(value):
            raise ValueError(f"`{field}` must be a float or a zero-argument callable. Received: {field}={value!r}")
    for field in _OPTIONAL_REALS:
        if kw[field] is not None and not _is_real(kw[field]):
            raise ValueError(f"`{field}` must be a number or None. Received: {field}={kw[field]!r}")
    if kw["use_ema"] and not _is_real(kw["ema_momentum"]):
        raise ValueError(f"`ema_momentum` must be a number. Received: ema_momentum={kw['ema_momentum']!r}")
    if not isinstance(kw["name"], str) or "/" in kw["name"]:  # Keras' message, word for word
        raise ValueError(f"Argument `name` must be a string and cannot contain character `/`. "
                         f"Received: name={kw['name']}")


def warn_nonsense(kw: dict[str, Any]) -> None:
    """Inputs Keras silently accepts that break or disable something: warn, naming the field."""
    eps = kw["epsilon"]
    if not callable(eps) and eps == 0:
        warn("epsilon=0: a zero gradient gives 0/0 = NaN in the update (Keras does not guard against it)")
    scale = kw["loss_scale_factor"]
    if scale is not None and scale <= 0:
        warn(f"loss_scale_factor={scale} <= 0: gradients are divided by it, giving inf/NaN")
    if kw["use_ema"] and kw["ema_overwrite_frequency"] is not None and kw["ema_overwrite_frequency"] == 0:
        warn("ema_overwrite_frequency=0 with use_ema: on JAX (k+1) % 0 == 0, so the variables are overwritten by their EMA on every call")
    for field in CLIP_KINDS:
        value = kw[field]
        if value is not None and value <= 0:
            warn(f"{field}={value} <= 0: Keras accepts it and clipping is disabled")


def exclusions(names: Any) -> tuple[str, ...]:
    """`exclude_from_weight_decay`: a list of regular expressions (Keras' var_names; None: none),
    as a sorted tuple without repeats (Keras joins them from a set: order and repeats do not
    matter, so equal exclusions make equal specs)."""
    if names is None:
        return ()
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise ValueError("`exclude_from_weight_decay` must be a list of names (regular expressions), "
                         f"e.g. ['bias', 'norm']. Received: {names!r}")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"`exclude_from_weight_decay` entries must be non-empty strings. Received: {name!r}")
        try:
            re.compile(name)
        except re.error as err:
            raise ValueError(f"`exclude_from_weight_decay` entry {name!r} is not a regular expression: {err}") from None
    unique = tuple(sorted(set(names)))
    try:  # what Keras compiles: valid names can still clash joined (inline flags, group names)
        re.compile("|".join(unique))
    except re.error as err:
        raise ValueError(f"`exclude_from_weight_decay` names {list(unique)} do not join into one regular "
                         f"expression (Keras joins them with '|'): {err}") from None
    return unique


def warn(message: str, depth: int = 2) -> None:
    """A UserWarning pointing at the code that made the spec, `depth` calls above this one."""
    warnings.warn(f"AdamSpec: {message}", UserWarning, stacklevel=depth + 2)
