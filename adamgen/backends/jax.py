"""JAX target: the fused IR lowered to a JAX computation, one rule per op.

Runtime values mirror the NumPy interpreter: a scalar is a 0-d array, a per-tensor value a [T]
array, an elementwise value a list of T arrays (one per tensor, any shapes). Each op rounds to
its dtype as jnp does. Under jit XLA fuses each tensor's elementwise chain into one loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from adamgen.dtypes import ir_dtype, numpy_dtype
from adamgen.ir.node import Function, Module, Node, function_nodes
from adamgen.ir.ops import Op
from adamgen.lower import norm_dtype_for, takes_single, variant

Value = Any


def _unary(fn: Callable) -> Callable:
    return lambda node, a: fn(a)


def _binary(fn: Callable) -> Callable:
    return lambda node, a, b: fn(a, b)


def _cast(node: Node, a):
    return jnp.asarray(a).astype(numpy_dtype(node.dtype))


def _reduce_sum(node: Node, a):
    # jnp.sum of f16/bf16 accumulates in float32 and rounds once, as Keras' ops.sum does.
    return jnp.sum(a).astype(numpy_dtype(node.dtype))


def _mod(node: Node, a, b):
    # Python-style modulo; x % 0 is 0 (the IR's definition, as NumPy gives).
    return jnp.where(b == 0, jnp.zeros_like(a), jnp.remainder(a, jnp.where(b == 0, 1, b)))


def _floordiv(node: Node, a, b):
    return jnp.where(b == 0, jnp.zeros_like(a), jnp.floor_divide(a, jnp.where(b == 0, 1, b)))


JAX_LOWERING: dict[Op, Callable | None] = {
    Op.CAST: _cast,
    Op.NEG: _unary(jnp.negative),
    Op.SQRT: _unary(jnp.sqrt),
    Op.FLOOR: _unary(jnp.floor),
    Op.CEIL: _unary(jnp.ceil),
    Op.COS: _unary(jnp.cos),
    Op.LOG: _unary(jnp.log),
    Op.ADD: _binary(jnp.add),
    Op.SUB: _binary(jnp.subtract),
    Op.MUL: _binary(jnp.multiply),
    Op.DIV: _binary(jnp.divide),
    Op.POW: _binary(jnp.power),
    Op.MAX: _binary(jnp.maximum),
    Op.MIN: _binary(jnp.minimum),
    Op.MOD: _mod,
    Op.FLOORDIV: _floordiv,
    Op.LT: _binary(jnp.less),
    Op.LE: _binary(jnp.less_equal),
    Op.EQ: _binary(jnp.equal),
    Op.NE: _binary(jnp.not_equal),
    Op.SELECT: lambda node, c, a, b: jnp.where(c, a, b),
    Op.REDUCE_SUM: _reduce_sum,
    Op.GLOBAL_SUM: None,  # XLA's sum of the [T] vector; see _global_sum
    Op.INPUT: None,       # bound from the caller
    Op.CONST: None,       # its attribute, as a typed constant
}


def _index(value: Value, shape: str, i: int) -> Value:
    return value[i] if shape in ("T", "N") else value


def _global_sum(values: Value, n_tensors: int, dtype) -> Value:
    """The per-tensor values of a tree added up as Keras' ops.sum(ops.stack(...)) does: XLA's
    sum of the stacked [T] vector, in float32 and rounded once to the dtype. That is in order up
    to 32 values and in windows of 32 beyond (semantics page, rule 4), the same reduction the
    oracle asks XLA-CPU for (xla_cpu.sum_f32), and one op for XLA however large the tree."""
    if n_tensors == 0:
        return jnp.zeros((), dtype)
    return jnp.sum(jax.lax.optimization_barrier(jnp.asarray(values).astype(jnp.float32))).astype(dtype)


GlobalSum = Callable[[Value, int, Any], Value]  # (the [T] values, T, dtype) -> their sum

# XLA may keep a float16/bfloat16 value in float32 from one op to the next
# (xla_allow_excess_precision, on by default), dropping roundings that Keras' eager ops and
# the IR make after every op; the step's own jits turn that off. f32 programs are unchanged.
STEP_COMPILER_OPTIONS = {"xla_allow_excess_precision": False}


# The cpu target's jits hold only the scalar part of the step and glue (its kernels are its
# own): LLVM's -O0 there keeps every scalar op rounded on its own (at -O2 it contracts a
# product and a sum into an FMA, barriers or not), as Keras' eager ops are. Within noise per
# call on a 1000-tensor tree (bench/bench_host_opt_level.py); untried on GPUs: cuda keeps -O2.
HOST_COMPILER_OPTIONS = {**STEP_COMPILER_OPTIONS, "xla_backend_optimization_level": 0}


def step_jit(fn: Callable, options: dict = STEP_COMPILER_OPTIONS) -> Callable:
    """jax.jit for a step function (params, grads, slots, step, ...): donates params and slots.
    Called inside the caller's own jit, it is a nested jit, which takes the caller's options
    (JAX accepts compiler options on the outermost jit only)."""
    top = jax.jit(fn, donate_argnums=(0, 2), compiler_options=options)
    nested = jax.jit(fn, donate_argnums=(0, 2))

    def call(params, grads, slots, step, *rest):
        probes = [x[0] if isinstance(x, (list, tuple)) and x else x for x in (params, grads, step)]
        traced = any(isinstance(x, jax.core.Tracer) for x in probes)
        return (nested if traced else top)(params, grads, slots, step, *rest)

    return call


def _eval(node: Node, args: list[Value], n_tensors: int, global_sum: GlobalSum) -> Value:
    value = _eval_op(node, args, n_tensors, global_sum)
    if node.shape in ("", "T"):
        # A scalar (or per-tensor) value is computed once a step, as Keras computes it: one
        # eager op at a time. Behind a barrier XLA cannot fold a constant into its consumer or
        # rewrite x / c as x * (1/c), which it does within one jit (a PolynomialDecay's
        # ceil(21 / 7) came out 4). XLA-CPU drops the barriers before fusion, so a product and
        # a sum can still become an FMA (see HOST_COMPILER_OPTIONS).
        return jax.lax.optimization_barrier(value)
    return value


def _eval_op(node: Node, args: list[Value], n_tensors: int, global_sum: GlobalSum) -> Value:
    if node.op is Op.CONST:
        return jnp.asarray(node.attr("value"), dtype=numpy_dtype(node.dtype))
    if node.op is Op.GLOBAL_SUM:
        return global_sum(args[0], n_tensors, numpy_dtype(node.dtype))
    rule = JAX_LOWERING[node.op]
    if node.op is Op.REDUCE_SUM:
        return jnp.stack([rule(node, a) for a in args[0]]) if n_tensors else jnp.zeros((0,), numpy_dtype(node.dtype))
    shapes = [o.shape for o in node.operands]
    if node.shape == "N":
        return [rule(node, *[_index(a, s, i) for a, s in zip(args, shapes)]) for i in range(n_tensors)]
    return rule(node, *args)


def run_function(fn: Function, inputs: dict[str, Value], n_tensors: int,
                 global_sum: GlobalSum = _global_sum) -> dict[str, Value]:
    """Evaluate `fn`; `global_sum` gives that op its meaning (run_groups sums across groups)."""
    env: dict[int, Value] = {}
    by_name = {n.attr("name"): inputs[n.attr("name")] for n in fn.inputs}
    for node in function_nodes(fn):
        if node.op is Op.INPUT:
            continue
        args = [by_name[o.attr("name")] if o.op is Op.INPUT else env[id(o)] for o in node.operands]
        env[id(node)] = _eval(node, args, n_tensors, global_sum)
    return {k: (by_name[v.attr("name")] if v.op is Op.INPUT else env[id(v)]) for k, v in fn.outputs}


KernelRunner = Callable[[Function, dict, int], "dict[str, Value] | None"]


def run_module(module: Module, inputs: dict[str, Value], n_tensors: int,
               runner: KernelRunner | None = None) -> dict[str, Value]:
    """Run the kernels in order. `runner` may take over a kernel (native targets run the
    elementwise and reduce kernels as custom calls); returning None leaves it to JAX."""
    env = dict(inputs)
    results: dict[str, Value] = {}
    for fn in module.functions:
        missing = [n.attr("name") for n in fn.inputs if n.attr("name") not in env]
        if missing:
            raise ValueError(f"@{fn.name}: missing inputs {missing}")
        out = runner(fn, env, n_tensors) if runner is not None else None
        if out is None:
            out = run_function(fn, env, n_tensors)
        env.update(out)
        results.update(out)
    return results


@dataclass(frozen=True)
class Group:
    """One param dtype's share of a step: its module, named inputs, and the tree's leaf indices it
    holds (in group order); `runner` may take over its kernels, as for run_module."""
    module: Module
    inputs: dict
    leaves: tuple[int, ...]
    runner: KernelRunner | None = None


def run_groups(groups: list[Group]) -> list[dict[str, Value]]:
    """One step over every dtype group of a tree. Each group's module runs on its own, except
    that a global_sum adds the per-tensor values of every group in the tree's leaf order (Keras
    stacks the sums of all variables): each group runs up to the scalar function holding it, that
    function's global_sum operand is gathered from every group (a first evaluation that only
    records it), and the total is handed to each group's second evaluation of the function."""
    splits = [_split_at_global_sum(g.module) for g in groups]
    if len(groups) == 1 or all(split is None for split in splits):
        return [run_module(g.module, g.inputs, len(g.leaves), g.runner) for g in groups]
    if any(split is None for split in splits):
        raise ValueError("the modules of one step disagree about a global_sum")
    envs = [dict(g.inputs) for g in groups]
    results: list[dict[str, Value]] = [{} for _ in groups]

    def run(j: int, fn: Function, global_sum: GlobalSum = _global_sum) -> None:
        runner, n = groups[j].runner, len(groups[j].leaves)
        out = runner(fn, envs[j], n) if runner is not None and fn.attr("kind") != "scalar" else None
        out = out if out is not None else run_function(fn, envs[j], n, global_sum)
        envs[j].update(out)
        results[j].update(out)

    for j, (before, _, _) in enumerate(splits):
        for fn in before:
            run(j, fn)
    parts: list[Value] = [None] * len(groups)
    for j, (_, holder, _) in enumerate(splits):
        def record(values, n, dtype, j=j):
            parts[j] = values
            return jnp.zeros((), dtype)
        run_function(holder, envs[j], len(groups[j].leaves), record)
    dtypes = {jnp.asarray(v).dtype for v in parts}
    if len(dtypes) != 1:
        raise ValueError(f"the groups' global_sum operands have several dtypes {sorted(map(str, dtypes))}")
    order = np.argsort(np.concatenate([g.leaves for g in groups]), kind="stable")
    total = _global_sum(jnp.concatenate(parts)[order], len(order), dtypes.pop())
    for j, (_, holder, after) in enumerate(splits):
        run(j, holder, lambda values, n, dtype: total.astype(dtype))
        for fn in after:
            run(j, fn)
    return results


