"""Ahead-of-time artifacts: a self-describing directory per built spec and target.

    manifest.json          spec, its hash, versions, target, dtypes, every file with its sha256
    build.json             [native] compiler, flags, capabilities, compiled library hashes
    kernel.<dtype>.cc|cu   [native] the rendered kernel source; kernel.<dtype>.so its build
    spec.json              AdamSpec.to_json()
    ir.<dtype>.txt         the optimized IR
    kernels.<dtype>.txt    the fused kernels (what `load` runs; the pipeline is not re-run)
    jax.<dtype>.txt        the emitted JAX computation (jaxpr)            [target jax]
    step.<dtype>.jaxexport jax.export of the step on one flat buffer of symbolic size n
    __init__.py            `from <package> import optimizer`
The directory is written under a temporary name and renamed into place, so a failed or
concurrent build never leaves a torn artifact.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

from adamgen.compiler import compile_spec
from adamgen.dtypes import numpy_dtype
from adamgen.ir.node import Module
from adamgen.ir.parser import parse_module
from adamgen.ir.printer import print_module
from adamgen.lower import norm_dtype_for, parse_variant, scalar_inputs_for, slots_for, variant

FORMAT = 1
# The step's numbers: bumped when a change makes a built step compute other bits. An artifact
# records the version it was built with (none before 1); loading an older one warns, and
# `adamgen rebuild DIR` builds it again from its own spec, target, dtypes and knobs.
SEMANTICS = 1
SEMANTICS_CHANGES = {
    1: "the scalar part keeps Keras' arithmetic under XLA (no constant folding, no x / c rewritten as "
       "x * (1/c)), float16/bfloat16 values are rounded after every op, and one-element tensors are "
       "divided by the loss scale and clipnorm's max(n, c) exactly",
}
INIT_PY = '''"""adamgen artifact {name}: `from {pkg} import optimizer` loads it."""
from pathlib import Path as _Path

import adamgen as _adamgen

optimizer = _adamgen.load(_Path(__file__).parent)
'''


def sha256_hex(data: bytes) -> str:
    """The digest a manifest or build.json lists for a file's bytes."""
    return hashlib.sha256(data).hexdigest()


def flat_step_fn(spec, module: Module) -> Callable:
    """The step on one flat buffer per slot (T = 1), as a function of named arrays."""
    from adamgen.backends.jax import run_module, step_inputs

    slots = slots_for(spec)
    scalars = [k for k in scalar_inputs_for(spec) if k != "step"]

    def step(param, grad, slot_values, step, runtime):
        inputs = step_inputs(spec, step, runtime, [param], [grad], {k: [v] for k, v in zip(slots, slot_values)}, (0,))
        out = run_module(module, inputs, 1)
        return out["param"][0], tuple(out[k][0] for k in slots), out["step"]

    step.scalars = scalars  # type: ignore[attr-defined]
    return step


def export_flat_step(spec, module: Module, dtype: str) -> bytes:
    fn = flat_step_fn(spec, module)
    (n,) = jax.export.symbolic_shape("n")
    vec = jax.ShapeDtypeStruct((n,), numpy_dtype(dtype))
    slot_specs = tuple(vec for _ in slots_for(spec))
    runtime = {k: jax.ShapeDtypeStruct((), jnp.float32) for k in fn.scalars}
    if spec.weight_decay is not None and spec.exclude_from_weight_decay:
        runtime["decay"] = jax.ShapeDtypeStruct((1,), jnp.float32)  # the one tensor's mask
    # Source locations (file paths, call stacks) would make the bytes depend on who called the
    # build; an artifact must be reproducible, so export without them.
    old = jax.config.jax_traceback_in_locations_limit
    jax.config.update("jax_traceback_in_locations_limit", 0)
    try:
        exp = jax.export.export(jax.jit(fn, donate_argnums=(0, 2)))(
            vec, vec, slot_specs, jax.ShapeDtypeStruct((), jnp.int32), runtime)
        return bytes(exp.serialize())
    finally:
        jax.config.update("jax_traceback_in_locations_limit", old)


