"""The dtypes adamgen knows, by their short IR names."""
from __future__ import annotations

import ml_dtypes
import numpy as np

# IR name -> NumPy scalar type. Params and slots are one of the float types.
NUMPY_DTYPES: dict[str, type] = {
    "f32": np.float32,
    "f16": np.float16,
    "bf16": ml_dtypes.bfloat16,
    "f64": np.float64,
    "i32": np.int32,
    "bool": np.bool_,
}
FLOAT_DTYPES = ("f32", "f16", "bf16", "f64")
PARAM_DTYPES = ("f32", "f16", "bf16")
_BY_NUMPY: dict[np.dtype, str] = {np.dtype(scalar): name for name, scalar in NUMPY_DTYPES.items()}


def ir_dtype(dtype) -> str:
    """Map a NumPy/JAX dtype (or an IR name) to its IR name; fail with the allowed values."""
    if isinstance(dtype, str) and dtype in NUMPY_DTYPES:
        return dtype
    name = _BY_NUMPY.get(np.dtype(dtype))  # called per leaf on every step: one dict lookup
    if name is None:
        raise ValueError(f"unsupported dtype {dtype!r}; allowed: float32, float16, bfloat16")
    return name


def numpy_dtype(name: str) -> np.dtype:
    if name not in NUMPY_DTYPES:
        raise ValueError(f"unknown IR dtype {name!r}; allowed: {sorted(NUMPY_DTYPES)}")
    return np.dtype(NUMPY_DTYPES[name])
