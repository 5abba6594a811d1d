/* Streaming (non-temporal) stores on the Adam access pattern, against plain stores: the measure
 * behind the cpu tuner leaving them out (adamgen/tune.py). Plain fp32 Adam over 16.8M params
 * (adam_loop.h's chunked loop against the same arithmetic with _mm256_stream_ps), OpenMP threads
 * (OMP_NUM_THREADS), best of 15 interleaved rounds each:
 *
 *   gcc -O3 -march=native -fopenmp -fno-math-errno bench/streaming_stores.c -o /tmp/ss -lm && /tmp/ss
 *
 * Every array Adam writes it has just read, so its lines are in cache and a plain store costs no
 * read-for-ownership; a streaming store instead evicts the line and writes it around the cache.
 * Needs AVX (x86-64).
 */
#define _POSIX_C_SOURCE 200809L
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "adam_loop.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* The same arithmetic, 8 floats at a time, with _mm256_stream_ps for every written array. */
static void streaming(float* restrict p, const float* restrict g, float* restrict m,
                      float* restrict v, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 gi = _mm256_load_ps(g + i);
    __m256 mi = _mm256_load_ps(m + i);
    __m256 vi = _mm256_load_ps(v + i);
    __m256 pi = _mm256_load_ps(p + i);
    mi = _mm256_add_ps(mi, _mm256_mul_ps(_mm256_sub_ps(gi, mi), _mm256_set1_ps(0.1f)));
    vi = _mm256_add_ps(vi, _mm256_mul_ps(_mm256_sub_ps(_mm256_mul_ps(gi, gi), vi), _mm256_set1_ps(0.001f)));
    const __m256 denom = _mm256_add_ps(_mm256_sqrt_ps(vi), _mm256_set1_ps(1e-7f));
    pi = _mm256_sub_ps(pi, _mm256_div_ps(_mm256_mul_ps(_mm256_set1_ps(0.001f), mi), denom));
    _mm256_stream_ps(p + i, pi);
    _mm256_stream_ps(m + i, mi);
    _mm256_stream_ps(v + i, vi);
  }
  _mm_sfence();
}

int main(void) {
  const int64_t n = INT64_C(1) << 24;
  float* a[4];
  for (int k = 0; k < 4; ++k) {
    a[k] = aligned_alloc(64, (size_t)n * sizeof(float));
    if (a[k] == NULL) return 1;
    for (int64_t i = 0; i < n; ++i) a[k][i] = (k >= 2) ? 0.5f : 1.0f + (float)(i % 7);
  }
  double best[2] = {1e30, 1e30};
  for (int round = 0; round < 15; ++round) {
    for (int which = 0; which < 2; ++which) {
      const double t0 = now();
      (which ? streaming : adam_flat)(a[0], a[1], a[2], a[3], n);
      const double ms = (now() - t0) * 1e3;
      if (ms < best[which]) best[which] = ms;
    }
  }
  printf("plain stores %.2f ms (%.1f GB/s), streaming stores %.2f ms (%.1f GB/s)\n", best[0],
         28.0 * n / best[0] / 1e6, best[1], 28.0 * n / best[1] / 1e6);
  return 0;
}
