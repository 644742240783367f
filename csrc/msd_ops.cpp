// msd_fast C++ ops: schema, the deterministic per-exit reduction (CPU) and the fused MSD loss (CPU).
//
// Maths (docs/maths.md §3), per sample b, exits n = 1..N, temperature tau:
//   p_n = softmax(z_n), q_n = softmax(z_n / tau), l_n = log q_n
//   CE_n  = lse(z_n) - z_n[y]
//   "all":  P = sum_n q_n, R = sum_n <q_n, l_n>;  sum_{j!=n} KL(q_j||q_n) = R - <P, l_n>
//           KD_n = tau^2/(N-1) (R - <P, l_n>),  dKD_n/dz_n = tau/(N-1) (N q_n - P)   (teachers detached)
//   "last": KD_n = tau^2 <q_N, l_N - l_n> (n<N), dKD_n/dz_n = tau (q_n - q_N)
//   FEAT_n = ||F_n - F_N||^2 (n<N), dFEAT_n/dF_n = 2 (F_n - F_N)                        (F_N detached)
// The gradient of the weighted total  w_ce*sum CE + w_kd*sum KD + w_feat*sum FEAT  (batch means) is
// written during the forward, so backward only scales it by the incoming gradient.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "msd_ops.h"
#include "simd16.h"

namespace msd_fast {

void check_reduce_inputs(const at::Tensor& partials, const at::Tensor& weights) {
  TORCH_CHECK(partials.dim() == 3 && partials.size(0) == 3,
              "reduce_exit_losses: partials must have shape [3, N, B] (CE, KD, FEAT per exit and sample), got ",
              partials.sizes());
  TORCH_CHECK(partials.size(1) >= 1 && partials.size(2) >= 1,
              "reduce_exit_losses: partials must have N >= 1 exits and B >= 1 samples, got ", partials.sizes());
  TORCH_CHECK(partials.scalar_type() == at::kFloat, "reduce_exit_losses: partials must be float32, got ",
              partials.scalar_type());
  TORCH_CHECK(partials.is_contiguous(), "reduce_exit_losses: partials must be contiguous");
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == 3,
              "reduce_exit_losses: weights must have shape [3] (w_ce, w_kd, w_feat), got ", weights.sizes());
  TORCH_CHECK(weights.scalar_type() == at::kFloat, "reduce_exit_losses: weights must be float32, got ",
              weights.scalar_type());
  TORCH_CHECK(weights.device() == partials.device(), "reduce_exit_losses: weights are on ", weights.device(),
              " but partials are on ", partials.device());
}

// Per-exit means [3, N] and the weighted total. Each row is summed in float64 in index order by one
// thread, rows are combined in a fixed order: bit-identical results run after run.
std::tuple<at::Tensor, at::Tensor> reduce_exit_losses_cpu(const at::Tensor& partials, const at::Tensor& weights) {
  check_reduce_inputs(partials, weights);
  const int64_t N = partials.size(1), B = partials.size(2), rows = 3 * N;
  auto per_exit = at::empty({3, N}, partials.options());
  auto total = at::empty({}, partials.options());
  const float* src = partials.data_ptr<float>();
  float* dst = per_exit.data_ptr<float>();
  const auto w = weights.contiguous();
  const float* wp = w.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 65536 / B);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = src + r * B;
      double acc = 0.0;
      for (int64_t b = 0; b < B; ++b) acc += static_cast<double>(row[b]);
      dst[r] = static_cast<float>(acc / static_cast<double>(B));
    }
  });
  double tot = 0.0;
  for (int64_t k = 0; k < 3; ++k) {
    double s = 0.0;
    for (int64_t n = 0; n < N; ++n) s += static_cast<double>(dst[k * N + n]);
    tot += static_cast<double>(wp[k]) * s;
  }
  total.fill_(static_cast<float>(tot));
  return {per_exit, total};
}

