// The host element loop on explicit 8-lane vectors, where the compiling CPU has AVX2 and F16C
// (the library is built with -march=native for the CPU it runs on). GCC vectorizes the scalar
// loop by itself, but not float16 conversions: there a vector loop rounds an op's result in two
// instructions (vcvtps2ph, vcvtph2ps) where the scalar body's bit arithmetic takes about twelve.
// Every function here and in host/vector.h gives what its scalar twin in the element header
// gives, lane by lane, bit for bit (round to nearest even, NaN kept quiet with its payload cut
// as the scalar code cuts it), but one: a signaling float16 NaN loads quiet (the hardware
// conversion quiets it), which no stored value shows, as every store quiets a NaN.
// tests/test_host_vector.py checks them against those twins.
// This part, the vector types and the ops an element body calls on them, comes before the
// element header (a template's calls bind to what is declared before it: GCC's vectors have no
// namespace for argument-dependent lookup); host/vector.h, after it, holds the loop.
#include <cstdint>
#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#endif

namespace adamgen_kernel {

#if defined(__AVX2__) && defined(__F16C__)

constexpr bool kHostVector = true;
constexpr std::int64_t kLanes = 8;
typedef float adamgen_v8 __attribute__((vector_size(32)));
typedef std::uint32_t adamgen_v8u __attribute__((vector_size(32)));
typedef std::int32_t adamgen_v8i __attribute__((vector_size(32)));  // lane masks: -1 or 0
constexpr int kRoundEven = _MM_FROUND_TO_NEAREST_INT;  // imm8 of the VEX vcvtps2ph: rounding only

ADAMGEN_HD adamgen_v8 adamgen_sqrt(adamgen_v8 f) { return (adamgen_v8)_mm256_sqrt_ps((__m256)f); }
// NumPy's maximum/minimum, as the scalar adamgen_max/adamgen_min: a NaN operand gives NaN.
ADAMGEN_HD adamgen_v8 adamgen_max(adamgen_v8 a, adamgen_v8 b) {
  const adamgen_v8i take_a = (a != a) | (a > b);
  const adamgen_v8i take_b = (b != b) | (b > a);
  return take_a ? a : (take_b ? b : a);
}
ADAMGEN_HD adamgen_v8 adamgen_min(adamgen_v8 a, adamgen_v8 b) {
  const adamgen_v8i take_a = (a != a) | (a < b);
  const adamgen_v8i take_b = (b != b) | (b < a);
  return take_a ? a : (take_b ? b : a);
}
ADAMGEN_HD adamgen_v8 adamgen_round_f16(adamgen_v8 f) {
  return (adamgen_v8)_mm256_cvtph_ps(_mm256_cvtps_ph((__m256)f, kRoundEven));
}
ADAMGEN_HD adamgen_v8 adamgen_round_bf16(adamgen_v8 f) {
  const adamgen_v8u u = (adamgen_v8u)f;
  const adamgen_v8u up = u + 0x7fffu + ((u >> 16) & 1u);  // to even
  return (adamgen_v8)((f != f ? (u | 0x00400000u) : up) & 0xffff0000u);  // NaN: quiet
}

#else

constexpr bool kHostVector = false;

#endif

}  // namespace adamgen_kernel