def _split_at_global_sum(module: Module) -> tuple[list[Function], Function, list[Function]] | None:
    """(the functions before, the scalar function holding the module's one global_sum, after)."""
    at = [i for i, fn in enumerate(module.functions)
          if any(node.op is Op.GLOBAL_SUM for node in function_nodes(fn))]
    if not at:
        return None
    fns = list(module.functions)
    if len(at) > 1 or fns[at[0]].attr("kind") != "scalar":
        raise ValueError("a module's global_sum must be in one scalar function")
    return fns[:at[0]], fns[at[0]], fns[at[0] + 1:]


def emit_jaxpr(module: Module, n: int = 8) -> str:
    """The JAX computation of a module for one tensor of `n` elements, as jaxpr text."""
    dtype = numpy_dtype(dict(module.attrs)["dtype"])
    names = sorted({i.attr("name"): i for f in module.functions for i in f.inputs
                    if not i.attr("name").startswith("x")}.items())

    def step(**kw):
        inputs = {k: ([v] if node.shape == "N" else v) for (k, node), v in zip(names, kw.values())}
        out = run_module(module, inputs, 1)
        return {k: (v[0] if isinstance(v, list) else v) for k, v in out.items() if not k.startswith("x")}

    shape_of = {"N": (n,), "T": (1,), "": ()}  # one tensor of n elements
    args = {k: jnp.zeros(shape_of[node.shape], dtype if node.shape == "N" else numpy_dtype(node.dtype))
            for k, node in names}
    return str(jax.make_jaxpr(lambda *a: step(**dict(zip(args, a))))(*args.values()))



