"""What `-march=native` means on this machine, as the host compiler resolves it.

A host kernel is compiled with `-march=native`: the same flags give other instructions on
another CPU, so a library built on one machine can stop with an illegal instruction on the next.
The compiler cache (a home directory shared by a cluster's machines) and an artifact's shipped
libraries are therefore keyed by the resolved target: the `-m` options (`-march=znver3 -mavx2
-mno-avx512f ...`) that g++ passes to its compiler proper, or clang's `-target-cpu` and
`-target-feature`s, asked of the compiler once per process.
"""
from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from pathlib import Path


def _target_options(verbose: str) -> list[str]:
    """The target options on the compiler proper's command line in `<compiler> -v` output."""
    for line in verbose.splitlines():
        words = [w.strip("\"") for w in line.split()]  # clang quotes every word
        if not words or not any(w.endswith(("cc1plus", "cc1")) or w == "-cc1" for w in words):
            continue
        kept = [w for prev, w in zip([""] + words, words)
                if w.startswith("-m") or prev in ("-target-cpu", "-target-feature")]
        if kept:
            return kept
    return []


@functools.cache
def native_isa(compiler: Path) -> str:
    """16 hex chars naming what `-march=native` selects for `compiler` here. When the compiler
    does not say, the CPU's own flags from /proc/cpuinfo stand in (a coarser key, never a wrong
    one: the same flags mean the same instructions)."""
    try:
        proc = subprocess.run([str(compiler), "-march=native", "-x", "c++", "-E", "-v", "-"], input="",
                              capture_output=True, text=True, timeout=60)
        options = _target_options(proc.stderr)
    except (OSError, subprocess.SubprocessError):
        options = []
    if not options:
        options = [cpuinfo_flags()]
    return hashlib.sha256(" ".join(options).encode()).hexdigest()[:16]


CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(keys: tuple[str, ...], path: Path = CPUINFO) -> str | None:
    """The first value in `path` (/proc/cpuinfo) whose key is one of `keys` (None: no such
    line, no file)."""
    try:
        for line in path.read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in keys:
                return value.strip()
    except OSError:
        pass
    return None


def cpuinfo_flags() -> str:
    """The CPU's ISA flags as the kernel lists them (x86 "flags", Arm "Features")."""
    return _cpuinfo_field(("flags", "Features")) or "unknown"


def cpu_model() -> str:
    """The CPU's model name, else the machine's architecture."""
    return _cpuinfo_field(("model name",)) or platform.machine()


@functools.cache
def native_macros(compiler: Path) -> frozenset[str]:
    """The macros `-march=native` predefines for `compiler` here (empty: the compiler did not
    answer)."""
    try:
        proc = subprocess.run([str(compiler), "-march=native", "-dM", "-E", "-x", "c++", "-"], input="",
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(line.split()[1] for line in proc.stdout.splitlines()
                     if line.startswith("#define ") and len(line.split()) > 1)


# What templates/host/vector_ops.h builds its 8-lane vectors on.
VECTOR_LOOP_MACROS = frozenset({"__AVX2__", "__F16C__"})


def host_vector_loop(compiler: Path) -> bool:
    """Whether a host kernel compiled by `compiler` here runs its explicit vector loop (a kernel
    rendered with one; elsewhere the scalar loop runs it all)."""
    return VECTOR_LOOP_MACROS <= native_macros(compiler)
