"""The few primitives whose float32 rounding is the host's, computed by XLA-CPU itself.

Keras' eager ops on the JAX backend run each op as its own XLA-CPU computation. For +, -, *, /
and sqrt that is IEEE rounding, which NumPy reproduces. Two kinds of op are not:
  * reductions: XLA sums in an order set by its tree-reduction rewrite and then by LLVM's
    backend, which regroups chains of reassociable adds by the CPU's scheduling model (a (16, 16)
    tensor sums in one order on an AVX2 host and another on an AVX-512 one);
  * transcendentals (pow, cos, log): XLA's own approximations, not correctly rounded, and which
    inputs they round differently from NumPy depends on the host (pow(0.9f, 4.0f) is 0.6560999
    on an AVX-512 host; NumPy's is 0.6561).
No NumPy rule reproduces every host, so the oracle and the schedules' NumPy interpretation ask
XLA-CPU for exactly these, one op per call as Keras does. Scalar results are cached.
"""
from __future__ import annotations

import functools

import ml_dtypes
import numpy as np

_DTYPES = {d.name: d for d in (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))}
_UNARY = ("cos", "log")


def device():
    """The host's XLA-CPU device (where Keras' eager ops run on a machine with no accelerator)."""
    import jax
    return jax.devices("cpu")[0]


def _put(x: np.ndarray):
    import jax
    return jax.device_put(x, device())


def sum_f32(x: np.ndarray) -> np.float32:
    """jnp.sum(x) over all axes of a float32 array, as XLA-CPU computes it."""
    import jax.numpy as jnp
    return np.float32(np.asarray(jnp.sum(_put(np.asarray(x, np.float32)))))


def _check(dt: np.dtype) -> None:
    if dt.name not in _DTYPES:
        raise TypeError(f"XLA-CPU float ops take float32, float16 or bfloat16, got {dt}")


def _raw(x, dt: np.dtype) -> bytes:
    """A 0-d value as its bytes in dtype dt (hashable: the cache key)."""
    return np.asarray(x, dt).tobytes()


def _op(op: str, *args) -> np.ndarray:
    """jnp.<op>(*args) on XLA-CPU, in the first argument's dtype."""
    import jax.numpy as jnp
    dt = np.asarray(args[0]).dtype
    return np.asarray(getattr(jnp, op)(*(_put(np.asarray(a)) for a in args))).astype(dt)


@functools.lru_cache(maxsize=8192)
def _scalar_op(op: str, name: str, *raws: bytes) -> np.generic:
    """_op of 0-d values given as bytes of dtype `name` (hashable, so the result is cached)."""
    return _op(op, *(np.frombuffer(raw, _DTYPES[name]).reshape(()) for raw in raws))[()]


def power(a, b):
    """ops.power(a, b) of two values of one float dtype, as XLA-CPU computes it (0-d: cached)."""
    da, db = np.asarray(a).dtype, np.asarray(b).dtype
    if da != db:
        raise TypeError(f"power on mixed dtypes {da} and {db}; cast explicitly")
    _check(da)
    if np.ndim(a) or np.ndim(b):
        return _op("power", a, b)
    return _scalar_op("power", da.name, _raw(a, da), _raw(b, db))


def unary(op: str, a):
    """ops.cos / ops.log of a float value, as XLA-CPU computes it (0-d: cached)."""
    if op not in _UNARY:
        raise ValueError(f"op must be one of {_UNARY}, got {op!r}")
    dt = np.asarray(a).dtype
    _check(dt)
    if np.ndim(a):
        return _op(op, a)
    return _scalar_op(op, dt.name, _raw(a, dt))
