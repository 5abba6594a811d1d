"""Find the native compilers and build cached shared libraries from C++ and CUDA source.

Environment is read only here, at the top level of the lookup helpers (``CXX``, ``CUDA_HOME``,
``XDG_CACHE_HOME``, ``ADAMGEN_CACHE_DIR``); everything below takes explicit arguments.

Cache layout: ``<cache_dir>/<sha256>.so`` where the key covers the source text, the full
command-line flags, the compiler's version string and the bytes of the XLA FFI headers. Outputs are written to a temporary file in
the same directory and moved into place with ``os.replace``, so a concurrent or failed build
never leaves a torn library behind.

Host kernels that include the XLA FFI API compile against a precompiled header of it
(``<cache_dir>/pch-<sha256>/``, see ``_ffi_pch``): parsing ffi.h is a third of such a compile.
"""
from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import jax.ffi

# Host: -ffp-contract=off keeps a*b+c as two rounded ops (bit-exact against the NumPy oracle; an
# explicit fmaf() in the body still gives a fused op). -fno-math-errno lets sqrtf vectorize
# without changing any value. No -ffast-math: it would reassociate.
HOST_FLAGS: tuple[str, ...] = (
    "-O3", "-march=native", "-fopenmp-simd", "-pthread", "-shared", "-fPIC", "-std=c++17",
    "-ffp-contract=off", "-fno-math-errno",
)
# CUDA: SASS for sm_80 and sm_90, PTX for compute_90 (JIT forward compatibility).
# --fmad=false for the same reason as -ffp-contract=off on the host.
CUDA_GENCODE: tuple[str, ...] = (
    "-gencode", "arch=compute_80,code=sm_80",
    "-gencode", "arch=compute_90,code=sm_90",
    "-gencode", "arch=compute_90,code=compute_90",
)
CUDA_FLAGS: tuple[str, ...] = (
    "-O3", "-std=c++17", "--fmad=false", "-shared", "-Xcompiler", "-fPIC", *CUDA_GENCODE,
    # jaxlib's ffi headers trip nvcc's "missing return" / "always_inline ignored" warnings.
    "-diag-suppress", "940,2473", "-Xcompiler", "-Wno-return-type",
)
# The PyPI `nvidia-cuda-nvcc` 13.x wheel ships the nvcc driver under nvidia/cu13/bin (its deps
# nvidia-cuda-runtime, nvidia-cuda-crt and nvidia-nvvm bring the headers and cicc); the older
# `nvidia-cuda-nvcc-cu12` wheel ships only ptxas (nvidia/cuda_nvcc/bin), not nvcc.
INSTALL_HINT_CUDA = (
    "install the CUDA compiler with `pip install adamgen[cuda]` (PyPI nvidia-cuda-nvcc>=13), "
    "or install the CUDA toolkit and set CUDA_HOME"
)


class ToolchainError(RuntimeError):
    """A compiler is missing or a compile failed."""


@dataclass(frozen=True)
class Compiler:
    kind: str  # "host" or "cuda"
    path: Path
    version: str


def default_cache_dir() -> Path:
    """``$ADAMGEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/adamgen``, else ``~/.cache/adamgen``."""
    explicit = os.environ.get("ADAMGEN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "adamgen"


def _first_line_version(path: Path) -> str:
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=True)
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    if not lines:
        raise ToolchainError(f"{path} --version printed nothing")
    # g++ puts the version on the first line, nvcc on the last ("Build cuda_13.0.r13.0/...").
    return " | ".join(lines[:1] + lines[-2:]) if len(lines) > 2 else " | ".join(lines)


@functools.cache
def find_host_compiler() -> Compiler:
    """g++ from ``$CXX`` or PATH."""
    name = os.environ.get("CXX") or "g++"
    found = shutil.which(name)
    if found is None:
        raise ToolchainError(f"host C++ compiler {name!r} not found on PATH; install g++ "
                             "(e.g. `apt-get install g++`) or set CXX")
    path = Path(found)
    return Compiler("host", path, _first_line_version(path))


def _wheel_nvcc_candidates() -> list[Path]:
    """nvcc shipped by the PyPI ``nvidia-cuda-nvcc*`` wheels, in any site-packages."""
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path}
    layouts = ("nvidia/cuda_nvcc/bin/nvcc", "nvidia/cu13/bin/nvcc", "nvidia/cu12/bin/nvcc")
    return [Path(root) / rel for root in sorted(r for r in roots if r) for rel in layouts]


