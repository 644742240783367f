// The fused MSD loss CPU kernel, compiled once per instruction set (fused_cpu_avx512.cpp, fused_cpu_avx2.cpp,
// fused_cpu_baseline.cpp each define MSD_FAST_ISA and include this file); msd_ops.cpp picks the widest the
// running CPU supports, so one build runs on any x86-64 CPU. Everything here lives in namespace
// msd_fast::MSD_FAST_ISA and uses no torch or standard-library templates, so nothing compiled for one
// instruction set can be shared with (and run by) another TU.
//
// Maths (docs/maths.md §3), per sample b, exits n = 1..N, temperature tau:
//   p_n = softmax(z_n), q_n = softmax(z_n / tau), l_n = log q_n
//   CE_n  = lse(z_n) - z_n[y]
//   "all":  P = sum_n q_n, R = sum_n <q_n, l_n>;  sum_{j!=n} KL(q_j||q_n) = R - <P, l_n>
//           KD_n = tau^2/(N-1) (R - <P, l_n>),  dKD_n/dz_n = tau/(N-1) (N q_n - P)   (teachers detached)
//   "last": KD_n = tau^2 <q_N, l_N - l_n> (n<N), dKD_n/dz_n = tau (q_n - q_N)
//   FEAT_n = ||F_n - F_N||^2 (n<N), dFEAT_n/dF_n = 2 (F_n - F_N)                        (F_N detached)
// A sample whose target is ignore_index is in no term: its partials and gradients are 0 (the caller's
// weights carry the 1 / (kept samples) of the means).
// The gradient of the weighted total  w_ce*sum CE + w_kd*sum KD + w_feat*sum FEAT  (batch means) is
// written during the forward, so backward only scales it by the incoming gradient.
#ifndef MSD_FAST_ISA
#error "define MSD_FAST_ISA (the instruction-set namespace) before including fused_cpu_kernel.h"
#endif
#include "fused_cpu_api.h"
#include "simd16.h"

namespace msd_fast {
namespace MSD_FAST_ISA {
namespace detail {

using simd::kLanes;
using simd::vf16;

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// Storage types of the half-precision inputs: raw bits, converted here (no c10 code in this TU).
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

static inline float to_float(float x) { return x; }
static inline float to_float(bf16_t h) {
  const uint32_t w = static_cast<uint32_t>(h.bits) << 16;
  float f;
  __builtin_memcpy(&f, &w, 4);
  return f;
}
static inline float to_float(f16_t h) {  // exact: every half is a float
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16, e = (h.bits >> 10) & 0x1Fu, m = h.bits & 0x3FFu;
  if (e == 0) {  // zero or subnormal: m * 2^-24
    const float f = static_cast<float>(m) * 5.9604644775390625e-08f;
    return sign ? -f : f;
  }
  const uint32_t w = sign | (e == 31 ? (0xFFu << 23) | (m << 13) : ((e + 112u) << 23) | (m << 13));
  float f;
  __builtin_memcpy(&f, &w, 4);
  return f;
}

template <typename T> static inline T from_float(float x);
template <> inline float from_float<float>(float x) { return x; }
template <> inline bf16_t from_float<bf16_t>(float x) {  // round to nearest even; NaN -> 0x7FC0 (as c10)
  uint32_t w;
  __builtin_memcpy(&w, &x, 4);
  if (x != x) return bf16_t{0x7FC0u};
  return bf16_t{static_cast<uint16_t>((w + 0x7FFFu + ((w >> 16) & 1u)) >> 16)};
}
template <> inline f16_t from_float<f16_t>(float x) {  // round to nearest even, overflow -> inf, NaN -> 0x7E00
  uint32_t f;
  __builtin_memcpy(&f, &x, 4);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint16_t o;
  if (f >= (143u << 23)) {  // >= 65536 (or inf / NaN): inf or NaN
    o = f > (255u << 23) ? 0x7E00u : 0x7C00u;
  } else if (f < (113u << 23)) {  // below 2^-14: a half subnormal; let float addition round it
    const uint32_t magic_bits = ((127u - 15u) + (23u - 10u) + 1u) << 23;  // 0.5f
    float ff, magic;
    __builtin_memcpy(&ff, &f, 4);
    __builtin_memcpy(&magic, &magic_bits, 4);
    ff += magic;
    __builtin_memcpy(&f, &ff, 4);
    o = static_cast<uint16_t>(f - magic_bits);
  } else {  // normal: rebias the exponent and round the 13 dropped bits to nearest even
    const uint32_t odd = (f >> 13) & 1u;
    f += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFu + odd;
    o = static_cast<uint16_t>(f >> 13);
  }
  return f16_t{static_cast<uint16_t>(o | (sign >> 16))};
}


// Scratch rows are padded to whole vectors with -inf: pads never win a row's max (an all -inf row gives
// NaN, as the reference does) and their exp is exactly 0. After the shift, an -inf dz (a pad) is stored as
// kMinShifted, the lowest finite float, so that the dot products never form 0 * -inf; every finite dz is
// kept as it is (a class 1e30 below the row's max still counts in KL(q_j || q_n) where q_j is not 0).
constexpr float kPadLogit = -__builtin_inff();
constexpr float kMinShifted = -3.40282347e38f;  // -FLT_MAX

template <typename scalar_t>
inline vf16 load_as_float(const scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return simd::load(p);
  } else if constexpr (std::is_same_v<scalar_t, bf16_t>) {
    return simd::load_bf16(p);
  } else {
    vf16 v;
    for (int k = 0; k < kLanes; ++k) v[k] = to_float(p[k]);
    return v;
  }
}

// Stores the first `count` (1..kLanes) lanes of v, rounding to scalar_t.
template <typename scalar_t>
inline void store_lanes(scalar_t* p, vf16 v, int64_t count) {
  if (count == kLanes) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      return simd::store(p, v);
    } else if constexpr (std::is_same_v<scalar_t, bf16_t>) {
      return simd::store_bf16(p, v);
    }
  }
  for (int64_t k = 0; k < count; ++k) p[k] = from_float<scalar_t>(v[k]);
}

