"""The closed op set of the adamgen IR, with the facts passes and verifiers need.

Text form of each op (see `adamgen.ir.printer`):
  %x = input "grad" : f32[N]          a named input of the function
  %x = const 0.9 : f32                a constant, stored in its dtype
  %x = cast %a : bf16[N]              convert to the result dtype
  %x = <unary> %a : T                 neg sqrt floor ceil cos log
  %x = <binary> %a, %b : T            add sub mul div pow max min mod floordiv
  %x = <compare> %a, %b : bool[...]   lt le eq ne
  %x = select %c, %a, %b : T          c ? a : b, elementwise
  %x = reduce_sum %a : f32[T]         per-tensor sum (accumulates in f32, rounds once)
  %x = global_sum %a : f32            sum of the per-tensor values of the whole tree as XLA adds a
                                       stacked vector (Keras' ops.sum(ops.stack)), f32, rounded once
"""
from __future__ import annotations

from enum import Enum


class Op(Enum):
    # leaves
    INPUT = "input"
    CONST = "const"
    # unary
    CAST = "cast"
    NEG = "neg"
    SQRT = "sqrt"
    FLOOR = "floor"
    CEIL = "ceil"
    COS = "cos"
    LOG = "log"
    # binary arithmetic
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    POW = "pow"
    MAX = "max"
    MIN = "min"
    MOD = "mod"
    FLOORDIV = "floordiv"
    # comparisons (result bool)
    LT = "lt"
    LE = "le"
    EQ = "eq"
    NE = "ne"
    # ternary
    SELECT = "select"
    # reductions
    REDUCE_SUM = "reduce_sum"
    GLOBAL_SUM = "global_sum"


LEAVES = frozenset({Op.INPUT, Op.CONST})
UNARY = frozenset({Op.CAST, Op.NEG, Op.SQRT, Op.FLOOR, Op.CEIL, Op.COS, Op.LOG})
BINARY = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.POW, Op.MAX, Op.MIN, Op.MOD, Op.FLOORDIV})
COMPARE = frozenset({Op.LT, Op.LE, Op.EQ, Op.NE})
REDUCTIONS = frozenset({Op.REDUCE_SUM, Op.GLOBAL_SUM})
ELEMENTWISE = UNARY | BINARY | COMPARE | {Op.SELECT}
COMMUTATIVE = frozenset({Op.ADD, Op.MUL, Op.MAX, Op.MIN, Op.EQ, Op.NE})
INT_ONLY = frozenset({Op.MOD, Op.FLOORDIV})
FLOAT_ONLY = frozenset({Op.SQRT, Op.FLOOR, Op.CEIL, Op.COS, Op.LOG, Op.POW, Op.DIV})
# Every op is pure: DCE may delete any node no output reaches. (No op has side effects;
# outputs are named on the function, not by ops.)
PURE = frozenset(Op)

ARITY: dict[Op, int] = {
    **{op: 0 for op in LEAVES},
    **{op: 1 for op in UNARY},
    **{op: 2 for op in BINARY | COMPARE},
    Op.SELECT: 3,
    Op.REDUCE_SUM: 1,
    Op.GLOBAL_SUM: 1,
}
assert set(ARITY) == set(Op)

BY_NAME: dict[str, Op] = {op.value: op for op in Op}
