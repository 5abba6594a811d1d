"""Native targets (`cpu`, `cuda`): the fused elementwise kernel as multi-tensor XLA FFI calls.

The scalar kernels (step, learning rate, bias corrections, clip factors) run as tiny JAX math
inside the same jit, so every step-dependent value reaches the kernel from device memory: one
build serves every step and the call is CUDA-graph safe. Norm clipping adds one native
reduction kernel (per-tensor sums of squares). Each kernel is called once per group of up to
caps.tensors_per_call tensors. The kernels are rendered from the fused IR (backends/cpp.py),
laid out by the Jinja templates, compiled ahead of time (toolchain.py) and registered with XLA
(ffi.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

from adamgen.dtypes import ir_dtype, numpy_dtype
from adamgen import ffi, toolchain
from adamgen.backends.cpp import CAPABILITIES, Capabilities, RenderedKernel, render_elementwise, render_reduce
from adamgen.backends.jax import HOST_COMPILER_OPTIONS, STEP_COMPILER_OPTIONS, Group, JaxExecutor, run_groups, step_inputs, step_jit
from adamgen.ir.node import Module, topo_order
from adamgen.ir.ops import Op
from adamgen.lower import module_variant
from adamgen.state import SLOT_TO_FIELD, Packed, PackedLayout

JAX_PLATFORM_OF = {"cpu": "cpu", "cuda": "gpu"}  # a native target's platform -> jax Device.platform
# The Capabilities fields a tuner may set; the artifact manifest records each of them.
TUNABLE = ("chunk_elems", "tensors_per_call", "block_threads", "threads", "unroll", "vector_bytes",
           "blocks_per_sm", "packed_slots", "hw_half")


@dataclass(frozen=True)
class NativeKernel:
    rendered: RenderedKernel
    ctx: ffi.KernelContext
    source: str


def kernel_for(module: Module, key: str, caps: Capabilities, name: str = "update") -> NativeKernel:
    """Render one native kernel (`update`, or a `reduce<k>`) of a fused module; `key` is the
    module's variant (its param dtype, or e.g. "bf16_f32norm"), which names the kernel's symbol."""
    if key != module_variant(module):
        raise ValueError(f"kernel_for: the module is variant {module_variant(module)!r}, not {key!r}")
    dtype = dict(module.attrs)["dtype"]
    fn = module.function(name)
    reduce = fn.attr("kind") == "reduce"
    rendered = (render_reduce if reduce else render_elementwise)(fn, dtype, one_element_conditions(module))
    if caps.packed_slots:
        rendered = replace(rendered, roles=tuple(replace(r, packed=r.name in SLOT_TO_FIELD) for r in rendered.roles))
    itemsize = ffi.STORAGE[dtype][2].itemsize
    built = caps.effective(itemsize)
    ctx = ffi.make_context(f"adamgen_{name}_{key}", rendered.roles, len(rendered.scalars), rendered.body,
                           n_pertensor=len(rendered.pertensor), n_reduce=len(rendered.outputs),
                           body_many=rendered.body_many,
                           vector_body=rendered.vector_many and dtype in caps.vector_dtypes,
                           chunk_elems=caps.chunk_elems, block_threads=caps.block_threads,
                           max_threads=caps.threads, unroll=built.unroll, blocks_per_sm=caps.blocks_per_sm,
                           hw_half=built.hw_half,
                           vec_elems=caps.vector_elems(itemsize),
                           launch_param_bytes=ffi.launch_param_bytes(len(rendered.roles), caps.tensors_per_call))
    return NativeKernel(rendered, ctx, ffi.render(ctx, caps.platform))


def one_element_conditions(module: Module) -> frozenset[str]:
    """Names of the per-tensor values the scalar kernels compute from the "single" input alone
    (lower._Ctx.scale's `0 < single`): false for every tensor of more than one element, so the
    kernels' loops over such tensors can take them as false (cpp.render_elementwise)."""
    out = set()
    for fn in module.functions:
        if fn.attr("kind") != "scalar":
            continue
        for name, node in fn.outputs:
            leaves = {n.attr("name") for n in topo_order([node]) if n.op is Op.INPUT}
            if leaves == {"single"} and node.dtype == "bool":
                out.add(name)
    return frozenset(out)


def native_kernel_names(module: Module) -> list[str]:
    """The kernels a native target runs itself: reductions and the update (scalars stay in JAX)."""
    return [f.name for f in module.functions if f.attr("kind") in ("reduce", "elementwise")]


def render_source(spec, module: Module, target: str) -> str:
    """All native kernels of a module, one source after the other (what --emit prints)."""
    return "\n".join(kernel_for(module, module_variant(module), CAPABILITIES[target], name).source
                     for name in native_kernel_names(module))


def check_platform(target: str) -> None:
    if target == "cuda" and not any(d.platform == "gpu" for d in jax.devices()):
        raise RuntimeError("the cuda target runs on an NVIDIA GPU visible to JAX, and none is here "
                           f"(jax.devices() = {jax.devices()}; on a GPU machine JAX needs its CUDA plugin: "
                           "pip install 'adamgen[gpu]', i.e. jax[cuda13]); build artifacts anyway with "
                           "`adamgen build --target cuda`, or use target='cpu'")


def native_optimizer(spec, target: str, caps: Capabilities | None = None, verify: bool = False):
    """An `adamgen.runtime.Optimizer` on the native `target`, its kernels built here (not loaded
    from an artifact) with `caps` (None: the target's own capabilities)."""
    from adamgen.compiler import kernels_for
    from adamgen.runtime import Optimizer

    return Optimizer(spec, target, NativeExecutor(spec, kernels_for(spec, verify), target, caps=caps), donates=True)


class NativeExecutor(JaxExecutor):
    """The JAX executor with the elementwise kernel replaced by the native custom call."""

    def __init__(self, spec, module_for: Callable[[str], Module], target: str,
                 binaries: dict[str, Path] | None = None, caps: Capabilities | None = None) -> None:
        if target not in CAPABILITIES:
            raise ValueError(f"native target must be one of {sorted(CAPABILITIES)}, got {target!r}")
        check_platform(target)
        super().__init__(spec, module_for)
        self.caps = caps or CAPABILITIES[target]
        self._binaries = dict(binaries or {})
        self.kernels: dict[str, dict[str, tuple[NativeKernel, ffi.Kernel]]] = {}
        self._per_tensor: dict[str, dict[str, tuple[NativeKernel, ffi.Kernel]]] = {}
        options = HOST_COMPILER_OPTIONS if self.caps.platform == "cpu" else STEP_COMPILER_OPTIONS
        self._jitted = step_jit(self._step, options)  # the unpacked path
        self._jitted_packed = step_jit(self._step_packed, options)

    @property
    def jax_platform(self) -> str:
        """The JAX platform these kernels run on (where the optimizer puts a new state)."""
        return JAX_PLATFORM_OF[self.caps.platform]

    def module(self, dtype: str) -> Module:
        module = super().module(dtype)
        if dtype not in self.kernels:
            self.kernels[dtype] = self._build_kernels(module, dtype, self.caps, self._binaries)
        return module

    def _build_kernels(self, module: Module, key: str, caps: Capabilities, binaries: dict[str, Path]) -> dict:
        """kernel name -> (rendered kernel, registered FFI kernel), compiling what `binaries` lacks."""
        natives = {name: kernel_for(module, key, caps, name) for name in native_kernel_names(module)}
        missing = [name for name in natives if f"{name}.{key}" not in binaries]
        compiled = dict(zip(missing, toolchain.compile_all([natives[n].source for n in missing], caps.platform)))
        return {name: (native, self._register(native, binaries.get(f"{name}.{key}") or compiled[name]))
                for name, native in natives.items()}

    def per_tensor_kernels(self, key: str) -> dict:
        """The kernels for slots passed as one array per param (a params-shaped state, e.g.
        `state.unpacked()` or Keras' own slot variables): the target's own when it does not
        pack, else the same kernels rendered for per-tensor slots, compiled on first use (an
        artifact ships only its packed kernels, so this needs the compiler; `opt.restore`
        packs a params-shaped state instead)."""
        module = self.module(key)
        if not self.caps.packed_slots:
            return self.kernels[key]
        if key not in self._per_tensor:
            self._per_tensor[key] = self._build_kernels(module, key, replace(self.caps, packed_slots=False), {})
        return self._per_tensor[key]

    def _prepare(self, key: str) -> None:
        self.per_tensor_kernels(key)  # the unpacked path's kernels, compiled here, not while tracing

    def _register(self, native: NativeKernel, lib: Path) -> ffi.Kernel:
        platform = self.caps.platform
        name = ffi.target_name(native.ctx, native.source, platform)
        ffi.register(lib, native.ctx.symbol, name, platform)
        return ffi.Kernel(native.ctx, platform, name, Path(lib), native.source)

    # -- packed slots -------------------------------------------------------------
    def packed_layout(self, leaves: list, treedef) -> PackedLayout | None:
        """How init lays out the slots: one slab per custom call (None: one array per param)."""
        if not self.caps.packed_slots:
            return None
        return PackedLayout.for_leaves(leaves, treedef, self.caps.tensors_per_call)

    def _check_device(self, leaf) -> None:
        """The kernels are registered for one platform: with params on another device XLA would
        fail to find a handler, so say what to do instead. One leaf, outside any trace."""
        if isinstance(leaf, jax.core.Tracer) or not hasattr(leaf, "devices"):
            return
        want = JAX_PLATFORM_OF[self.caps.platform]
        found = sorted({d.platform for d in leaf.devices()})
        if found != [want]:
            raise ValueError(f"the {self.caps.platform} target's kernels run on {want} devices, and the params "
                             f"are on {found}; put them there (jax.device_put(params, jax.devices({want!r})[0])) "
                             f"or build for the target of that device")

    def step(self, params: list, grads: list, slots: dict, step, runtime: dict):
        self._check_device(params[0])
        spread = _spread_shardings(params)
        slot_spread = {k: _spread_shardings(v) for k, v in slots.items() if isinstance(v, list)}
        new_params, new_slots, new_step = self._step_any(params, grads, slots, step, runtime)
        # XLA gathers an array spread over several devices before the custom call, which updates
        # it whole and returns it replicated: give params (and params-shaped slots) back in
        # their own sharding. Packed slabs stay as XLA returns them (whole on every device).
        new_params = _restore_shardings(new_params, spread)
        new_slots = {k: _restore_shardings(v, slot_spread.get(k)) for k, v in new_slots.items()}
        return new_params, new_slots, new_step

    def _step_any(self, params: list, grads: list, slots: dict, step, runtime: dict):
        if not any(isinstance(v, Packed) for v in slots.values()):
            return super().step(params, grads, slots, step, runtime)  # per-tensor slots: see _prepare
        layout = next(v.layout for v in slots.values())
        if len(params) != len(layout.shapes):  # sizes are checked by the kernel, groups by the runner
            raise ValueError(f"the packed state holds {len(layout.shapes)} tensors, params have {len(params)}; "
                             "call opt.init(params) for these params")
        # The leaves' dtypes are the layout's (the kernels check every buffer's dtype and size), so
        # no per-leaf Python work runs on a call.
        for name in self.variants(layout_dtype_groups(layout)).values():
            self.module(name)
        return self._jitted_packed(params, grads, slots, step, runtime)

    def _step_packed(self, params, grads, slots: dict, step, runtime):
        layout = next(v.layout for v in slots.values())
        # Traced once per set of param shapes, so this check costs nothing per call.
        shapes = tuple(tuple(int(d) for d in p.shape) for p in params)
        if shapes != layout.shapes:
            bad = next(i for i, (a, b) in enumerate(zip(shapes, layout.shapes)) if a != b)
            raise ValueError(f"the packed state was made for params of other shapes (leaf {bad}: "
                             f"{layout.shapes[bad]} in the state, {shapes[bad]} now); "
                             "call opt.init(params) for these params")
        new_params = list(params)
        new_slabs = {k: list(v.slabs) for k, v in slots.items()}
        new_step = step + 1
        by_dtype = layout_dtype_groups(layout)
        names = self.variants(by_dtype)
        slab_ids, groups = [], []
        for dtype, idx in by_dtype.items():
            members = set(idx)
            slab_ids.append([g for g, group in enumerate(layout.groups) if group[0] in members])
            packed = {k: SlabGroups(tuple(v.slabs[g] for g in slab_ids[-1])) for k, v in slots.items()}
            inputs = step_inputs(self.spec, step, runtime, [params[i] for i in idx], [grads[i] for i in idx], packed,
                                 tuple(idx))
            groups.append(Group(self._modules[names[dtype]], inputs, tuple(idx),
                                self._runner_for(names[dtype], packed=True)))
        for idx, gids, out in zip(by_dtype.values(), slab_ids, run_groups(groups)):
            new_step = out["step"]
            for j, i in enumerate(idx):
                new_params[i] = out["param"][j]
            for k in new_slabs:
                for g, slab in zip(gids, out[k].slabs):
                    new_slabs[k][g] = slab
        return new_params, {k: Packed(tuple(v), layout) for k, v in new_slabs.items()}, new_step

    def _runner_for(self, dtype: str, packed: bool = False):
        """The kernels of module `dtype` as a KernelRunner: for packed slots, or per tensor (the
        executor's unpacked path, which JaxExecutor._step takes)."""
        kernels = self.kernels[dtype] if packed else self.per_tensor_kernels(dtype)
        step = self.caps.tensors_per_call

        def run(fn, env, n_tensors):
            if fn.name not in kernels:
                return None  # scalar kernels: JAX
            native, kernel = kernels[fn.name]
            r = native.rendered
            scalars = (jnp.stack([jnp.asarray(env[k]).astype(jnp.float32) for k in r.scalars])
                       if r.scalars else jnp.zeros((1,), jnp.float32))
            pertensor = (jnp.stack([jnp.asarray(env[k]).astype(jnp.float32) for k in r.pertensor], axis=1)
                         if r.pertensor else jnp.zeros((n_tensors, 0), jnp.float32))
            read = [role.name for role in r.roles if role.read]
            starts = range(0, n_tensors, step)
            parts = [([[env[name].slabs[j]] if role_is_packed(env[name], len(starts)) else env[name][a:a + step]
                       for name in read], pertensor[a:a + step]) for j, a in enumerate(starts)]
            if r.outputs:  # a reduction: f32 sums per tensor, rounded once to the IR dtype
                sums = jnp.concatenate([ffi.call_reduce(kernel, scalars, ins, pt) for ins, pt in parts])
                return {name: sums[:, j].astype(numpy_dtype(node.dtype))
                        for j, (name, node) in enumerate(fn.outputs)}
            written = [role.name for role in r.roles if role.written]
            outs: list[list] = [[] for _ in written]
            for ins, pt in parts:
                for o, values in enumerate(ffi.call(kernel, scalars, ins, pt)):
                    outs[o].extend(values)
            return {name: SlabGroups(tuple(values)) if isinstance(env[name], SlabGroups) else values
                    for name, values in zip(written, outs)}

        return run


def _spread_shardings(leaves: list) -> list | None:
    """Per leaf, its sharding where it spans several devices (else None); None when no leaf
    does, or when the step is being traced (the caller's jit decides its outputs' shardings).
    With one device nothing is looked at; a committed first leaf on one device answers for
    all (a jit's committed arrays share their devices); else every leaf is looked at."""
    if not leaves or jax.device_count() == 1:
        return None
    if isinstance(leaves[0], jax.core.Tracer) or not isinstance(leaves[0], jax.Array):
        return None
    first = leaves[0]
    if first.committed and len(first.sharding.device_set) == 1:
        return None  # one leaf looked at, on every call
    if any(isinstance(x, jax.core.Tracer) or not isinstance(x, jax.Array) for x in leaves):
        return None
    out = [x.sharding if len(x.sharding.device_set) > 1 else None for x in leaves]
    return out if any(s is not None for s in out) else None


def _restore_shardings(leaves, shardings: list | None):
    """`leaves` with each one that `shardings` names put back there, in one batched transfer."""
    if shardings is None or not isinstance(leaves, list):
        return leaves
    idx = [i for i, s in enumerate(shardings) if s is not None]
    moved = jax.device_put([leaves[i] for i in idx], [shardings[i] for i in idx], donate=True)
    out = list(leaves)
    for i, x in zip(idx, moved):
        out[i] = x
    return out


@dataclass(frozen=True)
class SlabGroups:
    """A packed slot inside one step: the slabs of one dtype's custom calls, in call order."""
    slabs: tuple


@functools.lru_cache(maxsize=64)
def layout_dtype_groups(layout: PackedLayout) -> dict[str, list[int]]:
    """IR dtype -> leaf indices, in leaf order (as _group_by_dtype gives for the params)."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(layout.dtypes):
        groups.setdefault(ir_dtype(jnp.dtype(name)), []).append(i)
    return groups


def role_is_packed(value, n_calls: int) -> bool:
    if not isinstance(value, SlabGroups):
        return False
    if len(value.slabs) != n_calls:
        raise ValueError(f"packed slot has {len(value.slabs)} slabs for {n_calls} calls; "
                         "the state was made with another tensors_per_call")
    return True
