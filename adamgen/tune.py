"""Auto-tuning of the native kernels' knobs, with a persistent cache.

A choice is a frozen `TuneConfig`; it is applied to a target's `Capabilities` and recorded in
the artifact. Tuning times every candidate on scratch arrays (never the caller's state) at
representative sizes and keeps the fastest. The cache (a JSON file in the user cache dir, or
an explicit path) is keyed by everything that changes the answer: the hardware fingerprint,
compiler and library versions, the kernel source of the default config, the dtype and the size
bucket. A corrupt cache is ignored with a warning and rewritten. Without a device for the
target the documented defaults are used and marked "untuned".
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from adamgen import hostcpu, toolchain
from adamgen.backends.cpp import CAPABILITIES, Capabilities
from adamgen.ffi import STORAGE


@dataclass(frozen=True)
class TuneConfig:
    """The knobs a search may set; anything left None keeps the target's default."""

    chunk_elems: int | None = None
    tensors_per_call: int | None = None
    block_threads: int | None = None
    threads: int | None = None
    unroll: int | None = None
    vector_bytes: int | None = None
    blocks_per_sm: int | None = None
    hw_half: int | None = None

    def knobs(self) -> dict[str, int]:
        """The knobs this config sets (what the manifest and the cache record)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def apply(self, caps: Capabilities) -> Capabilities:
        return replace(caps, **self.knobs())


# The values tried per knob, the target's default first. The search is coordinate descent from
# the defaults: one knob at a time, in this order, each given the best values found so far for
# the knobs before it (8 timings on cpu instead of the 54 of the full product). Streaming
# (non-temporal) stores are not a knob: every array Adam writes it has just read, so its lines
# are already in cache and a streaming store saves no read-for-ownership; measured on the Adam
# pattern they were 6-25% slower (bench/streaming_stores.c, bench/RESULTS.md).
SEARCH: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {
    "cpu": (("chunk_elems", (65536, 16384, 262144)), ("tensors_per_call", (32, 16, 64)),
            ("unroll", (1, 2, 4)), ("threads", (0, 1))),
    # cuda: chunk size, threads per block, vector width, elements per thread (vectors in flight
    # per thread), grid size (a block per chunk, or a persistent grid of k blocks per SM), tensors
    # per call, and for half-precision params the conversions (bit-level form or cvt instructions;
    # a float32 kernel builds the same kernel both ways, so that costs it no timing).
    "cuda": (("chunk_elems", (65536, 16384, 262144)), ("block_threads", (256, 128, 512)),
             ("vector_bytes", (16, 8)), ("unroll", (1, 2, 4)), ("blocks_per_sm", (0, 4, 16)),
             ("tensors_per_call", (256, 64, 512)), ("hw_half", (0, 1))),
}
# Representative workloads: (number of tensors, elements each).
WORKLOADS = {"small": [(64, 4096)], "large": [(1, 1 << 21), (128, 16384)]}


@dataclass(frozen=True)
class TuneResult:
    config: TuneConfig
    status: str                       # "tuned", "cached", "untuned"
    key: str
    timings_ms: tuple[tuple[str, float], ...] = ()
    reason: str = ""

    def record(self) -> dict:
        return {"status": self.status, "config": self.config.knobs(), "key": self.key,
                "timings_ms": dict(self.timings_ms), "reason": self.reason}


def fingerprint(target: str) -> dict:
    """What identifies the hardware: CPU model and ISA flags, or GPU name / capability / SMs."""
    if target == "cuda":
        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if not gpus:
            return {"gpu": None}
        d = gpus[0]
        return {"gpu": d.device_kind, "compute_capability": getattr(d, "compute_capability", None),
                "sm_count": getattr(d, "core_count", None)}
    flags = hashlib.sha256(hostcpu.cpuinfo_flags().encode()).hexdigest()[:12]
    return {"cpu": hostcpu.cpu_model(), "isa_flags": flags, "cores": os.cpu_count()}


def size_bucket(n_params: int) -> str:
    return "small" if n_params < (1 << 20) else "large"


def cache_key(target: str, dtype: str, bucket: str, source_hash: str) -> str:
    kind = "host" if target == "cpu" else "cuda"
    parts = {"fingerprint": fingerprint(target), "compiler": toolchain.compiler_version(kind),
             "jax": jax.__version__, "target": target, "dtype": dtype, "bucket": bucket, "source": source_hash}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def default_cache_file() -> Path:
    return toolchain.default_cache_dir() / "tune.json"


def _read_cache(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (ValueError, OSError) as exc:
        warnings.warn(f"adamgen tune: ignoring corrupt cache {path} ({exc}); it will be rewritten")
        return {}


def _write_cache(path: Path, data: dict) -> None:
    """Write the cache through a temp file; a cache that cannot be written costs the next run a
    search, never this run's result (a warning says so)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tune.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        warnings.warn(f"adamgen tune: cannot write the cache {path} ({exc}); the result is used but not kept")


