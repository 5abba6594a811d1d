"""The optimizer step called on its own vs inside the caller's jit, on a 1000-tensor tree.

    python bench/bench_injit.py [--tensors 1000] [--params 10000000] [--k 20] [--variant full] [--targets cpu]
                                [--unrolled]

Called on its own, every apply crosses the JAX call boundary with ~2000 arrays in (params,
grads, a few slot slabs) and ~1000 out; each output array costs JAX several microseconds on this
CPU before any math runs. Inside the caller's jitted train step (how a training loop runs it)
that cost is paid once per train step. This runs, interleaved and in one process: the C floor on
the same bytes, adamgen cpu and jax targets per call, the same inside a jit that runs K steps in
a lax.fori_loop (time / K), optax per call and inside the same kind of jit, torch.optim.Adam fused
and foreach (when torch is installed), and the call boundary alone (a jit over the same arrays
that does no work). The in-jit rows still carry 1/K of that boundary: K = 20 (the default) leaves
~0.6 ms of it in a step, K = 5 ~2.9 ms.
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import adamgen  # noqa: E402
from adam_peers import (LR, VARIANTS, adamgen_in_jit, floor_lib, optax_in_jit, optax_step, optax_transform,  # noqa: E402
                        torch_available, torch_step)


def unrolled(opt, k: int, p, s, g):
    """k steps written out one after the other (the in_jit loop's alternative form)."""
    for _ in range(k):
        p, s = opt.apply(g, s, p)
    return p, s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tensors", type=int, default=1000)
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--k", type=int, default=20,
                    help="steps in one call of the in-jit candidates; a step still holds 1/K of the call boundary")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--variant", choices=list(VARIANTS), default="plain",
                    help="plain Adam (28 B/param) or the full variant (48 B/param, two-pass floor)")
    ap.add_argument("--targets", nargs="+", choices=["cpu", "jax"], default=["cpu", "jax"])
    ap.add_argument("--unrolled", action="store_true",
                    help="also time adamgen in a jit of the K steps unrolled (no while loop)")
    args = ap.parse_args()
    full = args.variant == "full"
    bytes_per_param = 48 if full else 28
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 18, args.tensors).astype(float)
    sizes = np.maximum(1, (sizes * args.params / sizes.sum()).astype(int))
    n = int(sizes.sum())
    host = [rng.standard_normal(int(s)).astype(np.float32) for s in sizes]
    grads = [jax.device_put((rng.standard_normal(int(s)) * 0.1).astype(np.float32)) for s in sizes]

    # C floor: the same bytes in flat in-place loops (plain: one pass, 28 B/param; full: a norm
    # pass over the grads, then the update pass, 48 B/param)
    lib = floor_lib()
    fp = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
    flat = [np.concatenate(host), np.concatenate([np.asarray(g) for g in grads])]
    flat += [np.zeros(n, np.float32) for _ in range(4 if full else 2)]
    ptrs = [fp(a) for a in flat]

    def floor_step():
        if not full:
            lib.floor_adam_step(*ptrs, n, LR)
            return
        norm = float(np.sqrt(lib.sum_squares(ptrs[1], n)))
        lib.full_adam_step(*ptrs, n, LR, LR * 0.01, min(1.0, 1.0 / max(norm, 1e-12)))

    cands = {"C floor": floor_step}
    for target in args.targets:
        opt = adamgen.build(adamgen.AdamSpec(**VARIANTS[args.variant]), target)
        box = {"p": [jax.device_put(h.copy()) for h in host]}
        box["s"] = opt.init(box["p"])

        def per_call(opt=opt, box=box):
            box["p"], box["s"] = opt.apply(grads, box["s"], box["p"])
            jax.block_until_ready(box["p"])

        per_call()
        cands[f"adamgen {target}, per call"] = per_call
        forms = {"": adamgen_in_jit(opt, args.k)}
        if args.unrolled:
            forms[", unrolled"] = jax.jit(functools.partial(unrolled, opt, args.k), donate_argnums=(0, 1))
        for form, jitted in forms.items():
            box2 = {"p": [jax.device_put(h.copy()) for h in host]}
            box2["s"] = opt.init(box2["p"])
            t0 = time.perf_counter()
            box2["p"], box2["s"] = jax.block_until_ready(jitted(box2["p"], box2["s"], grads))
            print(f"adamgen {target}{form}: compile + first call of {args.k} steps in one jit "
                  f"{time.perf_counter() - t0:.1f} s")

            def jit_call(box2=box2, jitted=jitted):
                box2["p"], box2["s"] = jax.block_until_ready(jitted(box2["p"], box2["s"], grads))
            cands[f"adamgen {target}, in caller's jit{form} (/{args.k})"] = jit_call

    tx = optax_transform(args.variant)[0]  # the EMA of the full variant is left out here
    obox = {"p": [jax.device_put(h.copy()) for h in host]}
    obox["s"] = tx.init(obox["p"])

    ostep = optax_step(tx)
    t0 = time.perf_counter()
    obox["p"], obox["s"], _ = ostep(obox["p"], obox["s"], None, grads)
    jax.block_until_ready(obox["p"])
    print(f"optax: first step (compile) {time.perf_counter() - t0:.1f} s")

    def optax_call():
        obox["p"], obox["s"], _ = ostep(obox["p"], obox["s"], None, grads)
        jax.block_until_ready(obox["p"])
    cands["optax jit+donate, per call" + (" (no EMA: moves 40 of the 48 B/param)" if full else "")] = optax_call

    ojit = optax_in_jit(tx, args.k)
    jbox = {"p": [jax.device_put(h.copy()) for h in host]}
    jbox["s"] = (tx.init(jbox["p"]), None)
    t0 = time.perf_counter()
    jbox["p"], jbox["s"] = jax.block_until_ready(ojit(jbox["p"], jbox["s"], grads))
    print(f"optax: compile + first call of {args.k} steps in one jit {time.perf_counter() - t0:.1f} s")

    def optax_jit_call():
        jbox["p"], jbox["s"] = jax.block_until_ready(ojit(jbox["p"], jbox["s"], grads))
    cands[f"optax, in caller's jit (/{args.k})"] = optax_jit_call

    # torch.optim.Adam fused and foreach on the same tree (CPU tensors sharing the host arrays'
    # values), when torch imports: the peer whose fused kernel the issue sets the bar against.
    if torch_available() is None:
        import torch
        for mode in ("fused", "foreach"):
            tparams = [torch.from_numpy(h.copy()) for h in host]
            for tp, g in zip(tparams, grads):
                tp.grad = torch.from_numpy(np.asarray(g).copy())
            cands[f"torch {mode}"] = torch_step(tparams, args.variant, mode)
            cands[f"torch {mode}"]()
    else:
        print(f"torch: not measured ({torch_available()})")

    # JAX's own cost of the call boundary: a jit that takes the same arrays as adamgen's packed
    # step (params donated, grads, two slabs donated) and returns params and slabs without
    # touching them. No per-call step can be faster than this plus the floor.
    ibox = {"p": [jax.device_put(h.copy()) for h in host],
            "s": [jax.device_put(np.zeros(n, np.float32)) for _ in range(4 if full else 2)]}
    ident = jax.jit(lambda p, g, s: (p, s), donate_argnums=(0, 2))

    def dispatch_only():
        ibox["p"], ibox["s"] = ident(ibox["p"], grads, ibox["s"])
        jax.block_until_ready(ibox["p"])
    dispatch_only()
    cands["JAX call boundary alone (same arrays, no work)"] = dispatch_only

    times = {k: [] for k in cands}
    order = list(cands)
    for r in range(args.rounds):
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            cands[k]()
            dt = time.perf_counter() - t0
            times[k].append(dt / (args.k if "in caller's jit" in k else 1))
    floor = float(np.median(times["C floor"]))
    print(f"\n{args.tensors} tensors, {n:,} params, fp32 {args.variant} Adam, {bytes_per_param} B/param; "
          f"medians of {args.rounds} interleaved rounds\n")
    print("| candidate | ms/step | GB/s | x floor |\n|---|---|---|---|")
    for k in cands:
        med = float(np.median(times[k]))
        print(f"| {k} | {med * 1e3:.2f} | {bytes_per_param * n / med / 1e9:.1f} | {med / floor:.2f} |")


if __name__ == "__main__":
    main()
