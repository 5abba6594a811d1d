"""The scalar-math vocabulary that learning-rate schedules are written in.

A schedule's formula is written once, against this protocol, and interpreted twice:
by `NumpyMath` (float32 NumPy scalars, used by the oracle) and by the IR builder in
`adamgen.lower` (which records the same operations as IR ops, so the schedule runs inside
the compiled kernel, not on the host). Every value is a 0-d quantity of dtype "f32",
"i32" or "bool"; there is no implicit Python-float arithmetic.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from adamgen import xla_cpu
from adamgen.dtypes import numpy_dtype


class ScalarMath(Protocol):
    def const(self, value: float | int | bool, dtype: str = "f32") -> Any: ...
    def cast(self, x: Any, dtype: str) -> Any: ...
    def add(self, a: Any, b: Any) -> Any: ...
    def sub(self, a: Any, b: Any) -> Any: ...
    def mul(self, a: Any, b: Any) -> Any: ...
    def div(self, a: Any, b: Any) -> Any: ...
    def pow(self, a: Any, b: Any) -> Any: ...
    def neg(self, a: Any) -> Any: ...
    def floor(self, a: Any) -> Any: ...
    def ceil(self, a: Any) -> Any: ...
    def cos(self, a: Any) -> Any: ...
    def log(self, a: Any) -> Any: ...
    def sqrt(self, a: Any) -> Any: ...
    def minimum(self, a: Any, b: Any) -> Any: ...
    def maximum(self, a: Any, b: Any) -> Any: ...
    def lt(self, a: Any, b: Any) -> Any: ...
    def le(self, a: Any, b: Any) -> Any: ...
    def eq(self, a: Any, b: Any) -> Any: ...
    def select(self, cond: Any, a: Any, b: Any) -> Any: ...


class NumpyMath:
    """ScalarMath on 0-d NumPy values, each op rounded to its dtype (float32 for floats). pow,
    cos and log are XLA-CPU's own (adamgen.xla_cpu): their rounding is the host's, as in Keras."""

    def const(self, value, dtype: str = "f32"):
        return numpy_dtype(dtype).type(value)

    def cast(self, x, dtype: str):
        return numpy_dtype(dtype).type(x)

    def add(self, a, b):
        return _same(a, b, np.add)

    def sub(self, a, b):
        return _same(a, b, np.subtract)

    def mul(self, a, b):
        return _same(a, b, np.multiply)

    def div(self, a, b):
        return _same(a, b, np.divide)

    def pow(self, a, b):
        return xla_cpu.power(a, b)

    def neg(self, a):
        return -a

    def floor(self, a):
        return np.floor(a)

    def ceil(self, a):
        return np.ceil(a)

    def cos(self, a):
        return xla_cpu.unary("cos", a)

    def log(self, a):
        return xla_cpu.unary("log", a)

    def sqrt(self, a):
        return np.sqrt(a)

    def minimum(self, a, b):
        return _same(a, b, np.minimum)

    def maximum(self, a, b):
        return _same(a, b, np.maximum)

    def lt(self, a, b):
        return np.bool_(_same(a, b, np.less))

    def le(self, a, b):
        return np.bool_(_same(a, b, np.less_equal))

    def eq(self, a, b):
        return np.bool_(_same(a, b, np.equal))

    def select(self, cond, a, b):
        if np.asarray(a).dtype != np.asarray(b).dtype:
            raise TypeError(f"select branches differ in dtype: {np.asarray(a).dtype} vs {np.asarray(b).dtype}")
        return a if bool(cond) else b


def _same(a, b, fn):
    da, db = np.asarray(a).dtype, np.asarray(b).dtype
    if da != db:
        raise TypeError(f"scalar op on mixed dtypes {da} and {db}; cast explicitly")
    with np.errstate(all="ignore"):
        return da.type(fn(a, b))
