"""The candidates that bench/bench_adam.py times: adamgen targets and the peers.

Every candidate is a `Peer`: `init()` builds its optimizer and state (timed as init), `step()` runs
one optimizer step and blocks until its results are ready, `close()` drops its arrays. Each peer
owns its params and state; read-only gradients are shared through the `Workload` caches.
`prepare()` loads the peer's libraries and its grads without building anything of its own: what
bench/peak_memory.py counts as the baseline before it measures the peer's extra memory.
"""
from __future__ import annotations

import ctypes
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).parent
PLAIN: dict[str, Any] = {}
FULL: dict[str, Any] = {"amsgrad": True, "weight_decay": 0.01, "global_clipnorm": 1.0, "use_ema": True}
VARIANTS = {"plain": PLAIN, "full": FULL}
LR, EPS = 1e-3, 1e-7
# Per-param fp32 arrays a peer owns (params + slots); sizes the memory groups of the runner.
OWNED = {"plain": 3, "full": 5}
# Steps one timed call of an in-jit candidate runs; the runner divides its time by this. At 10
# a step still carries a tenth of JAX's call boundary (~0.4-0.8 ms on the 1000-tensor tree here).
IN_JIT_STEPS = 10


def in_jit_steps(n_tensors: int) -> int:
    """Steps one in-jit call runs for a tree of `n_tensors`: JAX's call boundary (several µs an
    array, ~3 arrays a tensor: 10-15 ms for 1000 tensors on a 2-core CPU) is the train step's,
    paid once a call, so a call runs enough steps to leave about 0.1 ms of it in each: 10 for up
    to 100 tensors, then one more per 10 tensors (100 for 1000)."""
    return max(IN_JIT_STEPS, min(100, n_tensors // 10))


def in_jit(step, k: int = IN_JIT_STEPS):
    """jit(run(p, s, g)) running `step(p, s, g) -> (p, s)` k times in one lax.fori_loop, with p
    and s donated: the optimizer inside the caller's jitted train step, where JAX's call
    boundary (a few microseconds per array) is the train step's, paid once per call, not per step."""
    def run(p, s, g):
        return jax.lax.fori_loop(0, k, lambda _, carry: step(*carry, g), (p, s))
    return jax.jit(run, donate_argnums=(0, 1))


def adamgen_in_jit(opt, k: int = IN_JIT_STEPS):
    """in_jit over adamgen's apply: run(params, state, grads) -> (params, state)."""
    return in_jit(lambda p, s, g: opt.apply(g, s, p), k)


@dataclass
class Workload:
    """A tree of fp32 params and grads (NumPy masters, never mutated) plus shared derived grads."""

    key: str
    title: str
    names: list[str]
    params: list[np.ndarray]
    grads: list[np.ndarray]
    _cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.n_params = int(sum(p.size for p in self.params))
        self.n_tensors = len(self.params)

    def release(self) -> None:
        """Drop the arrays (keeps the sizes for the report)."""
        self.params, self.grads, self._cache = [], [], {}

    def _cached(self, key: str, make) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def jax_params(self) -> dict[str, jax.Array]:
        """A fresh jax copy of the params (each peer gets its own: they are donated)."""
        return {n: jnp.array(p) for n, p in zip(self.names, self.params)}

    def jax_grads(self) -> dict[str, jax.Array]:
        return self._cached("jax", lambda: {n: jnp.asarray(g) for n, g in zip(self.names, self.grads)})

    def flat_grads_np(self) -> np.ndarray:
        return self._cached("flat_np", lambda: np.concatenate([g.ravel() for g in self.grads]))

    def flat_grads_jax(self) -> jax.Array:
        return self._cached("flat_jax", lambda: jnp.asarray(self.flat_grads_np()))

    def torch_grads(self) -> list:
        import torch
        return self._cached("torch", lambda: [torch.from_numpy(g.copy()) for g in self.grads])


class Peer:
    """One candidate. Subclasses set `name`, `layout` and implement init/step/close."""

    name = "?"
    layout = "tree"                 # tree, flat (params kept in one buffer) or jit (tree, in_jit)
    max_repeats: int | None = None  # None: as many as the runner's rounds
    steps_per_call = 1              # optimizer steps one step() call runs
    note = ""

    def __init__(self, wl: Workload, variant: str) -> None:
        self.wl, self.variant, self.kw = wl, variant, VARIANTS[variant]

    @property
    def footprint(self) -> int:
        """Bytes this peer holds while alive (its params and slots)."""
        return 4 * self.wl.n_params * OWNED[self.variant]

    def prepare(self) -> None:
        """Import this peer's libraries and materialise the grads it reads (in its format), so
        that init + steps add only its own params copy, state, temporaries and compiled code."""
        jnp.zeros(1).block_until_ready()  # the XLA CPU client and its thread pools

    def init(self) -> None: ...
    def step(self) -> None: ...
    def close(self) -> None:
        self.__dict__.update({k: None for k in ("p", "s", "g", "st", "avg", "opt", "fn")})


# -- the bandwidth floor ----------------------------------------------------------------------------
_LIB: ctypes.CDLL | None = None


def floor_lib() -> ctypes.CDLL:
    """bench/floor.c (plain loop) and bench/floor_variants.c (full variant) in one shared library."""
    global _LIB
    if _LIB is None:
        out = Path(tempfile.mkdtemp(prefix="adamgen-bench-")) / "floor.so"
        srcs = [HERE / "floor_variants.c", HERE / "floor.c"]
        # floor.c has a main(): fine in a shared library, never called.
        subprocess.run(["gcc", "-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared",
                        "-fPIC", *map(str, srcs), "-o", str(out), "-lm"], check=True)
        lib = ctypes.CDLL(str(out))
        fp, i64, f32 = ctypes.POINTER(ctypes.c_float), ctypes.c_int64, ctypes.c_float
        lib.floor_adam_step.argtypes = [fp, fp, fp, fp, i64, f32]
        lib.sum_squares.argtypes, lib.sum_squares.restype = [fp, i64], ctypes.c_double
        lib.full_adam_step.argtypes = [fp, fp, fp, fp, fp, fp, i64, f32, f32, f32]
        _LIB = lib
    return _LIB


class CFloor(Peer):
    name, layout = "C floor", "flat"

    def prepare(self) -> None:
        super().prepare()
        floor_lib()
        self.wl.flat_grads_np()

    def __init__(self, wl: Workload, variant: str) -> None:
        super().__init__(wl, variant)
        # as many steps a timed call as the in-jit candidates run (their threads stay warm
        # between steps the same way; one step a call reads the OpenMP wake-up in every sample)
        self.steps_per_call = in_jit_steps(wl.n_tensors)

    def init(self) -> None:
        lib = floor_lib()
        self.note = ("bench/floor.c, OpenMP, 28 B/param" if self.variant == "plain"
                     else "bench/floor_variants.c: norm pass + update pass, 48 B/param")
        self.note += f"; {self.steps_per_call} steps a timed call"
        n = self.wl.n_params
        self.g = self.wl.flat_grads_np()
        self.p = np.concatenate([p.ravel() for p in self.wl.params])
        self.st = [np.zeros(n, np.float32) for _ in range(OWNED[self.variant] - 1)]
        ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
        self.ptrs = [ptr(self.p), ptr(self.g)] + [ptr(a) for a in self.st]
        self.fn = lib.floor_adam_step

    def step(self) -> None:
        lib, n = floor_lib(), self.wl.n_params
        for _ in range(self.steps_per_call):
            if self.variant == "plain":
                self.fn(*self.ptrs, n, LR)
            else:
                norm = float(np.sqrt(lib.sum_squares(self.ptrs[1], n)))
                lib.full_adam_step(*self.ptrs, n, LR, LR * 0.01, min(1.0, 1.0 / max(norm, 1e-12)))


# -- adamgen ----------------------------------------------------------------------------------------
class Adamgen(Peer):
    def __init__(self, wl: Workload, variant: str, target: str, flat: bool) -> None:
        super().__init__(wl, variant)
        self.target, self.flat = target, flat
        self.name, self.layout = f"adamgen {target}", "flat" if flat else "tree"
        if target == "numpy":
            self.max_repeats = 3
            self.note = "the NumPy oracle (Keras' rounding, per-op temporaries)"

    def prepare(self) -> None:
        super().prepare()
        import adamgen  # noqa: F401
        if self.target != "numpy" and self.flat:
            self.wl.flat_grads_jax()
        elif self.target != "numpy":
            self.wl.jax_grads()

    def init(self) -> None:
        import adamgen
        self.opt = adamgen.build(adamgen.AdamSpec(**self.kw), target=self.target)
        if self.target == "numpy":
            self.p = [p.copy() for p in self.wl.params]
            self.g = list(self.wl.grads)
        elif self.flat:
            self.p, self.g = self._ravel(self.wl.jax_params()), self.wl.flat_grads_jax()
        else:
            self.p, self.g = self.wl.jax_params(), self.wl.jax_grads()
        self.st = self.opt.init(self.p)

    def _ravel(self, tree: dict[str, jax.Array]) -> jax.Array:
        try:
            from adamgen.flat import ravel
            self.note = "params kept flat (adamgen.flat.ravel, in init)"
            return ravel(tree)[0]
        except ImportError:
            self.note = "params kept flat (bench's own ravel)"
            return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])

    def step(self) -> None:
        self.p, self.st = self.opt.apply(self.g, self.st, self.p)
        if self.target != "numpy":
            jax.block_until_ready((self.p, self.st))


