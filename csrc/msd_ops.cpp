// msd_fast C++ ops: schema, the deterministic per-exit reduction (CPU) and the fused MSD loss (CPU).
//
// Maths (MSD_SPEC §1.3), per sample b, exits n = 1..N, temperature tau:
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
#include <vector>

#include "msd_ops.h"

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

// exp(x) for float, branch-free so the compiler vectorises the loops that call it (glibc's expf is a
// scalar call). Range reduction x = k ln2 + r, |r| <= ln2/2, then a degree-7 Taylor polynomial:
// relative error < 1e-7 (below float rounding). exp(-inf) = 0, exp(NaN) = NaN, overflow -> inf.
inline float vexp(float x) {
  const float k = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - k * 0.693145751953125f) - k * 1.428606765330187045e-06f;
  float p = 1.98412698412698413e-04f;
  p = p * r + 1.38888888888888889e-03f;
  p = p * r + 8.33333333333333333e-03f;
  p = p * r + 4.16666666666666667e-02f;
  p = p * r + 1.66666666666666667e-01f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float kc = k < -126.f ? -126.f : (k > 127.f ? 127.f : k);
  int32_t bits = (static_cast<int32_t>(kc) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  float y = p * scale;
  y = x < -87.33654f ? 0.f : y;
  y = x > 88.72283f ? std::numeric_limits<float>::infinity() : y;
  return x != x ? x : y;
}

// Unnormalised softmax numerators of one row at T = 1 (pn) and T = tau (qn), and their sums.
// K > 0: tau == K is an integer, so exp(d) = exp(d / K)^K costs K - 1 multiplies instead of an exp.
template <int K>
inline void exp_pair(const float* zr, float m, float inv_tau, float* pn, float* qn, int64_t C, float& s1, float& st) {
  float a = 0.f, b = 0.f;
#pragma omp simd reduction(+ : a, b)
  for (int64_t c = 0; c < C; ++c) {
    const float d = zr[c] - m;
    const float et = vexp(d * inv_tau);
    float e1;
    if constexpr (K == 0) e1 = vexp(d);
    else if constexpr (K == 1) e1 = et;
    else if constexpr (K == 2) e1 = et * et;
    else if constexpr (K == 3) e1 = et * et * et;
    else e1 = (et * et) * (et * et);
    pn[c] = e1;
    qn[c] = et;
    a += e1;
    b += et;
  }
  s1 = a;
  st = b;
}

template <typename scalar_t>
void fused_msd_loss_kernel(const scalar_t* z, const int64_t* y, const scalar_t* feats, float* partials,
                           scalar_t* grad_z, scalar_t* grad_f, int64_t N, int64_t B, int64_t C, int64_t D,
                           float w_ce, float w_kd, float w_feat, float tau, bool teacher_last) {
  const float inv_tau = 1.0f / tau;
  const int tau_int = (tau == std::nearbyint(tau) && tau >= 1.f && tau <= 4.f) ? static_cast<int>(tau) : 0;
  const float invB = 1.0f / static_cast<float>(B);
  const float g_ce = w_ce * invB;
  const float g_kd = teacher_last ? w_kd * tau * invB : w_kd * tau * invB / static_cast<float>(N - 1);
  const float kd_scale = teacher_last ? tau * tau : tau * tau / static_cast<float>(N - 1);
  const float g_feat = 2.0f * w_feat * invB;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, N * (C + D)));

  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    // Per-thread scratch: q for every exit, p (unnormalised exp) for every exit, P, and row stats.
    // q and p stay unnormalised; their normalisers 1/sum are applied where they are read (one pass less).
    std::vector<float> q(N * C), p(N * C), P(C), zrow(N * C), shift(N), inv_s1(N), inv_st(N);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t yb = y[b];
      float* part_ce = partials + b;           // [0, n, b] at n * B
      float* part_kd = partials + N * B + b;   // [1, n, b]
      float* part_ft = partials + 2 * N * B + b;
      // Pass 1 per exit: max, both softmax normalisers, CE; q_n and p_n kept in scratch.
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* row = z + (n * B + b) * C;
        float* zr = zrow.data() + n * C;
        float m = -std::numeric_limits<float>::infinity();
        int n_nan = 0;
