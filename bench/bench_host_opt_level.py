"""Per-call cost of compiling the cpu target's jits at LLVM -O0 (HOST_COMPILER_OPTIONS, which keeps the
scalar ops FMA-free and so bit-exact with Keras) against -O2, in one process: 1000 tensors
(~10M params), AMSGrad + weight decay + global clipnorm + a cosine schedule, 15 interleaved
calls, medians. Run: python bench/bench_host_opt_level.py"""
import sys, time, numpy as np, jax, adamgen
import adamgen.backends.native as N, adamgen.backends.jax as J
spec = adamgen.AdamSpec(learning_rate=adamgen.schedules.CosineDecay(0.01, 100), amsgrad=True, weight_decay=0.01, global_clipnorm=1.0)
rng = np.random.default_rng(0)
sizes = rng.integers(1000, 19000, 1000)
params = [rng.standard_normal(int(s)).astype(np.float32) for s in sizes]
grads = [jax.device_put(rng.standard_normal(int(s)).astype(np.float32)) for s in sizes]
def build(o0):
    N.HOST_COMPILER_OPTIONS = J.HOST_COMPILER_OPTIONS if o0 else J.STEP_COMPILER_OPTIONS
    opt = adamgen.build(spec, target="cpu"); p = [jax.device_put(x) for x in params]; s = opt.init(p)
    t = time.perf_counter(); p, s = opt.apply(grads, s, p); jax.block_until_ready(p); first = time.perf_counter() - t
    return [opt, p, s, first]
runs = {"O0": build(True), "O2": build(False)}
for k, v in runs.items(): print(k, "first call", round(v[3], 2), "s")
ts = {k: [] for k in runs}
for r in range(15):
    for k, v in runs.items():
        t = time.perf_counter(); v[1], v[2] = v[0].apply(grads, v[2], v[1]); jax.block_until_ready(v[1]); ts[k].append(time.perf_counter() - t)
for k in ts: print(k, "per call ms (1000 tensors, full variant):", round(np.median(ts[k]) * 1e3, 2))
