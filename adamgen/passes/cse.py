"""cse: structurally equal nodes become one node (hash-consing over the whole module)."""
from __future__ import annotations

from adamgen.ir.node import Function, Module, Node, topo_order

NAME = "cse"


def _cse_function(fn: Function) -> Function:
    canon: dict[Node, Node] = {n: n for n in fn.inputs}
    new: dict[int, Node] = {}
    for node in topo_order([v for _, v in fn.outputs]):
        ops = tuple(new[id(o)] for o in node.operands)
        cur = node if all(a is b for a, b in zip(ops, node.operands)) else node.replace(operands=ops)
        new[id(node)] = canon.setdefault(cur, cur)
    return fn.replace(outputs=tuple((k, new[id(v)]) for k, v in fn.outputs))


def cse(module: Module) -> Module:
    return module.replace(functions=tuple(_cse_function(f) for f in module.functions))
