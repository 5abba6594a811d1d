"""The at-a-glance table of a bench/bench_adam.py run: `python bench/summary.py bench/results/<run>.json`.

One row per workload and variant: the C floor, adamgen's cpu target as a training loop runs it
(inside the caller's jit) and called on its own, and each peer in its fastest form of the run
(optax: per call or inside the jit, whichever was faster), with how many times faster adamgen in
the jit is. Each figure is a median from the suite's interleaved rounds; "x floor" divides by the
C floor timed in the same group of the same run.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

# (column, candidate name, layouts allowed: the fastest of them is shown)
ADAMGEN_JIT = ("adamgen cpu", ("jit",))
ADAMGEN_CALL = ("adamgen cpu", ("tree",))
PEERS = (("torch fused", "torch fused", ("tree",)),
         ("optax", "optax jit+donate", ("tree", "jit")),
         ("keras", "keras jit+donate", ("tree",)))


def _best(records: list[dict], name: str, layouts: tuple[str, ...]) -> dict | None:
    found = [r for r in records if r["status"] == "ok" and r["name"] == name and r["layout"] in layouts
             and math.isfinite(r["median_ms"])]
    return min(found, key=lambda r: r["median_ms"]) if found else None


def _cell(rec: dict | None, say_layout: bool = True) -> str:
    if rec is None:
        return "–"
    where = {"jit": ", in jit", "flat": ", flat"}.get(rec["layout"], "") if say_layout else ""
    return f"{rec['median_ms']:.2f} ({rec['median_ms'] / rec['floor_ms']:.2f}x{where})"


def summary(run: dict) -> str:
    head = ["workload", "variant", "C floor ms", "adamgen cpu in jit", "adamgen cpu per call"]
    head += [name for name, _, _ in PEERS] + [f"adamgen in jit faster than {name}" for name, _, _ in PEERS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for wl in run["workloads"]:
        for variant in dict.fromkeys(r["variant"] for r in wl["records"]):
            recs = [r for r in wl["records"] if r["variant"] == variant]
            ours, call = _best(recs, *ADAMGEN_JIT), _best(recs, *ADAMGEN_CALL)
            floor = next((r["median_ms"] for r in recs if r["name"] == "C floor" and r["group"] == 0), math.nan)
            peers = [_best(recs, name, layouts) for _, name, layouts in PEERS]
            speed = [f"{p['median_ms'] / ours['median_ms']:.1f}x" if p and ours else "–" for p in peers]
            tensors = f"{wl['n_tensors']} tensor{'s' if wl['n_tensors'] != 1 else ''}"
            row = [f"{wl['key']} ({wl['n_params'] / 1e6:.1f}M params, {tensors})", variant,
                   f"{floor:.2f}", _cell(ours, False), _cell(call, False)] + [_cell(p) for p in peers] + speed
            lines.append("| " + " | ".join(row) + " |")
    return ("ms per step (x the C floor of the same group; in jit = inside the caller's jitted train "
            "step, flat = params kept in one buffer):\n\n" + "\n".join(lines) + "\n")


def main(path: str) -> None:
    print(summary(json.loads(Path(path).read_text())))


if __name__ == "__main__":
    main(sys.argv[1])
