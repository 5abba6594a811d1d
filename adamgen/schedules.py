"""Keras' six built-in learning-rate schedules, written once against `ScalarMath`.

Each class mirrors `keras.optimizers.schedules.<Name>`: same constructor argument names,
order and defaults, same constructor validation (exception type and message), same
`get_config()`. `emit(math, step)` replays Keras' `__call__` op by op, in float32, with the
same casts in the same order, so the NumPy interpretation is bit-exact with Keras on
XLA-CPU and the IR interpretation computes the schedule inside the compiled kernel.

Rules for `emit`: `step` is the raw int32 optimizer counter (a math value of dtype "i32");
Python control flow depends only on the schedule's constant config, never on the step.

Keras computes a schedule in the dtype of `convert_to_tensor(initial_learning_rate)`, which
is int32 for a Python int (and gives nonsense, e.g. `ExponentialDecay(1, 10, 0.5)(5) == 0`).
adamgen only supports the float32 path, so a non-float `initial_learning_rate` (or a
non-float `PiecewiseConstantDecay` value) is rejected with a ValueError after Keras' own
checks have run.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from adamgen.scalarmath import NumpyMath, ScalarMath

SCHEDULE_MODULE = "keras.optimizers.schedules"
_PI = math.pi  # module constant: `math` is the ScalarMath parameter inside emit()
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


# ----------------------------------------------------------------------------- helpers


def _is_float(x: Any) -> bool:
    return isinstance(x, (float, np.floating))


def _require_float(cls_name: str, field: str, value: Any) -> None:
    if _is_float(value):
        return
    raise ValueError(
        f"{cls_name}: `{field}` must be a float (adamgen only supports Keras' float32 "
        f"schedule path; Keras computes an int `{field}` in int32). Received: {field}={value!r}"
    )


def _require_real(cls_name: str, field: str, value: Any) -> None:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return
    raise ValueError(f"{cls_name}: `{field}` must be a real number. Received: {field}={value!r}")


def _check_decay_steps(field: str, value: Any) -> None:
    """Keras' E8 check (`decay_steps <= 0`), including its TypeError for e.g. None."""
    if value <= 0:
        raise ValueError(f"Argument `{field}` must be > 0. Received: {field}={value}")


def _plain(x: Any) -> Any:
    """What Keras' serialize_keras_object does to a config leaf (numpy scalars -> .item())."""
    if isinstance(x, (list, tuple)):
        items = [_plain(v) for v in x]
        return tuple(items) if isinstance(x, tuple) else items
    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    if isinstance(x, np.generic):
        return x.item()
    return x


