"""fold_constants: evaluate ops whose operands are all constants, in the op's dtype.

This is the specialization pass: the spec's numbers were lowered as constants, so every
expression of them (1/s, 1 - beta computed in D, beta^t when t is known, ...) becomes one constant.
Evaluation uses the NumPy interpreter's implementation of the op, so folding rounds exactly as
the unfolded op would at run time; never Python float arithmetic.
"""
from __future__ import annotations

import numpy as np

from adamgen.ir.interp import NUMPY_IMPL
from adamgen.ir.node import Module, Node, make_const
from adamgen.ir.ops import ELEMENTWISE, Op
from adamgen.passes.rewrite import rewrite_module

NAME = "fold_constants"


def fold_all_const(node: Node) -> Node | None:
    # op(c1, ..., cn) -> c  where c = op evaluated in the result dtype
    if node.op not in ELEMENTWISE or not all(o.op is Op.CONST for o in node.operands):
        return None
    with np.errstate(all="ignore"):
        value = NUMPY_IMPL[node.op](node, *(o.attr("value") for o in node.operands))
    return make_const(np.asarray(value), node.dtype)


RULES = [fold_all_const]


def fold_constants(module: Module) -> Module:
    return rewrite_module(module, RULES)