class JaxExecutor:
    """Runs the fused modules (one per param dtype) under one jax.jit that donates params and slots."""

    def __init__(self, spec, module_for: Callable[[str], Module]) -> None:
        self.spec = spec
        self._module_for = module_for
        self._modules: dict[str, Module] = {}
        self._jitted = step_jit(self._step)
        self.exported: dict[str, Any] = {}   # dtype -> jax.export.Exported flat step (artifacts)
        self._exported_calls: dict[str, Callable] = {}

    def module(self, dtype: str) -> Module:
        if dtype not in self._modules:
            self._modules[dtype] = self._module_for(dtype)
        return self._modules[dtype]

    def variants(self, dtypes) -> dict[str, str]:
        """param dtype -> the module variant its group runs in a tree of these dtypes."""
        norm = norm_dtype_for(self.spec, dtypes)
        return {d: variant(d, norm) for d in dtypes}

    def step(self, params: list, grads: list, slots: dict[str, list], step, runtime: dict):
        groups = _group_by_dtype(params)
        flat_dtype = next(iter(groups)) if len(params) == 1 and jnp.ndim(params[0]) == 1 else None
        if flat_dtype in self.exported:
            return self._run_exported(flat_dtype, params, grads, slots, step, runtime)
        for name in self.variants(groups).values():
            self._prepare(name)
        return self._jitted(params, grads, slots, step, runtime)

    def _prepare(self, name: str) -> None:
        """Make module `name` (and what runs it) ready before the step is traced."""
        self.module(name)

    def _runner_for(self, dtype: str) -> KernelRunner | None:
        return None

    def _run_exported(self, dtype, params, grads, slots, step, runtime):
        """The flat fast path of an artifact: its jax.export'ed step, no tracing of the IR."""
        if dtype not in self._exported_calls:
            self._exported_calls[dtype] = step_jit(self.exported[dtype].call)
        names = list(slots)
        p, new_slots, new_step = self._exported_calls[dtype](
            params[0], grads[0], tuple(slots[k][0] for k in names), step, group_scalars(runtime, dtype))
        return [p], {k: [v] for k, v in zip(names, new_slots)}, new_step

    def _step(self, params, grads, slots, step, runtime):
        new_params = list(params)
        new_slots = {k: list(v) for k, v in slots.items()}
        new_step = step + 1
        by_dtype = _group_by_dtype(params)
        names = self.variants(by_dtype)
        groups = [Group(self._modules[names[dtype]],
                        step_inputs(self.spec, step, runtime, [params[i] for i in idx], [grads[i] for i in idx],
                                    {k: [v[i] for i in idx] for k, v in slots.items()}, tuple(idx)),
                        tuple(idx), self._runner_for(names[dtype]))
                  for dtype, idx in by_dtype.items()]
        for idx, out in zip(by_dtype.values(), run_groups(groups)):
            new_step = out["step"]
            for j, i in enumerate(idx):
                new_params[i] = out["param"][j]
                for k in new_slots:
                    new_slots[k][i] = out[k][j]
        return new_params, new_slots, new_step