// Copies a row as float, padded; returns the row's smallest logit (a NaN may be skipped: it reaches the
// loss through dz anyway), so a -inf logit, which the clamp below would make finite, can still poison it.
template <typename scalar_t>
inline float load_row_padded(const scalar_t* src, float* dst, int64_t C, int64_t Cp) {
  const int64_t Cv = C - C % kLanes;
  vf16 mn = simd::splat(__builtin_inff());
  for (int64_t c = 0; c < Cv; c += kLanes) {
    const vf16 v = load_as_float(src + c);
    mn = simd::vmin(mn, v);
    simd::store(dst + c, v);
  }
  float lo = simd::hmin(mn);
  for (int64_t c = Cv; c < C; ++c) {
    dst[c] = to_float(src[c]);
    lo = dst[c] < lo ? dst[c] : lo;
  }
  for (int64_t c = C; c < Cp; ++c) dst[c] = kPadLogit;
  return lo;
}

// exp(d) from et = exp(d / tau): for an integer tau = K in 1..4 it is et^K (multiplies, no second exp).
template <int K>
inline vf16 exp_full(vf16 et, vf16 d) {
  if constexpr (K == 0) return simd::vexp_nonpos(d);
  else if constexpr (K == 1) return et;
  else if constexpr (K == 2) return et * et;
  else if constexpr (K == 3) return et * et * et;
  else return (et * et) * (et * et);
}

struct LossScalars {
  float inv_tau, g_ce, g_kd, kd_scale, g_feat;
  bool teacher_last;
};

// One sample b: all N rows of logits -> partial CE/KD per exit and d total / d logits.
// Scratch per thread: dz [N, Cp] = z - max (padded), et [N, Cp] = exp(dz / tau), P [Cp], row stats [N].
template <typename scalar_t>
inline const scalar_t* row(const void* const* exits, int64_t n, int64_t b, int64_t width) {
  return static_cast<const scalar_t*>(exits[n]) + b * width;
}
template <typename scalar_t>
inline scalar_t* row(void* const* exits, int64_t n, int64_t b, int64_t width) {
  return static_cast<scalar_t*>(exits[n]) + b * width;
}