@functools.cache
def find_cuda_compiler() -> Compiler:
    """nvcc from ``$CUDA_HOME/bin``, PATH, then the ``nvidia-cuda-nvcc`` wheel."""
    candidates: list[Path] = []
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        candidates.append(Path(cuda_home) / "bin" / "nvcc")
    on_path = shutil.which("nvcc")
    if on_path:
        candidates.append(Path(on_path))
    candidates.extend(_wheel_nvcc_candidates())
    too_old = []
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            version = _first_line_version(path)
            if nvcc_release(version) >= MIN_NVCC:
                return Compiler("cuda", path, version)
            too_old.append(f"{path} ({version})")
    if too_old:
        raise ToolchainError(f"nvcc {'.'.join(map(str, MIN_NVCC))} or newer is needed (kernel arguments "
                             f"over 4 KiB), found only {too_old}; {INSTALL_HINT_CUDA}")
    raise ToolchainError(f"nvcc not found (looked in CUDA_HOME/bin, PATH, site-packages "
                         f"nvidia/*/bin); {INSTALL_HINT_CUDA}")


# CUDA 12.1 raised the kernel-argument limit to 32764 bytes, which the launch tables use.
MIN_NVCC = (12, 1)


def nvcc_release(version: str) -> tuple[int, int]:
    """(major, minor) from nvcc's version text ("... release 13.0, V13.0.88 | Build ..."); (0, 0)
    when it names none."""
    m = re.search(r"release (\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def compiler_version(kind: str) -> str:
    """Version string of the ``"host"`` or ``"cuda"`` compiler."""
    if kind == "host":
        return find_host_compiler().version
    if kind == "cuda":
        return find_cuda_compiler().version
    raise ValueError(f"unknown compiler kind {kind!r}; allowed: 'host', 'cuda'")


def numbered(source: str) -> str:
    return "\n".join(f"{i:4d} | {line}" for i, line in enumerate(source.splitlines(), 1))


def cache_key(source: str, flags: tuple[str, ...], version: str) -> str:
    h = hashlib.sha256()
    for part in (source, "\0".join(flags), version):
        h.update(part.encode())
        h.update(b"\x00\x01")
    return h.hexdigest()


def _build(compiler: Compiler, source: str, suffix: str, flags: tuple[str, ...],
           out_ext: str, cache_dir: Path | None, use_pch: bool = False) -> Path:
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    # The FFI headers' bytes are part of the key: a jaxlib upgraded in place (same include path)
    # must not reuse libraries built against the old ones.
    key = cache_key(source, flags, compiler.version + "\0" + ffi_headers_digest(jax.ffi.include_dir()))
    target = cache_dir / f"{key}{out_ext}"
    if target.exists():
        return target
    # The precompiled header changes how fast the source compiles, never what it compiles to, so
    # it is not part of the library's key.
    header, pending = _ffi_pch_or_none(compiler, flags, cache_dir) if use_pch else (None, None)
    try:
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
            src = Path(tmp) / f"kernel{suffix}"
            src.write_text(source)
            tmp_out = Path(tmp) / f"out{out_ext}"
            cmd = [str(compiler.path), *flags, str(src), "-o", str(tmp_out)]
            if header is None:
                _run_compiler(cmd, source)
            else:
                with_pch = [str(compiler.path), *flags, "-include", str(header), str(src), "-o", str(tmp_out)]
                _compile_with_pch(with_pch, cmd, source, header)
            os.replace(tmp_out, target)
    finally:
        if pending is not None:  # a first build waits for the header it started: no work left behind
            concurrent.futures.wait([pending])  # (its failures only warn: see _build_pch)
    return target


# -- the precompiled XLA FFI header (host) ---------------------------------------------------
# Every host kernel includes ffi.h (templates/host/*.cc.j2); with it precompiled, g++ parses none
# of it again: a kernel compiles in 0.66-0.78x the time (~2 s instead of ~3 s on a 2-core VM,
# bench/bench_compile.py); what is left is mostly instantiating the FFI binding's templates.
# The header holds ffi.h alone, so a source builds with it exactly when it builds without it
# (ffi.h itself is included either way), and it is used only where nothing but comments and
# system #includes come before the source's own FFI include (no macro of the source's could
# have reached ffi.h). The source's `#include` of ffi.h then finds its guard set.
FFI_INCLUDE = '#include "xla/ffi/api/ffi.h"'
PCH_TEXT = FFI_INCLUDE + "\n"
PCH_NAME = "adamgen_ffi.h"
_PCH_PREFIX_LINE = re.compile(r"^\s*(//.*|#include\s*<[^>]*>\s*(//.*)?)?$")
STALE_PCH_TMP_S = 3600  # a .pch-* build directory this old is a killed build's: removed


def pch_applies(source: str) -> bool:
    """Does ``source`` include ffi.h with only comments and system #includes before it?"""
    at = source.find(FFI_INCLUDE)
    return at >= 0 and all(_PCH_PREFIX_LINE.match(line) for line in source[:at].splitlines())


class _PchBuilds:
    """This process' header builds: one worker thread, one build per header directory (a failed
    one is not retried). Made anew in a forked child, which inherits neither the worker nor any
    build in flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[str, concurrent.futures.Future] = {}
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="adamgen-pch")


_pch_builds = _PchBuilds()


def _reset_pch_builds() -> None:
    global _pch_builds
    _pch_builds = _PchBuilds()


os.register_at_fork(after_in_child=_reset_pch_builds)


@functools.cache
def ffi_headers_digest(include_dir: Path | str) -> str:
    """sha256 over the XLA FFI API headers' names and bytes: g++ does not check that the headers
    a precompiled header was made from are unchanged, so the header's key must."""
    h = hashlib.sha256()
    for path in sorted((Path(include_dir) / "xla" / "ffi" / "api").glob("*.h")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def pch_flags(flags: tuple[str, ...]) -> tuple[str, ...]:
    """The kernel's flags minus linking: g++ uses a precompiled header only where the flags that
    shape code (-O, -march, -std, -f...) are the ones it was made with."""
    return tuple(f for f in flags if f != "-shared")


def _compile_with_pch(with_pch: list[str], without: list[str], source: str, header: Path) -> None:
    """Run with_pch; should it fail, without (g++ already passes over a .gch it cannot use; this
    also covers one that breaks it), so a bad header in the cache never stops a build."""
    try:
        _run_compiler(with_pch, source)
    except ToolchainError:
        _run_compiler(without, source)  # a real error in the source fails here too, and is raised
        warnings.warn(f"adamgen: the precompiled header {header}.gch broke a compile that works "
                      "without it; delete that directory", RuntimeWarning, stacklevel=3)


def _ffi_pch_or_none(compiler: Compiler, flags: tuple[str, ...], cache_dir: Path
                     ) -> tuple[Path | None, concurrent.futures.Future | None]:
    """_ffi_pch, or (None, None) where it cannot work (e.g. at interpreter shutdown, when no new
    thread may start): the kernel then compiles as it always could, without the header."""
    try:
        return _ffi_pch(compiler, flags, cache_dir)
    except (OSError, RuntimeError):
        return None, None


def _ffi_pch(compiler: Compiler, flags: tuple[str, ...], cache_dir: Path
             ) -> tuple[Path | None, concurrent.futures.Future | None]:
    """(header to -include, or None; the build of it this call started or joined, or None).
    When none is cached yet, the header is built beside the kernel that asked for it, which
    compiles without it and then waits for it (a first build takes the longer of the two)."""
    key = cache_key(PCH_TEXT, pch_flags(flags), compiler.version + "\0" + ffi_headers_digest(jax.ffi.include_dir()))
    final = cache_dir / f"pch-{key}"
    if (final / f"{PCH_NAME}.gch").is_file():
        return final / PCH_NAME, None
    builds = _pch_builds
    with builds.lock:
        pending = builds.pending.get(str(final))
        if pending is None:
            pending = builds.pending[str(final)] = builds.pool.submit(_build_pch, compiler, pch_flags(flags), final)
    return None, pending


def _build_pch(compiler: Compiler, flags: tuple[str, ...], final: Path) -> None:
    """Make final/{PCH_NAME}.gch: built in a temporary directory, then renamed into place whole.
    A failure only warns: kernels compile without the header, as before."""
    for stale in final.parent.glob(".pch-*"):
        try:
            if time.time() - stale.stat().st_mtime > STALE_PCH_TMP_S:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass  # another process removed or renamed it
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".pch-"))
    try:
        (tmp / PCH_NAME).write_text(PCH_TEXT)
        _run_compiler([str(compiler.path), *flags, "-x", "c++-header", str(tmp / PCH_NAME),
                       "-o", str(tmp / f"{PCH_NAME}.gch")], PCH_TEXT)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / f"{PCH_NAME}.gch").is_file():  # not another process' finished one
                raise
    except (OSError, ToolchainError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        warnings.warn(f"adamgen: no precompiled XLA FFI header ({first}); host kernels compile without it",
                      RuntimeWarning, stacklevel=2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_compiler(cmd: list[str], source: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        return proc.stderr
    raise ToolchainError(
        f"compile failed (exit {proc.returncode}): {' '.join(cmd)}\n"
        f"--- source ---\n{numbered(source)}\n--- compiler stderr ---\n{proc.stderr}")


def host_flags(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return (*HOST_FLAGS, f"-I{jax.ffi.include_dir()}", *extra)


def cuda_flags(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return (*CUDA_FLAGS, f"-I{jax.ffi.include_dir()}", *extra)


def compile_host(source: str, flags: tuple[str, ...] = (), *,
                 cache_dir: Path | None = None, precompiled_header: bool = True) -> Path:
    """Compile C++ ``source`` to a shared library with g++; ``flags`` are appended. A source that
    includes the XLA FFI API with no extra flags compiles against its precompiled header (unless
    precompiled_header is False: same library, for timing the difference)."""
    compiler = find_host_compiler()
    use_pch = precompiled_header and not flags and pch_applies(source) and is_gcc(compiler)
    return _build(compiler, source, ".cc", host_flags(tuple(flags)), ".so", cache_dir, use_pch)


def is_gcc(compiler: Compiler) -> bool:
    """GCC's precompiled headers are what _ffi_pch makes (clang's differ): other compilers parse.
    GCC's --version says "This is free software" whatever the driver is called (g++, c++)."""
    version = compiler.version.lower()
    return "this is free software" in version and "clang" not in version


def compile_cuda(source: str, flags: tuple[str, ...] = (), *,
                 cache_dir: Path | None = None) -> Path:
    """Compile CUDA ``source`` to a shared library holding sm_80/sm_90 SASS and PTX."""
    return _build(find_cuda_compiler(), source, ".cu", cuda_flags(tuple(flags)), ".so", cache_dir)


def compiler_for(platform: str):
    """compile_host for ``"cpu"``, compile_cuda for ``"cuda"``."""
    if platform not in ("cpu", "cuda"):
        raise ValueError(f"platform must be 'cpu' or 'cuda', got {platform!r}")
    return compile_host if platform == "cpu" else compile_cuda


def compile_all(sources: list[str], platform: str) -> list[Path]:
    """Compile several kernel sources for ``platform`` ("cpu": g++, "cuda": nvcc) at once, one
    compiler process per core: a build's kernels (the update and a reduction, per dtype) are
    independent, and each compile is seconds of header parsing and optimisation."""
    compile_fn = compiler_for(platform)
    if len(sources) <= 1:
        return [compile_fn(src) for src in sources]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(sources), os.cpu_count() or 1)) as pool:
        return list(pool.map(compile_fn, sources))


def ptxas_report(source: str, flags: tuple[str, ...] = ()) -> str:
    """``-Xptxas -v`` output (registers, spills, per arch); device code only (``-fatbin``)."""
    compiler = find_cuda_compiler()
    with tempfile.TemporaryDirectory(prefix="adamgen-ptxas-") as tmp:
        src = Path(tmp) / "kernel.cu"
        src.write_text(source)
        cmd = [str(compiler.path), "-O3", "-std=c++17", "--fmad=false", *CUDA_GENCODE,
               "-diag-suppress", "940,2473", f"-I{jax.ffi.include_dir()}", "-Xptxas", "-v",
               "-fatbin", *flags, str(src), "-o", str(Path(tmp) / "kernel.fatbin")]
        return _run_compiler(cmd, source)
