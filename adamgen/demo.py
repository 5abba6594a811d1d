"""`adamgen demo`: build an artifact, load it in a fresh process, train a small model with it.

The model is a two-layer MLP fitting a synthetic regression task with jax.grad. The same
training run is repeated with the NumPy oracle (Keras' semantics), and the demo reports the loss
curve, the largest difference between the two runs' params (failing past ORACLE_TOLERANCE), and
the step time.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

TRAIN = textwrap.dedent('''
    import json, sys, time
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, sys.argv[1])
    from {pkg} import optimizer as opt           # the artifact, loaded in this fresh process
    import adamgen

    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 16)).astype(np.float32)
    y = np.sin(x @ rng.standard_normal((16, 1)).astype(np.float32))
    init = {{"w1": rng.standard_normal((16, 64)).astype(np.float32) * 0.25, "b1": np.zeros(64, np.float32),
            "w2": rng.standard_normal((64, 1)).astype(np.float32) * 0.1, "b2": np.zeros(1, np.float32)}}

    def loss(p):
        h = jnp.tanh(x @ p["w1"] + p["b1"])
        return jnp.mean((h @ p["w2"] + p["b2"] - y) ** 2)

    grad_fn = jax.jit(jax.value_and_grad(loss))

    def train(optimizer, steps):
        params = jax.tree_util.tree_map(jnp.asarray, init)
        state = optimizer.init(params)
        losses, times = [], []
        for _ in range(steps):
            value, grads = grad_fn(params)
            t0 = time.perf_counter()
            params, state = optimizer.apply(grads, state, params)
            jax.block_until_ready(params)
            times.append(time.perf_counter() - t0)
            losses.append(float(value))
        return params, losses, times

    steps = int(sys.argv[2])
    params, losses, times = train(opt, steps)
    oracle = adamgen.build(opt.spec, "numpy")
    ref, ref_losses, _ = train(oracle, steps)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)))
    print(json.dumps({{"losses": losses, "oracle_losses": ref_losses, "max_param_diff": diff,
                      "median_step_ms": 1e3 * float(np.median(times[1:]))}}))
''')


# The largest |param - oracle param| the demo accepts after its run: the jax target's few-ulp
# differences grow to ~1e-5 over 200 training steps (the cpu target's step is the oracle's to the
# bit here: no norm clipping), where a wrong formula moves params by 1e-2 and more.
ORACLE_TOLERANCE = 1e-3


def run_demo(target: str = "jax", steps: int = 200, flags: list[str] | None = None) -> dict:
    from adamgen.cli import main as cli_main

    flags = flags or ["--amsgrad", "--learning-rate", "0.01", "--weight-decay", "0.001"]
    with tempfile.TemporaryDirectory() as tmp:
        pkg = f"adam_demo_{target}"
        print(f"$ adamgen build {' '.join(flags)} --target {target} -o {tmp}/{pkg}")
        if cli_main(["build", *flags, "--target", target, "-o", str(Path(tmp) / pkg)]) != 0:
            raise SystemExit("build failed")
        print(f"training a 2-layer MLP for {steps} steps with the artifact, in a fresh process ...")
        res = subprocess.run([sys.executable, "-c", TRAIN.format(pkg=pkg), tmp, str(steps)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"demo training failed:\n{res.stderr}")
        result = json.loads(res.stdout.strip().splitlines()[-1])
    losses = result["losses"]
    for k in sorted({0, 1, 10, 50, steps // 2, steps - 1}):
        if k < len(losses):
            print(f"  step {k:4d}  loss {losses[k]:.6f}   (oracle {result['oracle_losses'][k]:.6f})")
    print(f"max |param - oracle param| after {steps} steps: {result['max_param_diff']:.3g}")
    print(f"median optimizer step: {result['median_step_ms']:.3f} ms")
    if not losses[-1] < 0.5 * losses[0]:
        raise SystemExit("demo: the loss did not go down")
    if not result["max_param_diff"] <= ORACLE_TOLERANCE:
        raise SystemExit(f"demo: the params left the oracle's by {result['max_param_diff']:.3g} "
                         f"(more than {ORACLE_TOLERANCE}): the target does not compute Keras' step")
    return result


if __name__ == "__main__":
    run_demo()
