#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one command (one device call): the machine, the GPU
# tests, then bench/bench_gpu.py. Logs go to $OUT (the device tool's folder) or ./gpu-out.
#   bash bench/gpu_session.sh [extra bench_gpu.py arguments]
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
# JAX would take 75% of the GPU at start-up; torch shares the process in bench_gpu.py.
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false \
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi; nvcc --version; python3 -c "import jax; print('jax', jax.__version__, jax.devices())"; } \
  2>&1 | tee "$out/env.log"
# The host-side tests on the CPU backend (with a GPU present JAX would place their arrays on it,
# where the cpu target's FFI handlers do not exist), then the GPU tests on the GPU.
JAX_PLATFORMS=cpu python3 -m pytest -q -rs tests/test_native.py tests/test_cuda_emulated.py tests/test_toolchain.py \
  2>&1 | tee "$out/host_tests.log"
python3 -m pytest -q -rs tests/test_native.py -k "gpu or cuda" 2>&1 | tee "$out/gpu_tests.log"
python3 bench/bench_gpu.py --out "$out/gpu_bench.md" "$@" 2>&1 | tee "$out/gpu_bench.log"