#pragma omp simd reduction(max : m) reduction(+ : n_nan)
        for (int64_t c = 0; c < C; ++c) {
          const float v = static_cast<float>(row[c]);
          zr[c] = v;
          n_nan += (v != v);
          m = v > m ? v : m;
        }
        if (n_nan) m = std::numeric_limits<float>::quiet_NaN();  // NaN logits -> NaN loss, never masked
        float* pn = p.data() + n * C;
        float* qn = q.data() + n * C;
        float s1 = 0.f, st = 0.f;
        switch (tau_int) {  // exp(d) = exp(d / tau)^tau: one exp per element for tau in {1, 2, 3, 4}
          case 1: exp_pair<1>(zr, m, inv_tau, pn, qn, C, s1, st); break;
          case 2: exp_pair<2>(zr, m, inv_tau, pn, qn, C, s1, st); break;
          case 3: exp_pair<3>(zr, m, inv_tau, pn, qn, C, s1, st); break;
          case 4: exp_pair<4>(zr, m, inv_tau, pn, qn, C, s1, st); break;
          default: exp_pair<0>(zr, m, inv_tau, pn, qn, C, s1, st);
        }
        inv_s1[n] = 1.0f / s1;
        inv_st[n] = 1.0f / st;
        shift[n] = m * inv_tau + std::log(st);  // l_n = z_n / tau - shift_n
        part_ce[n * B] = (m + std::log(s1)) - zr[yb];
      }
      // KD per exit from the all-pairs algebra.
      if (!teacher_last) {
        std::fill(P.begin(), P.end(), 0.f);
        float R = 0.f;
        for (int64_t n = 0; n < N; ++n) {
          const float* qn = q.data() + n * C;
          const float* zr = zrow.data() + n * C;
          const float sh = shift[n], is = inv_st[n];
          float r = 0.f;
#pragma omp simd reduction(+ : r)
          for (int64_t c = 0; c < C; ++c) {
            const float qc = qn[c] * is;
            P[c] += qc;
            r += qc * (zr[c] * inv_tau - sh);
          }
          R += r;
        }
        for (int64_t n = 0; n < N; ++n) {
          const float* zr = zrow.data() + n * C;
          const float sh = shift[n];
          float pl = 0.f;
#pragma omp simd reduction(+ : pl)
          for (int64_t c = 0; c < C; ++c) pl += P[c] * (zr[c] * inv_tau - sh);
          part_kd[n * B] = kd_scale * (R - pl);
        }
      } else {
        const float* qN = q.data() + (N - 1) * C;
        const float* zN = zrow.data() + (N - 1) * C;
        const float shN = shift[N - 1], isN = inv_st[N - 1];
        for (int64_t n = 0; n < N - 1; ++n) {
          const float* zr = zrow.data() + n * C;
          const float sh = shift[n];
          float kl = 0.f;
#pragma omp simd reduction(+ : kl)
          for (int64_t c = 0; c < C; ++c) kl += qN[c] * ((zN[c] * inv_tau - shN) - (zr[c] * inv_tau - sh));
          part_kd[n * B] = kd_scale * isN * kl;
        }
        part_kd[(N - 1) * B] = 0.f;
      }
      // Gradients of the weighted total w.r.t. the logits.
      const float Nf = static_cast<float>(N);
      for (int64_t n = 0; n < N; ++n) {
        const float* pn = p.data() + n * C;
        const float* qn = q.data() + n * C;
        const float* qN = q.data() + (N - 1) * C;
        const float a = g_ce * inv_s1[n], bq = g_kd * inv_st[n], bN = g_kd * inv_st[N - 1];
        scalar_t* g = grad_z + (n * B + b) * C;
        if (!teacher_last) {
          const float bNq = Nf * bq;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) g[c] = static_cast<scalar_t>(a * pn[c] + bNq * qn[c] - g_kd * P[c]);
        } else if (n < N - 1) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) g[c] = static_cast<scalar_t>(a * pn[c] + bq * qn[c] - bN * qN[c]);
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) g[c] = static_cast<scalar_t>(a * pn[c]);
        }
        // The one-hot part of the CE gradient, applied in fp32 before the store's rounding.
        const float gy = a * pn[yb] - g_ce + (teacher_last ? (n < N - 1 ? bq * qn[yb] - bN * qN[yb] : 0.f)
                                                           : Nf * bq * qn[yb] - g_kd * P[yb]);
        g[yb] = static_cast<scalar_t>(gy);
      }
      // Feature hint towards the deepest exit.
      if (feats != nullptr) {
        const scalar_t* fN = feats + ((N - 1) * B + b) * D;
        for (int64_t n = 0; n < N; ++n) {
          scalar_t* gf = grad_f + (n * B + b) * D;
          if (n == N - 1) {
            for (int64_t d = 0; d < D; ++d) gf[d] = static_cast<scalar_t>(0.f);
            part_ft[n * B] = 0.f;
            continue;
          }
          const scalar_t* fn = feats + (n * B + b) * D;
          float ss = 0.f;
#pragma omp simd reduction(+ : ss)
          for (int64_t d = 0; d < D; ++d) {
            const float diff = static_cast<float>(fn[d]) - static_cast<float>(fN[d]);
            ss += diff * diff;
            gf[d] = static_cast<scalar_t>(g_feat * diff);
          }
          part_ft[n * B] = ss;
        }
      } else {
        for (int64_t n = 0; n < N; ++n) part_ft[n * B] = 0.f;
      }
    }
  });
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
    fused_msd_loss_kernel<scalar_t>(
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
