#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, for one device call (each call has 10 minutes): the
# machine, the GPU tests, then bench/bench_gpu.py. The host-side tests (cpu target, the CUDA
# source emulated on the CPU) run in CI and are not repeated here. Logs go to $OUT (the device
# tool's folder) or ./gpu-out.
#   bash bench/gpu_session.sh [tests|bench|tune|all] [extra bench_gpu.py arguments]
# tune: `adamgen tune --target cuda` (the coordinate descent over the CUDA knobs) for the plain and
# full variants and float16/bfloat16 plain (there it also times hw_half), the cache written to
# $OUT/tune.json.
set -uo pipefail
stage=${1:-all}
[ $# -gt 0 ] && shift
case "$stage" in tests|bench|tune|all) ;; *) echo "stage must be tests, bench, tune or all, got '$stage'" >&2; exit 2;; esac
out=${OUT:-gpu-out}
mkdir -p "$out"
# JAX would take 75% of the GPU at start-up; torch shares the process in bench_gpu.py.
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false \
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi; nvcc --version; python3 -c "import jax; print('jax', jax.__version__, jax.devices())"; } \
  2>&1 | tee "$out/env.log"
# Without JAX's CUDA plugin every GPU test would skip and the bench find no GPU: stop here instead.
if ! python3 -c "import jax, sys; sys.exit(not any(d.platform == 'gpu' for d in jax.devices()))"; then
  echo "JAX sees no GPU: install its CUDA plugin (pip install -e '.[gpu]', i.e. jax[cuda13]) and run again" \
    | tee -a "$out/env.log" >&2
  exit 3
fi
if [ "$stage" = tests ] || [ "$stage" = all ]; then
  # every test marked gpu (pyproject's marker), wherever it lives
  python3 -m pytest -q -rs -m gpu tests 2>&1 | tee "$out/gpu_tests.log"
fi
if [ "$stage" = bench ] || [ "$stage" = all ]; then
  python3 bench/bench_gpu.py --out "$out/gpu_bench.md" "$@" 2>&1 | tee "$out/gpu_bench.log"
fi
if [ "$stage" = tune ] || [ "$stage" = all ]; then
  # float16 and bfloat16 last: their search also times hw_half (cvt instructions vs the bit-level form)
  for flags in "" "--global-clipnorm 1.0 --weight-decay 0.004 --amsgrad --use-ema" "--dtype f16" "--dtype bf16"; do
    # shellcheck disable=SC2086
    python3 -m adamgen tune $flags --target cuda --params 124000000 --cache "$out/tune.json" 2>&1 | tee -a "$out/tune.log"
  done
fi
