"""A small builder that records IR nodes. It implements the ScalarMath protocol, so learning-rate
schedules written against that protocol lower straight into IR."""
from __future__ import annotations

from adamgen.ir.node import Node, Type, broadcast_shape, make_const, make_input
from adamgen.ir.ops import Op


class Builder:
    def __init__(self) -> None:
        self.inputs: list[Node] = []

    # -- leaves ---------------------------------------------------------------
    def input(self, name: str, dtype: str, shape: str = "") -> Node:
        node = make_input(name, dtype, shape)
        self.inputs.append(node)
        return node

    def const(self, value, dtype: str = "f32") -> Node:
        return make_const(value, dtype)

    # -- generic --------------------------------------------------------------
    def _elementwise(self, op: Op, *xs: Node, dtype: str | None = None) -> Node:
        dtypes = {x.dtype for x in xs}
        if op is not Op.SELECT and len(dtypes) != 1:
            raise TypeError(f"{op.value} on mixed dtypes {sorted(dtypes)}; cast explicitly")
        out = dtype or xs[-1].dtype
        return Node(op, Type(out, broadcast_shape(*(x.shape for x in xs))), tuple(xs))

    def cast(self, x: Node, dtype: str) -> Node:
        return Node(Op.CAST, Type(dtype, x.shape), (x,))

    def add(self, a: Node, b: Node) -> Node:
        return self._elementwise(Op.ADD, a, b)

    def sub(self, a: Node, b: Node) -> Node:
        return self._elementwise(Op.SUB, a, b)

    def mul(self, a: Node, b: Node) -> Node:
        return self._elementwise(Op.MUL, a, b)

    def div(self, a: Node, b: Node) -> Node:
        return self._elementwise(Op.DIV, a, b)

    def pow(self, a: Node, b: Node) -> Node:
        return self._elementwise(Op.POW, a, b)

    def mod(self, a: Node, b: Node) -> Node:
        return self._elementwise(Op.MOD, a, b)

    def floordiv(self, a: Node, b: Node) -> Node:
        return self._elementwise(Op.FLOORDIV, a, b)

    def maximum(self, a: Node, b: Node) -> Node:
        return self._elementwise(Op.MAX, a, b)

    def minimum(self, a: Node, b: Node) -> Node:
        return self._elementwise(Op.MIN, a, b)

    def neg(self, a: Node) -> Node:
        return self._elementwise(Op.NEG, a)

    def sqrt(self, a: Node) -> Node:
        return self._elementwise(Op.SQRT, a)

    def floor(self, a: Node) -> Node:
        return self._elementwise(Op.FLOOR, a)

    def ceil(self, a: Node) -> Node:
        return self._elementwise(Op.CEIL, a)

    def cos(self, a: Node) -> Node:
        return self._elementwise(Op.COS, a)

    def log(self, a: Node) -> Node:
        return self._elementwise(Op.LOG, a)

    def lt(self, a: Node, b: Node) -> Node:
        return self._elementwise(Op.LT, a, b, dtype="bool")

    def le(self, a: Node, b: Node) -> Node:
        return self._elementwise(Op.LE, a, b, dtype="bool")

    def eq(self, a: Node, b: Node) -> Node:
        return self._elementwise(Op.EQ, a, b, dtype="bool")

    def ne(self, a: Node, b: Node) -> Node:
        return self._elementwise(Op.NE, a, b, dtype="bool")

    def select(self, cond: Node, a: Node, b: Node) -> Node:
        if cond.dtype != "bool" or a.dtype != b.dtype:
            raise TypeError(f"select needs a bool condition and equal branch dtypes, got {cond.dtype}, {a.dtype}, {b.dtype}")
        return self._elementwise(Op.SELECT, cond, a, b)

    def reduce_sum(self, a: Node) -> Node:
        if a.shape != "N":
            raise TypeError("reduce_sum takes an elementwise value")
        return Node(Op.REDUCE_SUM, Type(a.dtype, "T"), (a,))

    def global_sum(self, a: Node) -> Node:
        if a.shape != "T":
            raise TypeError("global_sum takes a per-tensor value")
        return Node(Op.GLOBAL_SUM, Type(a.dtype, ""), (a,))
