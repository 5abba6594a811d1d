"""What the one-element tensors' exact division costs the cpu target, in one process.

    python bench/bench_one_element.py [--tensors 1000] [--params 10000000] [--dtype float32] [--k 10] [--rounds 9]

Keras divides a one-element tensor by a scalar exactly and every longer one by the reciprocal's
product (semantics §10.2), so a step with a loss scale or clipnorm takes a per-tensor flag and
its kernels compute both forms and keep one. This times that step (loss scale 100, clipnorm)
against the same step lowered with the reciprocal form for every tensor (what adamgen did
before: `_Ctx.scale(..., true_if_single=False)` at every site), each inside a jit of K steps
(a lax.fori_loop), interleaved rounds, medians.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

import adamgen  # noqa: E402
import adamgen.backends.jax as backend_jax  # noqa: E402
import adamgen.lower as lower  # noqa: E402
from adam_peers import adamgen_in_jit  # noqa: E402

SPEC = dict(learning_rate=1e-3, beta_2=0.99, loss_scale_factor=100.0, clipnorm=1.0)  # 0.999 is 1 in bfloat16


@contextlib.contextmanager
def reciprocal_for_every_tensor():
    """Lower and feed the step as if no tensor had one element."""
    scale, takes = lower._Ctx.scale, backend_jax.takes_single
    lower._Ctx.scale = lambda self, x, d, true_if_single=True: scale(self, x, d, False)
    backend_jax.takes_single = lambda spec: False
    try:
        yield
    finally:
        lower._Ctx.scale, backend_jax.takes_single = scale, takes


def prepared(params, grads, k: int, old: bool) -> list:
    """[run, params, state]: built, traced and run once (inside the patch when `old`)."""
    with reciprocal_for_every_tensor() if old else contextlib.nullcontext():
        opt = adamgen.build(adamgen.AdamSpec(**SPEC), target="cpu")
        p = [jax.device_put(x) for x in params]
        run = adamgen_in_jit(opt, k)
        p, s = run(p, opt.init(p), grads)
        jax.block_until_ready(p)
    return [run, p, s]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=1000)
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    mean = args.params // args.tensors
    sizes = rng.integers(max(1, mean // 10), 2 * mean - mean // 10, args.tensors)
    dtype = ml_dtypes.bfloat16 if args.dtype == "bfloat16" else np.dtype(args.dtype)
    params = [rng.standard_normal(int(n)).astype(dtype) for n in sizes]
    grads = [jax.device_put((rng.standard_normal(int(n)) * 0.01).astype(dtype)) for n in sizes]
    runs = {"reciprocal for every tensor": prepared(params, grads, args.k, old=True),
            "exact for one-element tensors": prepared(params, grads, args.k, old=False)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            run[1], run[2] = run[0](run[1], run[2], grads)
            jax.block_until_ready(run[1])
            times[name].append((time.perf_counter() - t) / args.k * 1e3)
    print(f"{platform.processor() or platform.machine()}, {jax.local_device_count()} CPU device(s); "
          f"{args.tensors} tensors, {int(sizes.sum()):,} {args.dtype} params, loss scale + clipnorm, "
          f"in a jit of {args.k} steps")
    print("| step | ms/step (median) | min |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {min(ts):.2f} |")


if __name__ == "__main__":
    main()
