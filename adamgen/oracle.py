"""The NumPy oracle: one Keras 3 `Adam.apply(grads, vars)` call (JAX backend, eager), redone in NumPy.

Written from shared/docs/keras-adam-semantics.md, independent of adamgen's IR. It is the truth
every compiled target is tested against, and tests/test_oracle_keras.py checks it against real
Keras bit for bit. Everything is NumPy except the primitives whose rounding is the host's:
the float32 sums of squares and the pow of the bias corrections (and the schedules' pow, cos
and log), which `adamgen.xla_cpu` has XLA-CPU compute, one op each as Keras' eager ops do, so
the oracle is bit-exact with Keras on every host.

Numerics (semantics page §10), the rules that make bit-exactness possible:
  * every op is rounded to the variable dtype (float32, float16 or bfloat16; NumPy/ml_dtypes
    round each +, -, *, /, sqrt correctly); no FMA;
  * Python-float hyper-parameters become weakly typed float32 values, then the variable dtype;
  * `x / s` by a scalar: one-element tensors get a true division; longer ones get x * (1/s),
    the reciprocal rounded to the dtype (float32, float16), or for bfloat16 a float32
    reciprocal and product rounded once (XLA-CPU computes bfloat16 in float32);
  * sums of squares accumulate in float32 in XLA-CPU's order (`xla_cpu.sum_f32`), round once;
  * beta ** t is XLA-CPU's pow in the variable dtype (`xla_cpu.power`).

Gradients are cast to their parameter's dtype on entry (Keras casts later, inside
`update_step`; the two agree when gradients already have the parameter dtype).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import ml_dtypes
import numpy as np

from adamgen import xla_cpu

_F32 = np.dtype(np.float32)
_BF16 = np.dtype(ml_dtypes.bfloat16)


@dataclasses.dataclass(frozen=True)
class OracleState:
    """Same fields as adamgen.state.AdamState, as plain lists of NumPy arrays."""

    iterations: np.int32
    momentums: list
    velocities: list
    velocity_hats: list | None = None
    averages: list | None = None
    accumulators: list | None = None


# ----------------------------------------------------------------------------- numerics


def _const(value: Any, dtype: np.dtype) -> np.ndarray:
    """A hyper-parameter as a 0-d value of `dtype`, via float32 (Keras' convert_to_tensor)."""
    return np.asarray(np.float32(value)).astype(dtype)


def _cast(value: Any, dtype: np.dtype) -> np.ndarray:
    """Keras' ops.cast(value, dtype) of a host number: float16 and float32 straight from the
    value (a Python float is a double: one rounding), bfloat16 through float32 (Keras'
    convert_to_tensor makes a float32 array first for bfloat16). Used where Keras casts a Python
    number (the beta powers' bases, weight decay, a callable's lr); other sites see the number
    as a weakly typed float32, which is _const."""
    if np.dtype(dtype) == _BF16:
        return np.asarray(value).astype(_F32).astype(dtype)
    return np.asarray(value).astype(dtype)


def _div_scalar(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """x / d for a 0-d (or all-ones-shaped) divisor d of x's dtype, as XLA-CPU computes it."""
    dt = x.dtype
    with np.errstate(all="ignore"):
        if x.size == 1:
            return (x / d).astype(dt)
        if dt == _BF16:
            recip = np.float32(1) / d.astype(_F32)
            return (x.astype(_F32) * recip).astype(dt)
        return (x * (np.asarray(1, dt) / d).astype(dt)).astype(dt)


# The float32 sum of one tensor's squares: XLA-CPU's order (Keras' own) unless a caller names
# another (Oracle's `tensor_sum`: the one freedom a target has, the order of a norm's additions).
TensorSum = Callable[[np.ndarray], Any]


def _sum_squares(x: np.ndarray, tensor_sum: TensorSum = xla_cpu.sum_f32) -> np.ndarray:
    """ops.sum(ops.square(x)): square in x's dtype, accumulate in float32, round once."""
    return np.asarray(tensor_sum(np.square(x).astype(_F32))).astype(x.dtype)


def _common_dtype(dtypes: list[np.dtype]) -> np.dtype:
    """JAX promotion among float32/float16/bfloat16 (any mix promotes to float32)."""
    return dtypes[0] if all(d == dtypes[0] for d in dtypes) else _F32


# ----------------------------------------------------------------------------- clipping


def _clip_by_norm(g: np.ndarray, c: float, tensor_sum: TensorSum) -> np.ndarray:
    """g*c / max(n, c), n = sqrt(S) if S > 0 else S (Keras' two-tap where)."""
    dt = g.dtype
    with np.errstate(all="ignore"):
        l2sum = _sum_squares(g, tensor_sum)
        l2norm = np.sqrt(l2sum) if l2sum > 0 else l2sum
        intermediate = (g * _const(c, dt)).astype(dt)
        return _div_scalar(intermediate, np.maximum(l2norm, _const(c, dt)))


def _clip_by_global_norm(grads: list[np.ndarray], c: float, tensor_sum: TensorSum) -> list[np.ndarray]:
    """scale = c * min(1/N, 1/c) + (N - N); a non-finite N makes every gradient NaN. The total
    over tensors is XLA's sum of the stacked per-tensor sums (every target's too)."""
    dt = _common_dtype([g.dtype for g in grads])
    with np.errstate(all="ignore"):
        per_tensor = np.stack([_sum_squares(g, tensor_sum).astype(dt) for g in grads])
        norm = np.sqrt(np.asarray(xla_cpu.sum_f32(per_tensor.astype(_F32))).astype(dt))
        inv_norm = (np.asarray(1, dt) / norm).astype(dt)
        scale = (_const(c, dt) * np.minimum(inv_norm, _const(1.0 / c, dt))).astype(dt)
        scale = (scale + (norm - norm)).astype(dt)
        out = []
        for g in grads:
            pt = _common_dtype([g.dtype, dt])
            out.append((g.astype(pt) * scale.astype(pt)).astype(g.dtype))
        return out


def _clip_by_value(g: np.ndarray, c: float) -> np.ndarray:
    lo, hi = _const(-c, g.dtype), _const(c, g.dtype)
    return np.minimum(np.maximum(g, lo), hi)


def _clip(grads: list[np.ndarray], clip: tuple[str, float] | None, tensor_sum: TensorSum) -> list[np.ndarray]:
    if clip is None:
        return grads
    kind, c = clip
    if kind == "clipnorm":
        return [_clip_by_norm(g, c, tensor_sum) for g in grads]
    if kind == "global_clipnorm":
        return _clip_by_global_norm(grads, c, tensor_sum)
    if kind == "clipvalue":
        return [_clip_by_value(g, c) for g in grads]
    raise ValueError(f"unknown clip kind {kind!r}; allowed: clipnorm, clipvalue, global_clipnorm")


# ----------------------------------------------------------------------------- the oracle


class Oracle:
    """NumPy model of `keras.optimizers.Adam(**spec)` driven by eager `apply` calls.

    Arrays go in and come out as lists (one entry per variable); inputs are never mutated.
    """

    def __init__(self, spec: Any, tensor_sum: TensorSum | None = None) -> None:
        """`tensor_sum`: how a norm's float32 squares of one tensor are added (default XLA-CPU's
        order, Keras' own); a target that adds them in another documented order is checked
        against the oracle given that order (tests/test_host_norm_order.py)."""
        self.spec = spec
        self.tensor_sum = tensor_sum or xla_cpu.sum_f32

    # -- hyper-parameters

    def learning_rate_at(self, k: int) -> np.ndarray:
        """The learning rate used on the call whose raw counter is k (Keras `self.learning_rate`),
        as a 0-d array that each variable casts to its dtype: float32 (Keras' variable, a
        schedule's output), except a zero-argument callable's value, which keeps its own type
        (a Python float is a double): Keras casts it straight to the variable's dtype, one rounding."""
        spec = self.spec
        if spec.lr_kind == "float":
            return np.asarray(spec.learning_rate, np.float32)
        if spec.lr_kind == "schedule":
            return np.asarray(spec.learning_rate(int(k)), np.float32)
        if spec.lr_kind == "callable":
            fn: Callable = spec.learning_rate
            if spec.lr_callable_arity == 0:
                return np.asarray(fn())
            return np.asarray(fn(int(k)), np.float32)  # adamgen's lr(step): traced, a float32
        raise ValueError(f"unknown lr_kind {spec.lr_kind!r}; allowed: float, schedule, callable")

    @staticmethod
    def _hyper(value: Any) -> tuple[Any, bool]:
        """(value, is_tensor): a callable is evaluated now and acts as a float32 scalar tensor."""
        if callable(value):
            return np.float32(value()), True
        return value, False

    # -- API

    def init(self, params: list[np.ndarray]) -> OracleState:
        spec = self.spec
        zeros = lambda: [np.zeros_like(np.asarray(p)) for p in params]  # noqa: E731
        return OracleState(
            iterations=np.int32(0),
            momentums=zeros(),
            velocities=zeros(),
            velocity_hats=zeros() if spec.amsgrad else None,
            averages=zeros() if spec.use_ema else None,
            accumulators=zeros() if spec.accumulation_steps else None,
        )

    def finalize(self, state: OracleState, params: list[np.ndarray]) -> list[np.ndarray]:
        """`finalize_variable_values`: θ ← EMA average when use_ema, else unchanged."""
        if not self.spec.use_ema:
            return [np.array(p, copy=True) for p in params]
        return [a.astype(np.asarray(p).dtype, copy=True) for a, p in zip(state.averages, params)]

    def apply(self, grads: list, state: OracleState, params: list[np.ndarray], decayed: list[bool] | None = None):
        """One `opt.apply(grads, vars)`; returns (new params, new state). `decayed[i]` False
        excludes variable i from weight decay (Keras' exclude_from_weight_decay); None: none is."""
        params = [np.array(p, copy=True) for p in params]
        if len(grads) == 0:  # Keras: no-op, the counter does not move
            return params, state
        if len(grads) != len(params):
            raise ValueError(f"got {len(grads)} gradients for {len(params)} variables")
        live = self._live_indices(grads)
        s = _copy_slots(state)
        spec = self.spec
        k = int(state.iterations)
        n_acc = spec.accumulation_steps
        k_eff = k // n_acc if n_acc else k

        g = {i: np.asarray(grads[i]).astype(params[i].dtype) for i in live}
        if spec.loss_scale_factor is not None:  # §2.2: first, before everything else
            g = {i: _div_scalar(x, _const(spec.loss_scale_factor, x.dtype)) for i, x in g.items()}

        is_update = True
        if n_acc:  # §2.3
            is_update = (k + 1) % n_acc == 0
            acc = s["accumulators"]
            if is_update:  # mean (g + A) * (1/N) inside lax.cond: reciprocal for every shape
                g = {i: self._acc_mean(x, acc[i], n_acc) for i, x in g.items()}
                for i in live:
                    acc[i] = np.zeros_like(acc[i])
            else:
                for i in live:
                    acc[i] = (g[i] + acc[i]).astype(acc[i].dtype)

        # Keras evaluates the lr once per decayed variable, then once for update_step, on
        # every call (JAX computes both branches of the accumulation cond).
        decays = [i for i in live if spec.weight_decay is not None and (decayed is None or decayed[i])]
        lr_wd = {i: self.learning_rate_at(k) for i in decays}
        lr = self.learning_rate_at(k)
        if is_update:
            clipped = _clip([g[i] for i in live], spec.clip, self.tensor_sum)
            g = dict(zip(live, clipped))
            for i in decays:  # §5: decoupled decay on the pre-update θ
                dt = params[i].dtype
                decay = (params[i] * _cast(spec.weight_decay, dt)).astype(dt)
                params[i] = (params[i] - (decay * _cast(lr_wd[i], dt)).astype(dt)).astype(dt)
            self._adam_step(live, g, s, params, lr, k_eff)

        if spec.use_ema:
            self._ema(s["averages"], params, k_eff)

        s["iterations"] = np.int32(k + 1)
        return params, OracleState(**s)

    # -- steps

    def _live_indices(self, grads: list) -> list[int]:
        live = [i for i, x in enumerate(grads) if x is not None]
        if not live:
            raise ValueError("No gradients provided for any variable.")
        missing = [f"variable_{i}" for i, x in enumerate(grads) if x is None]
        if missing:
            warnings.warn(
                f"Gradients do not exist for variables {missing} when minimizing the loss."
                " If using `model.compile()`, did you forget to provide a `loss` argument?"
            )
        return live

    @staticmethod
    def _acc_mean(g: np.ndarray, a: np.ndarray, n: int) -> np.ndarray:
        dt = g.dtype
        total = (g + a).astype(dt)
        if dt == _BF16:
            return (total.astype(_F32) * (np.float32(1) / np.float32(n))).astype(dt)
        return (total * (np.asarray(1, dt) / _const(n, dt)).astype(dt)).astype(dt)

    def _adam_step(self, live: list[int], g: dict, s: dict, params: list, lr: np.ndarray, k_eff: int):
        """§3, per variable, everything in the variable dtype."""
        spec = self.spec
        beta_1, b1_tensor = self._hyper(spec.beta_1)
        beta_2, b2_tensor = self._hyper(spec.beta_2)
        eps, eps_tensor = self._hyper(spec.epsilon)
        for i in live:
            dt = params[i].dtype
            one = np.asarray(1, dt)
            t = np.asarray(k_eff + 1).astype(dt)
            with np.errstate(all="ignore"):
                b1p = np.asarray(xla_cpu.power(_cast(beta_1, dt), t))
                b2p = np.asarray(xla_cpu.power(_cast(beta_2, dt), t))
                alpha = ((_cast(lr, dt) * np.sqrt(one - b2p)).astype(dt) / (one - b1p)).astype(dt)
                m = _moment(s["momentums"][i], g[i], beta_1, b1_tensor)
                v = _moment(s["velocities"][i], np.square(g[i]), beta_2, b2_tensor)
                s["momentums"][i], s["velocities"][i] = m, v
                if spec.amsgrad:
                    v = np.maximum(s["velocity_hats"][i], v)
                    s["velocity_hats"][i] = v
                step_num = (m * alpha).astype(dt)
                if eps_tensor:  # float32 scalar tensor promotes the tail to float32
                    denom = np.sqrt(v).astype(_F32) + np.float32(eps)
                    params[i] = (params[i].astype(_F32) - step_num.astype(_F32) / denom).astype(dt)
                else:
                    denom = (np.sqrt(v) + _const(eps, dt)).astype(dt)
                    params[i] = (params[i] - (step_num / denom).astype(dt)).astype(dt)

    def _ema(self, averages: list, params: list, k_eff: int) -> None:
        """§7: a ← μ·a + (1−μ)·θ over all variables, μ = 0 while k_eff == 0; then overwrite."""
        spec = self.spec
        for i, p in enumerate(params):
            dt = p.dtype
            mu = (np.asarray(k_eff != 0).astype(dt) * _const(spec.ema_momentum, dt)).astype(dt)
            with np.errstate(all="ignore"):
                averages[i] = ((mu * averages[i]).astype(dt) + ((np.asarray(1, dt) - mu) * p).astype(dt)).astype(dt)
        f = spec.ema_overwrite
        if f is None:
            return
        c = 1 if f == 0 or (k_eff + 1) % f == 0 else 0  # JAX: x % 0 == 0 for int32
        for i, p in enumerate(params):  # arithmetic blend: a non-finite average poisons θ
            dt = p.dtype
            with np.errstate(all="ignore"):
                params[i] = ((averages[i] * np.asarray(c, dt)).astype(dt) + (p * np.asarray(1 - c, dt)).astype(dt)).astype(dt)


def _copy_slots(state: OracleState) -> dict:
    """The state as a dict of fresh lists of fresh arrays (slots that are off stay None)."""
    out: dict = {"iterations": state.iterations}
    for f in dataclasses.fields(state):
        if f.name == "iterations":
            continue
        value = getattr(state, f.name)
        out[f.name] = None if value is None else [np.array(a, copy=True) for a in value]
    return out


def _moment(prev: np.ndarray, target: np.ndarray, beta: Any, tensor: bool) -> np.ndarray:
    """prev + (target − prev)·(1 − β): 1 − β in Python double, or in float32 for a tensor β."""
    dt = prev.dtype
    diff = (target - prev).astype(dt)
    if tensor:  # strong float32 coefficient: product and sum in float32, one rounding on assign
        coef = np.float32(1) - np.float32(beta)
        return (prev.astype(_F32) + diff.astype(_F32) * coef).astype(dt)
    return (prev + (diff * _const(1 - beta, dt)).astype(dt)).astype(dt)
