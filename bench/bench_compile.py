"""g++ time of the cpu target's kernels: linked with the cached FFI binding vs one translation unit.

    python bench/bench_compile.py [--repeats 3]

For plain Adam and the full variant (global clipnorm + weight decay + AMSGrad + EMA: an update
and a reduction kernel), each kernel is compiled into a fresh kernel cache, interleaved per round:
a) as one translation unit holding the kernel and the FFI binding (what every host compile was
   before the binding was split out: ffi.h's templates compiled with each kernel);
b) as the cpu target compiles it: the kernel alone, linked with the binding object already in
   the cache.
A salt comment makes every compile's source new; medians of the rounds. Also times building the
binding object once (what a machine's first host build pays on top of its kernels).
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


def one_unit(source: str) -> str:
    """The kernel with the binding appended, compiled as one translation unit (no link request)."""
    return source.replace(toolchain.LINK_HOST_FFI_BINDING, "// (one translation unit)") + toolchain.host_ffi_binding_source()


def timed_compile(source: str, cache: Path) -> float:
    t = time.perf_counter()
    toolchain.compile_host(source, cache_dir=cache)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="adamgen-compile-") as tmp:
        linked_cache = Path(tmp) / "linked"
        compiler = toolchain.find_host_compiler()
        t = time.perf_counter()
        toolchain.host_ffi_binding(compiler, toolchain.host_flags(), linked_cache)
        binding_s = time.perf_counter() - t
        rows = []
        for variant, spec in SPECS.items():
            for name, source in kernel_sources(spec).items():
                single, linked = [], []
                for k in range(args.repeats):
                    salted = f"{source}// round {k}\n"
                    single.append(timed_compile(one_unit(salted), Path(tmp) / f"one-{variant}-{name}-{k}"))
                    linked.append(timed_compile(salted, linked_cache))
                rows.append((variant, name, statistics.median(single), statistics.median(linked)))
    print(f"\n{compiler.version.split(' | ')[0]}; medians of {args.repeats} interleaved rounds\n")
    print("| variant | kernel | g++ s, one unit with the binding | g++ s, linked with the cached binding | ratio |")
    print("|---|---|---|---|---|")
    for variant, name, a, b in rows:
        print(f"| {variant} | {name} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")
    print(f"\nbuilding the binding object once: {binding_s:.2f} s")


if __name__ == "__main__":
    main()
