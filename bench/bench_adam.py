"""Benchmark: adamgen's Adam step against its peers and the C bandwidth floor, fp32 on CPU.

    python bench/bench_adam.py [--quick] [--workloads gpt2 small flat] [--variants plain full]
                               [--only SUBSTR ...] [--no-peak-memory] [--out bench/RESULTS.md]

Workloads: gpt2 = GPT-2-small-shaped tree (124M params, 148 tensors); small = 1000 small tensors of
mixed shapes (10M params); flat = one 2**24-param vector. `--quick` shrinks them 16x (and `small`
to 62 tensors) and the repeats, to run in about two minutes.

Per workload and variant (plain Adam; full = amsgrad + weight_decay 0.01 + global_clipnorm 1.0 +
use_ema) every candidate is initialised, takes one timed first step (jit compile included) and one
warm-up step; then the steps are timed round-robin across candidates (in a fresh random order each
round), so all of them see the same machine state, and the median is reported. Candidates that do
not fit in memory together are run in groups, each with its own C floor. Then each candidate's peak
memory is measured alone in a fresh process (bench/peak_memory.py; off with --no-peak-memory).
Writes a markdown section to --out and raw JSON to bench/results/ as each workload finishes.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import numpy as np  # noqa: E402

from adam_peers import IN_JIT_STEPS, CFloor, Peer, Workload, make_peers, torch_available  # noqa: E402
from peak_memory import annotate as measure_peak_memory, mem_available  # noqa: E402
from summary import summary  # noqa: E402

BENCH = Path(__file__).resolve().parent
BYTES = {"plain": 28, "full": 48}
ALIASES = {"a": "gpt2", "b": "small", "c": "flat"}


@dataclass(frozen=True)
class Config:
    scale: int           # workloads shrink by this factor (1 = full size)
    rounds: int          # timed round-robin rounds (most repeats a candidate gets)
    min_repeats: int     # fewest timed repeats, however slow the candidate
    peer_budget_s: float  # a candidate gets about this much timed wall time at most
    mem_fraction: float  # share of MemAvailable the candidates of one group may hold
    peak_timeout_s: float  # limit of each peak-memory subprocess; 0 = do not measure peak memory


QUICK = Config(scale=16, rounds=7, min_repeats=2, peer_budget_s=2.0, mem_fraction=0.5, peak_timeout_s=120)
FULL_RUN = Config(scale=1, rounds=15, min_repeats=2, peer_budget_s=20.0, mem_fraction=0.5,
                  peak_timeout_s=600)


# -- workloads --------------------------------------------------------------------------------------
def gpt2_shapes(scale: int) -> list[tuple[str, tuple[int, ...]]]:
    """GPT-2 small (HF names); `scale` shrinks each dim by sqrt(scale), so the params by `scale`."""
    k = math.sqrt(scale)
    d, vocab, ctx = round(768 / k), round(50257 / k), round(1024 / k)
    shapes = [("wte", (vocab, d)), ("wpe", (ctx, d))]
    for i in range(12):
        shapes += [(f"h{i}.ln_1.g", (d,)), (f"h{i}.ln_1.b", (d,)),
                   (f"h{i}.attn.c_attn.w", (d, 3 * d)), (f"h{i}.attn.c_attn.b", (3 * d,)),
                   (f"h{i}.attn.c_proj.w", (d, d)), (f"h{i}.attn.c_proj.b", (d,)),
                   (f"h{i}.ln_2.g", (d,)), (f"h{i}.ln_2.b", (d,)),
                   (f"h{i}.mlp.c_fc.w", (d, 4 * d)), (f"h{i}.mlp.c_fc.b", (4 * d,)),
                   (f"h{i}.mlp.c_proj.w", (4 * d, d)), (f"h{i}.mlp.c_proj.b", (d,))]
    return shapes + [("ln_f.g", (d,)), ("ln_f.b", (d,))]


def small_shapes(count: int, total: int, seed: int = 0) -> list[tuple[str, tuple[int, ...]]]:
    """`count` tensors of mixed ranks (bias, dense, conv, embedding-like), about `total` params."""
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(64), np.log(65536), count))
    sizes *= total / sizes.sum()
    shapes = []
    for i, s in enumerate(sizes):
        kind = i % 4
        if kind == 0:
            shape: tuple[int, ...] = (max(1, round(s)),)
        elif kind == 1:
            c = int(rng.choice([32, 64, 128, 256]))
            shape = (max(1, round(s / c)), c)
        elif kind == 2:
            co = int(rng.choice([16, 32, 64, 128]))
            shape = (3, 3, max(1, round(s / (9 * co))), co)
        else:
            shape = (max(1, round(s / 48)), 48)
        shapes.append((f"t{i:04d}", shape))
    return shapes


def make_workload(key: str, scale: int, seed: int = 0) -> Workload:
    if key == "gpt2":
        shapes = gpt2_shapes(scale)
        title = "GPT-2 small shapes"
    elif key == "small":
        shapes = small_shapes(max(1, round(1000 / scale)), 10_000_000 // scale)
        title = "small tensors, mixed shapes"
    elif key == "flat":
        shapes, title = [("w", (2 ** 24 // scale,))], "one flat vector"
    else:
        raise ValueError(f"unknown workload {key!r}")
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s, dtype=np.float32) * np.float32(0.02) for _, s in shapes]
    grads = [rng.standard_normal(s, dtype=np.float32) * np.float32(1e-3) for _, s in shapes]
    wl = Workload(key, title, [n for n, _ in shapes], params, grads)
    distinct = len({s for _, s in shapes})
    wl.title = f"{title}: {wl.n_params:,} params, {wl.n_tensors} tensors ({distinct} distinct shapes)"
    return wl


# -- measurement ------------------------------------------------------------------------------------
@dataclass
class Record:
    workload: str
    variant: str
    name: str
    layout: str
    note: str = ""
    status: str = "ok"
    reason: str = ""
    group: int = 0
    init_s: float = float("nan")
    first_s: float = float("nan")
    times_s: list[float] = field(default_factory=list)
    floor_ms: float = float("nan")  # median of the C floor timed in the same group
    busy_cores: float = float("nan")  # cores other processes kept busy just before this variant
    peak_mib: float = float("nan")  # extra peak RSS over params + grads, alone in a fresh process
    peak_reason: str = ""  # why peak_mib is missing
    peak_detail: dict = field(default_factory=dict)  # bench/peak_memory.py's raw figures

    @property
    def median_ms(self) -> float:
        return float(np.median(self.times_s)) * 1e3 if self.times_s else float("nan")


def pack_groups(wl: Workload, variant: str, peers: list[Peer], budget: int) -> list[list[Peer]]:
    """Greedy groups of candidates whose arrays fit `budget` together; each starts with a floor."""
    floor, rest = peers[0], peers[1:]
    groups, cur, used = [], [floor], floor.footprint
    for peer in rest:
        if len(cur) > 1 and used + peer.footprint > budget:
            groups.append(cur)
            fresh = CFloor(wl, variant)
            cur, used = [fresh], fresh.footprint
        cur.append(peer)
        used += peer.footprint
    return groups + [cur]


def release_memory() -> None:
    """Collect, then hand freed heap pages back to the OS (glibc keeps them otherwise, and a
    later group's memory budget, and the other processes on the machine, would lose them)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def busy_cores(interval: float = 1.0) -> float:
    """Cores kept busy by other processes over `interval` s (this one sleeps meanwhile)."""
    def sample() -> tuple[int, int]:
        vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = vals[3] + vals[4]
        return sum(vals) - idle, sum(vals)
    b0, t0 = sample()
    time.sleep(interval)
    b1, t1 = sample()
    return (os.cpu_count() or 1) * (b1 - b0) / max(t1 - t0, 1)


def wait_quiet(max_wait_s: float, threshold: float = 0.3) -> float:
    """Wait (up to max_wait_s) until other processes use < `threshold` cores: on a 2-core machine
    they preempt one thread of every 2-thread loop and skew its timing. Returns the last reading."""
    t0 = time.perf_counter()
    while (busy := busy_cores()) >= threshold and time.perf_counter() - t0 < max_wait_s:
        time.sleep(4)
    if busy >= threshold:
        log(f"  (other processes keep {busy:.1f} cores busy: timings will be noisy)")
    return busy


QUIET_S = 0.05  # before each timed step: other runtimes' spinning threads go to sleep


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_group(group: list[Peer], gi: int, cfg: Config) -> list[Record]:
    records: list[Record] = []
    live: list[tuple[Peer, Record, int]] = []
    for peer in group:
        rec = Record(peer.wl.key, peer.variant, peer.name, peer.layout, group=gi)
        try:
            rec.init_s = timed(peer.init)
            rec.first_s = timed(peer.step)
            warm_call = timed(peer.step)
        except Exception as exc:  # noqa: BLE001  (a target not built yet, a peer that fails)
            rec.status, rec.reason = "skipped", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            peer.close()
            log(f"  {peer.name:18s} {peer.layout:4s} SKIPPED  {rec.reason}")
        else:
            reps = int(np.clip(cfg.peer_budget_s / max(warm_call, 1e-6), cfg.min_repeats, cfg.rounds))
            reps = min(reps, peer.max_repeats or reps)
            live.append((peer, rec, reps))
            log(f"  {peer.name:18s} {peer.layout:4s} init {rec.init_s:7.2f} s  first {rec.first_s:7.2f} s"
                f"  warm {warm_call / peer.steps_per_call * 1e3:9.2f} ms/step  -> {reps} repeats")
        rec.note = peer.note
        records.append(rec)
    # A fresh order each round, and a moment's quiet before each step: a step right after another
    # runtime's (OpenMP for the floor and torch, XLA's pool for the JAX candidates) runs while
    # that runtime's threads still spin, which on a machine of few cores takes the step's cores
    # (measured on 2 cores: the C floor read 19 ms right after a jit, 13.6 ms after 50 ms).
    order = random.Random(gi)
    for _ in range(cfg.rounds):
        for peer, rec, reps in order.sample(live, len(live)):
            if len(rec.times_s) < reps:
                time.sleep(QUIET_S)
                rec.times_s.append(timed(peer.step) / peer.steps_per_call)
    floor_ms = next((r.median_ms for r in records if r.name == "C floor" and r.times_s), float("nan"))
    for peer, rec, _ in live:
        rec.floor_ms = floor_ms
        peer.close()
    release_memory()
    return records


def run_variant(wl: Workload, variant: str, cfg: Config, only: list[str], wait_s: float) -> list[Record]:
    peers = make_peers(wl, variant, with_numpy=True)
    if only:
        peers = [peers[0]] + [p for p in peers[1:] if any(o in f"{p.name} {p.layout}" for o in only)]
    busy = wait_quiet(wait_s)
    budget = int(mem_available() * cfg.mem_fraction)
    groups = pack_groups(wl, variant, peers, budget)
    log(f"[{wl.key} / {variant}] {len(peers)} candidates in {len(groups)} group(s), "
        f"budget {budget / 2**30:.1f} GiB, other processes busy {busy:.2f} cores")
    records = []
    for gi, group in enumerate(groups):
        records += run_group(group, gi, cfg)
    for rec in records:
        rec.busy_cores = busy
    if cfg.peak_timeout_s > 0:  # after the timing, so these processes do not disturb it
        measure_peak_memory(records, wl.n_params, cfg.scale, cfg.peak_timeout_s, log)
    return records


# -- reporting --------------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    import jax
    info = {"cpu": "?", "cores": str(os.cpu_count()), "python": platform.python_version(),
            "numpy": np.__version__, "jax": jax.__version__}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    info["memory"] = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 2**20:.1f} GiB"
    for mod in ("jaxlib", "optax", "keras", "torch"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            info[mod] = "not installed"
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()
    info["gcc"] = gcc[0] if gcc else "?"
    info["load_start"] = f"{os.getloadavg()[0]:.2f}"
    return info


def fmt(x: float, digits: int = 2) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{digits}f}"


