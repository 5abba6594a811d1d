"""Native multi-tensor kernels as XLA FFI custom calls: render, build, register, call.

A kernel is described by a :class:`KernelContext` (a frozen, validated bag of numbers,
identifiers and pre-rendered element-body lines). The templates under ``templates/{host,cuda}``
turn it into C++ / CUDA source; :mod:`adamgen.toolchain` compiles it; :func:`register` hands the
handler to XLA; :func:`call` issues one ``ffi_call`` over every tensor of a pytree.

FFI call layout (role-major), for T tensors:
    args = [scalars f32[n_scalars], pertensor f32[T * n_pertensor], in_0[0..T), in_1[0..T), ...,
            packed_in_0, packed_in_1, ...]
    rets = [out_0[0..T), out_1[0..T), ..., packed_out_0, ...]
in_a = a-th per-tensor *read* role, out_o = o-th per-tensor *written* role. A packed role (an
optimizer slot kept as one 1-D slab per call, see state.PackedLayout) is one buffer holding the
T tensors back to back. A role both read and written is aliased: arg ``2 + a*T + t`` -> ret
``o*T + t``, packed arg ``2 + n_in*T + q`` -> ret ``n_out*T + q'``. Under
``jax.jit(..., donate_argnums=...)`` on those arrays the update is in place.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from adamgen import toolchain
from adamgen.state import SLAB_ALIGN_BYTES

TEMPLATE_DIR = Path(__file__).parent / "templates"
ENV = Environment(
    loader=FileSystemLoader(str(TEMPLATE_DIR)),
    undefined=StrictUndefined,
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
TEMPLATES = {"cpu": "host/handler.cc.j2", "cuda": "cuda/handler.cu.j2"}
REDUCE_TEMPLATES = {"cpu": "host/reduce.cc.j2", "cuda": "cuda/reduce.cu.j2"}
JAX_PLATFORM = {"cpu": "cpu", "cuda": "CUDA"}

# IR dtype name -> (C storage type, XLA FFI data type (c_api.h), NumPy dtype).
STORAGE = {
    "f32": ("float", "XLA_FFI_DataType_F32", np.dtype(np.float32)),
    "bf16": ("adamgen_bf16", "XLA_FFI_DataType_BF16", np.dtype(jnp.bfloat16)),
    "f16": ("adamgen_f16", "XLA_FFI_DataType_F16", np.dtype(np.float16)),
}
COMPUTE_CTYPES = ("float",)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BAD_LINE = re.compile(r"[\n\r]|#|\{%|\{\{|%\}|\}\}|/\*|\*/")


@dataclass(frozen=True)
class RoleSpec:
    """One per-tensor buffer role, e.g. ``RoleSpec("param", "f32", read=True, written=True)``."""
    name: str
    dtype: str
    read: bool
    written: bool
    packed: bool = False   # one slab for all tensors of a call instead of one buffer each


@dataclass(frozen=True)
class KernelContext:
    """Everything the host and CUDA templates see. Build with :func:`make_context`.

    The element body computes in ``compute_ctype`` on ``x[r]`` (role r, loaded and converted)
    and ``s[k]`` (runtime scalar k, f32); it writes the new value of each written role to
    ``x[r]``. Spec constants are already literals inside ``body``.
    """
    symbol: str                        # C identifier of the exported FFI handler
    roles: tuple[str, ...]             # role names, in role order
    role_ctypes: tuple[str, ...]       # storage C type per role
    role_dtypes: tuple[str, ...]       # XLA_FFI_DataType per role
    role_arg: tuple[int, ...]          # per role: index among per-tensor (or packed) inputs, -1 if not read
    role_ret: tuple[int, ...]          # per role: index among per-tensor (or packed) outputs, -1 if not written
    n_in: int                          # per-tensor read roles
    n_out: int                         # per-tensor written roles
    n_scalars: int                     # runtime scalars (f32 buffer, first argument)
    body: tuple[str, ...]              # element-body C++ statements, one per line
    # the body for tensors of more than one element (the kernels' loops; see cpp.render_elementwise):
    # empty = the same as body
    body_many: tuple[str, ...] = ()
    n_pertensor: int = 0               # per-tensor values (f32[T * n_pertensor], second argument)
    n_reduce: int = 0                  # reduce kernels: the last n_reduce roles are values summed per tensor
    compute_ctype: str = "float"
    chunk_elems: int = 65536           # elements per chunk (host and CUDA)
    parallel_min_elems: int = 1 << 16  # host: fewer elements in total run single-threaded
    max_threads: int = 0               # host: most threads one call uses (0: the whole XLA pool)
    unroll: int = 1                    # host: element-loop unroll factor
    block_threads: int = 256           # CUDA threads per block
    vec_elems: int = 4                 # CUDA elements per vector access (16 B of f32)
    max_grid: int = 1 << 20            # CUDA grid cap; blocks stride over chunks beyond it
    blocks_per_sm: int = 0             # CUDA: 0, or at most this many blocks per multiprocessor
    launch_param_bytes: int = 4000     # CUDA launch-table bytes (see launch_param_bytes())
    role_packed: tuple[int, ...] = ()  # per role: 1 if packed (one slab per call)
    role_bytes: tuple[int, ...] = ()   # per role: bytes per element of its storage type
    n_in_packed: int = 0               # packed read roles
    n_out_packed: int = 0              # packed written roles
    slab_align_bytes: int = SLAB_ALIGN_BYTES  # packed roles: each tensor starts at a multiple of this
    # host: the loop over a tensor of more than one element runs body_many on vectors where the
    # CPU has them (templates/host/vector.h); the body must be cpp.vector_capable
    vector_body: bool = False
    hw_half: int = 0                   # CUDA: 1 = half conversions by cvt instructions (cpp.Capabilities)


# CUDA 12.1+ passes up to 32764 bytes of kernel arguments on Volta and newer (the SASS targets
# are sm_80 and sm_90); before that the limit was 4096. The table gets that less room for the
# kernels' other arguments (at most three pointers: scalars, per-tensor values, reduce output).
CUDA_ARG_LIMIT_BYTES = 32764
CUDA_OTHER_ARG_BYTES = 32
CUDA_MAX_PARAM_BYTES = CUDA_ARG_LIMIT_BYTES - CUDA_OTHER_ARG_BYTES


def launch_param_bytes(n_roles: int, n_tensors: int) -> int:
    """Kernel-argument bytes for a CUDA launch table of `n_tensors` tensors (cuda_chunks.h.j2:
    per tensor a pointer per role, an int64 size and two int32s; 16 bytes cover the fixed part and
    padding, as the template's kMaxTensors reserves), capped at what CUDA allows: more tensors than
    fit go to further launches."""
    return min(CUDA_MAX_PARAM_BYTES, 16 + n_tensors * (n_roles * 8 + 16))


def _check_ident(name: str, what: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"{what} {name!r} is not a C identifier")
    return name


def _check_positive(ctx: KernelContext) -> None:
    for name in ("chunk_elems", "parallel_min_elems", "unroll", "block_threads", "vec_elems", "max_grid",
                 "launch_param_bytes"):
        value = getattr(ctx, name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if ctx.hw_half not in (0, 1) or isinstance(ctx.hw_half, bool):
        raise ValueError(f"hw_half must be 0 or 1, got {ctx.hw_half!r}")
    if not isinstance(ctx.max_threads, int) or ctx.max_threads < 0:
        raise ValueError(f"max_threads must be a non-negative int (0: all pool threads), got {ctx.max_threads!r}")
    if not isinstance(ctx.blocks_per_sm, int) or ctx.blocks_per_sm < 0:
        raise ValueError(f"blocks_per_sm must be a non-negative int (0: a block per chunk), got {ctx.blocks_per_sm!r}")
    if ctx.launch_param_bytes > CUDA_MAX_PARAM_BYTES:
        raise ValueError(f"launch_param_bytes must be at most {CUDA_MAX_PARAM_BYTES}, got {ctx.launch_param_bytes}")
    if not isinstance(ctx.slab_align_bytes, int) or ctx.slab_align_bytes <= 0 or any(
            ctx.slab_align_bytes % b for b in ctx.role_bytes):
        raise ValueError(f"slab_align_bytes must be a positive multiple of every role's element size "
                         f"{sorted(set(ctx.role_bytes))}, got {ctx.slab_align_bytes!r}")


def make_context(symbol: str, roles: Sequence[RoleSpec], n_scalars: int, body: Sequence[str],
                 n_pertensor: int = 0, n_reduce: int = 0, body_many: Sequence[str] = (),
                 vector_body: bool = False, **tuning: int) -> KernelContext:
    """Validate the pieces and derive the call layout; ``tuning`` sets the int fields."""
    _check_ident(symbol, "symbol")
    if not roles:
        raise ValueError("a kernel needs at least one role")
    for role in roles:
        _check_ident(role.name, "role name")
        if role.dtype not in STORAGE:
            raise ValueError(f"role {role.name}: dtype {role.dtype!r} not in {sorted(STORAGE)}")
    if not any(r.read for r in roles) or not (any(r.written for r in roles) or n_reduce > 0):
        raise ValueError("a kernel needs at least one read role and a written role or a reduction")
    if n_reduce and any(r.read or r.written for r in roles[len(roles) - n_reduce:]):
        raise ValueError("the last n_reduce roles hold reduced values: neither read nor written")
    for name, value in (("n_scalars", n_scalars), ("n_pertensor", n_pertensor)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    for line in (*body, *body_many):
        if _BAD_LINE.search(line):
            raise ValueError(f"body line {line!r} holds a newline, comment or template syntax")
    if any(r.packed and r.written and not r.read for r in roles):
        raise ValueError("a packed role that is written must also be read (its slab is updated in place)")
    if any(r.packed for r in roles) and not any(r.read and not r.packed for r in roles):
        raise ValueError("a kernel with packed roles needs a per-tensor read role (it gives the sizes)")
    reads = [r for r in roles if r.read and not r.packed]
    writes = [r for r in roles if r.written and not r.packed]
    packed_reads = [r for r in roles if r.read and r.packed]
    packed_writes = [r for r in roles if r.written and r.packed]
    ctx = KernelContext(
        symbol=symbol,
        roles=tuple(r.name for r in roles),
        role_ctypes=tuple(STORAGE[r.dtype][0] for r in roles),
        role_dtypes=tuple(STORAGE[r.dtype][1] for r in roles),
        role_arg=tuple((packed_reads if r.packed else reads).index(r) if r.read else -1 for r in roles),
        role_ret=tuple((packed_writes if r.packed else writes).index(r) if r.written else -1 for r in roles),
        n_in=len(reads), n_out=len(writes), n_scalars=n_scalars, body=tuple(body),
        body_many=tuple(body_many) or tuple(body),
        n_pertensor=n_pertensor, n_reduce=n_reduce,
        role_packed=tuple(int(r.packed) for r in roles),
        role_bytes=tuple(STORAGE[r.dtype][2].itemsize for r in roles),
        n_in_packed=len(packed_reads), n_out_packed=len(packed_writes), vector_body=bool(vector_body),
        **tuning)
    if ctx.compute_ctype not in COMPUTE_CTYPES:
        raise ValueError(f"compute_ctype {ctx.compute_ctype!r} not in {COMPUTE_CTYPES}")
    _check_positive(ctx)
    return ctx


def render(ctx: KernelContext, platform: str) -> str:
    """C++ (``"cpu"``) or CUDA (``"cuda"``) source of the kernel (an update, or a reduction when
    ``ctx.n_reduce`` > 0)."""
    if platform not in TEMPLATES:
        raise ValueError(f"unknown platform {platform!r}; allowed: {sorted(TEMPLATES)}")
    if platform == "cuda" and ctx.chunk_elems % ctx.vec_elems:
        # every chunk of a tensor then starts on a vector boundary (the host loop has no vectors)
        raise ValueError(f"chunk_elems must be a multiple of the CUDA vector's {ctx.vec_elems} elements "
                         f"({ctx.symbol}), got {ctx.chunk_elems}")
    if platform == "cpu" and ctx.hw_half:
        raise ValueError(f"hw_half: the host flavour rounds halves in the bit-level form only ({ctx.symbol})")
    table = REDUCE_TEMPLATES if ctx.n_reduce else TEMPLATES
    values = {**asdict(ctx), "vector_body": "true" if ctx.vector_body else "false"}
    return ENV.get_template(table[platform]).render(**values, loop_pragma=loop_pragma(ctx.unroll),
                                                    cuda_arg_limit_bytes=CUDA_ARG_LIMIT_BYTES,
                                                    one_element_body="true" if ctx.body_many != ctx.body else "false")


TEMPLATE_SUFFIXES = (".j2", ".h", ".cc", ".cu")  # what the templates directory ships


def templates_hash() -> str:
    """16 hex chars of sha256 over every template file's path and bytes: an artifact records it,
    so a loader can tell a kernel source from other templates (another adamgen) from an edited one."""
    h = hashlib.sha256()
    for path in sorted(p for p in TEMPLATE_DIR.rglob("*") if p.is_file() and p.suffix in TEMPLATE_SUFFIXES):
        h.update(path.relative_to(TEMPLATE_DIR).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def loop_pragma(unroll: int) -> str:
    """The pragmas before the host element loop. GCC accepts no loop pragma after `omp simd`, so an
    unrolled loop says `ivdep` (no dependence between iterations: what `omp simd` also asserts)."""
    if unroll == 1:
        return '_Pragma("omp simd")'
    return f'_Pragma("GCC ivdep") _Pragma("GCC unroll {int(unroll)}")'


def target_name(ctx: KernelContext, source: str, platform: str) -> str:
    """FFI target name: symbol + platform + hash of the source (a changed kernel never reuses
    a stale registration or a cached executable)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    return f"{ctx.symbol}_{platform}_{digest}"


@dataclass(frozen=True)
class Kernel:
    """A built, registered kernel: what :func:`call` needs."""
    ctx: KernelContext
    platform: str
    target: str
    lib_path: Path
    source: str = field(repr=False)


_REGISTERED: dict[str, tuple[Path, ctypes.CDLL]] = {}


def register(lib_path: Path, symbol: str, name: str, platform: str) -> None:
    """Load ``lib_path`` and register its handler ``symbol`` as FFI target ``name``; idempotent."""
    if platform not in JAX_PLATFORM:
        raise ValueError(f"unknown platform {platform!r}; allowed: {sorted(JAX_PLATFORM)}")
    if name in _REGISTERED:
        # The name carries the source hash: another library with this name was built from the
        # same source (e.g. an artifact's copy of a cached build), so the handler is the same.
        return
    lib = ctypes.CDLL(str(lib_path))
    handler = getattr(lib, _check_ident(symbol, "symbol"))
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform=JAX_PLATFORM[platform])
    _REGISTERED[name] = (Path(lib_path), lib)