class _Schedule:
    """Shared behaviour; subclasses are frozen dataclasses whose fields are Keras' arguments."""

    def emit(self, math: ScalarMath, step: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, step: int) -> np.float32:
        return self.emit(NumpyMath(), np.int32(step))

    def get_config(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def serialize(self) -> dict[str, Any]:
        config = {k: _plain(v) for k, v in self.get_config().items()}
        return {
            "module": SCHEDULE_MODULE,
            "class_name": type(self).__name__,
            "config": config,
            "registered_name": None,
        }


def _fma(math: ScalarMath, a: Any, b: Any, c: Any) -> Any:
    """a * b + c. Keras' `ops.cond` compiles its branches as one XLA computation, and XLA
    contracts a multiply feeding an add into a single-rounding FMA there (eager ops are not
    fused). `ScalarMath` has no `fma` yet; use it when the interpreter provides one,
    otherwise fall back to two roundings (off by <= 1 ulp from Keras at these sites)."""
    fma = getattr(math, "fma", None)
    if fma is not None:
        return fma(a, b, c)
    return math.add(math.mul(a, b), c)


def _f32(math: ScalarMath, value: Any) -> Any:
    """A Python/NumPy number as an f32 constant (Keras: ops.cast(x, float32) / weak-typed scalar)."""
    return math.const(float(value), "f32")


# ----------------------------------------------------------------------------- schedules


@dataclass(frozen=True)
class ExponentialDecay(_Schedule):
    """lr0 * rate ** (k / decay_steps), with floor() on the exponent if staircase."""

    initial_learning_rate: Any
    decay_steps: Any
    decay_rate: Any
    staircase: bool = False
    name: str = "ExponentialDecay"

    def __post_init__(self) -> None:
        _check_decay_steps("decay_steps", self.decay_steps)
        _require_float(type(self).__name__, "initial_learning_rate", self.initial_learning_rate)
        _require_real(type(self).__name__, "decay_rate", self.decay_rate)

    def emit(self, math: ScalarMath, step: Any) -> Any:
        lr0 = _f32(math, self.initial_learning_rate)
        decay_steps = _f32(math, self.decay_steps)
        decay_rate = _f32(math, self.decay_rate)
        p = math.div(math.cast(step, "f32"), decay_steps)
        if self.staircase:
            p = math.floor(p)
        return math.mul(lr0, math.pow(decay_rate, p))


@dataclass(frozen=True, init=False)
class PiecewiseConstantDecay(_Schedule):
    """values[i] on the interval (boundaries[i-1], boundaries[i]]; boundaries compared in int32."""

    boundaries: tuple
    values: tuple
    name: str = "PiecewiseConstant"

    def __init__(self, boundaries: Any, values: Any, name: str = "PiecewiseConstant") -> None:
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                "The length of boundaries should be 1 less than the length of "
                f"values. Received: boundaries={boundaries} of length "
                f"{len(boundaries)}, and values={values} "
                f"of length {len(values)}."
            )
        cls_name = type(self).__name__
        if len(boundaries) == 0:
            # Keras accepts this and fails at the first call with an IndexError.
            raise ValueError(f"{cls_name}: at least one boundary is required. Received: boundaries={boundaries}")
        for b in boundaries:
            _require_real(cls_name, "boundaries", b)
            if not _INT32_MIN <= int(np.float32(b) if _is_float(b) else b) <= _INT32_MAX:
                raise ValueError(f"{cls_name}: boundary {b!r} does not fit in int32 (the step's dtype)")
        for v in values:
            _require_float(cls_name, "values", v)
        object.__setattr__(self, "boundaries", tuple(boundaries))
        object.__setattr__(self, "values", tuple(values))
        object.__setattr__(self, "name", name)

    def get_config(self) -> dict[str, Any]:
        # Keras returns the containers it was given; adamgen stores tuples (hashable) and
        # reports lists, which is what a deserialized (JSON) config holds.
        return {"boundaries": list(self.boundaries), "values": list(self.values), "name": self.name}

    def _int_boundary(self, b: Any) -> int:
        # Keras: float boundary -> float32 tensor -> cast to the step dtype (int32, truncation).
        return int(np.float32(b)) if _is_float(b) else int(b)

    def emit(self, math: ScalarMath, step: Any) -> Any:
        bounds = [math.const(self._int_boundary(b), "i32") for b in self.boundaries]
        vals = [_f32(math, v) for v in self.values]
        result = math.const(0.0, "f32")
        below_first = math.cast(math.le(step, bounds[0]), "f32")
        result = math.add(result, math.mul(below_first, vals[0]))
        above_last = math.cast(math.lt(bounds[-1], step), "f32")
        result = math.add(result, math.mul(above_last, vals[-1]))
        for low, high, value in zip(bounds[:-1], bounds[1:], vals[1:-1]):
            # cast(a & b) == cast(a) * cast(b) exactly for 0/1 values.
            in_range = math.mul(math.cast(math.lt(low, step), "f32"), math.cast(math.le(step, high), "f32"))
            result = math.add(result, math.mul(in_range, value))
        return result


@dataclass(frozen=True)
class PolynomialDecay(_Schedule):
    """(lr0 - end) * (1 - k/decay_steps) ** power + end, optionally cycling."""

    initial_learning_rate: Any
    decay_steps: Any
    end_learning_rate: Any = 0.0001
    power: Any = 1.0
    cycle: bool = False
    name: str = "PolynomialDecay"

    def __post_init__(self) -> None:
        _check_decay_steps("decay_steps", self.decay_steps)
        _require_float(type(self).__name__, "initial_learning_rate", self.initial_learning_rate)
        _require_real(type(self).__name__, "end_learning_rate", self.end_learning_rate)
        _require_real(type(self).__name__, "power", self.power)

    def emit(self, math: ScalarMath, step: Any) -> Any:
        lr0 = _f32(math, self.initial_learning_rate)
        end_lr = _f32(math, self.end_learning_rate)
        power = _f32(math, self.power)
        gs = math.cast(step, "f32")
        decay_steps = _f32(math, self.decay_steps)
        if self.cycle:
            ceil_ratio = math.ceil(math.div(gs, _f32(math, self.decay_steps)))
            multiplier = math.select(math.eq(gs, math.const(0.0, "f32")), math.const(1.0, "f32"), ceil_ratio)
            decay_steps = math.mul(decay_steps, multiplier)
        else:
            gs = math.minimum(gs, decay_steps)
        p = math.div(gs, decay_steps)
        decayed = math.pow(math.sub(math.const(1.0, "f32"), p), power)
        return math.add(math.mul(math.sub(lr0, end_lr), decayed), end_lr)