class AdamgenInJit(Adamgen):
    """adamgen's `apply` traced into the caller's jit (in_jit_steps(tensors) steps a call, see in_jit)."""

    def __init__(self, wl: Workload, variant: str, target: str) -> None:
        super().__init__(wl, variant, target, flat=False)
        self.layout = "jit"
        self.steps_per_call = k = in_jit_steps(wl.n_tensors)
        self.note = f"{k} steps in one caller's jit (lax.fori_loop), time / {k}"

    def init(self) -> None:
        super().init()
        self.fn = adamgen_in_jit(self.opt, self.steps_per_call)

    def step(self) -> None:
        self.p, self.st = jax.block_until_ready(self.fn(self.p, self.st, self.g))


# -- optax ------------------------------------------------------------------------------------------
def optax_transform(variant: str):
    """optax's counterpart of a variant, and a note saying what it is."""
    import optax
    if variant == "plain":
        return optax.adam(LR, eps=EPS), "optax.adam"
    # Keras' order: clip the grads, decoupled decay scaled by lr, AMSGrad; the EMA by hand (optax_step)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_amsgrad(eps=EPS),
                     optax.add_decayed_weights(0.01), optax.scale_by_learning_rate(LR))
    return tx, "chain(clip_by_global_norm, scale_by_amsgrad, add_decayed_weights) + EMA tree_map"