def build(ctx: KernelContext, platform: str = "cpu", *, cache_dir: Path | None = None) -> Kernel:
    """Render, compile (cached) and register the kernel for ``platform``."""
    source = render(ctx, platform)
    lib_path = toolchain.compiler_for(platform)(source, cache_dir=cache_dir)
    name = target_name(ctx, source, platform)
    register(lib_path, ctx.symbol, name, platform)
    return Kernel(ctx, platform, name, lib_path, source)


def aliases(ctx: KernelContext, n_tensors: int) -> dict[int, int]:
    """input_output_aliases for ``n_tensors`` tensors (see the module docstring)."""
    out: dict[int, int] = {}
    for a, o, packed in zip(ctx.role_arg, ctx.role_ret, ctx.role_packed):
        if a < 0 or o < 0:
            continue
        if packed:
            out[2 + ctx.n_in * n_tensors + a] = ctx.n_out * n_tensors + o
            continue
        for t in range(n_tensors):
            out[2 + a * n_tensors + t] = o * n_tensors + t
    return out


def call(kernel: Kernel, scalars: jax.Array, inputs: Sequence[Sequence[jax.Array]],
         pertensor: jax.Array | None = None) -> list[list[jax.Array]]:
    """One custom call over every tensor. ``inputs[a][t]``: tensor t of the a-th read role (in
    role order); a packed role gives ``[slab]``, its T tensors back to back in one 1-D array.
    ``pertensor``: f32[T, n_pertensor] (row t holds tensor t's per-tensor values).

    Returns ``outputs[o][t]``: tensor t of the o-th written role (``[slab]`` for a packed one).
    Donate the aliased inputs (``jax.jit(..., donate_argnums=...)``) for an in-place update.
    """
    ctx = kernel.ctx
    flat_in, n_tensors, shapes, slabs = _flat_inputs(ctx, inputs)
    written = [r for r, o in enumerate(ctx.role_ret) if o >= 0]
    result_types = [jax.ShapeDtypeStruct(shape, _np_dtype(ctx.role_dtypes[r]))
                    for r in written if not ctx.role_packed[r] for shape in shapes]
    # packed outputs follow the per-tensor ones, in role order (as role_ret numbers them)
    result_types += [jax.ShapeDtypeStruct(slabs[r].shape, _np_dtype(ctx.role_dtypes[r]))
                     for r in written if ctx.role_packed[r]]
    if n_tensors == 0:
        return [[] for _ in written]
    fn = jax.ffi.ffi_call(kernel.target, result_types, vmap_method="sequential",
                          input_output_aliases=aliases(ctx, n_tensors))
    if pertensor is None:
        pertensor = jnp.zeros((n_tensors, ctx.n_pertensor), jnp.float32)
    if tuple(pertensor.shape) != (n_tensors, ctx.n_pertensor):
        raise ValueError(f"pertensor must be f32[{n_tensors}, {ctx.n_pertensor}], got {pertensor.shape}")
    # at least one element, so the buffer has an address even with no per-tensor values
    pt = jnp.concatenate([jnp.ravel(pertensor).astype(jnp.float32), jnp.zeros((1,), jnp.float32)])
    flat_out = fn(jnp.asarray(scalars, jnp.float32), pt, *flat_in)
    return [[flat_out[ctx.n_out * n_tensors + ctx.role_ret[r]]] if ctx.role_packed[r] else
            list(flat_out[ctx.role_ret[r] * n_tensors:(ctx.role_ret[r] + 1) * n_tensors]) for r in written]


