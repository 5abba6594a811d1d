/* The bandwidth floor of plain fp32 Adam on a 1000-tensor tree (10M params, each tensor its own
 * allocation) against the same params in one flat buffer: how much of the gap between adamgen's
 * in-jit tree step and the flat C floor the layout itself explains. Best of 15 rounds each:
 *
 *   gcc -O3 -march=native -fopenmp -fno-math-errno bench/floor_tree.c -o /tmp/ft -lm && /tmp/ft
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "adam_loop.h"

enum { kTensors = 1000 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static float* filled(int64_t n, float value) {
  float* a = malloc((size_t)n * sizeof(float));
  if (a == NULL) exit(1);
  for (int64_t i = 0; i < n; ++i) a[i] = value + (float)(i % 5);
  return a;
}

int main(void) {
  static int64_t sizes[kTensors];
  static float *P[kTensors], *G[kTensors], *M[kTensors], *V[kTensors];
  double weight = 0.0;
  srand(1);
  for (int t = 0; t < kTensors; ++t) weight += (double)(sizes[t] = 2 + rand() % 16);
  int64_t n = 0;
  for (int t = 0; t < kTensors; ++t) {
    sizes[t] = (int64_t)(sizes[t] * 1e7 / weight);
    n += sizes[t];
    P[t] = filled(sizes[t], 1.0f);
    G[t] = filled(sizes[t], 0.1f);
    M[t] = filled(sizes[t], 0.0f);
    V[t] = filled(sizes[t], 0.0f);
  }
  float *fp = filled(n, 1.0f), *fg = filled(n, 0.1f), *fm = filled(n, 0.0f), *fv = filled(n, 0.0f);
  double flat = 1e30, tree = 1e30;
  for (int round = 0; round < 15; ++round) {
    const double t0 = now();
    adam_flat(fp, fg, fm, fv, n);
    const double t1 = now();
#pragma omp parallel for schedule(dynamic, 8)
    for (int t = 0; t < kTensors; ++t) adam_span(P[t], G[t], M[t], V[t], sizes[t]);
    const double t2 = now();
    if (t1 - t0 < flat) flat = t1 - t0;
    if (t2 - t1 < tree) tree = t2 - t1;
  }
  printf("%lld params: flat buffer %.2f ms, %d separate tensors %.2f ms (%.2fx)\n", (long long)n,
         flat * 1e3, kTensors, tree * 1e3, tree / flat);
  return 0;
}
