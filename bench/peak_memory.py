"""Peak memory of one benchmark candidate, measured alone in a fresh process.

bench/bench_adam.py runs its candidates interleaved in one process, where the process's RSS
high-water mark cannot be told apart per candidate. So for each candidate it starts

    python bench/peak_memory.py --workload small --variant plain --candidate "adamgen jax" \\
                                --layout flat --scale 16

which first runs the candidate on a 2-tensor workload (so imports and one-time runtime set-up are
not counted), then builds the real workload (NumPy params + grads), calls the candidate's
`prepare()` (its libraries, the grads in its format), hands freed heap back to the OS and reads
its RSS: the baseline. It then resets the kernel's RSS
high-water mark (VmHWM, by writing 5 to /proc/self/clear_refs; where that is refused, a thread
samples VmRSS every millisecond instead), runs the candidate's `init()` and `STEPS` steps, and
prints one JSON line on stdout:

    extra_mib = (VmHWM - baseline - the candidate's own copy of the params) / 2**20

i.e. what the candidate needs beyond params + grads: optimizer state, temporaries of init and of
its steps, compiled code and compile-time memory. Every candidate copies the params once in
`init()` (4 B/param; checked: keras.Variable and jnp.array copy even 64-byte-aligned arrays), and
that copy stands for the params a real training loop already has, so it is subtracted.

`measure()` is the parent's side: it runs that command with a timeout and returns the figure or
the reason there is none; `annotate()` does so for each of bench_adam's records.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
STEPS = 3  # the first step (compile), a warm-up, one more: as many as bench_adam sees before timing
MiB = 2 ** 20


# -- child side -------------------------------------------------------------------------------------
def status_kib(key: str) -> int:
    """A `VmXXX:` line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key} line (not Linux?)")


class HighWater:
    """The process's peak RSS from `reset()` on: the kernel's VmHWM where it can be reset,
    else the largest VmRSS a 1 ms sampling thread saw (may miss a peak shorter than that)."""

    def __init__(self) -> None:
        self.method = "VmHWM after clear_refs"
        self._max = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reset(self) -> None:
        try:  # Linux >= 4.0; older kernels refuse "5" with EINVAL
            Path("/proc/self/clear_refs").write_text("5")
            return
        except OSError:
            pass
        self.method = "VmRSS sampled every 1 ms"
        self._max = status_kib("VmRSS")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._max = max(self._max, status_kib("VmRSS"))

    def peak_kib(self) -> int:
        if self._thread is None:
            return status_kib("VmHWM")
        self._stop.set()
        self._thread.join()
        return max(self._max, status_kib("VmRSS"))


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Build the workload and the one candidate, measure it; the dict that main() prints."""
    import numpy as np
    import bench_adam as ba  # imports jax, numpy and the peers: all part of the baseline
    from adam_peers import Peer, Workload, make_peers

    def pick(wl: Workload) -> Peer:
        found = [p for p in make_peers(wl, args.variant, with_numpy=True)
                 if p.name == args.candidate and p.layout == args.layout]
        if not found:
            raise LookupError(f"no candidate {args.candidate!r} with layout {args.layout!r}")
        return found[0]

    # Warm up on a 2-tensor workload: imports and one-time runtime set-up are the library's,
    # not what the candidate needs for this workload.
    tiny = Workload("tiny", "tiny", ["a.w", "a.b"],
                    [np.full((4, 4), 0.02, np.float32), np.zeros(4, np.float32)],
                    [np.full((4, 4), 1e-3, np.float32), np.full(4, 1e-3, np.float32)])
    warm = pick(tiny)
    warm.prepare()
    warm.init()
    for _ in range(2):
        warm.step()
    warm.close()
    del warm, tiny
    wl = ba.make_workload(args.workload, args.scale)
    peer = pick(wl)
    peer.prepare()
    ba.release_memory()  # collect, then malloc_trim: freed heap is not part of the baseline
    base_kib = status_kib("VmRSS")
    hw = HighWater()
    hw.reset()
    t0 = time.perf_counter()
    peer.init()
    for _ in range(STEPS):
        peer.step()
    seconds = time.perf_counter() - t0
    peak_kib, after_kib = hw.peak_kib(), status_kib("VmRSS")
    params_mib = 4 * wl.n_params / MiB
    return {"workload": wl.key, "variant": args.variant, "candidate": peer.name, "layout": peer.layout,
            "n_params": wl.n_params, "steps": STEPS, "method": hw.method, "warm_up": "2 tensors",
            "baseline_mib": base_kib / 1024, "peak_mib": peak_kib / 1024,
            "params_copy_mib": params_mib,
            "extra_mib": (peak_kib - base_kib) / 1024 - params_mib,
            "retained_mib": (after_kib - base_kib) / 1024 - params_mib,
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", required=True, choices=["gpt2", "small", "flat"])
    parser.add_argument("--variant", required=True, choices=["plain", "full"])
    parser.add_argument("--candidate", required=True, help="a Peer.name, e.g. 'adamgen jax'")
    parser.add_argument("--layout", required=True, choices=["tree", "flat", "jit"])
    parser.add_argument("--scale", type=int, default=1, help="workload shrink factor (16 = --quick)")
    args = parser.parse_args()
    try:
        out = child(args)
    except Exception as exc:  # noqa: BLE001  (reported to the parent as the reason)
        print(json.dumps({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}))
        sys.exit(2)
    print(json.dumps(out))


# -- parent side ------------------------------------------------------------------------------------
@dataclass
class Peak:
    """One candidate's figure: `mib` (NaN when not measured) and, then, `reason`."""

    mib: float = math.nan
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 8 << 30