template <typename scalar_t, int K>
void logits_one_sample(const void* const* z, int64_t yb, void* const* grad_z, float* part_ce, float* part_kd,
                       int64_t N, int64_t B, int64_t b, int64_t C, int64_t Cp, const LossScalars& s,
                       float* dz, float* et, float* P, float* inv_st, float* inv_s1, float* lse_t, float* qlq) {
  const int64_t nb = Cp / kLanes;
  const float inv_tau = s.inv_tau;
  float R = 0.f;  // sum_n <q_n, l_n>
  // Pass 1 per exit: max, dz, et, both softmax sums, <q_n, l_n>, CE.
  for (int64_t n = 0; n < N; ++n) {
    float* d = dz + n * Cp;
    float* e = et + n * Cp;
    const scalar_t* zn = row<scalar_t>(z, n, b, C);
    // A -inf logit: KL(q_j || q_n) = +inf where q_n is 0 and q_j is not; the clamped dz would give a
    // finite value instead, so the exit's terms are made NaN (the reference gives NaN: 0 * -inf).
    const bool neg_inf = load_row_padded(zn, d, C, Cp) == -__builtin_inff();
    vf16 mv = simd::splat(-__builtin_inff());
    for (int64_t i = 0; i < nb; ++i) mv = simd::vmax(mv, simd::load(d + i * kLanes));
    // The max may skip a NaN logit, but dv, ev and dc below keep it: NaN logits -> NaN loss, never masked.
    const float m = simd::hmax(mv);
    vf16 st{}, s1{}, ed{};
    for (int64_t i = 0; i < nb; ++i) {
      const vf16 dv = simd::load(d + i * kLanes) - m;                      // <= 0, -inf (pads) or NaN
      const vf16 ev = simd::vexp_nonpos(dv * inv_tau);
      const vf16 dc = dv < kMinShifted ? simd::splat(kMinShifted) : dv;   // NaN stays NaN
      simd::store(d + i * kLanes, dc);
      simd::store(e + i * kLanes, ev);
      st += ev;
      s1 += exp_full<K>(ev, dc);
      ed += ev * dc;
    }
    const float sst = simd::hsum(st), ss1 = simd::hsum(s1);
    inv_st[n] = 1.0f / sst;
    inv_s1[n] = 1.0f / ss1;
    lse_t[n] = neg_inf ? __builtin_nanf("") : __builtin_logf(sst);           // l_n = dz_n / tau - lse_t[n]
    qlq[n] = inv_st[n] * simd::hsum(ed) * inv_tau - lse_t[n];         // <q_n, l_n> (sum_c q_n = 1)
    R += qlq[n];
    part_ce[n * B] = (neg_inf ? __builtin_nanf("") : __builtin_logf(ss1)) - (to_float(zn[yb]) - m);  // lse(z_n) - z_n[y]
  }
  const float Nf = static_cast<float>(N);
  float sP = 0.f;
  if (!s.teacher_last) {  // P = sum_n q_n, one pass reading the N rows
    vf16 sPv{};
    for (int64_t i = 0; i < nb; ++i) {
      vf16 acc{};
      for (int64_t n = 0; n < N; ++n) acc += simd::load(et + n * Cp + i * kLanes) * inv_st[n];
      simd::store(P + i * kLanes, acc);
      sPv += acc;
    }
    sP = simd::hsum(sPv);  // = N up to rounding; the exact sum keeps <P, l_n> consistent with P
  }
  const float* eN = et + (N - 1) * Cp;
  const float bN = s.g_kd * inv_st[N - 1];
  // Pass 2 per exit: the gradient row (and the dot product its KD term needs).
  for (int64_t n = 0; n < N; ++n) {
    const float* d = dz + n * Cp;
    const float* e = et + n * Cp;
    scalar_t* g = row<scalar_t>(grad_z, n, b, C);
    const float a = s.g_ce * inv_s1[n];
    vf16 dot{};
    float gy;
    const float e1y = exp_full<K>(simd::splat(e[yb]), simd::splat(d[yb]))[0];
    if (!s.teacher_last) {
      // d/dz_n = g_ce (p_n - onehot) + g_kd (N q_n - P)
      const float bq = Nf * s.g_kd * inv_st[n];
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t off = i * kLanes;
        const vf16 ev = simd::load(e + off), dv = simd::load(d + off), Pv = simd::load(P + off);
        store_lanes(g + off, a * exp_full<K>(ev, dv) + bq * ev - s.g_kd * Pv, imin(kLanes, C - off));
        dot += Pv * dv;
      }
      const float pl = simd::hsum(dot) * inv_tau - lse_t[n] * sP;   // <P, l_n>
      part_kd[n * B] = s.kd_scale * (R - pl);                        // sum_{j != n} KL(q_j || q_n)
      gy = a * e1y - s.g_ce + bq * e[yb] - s.g_kd * P[yb];
    } else if (n < N - 1) {
      // d/dz_n = g_ce (p_n - onehot) + g_kd (q_n - q_N)
      const float bq = s.g_kd * inv_st[n];
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t off = i * kLanes;
        const vf16 ev = simd::load(e + off), dv = simd::load(d + off), eNv = simd::load(eN + off);
        store_lanes(g + off, a * exp_full<K>(ev, dv) + bq * ev - bN * eNv, imin(kLanes, C - off));
        dot += eNv * dv;
      }
      const float qNl = inv_st[N - 1] * simd::hsum(dot) * inv_tau - lse_t[n];  // <q_N, l_n>
      part_kd[n * B] = s.kd_scale * (qlq[N - 1] - qNl);                          // KL(q_N || q_n)
      gy = a * e1y - s.g_ce + bq * e[yb] - bN * eN[yb];
    } else {
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t off = i * kLanes;
        const vf16 ev = simd::load(e + off), dv = simd::load(d + off);
        store_lanes(g + off, a * exp_full<K>(ev, dv), imin(kLanes, C - off));
      }
      part_kd[n * B] = 0.f;
      gy = a * e1y - s.g_ce;
    }
    g[yb] = from_float<scalar_t>(gy);  // the one-hot part of CE, applied in fp32 before the store's rounding
  }
}

