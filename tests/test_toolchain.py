"""The native toolchain: compiler lookup, cached builds, compile errors, CUDA compile + ptxas."""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import re
import subprocess
import time
from pathlib import Path

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


def test_compile_all_builds_each_source_in_order(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAMGEN_CACHE_DIR", str(tmp_path))
    sources = [ADD_ONE.replace("x + 1", f"x + {k}") for k in (1, 2, 3)]
    assert all(f"x + {k}" in src for k, src in zip((1, 2, 3), sources))
    libs = toolchain.compile_all(sources, "cpu")
    assert [ctypes.CDLL(str(lib)).add_one(40) for lib in libs] == [41, 42, 43]
    assert toolchain.compile_all([], "cpu") == []
    with pytest.raises(ValueError, match="platform must be 'cpu' or 'cuda'"):
        toolchain.compile_all(sources, "tpu")


FFI_SOURCE = (toolchain.FFI_INCLUDE + "\n"
              'extern "C" int f32_code() { return static_cast<int>(xla::ffi::DataType::F32) + K; }\n')


def _ffi_lib(k: int, cache_dir) -> int:
    lib = toolchain.compile_host(FFI_SOURCE.replace("+ K", f"+ {k}"), cache_dir=cache_dir)
    return ctypes.CDLL(str(lib)).f32_code()


def _commands(monkeypatch) -> list[list[str]]:
    seen: list[list[str]] = []
    real = toolchain._run_compiler
    monkeypatch.setattr(toolchain, "_run_compiler", lambda cmd, src: (seen.append(cmd), real(cmd, src))[1])
    return seen


def test_ffi_kernels_compile_against_a_precompiled_header_gcc_accepts(tmp_path, monkeypatch):
    seen = _commands(monkeypatch)
    f32 = _ffi_lib(0, tmp_path)  # the first build makes the header beside the kernel, and waits for it
    assert not any("-include" in cmd for cmd in seen)
    (header_dir,) = tmp_path.glob("pch-*")
    gch = header_dir / f"{toolchain.PCH_NAME}.gch"
    assert gch.is_file() and not list(tmp_path.glob(".pch-*")) and not list(tmp_path.glob(".build-*"))
    seen.clear()
    assert _ffi_lib(1, tmp_path) == f32 + 1
    assert [cmd[cmd.index("-include") + 1] for cmd in seen] == [str(header_dir / toolchain.PCH_NAME)]
    # g++ reads the .gch (-H marks a used one with '!'): it matches the kernels' flags
    flags = toolchain.pch_flags(toolchain.host_flags())
    src = tmp_path / "probe.cc"
    src.write_text(FFI_SOURCE.replace("+ K", ""))
    proc = subprocess.run([str(toolchain.find_host_compiler().path), *flags, "-H", "-fsyntax-only",
                           "-include", str(header_dir / toolchain.PCH_NAME), str(src)],
                          capture_output=True, text=True, check=True)
    assert f"! {gch}" in proc.stderr
    seen.clear()
    toolchain.compile_host(ADD_ONE, cache_dir=tmp_path)  # no FFI include: no header
    assert seen and not any("-include" in cmd for cmd in seen)


def test_a_failing_precompiled_header_warns_and_kernels_still_build(tmp_path, monkeypatch):
    monkeypatch.setattr(toolchain, "PCH_TEXT", '#include "adamgen_no_such_header.h"\n')
    with pytest.warns(RuntimeWarning, match="no precompiled XLA FFI header"):
        code = _ffi_lib(0, tmp_path)
    with pytest.warns(RuntimeWarning, match="no precompiled XLA FFI header"):  # tried once per cache dir
        assert _ffi_lib(1, tmp_path / "other") == code + 1
    assert _ffi_lib(2, tmp_path) == code + 2  # not tried again in this process: no warning
    assert not list(tmp_path.glob("pch-*")) and not list(tmp_path.glob(".pch-*"))


def test_a_corrupt_precompiled_header_never_stops_a_build(tmp_path):
    base = _ffi_lib(0, tmp_path)
    (gch,) = tmp_path.glob(f"pch-*/{toolchain.PCH_NAME}.gch")
    gch.write_bytes(b"not a precompiled header")
    assert _ffi_lib(2, tmp_path) == base + 2
    gch.with_suffix("").write_text("#error a broken header\n")  # what g++ falls back to reading
    with pytest.warns(RuntimeWarning, match="broke a compile that works without it"):
        assert _ffi_lib(3, tmp_path) == base + 3


def test_precompiled_header_key_covers_the_ffi_headers(tmp_path):
    api = tmp_path / "xla" / "ffi" / "api"
    api.mkdir(parents=True)
    (api / "ffi.h").write_text("// one\n")
    before = toolchain.ffi_headers_digest(str(tmp_path))
    (api / "ffi.h").write_text("// two\n")
    toolchain.ffi_headers_digest.cache_clear()  # cached per include dir within a process
    assert toolchain.ffi_headers_digest(str(tmp_path)) != before
    assert toolchain.pch_flags(("-O3", "-shared", "-fPIC")) == ("-O3", "-fPIC")


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


@pytest.mark.parametrize("version, gcc", [
    ("g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | This is free software; see the source for copying "
     "conditions.  There is NO | warranty; not even for MERCHANTABILITY", True),
    ("c++ (Debian 12.2.0-14+deb12u1) 12.2.0 | This is free software; see the source | warranty", True),
    ("Debian clang version 14.0.6 | Thread model: posix | InstalledDir: /usr/bin", False),
    ("icpx (Intel(R) oneAPI DPC++/C++ Compiler) 2024.0.0", False),
])
def test_only_gcc_gets_the_precompiled_header(version, gcc):
    assert toolchain.is_gcc(toolchain.Compiler("host", toolchain.Path("/usr/bin/c++"), version)) is gcc


def test_this_g_plus_plus_is_gcc():
    if "clang" in toolchain.compiler_version("host").lower():
        pytest.skip("CXX is clang here: no precompiled header (checked by the test above)")
    assert toolchain.is_gcc(toolchain.find_host_compiler())


@pytest.mark.parametrize("prefix, applies", [
    ("// a comment\n#include <algorithm>\n#include <vector>  // why\n\n", True),
    ("", True),
    ("#define NDEBUG\n", False),                 # a macro that would have reached ffi.h
    ('#include "mine.h"\n', False),              # a local header could define one
    ("namespace a {}\n", False),
])
def test_precompiled_header_only_where_nothing_can_reach_ffi_h_first(prefix, applies):
    assert toolchain.pch_applies(prefix + toolchain.FFI_INCLUDE + "\nint f();\n") is applies
    assert not toolchain.pch_applies(ADD_ONE)
    snapshots = Path(__file__).resolve().parent.parent / "generated" / "adam_full_cpu"
    for kernel in ("update.f32.cc", "reduce1.f32.cc"):  # what the cpu target compiles gets the header
        assert toolchain.pch_applies((snapshots / kernel).read_text())


def test_a_forked_child_builds_its_own_precompiled_header(tmp_path):
    _ffi_lib(0, tmp_path / "parent")
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_ffi_lib, args=(1, tmp_path / "child"))
    child.start()
    child.join(timeout=180)
    assert child.exitcode == 0, "the child hung or failed (it inherits no pch worker thread)"
    assert list((tmp_path / "child").glob(f"pch-*/{toolchain.PCH_NAME}.gch"))


def test_no_header_build_possible_still_compiles(tmp_path, monkeypatch):
    builds = toolchain._PchBuilds()
    builds.pool.shutdown()  # as at interpreter shutdown: submit raises RuntimeError
    monkeypatch.setattr(toolchain, "_pch_builds", builds)
    assert _ffi_lib(4, tmp_path) == _ffi_lib(0, tmp_path / "other") + 4
    assert not list(tmp_path.glob("pch-*"))


def test_killed_header_builds_are_swept(tmp_path):
    old, new = tmp_path / ".pch-old", tmp_path / ".pch-new"
    old.mkdir(parents=True)
    new.mkdir()
    stamp = time.time() - toolchain.STALE_PCH_TMP_S - 60
    os.utime(old, (stamp, stamp))
    _ffi_lib(5, tmp_path)
    assert not old.exists() and new.exists()