def step_inputs(spec, step, runtime: dict, params: list, grads: list, slots: dict[str, list],
                leaves: tuple[int, ...]) -> dict:
    """The named inputs of a fused module for one group of same-dtype tensors (`leaves`: their
    indices in the tree): grads cast to the param dtype (as Keras casts them), the group's part of
    the tree's weight-decay mask, and a one-argument learning-rate callable traced here."""
    for j, (g, p) in enumerate(zip(grads, params)):
        # Traced once per set of shapes, before any buffer is donated: a wrong gradient leaves
        # the caller's params and state as they were.
        if jnp.shape(g) != jnp.shape(p):
            raise ValueError(f"the gradient of leaf {leaves[j]} has shape {tuple(jnp.shape(g))}, its param "
                             f"{tuple(jnp.shape(p))}; each gradient must have its param's shape")
    runtime = group_scalars(runtime, ir_dtype(params[0].dtype))
    inputs = {"step": step, **runtime, "param": params,
              "grad": [jnp.asarray(g).astype(p.dtype) for g, p in zip(grads, params)], **slots}
    if "decay" in runtime:
        inputs["decay"] = jnp.asarray(runtime["decay"])[np.asarray(leaves, np.int32)]
    if takes_single(spec):
        inputs["single"] = single_flags(params)
    if spec.lr_kind == "callable" and spec.lr_callable_arity == 1:
        inputs["lr"] = jnp.asarray(spec.learning_rate(step), jnp.float32)
    return inputs


def single_flags(params: list):
    """Per tensor, 1.0 where it has one element (Keras divides it by a scalar exactly, lower.py
    _Ctx.scale) else 0.0: a NumPy constant for concrete shapes, traced from a symbolic size
    (an exported flat step's n)."""
    sizes = [math.prod(jnp.shape(p)) for p in params]
    if all(isinstance(n, int) for n in sizes):
        return np.array([n == 1 for n in sizes], np.float32)
    return jnp.stack([jnp.asarray(n) == 1 for n in sizes]).astype(jnp.float32)


def group_scalars(runtime: dict, dtype: str) -> dict:
    """The runtime scalars of one dtype's module: its `lr@<dtype>` (runtime.lr_per_dtype)
    stands in for lr; the other dtypes' are dropped."""
    if not any(key.startswith("lr@") for key in runtime):
        return runtime
    out = {key: value for key, value in runtime.items() if not key.startswith("lr@")}
    if f"lr@{dtype}" in runtime:
        out["lr"] = runtime[f"lr@{dtype}"]
    return out


def _group_by_dtype(leaves: list) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, leaf in enumerate(leaves):
        groups.setdefault(ir_dtype(leaf.dtype), []).append(i)
    return groups