namespace {

using simd::vf16;
using simd::kLanes;

// Scratch rows are padded to whole vectors with -inf: pads never win a row's max (an all -inf row gives
// NaN, as the reference does) and their exp is exactly 0. After the shift, dz is stored clamped at
// kMinShifted so that the dot products never form 0 * -inf; a class that far below the row's max has
// q = p = 0 either way.
constexpr float kPadLogit = -std::numeric_limits<float>::infinity();
constexpr float kMinShifted = -1e30f;

template <typename scalar_t>
inline vf16 load_as_float(const scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return simd::load(p);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    return simd::load_bf16(p);
  } else {
    vf16 v;
    for (int k = 0; k < kLanes; ++k) v[k] = static_cast<float>(p[k]);
    return v;
  }
}

// Stores the first `count` (1..16) lanes of v, rounding to scalar_t.
template <typename scalar_t>
inline void store_lanes(scalar_t* p, vf16 v, int64_t count) {
  if (count == kLanes) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      return simd::store(p, v);
    } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      return simd::store_bf16(p, v);
    }
  }
  for (int64_t k = 0; k < count; ++k) p[k] = static_cast<scalar_t>(v[k]);
}

template <typename scalar_t>
inline void load_row_padded(const scalar_t* src, float* dst, int64_t C, int64_t Cp) {
  const int64_t Cv = C - C % kLanes;
  for (int64_t c = 0; c < Cv; c += kLanes) simd::store(dst + c, load_as_float(src + c));
  for (int64_t c = Cv; c < C; ++c) dst[c] = static_cast<float>(src[c]);
  for (int64_t c = C; c < Cp; ++c) dst[c] = kPadLogit;
}

// exp(d) from et = exp(d / tau): for an integer tau = K in 1..4 it is et^K (multiplies, no second exp).
template <int K>
inline vf16 exp_full(vf16 et, vf16 d) {
  if constexpr (K == 0) return simd::vexp(d);
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
template <typename scalar_t, int K>
void logits_one_sample(const scalar_t* z, int64_t yb, scalar_t* grad_z, float* part_ce, float* part_kd,
                       int64_t N, int64_t B, int64_t b, int64_t C, int64_t Cp, const LossScalars& s,
                       float* dz, float* et, float* P, float* inv_st, float* inv_s1, float* lse_t, float* qlq) {
  const int64_t nb = Cp / kLanes;
  const float inv_tau = s.inv_tau;
  float R = 0.f;  // sum_n <q_n, l_n>
  // Pass 1 per exit: max, dz, et, both softmax sums, <q_n, l_n>, CE.
  for (int64_t n = 0; n < N; ++n) {
    float* d = dz + n * Cp;
    float* e = et + n * Cp;
    load_row_padded(z + (n * B + b) * C, d, C, Cp);
    vf16 mv = simd::splat(-std::numeric_limits<float>::infinity());
    simd::vi16 nan_lanes{};
    for (int64_t i = 0; i < nb; ++i) {
      const vf16 v = simd::load(d + i * kLanes);
      mv = simd::vmax(mv, v);
      nan_lanes |= (v != v);
    }
    float m = simd::hmax(mv);
    if (simd::any(nan_lanes)) m = std::numeric_limits<float>::quiet_NaN();  // NaN logits -> NaN loss, never masked
    vf16 st{}, s1{}, ed{};
    for (int64_t i = 0; i < nb; ++i) {
      const vf16 dv = simd::load(d + i * kLanes) - m;
      const vf16 ev = simd::vexp(dv * inv_tau);
      const vf16 dc = simd::vmax(dv, simd::splat(kMinShifted));
      simd::store(d + i * kLanes, dc);
      simd::store(e + i * kLanes, ev);
      st += ev;
      s1 += exp_full<K>(ev, dc);
      ed += ev * dc;
    }
    const float sst = simd::hsum(st), ss1 = simd::hsum(s1);
    inv_st[n] = 1.0f / sst;
    inv_s1[n] = 1.0f / ss1;
    lse_t[n] = std::log(sst);                                          // l_n = dz_n / tau - lse_t[n]
    qlq[n] = inv_st[n] * simd::hsum(ed) * inv_tau - lse_t[n];         // <q_n, l_n> (sum_c q_n = 1)
    R += qlq[n];
    part_ce[n * B] = std::log(ss1) - (static_cast<float>(z[(n * B + b) * C + yb]) - m);  // lse(z_n) - z_n[y]
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
    scalar_t* g = grad_z + (n * B + b) * C;
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
        store_lanes(g + off, a * exp_full<K>(ev, dv) + bq * ev - s.g_kd * Pv, std::min<int64_t>(kLanes, C - off));
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
        store_lanes(g + off, a * exp_full<K>(ev, dv) + bq * ev - bN * eNv, std::min<int64_t>(kLanes, C - off));
        dot += eNv * dv;
      }
      const float qNl = inv_st[N - 1] * simd::hsum(dot) * inv_tau - lse_t[n];  // <q_N, l_n>
      part_kd[n * B] = s.kd_scale * (qlq[N - 1] - qNl);                          // KL(q_N || q_n)
      gy = a * e1y - s.g_ce + bq * e[yb] - bN * eN[yb];
    } else {
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t off = i * kLanes;
        const vf16 ev = simd::load(e + off), dv = simd::load(d + off);
        store_lanes(g + off, a * exp_full<K>(ev, dv), std::min<int64_t>(kLanes, C - off));
      }
      part_kd[n * B] = 0.f;
      gy = a * e1y - s.g_ce;
    }
    g[yb] = static_cast<scalar_t>(gy);  // the one-hot part of CE, applied in fp32 before the store's rounding
  }
}

