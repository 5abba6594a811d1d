"""The canonical text form of the IR. SSA names are given here, at print time, in order.

  module attributes {dtype = "f32"} {
  func @step(%grad: f32[N], %step: i32) attributes {kind = "step"} {
    %0 = const 0.9 : f32
    %1 = mul %grad, %0 : f32[N]
    return {param = %1}
  }
  }
Inputs keep their names (`%grad`); other values are numbered from 0 in topological order.
"""
from __future__ import annotations

import math

import numpy as np

from adamgen.ir.node import Function, Module, Node, function_nodes
from adamgen.ir.ops import Op


def format_const(value: np.generic) -> str:
    """Shortest text that parses back to the same value in its dtype."""
    f = float(value)
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if value.dtype.kind in "iub":
        return str(int(value)) if value.dtype.kind != "b" else ("true" if bool(value) else "false")
    if value.dtype in (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64)):
        return np.format_float_scientific(value, unique=True, trim="-") if _needs_sci(f) else \
            np.format_float_positional(value, unique=True, trim="-")
    return repr(f)  # bfloat16 and others: the exact double


def _needs_sci(f: float) -> bool:
    return f != 0.0 and (abs(f) < 1e-4 or abs(f) >= 1e16)


def _format_attrs(attrs: tuple[tuple[str, str], ...]) -> str:
    if not attrs:
        return ""
    body = ", ".join(f'{k} = "{v}"' for k, v in attrs)
    return f" attributes {{{body}}}"


# How each op prints its right-hand side, given its operand names: one entry per op.
def _pp_input(node: Node, names: list[str]) -> str:
    return f'input "{node.attr("name")}"'


def _pp_const(node: Node, names: list[str]) -> str:
    return f"const {format_const(node.attr('value'))}"


def _pp_generic(node: Node, names: list[str]) -> str:
    return f"{node.op.value} " + ", ".join(names)


PP = {op: _pp_generic for op in Op}
PP[Op.INPUT] = _pp_input
PP[Op.CONST] = _pp_const


def print_function(fn: Function) -> str:
    names: dict[int, str] = {}
    for node in fn.inputs:
        names[id(node)] = "%" + node.attr("name")
    params = ", ".join(f"{names[id(n)]}: {n.type}" for n in fn.inputs)
    lines = [f"func @{fn.name}({params}){_format_attrs(fn.attrs)} {{"]
    counter = 0
    for node in function_nodes(fn):
        if node.op is Op.INPUT:
            continue
        name = f"%{counter}"
        counter += 1
        names[id(node)] = name
        rhs = PP[node.op](node, [_name(o, names) for o in node.operands])
        lines.append(f"  {name} = {rhs} : {node.type}")
    rets = ", ".join(f"{k} = {_name(v, names)}" for k, v in fn.outputs)
    lines.append(f"  return {{{rets}}}")
    lines.append("}")
    return "\n".join(lines)


def _name(node: Node, names: dict[int, str]) -> str:
    return "%" + node.attr("name") if node.op is Op.INPUT else names[id(node)]


def print_module(module: Module) -> str:
    parts = [f"module{_format_attrs(module.attrs)} {{"]
    parts.extend(print_function(fn) for fn in module.functions)
    parts.append("}")
    return "\n".join(parts) + "\n"
