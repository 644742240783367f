// Float vectors of the target's width (GCC/Clang vector extensions) and a branch-free vector exp for the
// CPU kernels.
//
// Why not `#pragma omp simd` loops: at the training shapes (C = 10..1000 classes per row) the compiler's
// generic loops spent more time in prologues, masked epilogues, spilled reductions and scalar exp
// calls than in the arithmetic. Rows here are padded to a multiple of 16 in scratch, so every loop is
// whole vectors. The compiler lowers vf16 to the widest unit -march allows (one zmm with AVX-512, two ymm
// with AVX2, four xmm with SSE), so the code stays portable.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#ifndef MSD_FAST_ISA
#error "simd16.h is included by fused_cpu_kernel.h, inside an instruction-set namespace"
#endif
namespace msd_fast::MSD_FAST_ISA::simd {

// One vector = the target's register width: 16 floats with AVX-512, 8 with AVX2, 4 with SSE
// (MSD_FAST_NATIVE_LANES, set by the instruction-set TU). Wider generic vectors than the registers made GCC
// route compares and shuffles through the stack (the AVX2 build ran 5x slower than AVX-512).
#ifndef MSD_FAST_NATIVE_LANES
#define MSD_FAST_NATIVE_LANES 16
#endif
constexpr int64_t kLanes = MSD_FAST_NATIVE_LANES;
typedef float vf16 __attribute__((vector_size(4 * MSD_FAST_NATIVE_LANES)));
typedef int32_t vi16 __attribute__((vector_size(4 * MSD_FAST_NATIVE_LANES)));

inline vf16 splat(float x) { return vf16{} + x; }

inline vf16 load(const float* p) {
  vf16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, vf16 v) { std::memcpy(p, &v, sizeof(v)); }

// bfloat16 <-> float, one vector: bf16 is the top half of a float, so widening is a shift; narrowing rounds
// to nearest even (NaN -> 0x7FC0), bit-identical to c10::BFloat16's scalar conversion.
typedef uint16_t vbf16 __attribute__((vector_size(2 * MSD_FAST_NATIVE_LANES)));
typedef uint32_t vbits16 __attribute__((vector_size(4 * MSD_FAST_NATIVE_LANES)));

inline vf16 load_bf16(const void* p) {
  vbf16 h;
  std::memcpy(&h, p, sizeof(h));
  const vbits16 w = __builtin_convertvector(h, vbits16) << 16;
  vf16 f;
  std::memcpy(&f, &w, sizeof(f));
  return f;
}

inline void store_bf16(void* p, vf16 v) {
  vbits16 bits;
  std::memcpy(&bits, &v, sizeof(bits));
  vbits16 rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  rounded = (vi16)(v != v) ? vbits16{} + 0x7FC0u : rounded;
  const vbf16 h = __builtin_convertvector(rounded, vbf16);
  std::memcpy(p, &h, sizeof(h));
}

inline vf16 vmax(vf16 a, vf16 b) { return a > b ? a : b; }
inline vf16 vmin(vf16 a, vf16 b) { return a < b ? a : b; }

// Horizontal reductions as trees of halving shuffles (log2(lanes) dependent steps instead of an add chain:
// these run several times per row, and at C ~ 100 the chains cost as much as the row's arithmetic).
template <typename V, typename Op>
inline auto reduce_tree(V v, Op op) {
  typedef decltype(v[0]) E0;
  typedef std::remove_cv_t<std::remove_reference_t<E0>> E;
  constexpr int n = sizeof(V) / sizeof(E);
  typedef E V8 __attribute__((vector_size(8 * sizeof(E))));
  typedef E V4 __attribute__((vector_size(4 * sizeof(E))));
  typedef E V2 __attribute__((vector_size(2 * sizeof(E))));
  if constexpr (n == 16) {
    const V8 a = op(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7),
                    __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
    return reduce_tree(a, op);
  } else if constexpr (n == 8) {
    const V4 b = op(__builtin_shufflevector(v, v, 0, 1, 2, 3), __builtin_shufflevector(v, v, 4, 5, 6, 7));
    return reduce_tree(b, op);
  } else if constexpr (n == 4) {
    const V2 c = op(__builtin_shufflevector(v, v, 0, 1), __builtin_shufflevector(v, v, 2, 3));
    return op(c[0], c[1]);
  } else {
    static_assert(n == 16 || n == 8 || n == 4, "vectors of 4, 8 or 16 lanes");
  }
}

inline float hsum(vf16 v) {
  return reduce_tree(v, [](auto x, auto y) { return x + y; });
}

inline float hmax(vf16 v) {
  return reduce_tree(v, [](auto x, auto y) { return x > y ? x : y; });
}

inline float hmin(vf16 v) {
  return reduce_tree(v, [](auto x, auto y) { return x < y ? x : y; });
}

// exp(x), lane-wise, for x <= 0, -inf or NaN: the loss only exponentiates logits shifted by their row's
// maximum, so the overflow side needs no branch (a general exp costs about a third more instructions in the
// kernel's inner loop). Range reduction x = k ln2 + r (|r| <= ln2/2; k rounded with the 1.5 * 2^23 trick
// so no rounding call), degree-7 Taylor polynomial in r: relative error < 1e-7, below float rounding.
// exp(x < -87.34) = 0 (also -inf), NaN stays NaN.
inline vf16 vexp_nonpos(vf16 x) {
  const vf16 xc = x < -87.33654f ? splat(-87.33654f) : x;
  const vf16 k = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const vf16 r = (xc - k * 0.693145751953125f) - k * 1.428606765330187045e-06f;
  vf16 p = splat(1.98412698412698413e-04f);
  p = p * r + 1.38888888888888889e-03f;
  p = p * r + 8.33333333333333333e-03f;
  p = p * r + 4.16666666666666667e-02f;
  p = p * r + 1.66666666666666667e-01f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vi16 bits = (__builtin_convertvector(k, vi16) + 127) << 23;  // k in [-126, 0]: a normal 2^k
  vf16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const vf16 y = x < -87.33654f ? splat(0.f) : p * scale;
  return x != x ? x : y;
}

}  // namespace msd_fast::MSD_FAST_ISA::simd
