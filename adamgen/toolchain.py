"""Find the native compilers and build cached shared libraries from C++ and CUDA source.

Environment is read only here, at the top level of the lookup helpers (``CXX``, ``CUDA_HOME``,
``XDG_CACHE_HOME``, ``ADAMGEN_CACHE_DIR``); everything below takes explicit arguments.

Cache layout: ``<cache_dir>/<sha256>.so`` where the key covers the source text, the full
command-line flags, the compiler's version string, the bytes of the XLA FFI headers and what
``-march=native`` selects on this CPU (hostcpu.py). Outputs
are written to a temporary file in the same directory and moved into place with ``os.replace``,
so a concurrent or failed build never leaves a torn library behind.

A host kernel whose source says ``// adamgen: link host_ffi_binding`` is linked with the XLA FFI
binding (templates/host/ffi_binding.cc), compiled once into ``<cache_dir>/<sha256>.o``: ffi.h's
templates were ~90% of a kernel's compile, and they are the same for every kernel.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax.ffi

from adamgen.hostcpu import native_isa

# Host: -ffp-contract=off keeps a*b+c as two rounded ops (bit-exact against the NumPy oracle; an
# explicit fmaf() in the body still gives a fused op). -fno-math-errno lets sqrtf vectorize
# without changing any value. -fno-trapping-math lets GCC compute both arms of a select (a
# one-element tensor's true division, a weight-decay exclusion) and blend them: without AVX-512
# masks it may not speculate a division, and the whole element loop ran scalar (AVX2; every
# result is the same IEEE value, no FP exception is ever unmasked). No -ffast-math: it would
# reassociate.
# -mprefer-vector-width=512: where the CPU has AVX-512, the element loop uses all of it (GCC picks
# 256 bits for most such CPUs); float16/bfloat16 steps, whose per-op rounding makes them
# compute-bound, ran 1.3-1.4x faster (bench/RESULTS.md); no effect without AVX-512. An x86
# option: other hosts (aarch64 g++ rejects it) go without.
# -Wl,-Bsymbolic: a library's calls to its own functions bind inside it. Every host kernel
# defines the same names (adamgen_kernel::execute, the binding's handler), so with one library
# loaded RTLD_GLOBAL another's handler would otherwise run the first one's kernel.
HOST_FLAGS: tuple[str, ...] = (
    "-O3", "-march=native", "-fopenmp-simd", "-pthread", "-shared", "-fPIC", "-std=c++17",
    "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
    *(("-mprefer-vector-width=512",) if platform.machine().lower() in ("x86_64", "amd64") else ()),
    "-Wl,-Bsymbolic",
)
# CUDA: SASS for sm_80 and sm_90, PTX for compute_90 (JIT forward compatibility).
# --fmad=false for the same reason as -ffp-contract=off on the host.
CUDA_GENCODE: tuple[str, ...] = (
    "-gencode", "arch=compute_80,code=sm_80",
    "-gencode", "arch=compute_90,code=sm_90",
    "-gencode", "arch=compute_90,code=compute_90",
)
CUDA_FLAGS: tuple[str, ...] = (
    "-O3", "-std=c++17", "--fmad=false", "-shared", "-Xcompiler", "-fPIC", "-Xlinker", "-Bsymbolic", *CUDA_GENCODE,
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


def _target(compiler: Compiler, source: str, flags: tuple[str, ...], out_ext: str, cache_dir: Path,
            objects: tuple[Path, ...] = ()) -> Path:
    """Where the build of ``source`` lives in the cache. The FFI headers' bytes are part of the
    key: a jaxlib upgraded in place (same include path) must not reuse libraries built against
    the old ones. Linked objects are named by their own keys, so their names stand for their
    contents (and need not exist to name the library). With -march=native, what it selects on
    this CPU is part of the key too (a cache shared by several machines)."""
    isa = native_isa(compiler.path) if "-march=native" in flags else ""
    version = "\0".join((compiler.version, ffi_headers_digest(jax.ffi.include_dir()), isa,
                         *(o.name for o in objects)))
    return cache_dir / f"{cache_key(source, flags, version)}{out_ext}"


def _build(compiler: Compiler, source: str, suffix: str, flags: tuple[str, ...],
           out_ext: str, cache_dir: Path | None, objects: tuple[Path, ...] = (),
           make_objects: Callable[[], None] | None = None) -> Path:
    """The cached build of ``source`` linked with ``objects``; on a miss, ``make_objects`` first
    (a hit needs none of them: they are inside the library). A build and its digest are read
    under a shared lock and written under an exclusive one (a file lock per entry), so two
    processes never see one's library beside the other's digest, nor compile the same entry
    twice."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = _target(compiler, source, flags, out_ext, cache_dir, objects)
    with _entry_lock(target, exclusive=False):
        state = _entry_state(target)
    if state == "ok":
        return target
    if state == "damaged":
        warnings.warn(f"adamgen: the cached build {target} does not match its recorded digest (a damaged "
                      "cache file); rebuilding it", RuntimeWarning, stacklevel=3)
    with _entry_lock(target, exclusive=True):
        if state == "missing" and _entry_state(target) == "ok":
            return target  # another process built it while this one waited
        if make_objects is not None:
            make_objects()
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
            src = Path(tmp) / f"kernel{suffix}"
            src.write_text(source)
            tmp_out = Path(tmp) / f"out{out_ext}"
            _run_compiler([str(compiler.path), *flags, str(src), *map(str, objects), "-o", str(tmp_out)], source)
            digest = Path(tmp) / "out.sha256"
            digest.write_text(_file_digest(tmp_out))
            os.replace(tmp_out, target)
            os.replace(digest, _digest_path(target))
    return target


