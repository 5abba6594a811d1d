"""simplify: algebraic identities that hold bit-for-bit in IEEE arithmetic.

No rule reassociates or changes rounding; x + 0 -> x is absent on purpose (-0 + 0 = +0), and
so is x - x -> 0 (inf - inf = nan; the global clip relies on N - N).
"""
from __future__ import annotations

import numpy as np

from adamgen.ir.node import Module, Node
from adamgen.ir.ops import Op
from adamgen.passes.rewrite import rewrite_module

NAME = "simplify"


def _is_const(node: Node, value) -> bool:
    if node.op is not Op.CONST:
        return False
    v = node.attr("value")
    return bool(v == value) and not (value == 0 and np.signbit(v))


def cast_same_dtype(node: Node) -> Node | None:
    # cast<T>(x : T) -> x
    if node.op is Op.CAST and node.operands[0].type == node.type:
        return node.operands[0]
    return None


def mul_one(node: Node) -> Node | None:
    # x * 1 -> x,  1 * x -> x   (when the result keeps x's shape)
    if node.op is not Op.MUL:
        return None
    a, b = node.operands
    if _is_const(b, 1) and a.type == node.type:
        return a
    if _is_const(a, 1) and b.type == node.type:
        return b
    return None


def div_one(node: Node) -> Node | None:
    # x / 1 -> x
    if node.op is Op.DIV and _is_const(node.operands[1], 1) and node.operands[0].type == node.type:
        return node.operands[0]
    return None


def sub_zero(node: Node) -> Node | None:
    # x - (+0) -> x
    if node.op is Op.SUB and _is_const(node.operands[1], 0) and node.operands[0].type == node.type:
        return node.operands[0]
    return None


def select_const(node: Node) -> Node | None:
    # select(true, a, b) -> a;  select(false, a, b) -> b
    if node.op is not Op.SELECT or node.operands[0].op is not Op.CONST:
        return None
    cond, a, b = node.operands
    pick = a if bool(cond.attr("value")) else b
    return pick if pick.type == node.type else None


def select_same(node: Node) -> Node | None:
    # select(c, a, a) -> a
    if node.op is Op.SELECT and node.operands[1] == node.operands[2] and node.operands[1].type == node.type:
        return node.operands[1]
    return None


def minmax_same(node: Node) -> Node | None:
    # max(x, x) -> x;  min(x, x) -> x
    if node.op in (Op.MAX, Op.MIN) and node.operands[0] == node.operands[1]:
        return node.operands[0]
    return None


RULES = [cast_same_dtype, mul_one, div_one, sub_zero, select_const, select_same, minmax_same]


def simplify(module: Module) -> Module:
    return rewrite_module(module, RULES)
