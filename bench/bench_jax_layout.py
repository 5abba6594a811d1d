"""The jax target's layout, measured: per-tensor (what it runs) vs a packed layout inside the jit.

    python bench/bench_jax_layout.py [--trees 64x4096 1000x10000] [--rounds 7]

The tuning issue asks whether the jax target should update a tree per tensor or on one flat
buffer. A user who keeps params flat (`adamgen.flat`) gets the flat step for free; for a tree the
only way the optimizer itself could go flat is to pack inside the jit: concatenate params and
grads, run the flat step, slice the params back out. This times, interleaved in one process, for
each tree: the jax target per tensor, that packed layout (the same adamgen step traced inside a
jit between the concatenations and the slices), and the flat step on buffers the user already
keeps flat (the bound). It prints compile (first call) and median ms per step.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import adamgen  # noqa: E402


def tree(spec_text: str, rng) -> tuple[list[np.ndarray], list[np.ndarray]]:
    count, size = (int(x) for x in spec_text.split("x"))
    sizes = [int(s) for s in rng.integers(size // 2, size * 3 // 2 + 1, count)]
    params = [rng.standard_normal(s).astype(np.float32) for s in sizes]
    grads = [(rng.standard_normal(s) * 0.1).astype(np.float32) for s in sizes]
    return params, grads


class Candidate:
    """One layout: `first()` compiles and runs a step, `step()` runs one more."""

    def __init__(self, name: str, opt, params, grads, kind: str) -> None:
        self.name, self.kind = name, kind
        sizes = [p.size for p in params]
        offsets = np.cumsum([0] + sizes)
        if kind == "flat":
            self.params = jax.device_put(np.concatenate(params))
            self.grads = jax.device_put(np.concatenate(grads))
        else:
            self.params = [jax.device_put(p) for p in params]
            self.grads = [jax.device_put(g) for g in grads]
        if kind == "packed":
            def step(ps, gs, state):
                flat, state = opt.apply(jnp.concatenate(gs), state, jnp.concatenate(ps))
                return [flat[offsets[i]:offsets[i + 1]] for i in range(len(sizes))], state
            self._step = jax.jit(step, donate_argnums=(0, 2))
            self.state = opt.init(jnp.zeros(int(offsets[-1]), jnp.float32))
        else:
            self._step = lambda ps, gs, state: opt.apply(gs, state, ps)
            self.state = opt.init(self.params)

    def run(self) -> float:
        t0 = time.perf_counter()
        self.params, self.state = self._step(self.params, self.grads, self.state)
        jax.block_until_ready(self.params)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", nargs="+", default=["64x4096", "1000x10000"],
                    help="COUNTxSIZE: COUNT tensors of about SIZE elements each")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__}")
    print("| tree | layout | first call (compile) s | ms/step | x per-tensor |")
    print("|---|---|---|---|---|")
    for text in args.trees:
        params, grads = tree(text, np.random.default_rng(0))
        spec = adamgen.AdamSpec(learning_rate=1e-3)
        cands = [Candidate(kind, adamgen.build(spec, "jax"), params, grads, kind)
                 for kind in ("per-tensor", "packed", "flat")]
        first = {c.name: c.run() for c in cands}
        times: dict[str, list[float]] = {c.name: [] for c in cands}
        for _ in range(args.rounds):
            for c in cands:
                times[c.name].append(c.run())
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        for c in cands:
            note = " (params kept flat by the user)" if c.kind == "flat" else ""
            print(f"| {text} | {c.name}{note} | {first[c.name]:.2f} | {med[c.name]:.2f} | "
                  f"{med[c.name] / med['per-tensor']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