def _digest_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry_state(target: Path) -> str:
    """"ok" (it exists and matches the digest written with it), "missing" (not built, or built
    before digests were kept: rebuilt quietly) or "damaged" (rebuilt with a warning). In a cache
    this process cannot write, a build without a digest is taken as it is."""
    digest = _digest_path(target)
    if not target.is_file():
        return "missing"
    if not digest.is_file():
        return "ok" if not os.access(target.parent, os.W_OK) else "missing"
    return "ok" if digest.read_text().strip() == _file_digest(target) else "damaged"


@contextlib.contextmanager
def _entry_lock(target: Path, exclusive: bool):
    """flock on `<entry>.lock`; none in a cache this process cannot write (nobody writes it)."""
    try:
        fd = os.open(f"{target}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


# -- the host FFI binding ---------------------------------------------------------------------
# A host kernel's source holds its element loop and the plain-data call frame (common/frame.h);
# the binding that decodes XLA's call into that frame is the same for every kernel, and
# compiling ffi.h's templates was ~90% of each kernel's g++ time. So it is compiled once per
# compiler, flags and FFI headers (an object in the cache) and linked into each library.
LINK_HOST_FFI_BINDING = "// adamgen: link host_ffi_binding"
TEMPLATE_DIR = Path(__file__).parent / "templates"
HOST_FFI_BINDING_PARTS = ("common/frame.h", "common/ffi_frame.h", "host/ffi_binding.cc")
_binding_lock = threading.Lock()


@functools.cache
def ffi_headers_digest(include_dir: Path | str) -> str:
    """sha256 over the XLA FFI API headers' names and bytes (the include path alone does not
    change when jaxlib is upgraded in place)."""
    h = hashlib.sha256()
    for path in sorted((Path(include_dir) / "xla" / "ffi" / "api").glob("*.h")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@functools.cache
def host_ffi_binding_source() -> str:
    """The binding's C++: the frame, its FFI conversions, the handler (the parts in that order).
    Read once: every host compile, cache hits included, keys its library on it."""
    return "".join((TEMPLATE_DIR / part).read_text() for part in HOST_FFI_BINDING_PARTS)


def object_flags(flags: tuple[str, ...]) -> tuple[str, ...]:
    """A library's flags for one of its objects: compile only (-c), none of the link flags."""
    return (*(f for f in flags if f != "-shared" and not f.startswith("-Wl,")), "-c")


def host_ffi_binding(compiler: Compiler, flags: tuple[str, ...], cache_dir: Path | None) -> Path:
    """The binding's object for these flags, built on first use (one build at a time in a
    process: the kernels of one compile_all wait for the same object rather than each compiling
    it; concurrent processes each build and rename into place, which is safe)."""
    with _binding_lock:
        return _build(compiler, host_ffi_binding_source(), ".cc", object_flags(flags), ".o", cache_dir)


def host_ffi_binding_path(compiler: Compiler, flags: tuple[str, ...], cache_dir: Path | None) -> Path:
    """Where host_ffi_binding puts the object (without building it)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return _target(compiler, host_ffi_binding_source(), object_flags(flags), ".o", cache_dir)


def _new_binding_lock() -> None:
    """A forked child inherits the lock as it was, possibly held by a thread it does not have."""
    global _binding_lock
    _binding_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_binding_lock)


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
                 cache_dir: Path | None = None) -> Path:
    """Compile C++ ``source`` to a shared library with g++; ``flags`` are appended. A source that
    says LINK_HOST_FFI_BINDING is linked with the (cached) host FFI binding."""
    compiler = find_host_compiler()
    all_flags = host_flags(tuple(flags))
    if LINK_HOST_FFI_BINDING not in source:
        return _build(compiler, source, ".cc", all_flags, ".so", cache_dir)
    return _build(compiler, source, ".cc", all_flags, ".so", cache_dir,
                  (host_ffi_binding_path(compiler, all_flags, cache_dir),),
                  lambda: host_ffi_binding(compiler, all_flags, cache_dir))


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