def annotate(records: list, n_params: int, scale: int, timeout_s: float,
             log: Callable[[str], None]) -> None:
    """Set `peak_mib`, `peak_reason` and `peak_detail` on each bench_adam.Record that ran (status
    "ok"), one fresh process per distinct candidate (a floor repeated in several groups is one)."""
    from adam_peers import OWNED
    seen: dict[tuple[str, str, str], Peak] = {}
    for rec in records:
        if rec.status != "ok":
            continue
        key = (rec.variant, rec.name, rec.layout)
        if key not in seen:
            # masters (params, grads) + grads in the peer's format (+ a flat copy) + what it owns
            need = 4 * n_params * (4 + OWNED[rec.variant])
            seen[key] = measure(rec.workload, rec.variant, rec.name, rec.layout, scale, timeout_s, need)
            got = seen[key]
            log(f"  peak memory {rec.name:18s} {rec.layout:4s} "
                + (f"{got.mib:9.1f} MiB over params + grads" if not got.reason else f"n/a: {got.reason}"))
        peak = seen[key]
        rec.peak_mib, rec.peak_reason, rec.peak_detail = peak.mib, peak.reason, dict(peak.detail)


def measure(workload: str, variant: str, candidate: str, layout: str, scale: int,
            timeout_s: float, need_bytes: int = 0) -> Peak:
    """Run the child for one candidate; never raises for a candidate that cannot be measured."""
    if need_bytes and mem_available() < need_bytes:
        return Peak(reason=f"not enough free memory for a fresh process (~{need_bytes / 2**30:.1f} GiB)")
    cmd = [sys.executable, str(HERE / "peak_memory.py"), "--workload", workload, "--variant", variant,
           "--candidate", candidate, "--layout", layout, "--scale", str(scale)]
    env = os.environ | {"KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return Peak(reason=f"timed out after {timeout_s:.0f} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    try:
        out = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        out = {}
    if "extra_mib" in out:
        return Peak(mib=float(out["extra_mib"]), detail=out)
    if "error" in out:
        return Peak(reason=out["error"])
    if proc.returncode < 0:
        return Peak(reason=f"child killed by signal {-proc.returncode}")
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
    return Peak(reason=f"child exited {proc.returncode}: {tail}")


if __name__ == "__main__":
    main()