// Feature hint of sample b: FEAT_n = ||F_n - F_N||^2 and its gradient g_feat (F_n - F_N); F_N's is 0.
template <typename scalar_t>
void features_one_sample(const scalar_t* feats, scalar_t* grad_f, float* part_ft, int64_t N, int64_t B, int64_t b,
                         int64_t D, float g_feat) {
  const scalar_t* fN = feats + ((N - 1) * B + b) * D;
  const int64_t Dv = D - D % kLanes;
  for (int64_t n = 0; n < N - 1; ++n) {
    const scalar_t* fn = feats + (n * B + b) * D;
    scalar_t* gf = grad_f + (n * B + b) * D;
    vf16 ssv{};
    for (int64_t d = 0; d < Dv; d += kLanes) {
      const vf16 diff = load_as_float(fn + d) - load_as_float(fN + d);
      ssv += diff * diff;
      store_lanes(gf + d, g_feat * diff, kLanes);
    }
    float ss = simd::hsum(ssv);
    for (int64_t d = Dv; d < D; ++d) {
      const float diff = static_cast<float>(fn[d]) - static_cast<float>(fN[d]);
      ss += diff * diff;
      gf[d] = static_cast<scalar_t>(g_feat * diff);
    }
    part_ft[n * B] = ss;
  }
  std::memset(grad_f + ((N - 1) * B + b) * D, 0, D * sizeof(scalar_t));  // all-zero bits = +0 in every float type
  part_ft[(N - 1) * B] = 0.f;
}

