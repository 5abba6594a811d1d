/* The plain fp32 Adam update (beta_1 0.9, beta_2 0.999, lr 1e-3, epsilon 1e-7; the same
 * arithmetic as bench/floor.c) for the standalone bench programs that include it:
 * bench/streaming_stores.c and bench/floor_tree.c. */
#pragma once
#include <math.h>
#include <stdint.h>

enum { kAdamChunk = 65536 };

/* n elements in place, vectorized, on the calling thread. */
static inline void adam_span(float* restrict p, const float* restrict g, float* restrict m,
                             float* restrict v, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float mi = m[i] + (g[i] - m[i]) * 0.1f;
    const float vi = v[i] + (g[i] * g[i] - v[i]) * 0.001f;
    p[i] = p[i] - 0.001f * mi / (sqrtf(vi) + 1e-7f);
    m[i] = mi;
    v[i] = vi;
  }
}

/* One flat buffer of n elements, in kAdamChunk-element chunks shared by the OpenMP threads. */
static void adam_flat(float* restrict p, const float* restrict g, float* restrict m,
                      float* restrict v, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < (n + kAdamChunk - 1) / kAdamChunk; ++c) {
    const int64_t a = c * kAdamChunk, len = (a + kAdamChunk < n ? a + kAdamChunk : n) - a;
    adam_span(p + a, g + a, m + a, v + a, len);
  }
}