def _cached_result(cache: dict, key: str, target: str, path: Path) -> TuneResult | None:
    """The cache's entry for `key` as a result, or None (with a warning) when the entry is not
    one this version wrote: unknown or invalid knobs, missing fields, wrong types."""
    if key not in cache:
        return None
    entry = cache[key]
    try:
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise ValueError("not an object with a 'config' object")
        knobs = entry["config"]
        unknown = set(knobs) - set(TuneConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown knobs {sorted(unknown)}")
        if any(not isinstance(v, int) or isinstance(v, bool) for v in knobs.values()):
            raise ValueError(f"knob values must be ints, got {knobs}")
        config = TuneConfig(**knobs)
        config.apply(CAPABILITIES[target])  # the capabilities' own checks (positive sizes, ...)
        timings = entry.get("timings_ms", {})
        if not isinstance(timings, dict) or any(not isinstance(v, (int, float)) for v in timings.values()):
            raise ValueError("'timings_ms' must map configs to numbers")
        reason = entry.get("reason", "")
        if not isinstance(reason, str):
            raise ValueError("'reason' must be a string")
    except ValueError as exc:
        warnings.warn(f"adamgen tune: ignoring the invalid cache entry {key} in {path} ({exc}); tuning again")
        return None
    return TuneResult(config, "cached", key, tuple(timings.items()), reason)


class Progress:
    """A tqdm progress bar on stderr while tuning when it is a terminal; silent otherwise."""

    def __init__(self, total: int, label: str, stream=None) -> None:
        from tqdm import tqdm

        self.stream = stream or sys.stderr
        self.active = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        # the stream's own terminal size; 80x24 where it reports none (tqdm would draw nothing)
        size = os.terminal_size((80, 24))
        if self.active:
            try:
                found = os.get_terminal_size(self.stream.fileno())
            except (AttributeError, OSError, ValueError):
                found = size
            if found.columns > 0 and found.lines > 0:
                size = found
        self._bar = tqdm(total=total, desc=label, file=self.stream, disable=not self.active,
                         unit="config", leave=True, ncols=size.columns, nrows=size.lines)

    def step(self, note: str = "") -> None:
        self.done += 1
        if note:
            self._bar.set_postfix_str(note, refresh=False)
        self._bar.update(1)
        if self.done >= self._bar.total:
            self.close()

    def close(self) -> None:
        self._bar.close()


def _precompile(spec, target: str, dtype: str, configs: list[TuneConfig]) -> None:
    """Compile the kernels of several candidates at once (one compiler per core) so that timing
    them one by one finds every library in the compiler cache."""
    from adamgen.backends.native import kernel_for, native_kernel_names
    from adamgen.compiler import compile_spec

    module = compile_spec(spec, dtype).kernels
    caps = CAPABILITIES[target]
    sources = {kernel_for(module, dtype, config.apply(caps), name).source
               for config in configs for name in native_kernel_names(module)}
    toolchain.compile_all(sorted(sources), caps.platform)


def _time_candidate(spec, target: str, dtype: str, caps: Capabilities, workloads, repeats: int) -> float:
    """Median ms per step over the workloads, on scratch arrays owned by this function."""
    from adamgen.backends.native import JAX_PLATFORM_OF, native_optimizer

    opt = native_optimizer(spec, target, caps)
    device = jax.devices(JAX_PLATFORM_OF[caps.platform])[0]  # not JAX's default: cpu tuning on a GPU host
    rng = np.random.default_rng(0)
    np_dtype = STORAGE[dtype][2]
    total = 0.0
    for count, size in workloads:
        params = [jax.device_put(rng.standard_normal(size).astype(np_dtype), device) for _ in range(count)]
        grads = [jax.device_put((rng.standard_normal(size) * 0.1).astype(np_dtype), device) for _ in range(count)]
        state = opt.init(params)
        params, state = opt.apply(grads, state, params)  # compile + warm up
        jax.block_until_ready(params)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            params, state = opt.apply(grads, state, params)
            jax.block_until_ready(params)
            times.append(time.perf_counter() - t0)
        total += float(np.median(times)) * 1e3
    return total


# Knobs that change nothing a kernel runs when its element loop is the host's explicit vectors
# (templates/host/vector.h, a fixed 8 lanes): the unroll then reaches only the < 8-element tail.
VECTOR_LOOP_IDLE = ("unroll",)


def search_axes(target: str, vector_loop: bool = False) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The knobs searched for a kernel on `target` (and their values); `vector_loop`: the kernel
    runs the host's explicit vector loop here."""
    idle = VECTOR_LOOP_IDLE if vector_loop else ()
    return tuple((knob, values) for knob, values in SEARCH[target] if knob not in idle)


def search_size(target: str, vector_loop: bool = False) -> int:
    """How many configs the coordinate descent times (each knob's default value is shared)."""
    return 1 + sum(len(values) - 1 for _, values in search_axes(target, vector_loop))


def coordinate_descent(axes, measure: Callable[[TuneConfig], float],
                       prepare: Callable[[list[TuneConfig]], None] | None = None) -> TuneConfig:
    """Best config found by setting one knob at a time, each to its fastest value given the
    knobs already set. The first value of every axis is the target's default. `prepare` sees
    each axis' candidates before any is measured (to compile them side by side)."""
    best = TuneConfig(**{knob: values[0] for knob, values in axes})
    for knob, values in axes:
        candidates = [replace(best, **{knob: v}) for v in values]
        if prepare is not None:
            prepare(candidates)
        best = min(candidates, key=measure)
    return best


def tune(spec, target: str, dtype: str = "f32", n_params: int = 1 << 22, *, cache_file: Path | str | None = None,
         repeats: int = 7, candidates: list[TuneConfig] | None = None,
         timer: Callable | None = None) -> TuneResult:
    """The fastest TuneConfig for `spec` on this machine's `target` (cached)."""
    if target not in CAPABILITIES:
        reason = ("the jax target has no kernel knobs: it runs per tensor, since packing a tree inside the jit "
                  "measured 1.1-1.8x slower per step (bench/bench_jax_layout.py); keep params flat with "
                  "adamgen.flat for the flat step")
        return TuneResult(TuneConfig(), "untuned", "", reason=reason)
    if target == "cuda" and fingerprint("cuda")["gpu"] is None:
        return TuneResult(TuneConfig(), "untuned", "", reason="no GPU visible to JAX: documented defaults")
    from adamgen.backends.native import kernel_for
    from adamgen.compiler import compile_spec

    module = compile_spec(spec, dtype).kernels
    default_kernel = kernel_for(module, dtype, CAPABILITIES[target])
    source_hash = hashlib.sha256(default_kernel.source.encode()).hexdigest()
    vector_loop = default_kernel.ctx.vector_body and hostcpu.host_vector_loop(toolchain.find_host_compiler().path)
    bucket = size_bucket(n_params)
    key = cache_key(target, dtype, bucket, source_hash)
    cache_file = Path(cache_file) if cache_file is not None else default_cache_file()
    cache = _read_cache(cache_file)
    hit = _cached_result(cache, key, target, cache_file)
    if hit is not None:
        return hit
    # The real timer compiles each axis' candidates side by side first; a timer passed in (tests)
    # compiles nothing.
    prepare = None
    if timer is None:
        timer = _time_candidate
        prepare = lambda configs: _precompile(spec, target, dtype, configs)  # noqa: E731
    measured: dict[TuneConfig, float] = {}
    by_kernel: dict[Capabilities, float] = {}  # configs that build the same kernel share a timing
    itemsize = STORAGE[dtype][2].itemsize

    def measure(config: TuneConfig) -> float:
        if config not in measured:
            caps = config.apply(CAPABILITIES[target])
            effective = caps.effective(itemsize)
            if effective not in by_kernel:
                by_kernel[effective] = timer(spec, target, dtype, caps, WORKLOADS[bucket], repeats)
            measured[config] = by_kernel[effective]
            progress.step(f"{measured[config]:.2f} ms")
        return measured[config]

    total = len(set(candidates)) if candidates else search_size(target, vector_loop)
    progress = Progress(total, f"adamgen tune {target}")
    try:
        if candidates:  # an explicit list: time every one
            if prepare is not None:
                prepare(list(candidates))
            best = min(candidates, key=measure)
        else:
            best = coordinate_descent(search_axes(target, vector_loop), measure, prepare)
    finally:
        progress.close()
    timings = tuple((json.dumps(c.knobs(), sort_keys=True), ms) for c, ms in measured.items())
    idle = [knob for knob, _ in SEARCH[target] if knob not in dict(search_axes(target, vector_loop))]
    reason = (f"not searched: {', '.join(idle)} (the {dtype} kernel runs the host's 8-lane vector loop here, "
              "which the knob does not reach)" if idle and not candidates else "")
    result = TuneResult(best, "tuned", key, timings, reason)
    cache[key] = {"config": result.config.knobs(), "timings_ms": dict(timings), "reason": reason}
    _write_cache(cache_file, cache)
    return result
