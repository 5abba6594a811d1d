"""The one rewrite driver: local rules applied bottom-up to a fixpoint.

A rule is `fn(node) -> Node | None` (None = no match). Rules see a node whose operands were
already rewritten. The driver rebuilds only what changed and keeps function inputs as they are.
"""
from __future__ import annotations

from typing import Callable, Sequence

from adamgen.ir.node import Function, Module, Node, topo_order

Rule = Callable[[Node], "Node | None"]
MAX_ROUNDS = 100


def rewrite_node(root_nodes: Sequence[Node], rules: Sequence[Rule]) -> dict[int, Node]:
    """Map id(old node) -> rewritten node for everything reachable from `root_nodes`."""
    new: dict[int, Node] = {}
    for node in topo_order(list(root_nodes)):
        ops = tuple(new[id(o)] for o in node.operands)
        cur = node if all(a is b for a, b in zip(ops, node.operands)) else node.replace(operands=ops)
        new[id(node)] = _fixpoint(cur, rules)
    return new


def _fixpoint(node: Node, rules: Sequence[Rule]) -> Node:
    for _ in range(MAX_ROUNDS):
        for rule in rules:
            out = rule(node)
            if out is not None and out is not node:
                if out.type != node.type:
                    raise AssertionError(f"rule {rule.__name__} changed type {node.type} -> {out.type}")
                node = out
                break
        else:
            return node
    raise RuntimeError(f"rewrite rules did not converge on {node.op.value}")


def rewrite_function(fn: Function, rules: Sequence[Rule]) -> Function:
    new = rewrite_node([v for _, v in fn.outputs], rules)
    return fn.replace(outputs=tuple((k, new[id(v)]) for k, v in fn.outputs))


def rewrite_module(module: Module, rules: Sequence[Rule]) -> Module:
    return module.replace(functions=tuple(rewrite_function(f, rules) for f in module.functions))
