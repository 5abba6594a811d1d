"""The fixed set of specs whose artifacts are checked in under generated/ and diffed in tests.

Regenerate with `python -m adamgen.snapshots` after a deliberate change to the compiler.
"""
from __future__ import annotations

import sys
from pathlib import Path

from adamgen.cli import main as cli_main

FULL = ["--amsgrad", "--weight-decay", "0.01", "--global-clipnorm", "1.0", "--use-ema",
        "--ema-overwrite-frequency", "100", "--gradient-accumulation-steps", "4"]

# artifact name -> adamgen build flags (the target's own suffix is part of the name)
SNAPSHOTS: dict[str, list[str]] = {
    "adam_plain_jax": ["--target", "jax"],
    "adam_amsgrad_jax": ["--amsgrad", "--target", "jax"],
    "adam_full_jax": [*FULL, "--target", "jax"],
    "adam_plain_cpu": ["--target", "cpu"],
    "adam_amsgrad_cpu": ["--amsgrad", "--target", "cpu"],
    "adam_full_cpu": [*FULL, "--target", "cpu"],
    # float16 params: the host kernel's loop runs on explicit vectors (host/vector.h)
    "adam_amsgrad_f16_cpu": ["--amsgrad", "--clipvalue", "0.5", "--dtype", "f16", "--target", "cpu"],
    "adam_amsgrad_cuda": ["--amsgrad", "--target", "cuda"],
    "adam_full_cuda": [*FULL, "--target", "cuda"],
    # A tree of f32 and bf16 under one global norm (the bf16_f32norm variant) with biases
    # excluded from weight decay (the per-tensor flag).
    "adam_mixed_cpu": ["--global-clipnorm", "1.0", "--weight-decay", "0.01", "--exclude-from-weight-decay", "bias",
                       "--beta-2", "0.99", "--dtype", "f32", "--dtype", "bf16", "--target", "cpu"],
}
# Machine-specific outputs of native builds: not checked in, not diffed (see aot.py).
MACHINE_SPECIFIC = ("build.json", ".so")

ROOT = Path(__file__).resolve().parent.parent / "generated"


def build_all(root: Path = ROOT, names: list[str] | None = None) -> list[Path]:
    out = []
    for name in names or list(SNAPSHOTS):
        if cli_main(["build", *SNAPSHOTS[name], "-o", str(root / name)]) != 0:
            raise RuntimeError(f"building snapshot {name} failed")
        out.append(root / name)
    return out


if __name__ == "__main__":
    build_all(names=sys.argv[1:] or None)
