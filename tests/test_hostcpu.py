"""Host libraries are keyed by what -march=native selects: another CPU never runs them."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import adamgen
from adamgen import hostcpu, toolchain
from adamgen.backends.native_artifact import write_native_artifact

GCC_LINE = (" /usr/lib/gcc/x86_64-linux-gnu/12/cc1plus -E -quiet -v -imultiarch x86_64-linux-gnu - "
            "-march=znver3 -mmmx -mavx2 -mno-avx512f --param l1-cache-size=32 -mtune=znver3 -dumpbase -")
CLANG_LINE = (' "/usr/lib/llvm-16/bin/clang" "-cc1" "-triple" "x86_64-pc-linux-gnu" "-E" "-target-cpu" '
              '"znver3" "-target-feature" "+avx2" "-target-feature" "-avx512f" "-o" "-" "-x" "c++" "-"')


def test_the_target_options_are_read_from_gcc_and_clang_verbose_output():
    noise = "Using built-in specs.\nCOLLECT_GCC=g++\n"
    assert hostcpu._target_options(noise + GCC_LINE + "\n") == [
        "-march=znver3", "-mmmx", "-mavx2", "-mno-avx512f", "-mtune=znver3"]
    assert hostcpu._target_options(CLANG_LINE) == ["znver3", "+avx2", "-avx512f"]
    assert hostcpu._target_options(noise) == []


def test_cpuinfo_fields_are_read_by_key_on_x86_and_arm(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx2 f16c\n"
                   "flags_extra\t: nothing\n\nprocessor\t: 1\nflags\t\t: other\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\n")
    assert hostcpu._cpuinfo_field(("model name",), x86) == "AMD EPYC 7B13"
    assert hostcpu._cpuinfo_field(("flags", "Features"), x86) == "fpu sse2 avx2 f16c"  # the first CPU's
    assert hostcpu._cpuinfo_field(("flags", "Features"), arm) == "fp asimd sve"
    assert hostcpu._cpuinfo_field(("model name",), arm) is None
    assert hostcpu._cpuinfo_field(("flags",), tmp_path / "missing") is None


def test_this_machines_native_target_is_named():
    compiler = toolchain.find_host_compiler()
    isa = hostcpu.native_isa(compiler.path)
    assert re.fullmatch(r"[0-9a-f]{16}", isa)
    assert hostcpu.native_isa(Path("/nonexistent/g++")) != isa or not Path("/proc/cpuinfo").exists()


def test_the_cache_key_changes_with_the_native_target_only_under_march_native(tmp_path, monkeypatch):
    compiler = toolchain.find_host_compiler()
    native = ("-O3", "-march=native")
    here = toolchain._target(compiler, "int x;", native, ".so", tmp_path)
    plain = toolchain._target(compiler, "int x;", ("-O3",), ".so", tmp_path)
    monkeypatch.setattr(toolchain, "native_isa", lambda path: "another-cpu")
    assert toolchain._target(compiler, "int x;", native, ".so", tmp_path) != here
    assert toolchain._target(compiler, "int x;", ("-O3",), ".so", tmp_path) == plain


def _kernel_libs(opt) -> set[Path]:
    return {kernel.lib_path for kernels in opt._executor.kernels.values() for _, kernel in kernels.values()}


def _step(opt) -> np.ndarray:
    params = [np.linspace(-1, 1, 50, dtype=np.float32)]
    new, _ = opt.apply([np.full(50, 0.3, np.float32)], opt.init(params), [np.array(params[0])])
    return np.asarray(new[0])


@pytest.mark.parametrize("built_on", ["this cpu", "another cpu", "unrecorded"])
def test_an_artifact_runs_its_libraries_only_on_the_cpu_they_were_built_for(tmp_path, built_on):
    spec = adamgen.AdamSpec(amsgrad=True)
    out = write_native_artifact(spec, "cpu", tmp_path / "art", ("f32",))
    build = json.loads((out / "build.json").read_text())
    assert build["host_isa"] == hostcpu.native_isa(toolchain.find_host_compiler().path)
    if built_on == "another cpu":
        build["host_isa"] = "0123456789abcdef"
    if built_on == "unrecorded":
        del build["host_isa"]
    (out / "build.json").write_text(json.dumps(build))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        opt = adamgen.load(out)
        got = _step(opt)
    messages = [str(w.message) for w in seen]
    shipped = {out / "update.f32.so"}
    if built_on == "this cpu":
        assert _kernel_libs(opt) == shipped and not messages
    else:
        assert not _kernel_libs(opt) & shipped  # compiled here from the shipped source
        assert any("built for another CPU" in m for m in messages) == (built_on == "another cpu")
    np.testing.assert_array_equal(got, _step(adamgen.build(spec, target="cpu")))
