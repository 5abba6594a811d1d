"""The native toolchain: compiler lookup, cached builds, compile errors, CUDA compile + ptxas."""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from adamgen import ffi, toolchain



def _has_nvcc() -> bool:
    try:
        toolchain.find_cuda_compiler()
    except toolchain.ToolchainError:
        return False
    return True


HAS_NVCC = _has_nvcc()
needs_nvcc = pytest.mark.skipif(not HAS_NVCC, reason="needs nvcc (pip install adamgen[cuda])")

ADD_ONE = 'extern "C" int add_one(int x) { return x + 1; }\n'


def test_host_compiler_version_is_reported():
    version = toolchain.compiler_version("host")
    assert version and ("g++" in version or "GCC" in version or "clang" in version)


def test_unknown_compiler_kind_fails():
    with pytest.raises(ValueError, match="allowed"):
        toolchain.compiler_version("fortran")


def test_compile_host_caches_by_content(tmp_path):
    lib = toolchain.compile_host(ADD_ONE, cache_dir=tmp_path)
    assert ctypes.CDLL(str(lib)).add_one(41) == 42
    mtime = lib.stat().st_mtime_ns
    assert toolchain.compile_host(ADD_ONE, cache_dir=tmp_path) == lib
    assert lib.stat().st_mtime_ns == mtime  # served from the cache, not rebuilt
    other = toolchain.compile_host(ADD_ONE, ("-O2",), cache_dir=tmp_path)
    assert other != lib  # flags are part of the key
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".build-")]
    assert not leftovers