@dataclass(frozen=True)
class InverseTimeDecay(_Schedule):
    """lr0 / (1 + rate * k / decay_steps), with floor() on k/decay_steps if staircase."""

    initial_learning_rate: Any
    decay_steps: Any
    decay_rate: Any
    staircase: bool = False
    name: str = "InverseTimeDecay"

    def __post_init__(self) -> None:
        _check_decay_steps("decay_steps", self.decay_steps)
        _require_float(type(self).__name__, "initial_learning_rate", self.initial_learning_rate)
        _require_real(type(self).__name__, "decay_rate", self.decay_rate)

    def emit(self, math: ScalarMath, step: Any) -> Any:
        lr0 = _f32(math, self.initial_learning_rate)
        decay_steps = _f32(math, self.decay_steps)
        decay_rate = _f32(math, self.decay_rate)
        p = math.div(math.cast(step, "f32"), decay_steps)
        if self.staircase:
            p = math.floor(p)
        denom = math.add(math.const(1.0, "f32"), math.mul(decay_rate, p))
        return math.div(lr0, denom)


@dataclass(frozen=True)
class CosineDecay(_Schedule):
    """Optional linear warmup to warmup_target, then cosine decay to alpha * peak."""

    initial_learning_rate: Any
    decay_steps: Any
    alpha: Any = 0.0
    name: str = "CosineDecay"
    warmup_target: Any = None
    warmup_steps: Any = 0

    def __post_init__(self) -> None:
        _check_decay_steps("decay_steps", self.decay_steps)
        cls_name = type(self).__name__
        _require_float(cls_name, "initial_learning_rate", self.initial_learning_rate)
        _require_real(cls_name, "alpha", self.alpha)
        _require_real(cls_name, "warmup_steps", self.warmup_steps)
        if self.warmup_target is not None:
            _require_real(cls_name, "warmup_target", self.warmup_target)

    def _decay(self, math: ScalarMath, step: Any, decay_steps: Any, decay_from_lr: Any, fused: bool) -> Any:
        fraction = math.div(step, decay_steps)
        pi = math.const(_PI, "f32")
        cosine = math.mul(math.const(0.5, "f32"), math.add(math.const(1.0, "f32"), math.cos(math.mul(pi, fraction))))
        # Keras: (1 - self.alpha) * cosine + self.alpha with a Python alpha: 1 - alpha in double.
        one_minus_alpha, alpha = _f32(math, 1 - self.alpha), _f32(math, self.alpha)
        if fused:  # inside Keras' ops.cond (warmup form): XLA emits an FMA
            decayed = _fma(math, one_minus_alpha, cosine, alpha)
        else:
            decayed = math.add(math.mul(one_minus_alpha, cosine), alpha)
        return math.mul(decay_from_lr, decayed)

    def emit(self, math: ScalarMath, step: Any) -> Any:
        lr0 = _f32(math, self.initial_learning_rate)
        decay_steps = _f32(math, self.decay_steps)
        gs = math.cast(step, "f32")
        if self.warmup_target is None:
            return self._decay(math, math.minimum(gs, decay_steps), decay_steps, lr0, fused=False)
        warmup_target = _f32(math, self.warmup_target)
        warmup_steps = _f32(math, self.warmup_steps)
        gs = math.minimum(gs, math.add(decay_steps, warmup_steps))
        fraction = math.div(gs, warmup_steps)
        # Both branches run inside Keras' ops.cond, where XLA contracts mul+add into FMAs.
        warm = _fma(math, math.sub(warmup_target, lr0), fraction, lr0)
        decayed = self._decay(math, math.sub(gs, warmup_steps), decay_steps, warmup_target, fused=True)
        return math.select(math.lt(gs, warmup_steps), warm, decayed)


