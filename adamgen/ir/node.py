"""IR nodes: frozen, hashable, structurally compared values; functions and modules.

A value has a dtype and one of three shapes:
  ""  scalar, one value per step                  printed  f32
  "T" per-tensor, one value per tensor of the tree printed  f32[T]
  "N" elementwise, one value per element          printed  f32[N]
Elementwise ops broadcast scalar -> per-tensor -> elementwise.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from adamgen.dtypes import NUMPY_DTYPES
from adamgen.ir.ops import Op

SHAPES = ("", "T", "N")
SHAPE_RANK = {s: i for i, s in enumerate(SHAPES)}


@dataclass(frozen=True)
class Type:
    dtype: str
    shape: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in NUMPY_DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; allowed: {sorted(NUMPY_DTYPES)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; allowed: {SHAPES}")

    def __str__(self) -> str:
        return f"{self.dtype}[{self.shape}]" if self.shape else self.dtype


def broadcast_shape(*shapes: str) -> str:
    return max(shapes, key=SHAPE_RANK.__getitem__) if shapes else ""


@dataclass(frozen=True, eq=False)
class Node:
    """One SSA value. `attrs` holds ("name", str) for INPUT and ("value", np scalar) for CONST."""

    op: Op
    type: Type
    operands: tuple["Node", ...] = ()
    attrs: tuple[tuple[str, Any], ...] = ()
    _hash: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.op, self.type, self.attrs, self.operands)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Node) or self._hash != other._hash:
            return False
        return (self.op == other.op and self.type == other.type and _attrs_eq(self.attrs, other.attrs)
                and len(self.operands) == len(other.operands)
                and all(a == b for a, b in zip(self.operands, other.operands)))

    def attr(self, key: str) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        raise KeyError(f"{self.op.value} node has no attribute {key!r}")

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def shape(self) -> str:
        return self.type.shape

    def replace(self, **changes: Any) -> "Node":
        return dataclasses.replace(self, **changes)


def _attrs_eq(a: tuple, b: tuple) -> bool:
    if len(a) != len(b):
        return False
    for (ka, va), (kb, vb) in zip(a, b):
        if ka != kb or type(va) is not type(vb):
            return False
        if isinstance(va, np.generic):
            if va.tobytes() != vb.tobytes():  # bitwise: -0.0 != 0.0, nan == nan
                return False
        elif va != vb:
            return False
    return True


def const_value(dtype: str, value: Any) -> np.generic:
    return np.asarray(value).astype(NUMPY_DTYPES[dtype])[()]


def make_const(value: Any, dtype: str, shape: str = "") -> Node:
    """A constant of `dtype`; `value` is converted (rounded) to the dtype once, here."""
    return Node(Op.CONST, Type(dtype, shape), (), (("value", const_value(dtype, value)),))


def make_input(name: str, dtype: str, shape: str = "") -> Node:
    return Node(Op.INPUT, Type(dtype, shape), (), (("name", name),))


@dataclass(frozen=True)
class Function:
    """A named function: inputs (INPUT nodes, in order), named outputs, and string attributes."""

    name: str
    inputs: tuple[Node, ...]
    outputs: tuple[tuple[str, Node], ...]
    attrs: tuple[tuple[str, str], ...] = ()

    def output(self, name: str) -> Node:
        for n, v in self.outputs:
            if n == name:
                return v
        raise KeyError(f"function @{self.name} has no output {name!r}")

    def attr(self, key: str, default: str | None = None) -> str | None:
        return dict(self.attrs).get(key, default)

    def replace(self, **changes: Any) -> "Function":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Module:
    """An ordered list of functions. Before fusion: one function. After: one per kernel."""

    functions: tuple[Function, ...]
    attrs: tuple[tuple[str, str], ...] = ()

    def function(self, name: str) -> Function:
        for f in self.functions:
            if f.name == name:
                return f
        raise KeyError(f"module has no function @{name}")

    def replace(self, **changes: Any) -> "Module":
        return dataclasses.replace(self, **changes)


def topo_order(roots: tuple[Node, ...] | list[Node]) -> list[Node]:
    """All nodes reachable from `roots`, operands before users, in first-visit order."""
    seen: set[int] = set()
    order: list[Node] = []
    for root in roots:
        _visit(root, seen, order)
    return order


def _visit(root: Node, seen: set[int], order: list[Node]) -> None:
    stack: list[tuple[Node, Iterator[Node]]] = [(root, iter(root.operands))]
    if id(root) in seen:
        return
    seen.add(id(root))
    while stack:
        node, it = stack[-1]
        child = next(it, None)
        if child is None:
            stack.pop()
            order.append(node)
        elif id(child) not in seen:
            seen.add(id(child))
            stack.append((child, iter(child.operands)))


def function_nodes(fn: Function) -> list[Node]:
    """Topological order of a function: its inputs first (in declared order), then the rest."""
    order = topo_order([v for _, v in fn.outputs])
    return list(fn.inputs) + [n for n in order if n.op is not Op.INPUT]


def reachable_inputs(fn: Function) -> list[Node]:
    """INPUT nodes the outputs reach (possibly distinct objects equal to declared inputs)."""
    return [n for n in topo_order([v for _, v in fn.outputs]) if n.op is Op.INPUT]
