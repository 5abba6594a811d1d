"""fuse: partition the step function into kernels.

Each node gets a stage: the number of reductions on its longest path from the inputs.
  - scalar and per-tensor nodes of stage s run in kernel `scalars<s>` (tiny, host-side math);
  - the reductions of stage s run in kernel `reduce<s>`, which recomputes the elementwise cone
    feeding them (recomputing is cheaper than a store and a load in a memory-bound step);
  - every elementwise output runs in one final kernel `update`.
Order: scalars0, reduce1, scalars1, ..., update. A plain Adam step is `scalars0` + `update`;
clipping by norm adds exactly one reduction kernel. Values crossing kernels become named
inputs/outputs `x0`, `x1`, ... numbered in topological order of the step function.
"""
from __future__ import annotations

from adamgen.ir.node import Function, Module, Node, make_input, topo_order
from adamgen.ir.ops import LEAVES, Op

NAME = "fuse"
UPDATE = ("update", 1 << 30, 2)


def _kernel_key(node: Node, stage: int) -> tuple | None:
    """The kernel that owns a node; None for values recomputed wherever used."""
    if node.op in LEAVES or node.shape == "N":
        return None
    if node.op is Op.REDUCE_SUM:
        return ("reduce", stage, 0)
    return ("scalars", stage, 1)


def fuse(module: Module) -> Module:
    if len(module.functions) != 1 or module.functions[0].attr("kind") != "step":
        raise ValueError("fuse expects one unfused function of kind 'step'")
    fn = module.functions[0]
    order = topo_order([v for _, v in fn.outputs])
    stage: dict[int, int] = {}
    home: dict[int, tuple | None] = {}
    for node in order:
        s = max((stage[id(o)] for o in node.operands), default=0)
        stage[id(node)] = s + 1 if node.op is Op.REDUCE_SUM else s
        home[id(node)] = _kernel_key(node, stage[id(node)])
    boundary_names = {}
    for node in order:
        if home[id(node)] is not None:
            boundary_names[id(node)] = f"x{len(boundary_names)}"

    roots: dict[tuple, list[tuple[str, Node]]] = {UPDATE: []}
    for name, value in fn.outputs:
        key = home[id(value)] if value.shape != "N" else UPDATE
        if key is None:
            raise ValueError(f"output {name!r} is a constant or an input; nothing to compute")
        roots.setdefault(key, []).append((name, value))
    for node in order:
        if node.op is Op.REDUCE_SUM:
            roots.setdefault(home[id(node)], []).append((boundary_names[id(node)], node))

    all_keys = {k for k in home.values() if k is not None} | {UPDATE}
    kernels: list[Function] = []
    for key in sorted(all_keys, key=lambda k: (k[1], k[2]), reverse=True):
        outs = _dedupe(roots.get(key, []))
        if not outs:
            continue
        body, needed = _cut(outs, key, home, boundary_names, fn)
        for node in needed:
            roots.setdefault(home[id(node)], []).append((boundary_names[id(node)], node))
        kernels.append(body)
    kernels.reverse()
    return module.replace(functions=tuple(kernels))


def _dedupe(outs: list[tuple[str, Node]]) -> list[tuple[str, Node]]:
    seen, result = set(), []
    for name, node in outs:
        if name not in seen:
            seen.add(name)
            result.append((name, node))
    return result


def _cut(outs, key, home, boundary_names, step_fn: Function) -> tuple[Function, list[Node]]:
    """Copy the cone of `outs` that belongs to kernel `key`; other kernels' values become inputs."""
    new: dict[int, Node] = {}
    needed: dict[int, Node] = {}

    def copy(node: Node) -> Node:
        if id(node) in new:
            return new[id(node)]
        owner = home[id(node)]
        if owner is not None and owner != key:
            needed[id(node)] = node
            new[id(node)] = make_input(boundary_names[id(node)], node.dtype, node.shape)
            return new[id(node)]
        ops = tuple(copy(o) for o in node.operands)
        new[id(node)] = node if all(a is b for a, b in zip(ops, node.operands)) else node.replace(operands=ops)
        return new[id(node)]

    for _, root in outs:
        copy(root)
    boundary_inputs = {i: new[i] for i in needed}
    used_step_inputs = {n.attr("name") for n in topo_order([new[id(n)] for _, n in outs]) if n.op is Op.INPUT}
    inputs = [n for n in step_fn.inputs if n.attr("name") in used_step_inputs]
    inputs += list(boundary_inputs.values())
    kind = {"scalars": "scalar", "reduce": "reduce", "update": "elementwise"}[key[0]]
    name = "update" if key[0] == "update" else f"{key[0]}{key[1]}"
    body = Function(name, tuple(inputs), tuple((k, new[id(n)]) for k, n in outs), (("kind", kind),))
    return body, list(needed.values())
