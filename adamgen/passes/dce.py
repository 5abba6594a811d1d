"""dce: drop function inputs that no output reads.

Nodes are reached from outputs, so unreachable nodes cannot exist; what can go dead is an
input (e.g. `grad` of a kernel that only needs per-tensor values). Inputs named in `keep` stay.
"""
from __future__ import annotations

from adamgen.ir.node import Function, Module, reachable_inputs

NAME = "dce"


def _dce_function(fn: Function) -> Function:
    used = {n.attr("name") for n in reachable_inputs(fn)}
    return fn.replace(inputs=tuple(n for n in fn.inputs if n.attr("name") in used))


def dce(module: Module) -> Module:
    return module.replace(functions=tuple(_dce_function(f) for f in module.functions))
