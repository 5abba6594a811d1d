/* Bandwidth floor for plain fp32 Adam: one in-place OpenMP loop that reads p, g, m, v and writes
 * p, m, v (28 B/param), the traffic any fused Adam step must move.
 *
 *   gcc -O3 -march=native -fopenmp -fno-math-errno bench/floor.c -o /tmp/floor -lm
 *   /tmp/floor [n_params=16777216] [repeats=30]
 * Prints the median ms per step and GB/s (28 B/param / median time).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static float* alloc_floats(int64_t n) {
  float* ptr = aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
  if (!ptr) { fprintf(stderr, "out of memory\n"); exit(1); }
  return ptr;
}

void floor_adam_step(float* restrict p, const float* restrict g, float* restrict m,
                      float* restrict v, int64_t n, float alpha) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float mi = m[i] + (g[i] - m[i]) * 0.1f;
    const float vi = v[i] + (g[i] * g[i] - v[i]) * 0.001f;
    p[i] = p[i] - (mi * alpha) / (sqrtf(vi) + 1e-7f);
    m[i] = mi;
    v[i] = vi;
  }
}

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? atoll(argv[1]) : 16777216;
  const int repeats = argc > 2 ? atoi(argv[2]) : 30;
  float *p = alloc_floats(n), *g = alloc_floats(n), *m = alloc_floats(n), *v = alloc_floats(n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {  /* first touch by the threads that use the pages */
    p[i] = 1.0f; g[i] = (float)(i % 7) * 0.01f; m[i] = 0.0f; v[i] = 0.0f;
  }
  double* times = malloc(sizeof(double) * (size_t)repeats);
  floor_adam_step(p, g, m, v, n, 1e-3f); /* warm-up */
  for (int r = 0; r < repeats; ++r) {
    const double t0 = now_s();
    floor_adam_step(p, g, m, v, n, 1e-3f);
    times[r] = now_s() - t0;
  }
  qsort(times, (size_t)repeats, sizeof(double), cmp_double);
  const double med = times[repeats / 2];
  printf("floor n=%lld repeats=%d median_ms=%.3f GB/s=%.2f checksum=%g\n", (long long)n, repeats,
         med * 1e3, 28.0 * (double)n / med / 1e9, (double)p[n / 2]);
  free(times); free(p); free(g); free(m); free(v);
  return 0;
}