def write_artifact(spec, target: str, out_dir: Path, dtypes: tuple[str, ...] = ("f32",),
                   extra_files: Callable[[str, Module], dict[str, bytes]] | None = None,
                   build_info: dict | None = None, binaries: dict[str, bytes] | None = None,
                   manifest_extra: dict | None = None) -> Path:
    """Compile `spec` for each dtype and write the artifact directory atomically."""
    import adamgen
    from adamgen.backends.jax import emit_jaxpr

    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    files: dict[str, bytes] = {"spec.json": spec.to_json().encode()}
    # Several dtypes under global_clipnorm: a tree mixing them runs each non-f32 group in a
    # variant whose global norm is f32 (lower.variant), so build those too.
    norm = norm_dtype_for(spec, dtypes)
    variants = tuple(dict.fromkeys([*dtypes, *(variant(d, norm) for d in dtypes)]))
    for dtype in variants:
        compiled = compile_spec(spec, dtype)
        files[f"ir.{dtype}.txt"] = print_module(compiled.ir_opt).encode()
        files[f"kernels.{dtype}.txt"] = print_module(compiled.kernels).encode()
        if target == "jax" and dtype in dtypes:
            files[f"jax.{dtype}.txt"] = emit_jaxpr(compiled.kernels).encode()
            files[f"step.{dtype}.jaxexport"] = export_flat_step(spec, compiled.kernels, dtype)
        if extra_files is not None:
            files.update(extra_files(dtype, compiled.kernels))
    pkg = out_dir.name
    files["__init__.py"] = INIT_PY.format(name=pkg, pkg=pkg).encode()
    manifest = {
        "format": FORMAT,
        "semantics": SEMANTICS,
        "name": spec.name,
        "target": target,
        "dtypes": list(variants),
        "spec": json.loads(spec.to_json()),
        "spec_hash": spec.content_hash(),
        "versions": {"adamgen": adamgen.__version__, "jax": jax.__version__},
        **(manifest_extra or {}),
        "files": {k: sha256_hex(v) for k, v in sorted(files.items())},
    }
    files["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    if binaries:
        # Machine-specific: compiled libraries and how they were built live apart from the
        # reproducible files, in build.json; a loader rebuilds from source when they are absent.
        info = {**(build_info or {}), "binaries": {k: sha256_hex(v) for k, v in sorted(binaries.items())}}
        files.update(binaries)
        files["build.json"] = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    _write_atomically(out_dir, files)
    return out_dir


def check_output_dir(out_dir: Path) -> None:
    """An artifact replaces only a missing path, an empty directory or an earlier artifact (a
    directory with a manifest.json): never a file, the working directory, or a directory of
    someone's other files, which the atomic swap would delete."""
    resolved = out_dir.resolve()
    if resolved == Path.cwd().resolve() or resolved.parent == resolved:
        raise ValueError(f"output directory {str(out_dir)!r} is the working directory or a root; "
                         "give the artifact its own directory, e.g. -o generated/my_adam")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"output path {str(out_dir)!r} exists and is not a directory; choose another -o")
    if (out_dir / "manifest.json").is_file() or not any(out_dir.iterdir()):
        return
    raise ValueError(f"output directory {str(out_dir)!r} holds files and is not an adamgen artifact "
                     "(no manifest.json); building there would delete them: choose a new or empty directory")