def table(wl: Workload, records: list[Record]) -> str:
    lines = [f"### {wl.key}: {wl.title}", "",
             "| variant | candidate | layout | init s | first step s | ms/step (median) | min ms | n "
             "| GB/s | % of floor | peak MiB | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r.status != "ok":
            lines.append(f"| {r.variant} | {r.name} | {r.layout} | – | – | skipped | – | 0 | – | – "
                         f"| – | {r.reason} |")
            continue
        peak, note = fmt(r.peak_mib, 1), r.note
        if r.peak_reason:
            peak, note = "n/a", "; ".join(filter(None, [note, f"peak memory n/a: {r.peak_reason}"]))
        med = r.median_ms
        gbs = BYTES[r.variant] * wl.n_params / (med * 1e-3) / 1e9
        pct = 100 * r.floor_ms / med
        group = f" (group {r.group})" if r.group else ""
        lines.append(f"| {r.variant} | {r.name} | {r.layout} | {fmt(r.init_s)} | {fmt(r.first_s)} "
                     f"| {fmt(med)} | {fmt(min(r.times_s) * 1e3)} | {len(r.times_s)} | {fmt(gbs, 1)} "
                     f"| {fmt(pct, 0)}%{group} | {peak} | {note} |")
    busy = {r.variant: r.busy_cores for r in records}
    lines.append("\nOther processes kept busy (cores, sampled before each variant): "
                 + ", ".join(f"{v} {b:.2f}" for v, b in busy.items()) + ".")
    return "\n".join(lines) + "\n"


LEGEND = f"""\
GB/s = bytes the variant must move / median time: plain Adam 28 B/param (read p, g, m, v; write p, m,
v); full variant 48 B/param (global-norm pass re-reads g: 4; update pass reads p, g, m, v, v_hat, avg
and writes p, m, v, v_hat, avg: 44). A candidate that moves more than that (XLA's separate passes,
torch's clip writing g back) shows it as lower GB/s. % of floor = C floor median (same variant, same
group, timed interleaved) / candidate median. init = build + state creation (+ ravel for flat);
first step = first apply including jit compile (torch creates its state there; layout jit: the
first call, compile included, of the jit that runs K steps; the C floor: its first call of K steps,
as it too runs K steps a timed call, its threads kept as warm as the jit's). Layout jit = the tree, the step traced
into the caller's jitted train step (lax.fori_loop of K steps a call, time / K; K = {IN_JIT_STEPS} up to
100 tensors, tensors / 10 up to 100, see the note): JAX's call boundary, a few microseconds per
array, is then the train step's and paid once per call. Eager constructor
compiles (jnp.zeros per shape) are cached across candidates in one process, so the first jax
candidate of a workload pays them. Medians of round-robin repeats, shuffled each round; the machine
is shared and noisy (see the busy-cores line): compare ratios within one run. peak MiB = memory a
candidate needs beyond params + grads (optimizer state, temporaries, compiled code and compiling),
measured alone in a fresh process by bench/peak_memory.py: baseline RSS once its libraries are
loaded (warmed up on a 2-tensor workload) and the grads exist in its format, then the RSS high-water
mark (VmHWM, reset at the baseline) over init + 3 steps, minus the baseline and minus the
candidate's own copy of the params (4 B/param). The C floor holds only the state (m, v: 8 B/param;
full variant m, v, v_hat, EMA: 16 B/param), so its figure is the reference; at --quick sizes XLA's
compile memory dominates the jax candidates. – = not measured (--no-peak-memory).
"""


class Report:
    """Writes as it goes: a dated section in --out (header once, then one table per workload) and
    the raw numbers as JSON in bench/results/, so an interrupted run keeps what it measured."""

    def __init__(self, args: argparse.Namespace, info: dict[str, str]) -> None:
        self.now = dt.datetime.now()
        self.out = Path(args.out)
        self.command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
        mode = "quick (sizes / 16: a smoke test, data mostly in cache)" if args.quick else "full size"
        self.header = (f"## {self.now:%Y-%m-%d %H:%M} — {mode}\n\n`{self.command}`\n\n"
                       f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']}; "
                       + ", ".join(f"{k} {info[k]}" for k in ("python", "numpy", "jax", "jaxlib", "optax",
                                                              "keras", "torch"))
                       + f"; {info['gcc']}. Load average at start: {info['load_start']}.\n\n" + LEGEND + "\n")
        self.raw = {"date": self.now.isoformat(timespec="seconds"), "command": self.command,
                    "quick": args.quick, "machine": info, "bytes_per_param": BYTES, "workloads": []}
        (BENCH / "results").mkdir(exist_ok=True)
        stamp = f"{self.now:%Y%m%d-%H%M%S}{'-quick' if args.quick else ''}"
        self.json_path = BENCH / "results" / f"adam-{stamp}.json"
        self.started = False

    def add(self, wl: Workload, records: list[Record], seconds: float) -> None:
        text = table(wl, records) + f"\n({wl.key} took {seconds:.0f} s; load average after: " \
                                    f"{os.getloadavg()[0]:.2f}.)\n\n"
        print(text, flush=True)
        if not self.out.exists():
            self.out.write_text("# adamgen benchmark results\n\n"
                                "Written by `bench/bench_adam.py`; newest last.\n\n")
        with self.out.open("a") as fh:
            fh.write(("" if self.started else self.header) + text)
        self.started = True
        self.raw["workloads"].append({"key": wl.key, "title": wl.title, "n_params": wl.n_params,
                                      "n_tensors": wl.n_tensors, "seconds": seconds,
                                      "records": [asdict(r) | {"median_ms": r.median_ms}
                                                  for r in records]})
        self.json_path.write_text(json.dumps(self.raw, indent=1))
        log(f"wrote {self.out} and {self.json_path}")

    def finish(self) -> None:
        """The at-a-glance table of the whole run (bench/summary.py), after the workloads' tables."""
        if not self.raw["workloads"]:
            return
        text = "### At a glance\n\n" + summary(self.raw) + "\n"
        print(text, flush=True)
        with self.out.open("a") as fh:
            fh.write(text)
        try:
            from plot import plot_all
        except ImportError as exc:
            log(f"plots skipped: {exc.name} is not installed (pip install -e '.[bench]'); "
                f"later: python bench/plot.py {self.json_path}")
            return
        log("wrote " + " and ".join(map(str, plot_all(self.raw, self.out.parent))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes / 16, fewer repeats (~2 min)")
    parser.add_argument("--workloads", nargs="+", default=["gpt2", "small", "flat"],
                        choices=["gpt2", "small", "flat", "a", "b", "c"])
    parser.add_argument("--variants", nargs="+", default=["plain", "full"], choices=["plain", "full"])
    parser.add_argument("--only", nargs="*", default=[],
                        help="keep only candidates whose 'name layout' contains one of these (floor always)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="before each workload/variant wait up to S s for other processes to go quiet")
    parser.add_argument("--rounds", type=int, help="override the number of timed rounds")
    parser.add_argument("--no-peak-memory", action="store_true",
                        help="skip the peak-memory column (one fresh process per candidate)")
    parser.add_argument("--peak-timeout", type=float, metavar="S",
                        help="limit of each peak-memory process (default 120 s quick, 600 s full)")
    parser.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL_RUN
    if args.rounds:
        cfg = Config(**(asdict(cfg) | {"rounds": args.rounds}))
    if args.no_peak_memory or args.peak_timeout:
        cfg = Config(**(asdict(cfg) | {"peak_timeout_s": 0 if args.no_peak_memory else args.peak_timeout}))
    if (why := torch_available()) is not None:
        log(f"torch peers skipped: {why}")
    report = Report(args, machine())
    for key in dict.fromkeys(ALIASES.get(w, w) for w in args.workloads):
        t0 = time.perf_counter()
        wl = make_workload(key, cfg.scale)
        log(f"== {wl.key}: {wl.title}")
        records = [r for v in args.variants for r in run_variant(wl, v, cfg, args.only, args.wait_quiet)]
        report.add(wl, records, time.perf_counter() - t0)
        wl.release()
        release_memory()
    report.finish()


if __name__ == "__main__":
    main()
