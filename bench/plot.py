"""Plots of a bench/bench_adam.py run: `python bench/plot.py bench/results/<run>.json`.

Writes, next to RESULTS.md (bench_adam.py draws them itself at the end of a run, next to its --out):
  bench/plot_time.png       ms/step per workload and candidate (log scale), plain and full
  bench/plot_bandwidth.png  achieved GB/s per candidate and workload, the C floor drawn as a bar
One colour per candidate in both.
matplotlib is a plotting-only dependency (the `bench` extra: `pip install -e '.[bench]'`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BENCH = Path(__file__).resolve().parent


def _label(rec: dict) -> str:
    suffix = {"flat": " (flat)", "jit": " (in jit)"}.get(rec["layout"], "")
    return rec["name"] + ("" if rec["name"] == "C floor" else suffix)


def _colors(run: dict) -> dict[str, object]:
    """One fixed colour per candidate label across both plots and both variants (the C floor
    black), so a candidate reads the same everywhere."""
    labels = list(dict.fromkeys(_label(r) for w in run["workloads"] for r in w["records"]
                                if r["status"] == "ok" and r["name"] != "C floor"))
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {"C floor": "black", **{lbl: cmap(i % cmap.N) for i, lbl in enumerate(labels)}}


def _tick(w: dict) -> str:
    """A workload's axis label: its key and its size in words."""
    return f"{w['key']}\n{w['n_params'] / 1e6:.1f}M params, {w['n_tensors']} tensor{'s' if w['n_tensors'] > 1 else ''}"


def _records(run: dict, variant: str):
    for w in run["workloads"]:
        recs = [r for r in w["records"] if r["variant"] == variant and r["status"] == "ok"]
        yield w, recs


def plot_time(run: dict, out: Path) -> None:
    colors = _colors(run)
    fig, axes = plt.subplots(1, 2, figsize=(15, 6), sharey=False)
    for ax, variant in zip(axes, ("plain", "full")):
        rows = []
        for w, recs in _records(run, variant):
            for r in recs:
                rows.append((w["key"], _label(r), r["median_ms"]))
        workloads = list(dict.fromkeys(k for k, _, _ in rows))
        ticks = {w["key"]: _tick(w) for w in run["workloads"]}
        labels = list(dict.fromkeys(lbl for _, lbl, _ in rows))
        width = 0.8 / max(len(labels), 1)
        for j, lbl in enumerate(labels):
            xs, ys = [], []
            for i, wk in enumerate(workloads):
                vals = [ms for k, l2, ms in rows if k == wk and l2 == lbl]
                if vals:
                    xs.append(i + j * width)
                    ys.append(min(vals))
            ax.bar(xs, ys, width, label=lbl, color=colors[lbl])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))], [ticks[k] for k in workloads])
        ax.set_yscale("log")
        ax.set_ylabel("ms per optimizer step (median, lower is better)")
        ax.set_title(f"{variant} Adam" if variant == "plain" else "full: amsgrad + wd + global clip + EMA")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"Adam step time on {run['machine']['cpu']} ({run['machine']['cores']} cores), {run['date']}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def plot_bandwidth(run: dict, out: Path) -> None:
    """Achieved GB/s per workload: one column of points per workload, each candidate at its own
    offset and colour, the C floor of that workload (same run) as a black bar across the column."""
    colors = _colors(run)
    fig, axes = plt.subplots(1, 2, figsize=(16, 6))
    for ax, variant in zip(axes, ("plain", "full")):
        bpp = run["bytes_per_param"][variant]
        groups = list(_records(run, variant))
        labels = list(dict.fromkeys(_label(r) for _, recs in groups for r in recs if r["name"] != "C floor"))
        step = 0.7 / max(len(labels), 1)
        for i, (w, recs) in enumerate(groups):
            floor = [r["median_ms"] for r in recs if r["name"] == "C floor"]
            if floor:
                gbs = bpp * w["n_params"] / (min(floor) * 1e-3) / 1e9
                ax.hlines(gbs, i - 0.4, i + 0.4, colors="black", linewidth=3,
                          label="C floor (same run)" if i == 0 else None)
            for r in recs:
                if r["name"] == "C floor":
                    continue
                j = labels.index(_label(r))
                gbs = bpp * w["n_params"] / (r["median_ms"] * 1e-3) / 1e9
                ax.scatter(i - 0.35 + (j + 0.5) * step, gbs, color=colors[_label(r)], s=40,
                           label=_label(r) if _label(r) not in ax.get_legend_handles_labels()[1] else None)
        ax.set_xticks(range(len(groups)), [_tick(w) for w, _ in groups])
        ax.set_xlim(-0.5, len(groups) - 0.5)
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"GB/s at {bpp} B/param (higher is better)")
        ax.set_title(f"{variant}: achieved bandwidth" if variant == "plain"
                     else "full (amsgrad + wd + global clip + EMA): achieved bandwidth")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"Adam step bandwidth on {run['machine']['cpu']} ({run['machine']['cores']} cores), {run['date']}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def plot_all(run: dict, folder: Path) -> list[Path]:
    """Both plots of `run` into `folder` (bench_adam.py: next to its --out)."""
    paths = [folder / "plot_time.png", folder / "plot_bandwidth.png"]
    plot_time(run, paths[0])
    plot_bandwidth(run, paths[1])
    return paths


def main(path: str) -> None:
    print(*plot_all(json.loads(Path(path).read_text()), BENCH))


if __name__ == "__main__":
    main(sys.argv[1])