template <typename scalar_t, int K>
void fused_msd_loss_kernel(const scalar_t* z, const int64_t* y, const scalar_t* feats, float* partials,
                           scalar_t* grad_z, scalar_t* grad_f, int64_t N, int64_t B, int64_t C, int64_t D,
                           const LossScalars s) {
  const int64_t Cp = (C + kLanes - 1) / kLanes * kLanes;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, N * (C + D)));
  // Captured by value: with [&] the compiler cannot keep the scalars in registers (a store through
  // grad_* might alias them) and reloads them inside the vector loops.
  at::parallel_for(0, B, grain, [=](int64_t b0, int64_t b1) {
    std::vector<float> scratch(2 * N * Cp + Cp + 4 * N);
    float* dz = scratch.data();
    float* et = dz + N * Cp;
    float* P = et + N * Cp;
    float* stats = P + Cp;
    for (int64_t b = b0; b < b1; ++b) {
      logits_one_sample<scalar_t, K>(z, y[b], grad_z, partials + b, partials + N * B + b, N, B, b, C, Cp, s,
                                     dz, et, P, stats, stats + N, stats + 2 * N, stats + 3 * N);
      if (feats != nullptr) {
        features_one_sample(feats, grad_f, partials + 2 * N * B + b, N, B, b, D, s.g_feat);
      } else {
        for (int64_t n = 0; n < N; ++n) partials[(2 * N + n) * B + b] = 0.f;
      }
    }
  });
}

