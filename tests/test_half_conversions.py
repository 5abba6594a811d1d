"""The kernels' own float16 / bfloat16 conversions (templates/common/element.h.j2), which host
and CUDA code share, against NumPy's (ml_dtypes') round-to-nearest-even: every float16 and
bfloat16 value loaded, and stored (and rounded: the per-op rounding, which skips the 16-bit
round trip) from every half value, every midpoint between two neighbours and the floats
either side of it, float32 subnormals and a million random float32 bit patterns."""
from __future__ import annotations

import ctypes

import ml_dtypes
import numpy as np
import pytest

import adamgen
from adamgen import toolchain
from adamgen.backends.cpp import HOST
from adamgen.backends.native import kernel_for
from adamgen.compiler import compile_spec

ENTRY_POINTS = """
extern "C" void test_load_{t}(const std::uint16_t* in, float* out, std::int64_t n) {{
  for (std::int64_t i = 0; i < n; ++i) {{
    adamgen_kernel::adamgen_{t} h;
    h.bits = in[i];
    out[i] = adamgen_kernel::adamgen_load(h);
  }}
}}
extern "C" void test_round_{t}(const float* in, float* out, std::int64_t n) {{
  for (std::int64_t i = 0; i < n; ++i) out[i] = adamgen_kernel::adamgen_round_{t}(in[i]);
}}
extern "C" void test_store_{t}(const float* in, std::uint16_t* out, std::int64_t n) {{
  for (std::int64_t i = 0; i < n; ++i) {{
    adamgen_kernel::adamgen_{t} h;
    adamgen_kernel::adamgen_store(h, in[i]);
    out[i] = h.bits;
  }}
}}
"""
DTYPES = {"f16": np.float16, "bf16": ml_dtypes.bfloat16}


@pytest.fixture(scope="module")
def lib():
    source = kernel_for(compile_spec(adamgen.AdamSpec(), "f16").kernels, "f16", HOST, "update").source
    source += "".join(ENTRY_POINTS.format(t=t) for t in DTYPES)
    return ctypes.CDLL(str(toolchain.compile_host(source)))


def _call(lib, name, values: np.ndarray, out_dtype) -> np.ndarray:
    values = np.ascontiguousarray(values)
    out = np.empty(values.shape, out_dtype)
    getattr(lib, name)(values.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p),
                       ctypes.c_int64(values.size))
    return out


def _same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Equal bits, except that a NaN only has to be a NaN (payloads are not specified)."""
    got_nan, want_nan = np.isnan(got.astype(np.float32)), np.isnan(want.astype(np.float32))
    np.testing.assert_array_equal(got_nan, want_nan, err_msg=f"{what}: NaN positions")
    ok = got_nan | (got.view(np.uint16 if got.itemsize == 2 else np.uint32)
                    == want.view(np.uint16 if want.itemsize == 2 else np.uint32))
    bad = np.flatnonzero(~ok)
    assert bad.size == 0, f"{what}: {bad.size} differ, e.g. {got[bad[:3]]} vs {want[bad[:3]]}"


@pytest.mark.parametrize("name", list(DTYPES))
def test_every_half_loads_exactly(lib, name):
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    _same(_call(lib, f"test_load_{name}", bits, np.float32), bits.view(DTYPES[name]).astype(np.float32), name)


def _store_inputs(dtype) -> np.ndarray:
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype).astype(np.float32)
    finite = np.sort(halves[np.isfinite(halves)])
    mids = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)  # exact in float32
    near = np.concatenate([mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))])
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 1 << 32, 1_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    subnormal = (np.arange(0, 1 << 23, 997, dtype=np.uint32)).view(np.float32)
    edges = np.array([65504, 65519.996, 65520, 65536, 3.4e38, np.inf, -np.inf, np.nan, 0.0, -0.0,
                      2.0 ** -14, 2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0000001, 2.0 ** -126], np.float32)
    return np.concatenate([halves, near, noise, subnormal, -subnormal, edges])


@pytest.mark.parametrize("name", list(DTYPES))
def test_stores_round_to_nearest_even(lib, name):
    values = _store_inputs(DTYPES[name])
    got = _call(lib, f"test_store_{name}", values, np.uint16).view(DTYPES[name])
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN inputs
        want = values.astype(DTYPES[name])
    _same(got, want, name)


@pytest.mark.parametrize("name", list(DTYPES))
def test_rounding_is_a_store_then_a_load(lib, name):
    values = _store_inputs(DTYPES[name])
    got = _call(lib, f"test_round_{name}", values, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        want = values.astype(DTYPES[name]).astype(np.float32)
    _same(got, want, name)
    stored = _call(lib, f"test_store_{name}", values, np.uint16)
    loaded = _call(lib, f"test_load_{name}", stored, np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), loaded.view(np.uint32))  # NaN payloads too