@dataclass(frozen=True)
class CosineDecayRestarts(_Schedule):
    """SGDR: cosine decay restarting every period, periods growing by t_mul, peaks by m_mul."""

    initial_learning_rate: Any
    first_decay_steps: Any
    t_mul: Any = 2.0
    m_mul: Any = 1.0
    alpha: Any = 0.0
    name: str = "SGDRDecay"

    def __post_init__(self) -> None:
        _check_decay_steps("first_decay_steps", self.first_decay_steps)
        cls_name = type(self).__name__
        _require_float(cls_name, "initial_learning_rate", self.initial_learning_rate)
        for field in ("t_mul", "m_mul", "alpha"):
            _require_real(cls_name, field, getattr(self, field))

    def emit(self, math: ScalarMath, step: Any) -> Any:
        one = math.const(1.0, "f32")
        lr0 = _f32(math, self.initial_learning_rate)
        first_decay_steps = _f32(math, self.first_decay_steps)
        alpha = _f32(math, self.alpha)
        t_mul = _f32(math, self.t_mul)
        m_mul = _f32(math, self.m_mul)
        fraction = math.div(math.cast(step, "f32"), first_decay_steps)
        # Keras: ops.cond(t_mul == 1.0, ...) on the float32 t_mul, a config constant.
        if np.float32(self.t_mul) == np.float32(1.0):
            i_restart = math.floor(fraction)
            fraction = math.sub(fraction, i_restart)
        else:
            one_minus_t = math.sub(one, t_mul)
            # Inside Keras' ops.cond: 1.0 - fraction * (1.0 - t_mul) becomes one FMA.
            log_arg = _fma(math, math.neg(fraction), one_minus_t, one)
            i_restart = math.floor(math.div(math.log(log_arg), math.log(t_mul)))
            sum_r = math.div(math.sub(one, math.pow(t_mul, i_restart)), one_minus_t)
            # Keras: (fraction - sum_r) / t_mul**i. XLA's algebraic simplifier rewrites
            # A / pow(B, C) into A * pow(B, -C) inside the compiled cond branch.
            fraction = math.mul(math.sub(fraction, sum_r), math.pow(t_mul, math.neg(i_restart)))
        m_fac = math.pow(m_mul, i_restart)
        cos_term = math.add(one, math.cos(math.mul(math.const(_PI, "f32"), fraction)))
        cosine = math.mul(math.mul(math.const(0.5, "f32"), m_fac), cos_term)
        decayed = math.add(math.mul(math.sub(one, alpha), cosine), alpha)
        return math.mul(lr0, decayed)


# ----------------------------------------------------------------------------- (de)serialization

SCHEDULES: dict[str, type[_Schedule]] = {
    cls.__name__: cls
    for cls in (
        ExponentialDecay,
        PiecewiseConstantDecay,
        PolynomialDecay,
        InverseTimeDecay,
        CosineDecay,
        CosineDecayRestarts,
    )
}
Schedule = _Schedule


def is_schedule(obj: Any) -> bool:
    return isinstance(obj, _Schedule)


def schedule_from_config(d: dict[str, Any]) -> _Schedule:
    """Build a schedule from Keras' serialized form `{"class_name", "config", ["module", "registered_name"]}`."""
    if not isinstance(d, dict):
        raise ValueError(f"a serialized schedule must be a dict, got {type(d).__name__}: {d!r}")
    missing = [k for k in ("class_name", "config") if k not in d]
    if missing:
        raise ValueError(f"serialized schedule lacks key(s) {missing}: {d!r}")
    class_name = d["class_name"]
    if class_name not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule class_name {class_name!r}; allowed: {sorted(SCHEDULES)}")
    module = d.get("module", SCHEDULE_MODULE)
    if module not in (SCHEDULE_MODULE, None):
        raise ValueError(f"schedule {class_name!r} has module {module!r}; expected {SCHEDULE_MODULE!r}")
    config = d["config"]
    if not isinstance(config, dict):
        raise ValueError(f"schedule {class_name!r}: `config` must be a dict, got {config!r}")
    return SCHEDULES[class_name](**config)


def from_keras(obj: Any) -> _Schedule:
    """Convert a live `keras.optimizers.schedules.*` object (by class name and get_config)."""
    class_name = type(obj).__name__
    if class_name not in SCHEDULES or not callable(getattr(obj, "get_config", None)):
        raise ValueError(
            f"cannot convert {class_name!r} to an adamgen schedule; allowed: {sorted(SCHEDULES)}"
        )
    return schedule_from_config({"class_name": class_name, "config": dict(obj.get_config())})
