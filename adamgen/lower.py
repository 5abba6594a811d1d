"""Lowering: an AdamSpec and a param dtype -> one IR function for the whole Keras Adam step.

The function follows the order of one Keras `optimizer.apply` call exactly (see the semantics
page, §2): loss-scale division, accumulation, clipping, weight decay, the Adam update, EMA and
overwrite, counter increment. Every op is in the param dtype D unless noted; constants are made
in D (a Python-double expression is rounded once, as Keras does, where Keras computes it in
Python: 1 - beta). Nothing is folded here: constant expressions are left to the passes.
"""
from __future__ import annotations

from dataclasses import dataclass

from adamgen.ir.builder import Builder
from adamgen.ir.node import Function, Module, Node

TENSOR_SLOTS = ("momentum", "velocity", "velocity_hat", "average", "accumulator")


def slots_for(spec) -> tuple[str, ...]:
    """The state slots this spec keeps, in the order tensors are passed to kernels."""
    out = ["momentum", "velocity"]
    if spec.amsgrad:
        out.append("velocity_hat")
    if spec.use_ema:
        out.append("average")
    if spec.accumulation_steps:
        out.append("accumulator")
    return tuple(out)


def scalar_inputs_for(spec) -> tuple[str, ...]:
    """Runtime scalar inputs (f32, except the i32 step) the caller must provide."""
    out = ["step"]
    if spec.lr_kind == "callable":
        out.append("lr")
    out += [k for k in ("beta_1", "beta_2", "epsilon") if callable(getattr(spec, k))]
    return tuple(out)


def takes_single(spec) -> bool:
    """Whether the step takes the per-tensor "single" flag: it divides a tensor by a scalar
    where Keras divides a one-element tensor exactly (the loss scale, clipnorm; _Ctx.scale)."""
    return spec.loss_scale_factor is not None or (spec.clip is not None and spec.clip[0] == "clipnorm")


def variant(dtype: str, norm_dtype: str | None = None) -> str:
    """The name of the module for params of `dtype` in a tree whose global norm is computed in
    `norm_dtype` (Keras promotes the per-tensor sums of a tree of several dtypes to float32): the
    dtype itself when that is the same, else e.g. "bf16_f32norm". Names kernels and artifact files."""
    return dtype if norm_dtype in (None, dtype) else f"{dtype}_{norm_dtype}norm"


def parse_variant(name: str) -> tuple[str, str]:
    """variant() inverted: (param dtype, global norm dtype). The only other norm dtype there is
    is f32 (what Keras promotes a tree of several dtypes to), for a param dtype that is not."""
    dtype, sep, norm = name.partition("_")
    if not sep:
        return dtype, dtype
    if norm != "f32norm" or dtype not in ("f16", "bf16"):
        raise ValueError(f"module variant {name!r}: allowed are a param dtype, 'f16_f32norm' and 'bf16_f32norm'")
    return dtype, "f32"


def module_variant(module: Module) -> str:
    attrs = dict(module.attrs)
    return variant(attrs["dtype"], attrs.get("norm_dtype"))


def norm_dtype_for(spec, dtypes) -> str | None:
    """The dtype of a tree's global norm when it differs from its params' (several param dtypes
    under global_clipnorm: Keras stacks the per-tensor sums, which promotes them to float32)."""
    if len(set(dtypes)) > 1 and spec.clip is not None and spec.clip[0] == "global_clipnorm":
        return "f32"
    return None


@dataclass
class _Ctx:
    b: Builder
    d: str          # param dtype
    step: Node      # raw counter k, i32
    runtime: dict[str, Node]  # runtime f32 scalar inputs by name (callable hyper-parameters)
    norm: str       # the global norm's dtype (D unless the tree has several param dtypes)
    single: Node | None = None  # the per-tensor "single" input, once a division asks for it

    def c(self, value, dtype: str | None = None) -> Node:
        """A Python number as Keras makes it: float32 first, then the param dtype (or `dtype`)."""
        return self.b.cast(self.b.const(value, "f32"), dtype or self.d)

    def cast_number(self, value) -> Node:
        """A Python number through Keras' ops.cast(value, param dtype), where Keras casts one
        (the beta powers' bases, weight decay): straight to float16/float32 (one rounding),
        through float32 to bfloat16 (Keras' convert_to_tensor for bfloat16)."""
        if self.d == "bf16":
            return self.c(value)
        return self.b.const(value, self.d)

    def scale(self, x: Node, divisor: Node, true_if_single: bool = True) -> Node:
        """x / divisor (a scalar or per-tensor value) as XLA-CPU computes a tensor divided by a
        scalar: x * (1/divisor), bfloat16 through float32 (reciprocal and product rounded once);
        but a one-element tensor gets a true division (semantics §10.2), chosen per tensor by
        the "single" input. The accumulation mean, computed inside Keras' lax.cond, is the
        reciprocal form for every shape (§10.3): `true_if_single=False`."""
        b = self.b
        if self.d != "bf16":
            by_recip = b.mul(x, b.div(self.c(1), divisor))
        else:
            recip = b.div(b.const(1, "f32"), b.cast(divisor, "f32"))
            by_recip = b.cast(b.mul(b.cast(x, "f32"), recip), self.d)
        if not true_if_single:
            return by_recip
        if self.single is None:
            self.single = b.input("single", "f32", "T")
        # per tensor: single = 1 (one element: x / d) or 0 (x * (1/d))
        return b.select(b.lt(b.const(0, "f32"), self.single), b.div(x, divisor), by_recip)


