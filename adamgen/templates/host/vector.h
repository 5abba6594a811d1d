// The host element loop on explicit vectors (see host/vector_ops.h, included before the element
// header): loads and stores in every storage type, and the loop over a chunk.
// The kernel runs it for the dtypes its target lists (cpp.Capabilities.vector_dtypes) when its
// body can run on vectors (cpp.vector_capable); kVectorBody says both.
#include <type_traits>

namespace adamgen_kernel {

#if defined(__AVX2__) && defined(__F16C__)

template <>
inline adamgen_v8 adamgen_splat<adamgen_v8>(float f) {
  return adamgen_v8{f, f, f, f, f, f, f, f};
}
ADAMGEN_HD adamgen_v8 adamgen_load8(const float* p) {
  adamgen_v8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
ADAMGEN_HD adamgen_v8 adamgen_load8(const adamgen_f16* p) {
  return (adamgen_v8)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
ADAMGEN_HD adamgen_v8 adamgen_load8(const adamgen_bf16* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return (adamgen_v8)_mm256_slli_epi32(wide, 16);
}
ADAMGEN_HD void adamgen_store8(float* p, adamgen_v8 v) { std::memcpy(p, &v, sizeof(v)); }
ADAMGEN_HD void adamgen_store8(adamgen_f16* p, adamgen_v8 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph((__m256)v, kRoundEven));
}
ADAMGEN_HD void adamgen_store8(adamgen_bf16* p, adamgen_v8 v) {
  const adamgen_v8u u = (adamgen_v8u)v;
  const adamgen_v8u nan = (u >> 16) | 0x40u;  // quiet
  const adamgen_v8u rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const __m256i h = (__m256i)((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
  // pack the eight 32-bit lanes (each < 2^16) to 16 bits: packus works within 128-bit halves,
  // the permute brings the two halves' results together
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

template <int r, typename V>
ADAMGEN_HD void load_vec(V (&x)[kRoles], void* const (&p)[kRoles], std::int64_t i) {
  if constexpr (kRoleArg[r] >= 0) x[r] = adamgen_load8(static_cast<const Role<r>*>(p[r]) + i);
}
template <int r, typename V>
ADAMGEN_HD void store_vec(const V (&x)[kRoles], void* const (&p)[kRoles], std::int64_t i) {
  if constexpr (kRoleRet[r] >= 0) adamgen_store8(static_cast<Role<r>*>(p[r]) + i, x[r]);
}
template <typename V, int... r>
ADAMGEN_HD void step_vec(std::integer_sequence<int, r...>, void* const (&p)[kRoles], std::int64_t i,
                         const float* __restrict__ s, const float* __restrict__ pt) {
  V x[kRoles];
  (load_vec<r>(x, p, i), ...);
  element_many(x, s, pt);
  (store_vec<r>(x, p, i), ...);
}

// Elements [begin, end) of a tensor of more than one element, kLanes at a time while whole
// vectors fit; returns where it stopped (the caller's scalar loop does the rest).
template <bool kOn>
std::int64_t run_vector(void* const (&p)[kRoles], std::int64_t begin, std::int64_t end,
                        const float* __restrict__ s, const float* __restrict__ pt) {
  if constexpr (kOn) {
    using V = std::conditional_t<kOn, adamgen_v8, float>;  // dependent: built only when on
    std::int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) step_vec<V>(AllRoles{}, p, i, s, pt);
    return i;
  }
  return begin;
}

#else

template <bool kOn>
std::int64_t run_vector(void* const (&)[kRoles], std::int64_t begin, std::int64_t,
                        const float* __restrict__, const float* __restrict__) {
  return begin;
}

#endif

}  // namespace adamgen_kernel
