"""Plain fp32 Adam: the FFI multi-tensor kernel against the C bandwidth floor, in one process.

    python bench/bench_floor.py [--repeats 30]

Builds bench/floor.c as a shared library (same flags as its header comment) and calls its loop
through ctypes, interleaved with the jitted, donated FFI step, so both see the same machine state.
Prints ms/step (median), GB/s at 28 B/param, and the ratio FFI / floor.
"""
from __future__ import annotations

import argparse
import ctypes
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from adamgen import ffi

FLOOR_C = Path(__file__).parent / "floor.c"
BYTES_PER_PARAM = 28


def build_floor() -> ctypes.CDLL:
    out = Path(tempfile.mkdtemp(prefix="adamgen-floor-")) / "floor.so"
    subprocess.run(["gcc", "-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared",
                    "-fPIC", str(FLOOR_C), "-o", str(out), "-lm"], check=True)
    lib = ctypes.CDLL(str(out))
    fp = ctypes.POINTER(ctypes.c_float)
    lib.floor_adam_step.argtypes = [fp, fp, fp, fp, ctypes.c_int64, ctypes.c_float]
    return lib


def floor_timer(lib: ctypes.CDLL, n: int):
    arrays = [np.full(n, 1.0, np.float32), np.full(n, 0.01, np.float32),
              np.zeros(n, np.float32), np.zeros(n, np.float32)]
    ptrs = [a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for a in arrays]

    def once() -> float:
        t0 = time.perf_counter()
        lib.floor_adam_step(*ptrs, n, 1e-3)
        return time.perf_counter() - t0
    return once


def ffi_timer(kernel: ffi.Kernel, sizes: list[int], steps: int = 1):
    """One jitted, donated call running ``steps`` updates; returns seconds per update.

    steps=1 includes JAX's per-call dispatch of 4T arrays; steps>1 (a fori_loop inside the
    executable) shows the cost of the update inside a larger jitted train step."""
    def update(scalars, p, g, m, v):
        def body(_, carry):
            p1, m1, v1 = ffi.call(kernel, scalars, [carry[0], g, carry[1], carry[2]])
            return p1, m1, v1
        if steps == 1:
            return body(0, (p, m, v))
        return jax.lax.fori_loop(0, steps, body, (p, m, v))
    step = jax.jit(update, donate_argnums=(1, 3, 4))
    state = {
        "p": [jnp.full((s,), 1.0, jnp.float32) for s in sizes],
        "g": [jnp.full((s,), 0.01, jnp.float32) for s in sizes],
        "m": [jnp.zeros((s,), jnp.float32) for s in sizes],
        "v": [jnp.zeros((s,), jnp.float32) for s in sizes],
    }
    scalars = jnp.array([1e-3, 1e-3], jnp.float32)

    def once() -> float:
        t0 = time.perf_counter()
        p, m, v = step(scalars, state["p"], state["g"], state["m"], state["v"])
        jax.block_until_ready((p, m, v))
        dt = time.perf_counter() - t0
        state.update(p=p, m=m, v=v)
        return dt / steps
    once()  # compile
    return once


def measure(name: str, sizes: list[int], lib: ctypes.CDLL, kernel: ffi.Kernel,
            repeats: int) -> None:
    n = sum(sizes)
    timers = {"floor": floor_timer(lib, n), "ffi": ffi_timer(kernel, sizes),
              "ffi-x10": ffi_timer(kernel, sizes, steps=10)}
    times: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(repeats):
        for key, once in timers.items():
            times[key].append(once())
    med = {k: float(np.median(v)) for k, v in times.items()}
    for key, t in med.items():
        print(f"{name:26s} {key:8s} {t * 1e3:8.3f} ms/step {BYTES_PER_PARAM * n / t / 1e9:6.2f} GB/s"
              f"  {t / med['floor']:.3f}x floor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    lib = build_floor()
    kernel = ffi.build(ffi.plain_adam_context(), "cpu")
    measure("16.8M params, 1 tensor", [16_777_216], lib, kernel, args.repeats)
    measure("10M params, 1000 tensors", [10_000] * 1000, lib, kernel, args.repeats)


if __name__ == "__main__":
    main()
