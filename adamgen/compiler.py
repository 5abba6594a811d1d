"""The compiler driver: spec -> IR -> optimized IR -> fused kernels, as one artifact record."""
from __future__ import annotations

from dataclasses import dataclass, replace

from adamgen.ir.node import Module
from adamgen.lower import lower
from adamgen import pipeline


@dataclass(frozen=True)
class Compiled:
    """What each stage produced for one (spec, param dtype). Later stages fill later fields."""

    spec: object
    dtype: str
    ir: Module
    ir_opt: Module | None = None
    kernels: Module | None = None


def compile_spec(spec, dtype: str, verify: bool = False) -> Compiled:
    art = Compiled(spec=spec, dtype=dtype, ir=lower(spec, dtype))
    art = replace(art, ir_opt=pipeline.optimize(art.ir, verify=verify))
    return replace(art, kernels=pipeline.fuse_kernels(art.ir_opt, verify=verify))


def kernels_for(spec, verify: bool = False):
    """A `dtype -> fused Module` function for executors that compile lazily per dtype."""
    return lambda dtype: compile_spec(spec, dtype, verify).kernels