def optax_update(tx):
    """step(params, opt_state, averages or None, grads) -> (params, opt_state, averages)."""
    import optax

    def step(p, s, avg, g):
        updates, s = tx.update(g, s, p)
        p = optax.apply_updates(p, updates)
        if avg is not None:
            avg = jax.tree_util.tree_map(lambda a, x: a * 0.99 + x * 0.01, avg, p)
        return p, s, avg

    return step


def optax_step(tx):
    """jit(optax_update(tx)) with params, state and averages donated."""
    return jax.jit(optax_update(tx), donate_argnums=(0, 1, 2))


def optax_in_jit(tx, k: int = IN_JIT_STEPS):
    """in_jit over optax_update: run(p, (opt_state, averages), g) -> (p, (opt_state, averages))."""
    update = optax_update(tx)

    def step(p, state, g):
        p, s, avg = update(p, *state, g)
        return p, (s, avg)
    return in_jit(step, k)


class Optax(Peer):
    name = "optax jit+donate"

    def prepare(self) -> None:
        super().prepare()
        import optax  # noqa: F401
        self.wl.jax_grads()

    def init(self) -> None:
        tx, self.note = optax_transform(self.variant)
        self.fn = optax_step(tx)
        self.p, self.g = self.wl.jax_params(), self.wl.jax_grads()
        self.s = tx.init(self.p)
        self.avg = jax.tree_util.tree_map(jnp.copy, self.p) if self.variant == "full" else None

    def step(self) -> None:
        self.p, self.s, self.avg = jax.block_until_ready(self.fn(self.p, self.s, self.avg, self.g))


class OptaxInJit(Optax):
    """optax's step inside the caller's jit, as AdamgenInJit runs adamgen's."""

    layout = "jit"

    def __init__(self, wl: Workload, variant: str) -> None:
        super().__init__(wl, variant)
        self.steps_per_call = in_jit_steps(wl.n_tensors)

    def init(self) -> None:
        super().init()
        k = self.steps_per_call
        self.note += f"; {k} steps in one caller's jit (lax.fori_loop), time / {k}"
        self.fn = optax_in_jit(optax_transform(self.variant)[0], k)

    def step(self) -> None:
        self.p, (self.s, self.avg) = jax.block_until_ready(self.fn(self.p, (self.s, self.avg), self.g))