def test_a_damaged_cache_entry_is_rebuilt_with_a_warning(tmp_path):
    lib = toolchain.compile_host(ADD_ONE + "// damaged\n", cache_dir=tmp_path)
    good = lib.read_bytes()
    lib.write_bytes(good[: len(good) // 2])  # truncated, as by a full disk or a bad copy
    with pytest.warns(RuntimeWarning, match="does not match its recorded digest"):
        again = toolchain.compile_host(ADD_ONE + "// damaged\n", cache_dir=tmp_path)
    assert again == lib and len(lib.read_bytes()) == len(good)
    assert ctypes.CDLL(str(lib)).add_one(1) == 2


def test_a_cache_entry_without_its_digest_is_rebuilt_quietly(tmp_path, recwarn):
    lib = toolchain.compile_host(ADD_ONE + "// old\n", cache_dir=tmp_path)
    digest = lib.with_name(lib.name + ".sha256")
    digest.unlink()  # a build from before digests were kept
    lib.write_bytes(b"not a library")
    assert toolchain.compile_host(ADD_ONE + "// old\n", cache_dir=tmp_path) == lib
    assert digest.is_file() and not [w for w in recwarn if "digest" in str(w.message)]
    assert ctypes.CDLL(str(lib)).add_one(2) == 3


def _build_and_report(cache_dir: str, queue) -> None:
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib = toolchain.compile_host(ADD_ONE + "// raced\n", cache_dir=Path(cache_dir))
    queue.put((str(lib), ctypes.CDLL(str(lib)).add_one(4), [str(w.message) for w in caught]))


def test_processes_building_one_entry_at_once_agree_and_warn_nothing(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_and_report, args=(str(tmp_path), queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert len({lib for lib, _, _ in results}) == 1
    assert all(value == 5 for _, value, _ in results)
    assert not [w for _, _, ws in results for w in ws if "digest" in w], results
    assert len(list(tmp_path.glob("*.so"))) == 1


def test_a_read_only_cache_serves_an_entry_without_a_digest(tmp_path, monkeypatch):
    lib = toolchain.compile_host(ADD_ONE + "// read-only\n", cache_dir=tmp_path)
    lib.with_name(lib.name + ".sha256").unlink()  # built before digests were kept
    mtime = lib.stat().st_mtime_ns
    # as for a user who cannot write the cache (chmod does not stop root, who runs CI)
    real_access = os.access
    monkeypatch.setattr(toolchain.os, "access", lambda path, mode: False if mode == os.W_OK else real_access(path, mode))
    assert toolchain.compile_host(ADD_ONE + "// read-only\n", cache_dir=tmp_path) == lib
    assert lib.stat().st_mtime_ns == mtime  # served, not rebuilt


def test_compile_all_builds_each_source_in_order(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAMGEN_CACHE_DIR", str(tmp_path))
    sources = [ADD_ONE.replace("x + 1", f"x + {k}") for k in (1, 2, 3)]
    assert all(f"x + {k}" in src for k, src in zip((1, 2, 3), sources))
    libs = toolchain.compile_all(sources, "cpu")
    assert [ctypes.CDLL(str(lib)).add_one(40) for lib in libs] == [41, 42, 43]
    assert toolchain.compile_all([], "cpu") == []
    with pytest.raises(ValueError, match="platform must be 'cpu' or 'cuda'"):
        toolchain.compile_all(sources, "tpu")


def _commands(monkeypatch) -> list[list[str]]:
    seen: list[list[str]] = []
    real = toolchain._run_compiler
    monkeypatch.setattr(toolchain, "_run_compiler", lambda cmd, src: (seen.append(cmd), real(cmd, src))[1])
    return seen


def _salted(ctx: ffi.KernelContext, salt: str) -> str:
    source = ffi.render(ctx, "cpu")
    assert toolchain.LINK_HOST_FFI_BINDING in source and '#include "xla/ffi/api/ffi.h"' not in source
    return f"{source}// {salt}\n"


def test_host_kernels_link_one_cached_ffi_binding(tmp_path, monkeypatch):
    seen = _commands(monkeypatch)
    ctx = ffi.plain_adam_context()
    libs = [toolchain.compile_host(_salted(ctx, salt), cache_dir=tmp_path) for salt in ("a", "b")]
    objects = [cmd for cmd in seen if "-c" in cmd]
    assert len(objects) == 1 and "-shared" not in objects[0]  # the binding: compiled once, as an object
    (binding,) = tmp_path.glob("*.o")
    links = [cmd for cmd in seen if "-c" not in cmd]
    assert len(links) == 2 and all(str(binding) in cmd for cmd in links)
    for lib in libs:
        handle = ctypes.CDLL(str(lib))
        assert handle[ctx.symbol]  # the FFI handler XLA is given
        for hidden in ("adamgen_host_ffi_handler", "adamgen_kernel_execute"):
            with pytest.raises(AttributeError):  # stays inside its library: no other kernel can bind to it
                handle[hidden]
    seen.clear()
    toolchain.compile_host(ADD_ONE + "// plain\n", cache_dir=tmp_path)  # no link request: no binding
    assert len(seen) == 1 and str(binding) not in seen[0]


def test_a_cached_kernel_needs_no_binding_object(tmp_path, monkeypatch):
    lib = toolchain.compile_host(_salted(ffi.plain_adam_context(), "cached"), cache_dir=tmp_path)
    for obj in tmp_path.glob("*.o"):
        obj.unlink()  # e.g. a pruned cache: the library holds the binding already
    seen = _commands(monkeypatch)
    assert toolchain.compile_host(_salted(ffi.plain_adam_context(), "cached"), cache_dir=tmp_path) == lib
    assert not seen and not list(tmp_path.glob("*.o"))


def _compile_in_child(cache_dir: str) -> None:
    signal.alarm(120)  # a child that waits on a lock no thread of its own holds dies here
    toolchain.compile_host(_salted(ffi.plain_adam_context(), "child"), cache_dir=cache_dir)


# JAX warns on any fork once its threads run; this child only compiles (no JAX in it).
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_a_child_forked_while_the_binding_builds_can_build_it(tmp_path):
    building = threading.Thread(target=toolchain.compile_host,
                                args=(_salted(ffi.plain_adam_context(), "parent"),), kwargs={"cache_dir": tmp_path / "p"})
    building.start()
    deadline = time.monotonic() + 30
    while not toolchain._binding_lock.locked() and building.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    child = multiprocessing.get_context("fork").Process(target=_compile_in_child, args=(str(tmp_path / "c"),))
    child.start()
    child.join(timeout=180)
    building.join()
    assert child.exitcode == 0, f"the forked child failed or hung (exit {child.exitcode})"
    assert list((tmp_path / "c").glob("*.o")) and list((tmp_path / "c").glob("*.so"))


def test_each_library_runs_its_own_kernel_even_loaded_globally(tmp_path):
    """Every host library holds the binding under the same (hidden) names: with one loaded
    RTLD_GLOBAL first, another library's handler must still run that other library's kernel."""
    first = ffi.plain_adam_context()
    body = tuple("x[0] = x[0] + 1.0f;" if line.startswith("x[0] =") else line for line in ffi.PLAIN_ADAM_BODY)
    second = ffi.make_context("adamgen_plus_one_f32", ffi.PLAIN_ADAM_ROLES, 2, body)
    ctypes.CDLL(str(toolchain.compile_host(ffi.render(first, "cpu"), cache_dir=tmp_path)), mode=ctypes.RTLD_GLOBAL)
    kernel = ffi.build(second, "cpu", cache_dir=tmp_path)
    p = np.arange(5, dtype=np.float32)
    zeros = np.zeros(5, np.float32)
    (new_p,), _, _ = ffi.call(kernel, np.array([0.5, 0.0], np.float32), [[p], [zeros], [zeros], [zeros]])
    np.testing.assert_array_equal(np.asarray(new_p), p + 1)


def test_library_keys_cover_the_ffi_headers(tmp_path):
    api = tmp_path / "xla" / "ffi" / "api"
    api.mkdir(parents=True)
    (api / "ffi.h").write_text("// one\n")
    before = toolchain.ffi_headers_digest(str(tmp_path))
    (api / "ffi.h").write_text("// two\n")
    toolchain.ffi_headers_digest.cache_clear()  # cached per include dir within a process
    assert toolchain.ffi_headers_digest(str(tmp_path)) != before
    assert toolchain.object_flags(("-O3", "-shared", "-fPIC", "-Wl,-Bsymbolic")) == ("-O3", "-fPIC", "-c")


def test_compile_error_shows_numbered_source_and_stderr(tmp_path):
    with pytest.raises(toolchain.ToolchainError) as info:
        toolchain.compile_host("int f() {\n  return nope;\n}\n", cache_dir=tmp_path)
    text = str(info.value)
    assert "   2 |   return nope;" in text
    assert "nope" in text.split("--- compiler stderr ---")[1]
    assert not list(tmp_path.glob("*.so"))  # a failed build leaves nothing in the cache


def test_missing_nvcc_error_names_the_fix(monkeypatch):
    toolchain.find_cuda_compiler.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(toolchain, "_wheel_nvcc_candidates", lambda: [])
    try:
        with pytest.raises(toolchain.ToolchainError, match=r"pip install adamgen\[cuda\]"):
            toolchain.find_cuda_compiler()
    finally:
        toolchain.find_cuda_compiler.cache_clear()


def test_nvcc_older_than_12_1_is_passed_over_with_a_clear_error(monkeypatch, tmp_path):
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
                    "echo 'Cuda compilation tools, release 12.0, V12.0.76'\necho 'Build cuda_12.0.r12.0/compiler.0'\n")
    fake.chmod(0o755)
    toolchain.find_cuda_compiler.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(toolchain, "_wheel_nvcc_candidates", lambda: [])
    try:
        with pytest.raises(toolchain.ToolchainError, match=r"nvcc 12\.1 or newer is needed.*release 12\.0"):
            toolchain.find_cuda_compiler()
    finally:
        toolchain.find_cuda_compiler.cache_clear()
    assert toolchain.nvcc_release("Cuda compilation tools, release 13.0, V13.0.88") == (13, 0)
    assert toolchain.nvcc_release("no version here") == (0, 0)


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAMGEN_CACHE_DIR", str(tmp_path / "x"))
    assert toolchain.default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("ADAMGEN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert toolchain.default_cache_dir() == tmp_path / "adamgen"


@needs_nvcc
def test_cuda_kernel_compiles_with_no_spills(tmp_path):
    source = ffi.render(ffi.plain_adam_context(chunk_elems=16384), "cuda")
    report = toolchain.ptxas_report(source)
    archs = re.findall(r"Compiling entry function '\w+' for '(sm_\d+)'", report)
    assert sorted(archs) == ["sm_80", "sm_90"]
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert spills and all(s == ("0", "0") for s in spills), report
    frames = re.findall(r"(\d+) bytes stack frame", report)
    assert frames and all(f == "0" for f in frames), report  # params not copied to local memory
    lib = toolchain.compile_cuda(source, cache_dir=tmp_path)
    assert lib.exists() and lib.stat().st_size > 0
    assert "nvcc" in toolchain.compiler_version("cuda").lower() or "cuda" in \
        toolchain.compiler_version("cuda").lower()


@pytest.mark.parametrize("platform", ["cpu", pytest.param("cuda", marks=needs_nvcc)])
def test_libraries_bind_their_own_symbols(platform, tmp_path):
    """-Bsymbolic on both targets: every kernel library defines the same internal names."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) not installed")
    source = 'extern "C" int same_name_everywhere() { return 7; }\n'
    lib = toolchain.compiler_for(platform)(source, cache_dir=tmp_path)
    dynamic = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "SYMBOLIC" in dynamic
