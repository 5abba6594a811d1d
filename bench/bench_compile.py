"""g++ time of the cpu target's kernels with and without the precompiled XLA FFI header.

    python bench/bench_compile.py [--repeats 3]

For plain Adam and the full variant (global clipnorm + weight decay + AMSGrad + EMA: an update
and a reduction kernel), each kernel source is compiled into an empty kernel cache (so g++ runs
every time) a) as it is and b) with the precompiled header already built, interleaved a/b per
round; medians of the rounds. A salt comment makes every compile's source new. Also times the
one-off build of the header itself (what a machine's first build pays, beside its kernels).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from adamgen import AdamSpec, toolchain
from adamgen.backends.cpp import CAPABILITIES
from adamgen.backends.native import kernel_for, native_kernel_names
from adamgen.compiler import compile_spec

SPECS = {"plain": AdamSpec(),
         "full": AdamSpec(amsgrad=True, weight_decay=0.01, global_clipnorm=1.0, use_ema=True)}


def kernel_sources(spec: AdamSpec) -> dict[str, str]:
    module = compile_spec(spec, "f32").kernels
    return {name: kernel_for(module, "f32", CAPABILITIES["cpu"], name).source for name in native_kernel_names(module)}


def timed_compile(source: str, cache: Path, use_header: bool) -> float:
    t = time.perf_counter()
    toolchain.compile_host(source, cache_dir=cache, precompiled_header=use_header)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="adamgen-compile-") as tmp:
        header_cache = Path(tmp) / "with-header"
        t = time.perf_counter()
        toolchain.compile_host(toolchain.FFI_INCLUDE + "\n// warm-up\n", cache_dir=header_cache)  # builds the header
        header_s = time.perf_counter() - t
        rows = []
        for variant, spec in SPECS.items():
            for name, source in kernel_sources(spec).items():
                plain, with_header = [], []
                for k in range(args.repeats):
                    salted = f"{source}\n// round {k}\n"
                    plain.append(timed_compile(salted, Path(tmp) / f"none-{variant}-{name}-{k}", False))
                    # the header cache keeps the header and gets a new kernel source each round
                    with_header.append(timed_compile(salted, header_cache, True))
                rows.append((variant, name, statistics.median(plain), statistics.median(with_header)))
    print(f"\n{toolchain.compiler_version('host').split(' | ')[0]}; medians of {args.repeats} interleaved rounds\n")
    print("| variant | kernel | g++ s, plain | g++ s, header precompiled | ratio |")
    print("|---|---|---|---|---|")
    for variant, name, a, b in rows:
        print(f"| {variant} | {name} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")
    print(f"\nbuilding the header once (and a trivial source beside it): {header_s:.2f} s")


if __name__ == "__main__":
    main()
