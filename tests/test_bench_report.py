"""The suite's report of a recorded run (bench/results/*.json): the at-a-glance table and the plots
that bench/bench_adam.py writes at the end of a run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
RUN = BENCH / "results" / "adam-20261202-231517.json"  # small and flat, plain and full


def test_the_at_a_glance_table_has_a_row_per_workload_and_variant_with_ratios_of_the_run():
    from summary import summary

    run = json.loads(RUN.read_text())
    rows = [line for line in summary(run).splitlines() if line.startswith("| small") or line.startswith("| flat")]
    assert [r.split(" | ")[1] for r in rows] == ["plain", "full", "plain", "full"]
    small_plain = next(r for r in run["workloads"][0]["records"]
                       if r["name"] == "adamgen cpu" and r["layout"] == "jit" and r["variant"] == "plain")
    assert f"{small_plain['median_ms']:.2f} (" in rows[0]


def test_the_plots_are_drawn_next_to_the_report(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the test and bench extras bring it)")
    from plot import plot_all

    paths = plot_all(json.loads(RUN.read_text()), tmp_path)
    assert [p.name for p in paths] == ["plot_time.png", "plot_bandwidth.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in paths)


def test_the_gpu_benchmark_runs_its_whole_harness_on_the_host(tmp_path):
    """bench/bench_gpu.py is what a lent GPU's few minutes go to: its dry run on the cpu target
    (every workload and variant, sizes / 1000, one round) must get through the oracle check and
    write a row per adamgen candidate, so a broken script is found here and not on the device."""
    import subprocess

    out = tmp_path / "gpu.md"
    res = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), "--target", "cpu", "--scale", "1000",
                          "--rounds", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = out.read_text()
    assert report.count("adamgen vs oracle rel err") == 4  # 2 workloads x plain, full
    assert report.count("| adamgen cpu, in caller's jit") == 4