# -- keras ------------------------------------------------------------------------------------------
class Keras(Peer):
    name, note = "keras jit+donate", "keras.optimizers.Adam.stateless_apply"

    def prepare(self) -> None:
        super().prepare()
        import keras  # noqa: F401
        self.wl.jax_grads()

    def init(self) -> None:
        import keras
        variables = [keras.Variable(p, name=n.replace(".", "_"))
                     for n, p in zip(self.wl.names, self.wl.params)]
        self.opt = keras.optimizers.Adam(**self.kw)
        self.opt.build(variables)
        self.p = [v.value for v in variables]
        self.s = [v.value for v in self.opt.variables]
        grads = self.wl.jax_grads()
        self.g = [grads[n] for n in self.wl.names]
        opt = self.opt

        def step(opt_vars: list, grads: list, train_vars: list) -> tuple[list, list]:
            # stateless_apply returns (trainable, optimizer) for args (optimizer, grads, trainable);
            # jit pairs donated buffers with outputs by position, so that order costs XLA a copy of
            # every array. Returning them in argument order makes the update truly in place.
            train_vars, opt_vars = opt.stateless_apply(opt_vars, grads, train_vars)
            return opt_vars, train_vars

        self.fn = jax.jit(step, donate_argnums=(0, 2))

    def step(self) -> None:
        self.s, self.p = jax.block_until_ready(self.fn(self.s, self.g, self.p))


# -- torch ------------------------------------------------------------------------------------------
class Torch(Peer):
    def __init__(self, wl: Workload, variant: str, mode: str) -> None:
        super().__init__(wl, variant)
        self.mode, self.name = mode, f"torch {mode}"
        self.note = ("torch.optim.Adam" if variant == "plain" else
                     "AdamW(amsgrad) + clip_grad_norm_(foreach) + _foreach_lerp_ EMA")

    @property
    def footprint(self) -> int:  # foreach ops allocate whole-tree temporaries
        return super().footprint + (8 * self.wl.n_params if self.mode == "foreach" else 0)

    def prepare(self) -> None:
        super().prepare()
        self.wl.torch_grads()

    def init(self) -> None:
        import torch
        self.p = [torch.from_numpy(p.copy()) for p in self.wl.params]
        for p, g in zip(self.p, self.wl.torch_grads()):
            p.grad = g
        self.fn = torch_step(self.p, self.variant, self.mode)

    def step(self) -> None:
        self.fn()


def torch_step(params: list, variant: str, mode: str):
    """torch's counterpart of a variant over `params` (their .grad set), as a step function:
    Adam, or AdamW(amsgrad) after clip_grad_norm_ with an EMA by _foreach_lerp_; `mode` is
    "fused" or "foreach"."""
    import torch
    cls = torch.optim.Adam if variant == "plain" else torch.optim.AdamW
    extra = {} if variant == "plain" else {"amsgrad": True, "weight_decay": 0.01}
    opt = cls(params, lr=LR, eps=EPS, **{mode: True}, **extra)
    avg = [p.clone() for p in params] if variant == "full" else None

    def step() -> None:
        with torch.no_grad():
            if variant == "full":
                torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()
            if avg is not None:
                torch._foreach_lerp_(avg, params, 0.01)
    return step


def torch_available() -> str | None:
    """None if torch imports, else the reason it does not."""
    try:
        import torch  # noqa: F401
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


def make_peers(wl: Workload, variant: str, with_numpy: bool) -> list[Peer]:
    """Every candidate for one workload and variant, the floor first."""
    peers: list[Peer] = [CFloor(wl, variant)]
    peers += [Adamgen(wl, variant, "jax", flat=False), Adamgen(wl, variant, "jax", flat=True),
              Adamgen(wl, variant, "cpu", flat=False), Adamgen(wl, variant, "cpu", flat=True),
              AdamgenInJit(wl, variant, "cpu")]
    if with_numpy:
        peers.append(Adamgen(wl, variant, "numpy", flat=False))
    peers += [Optax(wl, variant), OptaxInJit(wl, variant), Keras(wl, variant)]
    if torch_available() is None:
        peers += [Torch(wl, variant, "foreach"), Torch(wl, variant, "fused")]
    return peers
