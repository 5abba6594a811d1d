"""NumPy interpreter for the IR at any stage: one implementation per op, in the op's dtype.

Runtime values: a scalar is a 0-d NumPy value; a per-tensor value ("T") is a 1-d array with one
entry per tensor; an elementwise value ("N") is a list with one array per tensor.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from adamgen import xla_cpu
from adamgen.dtypes import numpy_dtype
from adamgen.ir.node import Function, Module, Node, function_nodes
from adamgen.ir.ops import Op

Value = Any


def _unary(fn: Callable) -> Callable:
    return lambda node, a: fn(a)


def _binary(fn: Callable) -> Callable:
    return lambda node, a, b: fn(a, b)


def _cast(node: Node, a):
    return np.asarray(a).astype(numpy_dtype(node.dtype))


def _select(node: Node, c, a, b):
    return np.where(c, a, b).astype(numpy_dtype(node.dtype))


def _reduce_sum(node: Node, a):
    # Accumulate in float32 (as jnp.sum does for f16/bf16), round once to the dtype.
    return np.float32(np.sum(np.asarray(a, dtype=np.float32))).astype(numpy_dtype(node.dtype))


NUMPY_IMPL: dict[Op, Callable] = {
    Op.CAST: _cast,
    Op.NEG: _unary(np.negative),
    Op.SQRT: _unary(np.sqrt),
    Op.FLOOR: _unary(np.floor),
    Op.CEIL: _unary(np.ceil),
    Op.COS: _unary(lambda a: xla_cpu.unary("cos", a)),  # XLA-CPU's own, as Keras (adamgen/xla_cpu.py)
    Op.LOG: _unary(lambda a: xla_cpu.unary("log", a)),
    Op.ADD: _binary(np.add),
    Op.SUB: _binary(np.subtract),
    Op.MUL: _binary(np.multiply),
    Op.DIV: _binary(np.divide),
    Op.POW: _binary(xla_cpu.power),
    Op.MAX: _binary(np.maximum),
    Op.MIN: _binary(np.minimum),
    Op.MOD: _binary(np.mod),
    Op.FLOORDIV: _binary(np.floor_divide),
    Op.LT: _binary(np.less),
    Op.LE: _binary(np.less_equal),
    Op.EQ: _binary(np.equal),
    Op.NE: _binary(np.not_equal),
    Op.SELECT: _select,
    Op.REDUCE_SUM: _reduce_sum,
    Op.GLOBAL_SUM: None,  # XLA's sum of the stacked values; handled in _eval_node
    Op.INPUT: None,       # bound from the caller's inputs
    Op.CONST: None,       # its attribute
}


def _per_tensor(value: Value, shape: str, i: int) -> Value:
    return value[i] if shape in ("T", "N") else value


def _eval_node(node: Node, args: list[Value], n_tensors: int) -> Value:
    if node.op is Op.CONST:
        return node.attr("value")
    if node.op is Op.GLOBAL_SUM:
        # Keras' ops.sum(ops.stack(...)): XLA's order (in sequence up to 32 values, windows of 32
        # beyond), accumulated in float32 and rounded once to the dtype.
        if not n_tensors:
            return numpy_dtype(node.dtype).type(0)
        return np.asarray(xla_cpu.sum_f32(np.asarray(args[0], np.float32))).astype(numpy_dtype(node.dtype))[()]
    impl = NUMPY_IMPL[node.op]
    shapes = [o.shape for o in node.operands]
    if node.op is Op.REDUCE_SUM:
        return np.array([impl(node, a) for a in args[0]], dtype=numpy_dtype(node.dtype))
    if node.shape == "N":
        return [_rounded(node, impl(node, *[_per_tensor(a, s, i) for a, s in zip(args, shapes)]))
                for i in range(n_tensors)]
    return _rounded(node, impl(node, *args))


def _rounded(node: Node, value: Value) -> Value:
    arr = np.asarray(value)
    want = numpy_dtype(node.dtype)
    if arr.dtype != want:
        raise TypeError(f"{node.op.value} produced {arr.dtype}, expected {want} (operands not in one dtype?)")
    return arr if arr.ndim else arr[()]


def run_function(fn: Function, inputs: dict[str, Value], n_tensors: int) -> dict[str, Value]:
    """Evaluate `fn`; `inputs` maps input names to runtime values (see module docstring)."""
    missing = [n.attr("name") for n in fn.inputs if n.attr("name") not in inputs]
    if missing:
        raise ValueError(f"@{fn.name}: missing inputs {missing}")
    env: dict[int, Value] = {}
    by_name = {n.attr("name"): inputs[n.attr("name")] for n in fn.inputs}
    with np.errstate(all="ignore"):
        for node in function_nodes(fn):
            if node.op is Op.INPUT:
                env[id(node)] = by_name[node.attr("name")]
                continue
            args = [by_name[o.attr("name")] if o.op is Op.INPUT else env[id(o)] for o in node.operands]
            env[id(node)] = _eval_node(node, args, n_tensors)
    return {k: (by_name[v.attr("name")] if v.op is Op.INPUT else env[id(v)]) for k, v in fn.outputs}


def run_module(module: Module, inputs: dict[str, Value], n_tensors: int) -> dict[str, Value]:
    """Run every function in order; each function's outputs become inputs of later ones."""
    env = dict(inputs)
    results: dict[str, Value] = {}
    for fn in module.functions:
        out = run_function(fn, env, n_tensors)
        env.update(out)
        results.update(out)
    return results
