/* Bandwidth floors for bench/bench_adam.py, called through ctypes (built at bench time):
 *
 *   gcc -O3 -march=native -fopenmp -fno-math-errno -shared -fPIC bench/floor_variants.c -o floor.so -lm
 *
 * sum_squares + full_adam_step: the "full variant" (global clipnorm + decoupled weight decay +
 *   AMSGrad + EMA) as two passes: a norm pass that re-reads g (4 B/param), then one update pass
 *   (read p, g, m, v, v_hat, avg; write p, m, v, v_hat, avg: 44 B/param). 48 B/param in all.
 */
#include <math.h>
#include <stdint.h>

double sum_squares(const float* restrict g, int64_t n) {
  double total = 0.0;
#pragma omp parallel for simd schedule(static) reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) total += (double)(g[i] * g[i]);
  return total;
}

void full_adam_step(float* restrict p, const float* restrict g, float* restrict m,
                    float* restrict v, float* restrict vhat, float* restrict avg, int64_t n,
                    float alpha, float lr_wd, float scale) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * scale;
    float pi = p[i] - p[i] * lr_wd;
    const float mi = m[i] + (gi - m[i]) * 0.1f;
    const float vi = v[i] + (gi * gi - v[i]) * 0.001f;
    const float hi = vi > vhat[i] ? vi : vhat[i];  /* not fmaxf: its NaN rule blocks vectorizing */
    pi = pi - (mi * alpha) / (sqrtf(hi) + 1e-7f);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    vhat[i] = hi;
    avg[i] = avg[i] * 0.99f + pi * 0.01f;
  }
}
