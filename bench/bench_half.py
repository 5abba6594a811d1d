"""Half-precision params on the cpu target: float32, float16 and bfloat16 side by side.

    python bench/bench_half.py [--params 16777216] [--rounds 7]

One tensor, plain Adam, slots in the param dtype (Keras' rule), so a float16/bfloat16 step moves
14 bytes a param, half of float32's 28. The kernels round every op's result to the param dtype as
Keras does (bit-exact), and that rounding, written out in integer ops, is what makes a
half-precision step compute-bound on a CPU. Runs, interleaved in one process: the C floor
(float32, the same loop without any rounding), adamgen cpu inside a jit of K steps for each
dtype, optax in the same kind of jit, and torch.optim.Adam(fused=True) on the same dtype (when
torch is installed), and the float16 kernel once more with its loop left to GCC's vectorizer
instead of the explicit vector loop (templates/host/vector.h). Medians of the rounds; ms per step.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

import adamgen  # noqa: E402
from adam_peers import LR, EPS, adamgen_in_jit, floor_lib, optax_in_jit, optax_transform, torch_available  # noqa: E402

K = 10
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def jax_case(run, params, grads, init) -> list:
    """[step(), state] for a jitted run(p, s, g) of K steps, warmed up once."""
    box = [jax.device_put(params), init(jax.device_put(params)), jax.device_put(grads)]
    box[0], box[1] = run(box[0], box[1], box[2])
    jax.block_until_ready(box[0])

    def step() -> None:
        box[0], box[1] = run(box[0], box[1], box[2])
        jax.block_until_ready(box[0])
    return step


def scalar_loop_optimizer(spec):
    """The cpu target with no dtype on the explicit vector loop (cpp.Capabilities.vector_dtypes)."""
    from dataclasses import replace

    from adamgen.backends.cpp import HOST
    from adamgen.backends.native import native_optimizer
    return native_optimizer(spec, "cpu", replace(HOST, vector_dtypes=()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=16_777_216)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    n = args.params
    rng = np.random.default_rng(0)
    p32 = rng.standard_normal(n).astype(np.float32)
    g32 = (rng.standard_normal(n) * 0.01).astype(np.float32)
    cases: dict[str, tuple[callable, int]] = {}  # name -> (one call, steps per call)

    lib = floor_lib()
    fp = ctypes.POINTER(ctypes.c_float)
    fl = [p32.copy(), g32.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)]
    ptrs = [a.ctypes.data_as(fp) for a in fl]
    cases["C floor (float32, no rounding)"] = (lambda: lib.floor_adam_step(*ptrs, n, ctypes.c_float(LR)), 1)

    opt = adamgen.build(adamgen.AdamSpec(learning_rate=LR, epsilon=EPS), target="cpu")
    # bfloat16 rounds beta_2 = 0.999 to 1, so Keras' (and adamgen's) bfloat16 step size is 0 and
    # the init warns; every op still runs, so the timing stands.
    warnings.filterwarnings("ignore", message="AdamSpec: beta_2=0.999 rounds to exactly 1.0 in bf16")
    tx = optax_transform("plain")[0]
    for name, dt in DTYPES.items():
        p, g = [p32.astype(dt)], [g32.astype(dt)]
        cases[f"adamgen cpu, {name}"] = (jax_case(adamgen_in_jit(opt, K), p, g, opt.init), K)
    # the float16 kernel with its loop left to the compiler's vectorizer (no host/vector.h loop)
    scalar = scalar_loop_optimizer(opt.spec)
    p, g = [p32.astype(np.float16)], [g32.astype(np.float16)]
    cases["adamgen cpu, float16, scalar loop"] = (jax_case(adamgen_in_jit(scalar, K), p, g, scalar.init), K)
    for name, dt in DTYPES.items():
        p, g = [p32.astype(dt)], [g32.astype(dt)]
        cases[f"optax in jit, {name}"] = (jax_case(optax_in_jit(tx, K), p, g, lambda q: (tx.init(q), None)), K)
    if torch_available() is None:
        import torch
        for name in DTYPES:
            tp = torch.from_numpy(p32.copy()).to(getattr(torch, name)).requires_grad_()
            tp.grad = torch.from_numpy(g32.copy()).to(getattr(torch, name))
            topt = torch.optim.Adam([tp], lr=LR, eps=EPS, fused=True)
            topt.step()
            cases[f"torch fused, {name}"] = (topt.step, 1)

    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (call, steps) in cases.items():
            # a moment's quiet first: XLA's pool threads spin a while after a jit returns, and
            # on a machine of few cores they would take the C floor's OpenMP threads' cores
            time.sleep(0.05)
            t = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - t) / steps * 1e3)
    floor = statistics.median(times["C floor (float32, no rounding)"])
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}; "
          f"one tensor of {n:,} params, plain Adam, K = {K} steps a jit, {args.rounds} interleaved rounds")
    print("| candidate | ms/step | x its floor (float32 floor x bytes/28) |\n|---|---|---|")
    for name, ts in times.items():
        half = any(k in name for k in ("float16", "bfloat16"))
        ms = statistics.median(ts)
        print(f"| {name} | {ms:.2f} | {ms / (floor / 2 if half else floor):.2f} |")


if __name__ == "__main__":
    main()