template <typename scalar_t>
void launch_fused_msd_loss(const scalar_t* z, const int64_t* y, const scalar_t* feats, float* partials,
                           scalar_t* grad_z, scalar_t* grad_f, int64_t N, int64_t B, int64_t C, int64_t D,
                           float w_ce, float w_kd, float w_feat, float tau, bool teacher_last) {
  const float invB = 1.0f / static_cast<float>(B);
  LossScalars s;
  s.inv_tau = 1.0f / tau;
  s.g_ce = w_ce * invB;
  s.g_kd = teacher_last ? w_kd * tau * invB : w_kd * tau * invB / static_cast<float>(N - 1);
  s.kd_scale = teacher_last ? tau * tau : tau * tau / static_cast<float>(N - 1);
  s.g_feat = 2.0f * w_feat * invB;
  s.teacher_last = teacher_last;
  const int tau_int = (tau == std::nearbyint(tau) && tau >= 1.f && tau <= 4.f) ? static_cast<int>(tau) : 0;
  switch (tau_int) {  // exp(d) = exp(d / tau)^tau: one exp per element for tau in {1, 2, 3, 4}
    case 1: return fused_msd_loss_kernel<scalar_t, 1>(z, y, feats, partials, grad_z, grad_f, N, B, C, D, s);
    case 2: return fused_msd_loss_kernel<scalar_t, 2>(z, y, feats, partials, grad_z, grad_f, N, B, C, D, s);
    case 3: return fused_msd_loss_kernel<scalar_t, 3>(z, y, feats, partials, grad_z, grad_f, N, B, C, D, s);
    case 4: return fused_msd_loss_kernel<scalar_t, 4>(z, y, feats, partials, grad_z, grad_f, N, B, C, D, s);
    default: return fused_msd_loss_kernel<scalar_t, 0>(z, y, feats, partials, grad_z, grad_f, N, B, C, D, s);
  }
}

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_msd_loss_cpu(
    const at::Tensor& logits, const at::Tensor& target, const c10::optional<at::Tensor>& features,
    const at::Tensor& weights, double temperature, bool teacher_last) {
  TORCH_CHECK(logits.device().is_cpu(), "fused_msd_loss: logits must be a CPU tensor (use the Triton backend on CUDA)");
  TORCH_CHECK(logits.dim() == 3, "fused_msd_loss: logits must have shape [N, B, C], got ", logits.sizes());
  const int64_t N = logits.size(0), B = logits.size(1), C = logits.size(2);
  TORCH_CHECK(N >= 2, "fused_msd_loss: need at least 2 exits, got N = ", N);
  TORCH_CHECK(B >= 1 && C >= 2, "fused_msd_loss: need B >= 1 samples and C >= 2 classes, got ", logits.sizes());
  TORCH_CHECK(is_supported_float(logits.scalar_type()), "fused_msd_loss: logits must be float32, float16 or bfloat16, got ",
              logits.scalar_type());
  TORCH_CHECK(logits.is_contiguous(), "fused_msd_loss: logits must be contiguous");
  TORCH_CHECK(target.device().is_cpu() && target.scalar_type() == at::kLong && target.dim() == 1 && target.size(0) == B,
              "fused_msd_loss: target must be a CPU int64 tensor of shape [", B, "], got ", target.scalar_type(), " ",
              target.sizes(), " on ", target.device());
  TORCH_CHECK(target.is_contiguous(), "fused_msd_loss: target must be contiguous");
  TORCH_CHECK(weights.device().is_cpu() && weights.scalar_type() == at::kFloat && weights.dim() == 1 && weights.size(0) == 3,
              "fused_msd_loss: weights must be a CPU float32 tensor of shape [3] (w_ce, w_kd, w_feat)");
  TORCH_CHECK(temperature > 0.0 && std::isfinite(temperature), "fused_msd_loss: temperature must be > 0, got ", temperature);
  const int64_t* yp = target.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(yp[b] >= 0 && yp[b] < C, "fused_msd_loss: target[", b, "] = ", yp[b], " is outside [0, ", C, ")");
  }
  int64_t D = 0;
  if (features.has_value()) {
    const auto& f = *features;
    TORCH_CHECK(f.device().is_cpu(), "fused_msd_loss: features must be a CPU tensor");
    TORCH_CHECK(f.dim() == 3 && f.size(0) == N && f.size(1) == B,
                "fused_msd_loss: features must have shape [N=", N, ", B=", B, ", D], got ", f.sizes());
    TORCH_CHECK(f.scalar_type() == logits.scalar_type(), "fused_msd_loss: features dtype ", f.scalar_type(),
                " differs from logits dtype ", logits.scalar_type());
    TORCH_CHECK(f.is_contiguous(), "fused_msd_loss: features must be contiguous");
    D = f.size(2);
  }
  const auto w = weights.contiguous();
  const float* wp = w.data_ptr<float>();
  auto partials = at::empty({3, N, B}, logits.options().dtype(at::kFloat));
  auto grad_logits = at::empty_like(logits);
  auto grad_features = features.has_value() ? at::empty_like(*features) : at::empty({0}, logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "fused_msd_loss_cpu", [&] {
    launch_fused_msd_loss<scalar_t>(
        logits.data_ptr<scalar_t>(), yp, features.has_value() ? features->data_ptr<scalar_t>() : nullptr,
        partials.data_ptr<float>(), grad_logits.data_ptr<scalar_t>(),
        features.has_value() ? grad_features.data_ptr<scalar_t>() : nullptr, N, B, C, D, wp[0], wp[1], wp[2],
        static_cast<float>(temperature), teacher_last);
  });
  auto [per_exit, total] = reduce_exit_losses_cpu(partials, w);
  return {total, per_exit, grad_logits, grad_features};
}

TORCH_LIBRARY(msd_fast, m) {
  // partials [3, N, B] float32 (CE, KD, FEAT per exit and sample), weights [3] = (w_ce, w_kd, w_feat)
  // -> (per-exit means [3, N], weighted total []).
  m.def("reduce_exit_losses(Tensor partials, Tensor weights) -> (Tensor, Tensor)");
  // logits [N, B, C], target [B] int64, features [N, B, D] or None, weights [3]
  // -> (total [], per-exit means [3, N], d total / d logits [N, B, C], d total / d features [N, B, D] or [0]).
  m.def("fused_msd_loss(Tensor logits, Tensor target, Tensor? features, Tensor weights, float temperature, "
        "bool teacher_last) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(msd_fast, CPU, m) {
  m.impl("reduce_exit_losses", &reduce_exit_losses_cpu);
  m.impl("fused_msd_loss", &fused_msd_loss_cpu);
}

}  // namespace msd_fast

// A Python module so `import msd_fast._C` loads the library and runs the registrations above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("has_cuda") = py::bool_(
#ifdef MSD_FAST_WITH_CUDA
      true
#else
      false
#endif
  );
}
