"""model.fit with keras.optimizers.Adam vs adamgen.keras_optimizer.Adam (jax and cpu targets).

    python bench/bench_keras_fit.py [--layers 100] [--width 64] [--steps 50] [--rounds 5]

A stack of Dense layers (2 variables each), full AdamW-style options (amsgrad, weight decay with
biases excluded, global clipnorm). Each candidate trains the same model from the same weights;
after a first epoch (compile), epochs of `--steps` batches are timed in interleaved rounds and
the median time per train step is reported, with the first epoch's time. The train step holds
the forward and backward pass too, so the difference between rows is the optimizer's.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from adamgen.keras_optimizer import Adam  # noqa: E402

KW = dict(learning_rate=1e-3, amsgrad=True, weight_decay=0.01, global_clipnorm=1.0)


def build(layers: int, width: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    stack = [keras.Input((width,))] + [keras.layers.Dense(width, activation="tanh") for _ in range(layers)]
    return keras.Sequential(stack + [keras.layers.Dense(1)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=100)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50, help="train steps (batches) per timed epoch")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    batch = 32
    x = rng.standard_normal((batch * args.steps, args.width)).astype(np.float32)
    y = rng.standard_normal((batch * args.steps, 1)).astype(np.float32)
    makers = {"keras Adam": lambda: keras.optimizers.Adam(**KW),
              "adamgen Adam, jax target": lambda: Adam(**KW, target="jax"),
              "adamgen Adam, cpu target": lambda: Adam(**KW, target="cpu")}
    models, first = {}, {}
    for name, make in makers.items():
        opt = make()
        opt.exclude_from_weight_decay(var_names=["bias"])
        model = build(args.layers, args.width)
        model.compile(optimizer=opt, loss="mse")
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        first[name] = time.perf_counter() - t0
        models[name] = model
    times: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(args.rounds):
        for name, model in models.items():
            t0 = time.perf_counter()
            model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    n_params = models["keras Adam"].count_params()
    n_vars = len(models["keras Adam"].trainable_variables)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; keras {keras.__version__}; "
          f"{n_params:,} params in {n_vars} variables, batch {batch}; medians of {args.rounds} interleaved epochs "
          f"of {args.steps} steps\n")
    print("| optimizer | ms per train step | vs keras Adam | first epoch (compile) s |")
    print("|---|---|---|---|")
    base = statistics.median(times["keras Adam"])
    for name in makers:
        ms = statistics.median(times[name])
        print(f"| {name} | {ms:.2f} | {base / ms:.2f}x | {first[name]:.1f} |")


if __name__ == "__main__":
    main()
