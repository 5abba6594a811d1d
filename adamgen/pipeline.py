"""The pass pipeline, as one flat list. Each entry is a pure Module -> Module function."""
from __future__ import annotations

from typing import Callable

from adamgen.ir.node import Module
from adamgen.ir.verify import verify_module
from adamgen.passes.cse import cse
from adamgen.passes.dce import dce
from adamgen.passes.fold_constants import fold_constants
from adamgen.passes.fuse import fuse
from adamgen.passes.simplify import simplify

Pass = Callable[[Module], Module]

OPTIMIZE: list[tuple[str, Pass]] = [
    ("fold_constants", fold_constants),  # specialize: spec numbers -> constants, folded in dtype
    ("simplify", simplify),              # exact identities: x*1, cast to same type, select(c,a,a)
    ("fold_constants", fold_constants),  # fold what simplify exposed
    ("cse", cse),                        # merge equal subexpressions
    ("dce", dce),                        # drop inputs nothing reads
]
FUSE: list[tuple[str, Pass]] = [
    ("fuse", fuse),                      # scalars / reduce / update kernels
    ("cse", cse),                        # kernels share no nodes; re-merge within each
    ("dce", dce),                        # each kernel keeps only the inputs it reads
]


def run(module: Module, passes: list[tuple[str, Pass]], verify: bool = False,
        dump_after: Callable[[str, Module], None] | None = None) -> Module:
    for name, fn in passes:
        module = fn(module)
        if verify:
            verify_module(module)
        if dump_after is not None:
            dump_after(name, module)
    return module


def optimize(module: Module, verify: bool = False) -> Module:
    return run(module, OPTIMIZE, verify)


def fuse_kernels(module: Module, verify: bool = False) -> Module:
    return run(module, FUSE, verify)