def _flat_inputs(ctx: KernelContext, inputs: Sequence[Sequence[jax.Array]]) -> tuple[list, int, list, dict]:
    """The read roles' arrays in call-layout order (per-tensor roles, then packed slabs), the
    number of tensors, their shapes (from the per-tensor roles) and the slab of each packed role."""
    read = [r for r, a in enumerate(ctx.role_arg) if a >= 0]
    if len(inputs) != len(read):
        raise ValueError(f"expected {len(read)} input roles of {ctx.roles}, got {len(inputs)}")
    per_tensor = [list(x) for r, x in zip(read, inputs) if not ctx.role_packed[r]]
    packed = {r: list(x) for r, x in zip(read, inputs) if ctx.role_packed[r]}
    n_tensors = len(per_tensor[0])
    if any(len(role) != n_tensors for role in per_tensor) or any(len(role) != 1 for role in packed.values()):
        raise ValueError("every per-tensor role needs the same number of tensors; a packed role one slab")
    flat = [x for role in [*per_tensor, *packed.values()] for x in role]
    return flat, n_tensors, [x.shape for x in per_tensor[0]], {r: role[0] for r, role in packed.items()}


def reduce_chunks(ctx: KernelContext, shapes: Sequence[Sequence[int]]) -> int:
    """Chunks a reduction call walks: ceil(size / chunk_elems) per tensor, none for an empty one
    (the order the templates number them in)."""
    return sum(-(-math.prod(shape) // ctx.chunk_elems) for shape in shapes)


def call_reduce(kernel: Kernel, scalars: jax.Array, inputs: Sequence[Sequence[jax.Array]],
                pertensor: jax.Array | None = None) -> jax.Array:
    """One reduction call over the T tensors of `inputs`; returns f32[T, n_reduce] per-tensor sums.

    The call's second output, f32[n_chunks * n_reduce], holds each chunk's partial sums; the
    kernels add them per tensor in chunk order, so a sum never depends on which thread or block
    finished first."""
    ctx = kernel.ctx
    flat_in, n_tensors, shapes, _ = _flat_inputs(ctx, inputs)
    if pertensor is None:
        pertensor = jnp.zeros((n_tensors, ctx.n_pertensor), jnp.float32)
    pt = jnp.concatenate([jnp.ravel(pertensor).astype(jnp.float32), jnp.zeros((1,), jnp.float32)])
    n_partials = reduce_chunks(ctx, shapes) * ctx.n_reduce + 1  # and a word for the CUDA block counter
    fn = jax.ffi.ffi_call(kernel.target, (jax.ShapeDtypeStruct((n_tensors * ctx.n_reduce,), jnp.float32),
                                          jax.ShapeDtypeStruct((n_partials,), jnp.float32)),
                          vmap_method="sequential")
    sums, _ = fn(jnp.asarray(scalars, jnp.float32), pt, *flat_in)
    return sums.reshape(n_tensors, ctx.n_reduce)


def _np_dtype(ffi_dtype: str) -> np.dtype:
    for _, dtype_name, np_dtype in STORAGE.values():
        if dtype_name == ffi_dtype:
            return np_dtype
    raise ValueError(f"unknown FFI dtype {ffi_dtype!r}")


# --- The hand-written plain-Adam f32 fixture (replaced later by the compiler's renderer). ---
# beta1 = 0.9, beta2 = 0.999, epsilon = 1e-7 baked; s[0] = alpha (the bias-corrected step size),
# s[1] = lr (unused by plain Adam; present so the scalar buffer has the compiler's layout).
PLAIN_ADAM_ROLES = (
    RoleSpec("param", "f32", read=True, written=True),
    RoleSpec("grad", "f32", read=True, written=False),
    RoleSpec("momentum", "f32", read=True, written=True),
    RoleSpec("velocity", "f32", read=True, written=True),
)
PLAIN_ADAM_BODY = (
    "const float g = x[1];",
    "const float m = x[2] + (g - x[2]) * 0.1f;",
    "const float v = x[3] + (g * g - x[3]) * 0.001f;",
    "x[0] = x[0] - (m * s[0]) / (sqrtf(v) + 1e-07f);",
    "x[2] = m;",
    "x[3] = v;",
)


def plain_adam_context(**tuning: int) -> KernelContext:
    return make_context("adamgen_plain_adam_f32", PLAIN_ADAM_ROLES, 2, PLAIN_ADAM_BODY, **tuning)


def with_tuning(ctx: KernelContext, **tuning: int) -> KernelContext:
    """A copy of ``ctx`` with other int tuning fields, validated."""
    new = replace(ctx, **tuning)
    _check_positive(new)
    return new
