"""Native artifacts: the rendered kernel sources and their compiled libraries beside the IR;
loading them back (the libraries when intact, else the source compiled again); the knobs an
artifact was built with, for building it again (aot.rebuild_artifact)."""
from __future__ import annotations

from pathlib import Path

from adamgen import ffi, toolchain
from adamgen.aot import sha256_hex
from adamgen.backends.cpp import CAPABILITIES, Capabilities
from adamgen.backends.native import NativeExecutor, kernel_for, native_kernel_names
from adamgen.hostcpu import native_isa
from adamgen.ir.node import Module

SOURCE_SUFFIX = {"cpu": "cc", "cuda": "cu"}


def write_native_artifact(spec, target: str, out_dir: Path, dtypes: tuple[str, ...],
                          caps: Capabilities | None = None, tune_record: dict | None = None) -> Path:
    """An artifact whose kernels are native: rendered source + compiled library per dtype.

    The libraries and the compiler that built them are recorded in build.json (machine-specific);
    the sources, IR, spec and manifest are the reproducible files that snapshots diff.
    """
    from adamgen.aot import write_artifact

    caps = caps or CAPABILITIES[target]
    compiler = toolchain.find_host_compiler() if target == "cpu" else toolchain.find_cuda_compiler()
    binaries: dict[str, bytes] = {}

    def extra_files(dtype: str, module: Module) -> dict[str, bytes]:
        natives = {name: kernel_for(module, dtype, caps, name) for name in native_kernel_names(module)}
        libs = toolchain.compile_all([native.source for native in natives.values()], caps.platform)
        files = {}
        for (name, native), lib in zip(natives.items(), libs):
            binaries[f"{name}.{dtype}.so"] = Path(lib).read_bytes()
            files[f"{name}.{dtype}.{SOURCE_SUFFIX[target]}"] = native.source.encode()
        return files

    build_info = {"compiler": {"kind": compiler.kind, "version": toolchain.compiler_version(compiler.kind),
                             "flags": list(toolchain.host_flags() if target == "cpu" else toolchain.cuda_flags())},
                "tune": tune_record or {"status": "untuned", "reason": "built without --tune: documented defaults"}}
    if target == "cpu":  # the libraries run only where -march=native selects the same instructions
        build_info["host_isa"] = native_isa(compiler.path)
    # The kernel knobs shape the source, so they are part of the reproducible manifest.
    knobs = {"capabilities": caps.record(), "templates": ffi.templates_hash()}
    return write_artifact(spec, target, out_dir, dtypes, extra_files=extra_files, build_info=build_info,
                          binaries=binaries, manifest_extra=knobs)


def _build_record(path: Path, warn: bool) -> dict:
    """build.json of an artifact ({} when absent or not JSON, with a warning if `warn`)."""
    import json

    build_file = path / "build.json"
    if not build_file.is_file():
        return {}
    try:
        return json.loads(build_file.read_text())
    except ValueError:
        if warn:
            import warnings
            warnings.warn(f"{build_file} is not valid JSON: its libraries are ignored and the kernels are "
                          "compiled from the artifact's source", stacklevel=4)
        return {}


def _caps_from_manifest(path: Path, manifest: dict) -> Capabilities:
    return CAPABILITIES[manifest["target"]].with_record(manifest.get("capabilities", {}), str(path / "manifest.json"))


def artifact_build_settings(path: Path, manifest: dict) -> tuple[Capabilities, dict | None]:
    """The kernel knobs a native artifact was built with and its tuning record (None: untuned),
    for building it again."""
    record = _build_record(path, warn=False).get("tune")
    return _caps_from_manifest(path, manifest), record if isinstance(record, dict) else None


def load_native_executor(spec, module_for, path: Path, manifest: dict) -> NativeExecutor:
    """Use the artifact's libraries when they are present and intact; else rebuild from its source."""
    target = manifest["target"]
    record = _build_record(path, warn=True)
    listed = record.get("binaries", {}) if _runs_here(path, target, record) else {}
    binaries = {}
    for name, digest in listed.items():
        lib = path / name
        if lib.is_file() and sha256_hex(lib.read_bytes()) == digest:
            binaries[name.removesuffix(".so")] = lib
    executor = NativeExecutor(spec, module_for, target, binaries, _caps_from_manifest(path, manifest))
    for dtype in manifest["dtypes"]:
        executor.module(dtype)
        for name, (native, _) in executor.kernels[dtype].items():
            shipped = (path / f"{name}.{dtype}.{SOURCE_SUFFIX[target]}").read_text()
            if shipped != native.source:
                raise ValueError(_source_mismatch(path, manifest, f"{name}.{dtype}"))
    return executor


def _runs_here(path: Path, target: str, record: dict) -> bool:
    """Whether the artifact's libraries were built for this machine. Host libraries are built for
    the CPU they were compiled on (-march=native): on another one, or with no record of which
    (an artifact from before the record), the kernels are compiled again from the shipped source."""
    if target != "cpu":
        return True  # SASS for sm_80 and sm_90 plus PTX: any GPU the cuda target runs on
    built = record.get("host_isa")
    here = native_isa(toolchain.find_host_compiler().path)
    if built is not None and built != here:
        import warnings
        warnings.warn(f"{path}: its libraries were built for another CPU (-march=native there selects other "
                      "instructions); compiling its kernels for this one from the artifact's source",
                      stacklevel=4)
    return built == here


def _source_mismatch(path: Path, manifest: dict, kernel: str) -> str:
    if manifest.get("templates") != ffi.templates_hash():
        built = manifest.get("versions", {}).get("adamgen", "an unknown version")
        return (f"{path}: {kernel} was rendered from other kernel templates (built by adamgen {built}), "
                f"which this adamgen does not run; `adamgen rebuild {path}` builds the artifact again")
    return (f"{path}: {kernel} source does not match its kernels IR (the artifact was edited); "
            f"`adamgen rebuild {path}` builds it again")