def lower(spec, name: str) -> Module:
    """The step for params of one dtype; `name` is the dtype or a variant() of it."""
    dtype, norm = parse_variant(name)
    b = Builder()
    x = _Ctx(b, dtype, b.input("step", "i32"), {}, norm)
    p = b.input("param", dtype, "N")
    g = b.input("grad", dtype, "N")
    slots = {name: b.input(name, dtype, "N") for name in slots_for(spec)}
    hyper = {k: _hyper(x, spec, k) for k in ("beta_1", "beta_2")}
    if callable(spec.epsilon):
        x.runtime["epsilon"] = b.input("epsilon", "f32")
    lr32 = _learning_rate(x, spec)

    n_acc = spec.accumulation_steps
    one_i = b.const(1, "i32")
    k_eff = b.floordiv(x.step, b.const(n_acc, "i32")) if n_acc else x.step

    # 2. loss-scale division: g * (1/s) (XLA's rewrite of a tensor / scalar division), g / s
    #    for a one-element tensor
    if spec.loss_scale_factor is not None:
        g = x.scale(g, x.c(spec.loss_scale_factor))
    # 3. accumulation: the update sees the window mean (g + A) * (1/N)
    outputs: dict[str, Node] = {}
    is_update = None
    if n_acc:
        acc = slots["accumulator"]
        is_update = b.eq(b.mod(b.add(x.step, one_i), b.const(n_acc, "i32")), b.const(0, "i32"))
        outputs["accumulator"] = b.select(is_update, x.c(0), b.add(acc, g))
        g = x.scale(b.add(g, acc), x.c(n_acc), true_if_single=False)
    # 4. clipping
    g = _clip(x, spec, g)
    # 5. decoupled weight decay on the pre-update param: p - (p * wd) * lr
    lr = b.cast(lr32, dtype)
    p1 = p
    if spec.weight_decay is not None:
        p1 = b.sub(p, b.mul(b.mul(p, x.cast_number(spec.weight_decay)), lr))
    if spec.weight_decay is not None and spec.exclude_from_weight_decay:
        # per tensor: decay = 1 (decayed) or 0 (excluded by name), from the caller's tree
        p1 = b.select(b.lt(b.const(0, "f32"), b.input("decay", "f32", "T")), p1, p)
    # 6. the Adam update
    t = b.cast(b.add(k_eff, one_i), dtype)
    b1p = b.pow(hyper["beta_1"], t)
    b2p = b.pow(hyper["beta_2"], t)
    alpha = b.div(b.mul(lr, b.sqrt(b.sub(x.c(1), b2p))), b.sub(x.c(1), b1p))
    m, v = slots["momentum"], slots["velocity"]
    m1 = _moment(x, spec, "beta_1", m, g)
    v1 = _moment(x, spec, "beta_2", v, b.mul(g, g))
    v_used = v1
    new = {"momentum": m1, "velocity": v1}
    if spec.amsgrad:
        v_used = b.maximum(slots["velocity_hat"], v1)
        new["velocity_hat"] = v_used
    new["param"] = _param_update(x, spec, p1, b.mul(m1, alpha), v_used)
    old = {"param": p, **slots}
    for name, value in new.items():
        outputs[name] = b.select(is_update, value, old[name]) if is_update is not None else value
    # 7. EMA on every call, with the post-update param, and the overwrite blend
    if spec.use_ema:
        outputs["average"], outputs["param"] = _ema(x, spec, k_eff, slots["average"], outputs["param"])
    # 9. the raw counter advances on every call
    outputs["step"] = b.add(x.step, one_i)

    order = ["param", *slots_for(spec), "step"]
    fn = Function("adam_step", tuple(b.inputs), tuple((k, outputs[k]) for k in order),
                  (("kind", "step"),))
    attrs = (("dtype", dtype), ("spec", spec.name)) + ((("norm_dtype", norm),) if norm != dtype else ())
    return Module((fn,), attrs)


