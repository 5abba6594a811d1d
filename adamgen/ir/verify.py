"""The IR verifier: one typing rule per op kind, plus function-level structure checks."""
from __future__ import annotations

from adamgen.dtypes import FLOAT_DTYPES
from adamgen.ir.node import Function, Module, Node, broadcast_shape, function_nodes, reachable_inputs
from adamgen.ir import ops as O
from adamgen.ir.ops import Op


class VerifyError(ValueError):
    pass


def _fail(node: Node, msg: str) -> None:
    raise VerifyError(f"{node.op.value} : {node.type}: {msg}")


def _check_leaf(node: Node) -> None:
    key = "name" if node.op is Op.INPUT else "value"
    if len(node.attrs) != 1 or node.attrs[0][0] != key:
        _fail(node, f"needs exactly the attribute {key!r}")
    if node.op is Op.CONST and node.shape != "":
        _fail(node, "constants are scalars; they broadcast where used")


def _check_cast(node: Node) -> None:
    if node.operands[0].shape != node.shape:
        _fail(node, "cast keeps the shape")


def _check_same_dtype_elementwise(node: Node) -> None:
    dtypes = {o.dtype for o in node.operands}
    if len(dtypes) != 1:
        _fail(node, f"operands have mixed dtypes {sorted(dtypes)}; insert a cast")
    (dtype,) = dtypes
    if node.op in O.COMPARE:
        if node.dtype != "bool":
            _fail(node, "comparisons produce bool")
    elif node.dtype != dtype:
        _fail(node, f"result dtype must equal operand dtype {dtype}")
    if node.op in O.INT_ONLY and dtype != "i32":
        _fail(node, "integer-only op on a non-integer dtype")
    if node.op in O.FLOAT_ONLY and dtype not in FLOAT_DTYPES:
        _fail(node, "float-only op on a non-float dtype")


def _check_select(node: Node) -> None:
    cond, a, b = node.operands
    if cond.dtype != "bool":
        _fail(node, "select condition must be bool")
    if not (a.dtype == b.dtype == node.dtype):
        _fail(node, "select branches and result must share a dtype")


def _check_reduce(node: Node) -> None:
    (a,) = node.operands
    expect_in, expect_out = ("N", "T") if node.op is Op.REDUCE_SUM else ("T", "")
    if a.shape != expect_in or node.shape != expect_out:
        _fail(node, f"{node.op.value} maps shape {expect_in!r} to {expect_out!r}")
    if a.dtype != node.dtype or a.dtype not in FLOAT_DTYPES:
        _fail(node, "reductions keep a float dtype")


RULES = {
    **{op: _check_leaf for op in O.LEAVES},
    Op.CAST: _check_cast,
    **{op: _check_same_dtype_elementwise for op in (O.UNARY - {Op.CAST}) | O.BINARY | O.COMPARE},
    Op.SELECT: _check_select,
    Op.REDUCE_SUM: _check_reduce,
    Op.GLOBAL_SUM: _check_reduce,
}


def verify_node(node: Node) -> None:
    if len(node.operands) != O.ARITY[node.op]:
        _fail(node, f"takes {O.ARITY[node.op]} operands, got {len(node.operands)}")
    if node.op in O.ELEMENTWISE and node.shape != broadcast_shape(*(o.shape for o in node.operands)):
        _fail(node, "elementwise result shape must be the broadcast of its operands")
    RULES[node.op](node)


def verify_function(fn: Function) -> None:
    declared = {n.attr("name"): n.type for n in fn.inputs}
    names = [n.attr("name") for n in fn.inputs]
    if len(set(names)) != len(names):
        raise VerifyError(f"@{fn.name}: duplicate input names {names}")
    out_names = [k for k, _ in fn.outputs]
    if len(set(out_names)) != len(out_names):
        raise VerifyError(f"@{fn.name}: duplicate output names {out_names}")
    for node in reachable_inputs(fn):
        if declared.get(node.attr("name")) != node.type:
            raise VerifyError(f"@{fn.name}: input {node.attr('name')!r} : {node.type} is not a declared parameter")
    for node in function_nodes(fn):
        verify_node(node)


def verify_module(module: Module) -> None:
    seen = set()
    for fn in module.functions:
        if fn.name in seen:
            raise VerifyError(f"duplicate function @{fn.name}")
        seen.add(fn.name)
        verify_function(fn)
