"""adamgen: a compiler for the Keras 3 Adam step.

    spec = adamgen.AdamSpec(amsgrad=True)
    opt = adamgen.build(spec, target="jax")      # "numpy" (the oracle), "jax", "cpu", "cuda"
    state = opt.init(params)
    params, state = opt.apply(grads, state, params)
"""
from __future__ import annotations

from adamgen.spec import AdamSpec
from adamgen.state import AdamState
from adamgen import schedules

__version__ = "0.1.0"
TARGETS = ("numpy", "jax", "cpu", "cuda")


def _as_spec(spec) -> AdamSpec:
    if isinstance(spec, AdamSpec):
        return spec
    if isinstance(spec, dict):
        return AdamSpec.from_keras_config(spec)
    raise TypeError(f"spec must be an AdamSpec or a Keras get_config() dict, got {type(spec).__name__}")


def build(spec, target: str = "jax", *, verify: bool = False):
    """Compile `spec` for `target` and return an `adamgen.runtime.Optimizer`."""
    from adamgen.runtime import Optimizer

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    spec = _as_spec(spec)
    if target == "numpy":
        from adamgen.backends.numpy import OracleExecutor
        return Optimizer(spec, target, OracleExecutor(spec), donates=False)
    from adamgen.compiler import kernels_for
    if target == "jax":
        from adamgen.backends.jax import JaxExecutor
        return Optimizer(spec, target, JaxExecutor(spec, kernels_for(spec, verify)), donates=True)
    from adamgen.backends.native import native_optimizer
    return native_optimizer(spec, target, verify=verify)


def load(path):
    """Load an artifact written by `adamgen build` (runs without re-running the compiler)."""
    from adamgen.aot import load_artifact
    return load_artifact(path)


# Imported on first use, so `import adamgen` stays light: adamgen.checkpoint.save(...) works
# after a plain `import adamgen`, as the README writes it.
_SUBMODULES = ("checkpoint", "interop", "flat", "keras_optimizer")


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib
        return importlib.import_module(f"adamgen.{name}")
    raise AttributeError(f"module 'adamgen' has no attribute {name!r}")


__all__ = ["AdamSpec", "AdamState", "build", "load", "schedules", "TARGETS", *_SUBMODULES]