def _hyper(x: _Ctx, spec, key: str) -> Node:
    value = getattr(spec, key)
    if callable(value):
        x.runtime[key] = x.b.input(key, "f32")
        return x.b.cast(x.runtime[key], x.d)
    return x.cast_number(value)


def _moment(x: _Ctx, spec, key: str, prev: Node, target: Node) -> Node:
    """prev + (target - prev) * (1 - beta); 1 - beta in Python double. A runtime (tensor) beta
    makes a float32 coefficient, so the product and sum are float32, rounded once to D."""
    b = x.b
    diff = b.sub(target, prev)
    if not callable(getattr(spec, key)):
        return b.add(prev, b.mul(diff, x.c(1.0 - float(getattr(spec, key)))))
    coef = b.sub(b.const(1, "f32"), x.runtime[key])
    return b.cast(b.add(b.cast(prev, "f32"), b.mul(b.cast(diff, "f32"), coef)), x.d)


def _param_update(x: _Ctx, spec, p: Node, step_num: Node, v_used: Node) -> Node:
    """p - (m * alpha) / (sqrt(v) + eps); a runtime (tensor) epsilon promotes the tail to f32."""
    b = x.b
    if not callable(spec.epsilon):
        return b.sub(p, b.div(step_num, b.add(b.sqrt(v_used), x.c(spec.epsilon))))
    denom = b.add(b.cast(b.sqrt(v_used), "f32"), x.runtime["epsilon"])
    return b.cast(b.sub(b.cast(p, "f32"), b.div(b.cast(step_num, "f32"), denom)), x.d)


def _learning_rate(x: _Ctx, spec) -> Node:
    """The learning rate at the raw counter k, as float32."""
    if spec.lr_kind == "float":
        return x.b.const(spec.learning_rate, "f32")
    if spec.lr_kind == "schedule":
        return spec.learning_rate.emit(x.b, x.step)
    return x.b.input("lr", "f32")


def _clip(x: _Ctx, spec, g: Node) -> Node:
    b = x.b
    if spec.clip is None:
        return g
    kind, c = spec.clip
    if kind == "clipvalue":
        return b.minimum(b.maximum(g, x.c(-c)), x.c(c))
    s = b.reduce_sum(b.mul(g, g))
    if kind == "clipnorm":
        # n = sqrt(S) if S > 0 else S;  g <- (g * c) * (1 / max(n, c))
        n = b.select(b.lt(x.c(0), s), b.sqrt(s), s)
        return x.scale(b.mul(g, x.c(c)), b.maximum(n, x.c(c)))
    # global: N = sqrt(sum S);  scale = c * min(1/N, 1/c) + (N - N);  g <- g * scale, all in
    # the norm's dtype G. With several param dtypes in the tree, G = f32: Keras stacks the
    # per-tensor sums (promoted to f32), and g * scale is f32 too, rounded once to D.
    G = x.norm
    if G != x.d:
        s = b.cast(s, G)
    norm = b.sqrt(b.global_sum(s))
    scale = b.add(b.mul(x.c(c, G), b.minimum(b.div(x.c(1, G), norm), x.c(1.0 / c, G))), b.sub(norm, norm))
    if G == x.d:
        return b.mul(g, scale)
    return b.cast(b.mul(b.cast(g, G), scale), x.d)


def _ema(x: _Ctx, spec, k_eff: Node, avg: Node, param: Node) -> tuple[Node, Node]:
    b = x.b
    mu = b.mul(b.cast(b.ne(k_eff, b.const(0, "i32")), x.d), x.c(spec.ema_momentum))
    avg1 = b.add(b.mul(mu, avg), b.mul(b.sub(x.c(1), mu), param))
    freq = spec.ema_overwrite
    if freq is None:
        return avg1, param
    if freq == 0:
        # Keras on JAX: (k+1) % 0 == 0, so the average overwrites the param on every call.
        return avg1, b.add(b.mul(avg1, x.c(1)), b.mul(param, x.c(0)))
    hit = b.eq(b.mod(b.add(k_eff, b.const(1, "i32")), b.const(freq, "i32")), b.const(0, "i32"))
    c = b.cast(hit, x.d)
    not_c = b.sub(x.c(1), c)  # exactly 0 or 1, as Keras' logical_not(hit) as int
    return avg1, b.add(b.mul(avg1, c), b.mul(param, not_c))
