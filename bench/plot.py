"""Plots of a bench/bench_adam.py run: `python bench/plot.py bench/results/<run>.json`.

Writes, next to RESULTS.md:
  bench/plot_time.png       ms/step per workload and candidate (log scale), plain and full
  bench/plot_bandwidth.png  achieved GB/s per candidate and workload, the C floor drawn as a line
matplotlib is a plotting-only dependency (`pip install matplotlib`), not the project's.
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
    return rec["name"] + (" (flat)" if rec["layout"] == "flat" and rec["name"] != "C floor" else "")


def _records(run: dict, variant: str):
    for w in run["workloads"]:
        recs = [r for r in w["records"] if r["variant"] == variant and r["status"] == "ok"]
        yield w, recs


def plot_time(run: dict, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(15, 6), sharey=False)
    for ax, variant in zip(axes, ("plain", "full")):
        rows = []
        for w, recs in _records(run, variant):
            for r in recs:
                rows.append((w["key"], _label(r), r["median_ms"]))
        workloads = list(dict.fromkeys(k for k, _, _ in rows))
        labels = list(dict.fromkeys(lbl for _, lbl, _ in rows))
        width = 0.8 / max(len(labels), 1)
        for j, lbl in enumerate(labels):
            xs, ys = [], []
            for i, wk in enumerate(workloads):
                vals = [ms for k, l2, ms in rows if k == wk and l2 == lbl]
                if vals:
                    xs.append(i + j * width)
                    ys.append(min(vals))
            ax.bar(xs, ys, width, label=lbl, color="black" if lbl == "C floor" else None)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))], workloads)
        ax.set_yscale("log")
        ax.set_ylabel("ms per optimizer step (median, lower is better)")
        ax.set_title(f"{variant} Adam" if variant == "plain" else "full: amsgrad + wd + global clip + EMA")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"Adam step time on {run['machine']['cpu']} ({run['machine']['cores']} cores), {run['date']}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def plot_bandwidth(run: dict, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    for ax, variant in zip(axes, ("plain", "full")):
        bpp = run["bytes_per_param"][variant]
        for w, recs in _records(run, variant):
            floor = [r for r in recs if r["name"] == "C floor"]
            others = [r for r in recs if r["name"] != "C floor"]
            for r in others:
                gbs = bpp * w["n_params"] / (r["median_ms"] * 1e-3) / 1e9
                ax.scatter(w["key"], gbs, label=_label(r), s=30)
            if floor:
                gbs = bpp * w["n_params"] / (min(f["median_ms"] for f in floor) * 1e-3) / 1e9
                ax.hlines(gbs, list(dict.fromkeys(x["key"] for x, _ in _records(run, variant))).index(w["key"]) - 0.3,
                          list(dict.fromkeys(x["key"] for x, _ in _records(run, variant))).index(w["key"]) + 0.3,
                          colors="black", linewidth=3)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7)
        ax.set_ylabel(f"GB/s at {bpp} B/param (higher is better); black bar = C floor")
        ax.set_title(f"{variant}: achieved bandwidth")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(path: str) -> None:
    run = json.loads(Path(path).read_text())
    plot_time(run, BENCH / "plot_time.png")
    plot_bandwidth(run, BENCH / "plot_bandwidth.png")
    print(BENCH / "plot_time.png", BENCH / "plot_bandwidth.png")


if __name__ == "__main__":
    main(sys.argv[1])
