"""Size sweep: achieved bandwidth of plain fp32 Adam on one flat vector from 1e4 to 1e8 params.

    python bench/bench_sweep.py [--sizes 1e4 1e5 1e6 1e7 1e8] [--rounds 9]

Shows where per-call launch/dispatch overhead stops mattering. Per size, in one process and
interleaved: the C floor (bench/floor.c loop), adamgen cpu, adamgen jax, optax (jit + donation).
Writes bench/results/sweep-<date>.json, prints a markdown table, and draws
bench/plot_sweep.png (GB/s at 28 B/param vs size, the floor as a line).
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import adamgen  # noqa: E402
from adam_peers import LR, floor_lib  # noqa: E402


def candidates(n: int, rng) -> dict:
    p0 = rng.standard_normal(n).astype(np.float32)
    g_np = (rng.standard_normal(n) * 0.1).astype(np.float32)
    g = jax.device_put(g_np)
    lib = floor_lib()
    fn = lib.floor_adam_step
    arrays = [p0.copy(), g_np, np.zeros(n, np.float32), np.zeros(n, np.float32)]
    ptrs = [a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for a in arrays]
    out = {"C floor": lambda: fn(*ptrs, n, LR)}
    for target in ("cpu", "jax"):
        opt = adamgen.build(adamgen.AdamSpec(learning_rate=LR), target)
        box = {"p": jax.device_put(p0.copy())}
        box["s"] = opt.init(box["p"])

        def step(opt=opt, box=box):
            box["p"], box["s"] = opt.apply(g, box["s"], box["p"])
            jax.block_until_ready(box["p"])
        step()
        out[f"adamgen {target}"] = step
    import optax
    tx = optax.adam(LR)
    obox = {"p": jax.device_put(p0.copy())}
    obox["s"] = tx.init(obox["p"])

    def ostep_fn(p, s):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s
    ostep = jax.jit(ostep_fn, donate_argnums=(0, 1))

    def optax_step():
        obox["p"], obox["s"] = ostep(obox["p"], obox["s"])
        jax.block_until_ready(obox["p"])
    optax_step()
    out["optax jit+donate"] = optax_step
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e4, 1e5, 1e6, 1e7, 1e8])
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        n = int(size)
        cands = candidates(n, rng)
        reps = max(1, min(200, int(2e7 / n)))  # time several steps per sample at small sizes
        times = {k: [] for k in cands}
        order = list(cands)
        for _ in range(args.rounds):
            rng.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                for _ in range(reps):
                    cands[k]()
                times[k].append((time.perf_counter() - t0) / reps)
        for k, ts in times.items():
            med = float(np.median(ts))
            rows.append({"n": n, "candidate": k, "ms": med * 1e3, "gbs": 28 * n / med / 1e9})
        del cands
    floor = {r["n"]: r["ms"] for r in rows if r["candidate"] == "C floor"}
    print("| params | candidate | ms/step | GB/s | x floor |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:.0e} | {r['candidate']} | {r['ms']:.4f} | {r['gbs']:.1f} | {r['ms'] / floor[r['n']]:.2f} |")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (BENCH / "results").mkdir(exist_ok=True)
    (BENCH / "results" / f"sweep-{stamp}.json").write_text(json.dumps({"date": stamp, "rows": rows}, indent=1))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return
    plot(rows, BENCH / "plot_sweep.png")


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name in dict.fromkeys(r["candidate"] for r in rows):
        pts = [(r["n"], r["gbs"]) for r in rows if r["candidate"] == name]
        style = dict(color="black", linewidth=3) if name == "C floor" else dict(marker="o")
        ax.plot(*zip(*pts), label=name, **style)
    ax.set_xscale("log")
    ax.set_xlabel("params in one flat fp32 vector")
    ax.set_ylabel("GB/s at 28 B/param (higher is better)")
    ax.set_title("Plain Adam step: achieved bandwidth vs size (black: C floor, same run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