// Feature hint of sample b: FEAT_n = ||F_n - F_N||^2 and its gradient g_feat (F_n - F_N); F_N's is 0.
template <typename scalar_t>
void features_one_sample(const void* const* feats, void* const* grad_f, float* part_ft, int64_t N, int64_t B,
                         int64_t b, int64_t D, float g_feat) {
  const scalar_t* fN = row<scalar_t>(feats, N - 1, b, D);
  const int64_t Dv = D - D % kLanes;
  for (int64_t n = 0; n < N - 1; ++n) {
    const scalar_t* fn = row<scalar_t>(feats, n, b, D);
    scalar_t* gf = row<scalar_t>(grad_f, n, b, D);
    vf16 ssv{};
    for (int64_t d = 0; d < Dv; d += kLanes) {
      const vf16 diff = load_as_float(fn + d) - load_as_float(fN + d);
      ssv += diff * diff;
      store_lanes(gf + d, g_feat * diff, kLanes);
    }
    float ss = simd::hsum(ssv);
    for (int64_t d = Dv; d < D; ++d) {
      const float diff = to_float(fn[d]) - to_float(fN[d]);
      ss += diff * diff;
      gf[d] = from_float<scalar_t>(g_feat * diff);
    }
    part_ft[n * B] = ss;
  }
  __builtin_memset(row<scalar_t>(grad_f, N - 1, b, D), 0, D * sizeof(scalar_t));  // all-zero bits = +0 in every float type
  part_ft[(N - 1) * B] = 0.f;
}

// Samples [b0, b1): the logits part and the feature hint of each. scratch: scratch_floats(N, C) floats.
template <typename scalar_t, int K>
void samples(const cpu::KernelArgs& a, int64_t b0, int64_t b1, float* scratch) {
  const int64_t N = a.N, B = a.B, C = a.C, D = a.D, Cp = cpu::padded(C);
  float* partials = a.partials;
  const LossScalars s{a.inv_tau, a.g_ce, a.g_kd, a.kd_scale, a.g_feat, a.teacher_last};
  float* dz = scratch;
  float* et = dz + N * Cp;
  float* P = et + N * Cp;
  float* stats = P + Cp;
  for (int64_t b = b0; b < b1; ++b) {
    if (a.has_ignore && a.y[b] == a.ignore_index) {  // out of every term: zero partials and gradients
      for (int64_t n = 0; n < N; ++n) {
        __builtin_memset(row<scalar_t>(a.grad_z, n, b, C), 0, C * sizeof(scalar_t));
        if (a.feats != nullptr) __builtin_memset(row<scalar_t>(a.grad_f, n, b, D), 0, D * sizeof(scalar_t));
        for (int64_t k = 0; k < 3; ++k) partials[(k * N + n) * B + b] = 0.f;
      }
      continue;
    }
    logits_one_sample<scalar_t, K>(a.z, a.y[b], a.grad_z, partials + b, partials + N * B + b, N, B, b, C, Cp, s,
                                   dz, et, P, stats, stats + N, stats + 2 * N, stats + 3 * N);
    if (a.feats != nullptr) {
      features_one_sample<scalar_t>(a.feats, a.grad_f, partials + 2 * N * B + b, N, B, b, D, s.g_feat);
    } else {
      for (int64_t n = 0; n < N; ++n) partials[(2 * N + n) * B + b] = 0.f;
    }
  }
}

template <typename scalar_t>
void samples_for_tau(const cpu::KernelArgs& a, int64_t b0, int64_t b1, float* scratch) {
  switch (a.tau_int) {  // exp(d) = exp(d / tau)^tau: one exp per element for tau in {1, 2, 3, 4}
    case 1: return samples<scalar_t, 1>(a, b0, b1, scratch);
    case 2: return samples<scalar_t, 2>(a, b0, b1, scratch);
    case 3: return samples<scalar_t, 3>(a, b0, b1, scratch);
    case 4: return samples<scalar_t, 4>(a, b0, b1, scratch);
    default: return samples<scalar_t, 0>(a, b0, b1, scratch);
  }
}

}  // namespace detail

void run_samples(const cpu::KernelArgs& a, int64_t b0, int64_t b1, float* scratch) {
  switch (a.dtype) {
    case cpu::DType::F32: return detail::samples_for_tau<float>(a, b0, b1, scratch);
    case cpu::DType::BF16: return detail::samples_for_tau<detail::bf16_t>(a, b0, b1, scratch);
    case cpu::DType::F16: return detail::samples_for_tau<detail::f16_t>(a, b0, b1, scratch);
  }
}

}  // namespace MSD_FAST_ISA
}  // namespace msd_fast