def _write_atomically(out_dir: Path, files: dict[str, bytes]) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.rename(out_dir, old / "a")
        os.rename(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(path: Path, check_semantics: bool = True) -> dict:
    """The artifact's manifest, after checking its format, semantics version (unless told not to:
    a rebuild takes an artifact of any version) and every listed file's hash."""
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise FileNotFoundError(f"{path} is not an adamgen artifact: no manifest.json")
    try:
        manifest = json.loads(manifest_file.read_text())
    except ValueError as exc:
        raise ValueError(f"{manifest_file}: not valid JSON ({exc}); rebuild the artifact") from exc
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: artifact format {manifest.get('format')!r}, this adamgen reads {FORMAT}")
    if check_semantics:
        _check_semantics(path, manifest)
    for name, digest in manifest["files"].items():
        if not (path / name).is_file():
            raise ValueError(f"{path}: the artifact is missing {name}, which its manifest lists; rebuild the artifact")
        data = (path / name).read_bytes()
        if sha256_hex(data) != digest:
            raise ValueError(f"{path}/{name}: content does not match the manifest hash; rebuild the artifact")
    return manifest


def _check_semantics(path: Path, manifest: dict) -> None:
    """An artifact from a newer adamgen is refused; one from an older one loads, with a warning
    that names what changed since and how to rebuild it."""
    built = manifest.get("semantics", 0)
    if not isinstance(built, int) or isinstance(built, bool) or built < 0:
        raise ValueError(f"{path}: manifest semantics must be a non-negative int, got {built!r}; rebuild the artifact")
    if built > SEMANTICS:
        raise ValueError(f"{path}: built by a newer adamgen (semantics version {built}; this adamgen knows up "
                         f"to {SEMANTICS}): upgrade adamgen, or rebuild the artifact with `adamgen rebuild {path}`")
    if built < SEMANTICS:
        import warnings
        changes = "; ".join(SEMANTICS_CHANGES[v] for v in range(built + 1, SEMANTICS + 1))
        warnings.warn(f"{path} was built by an earlier adamgen (semantics version {built}, now {SEMANTICS}): "
                      f"its steps can differ from Keras' by an ulp or more where since then {changes}. "
                      f"`adamgen rebuild {path}` builds it again with this adamgen", stacklevel=4)


def base_dtypes(manifest: dict) -> tuple[str, ...]:
    """The param dtypes an artifact was built for (its manifest also lists the f32-norm variants)."""
    return tuple(d for d in manifest["dtypes"] if parse_variant(d) == (d, d))


def rebuild_artifact(path, out_dir=None) -> Path:
    """Build an artifact again with this adamgen from its own spec, target, dtypes and kernel knobs
    (a tuned artifact keeps its tuned knobs and their record): into `out_dir`, or in place."""
    from adamgen.spec import AdamSpec

    path = Path(path)
    manifest = read_manifest(path, check_semantics=False)
    out = Path(out_dir) if out_dir is not None else path
    check_output_dir(out)
    spec = AdamSpec.from_json((path / "spec.json").read_text())
    target = manifest["target"]
    if target == "jax":
        return write_artifact(spec, "jax", out, base_dtypes(manifest))
    from adamgen.backends.native_artifact import artifact_build_settings, write_native_artifact
    caps, record = artifact_build_settings(path, manifest)
    return write_native_artifact(spec, target, out, base_dtypes(manifest), caps=caps, tune_record=record)


def load_artifact(path):
    """An Optimizer from an artifact: runs its fused kernels; never re-runs lowering or passes."""
    from adamgen.runtime import Optimizer
    from adamgen.spec import AdamSpec

    path = Path(path)
    manifest = read_manifest(path)
    spec = AdamSpec.from_json((path / "spec.json").read_text())
    modules = {d: parse_module((path / f"kernels.{d}.txt").read_text()) for d in manifest["dtypes"]}

    def module_for(dtype: str) -> Module:
        if dtype not in modules:
            want = parse_variant(dtype)[0]
            raise ValueError(f"artifact {path.name} was built for dtypes {sorted(modules)}, not {dtype}; "
                             f"rebuild with --dtype {want}" + (" and a --dtype for each other dtype of the params"
                                                            if want != dtype else ""))
        return modules[dtype]

    target = manifest["target"]
    if target == "jax":
        from adamgen.backends.jax import JaxExecutor
        executor = JaxExecutor(spec, module_for)
        exports = {d: path / f"step.{d}.jaxexport" for d in base_dtypes(manifest)}
        executor.exported = {d: jax.export.deserialize(bytearray(p.read_bytes())) for d, p in exports.items()}
        return Optimizer(spec, target, executor, donates=True)
    from adamgen.backends.native_artifact import load_native_executor
    return Optimizer(spec, target, load_native_executor(spec, module_for, path, manifest), donates=True)
