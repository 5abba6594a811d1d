"""C++ renderer for the fused IR's elementwise kernel, shared by the host and CUDA flavours.

It consumes only the final fused IR (`kind = "elementwise"` function) and produces the pieces
the templates lay out: the per-tensor buffer roles, the runtime scalar and per-tensor value
names, and the element body as C++ statements (one per IR node, in SSA order). One rule per op
in `CPP_EXPR`. Float values compute in `float`; a float16/bfloat16 result is rounded back to
its dtype after every op, exactly as the IR (and the oracle) round.
Targets declare capabilities as data (`Capabilities`); nothing here asks which target it is.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import numpy as np

from adamgen.ffi import STORAGE, RoleSpec
from adamgen.ir.node import Function, Node, topo_order
from adamgen.ir.ops import Op


FLOAT_TYPES = ("f32", "f16", "bf16")


@dataclass(frozen=True)
class Capabilities:
    """What a native target offers the renderer and its templates."""

    platform: str            # ffi platform key: "cpu" or "cuda"
    fma: bool                # may a*b+c contract to one rounding? (False: match the oracle op for op)
    vector_bytes: int        # widest load/store per thread
    chunk_elems: int         # elements per chunk of the multi-tensor table
    # Tensors per custom call. XLA's compile time grows superlinearly with the operands of one
    # custom call (measured on CPU: 4000 operands 80 s, 40 calls of 100 operands 1.3 s), so a
    # large tree is updated by a few calls of this many tensors each.
    tensors_per_call: int = 32
    block_threads: int = 256     # CUDA threads per block (the host flavour ignores it)
    threads: int = 0             # host: most threads one call uses; 0 = XLA's whole intra-op pool
    # host: unroll factor of the element loop (it is also vectorized); CUDA: vectors each thread
    # loads before it computes (elements per thread per iteration = unroll * vector elements)
    unroll: int = 1
    # CUDA grid: 0 = one block per chunk; k = at most k blocks per multiprocessor (read off the
    # device at launch), each striding over the chunks (a persistent grid)
    blocks_per_sm: int = 0
    # Most elements a block holds in flight (block_threads x unroll x vector elements) before the
    # kernel would spill registers; the unroll is lowered to fit (0: no limit). CUDA: 4096, from
    # ptxas on the full variant (7 roles): f32 at 512 threads spills from 12 elements a thread,
    # bf16 at 512 threads at 16; 16 a thread at 256 threads uses 240 of 255 registers.
    inflight_elems: int = 0
    # Optimizer slots (m, v, ...) live in one 1-D slab per call instead of one array per param:
    # a step then passes ~2 arrays per param (param, grad) across the JAX boundary, not 4-6.
    packed_slots: bool = True
    # Param dtypes whose host loop runs the element body on explicit 8-lane vectors (AVX2 and
    # F16C, where the compiling CPU has them; templates/host/vector.h): float16 rounds each op in
    # two instructions there instead of the ~12 integer ops the autovectorized body needs.
    vector_dtypes: tuple[str, ...] = ()
    # CUDA: 1 = float16/bfloat16 conversions and per-op roundings by the GPU's cvt instructions
    # (cuda_fp16.h, cuda_bf16.h: round to nearest even, as the bit-level form, which is ~10 integer
    # ops a rounding, 13 roundings a param); 0 = the bit-level form host and device share
    hw_half: int = 0

    def __post_init__(self) -> None:
        if self.vector_bytes not in VECTOR_BYTES:
            raise ValueError(f"vector_bytes must be one of {VECTOR_BYTES}, got {self.vector_bytes!r}")
        for name in ("chunk_elems", "tensors_per_call", "block_threads", "unroll"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.block_threads & (self.block_threads - 1) or not 32 <= self.block_threads <= 1024:
            # the CUDA block reduction halves its stride: a power of two, at most CUDA's 1024
            raise ValueError(f"block_threads must be a power of two from 32 to 1024, got {self.block_threads!r}")
        if not isinstance(self.vector_dtypes, tuple):
            raise ValueError(f"vector_dtypes must be a tuple of dtypes, got {self.vector_dtypes!r}")
        if self.vector_dtypes and self.platform != "cpu":
            raise ValueError(f"vector_dtypes: only the cpu platform has a vector loop, got platform {self.platform!r}")
        unknown = set(self.vector_dtypes) - set(FLOAT_TYPES)
        if unknown:
            raise ValueError(f"vector_dtypes: {sorted(unknown)} are not float types; allowed: {FLOAT_TYPES}")
        if self.hw_half not in (0, 1) or isinstance(self.hw_half, bool):
            raise ValueError(f"hw_half must be 0 or 1, got {self.hw_half!r}")
        if self.hw_half and self.platform != "cuda":
            raise ValueError(f"hw_half: only the cuda platform converts halves in hardware, got platform {self.platform!r}")
        for name in ("threads", "blocks_per_sm", "inflight_elems"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")

    def vector_elems(self, itemsize: int) -> int:
        """Elements of one vector access for a storage type of `itemsize` bytes."""
        return max(1, self.vector_bytes // itemsize)

    def unroll_for(self, itemsize: int) -> int:
        """The unroll a kernel over `itemsize`-byte elements gets: `unroll`, lowered until the
        block's elements in flight fit `inflight_elems`."""
        if not self.inflight_elems:
            return self.unroll
        fits = self.inflight_elems // (self.block_threads * self.vector_elems(itemsize))
        return max(1, min(self.unroll, fits))

    def effective(self, itemsize: int) -> "Capabilities":
        """The capabilities a kernel over `itemsize`-byte elements is built with (the unroll
        lowered to fit; hw_half only where there are halves to convert): two configs with the
        same effective capabilities build the same kernel."""
        return replace(self, unroll=self.unroll_for(itemsize), hw_half=self.hw_half if itemsize == 2 else 0)

    def record(self) -> dict:
        """Every knob but the platform, as JSON values (an artifact's manifest records them all:
        each one shapes the rendered source, so loading must render it again the same way)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in fields(self) if f.name != "platform"}

    def with_record(self, record: dict, where: str) -> "Capabilities":
        """These capabilities with the knobs of `record` (a manifest's, maybe from an older
        adamgen that recorded fewer: the rest keep this object's values). `where` names the
        record's origin in errors."""
        if not isinstance(record, dict):
            raise ValueError(f"{where}: capabilities must be an object, got {record!r}")
        known = {f.name: f.type for f in fields(self) if f.name != "platform"}
        unknown = sorted(set(record) - set(known))
        if unknown:
            raise ValueError(f"{where}: capabilities {unknown} are not knobs of this adamgen; allowed: {sorted(known)}")
        values = {}
        for key, value in record.items():
            current = getattr(self, key)
            if isinstance(current, tuple):
                if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                    raise ValueError(f"{where}: capabilities.{key} must be a list of strings, got {value!r}")
                value = tuple(value)
            elif isinstance(current, bool) != isinstance(value, bool) or not isinstance(value, type(current)):
                raise ValueError(f"{where}: capabilities.{key} must be {type(current).__name__}, got {value!r}")
            values[key] = value
        try:
            return replace(self, **values)
        except ValueError as err:
            raise ValueError(f"{where}: capabilities: {err}") from None


VECTOR_BYTES = (2, 4, 8, 16, 32)


HOST = Capabilities(platform="cpu", fma=False, vector_bytes=32, chunk_elems=65536, vector_dtypes=("f16",))
# CUDA: one launch per custom call (the table travels in up to 32 KiB of kernel arguments), so
# more tensors per call means fewer launches: 4 for a 1000-tensor tree instead of 32.
CUDA = Capabilities(platform="cuda", fma=False, vector_bytes=16, chunk_elems=65536, tensors_per_call=256,
                    inflight_elems=4096)
CAPABILITIES = {"cpu": HOST, "cuda": CUDA}

ROUND = {"f32": None, "f16": "adamgen_round_f16", "bf16": "adamgen_round_bf16"}


def c_type(dtype: str) -> str:
    if dtype in FLOAT_TYPES:
        return "float"
    if dtype == "bool":
        return "bool"
    if dtype == "i32":
        return "int"
    raise ValueError(f"dtype {dtype!r} has no C++ compute type; allowed: {FLOAT_TYPES + ('bool', 'i32')}")


def literal(node: Node) -> str:
    """An exact C++ literal for a constant (hex floats: no decimal rounding)."""
    value = node.attr("value")
    if node.dtype == "bool":
        return "true" if bool(value) else "false"
    if node.dtype == "i32":
        return str(int(value))
    f = float(value)
    if np.isnan(f):
        return "NAN"
    if np.isinf(f):
        return "INFINITY" if f > 0 else "(-INFINITY)"
    return f"{f.hex()}f" if f >= 0 else f"(-{(-f).hex()}f)"


def _unary(fmt: str) -> Callable[[Node, list[str]], str]:
    return lambda node, a: fmt.format(*a)


def _cast(node: Node, a: list[str]) -> str:
    src = node.operands[0].dtype
    if node.dtype == "bool":
        return f"({a[0]} != 0)"
    if node.dtype == "i32":
        return f"static_cast<int>({a[0]})"
    return a[0] if src in FLOAT_TYPES else f"static_cast<float>({a[0]})"


def _max(node: Node, a: list[str]) -> str:
    return f"adamgen_max({a[0]}, {a[1]})" if node.dtype in FLOAT_TYPES else f"({a[0]} > {a[1]} ? {a[0]} : {a[1]})"


def _min(node: Node, a: list[str]) -> str:
    return f"adamgen_min({a[0]}, {a[1]})" if node.dtype in FLOAT_TYPES else f"({a[0]} < {a[1]} ? {a[0]} : {a[1]})"


def _not_here(node: Node, a: list[str]) -> str:
    raise ValueError(f"{node.op.value} does not belong in an elementwise kernel; the fuse pass moves it out")


CPP_EXPR: dict[Op, Callable[[Node, list[str]], str]] = {
    Op.INPUT: _not_here,      # inputs are named x[r], s[k], pt_j by the renderer
    Op.CONST: lambda node, a: literal(node),
    Op.CAST: _cast,
    Op.NEG: _unary("(-{0})"),
    Op.SQRT: _unary("adamgen_sqrt({0})"),
    Op.FLOOR: _unary("floorf({0})"),
    Op.CEIL: _unary("ceilf({0})"),
    Op.COS: _unary("cosf({0})"),
    Op.LOG: _unary("logf({0})"),
    Op.ADD: _unary("({0} + {1})"),
    Op.SUB: _unary("({0} - {1})"),
    Op.MUL: _unary("({0} * {1})"),
    Op.DIV: _unary("({0} / {1})"),
    Op.POW: _unary("powf({0}, {1})"),
    Op.MAX: _max,
    Op.MIN: _min,
    Op.MOD: _unary("adamgen_mod({0}, {1})"),
    Op.FLOORDIV: _unary("adamgen_floordiv({0}, {1})"),
    Op.LT: _unary("({0} < {1})"),
    Op.LE: _unary("({0} <= {1})"),
    Op.EQ: _unary("({0} == {1})"),
    Op.NE: _unary("({0} != {1})"),
    Op.SELECT: _unary("({0} ? {1} : {2})"),
    Op.REDUCE_SUM: _not_here,
    Op.GLOBAL_SUM: _not_here,
}
EXACT_OPS = frozenset({Op.CONST, Op.NEG, Op.FLOOR, Op.CEIL, Op.MAX, Op.MIN, Op.SELECT})

# Element-varying values (those computed from a tensor input x[r]) have the body's type `V`:
# float, or on the host an 8-lane float vector (templates/host/vector.h). A body whose varying
# values are all floats made by these ops runs on vectors; SELECT also needs a uniform condition.
VECTOR_OPS = frozenset({Op.CAST, Op.NEG, Op.SQRT, Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.MAX, Op.MIN, Op.SELECT})
# Ops rendered as a function call or a ?: whose arms must have one type: a uniform float operand
# of a varying node is broadcast (adamgen_splat<V>). + - * / broadcast a float by themselves.
SPLAT_OPS = frozenset({Op.MAX, Op.MIN, Op.SELECT})


@dataclass(frozen=True)
class RenderedKernel:
    """The renderer's output: what ffi.make_context needs, plus the names the caller feeds."""

    roles: tuple[RoleSpec, ...]
    scalars: tuple[str, ...]      # s[k] <- the value named scalars[k], as f32
    pertensor: tuple[str, ...]    # pt[j] <- the per-tensor value named pertensor[j], as f32
    body: tuple[str, ...]
    outputs: tuple[str, ...] = () # reduce kernels: the name of each per-tensor sum, in order
    body_many: tuple[str, ...] = ()  # the body for tensors of more than one element (() = body)
    vector_many: bool = False     # may body_many run on vectors (VECTOR_OPS)?


def _read_runtime(node: Node, ref: str) -> str:
    if node.dtype == "bool":
        return f"({ref} != 0.0f)"
    if node.dtype == "i32":
        return f"static_cast<int>({ref})"
    return ref


def _names(fn: Function, dtype: str) -> tuple[list[Node], list[Node], list[Node], dict[str, str]]:
    """Inputs by kind and the C++ expression that reads each: x[r], s[k], pt_j (pt[j], read first)."""
    if dtype not in STORAGE:
        raise ValueError(f"param dtype {dtype!r} not supported natively; allowed: {sorted(STORAGE)}")
    tensors = [n for n in fn.inputs if n.shape == "N"]
    scalars = [n for n in fn.inputs if n.shape == ""]
    pertensor = [n for n in fn.inputs if n.shape == "T"]
    names: dict[str, str] = {}
    for r, n in enumerate(tensors):
        if n.dtype != dtype:
            raise ValueError(f"tensor input {n.attr('name')!r} is {n.dtype}, expected the param dtype {dtype}")
        names[n.attr("name")] = f"x[{r}]"
    names.update({n.attr("name"): _read_runtime(n, f"s[{k}]") for k, n in enumerate(scalars)})
    names.update({n.attr("name"): _read_runtime(n, f"pt_{j}") for j, n in enumerate(pertensor)})
    return tensors, scalars, pertensor, names


def _pertensor_reads(pertensor: list[Node]) -> list[str]:
    """The body's first lines: every per-tensor value read once, unconditionally. Read where
    it is used, a value that only one arm of a select uses (a one-element tensor's divisor) is
    sunk by GCC into that arm, if-conversion makes it a masked load, and the vectorizer then
    leaves the whole element loop scalar (measured: 2.4x slower on 10M params)."""
    return [f"const float pt_{j} = pt[{j}];" for j in range(len(pertensor))]


def varying_nodes(roots: list[Node]) -> set[int]:
    """ids of the nodes (inputs included) whose value differs from element to element: the
    tensor inputs and everything computed from one."""
    return {id(node) for node in topo_order(roots) if node.shape == "N"}


def vector_capable(roots: list[Node]) -> bool:
    """Can the values of `roots` be computed on vectors: is every varying value a float made
    by a VECTOR_OPS op, a SELECT's condition uniform?"""
    varying = varying_nodes(roots)
    if any(id(root) not in varying for root in roots):
        return False  # a uniform output would be assigned, as a scalar, to a vector role
    for node in topo_order(roots):
        if node.op is Op.INPUT or id(node) not in varying:
            continue
        if node.op not in VECTOR_OPS or node.dtype not in FLOAT_TYPES:
            return False
        if node.op is Op.SELECT and id(node.operands[0]) in varying:
            return False
    return True


def _statements(roots: list[Node], names: dict[str, str], stop: frozenset = frozenset()
                ) -> tuple[list[str], dict[int, str]]:
    """One `const T vN = expr;` per node reachable from `roots`, operands first; T is `V` for a
    varying float value (the body's compute type), else its scalar C++ type."""
    body: list[str] = []
    values: dict[int, str] = {}
    varying = varying_nodes(roots)
    for node in topo_order(roots):
        if node.op is Op.INPUT or node.op in stop:
            continue
        args = [names[o.attr("name")] if o.op is Op.INPUT else values[id(o)] for o in node.operands]
        if id(node) in varying and node.op in SPLAT_OPS:
            args = [f"adamgen_splat<V>({a})" if id(o) not in varying and o.dtype in FLOAT_TYPES else a
                    for o, a in zip(node.operands, args)]
        expr = CPP_EXPR[node.op](node, args)
        rounding = ROUND.get(node.dtype)
        if rounding and node.op not in EXACT_OPS:
            expr = f"{rounding}({expr})"
        values[id(node)] = f"v{len(values)}"
        ctype = "V" if id(node) in varying and node.dtype in FLOAT_TYPES else c_type(node.dtype)
        body.append(f"const {ctype} {values[id(node)]} = {expr};")
    return body, values


def _ref(node: Node, names: dict[str, str], values: dict[int, str]) -> str:
    return names[node.attr("name")] if node.op is Op.INPUT else values[id(node)]


def render_elementwise(fn: Function, dtype: str, false_when_many: frozenset[str] = frozenset()) -> RenderedKernel:
    """Render the fused `update` function for params of `dtype`. `false_when_many`: per-tensor
    bool inputs that are false for every tensor of more than one element (a one-element
    tensor's flag, see native.one_element_conditions); `body_many`, the body with them false,
    lets the compiler drop the arm they select (a true division) from the kernels' element loops."""
    if fn.attr("kind") != "elementwise":
        raise ValueError(f"@{fn.name} is a {fn.attr('kind')!r} kernel; render_elementwise takes 'elementwise'")
    tensors, scalars, pertensor, names = _names(fn, dtype)
    written = {name for name, _ in fn.outputs}
    missing = written - {n.attr("name") for n in tensors}
    if missing:
        raise ValueError(f"outputs {sorted(missing)} are not tensor inputs; kernels update state in place")
    role_index = {n.attr("name"): r for r, n in enumerate(tensors)}

    def body_for(names: dict[str, str]) -> tuple[str, ...]:
        body, values = _statements([v for _, v in fn.outputs], names)
        body += [f"x[{role_index[out]}] = {_ref(node, names, values)};" for out, node in fn.outputs]
        return tuple(_pertensor_reads(pertensor) + body)

    roles = tuple(RoleSpec(n.attr("name"), dtype, read=True, written=n.attr("name") in written) for n in tensors)
    body, body_many = _bodies(body_for, names, pertensor, false_when_many)
    return RenderedKernel(roles, tuple(n.attr("name") for n in scalars),
                          tuple(n.attr("name") for n in pertensor), body, body_many=body_many,
                          vector_many=vector_capable([v for _, v in fn.outputs]))


def _bodies(body_for: Callable[[dict[str, str]], tuple[str, ...]], names: dict[str, str], pertensor: list[Node],
            false_when_many: frozenset[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(body, body_many): the body as `names` read the inputs, and again with each per-tensor
    bool input of `false_when_many` read as `false` (() when there is none)."""
    many = dict(names)
    for n in pertensor:
        if n.attr("name") in false_when_many:
            if n.dtype != "bool":
                raise ValueError(f"false_when_many: per-tensor input {n.attr('name')!r} is {n.dtype}, not bool")
            many[n.attr("name")] = "false"
    return body_for(names), body_for(many) if many != names else ()


def render_reduce(fn: Function, dtype: str, false_when_many: frozenset[str] = frozenset()) -> RenderedKernel:
    """Render a fused `reduce` function: each output is reduce_sum(value); the body computes the
    values into extra roles x[kRoles - kReduce + j], which the template sums per tensor in f32.
    `false_when_many` as for render_elementwise."""
    if fn.attr("kind") != "reduce":
        raise ValueError(f"@{fn.name} is a {fn.attr('kind')!r} kernel; render_reduce takes 'reduce'")
    if not all(node.op is Op.REDUCE_SUM for _, node in fn.outputs):
        raise ValueError(f"@{fn.name}: every output of a reduce kernel must be a reduce_sum")
    tensors, scalars, pertensor, names = _names(fn, dtype)
    summed = [node.operands[0] for _, node in fn.outputs]
    first = len(tensors)

    def body_for(names: dict[str, str]) -> tuple[str, ...]:
        body, values = _statements(summed, names)
        body += [f"x[{first + j}] = {_ref(node, names, values)};" for j, node in enumerate(summed)]
        return tuple(_pertensor_reads(pertensor) + body)

    roles = tuple(RoleSpec(n.attr("name"), dtype, read=True, written=False) for n in tensors)
    roles += tuple(RoleSpec(f"sum_{name}", "f32", read=False, written=False) for name, _ in fn.outputs)
    body, body_many = _bodies(body_for, names, pertensor, false_when_many)
    return RenderedKernel(roles, tuple(n.attr("name") for n in scalars),
                          tuple(n.attr("name") for n in pertensor), body,
                          outputs=tuple(name for name, _ in fn.outputs), body_many=body_many)
