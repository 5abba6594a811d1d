"""The native target against a device-to-device copy and torch's fused Adam, on one accelerator.

    python bench/bench_gpu.py                  # on a machine with an NVIDIA GPU: the cuda target
    python bench/bench_gpu.py --target cpu     # the same harness on the host (a dry run)
    python bench/bench_gpu.py --out FILE.md    # also write the markdown report to FILE.md

Workloads: GPT-2 small shapes (~124M params, 148 tensors) and 1000 small tensors (~10M params),
plain fp32 Adam and the full variant (global clipnorm + weight decay + AMSGrad + EMA). In one
process, interleaved round-robin, medians of the rounds:

- copy: the bandwidth reference, a device-to-device copy of one buffer as large as the variant's
  traffic (torch's `copy_` on the GPU when torch sees one, else XLA's copy); GB/s counts the bytes
  read plus the bytes written.
- adamgen per call (`opt.apply` on its own, tree layout), in the caller's jit (K steps in one
  jit's lax.fori_loop, time / K), and flat (params kept as one buffer).
- optax (jit + donation; per call and in the caller's jit as adamgen's; when installed) and
  torch.optim.Adam fused and foreach (when torch sees the device), on the same device.

GB/s of an optimizer = the bytes its variant must move (28 or 48 B/param, as bench/bench_adam.py)
over its time; "% of copy" compares that with the copy's GB/s. Before timing, adamgen's first step
is checked against the NumPy oracle (relative error of the params), so a fast wrong kernel fails.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import adamgen  # noqa: E402
from adam_peers import VARIANTS, adamgen_in_jit, optax_in_jit, optax_step, optax_transform, torch_step  # noqa: E402
from bench_adam import BYTES, make_workload  # noqa: E402

Step = Callable[[], None]


def sync_all() -> None:
    """Wait for every device (JAX's and torch's queues)."""
    for d in jax.devices():
        jnp.zeros((), device=d).block_until_ready()
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def _torch():
    try:
        import torch
        return torch
    except Exception:  # noqa: BLE001 - torch is optional
        return None


def optax_available() -> bool:
    try:
        import optax  # noqa: F401
        return True
    except ImportError:
        return False


def torch_device(target: str) -> str | None:
    torch = _torch()
    if torch is None:
        return None
    if target == "cuda":
        return "cuda" if torch.cuda.is_available() else None
    return "cpu"


# -- candidates: each returns a step function that blocks until its results are ready -------------
def copy_step(n_bytes: int, target: str) -> tuple[str, Step]:
    """A device-to-device copy moving `n_bytes` (half read, half written)."""
    n = max(1, n_bytes // 8)
    dev = torch_device(target)
    if dev == "cuda":
        torch = _torch()
        src = torch.randn(n, device=dev)
        dst = torch.empty_like(src)

        def step() -> None:
            dst.copy_(src)
            torch.cuda.synchronize()
        return "copy (torch copy_)", step
    src = jax.device_put(np.random.default_rng(0).standard_normal(n).astype(np.float32))
    copy = jax.jit(lambda x: jnp.copy(x))
    return "copy (XLA)", lambda: copy(src).block_until_ready()


def adamgen_steps(wl, variant: str, target: str, k: int) -> dict[str, Step]:
    spec = adamgen.AdamSpec(**VARIANTS[variant])
    opt = adamgen.build(spec, target)
    grads = [jnp.asarray(g) for g in wl.grads]
    steps: dict[str, Step] = {}

    box = {"p": [jnp.array(p) for p in wl.params]}
    box["s"] = opt.init(box["p"])

    def per_call() -> None:
        box["p"], box["s"] = opt.apply(grads, box["s"], box["p"])
        jax.block_until_ready(box["p"])
    steps[f"adamgen {target}, per call"] = per_call

    jitted = adamgen_in_jit(opt, k)
    box2 = {"p": [jnp.array(p) for p in wl.params]}
    box2["s"] = opt.init(box2["p"])

    def jit_call() -> None:
        box2["p"], box2["s"] = jitted(box2["p"], box2["s"], grads)
        jax.block_until_ready(box2["p"])
    steps[f"adamgen {target}, in caller's jit (/{k})"] = jit_call

    from adamgen.flat import ravel
    flat_g = ravel(grads)[0]
    box3 = {"p": ravel([jnp.array(p) for p in wl.params])[0]}
    box3["s"] = opt.init(box3["p"])

    def flat() -> None:
        box3["p"], box3["s"] = opt.apply(flat_g, box3["s"], box3["p"])
        box3["p"].block_until_ready()
    steps[f"adamgen {target}, flat"] = flat
    return steps


def optax_candidates(wl, variant: str, k: int) -> dict[str, Step]:
    """optax per call and inside the caller's jit (as adamgen's in-jit candidate, k steps a call)."""
    tx = optax_transform(variant)[0]
    fn, multi = optax_step(tx), optax_in_jit(tx, k)
    grads = [jnp.asarray(g) for g in wl.grads]

    def fresh() -> dict:
        p = [jnp.array(x) for x in wl.params]
        return {"p": p, "s": tx.init(p), "a": [jnp.array(x) for x in wl.params] if variant == "full" else None}
    box, box2 = fresh(), fresh()

    def per_call() -> None:
        box["p"], box["s"], box["a"] = jax.block_until_ready(fn(box["p"], box["s"], box["a"], grads))

    def jit_call() -> None:
        box2["p"], (box2["s"], box2["a"]) = jax.block_until_ready(multi(box2["p"], (box2["s"], box2["a"]), grads))
    return {"optax jit+donate": per_call, f"optax, in caller's jit (/{k})": jit_call}


def torch_candidate(wl, variant: str, mode: str, dev: str) -> Step:
    torch = _torch()
    params = [torch.tensor(p, device=dev) for p in wl.params]
    for p, g in zip(params, wl.grads):
        p.grad = torch.tensor(g, device=dev)
    step = torch_step(params, variant, mode)

    def run() -> None:
        step()
        if dev == "cuda":
            torch.cuda.synchronize()
    return run


# -- correctness, then timing ----------------------------------------------------------------------
def check_against_oracle(wl, variant: str, target: str) -> float:
    """Relative error of adamgen's params after one step against the NumPy oracle's."""
    spec = adamgen.AdamSpec(**VARIANTS[variant])
    opt, ref = adamgen.build(spec, target), adamgen.build(spec, "numpy")
    p = [jnp.array(x) for x in wl.params]
    p, _ = opt.apply([jnp.asarray(g) for g in wl.grads], opt.init(p), p)
    rp, _ = ref.apply(list(wl.grads), ref.init(list(wl.params)), [x.copy() for x in wl.params])
    num = sum(float(np.sum((np.asarray(a, np.float64) - b) ** 2)) for a, b in zip(p, rp))
    den = sum(float(np.sum(np.asarray(b, np.float64) ** 2)) for b in rp)
    return (num / den) ** 0.5


def time_round_robin(steps: dict[str, Step], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    for fn in steps.values():
        for _ in range(warmup):  # compiles, allocator warm-up
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            sync_all()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def device_name(target: str) -> str:
    if target == "cuda":
        d = jax.devices()[0]
        return f"{getattr(d, 'device_kind', d)} (jax {jax.__version__})"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (jax {jax.__version__})"


def run_workload(key: str, variant: str, target: str, scale: int, rounds: int, k: int) -> list[str]:
    wl = make_workload(key, scale)
    n_bytes = BYTES[variant] * wl.n_params
    err = check_against_oracle(wl, variant, target)
    if not err < 1e-5:
        raise SystemExit(f"adamgen {target} disagrees with the oracle on {key}/{variant}: rel err {err:.2e}")
    copy_name, copy = copy_step(n_bytes, target)
    steps: dict[str, Step] = {copy_name: copy}
    steps.update(adamgen_steps(wl, variant, target, k))
    if optax_available():
        steps.update(optax_candidates(wl, variant, k))
    dev = torch_device(target)
    if dev is not None:
        steps["torch fused"] = torch_candidate(wl, variant, "fused", dev)
        steps["torch foreach"] = torch_candidate(wl, variant, "foreach", dev)
    times = time_round_robin(steps, rounds)
    med = {name: float(np.median(ts)) * (1 / k if "/" in name else 1) for name, ts in times.items()}
    copy_gbs = n_bytes / med[copy_name] / 1e9
    torch_ms = med.get("torch fused")
    lines = [f"\n### {wl.title}, {variant} ({BYTES[variant]} B/param; adamgen vs oracle rel err {err:.1e})\n",
             "| candidate | ms/step | GB/s | % of copy | torch fused / this |", "|---|---|---|---|---|"]
    for name, t in med.items():
        gbs = n_bytes / t / 1e9
        vs_torch = f"{torch_ms / t:.2f}" if torch_ms else "-"
        lines.append(f"| {name} | {t * 1e3:.3f} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% | {vs_torch} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--workloads", nargs="+", choices=["gpt2", "small"], default=["gpt2", "small"])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--scale", type=int, default=1, help="divide the workloads' sizes by this (a smoke run)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--k", type=int, default=5, help="steps in one call of the caller's-jit candidates")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args()
    if args.target == "cuda" and not any(d.platform == "gpu" for d in jax.devices()):
        raise SystemExit(f"--target cuda needs a GPU visible to JAX (jax.devices() = {jax.devices()}); "
                         "use --target cpu for a dry run")
    lines = ["## adamgen " + args.target + " on " + device_name(args.target),
             f"\n`python bench/bench_gpu.py {' '.join(sys.argv[1:])}`; medians of {args.rounds} interleaved rounds."]
    for key in args.workloads:
        for variant in args.variants:
            new = run_workload(key, variant, args.target, args.scale, args.rounds, args.k)
            print("\n".join(new), flush=True)  # as it goes: a run cut short still shows its tables
            lines += new
    report = "\n".join(lines) + "\n"
    if args.out is not None:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(report)
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
